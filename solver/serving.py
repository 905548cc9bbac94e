"""Serving under load: TTFT and TPOT (means and percentiles) at a client concurrency or a request rate.

Everything stands on one step-time function t(d, p) (solver/stepmodel.py): d decoding sequences and p
prompt tokens in one engine step. The engine's scheduler (its plugin's `quantplan_scheduling`) decides
how prompt work enters the steps:

- "mixed" (vLLM V1, TensorRT-LLM in-flight batching, llama.cpp server, ExLlamaV2): prompt chunks ride
  in the decode steps up to the token budget. In steady state requests finish at rate
  lam = n / (T_prefill + (O - 1) tau); d = lam (O - 1) tau sequences decode; a step carries on average
  lam tau P prompt tokens, so a share phi of steps carries a chunk and tau = (1 - phi) t(d, 0) +
  phi t(d, chunk). TTFT is the step in progress, the wait behind other prompts (an M/D/1 queue on
  prefill work) and the prompt's own chunks. Solved as a fixed point.
- "prefill-first" (SGLang's default): waiting prompts run as prefill batches that pause decoding. In a
  closed loop with fixed lengths the whole population moves in waves: every round prefills all
  prompts in budget-sized batches, then decodes them together.

A closed-loop benchmark (`vllm bench serve --max-concurrency c`, `aiperf --concurrency c`) starts all
c requests at once after its warm-up: the first request of each client meets that lockstep wave, the
rest the steady state, so the mean over a run of k requests per client weighs the wave by 1/k
(`Protocol`). When c sequences' KV cache does not fit, n < c run and the rest wait for a slot: in the
steady state behind the whole line (Little's law: TTFT = c / lam - (O - 1) tau), in the first round (a
burst) the j-th in line for the j-th completion (`_first_round_queue`). Poisson arrivals (production)
give percentiles from the prefill queue's waiting-time tail and the spread of chunk steps over a
request's lifetime.
solver/simulate.py runs the same scheduler step by step; tests hold these closed forms to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from .candidates import Config
from .errors import QuantplanError
from .estimator import memory
from .registry import World
from .scenario import TrafficClass
from .stepmodel import StepModel, step_model

MAX_PREFILL_UTILISATION = 0.9  # above this a Poisson queue of prefills is too close to unstable
FIXED_POINT_ROUNDS = 16
MAX_RATE_ROUNDS = 40  # closed loop, mixed scheduler: regula falsi on the completion rate
RATE_TOLERANCE = 1e-10  # ... until the allowed rate is the trial's, or its bracket this narrow (relative)
STEP_TOLERANCE = 1e-9  # a trial rate's sign counts once its step time moves less than this (relative)
POISSON_ROUNDS = 6
PREFILL_FIRST_ROUNDS = 12  # Newton steps on the prefill-first step-time equation (converged to ~1e-9 in 6-8)
PERCENTILES = (50, 90, 99)
QUANTILE_GRID = 400  # points of the closed loop's TTFT distribution its percentiles are read at
Z = {50: 0.0, 90: 1.2816, 99: 2.3263}  # standard normal quantiles


@dataclass(frozen=True)
class Scheduling:
    """How an engine admits and batches work (its documented defaults unless the plan sets them)."""

    policy: str  # "mixed" or "prefill-first"
    token_budget: int  # tokens one step may hold (max_num_batched_tokens, max_num_tokens, chunked prefill size)
    max_sequences: int  # running sequences (max_num_seqs, max_batch_size, -np)
    chunked: bool  # prompts split across steps; False: a prompt enters one step whole
    reserve_full: bool  # KV for prompt + output held from admission (TensorRT-LLM) rather than paged
    kv_tokens: float = math.inf  # KV-cache capacity of the replica in tokens
    source: str = ""
    request_overhead_s: float = 0.0  # every request's TTFT: API server, tokenizer, admission
    wave_persistence: float = 0.0  # mixed scheduling: how far identical requests stay in lockstep waves
    # decode steps the engine runs per scheduler call (vLLM V0's --num-scheduler-steps, default 1): a prompt
    # that arrives waits for the round in progress. Read by the prefill-first Poisson model only (the
    # engine that has it cannot chunk prompts with it); no engine default sets it, benchmark rows do
    scheduler_steps: int = 1
    # decode steps by which the first token reaches the client after its prompt's step: an overlap
    # scheduler launches the next step before it hands out the last one's tokens (0: none)
    first_token_steps: float = 0.0

    def with_sequences(self, sequences) -> Scheduling:
        """The same scheduler with another running limit (an array: several limits evaluated at once)."""
        return replace(self, max_sequences=int(sequences) if np.ndim(sequences) == 0 else sequences)


@dataclass(frozen=True)
class Protocol:
    """How a closed-loop benchmark runs: requests each client sends after the warm-up (0: steady state
    only, as a service that runs for hours sees it)."""

    requests_per_client: float = 10.0
    think_s: float = 0.0  # mean pause of a client between a response and its next request

    @property
    def wave_weight(self):
        """Share of a run's requests that meet the starting wave (an array for arrays of protocols)."""
        k = np.asarray(self.requests_per_client, dtype=float)
        weight = np.where(k >= 1, 1.0 / np.maximum(k, 1.0), 0.0)
        return float(weight) if weight.ndim == 0 else weight


DEFAULT_PROTOCOL = Protocol()


@dataclass(frozen=True)
class Timing:
    """What the load models need for one configuration and class: the step model and the scheduler."""

    steps: StepModel
    scheduling: Scheduling

    @property
    def decode_bound(self) -> str:
        return "memory" if self.steps.memory_bound(self.scheduling.max_sequences) else "compute"

    def pessimistic(self, decode: float, prefill: float) -> Timing:
        return Timing(self.steps.scaled(decode, prefill), self.scheduling)


def scheduling(world: World, config: Config, traffic: TrafficClass) -> Scheduling:
    """The framework plugin's scheduler for `config`, with the replica's KV capacity in tokens."""
    return replace(engine_scheduling(world, config), kv_tokens=kv_capacity_tokens(world, config, traffic))


def engine_scheduling(world: World, config: Config) -> Scheduling:
    """The framework plugin's scheduler for `config` (the same for every traffic class), KV capacity unset."""
    found = world.plugins.call_for("quantplan_scheduling", config)
    chosen = next((s for s in found if s is not None), None)
    if chosen is None:  # a framework plugin that says nothing: plain chunked mixed batching
        framework = config.framework
        chosen = Scheduling("mixed", framework.max_batched_tokens, framework.max_batch, True, False,
                            source="no scheduling hook: chunked mixed batching at the catalog budget")
    return chosen


def kv_capacity_tokens(world: World, config: Config, traffic: TrafficClass, at_batch_one=None) -> float:
    """Tokens of KV cache the replica holds once weights, runtime and activations are placed.

    `at_batch_one(context_tokens)`: memory at batch 1 (a cache the caller keeps per configuration;
    default: ask the plugins)."""
    at_batch_one = at_batch_one or (lambda context: memory(world, config.with_batch(1), context))
    one = at_batch_one(1)
    per_token = one.kv_per_gpu
    if per_token <= 0:
        return math.inf
    activations = at_batch_one(traffic.context_tokens).activations_per_gpu
    free = one.available_per_gpu - one.weights_per_gpu - one.runtime_per_gpu - activations
    return max(free, 0.0) / per_token


def timing(world: World, config: Config, traffic: TrafficClass) -> Timing:
    """Step model and the engine's default scheduler for `config` and `traffic`'s lengths."""
    return Timing(step_model(world, config, traffic.prompt_tokens, traffic.output_tokens),
                  scheduling(world, config, traffic))


@dataclass(frozen=True)
class Load:
    """Figures at one load (arrays when the load is an array); seconds and requests/s."""

    ttft: object
    tpot: object
    throughput: object  # requests/s completed
    decoding: object  # mean sequences decoding per step
    ttft_percentiles: dict = field(default_factory=dict)
    tpot_percentiles: dict = field(default_factory=dict)
    prefill_utilisation: object = 0.0
    admitted: object = 0.0  # sequences running (closed loop: min(c, slots))
    # median gap between consecutive output tokens over every token of every request (what
    # `sglang.bench_serving` reports as median ITL): None where the load model gives no step mixture
    itl_median: object = None
    # Poisson arrivals: the mean wait for a free sequence slot (seconds) and the probability of waiting (_slot_wait)
    slot_wait: object = 0.0
    slot_waiting: object = 0.0


