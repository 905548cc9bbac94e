"""Serving-level figures: TTFT and TPOT as a benchmark reports them, and how much load a replica carries.

Two load models:
- concurrency c (closed loop, `vllm bench serve --max-concurrency c` with fixed lengths): the c
  requests start together and stay in lockstep, so a replica runs batch c; TTFT includes prefilling
  the prompts that arrived with it (in chunks of the engine's token budget) and TPOT is pure decode
  at batch c. ttft_ms is the mean over the c requests, ttft_max_ms the last one.
- rate r (Poisson arrivals): one prompt's prefill plus the M/D/1 wait behind other prefills and half
  a decode step; decode steps stretch by the share of engine time prefills take. A replica's capacity
  is the highest rate at which every SLO still holds and the batch limit is not exceeded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .candidates import Config, Step
from .estimator import StepTime, step_terms, step_time
from .registry import World
from .scenario import TrafficClass

MAX_PREFILL_UTILISATION = 0.9  # above this a Poisson queue of prefills is too close to unstable


@dataclass(frozen=True)
class Timing:
    """Step times for one configuration at its batch size and one class's lengths."""

    decode: StepTime
    prefill_one: StepTime
    prefill_batch: StepTime

    @property
    def tpot_s(self) -> float:
        return self.decode.seconds

    def pessimistic(self, decode: float, prefill: float) -> Timing:
        """Decode steps `decode` times and prefills `prefill` times slower."""
        return Timing(self.decode.scaled(decode), self.prefill_one.scaled(prefill),
                      self.prefill_batch.scaled(prefill))

    def at(self, index: int) -> Timing:
        """One batch size out of an array evaluation."""
        return Timing(self.decode.at(index), self.prefill_one.at(index), self.prefill_batch.at(index))

    def split(self, count: int) -> list[Timing]:
        """Every batch size of an array evaluation, as scalar records."""
        return [Timing(*parts) for parts in zip(self.decode.split(count), self.prefill_one.split(count),
                                                  self.prefill_batch.split(count))]


def timing(world: World, config: Config, traffic: TrafficClass) -> Timing:
    """Step times at `config.batch` (an int, or a numpy array of batch sizes evaluated at once)."""
    batch, prompt, output = config.batch, traffic.prompt_tokens, traffic.output_tokens
    budget = config.framework.max_batched_tokens
    decode = Step("decode", batch, batch, prompt + output / 2)
    one = Step("prefill", 1, prompt, prompt, math.ceil(prompt / budget))
    many = Step("prefill", batch, batch * prompt, prompt, np.ceil(batch * prompt / budget))
    return Timing(
        decode=step_time(step_terms(world, config, decode), "decode"),
        prefill_one=step_time(step_terms(world, config, one), "prefill"),
        prefill_batch=step_time(step_terms(world, config, many), "prefill"),
    )


@dataclass(frozen=True)
class Performance:
    """Predicted serving figures for one configuration and one traffic class."""

    ttft_ms: float
    ttft_max_ms: float
    tpot_ms: float
    capacity: float  # users (concurrency class) or requests/s (rate class) one replica carries
    output_tokens_per_s: float  # output tokens per second one replica delivers at that load
    decode_tokens_per_s: float  # batch / TPOT
    prefill_tokens_per_s: float
    violations: tuple[str, ...] = ()

    @property
    def meets(self) -> bool:
        return not self.violations and self.capacity > 0

    @property
    def tokens_per_s_per_user(self) -> float:
        return 1000.0 / self.tpot_ms if self.tpot_ms > 0 else math.inf


def performance(config: Config, traffic: TrafficClass, times: Timing, rate: float | None = None) -> Performance:
    """Figures for `traffic` on one replica; for a rate class, reported at `rate` requests/s arriving at
    this replica (default: the class rate, capped by the replica's capacity)."""
    if traffic.load_kind == "rate":
        return _poisson(config, traffic, times, rate)
    return _lockstep(config, traffic, times)


