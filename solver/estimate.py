"""One configuration's predictions, as `quantplan estimate` prints them: memory, TTFT/TPOT (means and
percentiles) under a closed loop or Poisson arrivals, quality and cost. Apart from solver/api.py so that the
command imports the serving model and the catalogs only, not the planner (program, plans, explanations)."""

from __future__ import annotations

import math
from dataclasses import replace

from pydantic import BaseModel, ConfigDict

from . import errorbars
from .errors import QuantplanError
from .prices import PricesUsed, prices_used
from .registry import World, load_world
from .scenario import TrafficClass


class EstimateResult(BaseModel):
    """Predictions for one configuration, as `quantplan estimate` prints them."""

    model_config = ConfigDict(frozen=True)

    model: str
    method: str
    gpu: str
    framework: str
    gpus: int
    batch_size: int
    kv_cache_dtype: str
    prompt_tokens: int
    output_tokens: int
    compatible: bool
    expert_parallel: int = 1  # MoE: devices the routed experts are split over whole (1: tensor-parallel slices)
    reasons: list[str] = []
    fits: bool | None = None
    gpu_layers: int | None = None
    memory_gb_per_gpu: float | None = None
    memory_capacity_gb_per_gpu: float | None = None
    weights_gb: float | None = None
    kv_cache_gb: float | None = None
    overhead_gb: float | None = None
    host_memory_gb: float | None = None
    ttft_ms: float | None = None
    ttft_max_ms: float | None = None
    tpot_ms: float | None = None
    tokens_per_s: float | None = None
    tokens_per_s_per_user: float | None = None
    decode_tokens_per_s: float | None = None
    prefill_tokens_per_s: float | None = None
    decode_bound: str | None = None
    ttft_p50_ms: float | None = None
    ttft_p90_ms: float | None = None
    ttft_p99_ms: float | None = None
    tpot_p50_ms: float | None = None
    tpot_p90_ms: float | None = None
    tpot_p99_ms: float | None = None
    load_model: str | None = None
    scheduling: dict = {}
    kv_cache_note: str | None = None
    simulated: dict | None = None
    ppl_delta: float | None = None
    ppl_delta_pct: float | None = None
    kl_divergence: float | None = None  # mean KL divergence to the base model, nats per token
    accuracy_recovery_pct: dict[str, float] | None = None  # knowledge, math, code, chat
    quality_error_bars: dict = {}  # 10th-90th percentile band of each quality figure
    quality_notes: list[str] = []  # conservative fallbacks taken (a family or method without rows)
    cost_per_hour: float | None = None
    cost_per_million_tokens: float | None = None
    execution: str | None = None
    error_bars: dict = {}
    coverage_warnings: list[str] = []
    terms: list[dict] = []
    prices: PricesUsed | None = None  # the price this estimate used: provider (or median) and date


def _expert_parallel(model, framework, gpus: int, size: int) -> int:
    """A MoE layout the engine can run: `size` devices, each holding whole experts (one line if not)."""
    if size <= 0:
        raise QuantplanError(f"--expert-parallel {size}: must be positive")
    if not model.is_moe:
        raise QuantplanError(f"--expert-parallel {size}: {model.id} has no routed experts")
    if framework.parallelism != "tensor":
        raise QuantplanError(f"--expert-parallel {size}: {framework.id} does not split a model over GPUs")
    if gpus % size or model.num_experts % size:
        raise QuantplanError(f"--expert-parallel {size}: must divide --gpus {gpus} and {model.id}'s "
                             f"{model.num_experts} experts")
    return size


