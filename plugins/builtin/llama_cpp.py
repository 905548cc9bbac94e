"""llama.cpp: GGUF on CPU, Apple Metal and CUDA; layer split across GPUs and hybrid CPU+GPU offload."""

from __future__ import annotations

from quantplan.plugins.builtin.frameworks import LAYER_SPLIT_HOP_S, PCIE_COPY_BYTES_PER_S, FrameworkPlugin, plugin_for
from quantplan.plugins.builtin.methods import bytes_read_per_step
from quantplan.plugins.hookspecs import hookimpl
from quantplan.solver import terms as q
from quantplan.solver.candidates import Config, Execution, Step
from quantplan.solver.specs import FrameworkSpec, GPUSpec, MethodSpec
from quantplan.solver.terms import Term


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
