"""llama.cpp: GGUF on CPU, Apple Metal and CUDA; layer split across GPUs and hybrid CPU+GPU offload."""

from __future__ import annotations

from quantplan.plugins.builtin.frameworks import LAYER_SPLIT_HOP_S, PCIE_COPY_BYTES_PER_S, FrameworkPlugin, plugin_for
from quantplan.plugins.builtin.methods import bytes_read_per_step
from quantplan.plugins.hookspecs import hookimpl
from quantplan.solver import terms as q
from quantplan.solver.candidates import Config, Execution, Step
from quantplan.solver.shapes import parameter_counts
from quantplan.solver.specs import FrameworkSpec, GPUSpec, MethodSpec
from quantplan.solver.terms import Term

# Time a routed-expert (MoE) layer adds to each pass on CUDA, beyond the weight bytes it reads. llama.cpp builds
# the MoE FFN from small ops (ggml-org/llama.cpp src/llama-graph.cpp, llm_graph_context::build_moe_ffn): router
# matmul, softmax, top-k, get_rows / sum_rows / div of the expert weights, three mul_mat_id, the weighting mul
# and n_expert_used - 1 adds, about 14 kernels more per layer than a dense FFN's four, each a few microseconds
# at one token. Measured single-stream Qwen3-30B-A3B (48 MoE layers) token generation is that much slower than
# the bandwidth model predicts while the dense rows are not: v331 (RTX 4090, llama.cpp PR #16834) 49 us per MoE
# layer, v332 (RTX 4090, PR #15631, one-token micro-batches) 22 us, v338 (RTX PRO 6000, same page and build as
# the dense rows v334/v336) 25 us, 35 us against the dense rows' own miss; 30 us sits in that range.
MOE_LAYER_OVERHEAD_US = 30.0


class LlamaCppPlugin(FrameworkPlugin):
    def host_execution(self, method: MethodSpec, gpu: GPUSpec) -> Execution:
        kernel = "ggml-metal" if gpu.kind == "apple" else "ggml-cpu"
        return Execution("fp16", method.weight_only, kernel)

    @hookimpl
    def quantplan_execution(self, method: MethodSpec, gpu: GPUSpec, framework: FrameworkSpec) -> Execution | None:
        """GGUF quants on CUDA multiply through MMQ kernels on int8 tensor cores where the GPU has them."""
        execution = super().quantplan_execution(method, gpu, framework)
        if (execution is not None and execution.possible and gpu.kind == "gpu" and method.kind == "gguf"
                and gpu.tops_int8 > 0):
            return Execution("int8", True, "ggml-cuda-mmq", note="GGUF via MMQ on int8 tensor cores")
        return execution

    def communication_terms(self, config: Config, step: Step) -> list[Term]:
        found = []
        if config.execution.kernel == "ggml-cuda-mmq":
            share = config.framework.int8_kernel_efficiency
            found.append(Term(q.COMPUTE_EFFICIENCY, share, self.name,
                              f"MMQ int8 kernels reach {share:.0%} of what dense GEMMs reach", step.phase))
        if config.model.is_moe and config.gpu.kind == "gpu":
            moe_layers = parameter_counts(config.model).moe_layers
            found.append(Term(q.OVERHEAD, moe_layers * MOE_LAYER_OVERHEAD_US / 1e6 * step.passes, self.name,
                              f"MoE FFN kernels (router, top-k, expert weighting, adds): {MOE_LAYER_OVERHEAD_US:g} us "
                              f"x {moe_layers} MoE layers per pass", step.phase))
        if config.gpus > 1:
            hop = (LAYER_SPLIT_HOP_S + step.new_tokens / step.passes * config.model.hidden_size * 2
                   / PCIE_COPY_BYTES_PER_S) * step.passes
            found.append(Term(q.OVERHEAD, (config.gpus - 1) * hop, self.name,
                              f"layer split: {config.gpus - 1} device hand-offs per step", step.phase))
        if config.hybrid:
            cpu_share = config.framework.bandwidth_efficiency.get("cpu", 0.6)
            found.append(Term(q.HOST_BANDWIDTH_EFFICIENCY, cpu_share, self.name,
                              f"llama.cpp reaches {cpu_share:.0%} of host RAM bandwidth", step.phase))
            if step.phase == "prefill":
                layers, _ = bytes_read_per_step(config, step.new_tokens)
                host = layers * (1 - config.gpu_layer_fraction)
                found.append(Term(q.OVERHEAD, host * step.passes / PCIE_COPY_BYTES_PER_S, self.name,
                                  "prompt batches copy host-resident layers to the GPU over PCIe", step.phase))
        return found


def plugin() -> LlamaCppPlugin:
    return plugin_for("llama.cpp", LlamaCppPlugin)