# ---------------------------------------------------------------------------------------------
# steady state under the mixed scheduler


def _chunking(sched: Scheduling, prompt: int, decoding, prompt_rate_per_step):
    """(tokens a prompt-carrying step holds, tokens a step can give prompts) for the mixed scheduler.

    A step takes the prompts that arrived during the one before: a ~ Poisson(rate tau) of them, so
    a share 1 - exp(-a) of steps carries prompts, a / (1 - exp(-a)) on average (one when arrivals are
    rare, rate tau when every step has some), up to what the budget holds."""
    room = np.maximum(sched.token_budget - decoding, 1.0)
    arrivals = np.maximum(np.asarray(prompt_rate_per_step, dtype=float) / prompt, 0.0)
    carried = np.where(arrivals > 1e-9, arrivals / -np.expm1(-np.maximum(arrivals, 1e-9)), 1.0)
    if sched.chunked:
        one = np.minimum(prompt, room)
        chunk = np.minimum(room, np.maximum(one, prompt * carried))
        return chunk, room
    # whole prompts only: as many as the budget takes, at least one
    fit = np.maximum(np.floor(room / prompt), 1.0)
    chunk = prompt * np.clip(carried, 1.0, fit)
    return chunk, np.maximum(room, prompt)


def _mixed_step(steps: StepModel, sched: Scheduling, prompt: int, decoding, rate, tau):
    """Mean step time and the prefill figures at request rate `rate` with `decoding` sequences.

    With the chunk size the last estimate `tau` implies, tau = (1 - phi) t(d, 0) + phi t(d, chunk) with
    phi = rate tau P / chunk is solved exactly: tau = t(d, 0) / (1 - rate P (t(d, chunk) - t(d, 0)) / chunk)."""
    chunk, room = _chunking(sched, prompt, decoding, rate * tau * prompt)
    plain, loaded = steps.seconds(decoding, 0.0), steps.seconds(decoding, chunk)
    denominator = 1.0 - rate * prompt * (loaded - plain) / chunk
    tau_new = np.where(denominator > 0, plain / np.maximum(denominator, 1e-12), loaded)
    tau_new = np.minimum(tau_new, loaded)  # every step carrying a chunk is the most it can take
    share = np.clip((tau_new - plain) / np.maximum(loaded - plain, 1e-15), 0.0, 1.0)
    full = np.where(room == chunk, loaded, steps.seconds(decoding, room))
    service = prompt / room * full  # one prompt's work at a full budget
    utilisation = rate * service
    own = np.maximum(np.ceil(prompt / room), 1.0) * np.where(prompt <= room, loaded, full)
    # an arrival lands inside a step and waits for its end: the length-biased mean residual
    residual = ((1 - share) * plain ** 2 + share * loaded ** 2) / (2 * np.maximum(tau_new, 1e-15))
    return tau_new, own + residual, service, utilisation, share, plain, loaded, full, room


def _queue_wait(utilisation, service):
    """Mean M/D/1 wait behind other prompts' prefill work."""
    rho = np.minimum(utilisation, 0.98)
    return rho * service / (2 * (1 - rho))


def _closed_mixed(steps: StepModel, sched: Scheduling, prompt: int, output: int, clients, think=0.0):
    """Steady state of a closed loop under the mixed scheduler once its requests have spread out: each
    prompt's own chunks, the M/D/1 wait behind other prompts' chunks, and, when prompt work outruns the
    budget, a completion rate capped by the prefill capacity, the excess showing up as waiting (Little's
    law, which also counts the wait for a KV slot).

    Solved for the completion rate: the rate the slots, the prefill capacity and the clients allow falls
    as the rate rises (more prompt work per step, longer waits), so allowed(rate) - rate has one root,
    between 0 and the rate of requests made of idle steps, found by regula falsi (Illinois). The step
    time at a rate is itself a fixed point; it is carried from round to round and extrapolated (Aitken).
    A plain damped iteration swung between two states when the allowed rate falls steeply (near
    prefill saturation), and its figures then jumped with tiny changes of the inputs."""
    clients = np.asarray(clients, dtype=float)
    admitted = _admitted(sched, prompt, output, clients)
    idle = steps.seconds(0.0, 0.0)
    state = _MixedRound(steps, sched, prompt, output, clients, think, admitted, idle,
                        steps.seconds(admitted, sched.token_budget))
    shape = state.shape()
    flat = state.only(None, shape)  # every figure one flat array; rounds then take the unsolved ones only
    tau = np.ravel(np.broadcast_to(steps.seconds(admitted, 0.0), shape)).astype(float)
    low = np.zeros_like(tau)
    high = np.ravel(np.broadcast_to(admitted / (output * idle), shape)).astype(float)  # >= `output` idle steps
    f_low, tau, _ = flat.excess(low, tau)  # signs certain at the bounds, whatever the step time
    f_high, _, _ = flat.excess(high, tau)
    side = np.zeros_like(tau)
    rate, settled, root = low.copy(), np.ones_like(tau, dtype=bool), np.full_like(tau, np.nan)
    open_ = np.nonzero(high - low > RATE_TOLERANCE * high)[0]
    for _ in range(MAX_RATE_ROUNDS):
        if not len(open_):
            break
        part = flat.only(open_)
        lo, hi, f_lo, f_hi, sd = low[open_], high[open_], f_low[open_], f_high[open_], side[open_]
        trial = np.where(settled[open_], _false_position(lo, hi, f_lo, f_hi), rate[open_])
        f, ahead, ok = part.excess(trial, tau[open_])
        # a sign read off a step time that has not settled at this rate may be wrong: then the rate
        # stays, only the step time moves, and the sign is read again next round, and then taken (the
        # step time can hover about a jump of its update, a whole prompt more or less in a step)
        ok = ok | ~settled[open_]
        past = f < 0  # the rate is above the root
        keep_low, keep_high = past & (sd < 0), ~past & (sd > 0)  # Illinois: an end kept twice halves
        low[open_] = np.where(ok & ~past, trial, lo)
        high[open_] = np.where(ok & past, trial, hi)
        f_low[open_] = np.where(ok, np.where(past, np.where(keep_low, f_lo / 2, f_lo), f), f_lo)
        f_high[open_] = np.where(ok, np.where(past, f, np.where(keep_high, f_high[open_] / 2, f_hi)), f_hi)
        side[open_] = np.where(ok, np.where(past, -1.0, 1.0), sd)
        rate[open_], tau[open_], settled[open_] = trial, ahead, ok
        # solved: the bracket is narrow, or the allowed rate is the trial rate to the same tolerance
        hit = ok & (np.abs(f) <= RATE_TOLERANCE * trial)
        root[open_] = np.where(hit, trial, np.nan)
        solved = hit | (ok & (high[open_] - low[open_] <= RATE_TOLERANCE * high[open_]))
        open_ = open_[~solved]
    rate = np.where(np.isnan(root), _false_position(low, high, f_low, f_high), root)
    tau, own, held, free, capacity, utilisation, service = (
        np.reshape(value, shape) for value in flat.figures(rate, tau)[:-1])
    rate = rate.reshape(shape)
    decoding = np.minimum(rate * (output - 1) * tau, admitted)
    in_system = clients - rate * think
    # Little's law counts the waits for a KV slot or for prefill capacity; with neither binding it equals
    # `own`, and a long output would make it a small difference of two large numbers: take `own` there
    queued = held < free * (1 - 1e-9)
    ttft = np.where(queued, np.maximum(in_system / rate - (output - 1) * tau, own), own)
    # the random part of TTFT: the wait behind other prompts (a KV-slot wait is a steady shift)
    return ttft, tau, rate, decoding, admitted, np.minimum(rate / capacity, 1.0), _queue_wait(utilisation, service)


def _false_position(low, high, f_low, f_high):
    """Where the line through (low, f_low) and (high, f_high) crosses zero (f_low >= 0 >= f_high)."""
    span = f_low - f_high
    found = np.where(span > 0, low + (high - low) * f_low / np.where(span > 0, span, 1.0), (low + high) / 2)
    return np.clip(found, low, high)


