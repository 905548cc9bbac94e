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

# Prompt processing of a routed-expert (MoE) model: llama.cpp multiplies each expert's weights by the tokens routed
# to it (mul_mat_id), a micro-batch's tokens x k / E of them, far fewer than a dense layer's GEMM gets. Measured on
# one RTX PRO 6000 at one build and page (llm-tracker.info, rows v333-v338): Qwen3-30B-A3B Q4_K_M pp512 7,640
# tok/s against quantplan's 11,009 (0.694 of it) while the dense Llama-3.3-70B Q4_K_M reads 1,794 against 478
# (3.753) and Llama-2-7B Q4_0 16,634 against 4,992 (3.332): next to the dense rows, the MoE prompt runs at
# 0.694 / 3.753 = 0.185 (0.208 against the Q4_0 row) of what the model gives it. With the routed experts' share s
# of a token's linear FLOPs (0.664 for Qwen3-30B-A3B: shapes.parameter_counts), 1 / 0.185 = (1 - s) + s / e gives
# the routed GEMMs e = 0.13 of the dense efficiency at 512 x 8 / 128 = 32 tokens per expert (0.15 against Q4_0).
# One measured point: below 32 tokens per expert e is held there; above, it is taken to grow in proportion to the
# tokens (a fuller tile, the mechanism llama.cpp's MoE prefill work describes) up to 1 at 32 / 0.13 = 246 tokens.
ROUTED_PREFILL_EFFICIENCY_AT_32 = 0.13
MICRO_BATCH_TOKENS = 512  # llama.cpp's default n_ubatch (common/common.h): a prompt is processed 512 tokens a pass


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
        if config.model.is_moe and config.gpu.kind == "gpu" and step.phase == "prefill":
            found.append(_routed_prefill(config, step, self.name))
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


def _routed_prefill(config: Config, step: Step, source: str) -> Term:
    """Compute share of a MoE prompt step: the routed experts' GEMMs at ROUTED_PREFILL_EFFICIENCY_AT_32 of the dense
    efficiency at 32 tokens per expert, growing with the tokens each expert gets per micro-batch."""
    import numpy as np

    model = config.model
    counts = parameter_counts(model)
    routed = counts.moe_layers * model.experts_per_token * counts.expert_size
    share = routed / (counts.dense_linear + routed)
    per_expert = np.minimum(np.asarray(step.new_tokens, dtype=float) / step.passes, MICRO_BATCH_TOKENS) \
        * model.experts_per_token / model.num_experts
    efficiency = np.minimum(ROUTED_PREFILL_EFFICIENCY_AT_32 * np.maximum(per_expert, 32.0) / 32.0, 1.0)
    factor = 1.0 / ((1.0 - share) + share / efficiency)
    return Term(q.COMPUTE_EFFICIENCY, float(factor) if np.ndim(factor) == 0 else factor, source,
                f"MoE prompt: routed experts ({share:.0%} of the FLOPs) at {ROUTED_PREFILL_EFFICIENCY_AT_32:g} of dense "
                f"efficiency at 32 tokens per expert per micro-batch", step.phase)
