"""One traffic class's load models for many configurations at once.

`serving.performances` evaluates the batch sizes of one configuration in one array pass; the candidate
space has thousands of configurations, and calling it once per configuration costs more in Python
than in arithmetic. Here every (configuration, batch size) pair of a class is one element: the step
models are stacked into arrays (stepmodel.stack, as solver/probes.py does for validation rows), the
scheduler's settings become arrays too, and the closed forms of solver/serving.py run once per
scheduler kind (policy x chunking) over blocks of elements. The figures are those `performances`
gives element by element (tests/test_loads.py holds the two equal); a Performance record is built
only for the elements the caller asks for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import forked
from .candidates import Config
from .scenario import TrafficClass
from .serving import (PERCENTILES, Performance, Scheduling, Timing, _protocol, capacity_key, closed_loop,
                      poisson, rate_capacities, running_text, slot_text, slo_violations)
from .stepmodel import StepModel, stack

BLOCK = 2048  # elements per numpy pass: bounds the closed loop's percentile grids (BLOCK x 400 floats)
FORKED_BLOCKS = 4  # a class with this many blocks or more shares them with forked children (solver/forked.py)


@dataclass(frozen=True)
class Job:
    """One configuration's batch sizes for the class, on the step model and scheduler it runs."""

    config: Config
    times: Timing
    batches: tuple[int, ...]


