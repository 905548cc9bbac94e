"""Predicted vs measured on the shipped validation set (catalogs/validation.csv), with error summaries.

Each row names a configuration in quantplan ids and a measured figure with its source. The same
estimators that plan deployments predict it; the error is (predicted - measured) / measured, except
for perplexity, where the target is absolute: within max(0.05 ppl, 25%) on the model's baseline.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace
from importlib import resources

import numpy as np
from pydantic import BaseModel, ConfigDict

from .candidates import Config
from .errors import QuantplanError
from .estimator import memory, quality
from .registry import World, load_world
from .scenario import TrafficClass
from .probes import Batch, Probe, probe, reduce
from .serving import Scheduling, Timing, behind_server, timing
from .shapes import parameter_counts
from .space import execution_of, fit_placement, objections

GROUPS = {
    "bits_per_weight": "memory", "weights_gb": "memory",
    "tpot_ms": "decode", "tokens_per_s_per_user": "decode", "decode_tokens_per_s": "decode",
    "output_tokens_per_s": "decode", "max_output_tokens_per_s": "decode", "speedup_vs_fp16": "decode",
    "ttft_ms": "ttft", "prefill_tokens_per_s": "ttft",
    "ppl_delta_pct": "quality",
}
TARGETS = {  # (median, p90) absolute relative error
    "memory": (0.03, None), "decode": (0.12, 0.30), "ttft": (0.20, 0.50),
}
LATENCY_TARGETS = {"tpot_ms": (0.10, 0.25), "ttft_ms": (0.20, 0.50)}  # rows under load (issue targets)
REGIMES = ("c=1", "c=2-16", "c=17-64", "c>64", "rate")
OFFLINE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class Row(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    source_row: str = ""
    model: str
    gpu: str
    gpus: int
    framework: str
    method: str
    kv_cache_dtype: str
    batch: int
    prompt_tokens: int
    output_tokens: int
    metric: str
    value: float
    unit: str
    mode: str
    source: str
    note: str = ""
    rate: float | None = None  # mode "rate": Poisson requests/s
    statistic: str = "mean"  # mean, p50, p90, p99 of the latency metric
    requests_per_client: float | None = None  # closed loop: the benchmark's requests per client
    warmup_requests: float | None = None
    engine_version: str = ""
    api_server: str = ""  # the server in front of the engine when not its own (e.g. "nim")
    expert_parallel: int = 1  # MoE: devices the routed experts were split over whole (the source's moe_ep)
    # why the row is kept but not scored (an engine build whose architecture quantplan does not model, a
    # table the source copied from another): reported among the unpredicted rows with this reason
    excluded: str = ""
    held_out: bool = False  # from one of HELD_OUT_FILES: validated, never fitted (set by load_rows, not a column)

    @property
    def under_load(self) -> bool:
        return self.mode in ("concurrency", "rate")

    @property
    def regime(self) -> str:
        """Load regime: c = 1, 2-16, 17-64, > 64, or rate; offline and single-stream rows by mode."""
        if self.mode == "rate":
            return "rate"
        if self.mode != "concurrency":
            return self.mode
        c = self.batch
        return "c=1" if c <= 1 else "c=2-16" if c <= 16 else "c=17-64" if c <= 64 else "c>64"


class Check(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    metric: str
    group: str
    framework: str
    gpu: str
    device_class: str
    method: str
    model: str
    batch: int
    gpus: int
    measured: float
    predicted: float | None
    error: float | None  # signed relative error; for quality the absolute ppl error over its allowance
    within: bool | None
    source: str
    reason: str = ""
    regime: str = ""
    moe: bool = False
    statistic: str = "mean"
    held_out: bool = False  # a row the fit never sees (HELD_OUT_FILES): summarised apart


VALIDATION_FILES = ("validation.csv", "validation_extra.csv", "validation_load.csv", "validation_load_public.csv",
                    "validation_new_devices.csv", "validation_load_held_out.csv")
# Rows validated out of sample, never fitted on (so `quantplan fit` still lands on the shipped catalog): devices
# added from datasheets after the engine efficiencies were fitted, and latency-under-load rows set aside as a test
# set the fit never sees (an older NIM's lockstep GenAI-Perf runs and GPUStack's bursts, all on A100).
HELD_OUT_FILES = ("validation_new_devices.csv", "validation_load_held_out.csv")


def load_rows(path: str | None = None, held_out: bool = True) -> list[Row]:
    """The validation rows: `path`, or the shipped files (without HELD_OUT_FILES when `held_out` is False)."""
    if path:
        return _read_rows(open(path, newline=""), path)
    rows = []
    for name in VALIDATION_FILES:
        if not held_out and name in HELD_OUT_FILES:
            continue
        resource = resources.files("quantplan.catalogs").joinpath(name)
        if resource.is_file():
            found = _read_rows(resource.open(newline=""), name)
            rows += [r.model_copy(update={"held_out": True}) for r in found] if name in HELD_OUT_FILES else found
    return rows


def _read_rows(handle, label: str) -> list[Row]:
    with handle:
        try:
            return [Row(**{k: v for k, v in row.items() if k in Row.model_fields and k != "held_out"
                           and v not in ("", None)})
                    for row in csv.DictReader(handle)]
        except Exception as error:
            raise QuantplanError(f"validation set {label}: {error}") from None


def validation_world() -> World:
    """The built-in world plus the devices only the validation rows use."""
    devices = resources.files("quantplan.catalogs").joinpath("validation_devices.toml")
    with resources.as_file(devices) as path:
        return load_world([path])


def _config(world: World, row: Row, batch: int | None = None) -> Config:
    model, method = world.models.get(row.model), world.methods.get(row.method)
    gpu, framework = world.gpus.get(row.gpu), world.frameworks.get(row.framework)
    kv = world.kv_caches.get(row.kv_cache_dtype)
    execution = execution_of(world, method, gpu, framework)
    if not execution.possible:
        raise ValueError(execution.reason)
    config = Config(model, method, gpu, framework, kv, row.gpus, execution, batch or max(row.batch, 1))
    if row.expert_parallel > 1:  # MoE layout as the source ran it
        if not model.is_moe or row.gpus % row.expert_parallel or model.num_experts % row.expert_parallel:
            raise ValueError(f"expert_parallel {row.expert_parallel} does not split {model.id}'s experts "
                             f"over {row.gpus} GPUs")
        config = replace(config, expert_parallel=row.expert_parallel)
    reasons = objections(world, config)
    if reasons:
        raise ValueError(reasons[0])
    return config


class Shared:
    """The plugins' answers that rows on one configuration share, asked once (`prepare` keeps one).

    Rows name ~300 configurations and lengths between them, ~1,600 rows. Kept: each configuration
    (by the row's ids and batch) or why it cannot run, its placement by context length (llama.cpp's
    offload, decided at batch 1), and its step model and scheduler by prompt and output lengths, which
    (as the candidate space, space._prepare, takes them) depend on neither the batch size nor the load.
    `share` False asks every time: the test holds the two to the same probes."""

    def __init__(self, world: World, share: bool = True) -> None:
        self.world, self.share = world, share
        self.configs: dict = {}
        self.placements: dict = {}
        self.timings: dict = {}
        self.traffics: dict = {}

    def config(self, row: Row, batch: int | None = None) -> Config:
        key = (row.model, row.method, row.gpu, row.framework, row.kv_cache_dtype, row.gpus, row.expert_parallel,
               batch or max(row.batch, 1))
        if not self.share or key not in self.configs:
            try:
                self.configs[key] = _config(self.world, row, batch)
            except ValueError as error:
                self.configs[key] = error
        found = self.configs[key]
        if isinstance(found, ValueError):
            raise found
        return found

    def placed(self, config: Config, traffic: TrafficClass) -> Config | None:
        key = (_identity(config), traffic.context_tokens)
        if not self.share or key not in self.placements:
            placed = fit_placement(self.world, config.with_batch(1), (traffic,))
            self.placements[key] = None if placed is None else placed.gpu_layer_fraction
        fraction = self.placements[key]
        if fraction is None:
            return None
        return config if fraction == config.gpu_layer_fraction else replace(config, gpu_layer_fraction=fraction)

    def traffic(self, row: Row, **load) -> TrafficClass:
        """The row's lengths at `load` (a frozen record: rows at the same lengths and load share one)."""
        key = (row.prompt_tokens, row.output_tokens, tuple(sorted(load.items())))
        if not self.share or key not in self.traffics:
            self.traffics[key] = _traffic(row, **load)
        return self.traffics[key]

    def timing(self, config: Config, traffic: TrafficClass) -> Timing:
        key = (_identity(config), traffic.prompt_tokens, traffic.output_tokens, traffic.context_tokens)
        if not self.share or key not in self.timings:
            self.timings[key] = timing(self.world, config, traffic)
        return self.timings[key]


