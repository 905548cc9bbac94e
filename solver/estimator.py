"""Combine plugin terms into memory, step time, quality and cost for one configuration."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import numpy as np

from . import terms as q
from .candidates import QUALITY_PROXIES, Config, Step
from .quality_model import LOSSLESS, Case, Prediction
from .shapes import parameter_counts
from .registry import World
from .terms import Term, totals


@dataclass(frozen=True)
class Memory:
    """Bytes per GPU (weights and KV cache also as replica totals), and whether they fit."""

    weights_per_gpu: float
    kv_per_gpu: float
    activations_per_gpu: float
    runtime_per_gpu: float
    reserved_per_gpu: float
    capacity_per_gpu: float
    host_bytes: float
    host_capacity: float
    gpus: int
    memory_divisor: int

    @property
    def used_per_gpu(self) -> float:
        return self.weights_per_gpu + self.kv_per_gpu + self.activations_per_gpu + self.runtime_per_gpu

    @property
    def available_per_gpu(self) -> float:
        return self.capacity_per_gpu - self.reserved_per_gpu

    @property
    def fits(self):
        """True where it fits (an array of answers when the batch is an array)."""
        fits = np.logical_and(self.used_per_gpu <= self.available_per_gpu, self.host_bytes <= self.host_capacity)
        return bool(fits) if np.ndim(fits) == 0 else fits

    def at(self, index: int) -> Memory:
        """The scalar record of one batch size out of an array evaluation."""
        if not np.ndim(self.used_per_gpu):
            return self
        return Memory(*(_pick(getattr(self, f.name), index) if f.name not in ("gpus", "memory_divisor")
                        else getattr(self, f.name) for f in fields(self)))

    @property
    def overhead_per_gpu(self) -> float:
        return self.activations_per_gpu + self.runtime_per_gpu


@dataclass(frozen=True)
class StepTime:
    """Roofline time of one step: max(memory, compute) + host reads + overheads."""

    seconds: float
    memory_s: float
    compute_s: float
    host_s: float
    overhead_s: float

    @property
    def bound(self) -> str:
        return "memory" if self.memory_s >= self.compute_s else "compute"

    def scaled(self, factor: float) -> StepTime:
        """Every part `factor` times longer (planning against a pessimistic figure)."""
        return StepTime(*(getattr(self, f.name) * factor for f in fields(self)))

    def at(self, index: int) -> StepTime:
        """One batch size out of an array evaluation (a scalar record stays as it is)."""
        if not isinstance(self.seconds, np.ndarray):
            return self
        return StepTime(*(_pick(getattr(self, f.name), index) for f in fields(self)))

    def split(self, count: int) -> list[StepTime]:
        """All batch sizes of an array evaluation as scalar records (a scalar record repeats)."""
        if not isinstance(self.seconds, np.ndarray):
            return [self] * count
        columns = [np.broadcast_to(getattr(self, f.name), (count,)).tolist() for f in fields(self)]
        return [StepTime(*values) for values in zip(*columns)]


def memory_terms(world: World, config: Config, context_tokens: int) -> list[Term]:
    return _flatten(world.plugins.call_for("quantplan_memory_terms", config, context_tokens=context_tokens))


def memory(world: World, config: Config, context_tokens: int, found: list[Term] | None = None) -> Memory:
    found = memory_terms(world, config, context_tokens) if found is None else found
    total = totals(found)
    reserved = total[q.RESERVED]
    if total[q.RESERVED_FREE_SHARE]:  # a share of what weights, activations and runtime leave free
        free = total[q.CAPACITY] - total[q.WEIGHTS] - total[q.ACTIVATIONS] - total[q.RUNTIME]
        reserved = reserved + total[q.RESERVED_FREE_SHARE] * np.maximum(free, 0.0)
    return Memory(
        weights_per_gpu=total[q.WEIGHTS],
        kv_per_gpu=total[q.KV_CACHE],
        activations_per_gpu=total[q.ACTIVATIONS],
        runtime_per_gpu=total[q.RUNTIME],
        reserved_per_gpu=reserved,
        capacity_per_gpu=total[q.CAPACITY],
        host_bytes=total[q.HOST_WEIGHTS],
        host_capacity=total[q.HOST_CAPACITY],
        gpus=config.gpus,
        memory_divisor=config.gpus,
    )


def memories(world: World, config: Config, contexts: list[int]) -> list[Memory]:
    """memory(world, config, c) for every context c in `contexts`, in one call to the plugins where only built-in
    ones answer (they take an array of contexts: one row per context, a column per batch size where the batch is
    an array); one call per context otherwise. The figures are those of the separate calls, to the bit."""
    if len(contexts) < 2 or not world.plugins.built_in_only("quantplan_memory_terms", config):
        return [memory(world, config, context) for context in contexts]
    column = np.array(contexts).reshape(-1, *([1] * np.ndim(config.batch)))
    block = memory(world, config, column)
    return [Memory(**{name: block_row(value, index, column.ndim) for name, value in block.__dict__.items()})
            for index in range(len(contexts))]


def block_row(value, index: int, full: int):
    """Row `index` of a figure asked for several lengths at once (memories, stepmodel.step_models): a figure with
    `full` dimensions has a row per length (or one row for all); one with fewer did not depend on the lengths."""
    if type(value) is np.ndarray and value.ndim == full:
        return value[index] if value.shape[0] > 1 else value[0]
    return value


def step_terms(world: World, config: Config, step: Step) -> list[Term]:
    return _flatten(world.plugins.call_for("quantplan_step_terms", config, step=step))


def step_time(found: list[Term], phase: str) -> StepTime:
    """Time of the step the terms describe (all its passes: plugins count weight reads and
    per-pass overheads once per pass). No plan can run faster than bandwidth / bytes read allows.
    """
    total = totals(found, phase)
    bandwidth = total[q.BANDWIDTH] * total[q.BANDWIDTH_EFFICIENCY]
    peak = total[q.PEAK_FLOPS] * total[q.COMPUTE_EFFICIENCY]
    memory_s = _ratio(total[q.DEVICE_BYTES], bandwidth)
    compute_s = _ratio(total[q.FLOPS], peak)
    host_bandwidth = total[q.HOST_BANDWIDTH] * total[q.HOST_BANDWIDTH_EFFICIENCY]
    host_s = _ratio(total[q.HOST_BYTES], host_bandwidth)
    # a prefill step pays the prompt-step overhead too; corrections (calibration) never take it below zero
    overhead_s = np.maximum(total[q.OVERHEAD] + total[q.PROMPT_STEP_OVERHEAD], 0.0)
    return StepTime(np.maximum(memory_s, compute_s) + host_s + overhead_s, memory_s, compute_s, host_s, overhead_s)


def _pick(value, index: int) -> float:
    return float(value[index]) if isinstance(value, np.ndarray) and value.ndim else float(value)


def _ratio(amount, rate):
    """amount / rate; 0 where there is nothing to move, infinite where there is no rate to move it."""
    if not np.ndim(amount) and not np.ndim(rate):
        if amount <= 0:
            return 0.0
        return amount / rate if rate > 0 else float("inf")
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(np.asarray(amount) > 0, np.asarray(amount) / np.where(rate > 0, rate, 1.0), 0.0)
        value = np.where((np.asarray(amount) > 0) & ~(np.asarray(rate) > 0), np.inf, value)
    return float(value) if np.ndim(value) == 0 else value


@dataclass(frozen=True)
class Quality:
    """Predicted quality of one configuration: relative ppl increase (weights and KV cache) on the model's
    baseline, and quality model v2's KL divergence and task recovery with their bands."""

    relative: float
    baseline_ppl: float
    terms: list[Term] = field(default_factory=list)
    prediction: Prediction = LOSSLESS
    measured: str = ""  # non-empty: `relative` is a measured figure (solve --quality), and where it came from
    measured_kl: float | None = None  # the measured KL divergence (solve --quality), in place of the prediction's

    @property
    def ppl_delta(self) -> float:
        return self.relative * self.baseline_ppl

    @property
    def ppl_delta_pct(self) -> float:
        return self.relative * 100.0

    @property
    def kl_divergence(self) -> float:
        return self.prediction.kl_divergence.value if self.measured_kl is None else self.measured_kl

    @property
    def recovery_pct(self) -> dict[str, float]:
        return {kind: band.value for kind, band in self.prediction.recovery_pct.items()}

    @property
    def notes(self) -> list[str]:
        return self.prediction.notes

    def error_bars(self) -> dict:
        """10th-90th percentile bands of every figure (out-of-sample errors of quality model v2)."""
        p, base = self.prediction, self.baseline_ppl
        return {"ppl_delta": [round(p.relative.low * base, 6), round(p.relative.high * base, 6)],
                "ppl_delta_pct": [round(p.relative.low * 100, 4), round(p.relative.high * 100, 4)],
                "kl_divergence": [round(p.kl_divergence.low, 6), round(p.kl_divergence.high, 6)],
                "accuracy_recovery_pct": {k: [round(b.low, 2), round(b.high, 2)] for k, b in p.recovery_pct.items()}}