@dataclass(frozen=True)
class _MixedRound:
    """One closed-loop round under the mixed scheduler at a trial completion rate."""

    steps: StepModel
    sched: Scheduling
    prompt: int
    output: int
    clients: object
    think: object
    admitted: object
    least: object  # bounds on the step time: an idle step, and every slot decoding with a full budget
    most: object

    def shape(self) -> tuple:
        """The shape every figure broadcasts to."""
        arrays = [np.shape(value) for value in _round_arrays(self)]
        return np.broadcast_shapes(*arrays) if arrays else ()

    def only(self, index, shape=None) -> _MixedRound:
        """The round flattened to `shape` (index None), or its flat elements `index`."""
        def pick(value):
            if np.ndim(value) == 0:
                return value
            return np.ravel(np.broadcast_to(value, shape)) if index is None else value[index]

        return replace(self, steps=replace(self.steps, **{name: pick(getattr(self.steps, name))
                                                            for name in StepModel.__dataclass_fields__}),
                       sched=replace(self.sched, **{name: pick(getattr(self.sched, name)) for name in _SCHED_ARRAYS}),
                       **{name: pick(getattr(self, name)) for name in _ROUND_ARRAYS})

    def step(self, rate, tau):
        decoding = np.minimum(rate * (self.output - 1) * tau, self.admitted)
        return _mixed_step(self.steps, self.sched, self.prompt, decoding, rate, tau)

    def figures(self, rate, tau):
        """(step time at `rate`, own TTFT, rates the slots and prefill capacity / the clients allow,
        prefill capacity, utilisation, service, how far the last update moved the step time (relative)):
        the step time from `tau` by two updates, their Aitken extrapolation (the update converges
        slowly, or swings, near prefill saturation) and one more."""
        one = self.step(rate, tau)[0]
        two = self.step(rate, one)[0]
        curve = two - 2 * one + tau
        bent = np.abs(curve) > 1e-15
        ahead = np.clip(np.where(bent, tau - (one - tau) ** 2 / np.where(bent, curve, 1.0), two), self.least, self.most)
        tau, own, service, utilisation, _, _, _, full, room = self.step(rate, ahead)
        capacity = room / (self.prompt * full)  # prompts/s at a full budget every step
        own = own + _queue_wait(utilisation, service)
        lifetime = own + (self.output - 1) * tau
        held = np.minimum(self.admitted / lifetime, capacity)  # the rate slots and prefill capacity allow
        free = self.clients / (lifetime + self.think)  # the rate the clients ask for
        return tau, own, held, free, capacity, utilisation, service, np.abs(tau - ahead) / tau

    def excess(self, rate, tau):
        """(allowed rate - `rate`, the step time there, to start the next round from, whether that step
        time had settled: one more update moved it less than STEP_TOLERANCE)."""
        tau, _, held, free, *_, moved = self.figures(rate, tau)
        allowed = np.minimum(held, free)
        # far from the root the sign holds even off a step time still moving: the allowed rate moves
        # by at most ~50x the step time's share (the prefill wait at 98% utilisation)
        clear = np.abs(allowed - rate) > 100 * moved * np.maximum(allowed, rate)
        return allowed - rate, tau, (moved <= STEP_TOLERANCE) | clear


_SCHED_ARRAYS = ("token_budget", "max_sequences", "reserve_full", "kv_tokens", "request_overhead_s",
                 "wave_persistence")
_ROUND_ARRAYS = ("prompt", "output", "clients", "think", "admitted", "least", "most")


def _round_arrays(state: _MixedRound) -> list:
    return ([getattr(state.steps, name) for name in StepModel.__dataclass_fields__]
            + [getattr(state.sched, name) for name in _SCHED_ARRAYS] + [getattr(state, name) for name in _ROUND_ARRAYS])


def _admitted(sched: Scheduling, prompt: int, output: int, clients):
    """Sequences that run at once: the clients, capped by the running limit and the KV cache."""
    return np.minimum(np.minimum(clients, sched.max_sequences), kv_slots(sched, prompt, output))


def kv_slots(sched: Scheduling, prompt, output):
    """Sequences whose KV cache fits: prompt + output each when reserved up front, prompt + half the
    output on average when paged; at least one."""
    held = np.where(sched.reserve_full, prompt + output, prompt + output / 2)
    kv = np.asarray(sched.kv_tokens, dtype=float)
    finite = np.isfinite(kv)
    slots = np.where(finite, np.maximum(np.floor(np.where(finite, kv, 0.0) / held), 1.0), np.inf)
    return float(slots) if slots.ndim == 0 else slots


def _wave(steps: StepModel, sched: Scheduling, prompt: int, output: int, admitted):
    """A lockstep wave of `admitted` prompts arriving together: (mean TTFT, mean TPOT, last TTFT, first
    TTFT): the prompts go through in budget-sized groups, each group's first tokens at its step's end."""
    if sched.policy == "prefill-first":
        batch = np.maximum(sched.token_budget, prompt)
        batches = np.maximum(np.ceil(admitted * prompt / batch), 1.0)
        per_batch = steps.seconds(0.0, np.minimum(admitted * prompt, batch))
        decode = steps.seconds(admitted, 0.0)
        ttft = (batches + 1) / 2 * per_batch
        tpot = decode + (batches - 1) / 2 * per_batch / np.maximum(output - 1, 1)
        return ttft, tpot, batches * per_batch, per_batch
    decoding = admitted / 2  # decodes join as the wave's prompts finish
    room = np.maximum(sched.token_budget - decoding, 1.0)
    if sched.chunked:
        per_step_tokens = np.minimum(room, admitted * prompt)
    else:
        per_step_tokens = prompt * np.clip(np.floor(room / prompt), 1.0, admitted)
    groups = np.maximum(np.ceil(admitted * prompt / per_step_tokens), 1.0)
    loaded = steps.seconds(decoding, per_step_tokens)
    decode = steps.seconds(admitted, 0.0)
    ttft = (groups + 1) / 2 * loaded
    shared = np.minimum(groups / 2, output - 1)  # steps a request decodes alongside the wave's prompts
    tpot = decode + shared * (loaded - decode) / np.maximum(output - 1, 1)
    return ttft, tpot, groups * loaded, loaded


def closed_loop(timing: Timing, prompt: int, output: int, clients, protocol: Protocol = DEFAULT_PROTOCOL,
                percentiles: bool = True) -> Load:
    """c clients each sending the next request when the last finishes (fixed lengths).

    Every run starts with a lockstep wave. Under prefill-first scheduling the waves persist (the whole
    population prefills, then decodes together, round after round). Under mixed scheduling the
    requests spread out, to the degree the engine's `wave_persistence` says (0: fully spread, 1: every
    round a wave); a benchmark's mean then weighs its first wave by 1 / requests per client.
    `percentiles` False: means only, no percentile tables (their grid is most of the work; the fit asks
    for them only for the rows that report one)."""
    steps, sched = timing.steps, timing.scheduling
    clients = np.asarray(clients, dtype=float)
    admitted = _admitted(sched, prompt, output, clients)
    wave_ttft, wave_tpot, wave_last, wave_first = _wave(steps, sched, prompt, output, admitted)
    wave_cycle = wave_last + (output - 1) * steps.seconds(admitted, 0.0)
    wave_rate = admitted / wave_cycle
    waiting_rounds = clients / wave_rate - wave_cycle  # rounds a client waits for a KV slot
    if sched.policy == "prefill-first":  # waves persist: every round is a wave
        # in a loop that runs on, each request waits for every other wave; in the first round (a burst) the
        # w-th wave waits for the w - 1 before it only
        first = protocol.wave_weight
        first_round = _first_round_waves(clients, admitted) * wave_cycle
        load = Load(first * first_round + (1 - first) * waiting_rounds + wave_ttft, wave_tpot, wave_rate, admitted,
                    admitted=admitted, prefill_utilisation=wave_last / wave_cycle)
        spread = (wave_first + waiting_rounds, wave_last + waiting_rounds, wave_ttft, 0.0, 0.0,
                  first, wave_first, wave_last + waiting_rounds)
        weight = 1.0 - first
    else:
        spread_ttft, tau, rate, decoding, admitted, utilisation, wait = _closed_mixed(
            steps, sched, prompt, output, clients, protocol.think_s)
        tpot_spread = _closed_tpot_spread(steps, sched, prompt, output, decoding, rate, tau) if percentiles else 0.0
        persist = np.asarray(sched.wave_persistence, dtype=float)
        steady_ttft = persist * (waiting_rounds + wave_ttft) + (1 - persist) * spread_ttft
        steady_tpot = persist * wave_tpot + (1 - persist) * tau
        first = protocol.wave_weight
        excess = (clients - admitted) / clients  # clients of the first wave that wait for a slot
        queue_first, queue_last = _first_round_queue(steps, output, clients, admitted, wave_first, spread_ttft,
                                                     tau, rate)
        first_ttft = (1 - excess) * wave_ttft + excess * (queue_first + queue_last) / 2
        ttft = first * first_ttft + (1 - first) * steady_ttft
        # the queued clients' first requests decode in the steady state's steps, not beside the wave
        tpot = first * ((1 - excess) * wave_tpot + excess * tau) + (1 - first) * steady_tpot
        rate = persist * wave_rate + (1 - persist) * rate
        load = Load(ttft, tpot, rate, persist * admitted + (1 - persist) * decoding, admitted=admitted,
                    prefill_utilisation=utilisation)
        spread = (wave_first, wave_last, steady_ttft, (1 - persist) * wait, utilisation,
                  first * excess, queue_first, queue_last)
        weight = first * (1 - excess) + (1 - first) * persist
    if not percentiles:
        return _with_request_overhead(load, sched, steps)
    if sched.policy == "prefill-first":  # every request of a wave decodes through the same steps
        tpot_p = {p: load.tpot for p in PERCENTILES}
    else:
        tpot_p = {p: _closed_tpot_quantile(weight, wave_tpot, tau, tpot_spread, p / 100) for p in PERCENTILES}
    load = replace(load, ttft_percentiles=_closed_ttft_percentiles(weight, load.ttft, *spread), tpot_percentiles=tpot_p)
    return _with_request_overhead(load, sched, steps)


