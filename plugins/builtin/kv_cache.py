"""KV-cache precisions: cache bytes, the bytes and attention FLOPs a step spends on it, and its quality cost."""

from __future__ import annotations

from quantplan.plugins.hookspecs import hookimpl
from quantplan.solver import shapes
from quantplan.solver import terms as q
from quantplan.solver.candidates import Config, QualityBook, Step, placement
from quantplan.solver.catalog import builtin_catalog
from quantplan.solver.specs import KVCacheSpec
from quantplan.solver.terms import Term


def kv_bytes_per_token_per_gpu(config: Config) -> float:
    """K and V bytes one token leaves on each GPU of the replica."""
    model, where = config.model, placement(config)
    if config.framework.parallelism == "tensor":
        heads = shapes.kv_heads_per_gpu(model, config.gpus)
        return 2 * model.layers * heads * model.head_dim * config.kv.bytes_per_element
    return shapes.kv_elements_per_token(model) * config.kv.bytes_per_element / where.memory_divisor


class KVCachePlugin:
    name = "kv-cache"

    def __init__(self) -> None:
        self.formats = builtin_catalog("methods")["kv_cache"]

    @hookimpl
    def quantplan_kv_cache_dtypes(self) -> list[KVCacheSpec]:
        return self.formats

    @hookimpl
    def quantplan_incompatibility(self, config: Config) -> list[str]:
        need = config.kv.min_compute_capability
        have = config.gpu.compute_capability
        if config.kv.id in config.framework.kv_archs:
            return []  # the engine's own support table decides (framework plugin)
        if need is None or config.gpu.kind != "gpu" or (have is not None and have >= need):
            return []
        if config.gpu.vendor.lower() != "nvidia":  # compute capability is CUDA's scale: units decide elsewhere
            if config.kv.id == "bf16" and config.gpu.tflops_bf16 <= 0:
                return [f"bf16 KV cache needs bf16 units; {config.gpu.id} has none"]
            return []
        if have is None:
            return [f"{config.kv.id} KV cache needs CUDA compute capability {need:g}+; {config.gpu.id} has none"]
        return [f"{config.kv.id} KV cache needs compute capability {need:g}+; {config.gpu.id} is {have:g}"]

    @hookimpl
    def quantplan_memory_terms(self, config: Config, context_tokens: int) -> list[Term]:
        per_token = kv_bytes_per_token_per_gpu(config)
        total = per_token * config.batch * context_tokens
        detail = (f"{q.show(config.batch)} seq x {q.show(context_tokens)} tokens x {per_token / 1024:.1f} KiB/token/GPU "
                  f"({config.kv.id}, {config.model.kv_heads} KV heads)")
        if not config.hybrid:
            return [Term(q.KV_CACHE, total, self.name, detail)]
        fraction = config.gpu_layer_fraction
        return [Term(q.KV_CACHE, total * fraction, self.name, detail + "; GPU layers only"),
                Term(q.HOST_WEIGHTS, total * (1 - fraction), self.name, "KV cache of host-resident layers")]

    @hookimpl
    def quantplan_step_terms(self, config: Config, step: Step) -> list[Term]:
        per_token = kv_bytes_per_token_per_gpu(config)
        where = placement(config)
        model = config.model
        if step.phase == "decode":
            read = step.sequences * step.context * per_token
            flops = step.sequences * shapes.attention_flops_per_token(model, step.context)
            how = f"attend to {q.show(step.context, '.0f')} cached tokens x {q.show(step.sequences)} seq"
        else:
            read = step.new_tokens * per_token  # the prompt's K and V are written once
            flops = step.sequences * shapes.prefill_attention_flops(model, step.context)
            how = f"causal attention over {q.show(step.context, '.0f')}-token prompts x {q.show(step.sequences)}"
        if config.framework.parallelism == "tensor":
            flops /= where.read_divisor
        else:
            read *= where.memory_divisor  # a layer split reads every layer's cache in sequence
        found = [Term(q.DEVICE_BYTES, read * where.gpu_fraction, self.name, f"KV cache: {how}", step.phase),
                 Term(q.FLOPS, flops, self.name, f"attention: {how}", step.phase)]
        if config.hybrid:
            found.append(Term(q.HOST_BYTES, read * (1 - where.gpu_fraction), self.name,
                              "KV cache of host-resident layers", step.phase))
        return found

    @hookimpl
    def quantplan_quality_terms(self, config: Config, quality: QualityBook) -> list[Term]:
        point = quality.kv.get(config.kv.id)
        if point is None:
            return [Term(q.PPL_RELATIVE, float("inf"), self.name, f"no quality point for {config.kv.id} KV cache")]
        if point.relative_ppl_increase == 0:
            return []
        sensitivity, _ = quality.family_sensitivity(config.model.family)
        return [Term(q.PPL_RELATIVE, point.relative_ppl_increase * sensitivity, self.name,
                     f"{config.kv.id} KV cache: {point.relative_ppl_increase:.4f} x family sensitivity {sensitivity:g}")]


def plugin() -> KVCachePlugin:
    return KVCachePlugin()
