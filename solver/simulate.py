"""A step-by-step simulation of an engine's scheduler: the reference the closed forms are checked against.

It runs the same step-time function t(d, p) (solver/stepmodel.py) and the same scheduler record
(solver/serving.Scheduling) as the load models, one engine step at a time:

- arrivals: a closed loop of c clients, all starting together after the warm-up, each sending its
  next request when the last one finishes (`requests_per_client` each; 0: a long run whose first
  requests are discarded, the steady state), or Poisson arrivals at a rate (seeded: same input, same
  figures);
- admission: at most `max_sequences` running and as many as the KV cache holds (prompt + output
  reserved up front, or prompt + half the output for paged engines, as serving.py counts them);
- "mixed" steps: every decoding sequence advances one token, and prompt tokens fill the rest of the
  token budget in arrival order (whole prompts only when the engine does not chunk);
- "prefill-first" steps: while prompts wait, a prefill batch of up to the budget runs and decoding
  pauses; otherwise a decode step.

TTFT is measured from a request's arrival to the end of the step that finishes its prompt; TPOT is
(completion - first token) / (output - 1).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from .scenario import TrafficClass
from .serving import PERCENTILES, Timing

STEADY_REQUESTS_PER_CLIENT = 24  # a steady-state closed loop: run this many per client ...
STEADY_DISCARD_PER_CLIENT = 8  # ... and drop the first ones (the start-up wave)
POISSON_REQUESTS = 3000
POISSON_DISCARD = 300
MAX_STEPS = 2_000_000


@dataclass(frozen=True)
class Simulated:
    """Per-request figures of a simulated run (seconds)."""

    ttft: np.ndarray
    tpot: np.ndarray
    duration_s: float
    completed: int
    steps: int

    def as_dict(self) -> dict:
        def stats(values: np.ndarray, name: str) -> dict:
            found = {f"{name}_ms": float(values.mean() * 1e3)}
            found.update({f"{name}_p{p}_ms": float(np.percentile(values, p) * 1e3) for p in PERCENTILES})
            return found

        return {**stats(self.ttft, "ttft"), **stats(self.tpot, "tpot"), "requests": self.completed,
                "steps": self.steps}


@dataclass
class _Request:
    arrival: float
    client: int
    remaining: int  # prompt tokens not yet processed
    first: float = math.nan


def simulate(times: Timing, traffic: TrafficClass, clients: int | None = None, rate: float | None = None,
             seed: int = 0, jitter_s: float | None = None) -> Simulated:
    """Run the scheduler for `traffic`'s lengths: `clients` in a closed loop, else Poisson at `rate`
    (default: the class's rate, or its concurrency as clients).

    `jitter_s`: a closed-loop client sends its next request after a random delay in [0, jitter_s]
    (client and API-server latency). Zero keeps requests that finish together in lockstep; the
    default (mixed scheduling: a few decode steps; prefill-first: zero) lets them spread out, as the
    engines whose waves do not persist see them."""
    if clients is None and rate is None:
        if traffic.load_kind == "rate":
            rate = traffic.rate_per_s
        else:
            clients = traffic.users
    steps, sched = times.steps, times.scheduling
    prompt, output = traffic.prompt_tokens, traffic.output_tokens
    held = prompt + output if sched.reserve_full else prompt + output / 2
    slots = sched.max_sequences
    if math.isfinite(sched.kv_tokens):
        slots = min(slots, max(math.floor(sched.kv_tokens / held), 1))
    rng = np.random.default_rng(seed)
    closed = clients is not None
    if jitter_s is None:
        jitter_s = 0.0 if sched.policy == "prefill-first" else 4 * float(steps.seconds(0.0, 0.0))
    delayed: list[tuple[float, int]] = []  # (arrival time, client): requests on their way to the engine
    if closed:
        per_client = traffic.requests_per_client
        steady = per_client < 1
        budget_per_client = STEADY_REQUESTS_PER_CLIENT if steady else int(round(per_client))
        discard_per_client = STEADY_DISCARD_PER_CLIENT if steady else 0
        sent = [1] * clients
        waiting = deque(_Request(0.0, i, prompt) for i in range(clients))
        total = clients * budget_per_client
    else:
        gaps = rng.exponential(1.0 / rate, POISSON_REQUESTS)
        arrivals = np.cumsum(gaps)
        waiting = deque()
        total = POISSON_REQUESTS
        next_arrival = 0
    prefilling: list[_Request] = []  # admitted, prompt not finished (arrival order)
    decoding: list[tuple[int, int, float, float, int]] = []  # (finish clock, seq, first, arrival, client)
    clock = 0  # decode steps taken
    now = 0.0
    ttft, tpot, keep = [], [], []
    # an overlap scheduler hands a first token out after the step that follows its prompt's: sequence ->
    # that step's duration (None until it has run)
    handed_late: dict[int, float | None] = {}
    done = 0
    count = 0
    sequence = 0
    while done < total and count < MAX_STEPS:
        while delayed and delayed[0][0] <= now:
            arrival, client = heapq.heappop(delayed)
            waiting.append(_Request(arrival, client, prompt))
        if closed and not waiting and not prefilling and not decoding and delayed:
            now = delayed[0][0]
            continue
        if not closed:
            while next_arrival < total and arrivals[next_arrival] <= now:
                waiting.append(_Request(float(arrivals[next_arrival]), next_arrival, prompt))
                next_arrival += 1
            if not waiting and not prefilling and not decoding:
                now = float(arrivals[next_arrival])
                continue
        running = len(prefilling) + len(decoding)
        while waiting and running < slots:  # admit in arrival order
            prefilling.append(waiting.popleft())
            running += 1
        d = len(decoding)
        prefill_only = sched.policy == "prefill-first" and prefilling
        room = sched.token_budget if prefill_only else max(sched.token_budget - d, 0)
        taken = []
        tokens = 0
        for request in prefilling:
            if room - tokens <= 0:
                break
            if sched.chunked or request.remaining > sched.token_budget:
                part = min(request.remaining, room - tokens)
            elif request.remaining <= room - tokens:
                part = request.remaining
            else:
                break
            taken.append((request, part))
            tokens += part
        advancing = 0 if prefill_only else d
        if advancing == 0 and tokens == 0:
            if closed or next_arrival >= total:
                break  # nothing can run (cannot happen with a positive budget)
            now = max(now, float(arrivals[next_arrival]))
            continue
        duration = steps.seconds(advancing, tokens)
        now += duration
        count += 1
        for key in [key for key, late in handed_late.items() if late is None]:
            handed_late[key] = duration
        if advancing:
            clock += 1
        for request, part in taken:
            request.remaining -= part
        finished_prompts = [r for r, _ in taken if r.remaining == 0]
        prefilling = [r for r in prefilling if r.remaining > 0]
        for request in finished_prompts:
            request.first = now
            sequence += 1
            if sched.first_token_steps:
                handed_late[sequence] = None
            if output <= 1:
                heapq.heappush(decoding, (clock, sequence, now, request.arrival, request.client))
            else:  # the first token came with the prompt; output - 1 decode steps remain
                heapq.heappush(decoding, (clock + output - 1, sequence, now, request.arrival, request.client))
        while decoding and decoding[0][0] <= clock and (decoding[0][2] < now or output <= 1):
            _, key, first, arrival, client = heapq.heappop(decoding)
            done += 1
            late = sched.first_token_steps * (handed_late.pop(key, 0.0) or 0.0)
            ttft.append(first - arrival + sched.request_overhead_s + late)
            tpot.append((now - first) / max(output - 1, 1))
            if closed:
                keep.append(sent[client] > discard_per_client)
                if sent[client] < budget_per_client:
                    sent[client] += 1
                    if jitter_s > 0:
                        heapq.heappush(delayed, (now + float(rng.uniform(0.0, jitter_s)), client))
                    else:
                        waiting.append(_Request(now, client, prompt))
            else:
                keep.append(client >= POISSON_DISCARD)
    mask = np.array(keep, dtype=bool)
    return Simulated(np.array(ttft)[mask], np.array(tpot)[mask], now, int(mask.sum()), count)