class Figures:
    """The load models' results for every element (the jobs' batch sizes, job after job)."""

    def __init__(self, traffic: TrafficClass, jobs: list[Job]):
        self.traffic, self.jobs = traffic, jobs
        counts = [len(j.batches) for j in jobs]
        self.start = np.concatenate([[0], np.cumsum(counts)]).astype(int)
        self.owner = np.repeat(np.arange(len(jobs)), counts)
        n = int(self.start[-1])
        self.running = np.array([b for j in jobs for b in j.batches], dtype=float)
        nan = lambda: np.full(n, np.nan)  # noqa: E731
        self.ttft, self.tpot, self.throughput, self.decoding = nan(), nan(), nan(), nan()
        self.ttft_p = {p: nan() for p in PERCENTILES}
        self.tpot_p = {p: nan() for p in PERCENTILES}
        self.capacity = self.running.copy()  # a concurrency class: the clients; a rate class: found below
        self.slot_wait, self.slot_waiting = np.zeros(n), np.zeros(n)  # a rate class: the wait for a free slot
        self.at = np.zeros(n)
        self._rows = None  # Python floats for `performance`, made on first use
        if n:
            self._evaluate()
        self._decide()

    def _evaluate(self) -> None:
        traffic, jobs = self.traffic, self.jobs
        needed = self._from_elements() if traffic.load_kind != "rate" else np.ones(len(self.running), dtype=bool)
        if not needed.any():
            return
        steps = stack([j.times.steps for j in jobs])
        scheds = [j.times.scheduling for j in jobs]
        settings = {name: np.array([getattr(s, name) for s in scheds], dtype=kind) for name, kind in (
            ("token_budget", float), ("kv_tokens", float), ("reserve_full", bool), ("request_overhead_s", float),
            ("wave_persistence", float), ("scheduler_steps", float), ("first_token_steps", float))}
        groups: dict[tuple, list[int]] = {}
        for index, s in enumerate(scheds):
            groups.setdefault((s.policy, s.chunked), []).append(index)
        bounds = search_bounds(traffic, jobs) if traffic.load_kind == "rate" else ()
        known = _known_capacities(traffic, jobs, self.running) if traffic.load_kind == "rate" else None
        blocks = []  # (policy, chunked, elements): one numpy pass each
        for (policy, chunked), members in sorted(groups.items()):
            elements = np.concatenate([np.arange(self.start[i], self.start[i + 1]) for i in members])
            elements = elements[needed[elements]]
            blocks += [(policy, chunked, elements[first:first + BLOCK]) for first in range(0, len(elements), BLOCK)]

        def evaluate(block) -> dict:
            policy, chunked, part = block
            owner = self.owner[part]
            steps_here = StepModel(*(np.asarray(getattr(steps, name))[owner]
                                     for name in StepModel.__dataclass_fields__))
            sched = Scheduling(policy, settings["token_budget"][owner], self.running[part], chunked,
                               settings["reserve_full"][owner], settings["kv_tokens"][owner],
                               request_overhead_s=settings["request_overhead_s"][owner],
                               wave_persistence=settings["wave_persistence"][owner],
                               scheduler_steps=settings["scheduler_steps"][owner],
                               first_token_steps=settings["first_token_steps"][owner])
            timing = Timing(steps_here, sched)
            found = {}
            if traffic.load_kind == "rate":
                found["capacity"] = (known[part] if known is not None else rate_capacities(
                    timing, traffic, sched.max_sequences, tuple(b[owner] for b in bounds)))
                found["at"] = at = np.maximum(np.minimum(found["capacity"], traffic.rate_per_s), 1e-9)
                load = poisson(timing, traffic.prompt_tokens, traffic.output_tokens, at)
            else:
                load = closed_loop(timing, traffic.prompt_tokens, traffic.output_tokens, self.running[part],
                                   _protocol(traffic))
            found.update(ttft=load.ttft, tpot=load.tpot, throughput=load.throughput, decoding=load.decoding,
                         ttft_p=load.ttft_percentiles, tpot_p=load.tpot_percentiles, slot_wait=load.slot_wait,
                         slot_waiting=load.slot_waiting)
            return found

        # the blocks are independent: shared out to forked children where more CPUs are free
        for (_, _, part), found in zip(blocks, forked.spread(evaluate, blocks, [], minimum=FORKED_BLOCKS)):
            if "capacity" in found:
                self.capacity[part], self.at[part] = found["capacity"], found["at"]
                self.slot_wait[part], self.slot_waiting[part] = found["slot_wait"], found["slot_waiting"]
            self.ttft[part], self.tpot[part] = found["ttft"], found["tpot"]  # numpy broadcasts a scalar figure
            self.throughput[part], self.decoding[part] = found["throughput"], found["decoding"]
            for p in PERCENTILES:
                self.ttft_p[p][part] = found["ttft_p"][p]
                self.tpot_p[p][part] = found["tpot_p"][p]
        if traffic.load_kind != "rate":
            self._keep_elements(needed)
        elif known is None:
            _keep_capacities(traffic, jobs, self.running, self.capacity)

    def _element_columns(self) -> list[np.ndarray]:
        return [self.ttft, self.tpot, self.throughput, self.decoding, *(self.ttft_p[p] for p in PERCENTILES),
                *(self.tpot_p[p] for p in PERCENTILES)]

    def _from_elements(self) -> np.ndarray:
        """A closed loop's figures of each element (a job's Timing object, the very one, at one batch size) from an
        earlier Figures of the same lengths and protocol: a closed loop's figures read neither the class's SLOs nor
        its number of users (the clients are the batch size), so an SLO sweep's points and a concurrency sweep's
        batch sizes that earlier points had evaluate the load models once per process (each element is computed
        apart from the others: the same bits alone or in a block). Returns which elements are still to run."""
        load = _closed_key(self.traffic)
        needed = np.ones(len(self.running), dtype=bool)
        rows, values = [], []
        for index, (owner, batch) in enumerate(zip(self.owner.tolist(), self.running.tolist())):
            times = self.jobs[owner].times
            kept = _ELEMENTS.get((load, id(times), batch))
            if kept is not None and kept[0] is times:
                rows.append(index)
                values.append(kept[1])
        if rows:
            needed[rows] = False
            for column, found in zip(self._element_columns(), zip(*values)):
                column[rows] = found
        return needed

    def _keep_elements(self, evaluated: np.ndarray) -> None:
        if len(_ELEMENTS) >= ELEMENTS_MEMO_SIZE:
            _ELEMENTS.clear()
        load = _closed_key(self.traffic)
        rows = np.nonzero(evaluated)[0]
        columns = [column[rows].tolist() for column in self._element_columns()]
        for row, found in zip(rows.tolist(), zip(*columns)):
            times = self.jobs[int(self.owner[row])].times
            _ELEMENTS[load, id(times), float(self.running[row])] = (times, found)

    def _decide(self) -> None:
        """Milliseconds at the class's statistic, and which elements meet the SLOs (as _figures decides)."""
        traffic = self.traffic
        name = traffic.statistic
        self.ttft_ms, self.tpot_ms = self.ttft * 1e3, self.tpot * 1e3
        self.ttft_stat = self.ttft_ms if name == "mean" else self.ttft_p[int(name[1:])] * 1e3
        self.tpot_stat = self.tpot_ms if name == "mean" else self.tpot_p[int(name[1:])] * 1e3
        ok = np.ones(len(self.running), dtype=bool)
        if traffic.ttft_ms is not None:
            ok &= self.ttft_stat <= traffic.ttft_ms
        if traffic.tpot_limit_ms is not None:
            ok &= self.tpot_stat <= traffic.tpot_limit_ms
        limits = np.array([j.config.framework.max_batch for j in self.jobs], dtype=float)[self.owner] \
            if self.jobs else np.zeros(0)
        self.meets = ok & (self.capacity > 0) & (self.running <= limits)

    def element(self, job: int, position: int) -> int:
        return int(self.start[job]) + position

    def performance(self, index: int) -> Performance:
        """The record `serving.performances` gives for element `index` (serving._figures's fields)."""
        rows = self.rows()
        traffic, owner = self.traffic, rows["owner"][index]
        job = self.jobs[owner]
        limit = int(rows["running"][index])
        ttft_p = {p: v[index] for p, v in rows["ttft_p"].items()}
        tpot_p = {p: v[index] for p, v in rows["tpot_p"].items()}
        ttft, tpot = rows["ttft"][index], rows["tpot"][index]
        capacity = rows["capacity"][index]
        held = running_text(limit, job.times.scheduling, traffic.prompt_tokens, traffic.output_tokens)
        if traffic.load_kind == "rate":
            waits = slot_text(float(self.slot_waiting[index]), float(self.slot_wait[index]))
            described = f"Poisson arrivals at {rows['at'][index]:.4g} requests/s per replica, {held}{waits}"
        else:
            protocol = (f"{traffic.requests_per_client:g} requests per client after warm-up"
                        if traffic.requests_per_client >= 1 else "steady state")
            described = f"closed loop, {capacity:g} clients, {held}, {protocol}"
        name = traffic.statistic
        at_ttft = ttft if name == "mean" else ttft_p.get(int(name[1:]), math.inf)
        at_tpot = tpot if name == "mean" else tpot_p.get(int(name[1:]), math.inf)
        violations = slo_violations(traffic, at_ttft, at_tpot, name)
        if traffic.load_kind == "rate" and capacity <= 0 and not violations:
            violations = [f"batch {limit} cannot hold one request within the SLOs"]
        if limit > job.config.framework.max_batch:
            violations.append(f"batch {limit} > {job.config.framework.id} max batch {job.config.framework.max_batch}")
        prefill = rows["prefill"].get(owner)
        if prefill is None:
            times = job.times
            budget = times.scheduling.token_budget
            prefill = rows["prefill"][owner] = traffic.prompt_tokens / (
                times.steps.seconds(0.0, min(traffic.prompt_tokens, budget)) * max(1.0, traffic.prompt_tokens / budget))
        return Performance(
            ttft_ms=ttft, ttft_max_ms=ttft_p.get(99, ttft), tpot_ms=tpot, capacity=capacity,
            output_tokens_per_s=rows["throughput"][index] * traffic.output_tokens,
            decode_tokens_per_s=rows["decoding"][index] / (tpot / 1e3) if tpot > 0 and math.isfinite(tpot)
            else 0.0,
            prefill_tokens_per_s=prefill,
            violations=tuple(violations), ttft_percentiles_ms=ttft_p, tpot_percentiles_ms=tpot_p,
            statistic=traffic.statistic, load_model=described,
        )

    def rows(self) -> dict:
        """The figures as Python lists, element by element (what `performance` and the candidate space
        read: one conversion for all elements instead of one numpy scalar per field and element).
        Milliseconds where `performance` reports them: x 1e3 in numpy rounds as it does in Python floats."""
        if self._rows is None:
            self._rows = self._columns()
        return self._rows

    def _columns(self) -> dict:
        return {"ttft_stat": self.ttft_stat.tolist(), "tpot_stat": self.tpot_stat.tolist(),
                "meets": self.meets.tolist(), "owner": self.owner.tolist(), "running": self.running.tolist(),
                "capacity": self.capacity.tolist(), "at": self.at.tolist(),
                "ttft": (self.ttft * 1e3).tolist(), "tpot": (self.tpot * 1e3).tolist(),
                "ttft_p": {p: (v * 1e3).tolist() for p, v in self.ttft_p.items()},
                "tpot_p": {p: (v * 1e3).tolist() for p, v in self.tpot_p.items()},
                "throughput": self.throughput.tolist(), "decoding": self.decoding.tolist(), "prefill": {}}


