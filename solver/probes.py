"""Many speed predictions at once: validation rows turned into load-model probes, evaluated as arrays.

Building a probe calls the plugins (step model, scheduler, memory); evaluating thousands of probes is
then a few numpy passes through the closed forms of solver/serving.py, with the step models stacked
into arrays. `quantplan validate` evaluates them once; `quantplan fit` evaluates them for every trial
value of the efficiencies, which it applies to the stacked step models directly (`Adjustment`), so a
fit never calls a plugin again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from . import serving
from .candidates import Config
from .serving import Protocol, Scheduling, Timing
from .stepmodel import StepModel, stack

@dataclass(frozen=True)
class Probe:
    """One load-model evaluation: a configuration's step model and scheduler at one load."""

    steps: StepModel
    scheduling: Scheduling
    prompt: int
    output: int
    kind: str  # "closed" or "rate"
    load: float  # clients or requests/s
    requests_per_client: float
    statistic: str
    metric: str
    config: Config  # what the fit's parameters need to know: framework, method, device, GPUs, kernel
    served: bool = True  # behind an API server (False: an offline engine benchmark)
    server: str = ""  # which one: "" the engine's own, else its name (e.g. "nim")


@dataclass(frozen=True)
class Adjustment:
    """Changes to the stacked step models: factors on rates, seconds added (arrays over probes)."""

    bandwidth: np.ndarray
    decode_peak: np.ndarray
    prefill_peak: np.ndarray
    overhead_s: np.ndarray
    request_overhead_s: np.ndarray
    wave_persistence: np.ndarray
    overhead_per_sequence_s: np.ndarray
    prompt_step_overhead_s: np.ndarray
    routing_concentration: np.ndarray  # MoE routing skew to use instead (nan: the probe's own)


def probe(timing: Timing, config: Config, prompt: int, output: int, kind: str, load: float, metric: str,
          requests_per_client: float = 0.0, statistic: str = "mean", running: int | None = None,
          served: bool = True, server: str = "") -> Probe:
    """`served` False: an offline engine benchmark, with no API server's per-request overhead; `server`:
    the API server in front of the engine when not its own (its overhead is already in the timing)."""
    sched = timing.scheduling if running is None else timing.scheduling.with_sequences(running)
    if not served:
        sched = replace(sched, request_overhead_s=0.0)
    return Probe(timing.steps, sched, prompt, output, kind, load, requests_per_client, statistic, metric, config,
                 served, server if served else "")