def quality(world: World, config: Config) -> Quality:
    assessed = predicted_quality(world, config)
    measured = world.measured_quality.get((config.model.id, config.method.id))
    if measured is None:
        return assessed
    # the record covers the method at the KV-cache format it was served with; another format adds the
    # predicted difference between the two formats
    at_measured_kv = predicted_quality(world, replace(config, kv=world.kv_caches.get(measured.kv_cache_dtype)))
    relative = measured.relative + assessed.relative - at_measured_kv.relative
    kl = max(measured.kl_divergence + assessed.kl_divergence - at_measured_kv.kl_divergence, 0.0)
    return Quality(relative, assessed.baseline_ppl, assessed.terms, prediction=assessed.prediction,
                   measured=measured.describe(), measured_kl=kl)


def predicted_quality(world: World, config: Config) -> Quality:
    found = _flatten(world.plugins.call_for("quantplan_quality_terms", config, quality=world.quality))
    total = totals(found)
    relative = total[q.PPL_RELATIVE]
    case = world.quality.case_for(config)
    prediction = LOSSLESS
    if math.isfinite(relative) and (case is not None or relative > 0):
        notes: list[str] = []
        if case is not None:
            world.quality.model.log_relative(case, notes)  # the fallbacks it takes, flagged
            notes += [QUALITY_PROXIES[config.method.id]] if config.method.id in QUALITY_PROXIES else []
        else:  # a 16-bit method with a lossy KV cache: the reference family at the model's size
            case = Case(config.model.family, parameter_counts(config.model).total / 1e9, "fp16", 16.0)
        prediction = world.quality.model.bands_for(case, relative, notes)
    return Quality(relative, total[q.PPL_BASELINE] or config.model.wikitext2_ppl, found, prediction)


def cost_terms(world: World, config: Config, prices: dict) -> list[Term]:
    return _flatten(world.plugins.call_for("quantplan_cost_terms", config, prices=prices))


def _flatten(results: list[list[Term]]) -> list[Term]:
    return [term for result in results for term in (result or [])]
