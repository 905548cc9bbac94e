"""Shared behaviour of quantization-method plugins: weight bytes, bytes read, FLOPs, kernel efficiency, quality."""

from __future__ import annotations

import math

from quantplan.plugins.hookspecs import hookimpl
from quantplan.solver import shapes
from quantplan.solver import terms as q
from quantplan.solver.candidates import Config, QualityBook, Step, placement
from quantplan.solver.catalog import builtin_catalog
from quantplan.solver.specs import MethodSpec
from quantplan.solver.terms import Term



def _published_point(config: Config, quality: QualityBook, point, plugin: str) -> Term:
    """A plugin's [[method_quality]] point: its 7B increase x family sensitivity x a size power."""
    sensitivity, _ = quality.family_sensitivity(config.model.family)
    size_b = shapes.parameter_counts(config.model).total / 1e9
    relative = point.relative_ppl_increase_at_7b * sensitivity * (size_b / 7.0) ** (-point.size_exponent)
    return Term(q.PPL_RELATIVE, relative, plugin,
                f"{config.method.id}: {point.relative_ppl_increase_at_7b:.4f} at 7B x family "
                f"{config.model.family} {sensitivity:g} x ({size_b:.1f}B/7B)^-{point.size_exponent:g} "
                f"[{point.fitted_on}]")


def kernels() -> dict:
    """Kernel rows of catalogs/methods.toml: efficiencies shared by every method a kernel runs."""
    return {k.id: k for k in builtin_catalog("methods").get("kernel", [])}


def weight_bytes(config: Config) -> dict[str, float]:
    """Bytes of the decoder layers, the embedding table and the (untied) lm_head, for one replica."""
    model, method = config.model, config.method
    counts = shapes.parameter_counts(model)
    return {
        "layers": counts.linear_total * method.linear_bits_per_weight / 8 + counts.norms * 2,
        "embedding": counts.embedding * method.embedding_bits_per_weight / 8,
        "lm_head": counts.lm_head * method.lm_head_bits_per_weight / 8,
    }


def bytes_read_per_step(config: Config, tokens: int) -> tuple[float, float]:
    """(decoder-layer bytes, output-projection bytes) one step reads for `tokens` new tokens.

    MoE layers read only the experts the tokens route to (split expert-parallel: as many as the busiest
    device's share); a tied lm_head reads the embedding.
    """
    model, method = config.model, config.method
    counts = shapes.parameter_counts(model)
    experts = counts.expert_linear * shapes.experts_touched_fraction(model, tokens, config.expert_parallel)
    layers = (counts.dense_linear + experts) * method.linear_bits_per_weight / 8 + counts.norms * 2
    if counts.lm_head:
        head = counts.lm_head * method.lm_head_bits_per_weight / 8
    else:
        head = counts.embedding * method.embedding_bits_per_weight / 8
    return layers, head


class MethodPlugin:
    """Declares the methods of some `kinds` and contributes their terms."""

    def __init__(self, name: str, kinds: tuple[str, ...], methods: list[MethodSpec] | None = None) -> None:
        self.name = name
        if methods is None:
            methods = [m for m in builtin_catalog("methods")["method"] if m.kind in kinds]
        self.methods = methods
        self._ids = {m.id for m in methods}
        self.kernels = kernels()

    def owns(self, config: Config) -> bool:
        return config.method.id in self._ids

    @hookimpl
    def quantplan_methods(self) -> list[MethodSpec]:
        return self.methods

    @hookimpl
    def quantplan_memory_terms(self, config: Config, context_tokens: int) -> list[Term]:
        if not self.owns(config):
            return []
        where = placement(config)
        parts = weight_bytes(config)
        method = config.method
        detail = (f"{method.id}: {method.linear_bits_per_weight:g} b/w linear, "
                  f"{method.embedding_bits_per_weight:g} embedding, {method.lm_head_bits_per_weight:g} lm_head")
        if not config.hybrid:
            total = sum(parts.values())
            return [Term(q.WEIGHTS, total / where.memory_divisor, self.name,
                         f"{detail}; {total / 1e9:.2f} GB / {where.memory_divisor} GPU(s)")]
        on_gpu = parts["layers"] * where.gpu_fraction + parts["lm_head"]
        on_host = parts["layers"] * (1 - where.gpu_fraction) + parts["embedding"]
        return [
            Term(q.WEIGHTS, on_gpu / where.memory_divisor, self.name,
                 f"{detail}; {config.gpu_layers}/{config.model.layers} layers + lm_head on GPU"),
            Term(q.HOST_WEIGHTS, on_host, self.name, "remaining layers and token embedding in host RAM"),
        ]

    @hookimpl
    def quantplan_step_terms(self, config: Config, step: Step) -> list[Term]:
        if not self.owns(config):
            return []
        where = placement(config)
        layers, head = bytes_read_per_step(config, step.new_tokens)
        active = shapes.active_linear_params(config.model)
        logits = 2.0 * step.sequences * config.model.vocab_size * config.model.hidden_size
        flops = (2.0 * step.new_tokens * active + logits) / where.read_divisor
        found = [
            Term(q.DEVICE_BYTES, (layers * where.gpu_fraction + head) / where.read_divisor * step.passes,
                 self.name, f"{config.method.id} weights read per step (x {q.show(step.passes)} passes)",
                 step.phase),
            Term(q.FLOPS, flops, self.name,
                 f"2 x {q.show(step.new_tokens)} tokens x {active / 1e9:.2f}B active params + logits", step.phase),
        ]
        if config.hybrid:
            found.append(Term(q.HOST_BYTES, layers * (1 - where.gpu_fraction) * step.passes, self.name,
                              "weights of host-resident layers read from RAM", step.phase))
        found += self._kernel_terms(config, step)
        return found

    def _kernel_terms(self, config: Config, step: Step) -> list[Term]:
        method, execution = config.method, config.execution
        kernel = self.kernels.get(execution.kernel)
        if kernel is not None:  # a shared kernel: AWQ and GPTQ on Marlin, FP8 weight-only on Marlin ...
            bandwidth, compute = kernel.bandwidth_efficiency, kernel.compute_efficiency
            why = f"{method.id} on the {kernel.id} kernel: {kernel.efficiency_source}"
        else:
            bandwidth, compute = method.bandwidth_efficiency, method.compute_efficiency
            why = f"{method.kernel} kernel: {method.efficiency_source}"
        found = []
        if bandwidth != 1.0:
            found.append(Term(q.BANDWIDTH_EFFICIENCY, bandwidth, self.name, why, step.phase))
        if compute != 1.0:
            found.append(Term(q.COMPUTE_EFFICIENCY, compute, self.name, why, step.phase))
        return found

    @hookimpl
    def quantplan_quality_terms(self, config: Config, quality: QualityBook) -> list[Term]:
        if not self.owns(config):
            return []
        point = quality.methods.get(config.method.id)
        if point is not None:  # a plugin's own published point wins over the fitted model
            return [_published_point(config, quality, point, self.name)]
        case = quality.case_for(config)
        if case is None:
            return []  # 16-bit: the reference precision
        notes: list[str] = []
        relative = math.exp(quality.model.log_relative(case, notes))
        options = ", ".join(o for o in ("calibrated", "per_channel", "act_order") if getattr(case, o))
        detail = (f"{case.method}{f' ({options})' if options else ''}: quality model v2, family {case.family} "
                  f"at {case.params_b:.1f}B (catalogs/quality_model.toml)")
        return [Term(q.PPL_RELATIVE, relative, self.name, "; ".join([detail] + notes))]