def _identity(config: Config) -> tuple:
    """A configuration apart from its batch size (ids name specs uniquely within one world)."""
    return (config.model.id, config.method.id, config.gpu.id, config.framework.id, config.kv.id, config.gpus,
            config.execution, config.gpu_layer_fraction, config.expert_parallel)


def _traffic(row: Row, **load) -> TrafficClass:
    return TrafficClass(prompt_tokens=row.prompt_tokens, output_tokens=row.output_tokens, **load)


def speed_probes(world: World, row: Row, shared: Shared | None = None) -> tuple[list[Probe], str]:
    """The load-model evaluations behind a speed row and how they combine ("one", "max", "ratio").

    Rows under load use the row's concurrency or rate, its benchmark protocol (requests per client)
    and statistic, with the engine's default limits, behind its API server (the row's `api_server`, else
    the engine's own). Older rows come from
    engine benchmarks without a server (no per-request overhead): "lockstep" (static-batch tables,
    all requests at once) take one wave for TTFT and the steady state for throughput; "single" is one
    stream; "offline" the best throughput over batch sizes that fit. `shared`: the plugins' answers
    other rows asked for already (`prepare` keeps them).
    """
    shared = shared or Shared(world)
    config = shared.config(row)
    metric = row.metric
    if metric == "speedup_vs_fp16":
        base = shared.config(row.model_copy(update={"method": "fp16"}))
        pair = [_steady(shared, c, row, "output_tokens_per_s") for c in (config, base)]
        if None in pair:
            raise ValueError("does not fit")
        return pair, "ratio"
    if metric == "max_output_tokens_per_s":
        found = []
        for batch in OFFLINE_BATCHES:
            if batch > config.framework.max_batch:
                break
            one = _steady(shared, config.with_batch(batch), row, "output_tokens_per_s")
            if one is None:
                break
            found.append(one)
        if not found:
            raise ValueError("does not fit at batch 1")
        return found, "max"
    if row.under_load:
        traffic = shared.traffic(row, **({"rate_per_s": row.rate} if row.mode == "rate"
                                         else {"concurrency": max(row.batch, 1)}))
        placed = shared.placed(config, traffic)
        if placed is None:
            raise ValueError("does not fit")
        times = shared.timing(placed, traffic)
        server = api_server_of(row)
        times = replace(times, scheduling=behind_server(benchmark_limits(row, times.scheduling), placed.framework,
                                                        server))
        kind = "rate" if row.mode == "rate" else "closed"
        load = row.rate if kind == "rate" else float(max(row.batch, 1))
        return [probe(times, placed, row.prompt_tokens, row.output_tokens, kind, load, metric,
                      row.requests_per_client or 10.0, row.statistic, server=server)], "one"
    one = _steady(shared, config, row, metric, waves=1.0 if metric == "ttft_ms" and row.mode == "lockstep" else 0.0)
    if one is None:
        raise ValueError("does not fit")
    return [one], "one"