@dataclass
class Batch:
    """Probes grouped by what the closed forms branch on (policy, chunking, load kind), stacked."""

    probes: list[Probe]
    groups: dict = field(default_factory=dict)  # (policy, chunked, kind) -> index array

    def __post_init__(self) -> None:
        keys: dict = {}
        for index, p in enumerate(self.probes):
            keys.setdefault((p.scheduling.policy, p.scheduling.chunked, p.kind), []).append(index)
        self.groups = {key: np.array(value) for key, value in sorted(keys.items())}
        self.steps = stack([p.steps for p in self.probes]) if self.probes else None
        self.arrays = {
            "prompt": np.array([p.prompt for p in self.probes], dtype=float),
            "output": np.array([p.output for p in self.probes], dtype=float),
            "load": np.array([p.load for p in self.probes], dtype=float),
            "requests_per_client": np.array([p.requests_per_client for p in self.probes], dtype=float),
            "token_budget": np.array([p.scheduling.token_budget for p in self.probes], dtype=float),
            "max_sequences": np.array([p.scheduling.max_sequences for p in self.probes], dtype=float),
            "kv_tokens": np.array([p.scheduling.kv_tokens for p in self.probes], dtype=float),
            "reserve_full": np.array([p.scheduling.reserve_full for p in self.probes], dtype=bool),
            "request_overhead_s": np.array([p.scheduling.request_overhead_s for p in self.probes], dtype=float),
            "wave_persistence": np.array([p.scheduling.wave_persistence for p in self.probes], dtype=float),
        }

    def neutral(self) -> Adjustment:
        n = len(self.probes)
        return Adjustment(np.ones(n), np.ones(n), np.ones(n), np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n),
                          np.zeros(n), np.full(n, np.nan))

    def evaluate(self, adjust: Adjustment | None = None) -> np.ndarray:
        """Every probe's metric (inf where the load cannot be carried)."""
        found = np.full(len(self.probes), np.nan)
        if not self.probes:
            return found
        adjust = adjust or self.neutral()
        steps = replace(self.steps, bandwidth=self.steps.bandwidth * adjust.bandwidth,
                        decode_peak=self.steps.decode_peak * adjust.decode_peak,
                        prefill_peak=self.steps.prefill_peak * adjust.prefill_peak,
                        overhead_s=self.steps.overhead_s + adjust.overhead_s,
                        overhead_per_sequence_s=self.steps.overhead_per_sequence_s + adjust.overhead_per_sequence_s,
                        prompt_step_overhead_s=self.steps.prompt_step_overhead_s + adjust.prompt_step_overhead_s,
                        routing_concentration=np.where(np.isnan(adjust.routing_concentration),
                                                       self.steps.routing_concentration,
                                                       adjust.routing_concentration))
        a = self.arrays
        for (policy, chunked, kind), index in self.groups.items():
            part = _take(steps, index)
            sched = Scheduling(policy, a["token_budget"][index], a["max_sequences"][index], chunked,
                               a["reserve_full"][index], a["kv_tokens"][index],
                               request_overhead_s=a["request_overhead_s"][index] + adjust.request_overhead_s[index],
                               wave_persistence=np.clip(a["wave_persistence"][index]
                                                        + adjust.wave_persistence[index], 0.0, 1.0))
            timing = Timing(part, sched)
            prompt, output, load = a["prompt"][index], a["output"][index], a["load"][index]
            if kind == "rate":
                result = serving.poisson(timing, prompt, output, load)
            else:
                result = serving.closed_loop(timing, prompt, output, load,
                                             Protocol(a["requests_per_client"][index]))
            found[index] = self._pick(index, result, part, sched, prompt, output)
        return found

    def _pick(self, index, result, steps: StepModel, sched: Scheduling, prompt, output) -> np.ndarray:
        values = np.full(len(index), np.nan)
        for position, i in enumerate(index):
            p = self.probes[i]
            if p.metric in ("ttft_ms", "tpot_ms"):
                which = "ttft" if p.metric == "ttft_ms" else "tpot"
                values[position] = _at(serving.statistic(result, which, p.statistic), position) * 1e3
            elif p.metric == "output_tokens_per_s":
                values[position] = _at(result.throughput, position) * p.output
            elif p.metric == "tokens_per_s_per_user":
                values[position] = 1.0 / _at(result.tpot, position)
            elif p.metric == "decode_tokens_per_s":
                values[position] = _at(result.decoding, position) / _at(result.tpot, position)
        prefill = [position for position, i in enumerate(index) if self.probes[i].metric == "prefill_tokens_per_s"]
        if prefill:
            budget = np.asarray(sched.token_budget, dtype=float)
            first = steps.seconds(0.0, np.minimum(prompt, budget)) * np.maximum(1.0, prompt / budget)
            values[prefill] = (prompt / first)[prefill]
        return values


def _at(value, position: int) -> float:
    array = np.asarray(value, dtype=float)
    return float(array.reshape(-1)[position]) if array.ndim else float(array)


def _take(steps: StepModel, index: np.ndarray) -> StepModel:
    return StepModel(*(np.asarray(getattr(steps, name))[index] for name in StepModel.__dataclass_fields__))


def reduce(values: np.ndarray, members: list[list[int]], how: list[str]) -> np.ndarray:
    """One figure per row from its probes: the value, the best over batch sizes, or a ratio."""
    found = np.full(len(members), np.nan)
    for row, (indices, rule) in enumerate(zip(members, how)):
        if not indices:
            continue
        picked = values[indices]
        if rule == "max":
            finite = picked[np.isfinite(picked)]
            found[row] = finite.max() if finite.size else math.nan
        elif rule == "ratio":
            found[row] = picked[0] / picked[1] if picked[1] > 0 else math.nan
        else:
            found[row] = picked[0]
    return found
