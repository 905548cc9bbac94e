"""Calibrate a device, framework and method from the user's own benchmark runs (`quantplan calibrate`).

Each measured figure (solver/results.py reads the tools' files) is matched to a configuration, given
on the command line or taken from a plan's replica groups, and becomes a validation-style row; the
project's fit (solver/fit.py: scipy least_squares, soft-L1, over the rows' load-model probes) then
fits that configuration's efficiencies. Only the figures the data can inform are fitted:

- bandwidth share: any decode figure (TPOT, tokens/s);
- per-step overhead: decode figures at two or more step sizes (loads or contexts), which is what
  tells a fixed cost per step from a share of bandwidth;
- prefill share: llama-bench prompt tests, or TTFT at two or more prompt lengths, or TTFT at one
  prompt length when the catalog's per-request overhead is the smaller part of it;
- per-request overhead: served TTFT at two or more prompt lengths (or with prompt tests beside it),
  or at one prompt length when the catalog's overhead is most of the measured TTFT.

The others keep their catalog values. The fit uses means (a median where a run gives no mean); the
other statistics are reported before and after, not fitted. Several starts guard against the kinks of
the load models (chunk sizes, admission), where one start can stall.
The result is an overlay catalog: the user's `--catalog` files' rows (a new device's datasheet) plus one
`[[calibration]]` row per device, framework and method (plugins/builtin/calibration.py applies it), so
`--catalog overlay.toml` alone reproduces the measurements.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import fit as fitting
from .errors import QuantplanError
from .overlay import overlay_text
from .registry import World
from .results import Measurement, Results
from .validate import GROUPS, Row

START_FACTORS = (1.0, 0.7, 1.4)  # fit starts: the catalog values times these (within the bounds)
BOUNDS = {"bandwidth_efficiency": (0.05, 1.2), "prefill_efficiency": (0.02, 1.0),
          "step_overhead_ms": (0.0, 100.0), "request_overhead_ms": (0.0, 5000.0)}
UNITS = {"ttft_ms": "ms", "tpot_ms": "ms/token", "output_tokens_per_s": "tokens/s",
         "tokens_per_s_per_user": "tokens/s", "prefill_tokens_per_s": "tokens/s"}


@dataclass(frozen=True)
class Target:
    """A configuration measurements can belong to."""

    model: str
    method: str
    gpu: str
    framework: str
    gpus: int
    kv_cache_dtype: str
    label: str = ""

    @property
    def scope(self) -> tuple[str, str, str]:
        return (self.gpu, self.framework, self.method)


@dataclass(frozen=True)
class ScopedParameter(fitting.Parameter):
    """A framework efficiency on one device for one method: starts at `current`, touches only that scope."""

    gpu: str = ""
    method: str = ""
    current: float = 0.0

    def read(self, world: World) -> float:
        return self.current

    def effect(self, probe) -> tuple[str, float] | None:
        config = probe.config
        if (config.gpu.id, config.framework.id, config.method.id) != (self.gpu, self.id, self.method):
            return None
        if self.field == "bandwidth_efficiency":
            return "bandwidth", 1.0
        if self.field == "prefill_efficiency":
            return "prefill_peak", 1.0
        if self.field == "step_overhead_ms":
            return "overhead", 1e-3
        return ("request", 1e-3) if probe.served else None


@dataclass
class Calibration:
    """What `calibrate` found: fitted values per scope, errors before and after, the overlay text."""

    scopes: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    overlay: str = ""


def _kv_default(world: World, method: str, gpu: str, framework: str) -> str:
    f, m, g = world.frameworks.get(framework), world.methods.get(method), world.gpus.get(gpu)
    kv = f.kv_cache_default.get(m.id, f.kv_cache_default.get("*", "fp16"))
    return "fp16" if kv == "bf16" and g.kind == "gpu" and g.tflops_bf16 <= 0 else kv


def target_from_options(world: World, model: str, method: str, gpu: str, framework: str, gpus: int,
                        kv_cache_dtype: str | None) -> Target:
    if gpus <= 0:
        raise QuantplanError(f"--gpus {gpus}: must be positive")
    m, g, f = world.methods.get(method).id, world.gpus.get(gpu).id, world.frameworks.get(framework).id
    kv = world.kv_caches.get(kv_cache_dtype).id if kv_cache_dtype else _kv_default(world, m, g, f)
    return Target(world.models.get(model).id, m, g, f, gpus, kv, "command line")


def targets_from_plan(world: World, path: str) -> list[Target]:
    """One target per replica group of a `quantplan solve --json` output."""
    try:
        plan = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise QuantplanError(f"--plan {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise QuantplanError(f"--plan {path}: not a quantplan solve --json output ({error})") from None
    groups = plan.get("replicas") if isinstance(plan, dict) else None
    if not isinstance(groups, list) or not groups:
        raise QuantplanError(f"--plan {path}: field 'replicas' is missing or empty (a quantplan solve --json output)")
    found = []
    for index, group in enumerate(groups):
        try:
            model = group.get("model") or plan["model"]
            found.append(Target(world.models.get(model).id, world.methods.get(group["method"]).id,
                                world.gpus.get(group["gpu"]).id, world.frameworks.get(group["framework"]).id,
                                int(group["gpus_per_replica"]), world.kv_caches.get(group["kv_cache_dtype"]).id,
                                f"replica group {index + 1}"))
        except (KeyError, TypeError, AttributeError) as error:
            raise QuantplanError(f"--plan {path}: replicas[{index}]: field {error} is missing") from None
    return found


def match(world: World, measurement: Measurement, targets: list[Target]) -> Target:
    """The target a measurement belongs to: by the model the file names and the GPU count it records
    (its KV-cache precision, when recorded, replaces the target's); an error when none or several
    different ones remain."""
    candidates = list(targets)
    named = _model_named(world, measurement.model)
    if named:
        candidates = [t for t in candidates if t.model == named]
        if not candidates:
            raise QuantplanError(f"{measurement.label}: the result is for model {named!r}, which no configuration "
                                 f"given runs ({', '.join(sorted({t.model for t in targets}))})")
    if measurement.gpus:
        kept = [t for t in candidates if t.gpus == measurement.gpus]
        if not kept:
            raise QuantplanError(f"{measurement.label}: the run used {measurement.gpus} GPUs (world_info.tp_size); "
                                 f"no configuration given has {measurement.gpus}")
        candidates = kept
    if len({(t.scope, t.model, t.gpus, t.kv_cache_dtype) for t in candidates}) > 1:
        raise QuantplanError(f"{measurement.label}: matches several configurations ("
                             + "; ".join(f"{t.label}: {t.model} {t.method} on {t.gpus}x {t.gpu} {t.framework}"
                                         for t in candidates) + "): calibrate one with --model/--gpu/... instead")
    target = candidates[0]
    if measurement.kv_cache_dtype and measurement.kv_cache_dtype != target.kv_cache_dtype \
            and measurement.kv_cache_dtype in world.kv_caches:
        target = Target(target.model, target.method, target.gpu, target.framework, target.gpus,
                        measurement.kv_cache_dtype, target.label)
    return target


def _model_named(world: World, name: str) -> str | None:
    """The catalog model a result file names (a Hugging Face id or its last part), None if unknown."""
    for candidate in (name, name.rsplit("/", 1)[-1]):
        if candidate and candidate in world.models:
            return world.models.get(candidate).id
    return None


def rows_of(measurement: Measurement, target: Target, index: int) -> list[Row]:
    """The measurement's figures as validation rows of the target configuration."""
    base = dict(model=target.model, gpu=target.gpu, gpus=target.gpus, framework=target.framework,
                method=target.method, kv_cache_dtype=target.kv_cache_dtype,
                prompt_tokens=measurement.prompt_tokens, output_tokens=measurement.output_tokens,
                mode=measurement.mode, source=f"{measurement.label} ({measurement.tool})")
    if measurement.mode == "rate":
        base.update(batch=1, rate=measurement.load)
    else:
        base.update(batch=max(int(round(measurement.load)), 1), requests_per_client=measurement.requests_per_client)
    return [Row(id=f"m{index}:{metric}:{statistic}", metric=metric, statistic=statistic, value=value,
                unit=UNITS.get(metric, ""), **base)
            for metric, statistic, value in measurement.figures]


def _distinct(rows: list[Row], key) -> int:
    return len({key(r) for r in rows})


def choose(rows: list[Row], current: dict[str, float]) -> list[str]:
    """The figures these rows can inform (see the module docstring)."""
    decode = [r for r in rows if GROUPS.get(r.metric) == "decode"]
    prompts = [r for r in rows if r.metric == "prefill_tokens_per_s"]
    served = [r for r in rows if r.metric == "ttft_ms" and r.mode in ("concurrency", "rate")]
    chosen = []
    if decode:
        chosen.append("bandwidth_efficiency")
        if _distinct(decode, lambda r: (r.batch, r.rate, r.prompt_tokens + r.output_tokens / 2)) >= 2:
            chosen.append("step_overhead_ms")
    lengths = _distinct(served, lambda r: r.prompt_tokens)
    if prompts or lengths >= 2:
        chosen.append("prefill_efficiency")
        if served:
            chosen.append("request_overhead_ms")
    elif served:
        measured = float(np.median([r.value for r in served]))
        chosen.append("request_overhead_ms" if current["request_overhead_ms"] >= 0.5 * measured
                      else "prefill_efficiency")
    return chosen


def _parameters(scope: tuple[str, str, str], names: list[str], base: dict) -> list[ScopedParameter]:
    gpu, framework, method = scope
    found = []
    for name in names:
        low, high = BOUNDS[name]
        start = min(max(base[name], low), high)
        found.append(ScopedParameter("framework", framework, name, low, high, start, gpu=gpu, method=method,
                                     current=base[name]))
    return found


def current_values(world: World, scope: tuple[str, str, str]) -> dict[str, float]:
    """The four figures as the loaded catalogs give them for `scope` (a calibration row wins)."""
    from quantplan.plugins.builtin.calibration import CalibrationPlugin, catalog_values

    gpu, framework, method = scope
    values = catalog_values(world.frameworks.get(framework), world.gpus.get(gpu))
    for _, plugin in world.plugins.manager.list_name_plugin():
        if isinstance(plugin, CalibrationPlugin) and scope in plugin.rows:
            row = plugin.rows[scope]
            values.update({k: getattr(row, k) for k in values if getattr(row, k) is not None})
    return values


def calibrate(world: World, results: Results, targets: list[Target], catalogs=()) -> Calibration:
    """Match every measurement to a target, fit each device/framework/method, and build the overlay."""
    found = Calibration(skipped=[{"record": s.label, "reason": s.reason} for s in results.skipped])
    fits = [_fit_scope(world, scope, rows) for scope, rows in sorted(_rows_by_scope(world, results, targets,
                                                                                    found.skipped).items())]
    rows = [row for one in fits for row in one.rows]
    before = np.concatenate([one.before for one in fits])
    after = np.concatenate([one.after for one in fits])
    fitted_ids = {row.id for one in fits for row in one.fitted_rows}
    found.scopes = [one.summary() for one in fits]
    found.errors = error_table(rows, before, after, fitted_ids)
    found.rows = [{"record": r.source, "metric": r.metric, "statistic": r.statistic, "measured": r.value,
                   "before": float(b), "after": float(a), "fitted": r.id in fitted_ids}
                  for r, b, a in zip(rows, before, after)]
    found.overlay = overlay_text(found, catalogs)
    return found


def _rows_by_scope(world: World, results: Results, targets: list[Target], skipped: list[dict]) -> dict:
    """Validation rows per (device, framework, method); partial-offload llama-bench runs are skipped."""
    if not results.measurements:
        raise QuantplanError("no measurements in the result files" + (
            f" ({len(results.skipped)} skipped: {results.skipped[0].reason})" if results.skipped else ""))
    by_scope: dict[tuple, list[Row]] = {}
    for index, measurement in enumerate(results.measurements):
        target = match(world, measurement, targets)
        layers = world.models.get(target.model).layers
        if measurement.gpu_layers is not None and measurement.gpu_layers < layers:
            skipped.append({"record": measurement.label, "reason": f"n_gpu_layers {measurement.gpu_layers} < "
                            f"{layers} layers: partial offload is not calibrated"})
            continue
        by_scope.setdefault(target.scope, []).extend(rows_of(measurement, target, index))
    if not by_scope:
        raise QuantplanError("no measurement left to fit: " + "; ".join(s["reason"] for s in skipped[:3]))
    return by_scope


@dataclass
class ScopeFit:
    """One device/framework/method: its rows, the figures fitted, and the predictions before and after."""

    scope: tuple[str, str, str]
    rows: list[Row]
    fitted_rows: list[Row]
    catalog: dict[str, float]
    names: list[str]
    values: np.ndarray
    before: np.ndarray
    after: np.ndarray

    def summary(self) -> dict:
        fitted = dict(zip(self.names, (float(v) for v in self.values)))
        at_bound = [n for n in self.names if min(abs(fitted[n] - b) for b in BOUNDS[n]) <= 1e-6 * max(BOUNDS[n][1], 1)]
        return {"gpu": self.scope[0], "framework": self.scope[1], "method": self.scope[2],
                "figures": len(self.fitted_rows), "values": {k: fitted.get(k, v) for k, v in self.catalog.items()},
                "catalog": self.catalog, "fitted": self.names, "at_bound": at_bound,
                "files": sorted({r.source.split(" (")[0] for r in self.rows}),
                "errors": error_table(self.rows, self.before, self.after, {r.id for r in self.fitted_rows})}


def _fit_scope(world: World, scope: tuple[str, str, str], rows: list[Row]) -> ScopeFit:
    base = current_values(world, scope)
    fitted_rows = _fitted(rows)
    names = choose(fitted_rows, base)
    parameters = _parameters(scope, names, base)
    setup = fitting.problem(parameters, world, rows=rows)
    _check_predictable(setup, rows)
    values = _best_fit(world, parameters, fitted_rows) if parameters else setup.start.copy()
    return ScopeFit(scope, rows, fitted_rows, base, names, values, setup.predictions(setup.start),
                    setup.predictions(values))


def _fitted(rows: list[Row]) -> list[Row]:
    """The rows the fit uses: means, and a median where a run gives no mean of that metric. Tails (p90,
    p99) and medians beside a mean are reported only: the closed forms' percentiles are rougher."""
    means = {(r.id.split(":")[0], r.metric) for r in rows if r.statistic == "mean"}
    return [r for r in rows if r.statistic == "mean"
            or (r.statistic == "p50" and (r.id.split(":")[0], r.metric) not in means)]


def _best_fit(world: World, parameters: list[ScopedParameter], rows: list[Row]) -> np.ndarray:
    """The project's fit from the catalog values and from two starts either side of them; the lowest
    loss wins. The load models have kinks (chunk sizes, admission), where one start can stall."""
    best, best_loss = None, math.inf
    for factor in START_FACTORS:
        starts = [replace(p, initial=min(max(p.current * factor, p.low), p.high)) for p in parameters]
        setup, values, _ = fitting.fit(starts, world, rows=rows)
        loss = setup.loss(values)
        if loss < best_loss - 1e-12:
            best, best_loss = values, loss
    return best


def _check_predictable(setup: fitting.Problem, rows: list[Row]) -> None:
    for index, (predicted, reason) in setup.prepared.fixed.items():
        if predicted is None:
            row = rows[index]
            raise QuantplanError(f"{row.source.split(' (')[0]}: matches no configuration quantplan can run: "
                                 f"{row.model} {row.method} on {row.gpus}x {row.gpu} {row.framework}: {reason}")


def error_table(rows: list[Row], before: np.ndarray, after: np.ndarray, fitted_ids=frozenset()) -> list[dict]:
    """Median and p90 of |predicted / measured - 1| per metric and statistic, before and after."""
    table = []
    for key in sorted({(r.metric, r.statistic) for r in rows}):
        chosen = [i for i, r in enumerate(rows) if (r.metric, r.statistic) == key
                  and np.isfinite(before[i]) and np.isfinite(after[i])]
        if not chosen:
            continue
        measured = np.array([rows[i].value for i in chosen])
        b, a = np.abs(before[chosen] / measured - 1), np.abs(after[chosen] / measured - 1)
        table.append({"metric": key[0], "statistic": key[1], "rows": len(chosen),
                      "fitted": any(rows[i].id in fitted_ids for i in chosen),
                      "before_median": float(np.median(b)), "before_p90": float(np.percentile(b, 90)),
                      "after_median": float(np.median(a)), "after_p90": float(np.percentile(a, 90))})
    return table