# Memos of what the load models found for a candidate space's jobs, kept per process for a sweep's next points
# (the first-pass cache hands every point the very same Timing objects): keyed by what the figures read of the
# class, the jobs' Timing objects (held in the entry, so that their ids stay theirs) and the batch sizes.
_RATE_CAPACITIES: dict = {}  # rate classes' capacities: _known_capacities
_ELEMENTS: dict = {}  # a closed loop's figures by element (load, id(Timing), batch): Figures._from_elements
MEMO_SIZE = 64  # capacity arrays kept before the memo starts over
ELEMENTS_MEMO_SIZE = 100_000  # elements (ten floats each, ~570 bytes an entry: ~57 MB)


def _closed_key(traffic: TrafficClass) -> tuple:
    """What a closed loop's figures read of a class: its lengths and protocol (not its SLOs or users)."""
    return traffic.prompt_tokens, traffic.output_tokens, traffic.requests_per_client


def _capacity_memo_key(traffic: TrafficClass, jobs: list[Job], running: np.ndarray) -> tuple:
    return capacity_key(traffic), tuple(id(job.times) for job in jobs), running.tobytes()


def _known_capacities(traffic: TrafficClass, jobs: list[Job], running: np.ndarray) -> np.ndarray | None:
    """Every element's rate capacity from an earlier Figures of the same jobs and a class that differs at most in
    its rate (a replica carries what it carries whatever is offered): a rate sweep's or region map's points search
    each capacity once per process. None when not known."""
    kept = _RATE_CAPACITIES.get(_capacity_memo_key(traffic, jobs, running))
    if kept is None or len(kept[0]) != len(jobs) or any(a is not b.times for a, b in zip(kept[0], jobs)):
        return None
    return kept[1].copy()


def _keep_capacities(traffic: TrafficClass, jobs: list[Job], running: np.ndarray, capacity: np.ndarray) -> None:
    if len(_RATE_CAPACITIES) >= MEMO_SIZE:
        _RATE_CAPACITIES.clear()
    _RATE_CAPACITIES[_capacity_memo_key(traffic, jobs, running)] = ([job.times for job in jobs], capacity.copy())


def search_bounds(traffic: TrafficClass, jobs: list[Job]) -> tuple[np.ndarray, np.ndarray]:
    """Per job: the prefill-bound rate and the idle step time that serving.rate_capacities starts its
    search from, computed as it computes them (on the job's own step model)."""
    prompt = traffic.prompt_tokens
    prefill_bound, idle = np.empty(len(jobs)), np.empty(len(jobs))
    for i, job in enumerate(jobs):
        steps = job.times.steps
        budget = max(job.times.scheduling.token_budget, prompt)
        prefill_bound[i] = 1.0 / (prompt / budget * steps.seconds(0.0, min(prompt, budget)) + 1e-12)
        idle[i] = steps.seconds(0.0, 0.0)
    return prefill_bound, idle
