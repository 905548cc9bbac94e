"""Many speed predictions at once: validation rows turned into load-model probes, evaluated as arrays.

Building a probe calls the plugins (step model, scheduler, memory); evaluating thousands of probes is
then a few numpy passes through the closed forms of solver/serving.py, with the step models stacked
into arrays. `quantplan validate` evaluates them once; `quantplan fit` evaluates them for every trial
value of the efficiencies, which it applies to the stacked step models directly (`Adjustment`), so a
fit never calls a plugin again. A pass may take any selection of probes (the fit's finite differences
stack many trial points' probes in one), and probes that differ only in the metric they read share
one load-model run.
"""

from __future__ import annotations

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
    """Probes grouped by what the closed forms branch on (policy, chunking, load kind, whether a
    closed loop's percentiles are read), stacked."""

    probes: list[Probe]
    groups: dict = field(default_factory=dict)  # (policy, chunked, kind, percentiles) -> index array

    def __post_init__(self) -> None:
        keys: dict = {}
        for index, p in enumerate(self.probes):
            keys.setdefault(_group_key(p), []).append(index)
        self.groups = {key: np.array(value) for key, value in sorted(keys.items())}
        self.group_of = np.zeros(len(self.probes), dtype=int)
        for number, index in enumerate(self.groups.values()):
            self.group_of[index] = number
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
            "scheduler_steps": np.array([p.scheduling.scheduler_steps for p in self.probes], dtype=float),
            "first_token_steps": np.array([p.scheduling.first_token_steps for p in self.probes], dtype=float),
        }
        # metric and statistic as small integers (indices into these lists): compared per group and pass
        self.metric_names = sorted({p.metric for p in self.probes})
        self.statistic_names = sorted({p.statistic for p in self.probes})
        self.metric_codes = np.array([self.metric_names.index(p.metric) for p in self.probes], dtype=int)
        self.statistic_codes = np.array([self.statistic_names.index(p.statistic) for p in self.probes], dtype=int)
        # the first probe with the same load-model inputs (a TTFT, a TPOT and a throughput row measured
        # in one benchmark run differ only in the metric they read)
        first: dict = {}
        self.twin_of = np.array([first.setdefault(_inputs(p, index), index) for index, p in enumerate(self.probes)],
                                dtype=int)

    def neutral(self, size: int | None = None) -> Adjustment:
        """No change, for every probe (or for `size` selected ones)."""
        n = len(self.probes) if size is None else size
        return Adjustment(np.ones(n), np.ones(n), np.ones(n), np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n),
                          np.zeros(n), np.full(n, np.nan))

    def evaluate(self, adjust: Adjustment | None = None, select: np.ndarray | None = None,
                 alike: np.ndarray | None = None) -> np.ndarray:
        """Every probe's metric (inf where the load cannot be carried).

        `select` (probe indices, repeats allowed): those probes only, in that order, `adjust` then
        holding one entry per selected probe (the fit evaluates many trial values' changed probes in
        one pass). `alike` (one label per selected probe): probes with the same label have the same
        load-model inputs, adjustment included, so the load model runs once per label and each probe
        reads its metric off that run; by default, unadjusted probes alike in everything but their
        metric (`twin_of`) share a run. Every figure is computed element by element, so a probe's value
        depends neither on which others are evaluated with it nor on which of them it shares a run with."""
        select = np.arange(len(self.probes)) if select is None else np.asarray(select, dtype=int)
        found = np.full(len(select), np.nan)
        if not len(select):
            return found
        if alike is None:
            alike = self.twin_of[select] if adjust is None else np.arange(len(select))
        adjust = adjust or self.neutral(len(select))
        _, heads, run_of = np.unique(alike, return_index=True, return_inverse=True)  # one run per label
        run_of = run_of.reshape(-1)
        base = _take(self.steps, select[heads])
        steps = replace(base, bandwidth=base.bandwidth * adjust.bandwidth[heads],
                        decode_peak=base.decode_peak * adjust.decode_peak[heads],
                        prefill_peak=base.prefill_peak * adjust.prefill_peak[heads],
                        overhead_s=base.overhead_s + adjust.overhead_s[heads],
                        overhead_per_sequence_s=base.overhead_per_sequence_s
                        + adjust.overhead_per_sequence_s[heads],
                        prompt_step_overhead_s=base.prompt_step_overhead_s + adjust.prompt_step_overhead_s[heads],
                        routing_concentration=np.where(np.isnan(adjust.routing_concentration[heads]),
                                                       base.routing_concentration,
                                                       adjust.routing_concentration[heads]))
        head_groups = self.group_of[select[heads]]
        groups = head_groups[run_of]
        slot = np.zeros(len(heads), dtype=int)  # a run's place among its group's runs
        for number, (policy, chunked, kind, percentiles) in enumerate(self.groups):
            runs = np.nonzero(head_groups == number)[0]
            if not len(runs):
                continue
            slot[runs] = np.arange(len(runs))
            position = heads[runs]
            index = select[position]
            a = {name: values[index] for name, values in self.arrays.items()}
            part = _take(steps, runs)
            sched = Scheduling(policy, a["token_budget"], a["max_sequences"], chunked, a["reserve_full"],
                               a["kv_tokens"],
                               request_overhead_s=a["request_overhead_s"] + adjust.request_overhead_s[position],
                               wave_persistence=np.clip(a["wave_persistence"] + adjust.wave_persistence[position],
                                                        0.0, 1.0),
                               scheduler_steps=a["scheduler_steps"], first_token_steps=a["first_token_steps"])
            timing = Timing(part, sched)
            if kind == "rate":
                result = serving.poisson(timing, a["prompt"], a["output"], a["load"])
            else:
                result = serving.closed_loop(timing, a["prompt"], a["output"], a["load"],
                                             Protocol(a["requests_per_client"]), percentiles=percentiles)
            members = np.nonzero(groups == number)[0]
            found[members] = self._pick(select[members], slot[run_of[members]], result, part, sched,
                                        a["prompt"], a["output"])
        return found

    def _pick(self, index, run, result, steps: StepModel, sched: Scheduling, prompt, output) -> np.ndarray:
        """Each probe's metric (`index`: the probes) from its run's load figures (`run`: its place in the
        figures, which hold one group's runs)."""
        n = len(prompt)  # the group's runs
        each = lambda value: np.broadcast_to(np.asarray(value, dtype=float).reshape(-1), (n,))[run]  # noqa: E731
        codes, statistics = self.metric_codes[index], self.statistic_codes[index]
        metrics = {name: codes == number for number, name in enumerate(self.metric_names)}
        none = np.zeros(len(index), dtype=bool)
        values = np.full(len(index), np.nan)
        for metric, which in (("ttft_ms", "ttft"), ("tpot_ms", "tpot")):
            chosen = metrics.get(metric, none)
            for number in np.unique(statistics[chosen]):
                mine = chosen & (statistics == number)
                name = self.statistic_names[number]
                values[mine] = each(serving.statistic(result, which, name))[mine] * 1e3
        chosen = metrics.get("output_tokens_per_s", none)
        values[chosen] = each(result.throughput)[chosen] * output[run][chosen]
        chosen = metrics.get("tokens_per_s_per_user", none)
        values[chosen] = 1.0 / each(result.tpot)[chosen]
        chosen = metrics.get("decode_tokens_per_s", none)
        values[chosen] = each(result.decoding)[chosen] / each(result.tpot)[chosen]
        chosen = metrics.get("prefill_tokens_per_s", none)
        if chosen.any():
            budget = np.asarray(sched.token_budget, dtype=float)
            first = steps.seconds(0.0, np.minimum(prompt, budget)) * np.maximum(1.0, prompt / budget)
            values[chosen] = (prompt / first)[run][chosen]
        return values