def _lockstep(config: Config, traffic: TrafficClass, times: Timing) -> Performance:
    batch, output = config.batch, traffic.output_tokens
    first, last = times.prefill_one.seconds, times.prefill_batch.seconds
    ttft = (first + last) / 2  # request i's first token after i prompts: mean over i = 1..c
    tpot = times.tpot_s
    cycle = last + (output - 1) * tpot
    violations = _slo_violations(traffic, ttft * 1e3, tpot * 1e3)
    if batch > config.framework.max_batch:
        violations.append(f"batch {batch} > {config.framework.id} max batch {config.framework.max_batch}")
    return Performance(
        ttft_ms=ttft * 1e3, ttft_max_ms=last * 1e3, tpot_ms=tpot * 1e3,
        capacity=float(batch), output_tokens_per_s=batch * output / cycle if cycle > 0 else 0.0,
        decode_tokens_per_s=batch / tpot if tpot > 0 else 0.0,
        prefill_tokens_per_s=batch * traffic.prompt_tokens / last if last > 0 else 0.0,
        violations=tuple(violations),
    )


def _poisson_figures(rate: float, traffic: TrafficClass, times: Timing) -> tuple[float, float, float]:
    """(TTFT s, TPOT s, mean requests in the replica) at `rate` requests/s on one replica."""
    prefill = times.prefill_one.seconds
    utilisation = rate * prefill
    if utilisation >= 1:
        return math.inf, math.inf, math.inf
    wait = utilisation * prefill / (2 * (1 - utilisation))
    tpot = times.tpot_s / (1 - utilisation)
    ttft = prefill + wait + times.tpot_s / 2
    return ttft, tpot, rate * (ttft + traffic.output_tokens * tpot)


def _poisson(config: Config, traffic: TrafficClass, times: Timing, at_rate: float | None = None) -> Performance:
    prefill = times.prefill_one.seconds
    ttft_limit = traffic.ttft_ms / 1e3 if traffic.ttft_ms else math.inf
    tpot_limit = traffic.tpot_limit_ms / 1e3 if traffic.tpot_limit_ms else math.inf
    batch = min(config.batch, config.framework.max_batch)

    def ok(rate: float) -> bool:
        ttft, tpot, in_flight = _poisson_figures(rate, traffic, times)
        return (rate * prefill <= MAX_PREFILL_UTILISATION and ttft <= ttft_limit and tpot <= tpot_limit
                and in_flight <= batch)

    low, high = 0.0, MAX_PREFILL_UTILISATION / prefill if prefill > 0 else 1e6
    if not ok(1e-9):
        low = 0.0
    else:
        for _ in range(40):  # 2^-40 of the range: far below any SLO's precision
            middle = (low + high) / 2
            low, high = (middle, high) if ok(middle) else (low, middle)
    rate = at_rate if at_rate is not None else min(low, traffic.rate_per_s or low)
    ttft, tpot, _ = _poisson_figures(rate if rate > 0 else 1e-9, traffic, times)
    violations = [] if low > 0 else _slo_violations(traffic, ttft * 1e3, tpot * 1e3) or [
        f"batch {batch} cannot hold one request at this TTFT/TPOT"]
    return Performance(
        ttft_ms=ttft * 1e3, ttft_max_ms=ttft * 1e3, tpot_ms=tpot * 1e3, capacity=low,
        output_tokens_per_s=rate * traffic.output_tokens,
        decode_tokens_per_s=batch / times.tpot_s if times.tpot_s > 0 else 0.0,
        prefill_tokens_per_s=traffic.prompt_tokens / prefill if prefill > 0 else 0.0,
        violations=tuple(violations),
    )


def _slo_violations(traffic: TrafficClass, ttft_ms: float, tpot_ms: float) -> list[str]:
    found = []
    if traffic.ttft_ms is not None and ttft_ms > traffic.ttft_ms:
        found.append(f"TTFT {ttft_ms:.0f} ms > {traffic.ttft_ms:g} ms")
    limit = traffic.tpot_limit_ms
    if limit is not None and tpot_ms > limit:
        found.append(f"TPOT {tpot_ms:.1f} ms > {limit:.1f} ms")
    return found