def _first_round_waves(clients, admitted):
    """Mean count of whole waves a client waits for in the first round when `admitted` of `clients` fit at once:
    q = c // n full waves and a last one of r = c - q n clients, the w-th waiting w - 1 rounds:
    (n q (q - 1) / 2 + r q) / c."""
    clients = np.asarray(clients, dtype=float)
    admitted = np.maximum(np.asarray(admitted, dtype=float), 1.0)
    full = np.floor(clients / admitted)
    rest = clients - full * admitted
    return (admitted * full * (full - 1) / 2 + rest * full) / np.maximum(clients, 1.0)


def _first_round_queue(steps: StepModel, output: int, clients, admitted, wave_first, steady_ttft, tau, rate):
    """(least, most) TTFT of the first requests of the clients that find no slot when a run starts (`clients` >
    `admitted`): the j-th of them in line waits for the j-th completion. The first completion comes when the
    wave's first prompts have decoded (`wave_first` + (O - 1) decode steps at `admitted` sequences), then
    completions follow at the steady rate, so the j-th comes (j - 1) / rate later; once admitted, a request
    takes the prefill a request meets in a full steady state (its TTFT less the wait for a slot). Their TTFTs
    spread evenly between the two; the mean is halfway. Little's law for a loop that runs on (`steady_ttft`)
    puts each request behind all the others in line, (c - n) / rate: for a single burst of c >> n that is about
    twice the mean wait, and for c just above n a fraction of it (the line moves only once the first wave
    finishes)."""
    line = np.maximum(clients - admitted, 0.0)
    rate = np.maximum(np.asarray(rate, dtype=float), 1e-12)
    first_done = wave_first + (output - 1) * steps.seconds(admitted, 0.0)
    own = np.maximum(steady_ttft - line / rate, 0.0)  # steady_ttft holds a whole line ahead of each request
    return first_done + own, first_done + own + np.maximum(line - 1, 0.0) / rate


def _closed_tpot_spread(steps: StepModel, sched: Scheduling, prompt: int, output: int, decoding, rate, tau):
    """Standard deviation of a request's TPOT in the closed loop's steady state: each of its O - 1 steps
    carries another prompt's chunk with the probability the step mixture at (`rate`, `tau`) gives, so the
    count of such steps is binomial (the Poisson path's first term; in a closed loop the sequences decoding
    hardly vary, so its second term, the spread of that count, is left out)."""
    share, plain, loaded = _mixed_step(steps, sched, prompt, decoding, rate, tau)[4:7]
    return np.sqrt(np.maximum(share * (1 - share), 0) / np.maximum(output - 1, 1)) * np.maximum(loaded - plain, 0.0)


def _closed_tpot_quantile(weight, wave, mean, spread, q: float):
    """Quantile `q` of the closed loop's TPOT over requests: a share `weight` meets a lockstep wave (TPOT
    `wave`, the same for all of them), the rest the steady state, normal about `mean` with `spread`.
    Below the wave's value the distribution is the normal part's alone, at it jumps by `weight`: the
    quantile is the normal part's own at q / (1 - weight) where that lies below the wave's value, else the
    wave's value, or past it the normal part's at (q - weight) / (1 - weight)."""
    weight = np.clip(np.asarray(weight, dtype=float), 0.0, 1.0)
    wave, mean, spread = (np.asarray(value, dtype=float) for value in (wave, mean, spread))
    rest = np.maximum(1.0 - weight, 1e-12)
    under = mean + spread * _normal_quantile(q / rest)
    over = mean + spread * _normal_quantile((q - weight) / rest)
    found = np.where((q < rest) & (under <= wave), under, np.where(over > wave, over, wave))
    return float(found) if found.ndim == 0 else found


def _normal_quantile(q):
    """The standard normal quantile (statistics.NormalDist), its argument kept inside (0, 1): evaluated once
    per distinct argument (the shares of a class's requests in a wave take few values across candidates)."""
    q = np.clip(np.asarray(q, dtype=float), 1e-12, 1 - 1e-12)
    from statistics import NormalDist

    distinct, where = np.unique(np.ravel(q), return_inverse=True)
    found = np.array([NormalDist().inv_cdf(float(value)) for value in distinct])[np.ravel(where)]
    return found.reshape(q.shape) if q.ndim else float(found[0])


def behind_server(sched: Scheduling, framework, server: str) -> Scheduling:
    """`sched` behind the API server `server` in front of the engine ("": the engine's own, whose
    per-request overhead the plugin set): that server's overhead (the framework catalog's
    `server_overhead_ms`) replaces the engine's. NIM's API server, for one, is not trtllm-serve."""
    if not server:
        return sched
    known = framework.server_overhead_ms
    if server not in known:
        names = ", ".join(sorted(known)) or "none"
        raise QuantplanError(f"API server {server!r}: no per-request overhead for it in front of "
                             f"{framework.id} (known: {names}; or leave it out for {framework.id}'s own)")
    return replace(sched, request_overhead_s=known[server] / 1e3)


def _with_request_overhead(load: Load, sched: Scheduling, steps: StepModel) -> Load:
    """TTFT plus the API server's per-request overhead and, under an overlap scheduler, the decode step
    (at the load's running sequences) that the first token waits behind."""
    extra = sched.request_overhead_s
    if np.any(np.asarray(sched.first_token_steps) != 0):
        extra = extra + np.asarray(sched.first_token_steps) * steps.seconds(load.decoding, 0.0)
    return replace(load, ttft=load.ttft + extra,
                   ttft_percentiles={p: v + extra for p, v in load.ttft_percentiles.items()})


