"""Shared behaviour of serving-framework plugins: what runs, memory kept back, efficiencies, per-step costs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quantplan.plugins.hookspecs import hookimpl
from quantplan.solver import terms as q
from quantplan.solver.candidates import Config, Execution, Step
from quantplan.solver.catalog import builtin_catalog
from quantplan.solver.specs import FrameworkSpec, GPUSpec, MethodSpec
from quantplan.solver.terms import Term

if TYPE_CHECKING:  # pragma: no cover - the load models (numpy) load when a solve needs them
    from quantplan.solver.serving import Scheduling

# Achieved host-to-device copy rate over PCIe Gen4 x16 (32 GB/s per direction theoretical).
PCIE_COPY_BYTES_PER_S = 25e9
# Extra latency a tensor-parallel all-reduce pays over PCIe instead of NVLink (no custom all-reduce).
PCIE_ALLREDUCE_LATENCY_FACTOR = 3.0
# Latency of handing activations from one device to the next in a layer split.
LAYER_SPLIT_HOP_S = 20e-6


def spec(framework_id: str) -> FrameworkSpec:
    for row in builtin_catalog("frameworks")["framework"]:
        if row.id == framework_id:
            return row
    raise KeyError(framework_id)


class FrameworkPlugin:
    """One serving framework, declared from its catalog row."""

    def __init__(self, framework: FrameworkSpec) -> None:
        self.framework = framework
        self.name = framework.id

    def owns(self, config: Config) -> bool:
        return config.framework.id == self.framework.id

    @hookimpl
    def quantplan_frameworks(self) -> list[FrameworkSpec]:
        return [self.framework]

    @hookimpl
    def quantplan_execution(self, method: MethodSpec, gpu: GPUSpec, framework: FrameworkSpec) -> Execution | None:
        if framework.id != self.framework.id:
            return None
        if method.id not in framework.methods:
            return Execution(reason=f"{framework.id} does not run {method.id}")
        if gpu.kind not in framework.device_kinds:
            return Execution(reason=f"{framework.id} has no {gpu.kind} path ({gpu.id})")
        if gpu.kind != "gpu":
            return self.host_execution(method, gpu)
        vendor, arch = gpu.vendor.lower(), gpu.arch_id
        if framework.vendors and vendor not in framework.vendors:
            return Execution(reason=f"{framework.id} runs on {'/'.join(framework.vendors)} GPUs only; "
                                    f"{gpu.id} is {gpu.vendor}")
        archs = framework.method_archs.get(method.id)
        if archs is not None and arch not in archs:
            return Execution(reason=f"{framework.id}'s support table has no {method.id} on {arch} ({gpu.id})")
        cuda = vendor == "nvidia"
        cc = gpu.compute_capability or 0.0
        native = gpu.peak_tflops(method.compute_dtype) > 0
        needs = method.min_compute_capability
        if native and (not cuda or needs is None or cc >= needs):
            return Execution(method.compute_dtype, method.weight_only, framework.kernels.get(method.id, method.kernel))
        if cuda and method.id in framework.weight_only_fallback and cc >= framework.weight_only_fallback_min_cc:
            return Execution("fp16", True, "marlin",
                             note=f"{gpu.id} lacks {method.compute_dtype} tensor cores: "
                                  f"{framework.id} runs {method.id} weight-only via Marlin")
        if cuda and native and archs is not None and method.id in framework.legacy_kernels:
            kernel = framework.legacy_kernels[method.id]
            return Execution(method.compute_dtype, method.weight_only, kernel,
                             note=f"{framework.id} runs {method.id} on its {kernel} kernel on {arch} "
                                  f"({method.kernel} needs compute capability {needs:g}+): no measured speed",
                             measured=False)
        if not cuda:
            return Execution(reason=f"{method.id} needs {method.compute_dtype} units; {gpu.id} has none")
        what = f"{method.compute_dtype} tensor cores" if not native else f"the {method.kernel} kernel"
        return Execution(reason=f"{method.id} needs {what} (compute capability {needs or 0:g}+); "
                                f"{gpu.id} is {cc:g}")

    def host_execution(self, method: MethodSpec, gpu: GPUSpec) -> Execution:
        return Execution(reason=f"{self.framework.id} cannot run on {gpu.kind}")

    @hookimpl
    def quantplan_incompatibility(self, config: Config) -> list[str]:
        if not self.owns(config):
            return []
        framework, model, gpus = config.framework, config.model, config.gpus
        reasons = []
        if framework.model_families and model.family not in framework.model_families:
            reasons.append(f"{framework.id} does not load {model.family} models (it loads "
                           f"{', '.join(framework.model_families)})")
        if config.kv.id not in framework.kv_cache_dtypes:
            reasons.append(f"{framework.id} has no {config.kv.id} KV cache")
        elif config.gpu.kind == "gpu" and config.kv.id in framework.kv_archs \
                and config.gpu.arch_id not in framework.kv_archs[config.kv.id]:
            reasons.append(f"{framework.id}'s support table has no {config.kv.id} KV cache on "
                           f"{config.gpu.arch_id} ({config.gpu.id})")
        if gpus > framework.max_gpus:
            reasons.append(f"{framework.id} spans at most {framework.max_gpus} GPUs")
        if config.gpu.kind != "gpu" and gpus > 1:
            reasons.append(f"{config.gpu.id} is a single {config.gpu.kind} device")
        if framework.parallelism == "tensor" and gpus > 1:
            if model.attention_heads % gpus:
                reasons.append(f"{model.attention_heads} attention heads do not split over {gpus} GPUs")
            elif model.kv_heads % gpus and gpus % model.kv_heads:
                reasons.append(f"{model.kv_heads} KV heads do not split over {gpus} GPUs")
        if framework.parallelism == "none" and gpus > 1:
            reasons.append(f"{framework.id} runs on one device")
        return reasons

    @hookimpl
    def quantplan_memory_terms(self, config: Config, context_tokens: int) -> list[Term]:
        if not self.owns(config):
            return []
        framework, model = config.framework, config.model
        ffn = max(model.intermediate_size if model.dense_layers or not model.is_moe else 0,
                  model.moe_intermediate_size * max(model.experts_per_token, 1))
        divisor = config.gpus if framework.parallelism == "tensor" else 1
        import numpy as np

        tokens = np.minimum(framework.max_batched_tokens, np.maximum(context_tokens, 1) * config.batch)
        activations = tokens * (2 * ffn / divisor + 4 * model.hidden_size) * 2
        return [
            Term(q.RUNTIME, framework.runtime_overhead_gb * 1e9, self.name,
                 f"{framework.id} runtime (context, graphs, buffers) {framework.runtime_overhead_gb:g} GB"),
            Term(q.ACTIVATIONS, activations, self.name,
                 f"activation workspace for {q.show(tokens)} batched tokens x (2 x {ffn} / {divisor} + 4 x {model.hidden_size}) x 2 B"),
            Term(q.RESERVED_FREE_SHARE, framework.memory_reserve_fraction, self.name,
                 f"{framework.id} keeps {framework.memory_reserve_fraction:.0%} of the memory weights, activations "
                 f"and runtime leave free back") if framework.memory_reserve_of == "free" else
            Term(q.RESERVED, framework.memory_reserve_fraction * config.gpu.usable_gb * 1e9, self.name,
                 f"{framework.id} keeps {framework.memory_reserve_fraction:.0%} of device memory back"),
        ]

    @hookimpl
    def quantplan_step_terms(self, config: Config, step: Step) -> list[Term]:
        if not self.owns(config):
            return []
        framework, gpu = config.framework, config.gpu
        efficiency = framework.bandwidth_efficiency.get(gpu.device_class, min(framework.bandwidth_efficiency.values()))
        if step.phase == "decode":
            compute = framework.decode_compute_efficiency
        else:
            compute = framework.prefill_efficiency_by_class.get(gpu.device_class, framework.prefill_efficiency)
        overhead = (framework.step_overhead_ms / 1e3 + framework.layer_overhead_us * config.model.layers / 1e6) \
            * step.passes
        per_sequence = framework.sequence_overhead_us / 1e6 * step.sequences if step.phase == "decode" else 0.0
        found = [
            Term(q.BANDWIDTH_EFFICIENCY, efficiency, self.name,
                 f"{framework.id} reaches {efficiency:.0%} of {gpu.device_class} bandwidth", step.phase),
            Term(q.COMPUTE_EFFICIENCY, compute, self.name,
                 f"{framework.id} {step.phase} reaches {compute:.0%} of tensor peak", step.phase),
            Term(q.OVERHEAD, overhead, self.name,
                 f"{framework.id} per-step overhead {framework.step_overhead_ms:g} ms"
                 + (f" + {framework.layer_overhead_us:g} us/layer" if framework.layer_overhead_us else ""),
                 step.phase),
        ]
        if framework.prompt_step_layer_overhead_us and step.phase == "prefill":
            found.append(Term(q.PROMPT_STEP_OVERHEAD, framework.prompt_step_layer_overhead_us
                              * config.model.layers / 1e6, self.name,
                              f"{framework.id} step carrying prompt tokens: {framework.prompt_step_layer_overhead_us:g}"
                              f" us x {config.model.layers} layers (kernels launched without CUDA graphs)",
                              step.phase))
        if framework.sequence_overhead_us:
            found.append(Term(q.OVERHEAD, per_sequence, self.name,
                              f"{framework.id} host time {framework.sequence_overhead_us:g} us per decoding "
                              "sequence per step", step.phase))
        found += self.communication_terms(config, step)
        return found

    @hookimpl
    def quantplan_scheduling(self, config: Config) -> Scheduling | None:
        """The engine's documented scheduler defaults (catalog row), the token budget by device memory."""
        if not self.owns(config):
            return None
        from quantplan.solver.serving import Scheduling

        framework, gpu = config.framework, config.gpu
        budget = framework.token_budget_exceptions.get(
            gpu.id, _tier(framework.token_budget_by_memory_gb, gpu.memory_gb, framework.max_batched_tokens))
        sequences = _tier(framework.max_seqs_by_memory_gb, gpu.memory_gb, framework.max_batch)
        if gpu.id in framework.token_budget_exceptions:
            sequences = _tier(framework.max_seqs_by_memory_gb, 0.0, framework.max_batch)
        return Scheduling(framework.scheduler, budget, sequences, framework.chunked_prefill,
                          framework.kv_reservation == "reserved", source=framework.scheduling_source,
                          request_overhead_s=framework.request_overhead_ms / 1e3,
                          wave_persistence=framework.wave_persistence,
                          first_token_steps=framework.first_token_steps)

    def communication_terms(self, config: Config, step: Step) -> list[Term]:
        """Tensor parallel: two ring all-reduces of the new tokens' hidden states per layer."""
        t = config.gpus
        if t <= 1 or config.framework.parallelism != "tensor":
            return []
        gpu, model = config.gpu, config.model
        payload = step.new_tokens / step.passes * model.hidden_size * 2  # hidden states of one pass
        link = max(gpu.interconnect_gb_s, 1.0) * 1e9
        latency = config.framework.allreduce_latency_us / 1e6
        if gpu.interconnect != "nvlink":
            latency *= PCIE_ALLREDUCE_LATENCY_FACTOR
        per_call = 2 * (t - 1) / t * payload / link + latency
        return [Term(q.OVERHEAD, 2 * model.layers * per_call * step.passes, self.name,
                     f"2 all-reduces x {model.layers} layers over {gpu.interconnect} "
                     f"({gpu.interconnect_gb_s:g} GB/s, {latency * 1e6:.0f} us each)", step.phase)]


def _tier(tiers, memory_gb: float, default: int) -> int:
    """The value of the last [min_memory_gb, value] row the device reaches."""
    chosen = default
    for floor, value in tiers:
        if memory_gb >= floor:
            chosen = int(value)
    return chosen


def plugin_for(framework_id: str, cls: type[FrameworkPlugin] = FrameworkPlugin) -> FrameworkPlugin:
    return cls(spec(framework_id))