def _inputs(p: Probe, index: int) -> tuple:
    """Everything the load model reads of a probe (not the metric read off it); a probe holding
    something that cannot be compared as a key (an array) shares with none."""
    key = (_group_key(p), p.steps, p.scheduling, p.prompt, p.output, p.load, p.requests_per_client, p.served)
    try:
        hash(key)
    except TypeError:
        return ("alone", index)
    return key


def _group_key(p: Probe) -> tuple:
    """What the closed forms branch on; a closed loop computes its TTFT percentiles only for the probes
    that report one."""
    return p.scheduling.policy, p.scheduling.chunked, p.kind, p.kind == "closed" and p.statistic != "mean"


def _take(steps: StepModel, index: np.ndarray) -> StepModel:
    return StepModel(*(np.asarray(getattr(steps, name))[index] for name in StepModel.__dataclass_fields__))


def reduce(values: np.ndarray, members: list[list[int]], how: list[str]) -> np.ndarray:
    """One figure per row from its probes: the value, the best over batch sizes, or a ratio."""
    return Reduction(members, how)(values)


class Reduction:
    """`reduce` for fixed rows, as array operations (the fit reduces the same rows thousands of times).

    Rows whose rule is "max" take the largest finite value of their probes (nan when none is finite),
    "ratio" rows the first probe's value over the second's (nan unless the second is positive), the
    others their first probe's value; rows without probes are nan."""

    def __init__(self, members: list[list[int]], how: list[str]) -> None:
        self.rows = len(members)
        rules = [rule if indices else "none" for indices, rule in zip(members, how)]
        self.one = np.array([r for r, rule in enumerate(rules) if rule not in ("none", "max", "ratio")], dtype=int)
        self.one_probe = np.array([members[r][0] for r in self.one], dtype=int)
        self.ratio = np.array([r for r, rule in enumerate(rules) if rule == "ratio"], dtype=int)
        self.ratio_probes = np.array([members[r][:2] for r in self.ratio], dtype=int).reshape(-1, 2)
        self.max = np.array([r for r, rule in enumerate(rules) if rule == "max"], dtype=int)
        width = max((len(members[r]) for r in self.max), default=0)
        self.max_probes = np.zeros((len(self.max), width), dtype=int)
        self.max_present = np.zeros((len(self.max), width), dtype=bool)
        for position, r in enumerate(self.max):
            self.max_probes[position, :len(members[r])] = members[r]
            self.max_present[position, :len(members[r])] = True

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """Rows' figures from probes' figures (the last axis; leading axes: several sets at once)."""
        found = np.full(values.shape[:-1] + (self.rows,), np.nan)
        found[..., self.one] = values[..., self.one_probe]
        if len(self.ratio):
            numerator, denominator = values[..., self.ratio_probes[:, 0]], values[..., self.ratio_probes[:, 1]]
            positive = denominator > 0
            found[..., self.ratio] = np.where(positive, numerator / np.where(positive, denominator, 1.0), np.nan)
        if len(self.max):
            picked = values[..., self.max_probes]
            finite = self.max_present & np.isfinite(picked)
            best = np.where(finite, picked, -np.inf).max(axis=-1)
            found[..., self.max] = np.where(finite.any(axis=-1), best, np.nan)
        return found