def _closed_ttft_percentiles(weight, mean, wave_first, wave_last, steady, wait=0.0, utilisation=0.0,
                             queued=0.0, queue_first=0.0, queue_last=0.0):
    """Closed-loop TTFT percentiles of a mixture: a share `weight` of requests meets a wave, whose first
    tokens spread evenly over [its first, its last]; a share `queued` (first requests of the clients the
    KV cache has no slot for at the start) spread evenly over [`queue_first`, `queue_last`]; the others take
    the steady value, whose wait behind other prompts (mean `wait`) is zero with probability 1 - rho and else
    exponential (the M/G/1 tail). Quantiles are read off the mixture's distribution on a grid."""
    shape = np.shape(np.asarray(mean, dtype=float))
    weight = np.broadcast_to(np.asarray(weight, dtype=float), shape)[..., None]
    last = np.broadcast_to(np.maximum(np.asarray(wave_last, dtype=float), 1e-12), shape)[..., None]
    first = np.minimum(np.broadcast_to(np.asarray(wave_first, dtype=float), shape)[..., None], last)
    steady = np.broadcast_to(np.asarray(steady, dtype=float), shape)[..., None]
    wait = np.broadcast_to(np.asarray(wait, dtype=float), shape)[..., None]
    rho = np.clip(np.broadcast_to(np.asarray(utilisation, dtype=float), shape)[..., None], 1e-6, 0.98)
    queued = np.broadcast_to(np.asarray(queued, dtype=float), shape)[..., None]
    queue_last = np.broadcast_to(np.asarray(queue_last, dtype=float), shape)[..., None]
    queue_first = np.minimum(np.broadcast_to(np.asarray(queue_first, dtype=float), shape)[..., None], queue_last)
    base = np.maximum(steady - wait, 0.0)
    top = np.maximum(np.maximum(last, np.where(queued > 0, queue_last, 0.0)), steady + 6 * wait / rho) * 1.05 + 1e-9
    steps = np.linspace(0.0, 1.0, QUANTILE_GRID)

    def cdf(index):  # the mixture's distribution at grid points `index` (one per element)
        grid = top * steps[index]
        with np.errstate(over="ignore", invalid="ignore"):
            tail = np.where(wait > 0, rho * np.exp(-(grid - base) * rho / np.maximum(wait, 1e-15)), 0.0)
        spread = np.where(grid >= base, 1.0 - tail, 0.0)
        in_wave, in_queue = _even(grid, first, last), _even(grid, queue_first, queue_last)
        return weight * in_wave + queued * in_queue + (1 - weight - queued) * spread, grid

    # the first grid point where the distribution reaches each percentile, by bisection over the grid's
    # indices (the distribution only grows along it), 0 where none does
    ends = np.full(np.shape(top), QUANTILE_GRID - 1)
    reached_at_end = cdf(ends)[0]
    found = {}
    for p in PERCENTILES:
        target = p / 100 - 1e-12
        low, high = np.zeros(np.shape(top), dtype=int), ends.copy()  # cdf(high) reaches it, where any does
        while np.any(high > low):
            middle = (low + high) // 2
            above = cdf(middle)[0] >= target
            high, low = np.where(above, middle, high), np.where(above, low, middle + 1)
        index = np.where(reached_at_end >= target, high, 0)
        value = cdf(index)[1][..., 0]
        found[p] = value if value.ndim else float(value)
    return found


def _even(grid, low, high):
    """The distribution of a value spread evenly over [`low`, `high`] at `grid` (a step at `high` when they meet)."""
    inside = np.clip((grid - low) / np.maximum(high - low, 1e-12), 0.0, 1.0)
    return np.where(high - low > 1e-12, inside, (grid >= high).astype(float))


# ---------------------------------------------------------------------------------------------
# open loop: Poisson arrivals


def poisson(timing: Timing, prompt: int, output: int, rate) -> Load:
    """Requests arriving at `rate` per second (a Poisson stream) at one replica; inf where it cannot keep up."""
    steps, sched = timing.steps, timing.scheduling
    rate = np.asarray(rate, dtype=float)
    tau = steps.seconds(0.0, 0.0) * np.ones_like(rate)
    if sched.policy == "prefill-first":
        return _poisson_prefill_first(steps, sched, prompt, output, rate)
    for _ in range(POISSON_ROUNDS):
        decoding = rate * (output - 1) * tau
        tau = _mixed_step(steps, sched, prompt, decoding, rate, tau)[0]
    decoding = rate * (output - 1) * tau
    tau, own, service, utilisation, share, plain, loaded, _, _ = _mixed_step(steps, sched, prompt, decoding,
                                                                             rate, tau)
    wait = _queue_wait(utilisation, service)
    slot_wait, waiting, full = _slot_wait(sched, prompt, output, rate, wait + own + (output - 1) * tau)
    ttft = slot_wait + wait + own
    unstable = (utilisation >= 1) | (decoding > sched.max_sequences) | _kv_short(sched, prompt, output, decoding) | full
    ttft_p, tpot_p = {}, {}
    spread = np.sqrt(np.maximum(share * (1 - share), 0) / np.maximum(output - 1, 1)) * (loaded - plain)
    spread = spread + np.sqrt(np.maximum(decoding, 0)) * _slope(steps, decoding)
    for p in PERCENTILES:
        q = p / 100
        ttft_p[p] = ((q - 0.5) * tau + _wait_quantile(utilisation, wait, q) + _slot_wait_quantile(slot_wait, waiting, q)
                     + own)
        tpot_p[p] = tau + Z[p] * spread
    itl = _median_gap(plain, loaded, share)
    return _guard(_with_request_overhead(Load(ttft, tau, rate, decoding, ttft_p, tpot_p, utilisation,
                                              itl_median=itl, slot_wait=slot_wait, slot_waiting=waiting),
                                         sched, steps), unstable)


def _median_gap(plain, longer, share):
    """Median of the gaps between a sequence's output tokens when a share `share` of steps is `longer`
    (carries prompt work) and the rest `plain`: a two-point mixture, so the plain step below one half."""
    return np.where(np.asarray(share) < 0.5, plain, longer)


def _poisson_prefill_first(steps: StepModel, sched: Scheduling, prompt: int, output: int, rate) -> Load:
    """Each round of k decode steps (k = `scheduler_steps`, 1 by default) is followed, when prompts
    arrived during it, by a prefill batch of them; an arrival waits for the round in progress."""
    k = np.asarray(sched.scheduler_steps, dtype=float)
    cap = np.maximum(sched.token_budget, prompt)

    def step_time(tau):  # the mean time per decode token that a given mean implies
        arrivals = rate * k * tau  # per round
        batches = -np.expm1(-arrivals)  # share of rounds followed by a prefill batch
        batch = np.minimum(prompt * arrivals / np.maximum(batches, 1e-12), cap)
        return steps.seconds(rate * (output - 1) * tau, 0.0) + batches * steps.seconds(0.0, batch) / k

    # tau = step_time(tau), by Newton steps on its slope (a damped iteration stalls near capacity, where
    # the slope nears 1); never below the idle step, and a slope at or past 1 (no fixed point near: the
    # load may not be carried) takes the plain iteration
    idle = steps.seconds(0.0, 0.0) * np.ones_like(rate)
    tau = idle
    for _ in range(PREFILL_FIRST_ROUNDS):
        value = step_time(tau)
        slope = (step_time(tau * (1 + 1e-6)) - value) / (tau * 1e-6)
        newton = tau + (value - tau) / np.maximum(1.0 - slope, 1e-12)
        tau = np.maximum(np.where(slope < 0.99, newton, value), idle)
    decoding = rate * (output - 1) * tau
    arrivals = rate * k * tau
    batches = -np.expm1(-arrivals)
    budget = np.maximum(sched.token_budget, prompt)
    batch = np.minimum(prompt * arrivals / np.maximum(batches, 1e-12), budget)
    prefill = steps.seconds(0.0, batch)
    service = prompt / budget * steps.seconds(0.0, budget)
    utilisation = rate * service
    wait = _queue_wait(utilisation, service)
    plain = steps.seconds(decoding, 0.0)
    slot_wait, waiting, full = _slot_wait(sched, prompt, output, rate,
                                          k * plain / 2 + wait + prefill + (output - 1) * tau)
    ttft = k * plain / 2 + wait + prefill + slot_wait
    unstable = (utilisation >= 1) | (decoding > sched.max_sequences) | _kv_short(sched, prompt, output, decoding) | full
    ttft_p, tpot_p = {}, {}
    # a request lives (O - 1) / k rounds, each followed by a prefill batch with probability `batches`
    spread = np.sqrt(np.maximum(batches * (1 - batches), 0) / np.maximum(k * (output - 1), 1)) * prefill
    spread = spread + np.sqrt(np.maximum(decoding, 0)) * _slope(steps, decoding)
    for p in PERCENTILES:
        q = p / 100
        ttft_p[p] = q * k * plain + _wait_quantile(utilisation, wait, q) + _slot_wait_quantile(slot_wait, waiting, q) \
            + prefill
        tpot_p[p] = tau + Z[p] * spread
    itl = _median_gap(plain, plain + prefill, batches / k)  # a gap spans its step and any prefill batch after it
    return _guard(_with_request_overhead(Load(ttft, tau, rate, decoding, ttft_p, tpot_p, utilisation,
                                              itl_median=itl, slot_wait=slot_wait, slot_waiting=waiting),
                                         sched, steps), unstable)


