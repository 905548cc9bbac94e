"""Every feasible candidate as a plan of its own (cost, latency, quality), and which lie on the Pareto front."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .plan import Plan
from .program import load_per_replica, request_latency_ms
from .scenario import TrafficClass
from .space import Option

ROUNDING = 1e-9  # a load of 2.000000001 replicas is two replicas


@dataclass(frozen=True)
class Candidate:
    """One configuration serving all the traffic alone: enough replicas for every class, rounded up."""

    key: str
    gpu: str
    method: str
    framework: str
    gpus_per_replica: int
    replicas: int
    cost_per_hour: float
    latency_ms: float  # mean request latency over the classes: TTFT + (output - 1) x TPOT
    ppl_delta: float
    front: bool = False  # no other candidate is as cheap, as fast and as good, and better in one

    @property
    def devices(self) -> int:
        return self.replicas * self.gpus_per_replica


def candidates(options: list[Option], classes: tuple[TrafficClass, ...],
               availability: dict[str, int] | None = None) -> list[Candidate]:
    """The options that serve every class, each as a plan of its own within the devices available, with the
    Pareto front marked. With several classes each class has replicas of its own: classes sharing a replica see
    their combined load, which an option's figures (each class's alone) do not hold, and summing their loads onto
    shared replicas drew plans that miss an SLO as cheaper than they are (the alternatives' fault, until they
    settled their mixes: api._alternatives)."""
    found = []
    for option in options:
        if not all(k.name in option.performance for k in classes):
            continue
        replicas = sum(max(1, math.ceil(load_per_replica(option, k) - ROUNDING)) for k in classes)
        latency = sum(request_latency_ms(option, k) for k in classes) / len(classes)
        config = option.config
        if availability and replicas * config.gpus > availability.get(config.gpu.id, replicas * config.gpus):
            continue
        found.append(Candidate(option.key, config.gpu.id, config.method.id, config.framework.id, config.gpus,
                               replicas, replicas * option.cost_per_hour, latency, option.quality.ppl_delta))
    if not found:
        return []
    front = pareto_front(np.array([[c.cost_per_hour, c.latency_ms, c.ppl_delta] for c in found]))
    return [Candidate(**{**c.__dict__, "front": bool(on)}) for c, on in zip(found, front)]


def pareto_front(points: np.ndarray) -> np.ndarray:
    """True for rows no other row matches or beats in every column while beating in one (lower is better)."""
    on = np.ones(len(points), dtype=bool)
    for start in range(0, len(points), 512):  # blocks bound the memory of the pairwise comparison
        block = points[start:start + 512]
        no_worse = (points[None, :, :] <= block[:, None, :]).all(axis=2)
        better = (points[None, :, :] < block[:, None, :]).any(axis=2)
        on[start:start + 512] = ~(no_worse & better).any(axis=1)
    return on


def plan_point(plan: Plan, options: list[Option], classes: tuple[TrafficClass, ...]) -> tuple[float, float, float]:
    """The plan on the same axes: its cost, the share-weighted mean request latency of its groups' options
    (the figures the candidates use), the largest quality loss among its groups."""
    by_key = {o.key: o for o in options}
    by_name = {k.name: k for k in classes}
    latency = 0.0
    for group in plan.replicas:
        for figures in group.classes:
            latency += figures.share * request_latency_ms(by_key[group.key], by_name[figures.name])
    return plan.cost_per_hour, latency / len(classes), max(g.ppl_delta for g in plan.replicas)


def best_by(found: list[Candidate], attribute: str, objective: str) -> dict[str, Candidate]:
    """The best candidate for each device (attribute 'gpu') or method ('method'), by the plan's objective."""
    order = ((lambda c: (c.latency_ms, c.cost_per_hour, c.devices, c.ppl_delta, c.key)) if objective == "latency"
             else (lambda c: (c.cost_per_hour, c.devices, c.ppl_delta, c.latency_ms, c.key)))
    best: dict[str, Candidate] = {}
    for candidate in sorted(found, key=order):
        best.setdefault(getattr(candidate, attribute), candidate)
    return dict(sorted(best.items()))


def why_lost(rival: Candidate, plan: Plan, objective: str) -> str:
    """Why the best candidate on another device or method is not the plan, in one phrase."""
    cost = plan.cost_per_hour or 0.0
    if objective == "latency":
        return f"mean request latency {rival.latency_ms:,.0f} ms against the plan's (cost ${rival.cost_per_hour:.2f}/h)"
    if rival.cost_per_hour > cost + 0.005:
        ratio = f", {rival.cost_per_hour / cost:.2f}x" if cost > 0 else ""
        return f"costs ${rival.cost_per_hour - cost:,.2f}/h more (${rival.cost_per_hour:,.2f}/h{ratio})"
    if rival.cost_per_hour >= cost - 0.005:
        plan_gpus = sum(g.count * g.gpus_per_replica for g in plan.replicas)
        plan_ppl = max(g.ppl_delta for g in plan.replicas)
        if rival.devices > plan_gpus:
            return f"same cost, more GPUs ({rival.devices} against {plan_gpus}): ties go to fewer GPUs"
        if rival.ppl_delta > plan_ppl:
            return (f"same cost, more quality loss (ppl +{rival.ppl_delta:.3f} against +{plan_ppl:.3f}): ties go "
                    f"to fewer GPUs, then measured configurations, then less quality loss")
        return ("same cost, GPUs and quality loss: loses the tie-break's later steps (measured over extrapolated, "
                "lower TPOT, then the configuration's name)")
    if objective == "balanced":
        return f"cheaper alone (${rival.cost_per_hour:,.2f}/h), but slower: the balanced objective weighs latency too"
    return f"cheaper alone (${rival.cost_per_hour:,.2f}/h), but outside the scenario's limits (configurations, budget)"
