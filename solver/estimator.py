"""Combine plugin terms into memory, step time, quality and cost for one configuration."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import terms as q
from .candidates import Config, Step
from .registry import World
from .terms import Term, combine


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
    def fits(self) -> bool:
        return self.used_per_gpu <= self.available_per_gpu and self.host_bytes <= self.host_capacity

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


def memory_terms(world: World, config: Config, context_tokens: int) -> list[Term]:
    return _flatten(world.plugins.call_for("quantplan_memory_terms", config, context_tokens=context_tokens))


def memory(world: World, config: Config, context_tokens: int, found: list[Term] | None = None) -> Memory:
    found = memory_terms(world, config, context_tokens) if found is None else found
    divisor = config.gpus
    return Memory(
        weights_per_gpu=combine(found, q.WEIGHTS),
        kv_per_gpu=combine(found, q.KV_CACHE),
        activations_per_gpu=combine(found, q.ACTIVATIONS),
        runtime_per_gpu=combine(found, q.RUNTIME),
        reserved_per_gpu=combine(found, q.RESERVED),
        capacity_per_gpu=combine(found, q.CAPACITY),
        host_bytes=combine(found, q.HOST_WEIGHTS),
        host_capacity=combine(found, q.HOST_CAPACITY),
        gpus=config.gpus,
        memory_divisor=divisor,
    )


def step_terms(world: World, config: Config, step: Step) -> list[Term]:
    return _flatten(world.plugins.call_for("quantplan_step_terms", config, step=step))


def step_time(found: list[Term], phase: str, passes: int = 1) -> StepTime:
    """Time of `passes` engine passes whose combined work the terms describe.

    Weight reads and per-step overheads repeat every pass (a prompt batch split into chunks);
    FLOPs are the total. No plan can run faster than bandwidth / bytes read allows.
    """
    bandwidth = combine(found, q.BANDWIDTH, phase) * combine(found, q.BANDWIDTH_EFFICIENCY, phase)
    peak = combine(found, q.PEAK_FLOPS, phase) * combine(found, q.COMPUTE_EFFICIENCY, phase)
    device_bytes = combine(found, q.DEVICE_BYTES, phase)
    flops = combine(found, q.FLOPS, phase)
    memory_s = device_bytes * passes / bandwidth if bandwidth > 0 else math.inf
    compute_s = flops / peak if peak > 0 else math.inf
    host_bytes = combine(found, q.HOST_BYTES, phase)
    host_bandwidth = combine(found, q.HOST_BANDWIDTH, phase) * combine(found, q.HOST_BANDWIDTH_EFFICIENCY, phase)
    host_s = host_bytes * passes / host_bandwidth if host_bytes > 0 else 0.0
    if host_bytes > 0 and host_bandwidth <= 0:
        host_s = math.inf
    overhead_s = combine(found, q.OVERHEAD, phase) * passes
    return StepTime(max(memory_s, compute_s) + host_s + overhead_s, memory_s, compute_s, host_s, overhead_s)


@dataclass(frozen=True)
class Quality:
    relative: float
    baseline_ppl: float
    terms: list[Term] = field(default_factory=list)

    @property
    def ppl_delta(self) -> float:
        return self.relative * self.baseline_ppl

    @property
    def ppl_delta_pct(self) -> float:
        return self.relative * 100.0


def quality(world: World, config: Config) -> Quality:
    found = _flatten(world.plugins.call_for("quantplan_quality_terms", config, quality=world.quality))
    baseline = combine(found, q.PPL_BASELINE) or config.model.wikitext2_ppl
    return Quality(combine(found, q.PPL_RELATIVE), baseline, found)


def cost_terms(world: World, config: Config, prices: dict) -> list[Term]:
    return _flatten(world.plugins.call_for("quantplan_cost_terms", config, prices=prices))


def _flatten(results: list[list[Term]]) -> list[Term]:
    return [term for result in results for term in (result or [])]