def _slot_wait(sched: Scheduling, prompt: int, output: int, rate, holding):
    """The wait for a free sequence slot under Poisson arrivals: a request holds one of c slots (the running limit,
    or the KV cache's sequences if fewer) for `holding` seconds, from admission to its last token. M/D/c by
    Allen and Cunneen's approximation: the Erlang C probability of waiting P for an offered load a = rate x
    holding, and a mean wait of P x holding / (c - a) / 2 (half the M/M/c wait: the holding times barely vary).
    Returns (mean wait, P, a >= c: no steady state). Negligible with hundreds of slots; with a few (llama.cpp's
    -np, a small max_num_seqs) it is most of the TTFT near capacity (tests/test_serving.py, against the
    simulation)."""
    slots = np.minimum(np.asarray(sched.max_sequences, dtype=float), kv_slots(sched, prompt, output))
    offered = np.asarray(rate, dtype=float) * holding
    waiting = _erlang_c(slots, offered)
    room = np.maximum(slots - offered, 1e-12)
    mean = np.where(offered < slots, waiting * holding / room / 2, np.inf)
    return mean, waiting, offered >= slots


def _slot_wait_quantile(mean, waiting, q: float):
    """Quantile of the slot wait: none with probability 1 - P, else exponential with mean (mean wait) / P."""
    tail = np.log(np.maximum(np.asarray(waiting) / (1 - q), 1.0))
    return np.where(np.asarray(waiting) > 0, mean / np.maximum(waiting, 1e-300), 0.0) * tail


def _erlang_c(servers, offered):
    """Erlang C: the probability that an arrival waits, c servers, offered load a (1 where a >= c), from Erlang B by
    the recursion 1/B_k = 1 + (k / a) / B_(k-1). Where c - a > 8 sqrt(a) + 3 (the offered Poisson load's tail
    beyond c, eight standard deviations out) it is below 1e-8 (2.2e-9 at most over a = 0.1-300) and taken as 0."""
    c, a = np.broadcast_arrays(np.asarray(servers, dtype=float), np.asarray(offered, dtype=float))
    found = np.where(a >= c, 1.0, 0.0)
    with np.errstate(invalid="ignore"):
        need = (a > 0) & (a < c) & (c - a <= 8 * np.sqrt(a) + 3)
    if need.any():
        cn, an = np.floor(c[need]), a[need]
        inverse, at_c = np.ones_like(an), np.empty_like(an)
        stops = {int(value): cn == value for value in np.unique(cn)}
        with np.errstate(over="ignore"):  # an element past its own c may overflow: its value is taken already
            for k in range(1, int(cn.max()) + 1):
                inverse = 1.0 + (k / an) * inverse
                if k in stops:
                    at_c[stops[k]] = 1.0 / inverse[stops[k]]
        rho = an / cn
        found[need] = at_c / (1 - rho * (1 - at_c))
    return float(found) if found.ndim == 0 else found


def _kv_short(sched: Scheduling, prompt: int, output: int, decoding):
    return decoding > kv_slots(sched, prompt, output)


def _slope(steps: StepModel, decoding):
    """Extra step time of one more decoding sequence."""
    return steps.seconds(decoding + 1, 0.0) - steps.seconds(decoding, 0.0)


def _wait_quantile(utilisation, mean_wait, q: float):
    """Quantile of the prefill wait: waits with probability rho, exponentially with mean W / rho."""
    rho = np.clip(utilisation, 1e-12, 0.98)
    tail = np.log(np.maximum(rho / (1 - q), 1.0))
    return mean_wait / rho * tail


def _guard(load: Load, unstable) -> Load:
    """Infinite figures where the replica cannot keep up with the arrivals."""
    if not np.any(unstable):
        return load
    bad = lambda value: np.where(unstable, np.inf, value)  # noqa: E731
    return replace(load, ttft=bad(load.ttft), tpot=bad(load.tpot),
                   itl_median=None if load.itl_median is None else bad(load.itl_median),
                   ttft_percentiles={p: bad(v) for p, v in load.ttft_percentiles.items()},
                   tpot_percentiles={p: bad(v) for p, v in load.tpot_percentiles.items()})


def statistic(load: Load, which: str, name: str):
    """One statistic ("mean", "p50", "p90", "p99") of TTFT or TPOT, in seconds; for TPOT also
    "itl_p50", the median over every inter-token gap (not over requests' TPOTs), where the load model
    has one (Poisson arrivals), else the median TPOT."""
    if name == "mean":
        return load.ttft if which == "ttft" else load.tpot
    if name == "itl_p50":
        if which != "tpot":
            raise ValueError("itl_p50 is a statistic of the gaps between output tokens (TPOT rows)")
        return load.tpot_percentiles[50] if load.itl_median is None else load.itl_median
    table = load.ttft_percentiles if which == "ttft" else load.tpot_percentiles
    return table[int(name[1:])]


# ---------------------------------------------------------------------------------------------
# the figures a plan and `estimate` report


@dataclass(frozen=True)
class Performance:
    """Predicted serving figures for one configuration and one traffic class."""

    ttft_ms: float
    ttft_max_ms: float  # closed loop: the last first token of a wave; rate: the p99
    tpot_ms: float
    capacity: float  # users (concurrency class) or requests/s (rate class) one replica carries
    output_tokens_per_s: float  # output tokens per second one replica delivers at that load
    decode_tokens_per_s: float  # running sequences / TPOT
    prefill_tokens_per_s: float
    violations: tuple[str, ...] = ()
    ttft_percentiles_ms: dict = field(default_factory=dict)
    tpot_percentiles_ms: dict = field(default_factory=dict)
    statistic: str = "mean"  # the statistic the SLOs were checked at
    load_model: str = ""

    @property
    def meets(self) -> bool:
        return not self.violations and self.capacity > 0

    @property
    def tokens_per_s_per_user(self) -> float:
        return 1000.0 / self.tpot_ms if self.tpot_ms > 0 else math.inf

    def ttft_at(self, name: str) -> float:
        return self.ttft_ms if name == "mean" else self.ttft_percentiles_ms.get(int(name[1:]), math.inf)

    def tpot_at(self, name: str) -> float:
        return self.tpot_ms if name == "mean" else self.tpot_percentiles_ms.get(int(name[1:]), math.inf)


def performance(config: Config, traffic: TrafficClass, times: Timing, rate: float | None = None,
                engine_limit: bool = False) -> Performance:
    """Figures for `traffic` on one replica planned at `config.batch` running sequences.

    Concurrency class: `traffic.concurrency` clients in a closed loop when `engine_limit` (estimate: the
    engine runs at most its default number of sequences, the rest queue), else `config.batch` clients,
    one per running sequence (a plan sets the engine's limit to its batch). Rate class: the highest
    Poisson rate the replica carries within the SLOs is its capacity; figures are reported at `rate`
    requests/s arriving at this replica (default: the class rate, capped at the capacity).
    """
    batch = float(config.batch)
    running = min(batch, times.scheduling.max_sequences) if engine_limit else batch
    clients = float(traffic.users) if engine_limit else batch
    return _evaluate(config, traffic, times, [running], [clients], rate, check_batch=not engine_limit)[0]


def performances(config: Config, traffic: TrafficClass, times: Timing, batches) -> list[Performance]:
    """`performance` at several planned batch sizes at once (one array pass through the load models):
    what the candidate space evaluates for every configuration."""
    return _evaluate(config, traffic, times, batches, batches, None, check_batch=True)


def slot_text(waiting: float, mean: float) -> str:
    """'; a request waits for a free slot 9% of the time (mean 32 ms)' where one in a hundred or more does
    (`waiting`: the probability of waiting, `mean`: the mean wait in seconds, as _slot_wait gives them)."""
    if not 0.01 <= waiting < 1 or not math.isfinite(mean):
        return ""
    return f"; a request waits for a free slot {waiting:.0%} of the time (mean {mean * 1e3:.3g} ms)"


