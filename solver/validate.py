"""Predicted vs measured on the shipped validation set (catalogs/validation.csv), with error summaries.

Each row names a configuration in quantplan ids and a measured figure with its source. The same
estimators that plan deployments predict it; the error is (predicted - measured) / measured, except
for perplexity, where the target is absolute: within max(0.05 ppl, 25%) on the model's baseline.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from importlib import resources

import numpy as np
from pydantic import BaseModel, ConfigDict

from .candidates import Config
from .errors import QuantplanError
from .estimator import memory, quality
from .registry import World, load_world
from .scenario import TrafficClass
from .serving import performance, timing
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


VALIDATION_FILES = ("validation.csv", "validation_extra.csv", "validation_load.csv", "validation_load_public.csv")


def load_rows(path: str | None = None) -> list[Row]:
    """The validation rows: `path`, or the shipped files (validation.csv, then validation_extra.csv)."""
    if path:
        return _read_rows(open(path, newline=""), path)
    rows = []
    for name in VALIDATION_FILES:
        resource = resources.files("quantplan.catalogs").joinpath(name)
        if resource.is_file():
            rows += _read_rows(resource.open(newline=""), name)
    return rows


def _read_rows(handle, label: str) -> list[Row]:
    with handle:
        try:
            return [Row(**{k: v for k, v in row.items() if k in Row.model_fields and v not in ("", None)})
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
    reasons = objections(world, config)
    if reasons:
        raise ValueError(reasons[0])
    return config


def _under_load(world: World, config: Config, row: Row):
    """The load models at the row's concurrency or rate, with the benchmark's protocol and statistic."""
    load = {"rate_per_s": row.rate} if row.mode == "rate" else {"concurrency": max(row.batch, 1)}
    traffic = TrafficClass(prompt_tokens=row.prompt_tokens, output_tokens=row.output_tokens,
                           requests_per_client=row.requests_per_client or 10.0, **load)
    placed = fit_placement(world, config.with_batch(1), (traffic,))
    if placed is None:
        return None
    config = replace(config, gpu_layer_fraction=placed.gpu_layer_fraction)
    times = timing(world, config, traffic)
    running = times.scheduling.max_sequences if row.mode == "rate" else min(row.batch, times.scheduling.max_sequences)
    return performance(config.with_batch(max(running, 1)), traffic, times, rate=row.rate, engine_limit=True)


def _serving(world: World, config: Config, row: Row):
    if row.under_load:
        return _under_load(world, config, row)
    traffic = TrafficClass(prompt_tokens=row.prompt_tokens, output_tokens=row.output_tokens,
                           concurrency=config.batch, requests_per_client=0)
    placed = fit_placement(world, config.with_batch(1), (traffic,))
    if placed is None:
        return None
    config = replace(config, gpu_layer_fraction=placed.gpu_layer_fraction)
    if not memory(world, config, traffic.context_tokens).fits:
        return None
    return performance(config, traffic, timing(world, config, traffic))


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
        return quality(world, config).ppl_delta_pct
    if metric == "max_output_tokens_per_s":
        best = 0.0
        for batch in OFFLINE_BATCHES:
            if batch > config.framework.max_batch:
                break
            result = _serving(world, config.with_batch(batch), row)
            if result is None:
                break
            best = max(best, result.output_tokens_per_s)
        if best == 0:
            raise ValueError("does not fit at batch 1")
        return best
    if metric == "speedup_vs_fp16":
        base = _serving(world, _config(world, row.model_copy(update={"method": "fp16"})), row)
        quantized = _serving(world, config, row)
        if base is None or quantized is None:
            raise ValueError("does not fit")
        return quantized.output_tokens_per_s / base.output_tokens_per_s
    result = _serving(world, config, row)
    if result is None:
        raise ValueError("does not fit")
    if row.statistic != "mean" and metric in ("ttft_ms", "tpot_ms"):
        return (result.ttft_at if metric == "ttft_ms" else result.tpot_at)(row.statistic)
    return {
        "tpot_ms": result.tpot_ms, "tokens_per_s_per_user": result.tokens_per_s_per_user,
        "decode_tokens_per_s": result.decode_tokens_per_s, "output_tokens_per_s": result.output_tokens_per_s,
        "ttft_ms": result.ttft_ms, "prefill_tokens_per_s": result.prefill_tokens_per_s,
    }[metric]


def check(world: World, row: Row) -> Check:
    group = GROUPS.get(row.metric, "other")
    base = dict(id=row.id, metric=row.metric, group=group, framework=row.framework, gpu=row.gpu,
                method=row.method, model=row.model, batch=row.batch, gpus=row.gpus, measured=row.value,
                source=row.source)
    try:
        device_class = world.gpus.get(row.gpu).device_class
        predicted = float(predict(world, row))
    except (ValueError, QuantplanError) as error:
        return Check(**base, device_class="", predicted=None, error=None, within=None, reason=str(error))
    if group == "quality":
        baseline = world.models.get(row.model).wikitext2_ppl
        allowance = max(0.05, 0.25 * row.value / 100 * baseline)
        absolute = (predicted - row.value) / 100 * baseline
        return Check(**base, device_class=device_class, predicted=predicted, error=absolute / allowance,
                     within=abs(absolute) <= allowance)
    error = (predicted - row.value) / row.value
    return Check(**base, device_class=device_class, predicted=predicted, error=error, within=None)


def run(world: World | None = None, rows: list[Row] | None = None, where: dict[str, str] | None = None) -> list[Check]:
    world = world or validation_world()
    rows = load_rows() if rows is None else rows
    for key, value in (where or {}).items():
        if key not in Row.model_fields:
            raise QuantplanError(f"--filter {key}: not a column (columns: {', '.join(Row.model_fields)})")
        rows = [r for r in rows if str(getattr(r, key)) == value or (key == "gpu" and value in r.gpu)]
    return [check(world, row) for row in rows]


def _stats(errors: list[float]) -> dict:
    values = np.abs(np.array(errors))
    return {"rows": len(values), "median_ape": float(np.median(values)), "p90_ape": float(np.percentile(values, 90)),
            "max_ape": float(values.max())}


def summary(checks: list[Check]) -> dict:
    """Median and 90th-percentile absolute error per metric group, framework and device class."""
    scored = [c for c in checks if c.error is not None and c.group in TARGETS]
    out: dict = {"by_group": {}, "by_framework": {}, "by_device_class": {}, "quality": {}, "unpredicted": []}
    for key, name in (("group", "by_group"), ("framework", "by_framework"), ("device_class", "by_device_class")):
        for value in sorted({getattr(c, key) for c in scored}):
            errors = [c.error for c in scored if getattr(c, key) == value]
            out[name][value] = _stats(errors)
    for group, (median, p90) in TARGETS.items():
        if group in out["by_group"]:
            stats = out["by_group"][group]
            stats["target_median"], stats["target_p90"] = median, p90
            stats["meets"] = stats["median_ape"] <= median and (p90 is None or stats["p90_ape"] <= p90)
    quality_rows = [c for c in checks if c.group == "quality" and c.within is not None]
    if quality_rows:
        out["quality"] = {"rows": len(quality_rows), "within": sum(c.within for c in quality_rows),
                          "misses": [c.id for c in quality_rows if not c.within]}
    out["unpredicted"] = [{"id": c.id, "reason": c.reason} for c in checks if c.predicted is None]
    out["worst"] = [{"id": c.id, "metric": c.metric, "framework": c.framework, "gpu": c.gpu, "error": c.error}
                    for c in sorted(scored, key=lambda c: -abs(c.error))[:8]]
    return out