AICONFIGURATOR = "ai-dynamo/aiconfigurator"
VLLM_060_BENCHMARK = "sgl-project/sglang benchmark/benchmark_vllm_060"
LAMBDA_VLLM_BENCHMARK = "LambdaLabsML/vllm-benchmark"
CRUSOE_VLLM_L40S = "crusoecloud/crusoe-cookbook content/vllm-l40s-fp8"


def api_server_of(row: Row) -> str:
    """The API server a row's requests went through: the row's `api_server`, else, for AIConfigurator's
    rows, NVIDIA Dynamo's frontend (its generator's run.sh templates, ai-dynamo/aiconfigurator
    backend_templates/{trtllm,vllm,sglang}/run.sh.j2, start `python3 -m dynamo.frontend` in front of
    `python3 -m dynamo.trtllm` / `dynamo.vllm` / `dynamo.sglang` workers, so aiperf's requests never reach
    the engines' own servers), else the engine's own ("")."""
    if row.api_server:
        return row.api_server
    return "dynamo" if row.source.startswith(AICONFIGURATOR) else ""


def benchmark_limits(row: Row, sched: Scheduling) -> Scheduling:
    """The engine limits a benchmark set, where its protocol sets them (else the engine's defaults).

    AIConfigurator's benchmark generator (aic-core rule_plugin/benchmark/{trtllm,vllm,sglang}.rule)
    starts one aggregated worker per run with max_batch_size = the concurrency it then benchmarks
    (BenchConfig.estimated_concurrency = workers x max_batch_size) and a token budget of
    max_batch_size + ISL + 1500 (TensorRT-LLM and vLLM max_num_tokens, rounded up to TensorRT-LLM's
    32-token KV block; SGLang max_prefill_tokens = ISL + 1500). TensorRT-LLM keeps its template's
    enable_chunked_prefill = false.

    SGLang's benchmark_vllm_060 README starts vLLM 0.6.0 with `--num-scheduler-steps 10
    --max_model_len 4096`: multi-step scheduling runs 10 decode steps per scheduler call, and 0.6.0
    refuses chunked prefill with it ("Chunked prefill is not supported with multi-step", vllm-project/vllm
    issue #8274), so its V0 scheduler runs waiting prompts as prefill steps before the running decodes
    (vllm/core/scheduler.py _schedule_default) with a token budget of max(max_model_len, 2048) = 4096
    (SchedulerConfig, as quoted in vllm-project/vllm PR #8378) and 256 sequences. LambdaLabs'
    vllm-benchmark runs vLLM 0.5.4 with --max-model-len 2048 and max-num-seqs 256 (its benchmark.sh):
    chunked prefill was on by default only past 32K tokens of context, so the same V0 scheduler with a
    budget of max(2048, 2048) tokens. Crusoe's L40S cookbook runs vLLM 0.5.5 with --enable-chunked-prefill and no
    --max-num-batched-tokens: the V0 scheduler then chunks prompts, decodes first, in a budget of 512 tokens
    (0.5.x SchedulerConfig's default with chunked prefill, as the rows' notes quote it). SGLang builds before 0.4
    hand each first token out at once: the overlap scheduler that delays it by a step became the default in
    sgl-project/sglang PR #2067."""
    if row.source.startswith(VLLM_060_BENCHMARK) and row.framework == "vllm":
        return replace(sched, policy="prefill-first", chunked=False, token_budget=4096,
                       max_sequences=min(256, sched.max_sequences), scheduler_steps=10)
    if row.source.startswith(LAMBDA_VLLM_BENCHMARK):  # vLLM 0.5.4, --max-model-len 2048, no chunked prefill
        return replace(sched, policy="prefill-first", chunked=False, token_budget=2048,
                       max_sequences=min(256, sched.max_sequences))
    if row.source.startswith(CRUSOE_VLLM_L40S) and row.framework == "vllm":  # vLLM 0.5.5, chunked prefill on
        return replace(sched, policy="mixed", chunked=True, token_budget=512,
                       max_sequences=min(256, sched.max_sequences))
    if row.framework == "sglang" and row.engine_version.startswith(("0.1", "0.2", "0.3")):
        return replace(sched, first_token_steps=0.0)  # before the overlap scheduler (PR #2067, v0.4)
    if not row.source.startswith(AICONFIGURATOR) or row.mode != "concurrency":
        return sched
    clients = max(row.batch, 1)
    if row.framework == "sglang":
        budget = row.prompt_tokens + 1500
    else:
        budget = clients + row.prompt_tokens + 1500
        if row.framework == "tensorrt-llm":
            budget = -(-budget // 32) * 32
    return replace(sched, max_sequences=min(clients, sched.max_sequences), token_budget=budget)


def _steady(shared: Shared, config: Config, row: Row, metric: str, waves: float = 0.0) -> Probe | None:
    """A closed loop of `config.batch` clients, each sequence running (the batch fits in memory)."""
    traffic = shared.traffic(row, concurrency=config.batch)
    placed = shared.placed(config, traffic)
    if placed is None or not memory(shared.world, placed, traffic.context_tokens).fits:
        return None
    return probe(shared.timing(placed, traffic), placed, row.prompt_tokens, row.output_tokens, "closed",
                 float(config.batch), metric, waves, row.statistic, running=config.batch, served=False)


def predict(world: World, row: Row) -> float:
    """quantplan's figure for `row`'s metric, in the row's unit."""
    config = _config(world, row)
    metric = row.metric
    if metric in ("bits_per_weight", "weights_gb"):
        total = memory(world, replace(config, gpus=1), 1).weights_per_gpu  # all weights on one device
        if metric == "weights_gb":
            return total / 1e9
        return total * 8 / parameter_counts(config.model).total
    if metric == "ppl_delta_pct":
        return _ppl_delta_pct(world, config, row)
    probes, rule = speed_probes(world, row)
    return float(reduce(Batch(probes).evaluate(), [list(range(len(probes)))], [rule])[0])


def _ppl_delta_pct(world: World, config: Config, row: Row) -> float:
    """The relative ppl increase under the row's protocol: rows measured at 2048+ tokens of context
    (papers) take quality model v2's long-context offset; llama.cpp's 512 is the planning protocol."""
    assessed = quality(world, config)
    case = world.quality.case_for(config)
    if case is None or row.prompt_tokens < 2048:
        return assessed.ppl_delta_pct
    weights = math.exp(world.quality.model.log_relative(case))
    at_length = math.exp(world.quality.model.log_relative(replace(case, long_context=True)))
    return (assessed.relative - weights + at_length) * 100.0


def _check(world: World, row: Row, predicted: float | None, reason: str = "") -> Check:
    group = GROUPS.get(row.metric, "other")
    model = world.models.get(row.model)
    base = dict(id=row.id, metric=row.metric, group=group, framework=row.framework, gpu=row.gpu,
                method=row.method, model=row.model, batch=row.batch, gpus=row.gpus, measured=row.value,
                source=row.source, regime=row.regime, moe=model.is_moe, statistic=row.statistic,
                held_out=row.held_out)
    if predicted is None or not np.isfinite(predicted):
        return Check(**base, device_class="", predicted=None, error=None, within=None,
                     reason=reason or "the load cannot be carried (queue grows without bound)")
    device_class = world.gpus.get(row.gpu).device_class
    if group == "quality":
        baseline = model.wikitext2_ppl
        allowance = max(0.05, 0.25 * row.value / 100 * baseline)
        absolute = (predicted - row.value) / 100 * baseline
        return Check(**base, device_class=device_class, predicted=predicted, error=absolute / allowance,
                     within=abs(absolute) <= allowance)
    error = (predicted - row.value) / row.value
    return Check(**base, device_class=device_class, predicted=predicted, error=error, within=None)


def check(world: World, row: Row) -> Check:
    try:
        return _check(world, row, float(predict(world, row)))
    except (ValueError, QuantplanError) as error:
        return _check(world, row, None, str(error))


@dataclass
class Prepared:
    """Validation rows with their speed probes built (plugins called once), ready to evaluate."""

    world: World
    rows: list[Row]
    batch: Batch
    members: list[list[int]]  # per row: its probes' indices (empty: not a speed row or not predictable)
    rules: list[str]
    fixed: dict[int, tuple[float | None, str]]  # row index -> (prediction, reason) outside the probes

    def checks(self, values: np.ndarray | None = None) -> list[Check]:
        values = self.batch.evaluate() if values is None else values
        reduced = reduce(values, self.members, self.rules)
        found = []
        for index, row in enumerate(self.rows):
            if index in self.fixed:
                predicted, reason = self.fixed[index]
                found.append(_check(self.world, row, predicted, reason))
            else:
                found.append(_check(self.world, row, float(reduced[index])))
        return found


def prepare(world: World, rows: list[Row], shared: Shared | None = None) -> Prepared:
    """Every row's probes (or its figure, or why it has none), the plugins asked once per configuration."""
    shared = shared or Shared(world)
    probes: list[Probe] = []
    members, rules, fixed = [], [], {}
    for index, row in enumerate(rows):
        members.append([])
        rules.append("one")
        if row.excluded:
            fixed[index] = (None, f"excluded: {row.excluded}")
            continue
        try:
            if GROUPS.get(row.metric) in ("decode", "ttft"):
                found, rule = speed_probes(world, row, shared)
                members[-1] = list(range(len(probes), len(probes) + len(found)))
                rules[-1] = rule
                probes += found
            else:
                fixed[index] = (float(predict(world, row)), "")
        except (ValueError, QuantplanError) as error:
            fixed[index] = (None, str(error))
    return Prepared(world, rows, Batch(probes), members, rules, fixed)


def select(rows: list[Row], where: dict[str, str] | None) -> list[Row]:
    for key, value in (where or {}).items():
        if key not in Row.model_fields:
            raise QuantplanError(f"--filter {key}: not a column (columns: {', '.join(Row.model_fields)})")
        rows = [r for r in rows if str(getattr(r, key)) == value or (key == "gpu" and value in r.gpu)]
    return rows


def run(world: World | None = None, rows: list[Row] | None = None, where: dict[str, str] | None = None) -> list[Check]:
    world = world or validation_world()
    rows = select(load_rows() if rows is None else rows, where)
    return prepare(world, rows).checks()


def _stats(errors: list[float]) -> dict:
    values = np.abs(np.array(errors))
    return {"rows": len(values), "median_ape": float(np.median(values)), "p90_ape": float(np.percentile(values, 90)),
            "max_ape": float(values.max())}


def summary(checks: list[Check]) -> dict:
    """Median and 90th-percentile absolute error per metric group, framework, device and device class,
    and for latency under load (TTFT, TPOT) by load regime, dense and MoE models apart, and the held-out rows
    (never fitted on) apart from both."""
    scored = [c for c in checks if c.error is not None and c.group in TARGETS]
    out: dict = {"by_group": {}, "by_framework": {}, "by_device": {}, "by_device_class": {}, "under_load": {},
                 "under_load_moe": {}, "under_load_held_out": {}, "quality": {}, "unpredicted": []}
    for key, name in (("group", "by_group"), ("framework", "by_framework"), ("gpu", "by_device"),
                      ("device_class", "by_device_class")):
        for value in sorted({getattr(c, key) for c in scored}):
            errors = [c.error for c in scored if getattr(c, key) == value]
            out[name][value] = _stats(errors)
    for group, (median, p90) in TARGETS.items():
        if group in out["by_group"]:
            stats = out["by_group"][group]
            stats["target_median"], stats["target_p90"] = median, p90
            stats["meets"] = stats["median_ape"] <= median and (p90 is None or stats["p90_ape"] <= p90)
    for moe, name in ((False, "under_load"), (True, "under_load_moe")):
        out[name] = latency_table([c for c in scored if c.moe == moe and not c.held_out])
    # the rows the fit never saw (HELD_OUT_FILES): an out-of-sample test set, reported apart from the rows fitted on
    out["under_load_held_out"] = latency_table([c for c in scored if c.held_out])
    quality_rows = [c for c in checks if c.group == "quality" and c.within is not None]
    if quality_rows:
        out["quality"] = {"rows": len(quality_rows), "within": sum(c.within for c in quality_rows),
                          "misses": [c.id for c in quality_rows if not c.within]}
    out["unpredicted"] = [{"id": c.id, "reason": c.reason} for c in checks if c.predicted is None]
    out["worst"] = [{"id": c.id, "metric": c.metric, "framework": c.framework, "gpu": c.gpu, "error": c.error}
                    for c in sorted(scored, key=lambda c: -abs(c.error))[:8]]
    return out


def quality_table() -> dict:
    """Quality model v2 out of sample: fitted without each source in turn, errors on the rows of the
    source left out, per metric (ppl, KL, recovery) overall, by family, by method and by task kind.
    Its ~1,800 small SVDs run on one BLAS thread: OpenBLAS's threads make them a hundred times slower
    on a busy two-core machine (as in `quantplan fit`)."""
    from threadpoolctl import threadpool_limits

    from . import quality_data, quality_fit

    points, _ = quality_data.load()
    with threadpool_limits(1, user_api="blas"):
        return quality_fit.table(quality_fit.out_of_sample(points))


def latency_table(checks: list[Check]) -> dict:
    """TTFT and TPOT errors of rows under load: all, by regime and by engine, against the targets
    (a regime may be at most twice the target)."""
    table: dict = {}
    for metric, (median, p90) in LATENCY_TARGETS.items():
        rows = [c for c in checks if c.metric == metric and c.regime in REGIMES]
        if not rows:
            continue
        entry = {"all": _stats([c.error for c in rows]), "by_regime": {}, "by_framework": {}}
        entry["all"].update(target_median=median, target_p90=p90,
                            meets=entry["all"]["median_ape"] <= median and entry["all"]["p90_ape"] <= p90)
        for regime in REGIMES:
            found = [c.error for c in rows if c.regime == regime]
            if found:
                stats = _stats(found)
                stats["within_twice_target"] = stats["median_ape"] <= 2 * median and stats["p90_ape"] <= 2 * p90
                entry["by_regime"][regime] = stats
        for framework in sorted({c.framework for c in rows}):
            entry["by_framework"][framework] = _stats([c.error for c in rows if c.framework == framework])
        table[metric] = entry
    return table


# ---------------------------------------------------------------------------------------------
# the scheduler simulation against the measurements (`quantplan validate --simulate`)


def simulated(world: World, rows: list[Row], progress=None) -> dict[str, float]:
    """The scheduler simulation's figure (solver/simulate.py) for each TTFT and TPOT row under load, by row id:
    the row's own step model, scheduler, API-server overhead and load (its clients and requests per client, all
    starting together, or Poisson arrivals at its rate), read at the row's statistic (`itl_p50`, the median gap
    over every token, as the median TPOT). Rows the load models cannot carry, or whose configuration does not
    fit, are left out. Runs with the same inputs (the TTFT and TPOT rows of one benchmark run) are simulated
    once. `progress(done, total)` after each row."""
    from .simulate import simulate

    shared = Shared(world)
    chosen = [r for r in rows if r.under_load and r.metric in ("ttft_ms", "tpot_ms")]
    runs: dict[str, dict] = {}
    found: dict[str, float] = {}
    for done, row in enumerate(chosen, start=1):
        try:
            (one,), _ = speed_probes(world, row, shared)
        except (ValueError, QuantplanError):
            one = None
        if one is not None:
            key = repr((one.steps, one.scheduling, one.prompt, one.output, one.kind, one.load, one.requests_per_client))
            if key not in runs:
                timing = Timing(one.steps, one.scheduling)
                if one.kind == "rate":
                    traffic = TrafficClass(prompt_tokens=one.prompt, output_tokens=one.output, rate_per_s=one.load)
                    runs[key] = simulate(timing, traffic, rate=one.load).as_dict()
                else:
                    traffic = TrafficClass(prompt_tokens=one.prompt, output_tokens=one.output,
                                           concurrency=int(one.load), requests_per_client=one.requests_per_client)
                    runs[key] = simulate(timing, traffic, clients=int(one.load)).as_dict()
            which = "ttft" if row.metric == "ttft_ms" else "tpot"
            statistic = "p50" if row.statistic == "itl_p50" else row.statistic
            figure = runs[key][f"{which}_ms" if statistic == "mean" else f"{which}_{statistic}_ms"]
            if np.isfinite(figure) and figure > 0:
                found[row.id] = float(figure)
        if progress:
            progress(done, len(chosen))
    return found


def simulation_table(checks: list[Check], figures: dict[str, float]) -> dict:
    """The closed forms' errors and the simulation's, on the same rows (those both predict), for TTFT and TPOT:
    all, by load regime and by engine; fitted and held-out rows apart."""
    table: dict = {}
    for held_out, name in ((False, "fitted"), (True, "held_out")):
        for metric in ("ttft_ms", "tpot_ms"):
            rows = [c for c in checks if c.metric == metric and c.held_out == held_out and c.error is not None
                    and c.regime in REGIMES and c.id in figures]
            if not rows:
                continue

            def pair(group: list[Check]) -> dict:
                return {"closed_form": _stats([c.error for c in group]),
                        "simulation": _stats([figures[c.id] / c.measured - 1 for c in group])}

            entry = {"all": pair(rows), "by_regime": {}, "by_framework": {}}
            for regime in REGIMES:
                group = [c for c in rows if c.regime == regime]
                if group:
                    entry["by_regime"][regime] = pair(group)
            for framework in sorted({c.framework for c in rows}):
                entry["by_framework"][framework] = pair([c for c in rows if c.framework == framework])
            table.setdefault(name, {})[metric] = entry
    return table