def running_text(limit: int, sched: Scheduling, prompt: int, output: int) -> str:
    """'at most N running', and how many of them the KV cache holds where that is fewer (the rest wait for a slot:
    the load models count the wait in TTFT)."""
    slots = kv_slots(sched, prompt, output)
    if np.isfinite(slots) and slots < limit:
        return f"at most {limit} running (the KV cache holds {int(slots)} at once)"
    return f"at most {limit} running"


def _evaluate(config: Config, traffic: TrafficClass, times: Timing, running, clients, rate: float | None,
              check_batch: bool) -> list[Performance]:
    """Figures at each (running limit, clients) pair in one array pass; rate classes at `rate` (default:
    the class rate capped at each limit's capacity)."""
    running = np.asarray(running, dtype=float)
    clients = np.asarray(clients, dtype=float)
    planned = Timing(times.steps, times.scheduling.with_sequences(running))

    def held(limit) -> str:
        return running_text(int(limit), times.scheduling, traffic.prompt_tokens, traffic.output_tokens)

    if traffic.load_kind == "rate":
        capacity = _capacities(times, traffic, running)
        at = np.full_like(capacity, rate) if rate is not None else np.minimum(capacity, traffic.rate_per_s)
        at = np.maximum(at, 1e-9)
        load = poisson(planned, traffic.prompt_tokens, traffic.output_tokens, at)
        found = []
        for i, limit in enumerate(running):
            waits = slot_text(float(np.reshape(load.slot_waiting, -1)[i]), float(np.reshape(load.slot_wait, -1)[i]))
            one = _figures(traffic, times, load, float(capacity[i]),
                           f"Poisson arrivals at {at[i]:.4g} requests/s per replica, {held(limit)}{waits}", i)
            if capacity[i] <= 0 and not one.violations:
                one = replace(one, violations=(f"batch {int(limit)} cannot hold one request within the SLOs",))
            found.append(one)
    else:
        load = closed_loop(planned, traffic.prompt_tokens, traffic.output_tokens, clients, _protocol(traffic))
        protocol = (f"{traffic.requests_per_client:g} requests per client after warm-up"
                    if traffic.requests_per_client >= 1 else "steady state")
        found = [_figures(traffic, times, load, float(c), f"closed loop, {c:g} clients, {held(limit)}, {protocol}", i)
                 for i, (limit, c) in enumerate(zip(running, clients))]
    if not check_batch:
        return found
    limit = config.framework.max_batch
    return [replace(f, violations=f.violations + (f"batch {int(b)} > {config.framework.id} max batch {limit}",))
            if b > limit else f for f, b in zip(found, running)]


_CAPACITIES: dict = {}  # (id(times), capacity_key(traffic), running limits) -> (times, capacities): see _capacities
CAPACITY_MEMO_SIZE = 4096  # entries kept before the memo starts over


def capacity_key(traffic: TrafficClass) -> tuple:
    """What a rate class's capacity search reads of the class (rate_capacities, _rate_ok): its lengths, its SLOs
    and the statistic they bound. Not its rate: a replica carries what it carries whatever is offered, so a sweep
    over the rate finds the same capacities at every point."""
    return traffic.prompt_tokens, traffic.output_tokens, traffic.ttft_ms, traffic.tpot_limit_ms, traffic.statistic


def _capacities(times: Timing, traffic: TrafficClass, running: np.ndarray) -> np.ndarray:
    """rate_capacities(times, traffic, running), kept for the same step model and scheduler (the very object,
    held in the memo so that its id stays its own): a plan's figures (plan.figures) ask it again for every
    replica group that each settle-sharing round and each fleet part shows, at the same batch, and a rate sweep's
    points at every rate (capacity_key)."""
    key = (id(times), capacity_key(traffic), tuple(running.tolist()))
    kept = _CAPACITIES.get(key)
    if kept is not None and kept[0] is times:
        return kept[1].copy()
    found = rate_capacities(times, traffic, running)
    if len(_CAPACITIES) >= CAPACITY_MEMO_SIZE:
        _CAPACITIES.clear()
    _CAPACITIES[key] = (times, found.copy())
    return found


def _protocol(traffic: TrafficClass) -> Protocol:
    return Protocol(traffic.requests_per_client)


def rate_capacity(times: Timing, traffic: TrafficClass) -> float:
    """Highest arrival rate (requests/s) one replica carries: stable, prefill utilisation <= 0.9,
    running sequences within the limit and the SLOs met at the class's statistic."""
    return float(rate_capacities(times, traffic, [times.scheduling.max_sequences])[0])


def rate_capacities(times: Timing, traffic: TrafficClass, sequences, bounds=None) -> np.ndarray:
    """`rate_capacity` for several running limits at once: a geometric grid of rates, then two finer
    grids between the last good and the first bad rate (1/1000 of the gap), every limit in one pass.

    Array-safe: `times` may hold one step model and scheduler (scalar fields; `sequences` the limits
    to try) or one per element (array fields, element i's running limit in `sequences[i]`: what
    solver/loads.py evaluates for many configurations at once). `bounds`: (prefill-bound rate, idle
    step time) per element where the caller has them (loads.search_bounds: each computed on the
    element's own scalar step model, whose sums run in another order than the array formula's)."""
    prompt, output = traffic.prompt_tokens, traffic.output_tokens
    steps, sched = times.steps, times.scheduling
    limits = _column(sequences)
    if bounds is None:
        budget = np.maximum(sched.token_budget, prompt)
        prefill_bound = 1.0 / (prompt / budget * steps.seconds(0.0, np.minimum(prompt, budget)) + 1e-12)
        idle = steps.seconds(0.0, 0.0)
    else:
        prefill_bound, idle = _column(bounds[0]), _column(bounds[1])
    if np.ndim(sched.token_budget):  # one scheduler per element: fields as columns against the grids
        shape = np.shape(sched.token_budget)
        sched = Scheduling(sched.policy, _column(sched.token_budget), limits, sched.chunked,
                           _column(sched.reserve_full).astype(bool), _column(sched.kv_tokens),
                           request_overhead_s=_column(sched.request_overhead_s),
                           wave_persistence=_column(sched.wave_persistence),
                           scheduler_steps=_column(np.broadcast_to(sched.scheduler_steps, shape)),
                           first_token_steps=_column(np.broadcast_to(sched.first_token_steps, shape)))
    else:
        sched = sched.with_sequences(limits)
    if np.ndim(steps.bandwidth):
        steps = StepModel(*(_column(getattr(steps, name)) for name in StepModel.__dataclass_fields__))
    limited = Timing(steps, sched)
    high = np.minimum(limits / ((output - 1) * idle + 1e-12), prefill_bound)
    low = np.zeros_like(high)
    for round_ in range(3):
        if round_ == 0:
            grid = high * np.geomspace(1e-4, 1.0, 32)[None, :]
        else:
            grid = low + (high - low) * np.linspace(0.0, 1.0, 33)[None, 1:]
        last = _last_good(limited, traffic, grid)
        found = last >= 0
        at_last = np.take_along_axis(grid, np.maximum(last, 0), axis=1)
        after = np.take_along_axis(grid, np.minimum(last + 1, grid.shape[1] - 1), axis=1)
        first_bad = np.where(last + 1 < grid.shape[1], after, at_last)
        low, high = np.where(found, at_last, low), np.where(found, first_bad, grid[:, :1])
    return low[:, 0]


def _last_good(times: Timing, traffic: TrafficClass, grid: np.ndarray) -> np.ndarray:
    """Per element (row), the index of the last grid rate the replica carries (-1: none), by bisection over the
    grid's columns: one rate per element per round, six rounds for 32 rates, instead of all 32 at once.
    A replica that carries a rate carries every lower one (more arrivals only lengthen the waits and the
    steps), so the result is the last good column of the whole grid; where rounding makes the rule flip
    once more right at the edge (8 of ~900k rows in a test of four scenarios, all within 0.1% of the
    capacity), it is the first flip."""
    good_below = np.full((grid.shape[0], 1), -1)  # the highest column known to be carried (-1: none yet)
    bad_above = np.full((grid.shape[0], 1), grid.shape[1])  # the lowest column known not to be
    while np.any(bad_above - good_below > 1):
        middle = (good_below + bad_above) // 2
        open_ = bad_above - good_below > 1
        rates = np.take_along_axis(grid, np.clip(middle, 0, grid.shape[1] - 1), axis=1)
        good = _rate_ok(times, traffic, rates)
        good_below = np.where(open_ & good, middle, good_below)
        bad_above = np.where(open_ & ~good, middle, bad_above)
    return good_below


