"""The answer: plan records (pydantic) and how they are made from a solution."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from . import errorbars
from .prices import PricesUsed
from .program import Solution
from .scenario import TrafficClass
from . import serving
from .serving import performance
from .space import Option, gpu_class_of


class Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class ClassFigures(Out):
    name: str
    share: float
    load_per_replica: float  # users (concurrency class) or requests/s (rate class) on each replica
    ttft_ms: float
    ttft_max_ms: float
    tpot_ms: float
    tokens_per_s_per_user: float
    output_tokens_per_s: float
    capacity: float
    capacity_unit: str
    memory_gb_per_gpu: float
    kv_cache_gb: float
    tokens_per_s: float = 0.0  # output tokens/s this class gets from one replica
    statistic: str = "mean"  # the statistic its SLOs were checked at
    ttft_p90_ms: float | None = None
    tpot_p90_ms: float | None = None
    ttft_at_statistic_ms: float | None = None  # the figure the SLO bounds (at `statistic`)
    tpot_at_statistic_ms: float | None = None
    shared_with: list[str] = []  # other classes on the same replica, whose load these figures include
    quality_bound: str | None = None  # the class's tightest quality bound, with its headroom
    quality_headroom: float | None = None  # share of that bound's allowance left


class ReplicaGroup(Out):
    """`count` identical replicas; figures are for one replica and the class it mostly serves."""

    method: str
    gpu: str
    framework: str
    gpus_per_replica: int
    batch_size: int
    kv_cache_dtype: str
    count: int
    gpu_layers: int | None
    ttft_ms: float
    ttft_max_ms: float
    tpot_ms: float
    tokens_per_s: float
    tokens_per_s_per_user: float
    decode_tokens_per_s: float
    memory_gb_per_gpu: float
    memory_capacity_gb_per_gpu: float
    weights_gb: float
    kv_cache_gb: float
    ppl_delta: float
    ppl_delta_pct: float
    kl_divergence: float
    accuracy_recovery_pct: dict[str, float]
    quality_notes: list[str]  # conservative fallbacks of the quality model (family or method without rows)
    cost_per_hour: float
    execution: str
    classes: list[ClassFigures]
    error_bars: dict
    coverage_warnings: list[str]
    key: str = ""  # the configuration's id (device/method/framework/tp/batch/kv)
    model: str = ""
    basis: str = "measured-near"  # or "extrapolated": outside the validation data (coverage_warnings)
    margin: str = "none"  # validation error the TTFT/TPOT figures include (none, median, p90)
    gpu_class: str = "datacenter"  # or "consumer" (GeForce, Apple laptops)
    ppl_measured: str = ""  # non-empty: ppl_delta comes from a measured quality record (solve --quality)


class Alternative(Out):
    label: str
    cost_per_hour: float
    cost_difference_per_hour: float
    cost_ratio: float
    replicas: list[str]
    latency_ms: float | None = None  # mean request latency: the latency objective's own measure
    latency_difference_ms: float | None = None


class SolveStats(Out):
    configurations: int
    candidates: int
    candidates_after_pruning: int
    solve_seconds: float
    gap: float | None


class Plan(Out):
    status: str  # optimal | infeasible | time_limit
    objective: str
    model: str
    cost_per_hour: float | None
    cost_per_million_tokens: float | None
    tokens_per_s: float | None
    replicas: list[ReplicaGroup]
    binding: list[str]
    alternatives: list[Alternative]
    reasons: list[str]
    notes: list[str]
    stats: SolveStats | None = None
    workload: list[str] = []  # the problem as understood
    pool: list[dict] = []  # a fleet: per device, GPUs used and available
    traffic: tuple[TrafficClass, ...] = ()  # the traffic classes planned for (launch: lengths, load, SLOs)
    prices: PricesUsed | None = None  # which prices the plan used (provider or median) and what was left out
    api_server: str | None = None  # the API server assumed in front of the engines (None: each engine's own)


def figures(option: Option, traffic: TrafficClass, share: float, count: int = 1) -> ClassFigures:
    """Figures at the load each replica carries: for a rate class, share x rate / replicas arrive at it."""
    result = option.performance[traffic.name]
    memory = option.memory[traffic.name]
    load = share * (traffic.rate_per_s if traffic.load_kind == "rate" else traffic.users) / max(count, 1)
    if traffic.load_kind == "rate" and traffic.name in option.timings and load > 0:
        result = performance(option.config, traffic, option.timings[traffic.name], rate=load)
    return ClassFigures(
        name=traffic.name, share=share, load_per_replica=load, ttft_ms=result.ttft_ms, ttft_max_ms=result.ttft_max_ms, tpot_ms=result.tpot_ms,
        tokens_per_s_per_user=result.tokens_per_s_per_user, output_tokens_per_s=result.output_tokens_per_s,
        capacity=result.capacity, capacity_unit="requests/s" if traffic.load_kind == "rate" else "users",
        memory_gb_per_gpu=memory.used_per_gpu / 1e9,
        kv_cache_gb=memory.kv_per_gpu * memory.memory_divisor / 1e9,
        tokens_per_s=result.output_tokens_per_s * (load / result.capacity if traffic.load_kind == "concurrency"
                                                   and result.capacity else 1.0),
        statistic=result.statistic, ttft_p90_ms=result.ttft_percentiles_ms.get(90),
        tpot_p90_ms=result.tpot_percentiles_ms.get(90), ttft_at_statistic_ms=result.ttft_at(result.statistic),
        tpot_at_statistic_ms=result.tpot_at(result.statistic), quality_bound=option.quality_bounds.get(traffic.name, (None, None))[0],
        quality_headroom=option.quality_bounds.get(traffic.name, (None, None))[1],
    )


def replica_group(option: Option, count: int, shares: dict[str, float],
                  classes: tuple[TrafficClass, ...]) -> ReplicaGroup:
    config = option.config
    served = {k.name: figures(option, k, shares.get(k.name, 0.0), count) for k in classes
              if k.name in option.performance and (not shares or k.name in shares)}
    main = max(served, key=lambda name: (round(served[name].share, 9), name))  # shares carry solver noise
    per_class = shared(option, served, classes, count)  # a shared replica: every class under the combined load
    headline, memory = next(f for f in per_class if f.name == main), option.memory[main]
    note = config.execution.note or f"{config.execution.compute_dtype} compute, {config.execution.kernel} kernel"
    bars, warnings = errorbars.describe(config.framework.id, config.gpu.device_class, config.batch, config.gpus,
                                        config.gpu.vendor, config.gpu.interconnect)
    if not config.execution.measured:
        warnings = [*warnings, f"no speed measurement of the {config.execution.kernel} kernel"]
    return ReplicaGroup(
        method=config.method.id, gpu=config.gpu.id, framework=config.framework.id,
        gpus_per_replica=config.gpus, batch_size=config.batch, kv_cache_dtype=config.kv.id, count=count,
        gpu_layers=config.gpu_layers if config.hybrid else None,
        ttft_ms=headline.ttft_ms, ttft_max_ms=headline.ttft_max_ms, tpot_ms=headline.tpot_ms,
        # a shared replica delivers every class's tokens: the row's throughput is their sum
        tokens_per_s=sum(f.output_tokens_per_s for f in per_class) if len(per_class) > 1
        else headline.output_tokens_per_s, tokens_per_s_per_user=headline.tokens_per_s_per_user,
        decode_tokens_per_s=sum(option.performance[name].decode_tokens_per_s for name in served),
        memory_gb_per_gpu=headline.memory_gb_per_gpu,
        memory_capacity_gb_per_gpu=memory.available_per_gpu / 1e9,
        weights_gb=memory.weights_per_gpu * memory.memory_divisor / 1e9,
        kv_cache_gb=headline.kv_cache_gb,
        ppl_delta=option.quality.ppl_delta, ppl_delta_pct=option.quality.ppl_delta_pct,
        kl_divergence=round(option.quality.kl_divergence, 6),
        accuracy_recovery_pct={k: round(v, 3) for k, v in option.quality.recovery_pct.items()},
        quality_notes=option.quality.notes,
        cost_per_hour=option.cost_per_hour, execution=note, classes=per_class,
        error_bars=bars,
        coverage_warnings=warnings, key=option.key, model=config.model.id,
        basis="extrapolated" if warnings else "measured-near", margin=option.margin,
        gpu_class=gpu_class_of(config.gpu), ppl_measured=option.quality.measured,
    )


def shared(option: Option, served: dict[str, ClassFigures], classes: tuple[TrafficClass, ...],
           count: int) -> list[ClassFigures]:
    """Per-class figures; where one replica serves several classes, each sees their combined load (the
    combined-load model gives means and p90s: an SLO at p99 is checked at the p90 there)."""
    if len(served) < 2:
        return list(served.values())
    by_name = {k.name: k for k in classes}
    loads = {name: (by_name[name], option.timings[name], figures.load_per_replica) for name, figures in served.items()}
    combined = serving.shared_load(loads)
    found = []
    for name, figures in served.items():
        ttft, tpot, ttft_p90, tpot_p90 = combined[name]
        at_mean = figures.statistic == "mean"
        found.append(figures.model_copy(update=dict(
            ttft_ms=ttft, tpot_ms=tpot, ttft_p90_ms=ttft_p90, tpot_p90_ms=tpot_p90,
            ttft_at_statistic_ms=ttft if at_mean else ttft_p90, tpot_at_statistic_ms=tpot if at_mean else tpot_p90,
            tokens_per_s_per_user=1000.0 / tpot if tpot > 0 else figures.tokens_per_s_per_user,
            shared_with=sorted(set(served) - {name}))))
    return found


def served_tokens_per_s(solution: Solution, classes: tuple[TrafficClass, ...]) -> float:
    """Output tokens per second the whole plan delivers at the given load."""
    total = 0.0
    by_name = {k.name: k for k in classes}
    for assignment in solution.assignments:
        for name, share in assignment.shares.items():
            traffic = by_name[name]
            if traffic.load_kind == "rate":
                total += share * traffic.rate_per_s * traffic.output_tokens
            else:  # a replica's closed-loop throughput, scaled by how full the load keeps it
                result = assignment.option.performance[name]
                total += share * traffic.users / result.capacity * result.output_tokens_per_s
    return total


def summary(group: ReplicaGroup) -> str:
    offload = f", {group.gpu_layers} layers on GPU" if group.gpu_layers is not None else ""
    marks = "".join(f", {m}" for m, on in (("consumer", group.gpu_class == "consumer"),
                                            ("extrapolated", group.basis == "extrapolated")) if on)
    return (f"{group.count} x ({group.gpus_per_replica}x {group.gpu}, {group.method}, {group.framework}, "
            f"batch {group.batch_size}, {group.kv_cache_dtype} KV{offload}{marks})")


def mean_request_latency_ms(solution: Solution, classes: tuple[TrafficClass, ...]) -> float:
    """Load-weighted mean request latency (TTFT + (output - 1) x TPOT), the latency objective's measure."""
    by_name = {k.name: k for k in classes}
    total = 0.0
    for assignment in solution.assignments:
        for name, share in assignment.shares.items():
            result = assignment.option.performance[name]
            total += share * (result.ttft_ms + (by_name[name].output_tokens - 1) * result.tpot_ms)
    return total / max(len(classes), 1)
