"""Quality gates of a traffic class: perplexity and KL ceilings, accuracy-recovery floors per task kind.

A class's gate holds every bound it asks for: a use case gives the seed's ppl and KL thresholds
(VALIDATION_THRESHOLDS), `max_ppl_delta` a ppl ceiling, `min_recovery_pct` a recovery floor for one or
every task kind. A configuration passes when every bound holds on quality model v2's central
prediction. Headroom is the share of the allowance left: (limit - value) / limit for a ceiling, and
(value - floor) / (100 - floor) for a recovery floor, so bounds of different kinds compare.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import QuantplanError
from .estimator import Quality
from .quality_data import TASK_KINDS
from .scenario import TrafficClass

NAMES = {"ppl_delta": "ppl", "kl_divergence": "KL"}


@dataclass(frozen=True)
class Bound:
    figure: str  # ppl_delta | kl_divergence | recovery.<kind>
    limit: float
    label: str  # where it comes from: a use case id, max_ppl_delta or min_recovery_pct

    @property
    def ceiling(self) -> bool:
        return not self.figure.startswith("recovery.")

    def value(self, quality: Quality) -> float:
        if self.figure == "ppl_delta":
            return quality.ppl_delta
        if self.figure == "kl_divergence":
            return quality.kl_divergence
        return quality.recovery_pct[self.figure.split(".", 1)[1]]

    def headroom(self, quality: Quality) -> float:
        """Share of the allowance left (negative: the bound is broken)."""
        value = self.value(quality)
        if self.ceiling:
            return (self.limit - value) / self.limit if self.limit > 0 else (0.0 if value <= 0 else -1.0)
        allowance = 100.0 - self.limit
        return (value - self.limit) / allowance if allowance > 0 else (0.0 if value >= 100.0 else -1.0)

    def describe(self, quality: Quality) -> str:
        """'KL 0.031 of at most 0.05 (chat_general): 38% headroom'."""
        value, headroom = self.value(quality), self.headroom(quality)
        if self.ceiling:
            text = f"{NAMES[self.figure]} {value:.3g} of at most {self.limit:g}"
        else:
            text = f"{self.figure.split('.', 1)[1]} recovery {value:.2f}% of at least {self.limit:g}%"
        state = f"{headroom:.0%} headroom" if headroom >= 0 else f"over by {-headroom:.0%} of the allowance"
        return f"{text} ({self.label}): {state}"


@dataclass(frozen=True)
class Gate:
    bounds: tuple[Bound, ...] = ()

    def passes(self, quality: Quality) -> bool:
        return all(bound.headroom(quality) >= 0 for bound in self.bounds)

    def tightest(self, quality: Quality) -> Bound | None:
        """The bound with the least headroom (the one that binds first); None without bounds."""
        return min(self.bounds, key=lambda b: (b.headroom(quality), b.figure), default=None)

    def describe(self, quality: Quality) -> str | None:
        bound = self.tightest(quality)
        return None if bound is None else bound.describe(quality)

    @property
    def ppl_ceiling(self) -> float | None:
        return next((b.limit for b in self.bounds if b.figure == "ppl_delta"), None)


def gate(world, traffic: TrafficClass) -> Gate:
    """The quality bounds `traffic` asks for."""
    bounds = []
    if traffic.use_case is not None:
        use_case = world.quality.use_cases.get(traffic.use_case)
        if use_case is None:
            known = ", ".join(sorted(world.quality.use_cases))
            raise QuantplanError(f"unknown use case {traffic.use_case!r}; known: {known}")
        bounds += [Bound("ppl_delta", use_case.max_ppl_delta, use_case.id),
                   Bound("kl_divergence", use_case.max_kl_divergence, use_case.id)]
    elif traffic.max_ppl_delta is not None:
        bounds.append(Bound("ppl_delta", traffic.max_ppl_delta, "max_ppl_delta"))
    floors = traffic.min_recovery_pct
    if isinstance(floors, (int, float)):
        floors = {kind: float(floors) for kind in TASK_KINDS}
    for kind, floor in sorted((floors or {}).items()):
        bounds.append(Bound(f"recovery.{kind}", floor, "min_recovery_pct"))
    return Gate(tuple(bounds))