def _column(values) -> np.ndarray:
    """One value per element as a column (elements down, grid points across)."""
    return np.asarray(values, dtype=float)[:, None]


def _rate_ok(times: Timing, traffic: TrafficClass, rates):
    load = poisson(times, traffic.prompt_tokens, traffic.output_tokens, rates)
    ok = np.isfinite(load.tpot) & (np.asarray(load.prefill_utilisation) <= MAX_PREFILL_UTILISATION)
    ok &= np.asarray(load.decoding) <= times.scheduling.max_sequences
    if traffic.ttft_ms is not None:
        ok &= statistic(load, "ttft", traffic.statistic) * 1e3 <= traffic.ttft_ms
    if traffic.tpot_limit_ms is not None:
        ok &= statistic(load, "tpot", traffic.statistic) * 1e3 <= traffic.tpot_limit_ms
    return ok


def _figures(traffic: TrafficClass, times: Timing, load: Load, capacity: float, described: str,
             index: int = 0) -> Performance:
    """The scalar record of element `index` of a (possibly array) load evaluation."""
    value = lambda x: float(np.asarray(x).reshape(-1)[index] if np.ndim(x) else x)  # noqa: E731
    ttft_p = {p: value(v) * 1e3 for p, v in load.ttft_percentiles.items()}
    tpot_p = {p: value(v) * 1e3 for p, v in load.tpot_percentiles.items()}
    ttft, tpot = value(load.ttft) * 1e3, value(load.tpot) * 1e3
    performance = Performance(
        ttft_ms=ttft, ttft_max_ms=ttft_p.get(99, ttft), tpot_ms=tpot, capacity=capacity,
        output_tokens_per_s=value(load.throughput) * traffic.output_tokens,
        decode_tokens_per_s=value(load.decoding) / (tpot / 1e3) if tpot > 0 and math.isfinite(tpot) else 0.0,
        prefill_tokens_per_s=traffic.prompt_tokens / (times.steps.seconds(0.0, min(traffic.prompt_tokens,
                                                      times.scheduling.token_budget)) * max(1.0, traffic.prompt_tokens
                                                      / times.scheduling.token_budget)),
        ttft_percentiles_ms=ttft_p, tpot_percentiles_ms=tpot_p, statistic=traffic.statistic, load_model=described,
    )
    name = traffic.statistic
    violations = slo_violations(traffic, performance.ttft_at(name), performance.tpot_at(name), name)
    return replace(performance, violations=tuple(violations))


def slo_violations(traffic: TrafficClass, ttft_ms: float, tpot_ms: float, name: str = "mean") -> list[str]:
    found = []
    label = "" if name == "mean" else f" {name}"
    if traffic.ttft_ms is not None and not ttft_ms <= traffic.ttft_ms:
        found.append(f"TTFT{label} {distinct(ttft_ms, traffic.ttft_ms)[0]} ms > {traffic.ttft_ms:g} ms")
    limit = traffic.tpot_limit_ms
    if limit is not None and not tpot_ms <= limit:
        found.append(f"TPOT{label} {distinct(tpot_ms, limit)[0]} ms > {limit:.4g} ms")
    return found


def distinct(value: float, limit: float, decimals: int = 1) -> tuple[str, str]:
    """`value` and `limit` printed with enough decimals (from `decimals`, up to 5) that they read differently."""
    for places in range(decimals, 6):
        shown, bound = f"{value:.{places}f}", f"{limit:.{places}f}"
        if shown != bound:
            return shown, bound
    return f"{value:.5g}", f"{limit:.5g}"


# ---------------------------------------------------------------------------------------------
# several classes on one replica


def shared_load(loads: dict) -> dict:
    """Per-class (TTFT mean, TPOT mean, TTFT p90, TPOT p90) in ms when classes share one replica's steps.

    `loads`: name -> (TrafficClass, Timing, load on this replica: users or requests/s). All classes'
    decodes and prompt chunks ride the same steps, so TPOT is common and each TTFT sees every class's
    prefill work. Steady state: a concurrency class's clients become a rate through its own cycle
    (lam = c / (TTFT + (O - 1) TPOT)); the combined stream is treated as Poisson arrivals of a class
    with the rate-weighted step costs and lengths.
    """
    names = sorted(loads)
    rates = {n: (loads[n][2] if loads[n][0].load_kind == "rate" else 0.0) for n in names}
    ttft = {n: 0.0 for n in names}
    tau = 0.0
    result = None
    for _ in range(FIXED_POINT_ROUNDS // 2):
        for n in names:
            traffic, _, load = loads[n]
            if traffic.load_kind == "concurrency":
                cycle = ttft[n] + (traffic.output_tokens - 1) * tau
                rates[n] = load / cycle if cycle > 0 else load / (traffic.output_tokens * 0.01)
        total = sum(rates.values())
        if total <= 0:
            break
        combined, prompt, output, sched = _combine(loads, rates)
        result = poisson(Timing(combined, sched), prompt, output, total)
        tau_new = float(np.asarray(result.tpot))
        if not math.isfinite(tau_new):
            break
        tau = tau_new if tau == 0 else (tau + tau_new) / 2
        for n in names:
            ttft[n] = _own_ttft(combined, sched, prompt, loads[n][0].prompt_tokens, result,
                                float(np.asarray(result.ttft)))
    if result is None or not math.isfinite(tau):
        return {n: (math.inf,) * 4 for n in names}
    found = {}
    for n in names:
        p90 = _own_ttft(combined, sched, prompt, loads[n][0].prompt_tokens, result,
                        float(np.asarray(result.ttft_percentiles[90])))
        found[n] = (ttft[n] * 1e3, tau * 1e3, p90 * 1e3, float(np.asarray(result.tpot_percentiles[90])) * 1e3)
    return found


def _own_ttft(steps: StepModel, sched: Scheduling, mean_prompt: int, prompt: int, result: Load, ttft: float) -> float:
    """A class's TTFT in the combined stream: the stream's TTFT (at its mean prompt) with the mean prompt's own
    prefill swapped for the class's. What the stream waits before its prefill (queue, API server) is common to
    every class and never less than the server's per-request overhead: a short prompt beside long ones waits
    as long, it does not arrive before it is sent."""
    decoding = float(np.asarray(result.decoding))
    waited = max(ttft - _own_prefill(steps, sched, mean_prompt, decoding), sched.request_overhead_s)
    return waited + _own_prefill(steps, sched, prompt, decoding)


def _own_prefill(steps: StepModel, sched: Scheduling, prompt: int, decoding: float) -> float:
    """The part of a prompt's TTFT its own length sets: under prefill-first scheduling one prefill batch that
    holds it whole (no decodes ride along: `_poisson_prefill_first`), else its chunks beside the decodes."""
    if sched.policy == "prefill-first":
        return steps.seconds(0.0, prompt)
    room = max(sched.token_budget - decoding, 1.0)
    return max(math.ceil(prompt / room), 1) * steps.seconds(decoding, min(prompt, room))


def _combine(loads: dict, rates: dict):
    """One step model and lengths standing for several classes at their rates."""
    names = sorted(loads)
    total = sum(rates.values())
    prompt_work = {n: rates[n] * loads[n][0].prompt_tokens for n in names}
    decode_work = {n: rates[n] * (loads[n][0].output_tokens - 1) for n in names}
    prompt = sum(prompt_work.values()) / total
    output = 1 + sum(decode_work.values()) / total
    first = loads[names[0]][1]

    def mean(attribute, weights):
        weight = sum(weights.values()) or 1.0
        return sum(getattr(loads[n][1].steps, attribute) * weights[n] for n in names) / weight

    steps = replace(
        first.steps,
        bytes_per_sequence=mean("bytes_per_sequence", decode_work),
        flops_per_sequence=mean("flops_per_sequence", decode_work),
        host_bytes_per_sequence=mean("host_bytes_per_sequence", decode_work),
        bytes_per_prompt_token=mean("bytes_per_prompt_token", prompt_work),
        flops_per_prompt_token=mean("flops_per_prompt_token", prompt_work),
        host_bytes_per_prompt_token=mean("host_bytes_per_prompt_token", prompt_work),
    )
    return steps, max(int(round(prompt)), 1), max(int(round(output)), 2), first.scheduling