def estimate(model: str, method: str, gpu: str, framework: str, gpus: int = 1, batch: int = 1,
             prompt_tokens: int = 512, output_tokens: int = 256, kv_cache_dtype: str | None = None,
             gpu_layers: int | None = None, prices: dict[str, float] | None = None,
             model_config: str | None = None, world: World | None = None,
             catalogs: tuple[str, ...] = (), rate: float | None = None, max_num_seqs: int | None = None,
             requests_per_client: float = 10.0, simulate: bool = False,
             provider: str | None = None, api_server: str | None = None,
             expert_parallel: int = 1) -> EstimateResult:
    """Predict memory, TTFT/TPOT (means and percentiles), quality and cost: a closed loop of `batch`
    clients (the engine runs at most `max_num_seqs`, default its own limit, the rest queue), or with
    `rate`, Poisson arrivals of that many requests/s at this replica. `kv_cache_dtype` None: the
    engine's default for the checkpoint. `simulate`: also run the step-by-step scheduler simulation.
    `api_server`: the server in front of the engine when not its own (its per-request TTFT overhead).
    `expert_parallel`: a MoE model's routed experts split whole over that many of the replica's GPUs
    (TensorRT-LLM moe_expert_parallel_size, SGLang --ep-size, vLLM --enable-expert-parallel) instead of
    sliced over all of them (1, the engines' default)."""
    from .candidates import Config, Step
    from .estimator import cost_terms, memory, memory_terms, quality, step_terms
    from .serving import performance, timing
    from .shapes import model_from_config
    from .space import execution_of, fit_placement, objections

    if gpus <= 0 or batch <= 0 or prompt_tokens <= 0 or output_tokens <= 0 or (rate is not None and rate <= 0):
        raise QuantplanError("--gpus, --concurrency, --prompt-tokens, --output-tokens and --rate must be positive")
    if max_num_seqs is not None and max_num_seqs <= 0:
        raise QuantplanError("--max-num-seqs must be positive")
    if rate is not None and not math.isfinite(rate):
        raise QuantplanError(f"--rate {rate}: give a finite number of requests/s")
    from .scenario import MAX_CONCURRENCY, MAX_RATE_PER_S, MAX_TOKENS

    if batch > MAX_CONCURRENCY:
        raise QuantplanError(f"--concurrency {batch}: at most {MAX_CONCURRENCY} clients")
    if rate is not None and rate > MAX_RATE_PER_S:
        raise QuantplanError(f"--rate {rate:g}: at most {MAX_RATE_PER_S:g} requests/s")
    if max(prompt_tokens, output_tokens) > MAX_TOKENS:
        raise QuantplanError(f"--prompt-tokens / --output-tokens: at most {MAX_TOKENS} tokens each")
    if max_num_seqs is not None and max_num_seqs > MAX_CONCURRENCY:
        raise QuantplanError(f"--max-num-seqs {max_num_seqs}: at most {MAX_CONCURRENCY}")
    if not (math.isfinite(requests_per_client) and requests_per_client >= 0):
        raise QuantplanError(f"--requests-per-client {requests_per_client}: give 0 (steady state) or more")
    world = world or load_world(catalogs)
    priced = world.with_prices(prices or {}, provider)  # an unknown provider fails before any work
    spec = model_from_config(model_config) if model_config else world.models.get(model)
    m, g, f = world.methods.get(method), world.gpus.get(gpu), world.frameworks.get(framework)
    kv_note = None
    if kv_cache_dtype is None:
        kv_cache_dtype = f.kv_cache_default.get(m.id, f.kv_cache_default.get("*", "fp16"))
        kv_note = f"KV cache {kv_cache_dtype}: {f.id}'s default for a {m.id} checkpoint (give --kv-cache-dtype to change)"
        if kv_cache_dtype == "bf16" and g.kind == "gpu" and g.tflops_bf16 <= 0:
            kv_cache_dtype = "fp16"  # engines cast a bf16 model to fp16 where the GPU has no bf16
            kv_note = f"KV cache fp16: {f.id} runs a bf16 model in fp16 on {g.id} (no bf16 units)"
    kv = world.kv_caches.get(kv_cache_dtype)
    head = dict(model=spec.id, method=m.id, gpu=g.id, framework=f.id, gpus=gpus, batch_size=batch,
                kv_cache_dtype=kv.id, prompt_tokens=prompt_tokens, output_tokens=output_tokens, kv_cache_note=kv_note,
                expert_parallel=expert_parallel)
    execution = execution_of(world, m, g, f)
    if not execution.possible:
        return EstimateResult(**head, compatible=False, reasons=[execution.reason])
    config = Config(spec, m, g, f, kv, gpus, execution, batch)
    if expert_parallel != 1:
        config = replace(config, expert_parallel=_expert_parallel(spec, f, gpus, expert_parallel))
    reasons = objections(world, config)
    if reasons:
        return EstimateResult(**head, compatible=False, reasons=reasons)
    traffic = TrafficClass(prompt_tokens=prompt_tokens, output_tokens=output_tokens,
                           requests_per_client=requests_per_client,
                           **({"rate_per_s": rate} if rate is not None else {"concurrency": batch}))
    if gpu_layers is not None:
        if not 0 < gpu_layers <= spec.layers or not f.hybrid_offload:
            raise QuantplanError(f"--gpu-layers must be 1..{spec.layers} and needs a framework with "
                                 f"hybrid offload (llama.cpp)")
        config = replace(config, gpu_layer_fraction=min(gpu_layers / spec.layers, 1.0))
    else:
        placed = fit_placement(world, config.with_batch(1), (traffic,))
        if placed is not None and placed.hybrid:
            config = replace(config, gpu_layer_fraction=placed.gpu_layer_fraction)
    times = timing(world, config, traffic)
    if api_server:
        from .serving import behind_server

        times = type(times)(times.steps, behind_server(times.scheduling, f, api_server))
    if max_num_seqs is not None:
        times = type(times)(times.steps, times.scheduling.with_sequences(max_num_seqs))
    running = min(batch, times.scheduling.max_sequences)
    if rate is not None:
        from .serving import rate_capacity

        most = rate_capacity(times, traffic)
        if not rate <= most * (1 + 1e-9):  # a plan may load a replica to its capacity exactly
            return EstimateResult(**head, compatible=False, reasons=[
                f"{rate:g} requests/s is more than one replica carries: at most {most:.4g} requests/s with "
                f"{times.scheduling.max_sequences} running and prefill below 90% busy; beyond that the queue "
                f"grows without bound (add replicas: {math.ceil(rate / most) if most > 0 else 'many'} would do)"])
    result = performance(config.with_batch(running if rate is None else times.scheduling.max_sequences),
                         traffic, times, rate=rate, engine_limit=True)
    simulated = None
    if simulate:
        from .simulate import simulate as run_simulation

        simulated = run_simulation(times, traffic, clients=None if rate is not None else batch).as_dict()
    if rate is not None:  # memory at the sequences running on average at that rate
        decoding = result.decode_tokens_per_s * result.tpot_ms / 1e3
        running = min(times.scheduling.max_sequences, max(1, math.ceil(decoding))) if math.isfinite(decoding) else 1
    config = config.with_batch(running)
    found = memory_terms(world, config, traffic.context_tokens)
    used = memory(world, config, traffic.context_tokens, found)
    assessed = quality(world, config)
    costs = cost_terms(world, config, priced)
    cost = sum(t.value for t in costs) if costs else None
    speed = (step_terms(world, config, Step("decode", running, running, prompt_tokens + output_tokens / 2))
             + step_terms(world, config, Step("prefill", 1, prompt_tokens, prompt_tokens)))
    divisor = used.memory_divisor
    bars, warnings = errorbars.describe(f.id, g.device_class, running, gpus, g.vendor, g.interconnect)
    if not config.execution.measured:
        warnings = [*warnings, f"no speed measurement of the {config.execution.kernel} kernel"]
    return EstimateResult(
        **head, compatible=True, fits=used.fits, gpu_layers=config.gpu_layers if config.hybrid else None,
        memory_gb_per_gpu=used.used_per_gpu / 1e9, memory_capacity_gb_per_gpu=used.available_per_gpu / 1e9,
        weights_gb=used.weights_per_gpu * divisor / 1e9, kv_cache_gb=used.kv_per_gpu * divisor / 1e9,
        overhead_gb=used.overhead_per_gpu / 1e9, host_memory_gb=used.host_bytes / 1e9 if config.hybrid else None,
        ttft_ms=result.ttft_ms, ttft_max_ms=result.ttft_max_ms, tpot_ms=result.tpot_ms,
        tokens_per_s=result.output_tokens_per_s, tokens_per_s_per_user=result.tokens_per_s_per_user,
        decode_tokens_per_s=result.decode_tokens_per_s, prefill_tokens_per_s=result.prefill_tokens_per_s,
        decode_bound=times.decode_bound,
        ttft_p50_ms=result.ttft_percentiles_ms.get(50), ttft_p90_ms=result.ttft_percentiles_ms.get(90),
        ttft_p99_ms=result.ttft_percentiles_ms.get(99), tpot_p50_ms=result.tpot_percentiles_ms.get(50),
        tpot_p90_ms=result.tpot_percentiles_ms.get(90), tpot_p99_ms=result.tpot_percentiles_ms.get(99),
        load_model=result.load_model, simulated=simulated,
        scheduling=dict(policy=times.scheduling.policy, token_budget=times.scheduling.token_budget,
                        max_sequences=times.scheduling.max_sequences, chunked_prefill=times.scheduling.chunked,
                        kv_reserved_up_front=times.scheduling.reserve_full,
                        kv_cache_tokens=times.scheduling.kv_tokens if math.isfinite(times.scheduling.kv_tokens)
                        else None, source=times.scheduling.source,
                        request_overhead_ms=times.scheduling.request_overhead_s * 1e3, api_server=api_server or None),
        ppl_delta=assessed.ppl_delta, ppl_delta_pct=assessed.ppl_delta_pct,
        kl_divergence=assessed.kl_divergence, accuracy_recovery_pct=assessed.recovery_pct,
        quality_error_bars=assessed.error_bars(), quality_notes=assessed.notes,
        cost_per_hour=cost,
        cost_per_million_tokens=cost / (result.output_tokens_per_s * 3600) * 1e6
        if cost and result.output_tokens_per_s else None,
        execution=execution.note or f"{execution.compute_dtype} compute, {execution.kernel} kernel",
        error_bars=bars, coverage_warnings=warnings,
        terms=[t.as_dict() for t in found + speed + assessed.terms + costs],
        prices=prices_used(priced, provider, [g.id], [g.id]),
    )
