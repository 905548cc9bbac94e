"""Fit the engines' and kernels' efficiencies to the validation rows (`quantplan fit`).

A handful of structural parameters (per engine: bandwidth share, decode and prefill compute shares,
per-step overhead, all-reduce latency, per-request TTFT overhead; per kernel: bandwidth and compute
shares (TensorRT-LLM's W4A16 GEMM, Marlin); per MoE model with rows: how unevenly its router spreads tokens
over experts) are fitted with scipy's `least_squares` on log(predicted / measured) under a robust soft-L1
loss, so a few odd rows (old builds, overloaded servers) do not steer the fit. The rows' load-model probes are built
once (solver/probes.py); each trial value changes the stacked step models directly, so the fit calls
no plugin, and the finite differences of one Jacobian run as one array pass over the probes each
parameter touches (`Trials`). `--devices` fits on some devices' rows only and reports the error on the
others: the out-of-sample figure. The output is what catalogs/frameworks.toml and methods.toml carry
(`--write` puts it there; a model's routing concentration goes to models.toml), with the rows named in
each efficiency_source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .errors import QuantplanError
from .probes import Adjustment, Reduction
from .registry import World
from .validate import GROUPS, Prepared, Row, load_rows, prepare, validation_world

# TensorRT-LLM's all-reduce over PCIe pays this much more latency than over NVLink (plugins/frameworks).
PCIE_LATENCY_FACTOR = 3.0
LOSS_SCALE = 0.15  # soft-L1: a row's log error beyond ~15% counts about linearly
TOLERANCE = 1e-6  # stop once a step changes the loss (or the values) by less than this share: far below any
# difference the rows can tell, and tighter stops only wander along the flat directions
PRIOR_WEIGHT = 0.02  # per parameter, on its range: weak next to ~1,500 rows' log errors
RESTARTS = 10  # least_squares runs again from where it stopped while the rows' loss still falls by RESTART_GAIN
RESTART_GAIN = 1e-5  # (its xtol stop can come on a step the trust region shrank in a flat valley, above the
# valley's floor: fitted on the 114 A100 rows now in validation_load_held_out.csv, the fixed start stopped 0.5%
# above a minimum that a fit started from its result went on to; a restart starts a fresh trust region. On the
# shipped rows it changes nothing: the fit without restarts returns the same catalog. Judged by Problem.loss, the
# rows' own loss, not least_squares' cost: the trials adjust probes built at the catalog's values, and a
# restart that lowers the cost can raise the loss far from them)


@dataclass(frozen=True)
class Parameter:
    kind: str  # "framework", "method", "kernel" or "model"
    id: str
    field: str  # a spec field, or "<dict field>.<key>"
    low: float
    high: float
    initial: float  # where the search starts: fixed, so the fit depends on the rows only, not the catalog

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.id}.{self.field}"

    def read(self, world: World) -> float:
        spec = self._spec(world)
        if "." in self.field:
            attribute, key = self.field.split(".", 1)
            return float(getattr(spec, attribute)[key])
        return float(getattr(spec, self.field))

    def _spec(self, world: World):
        if self.kind == "framework":
            return world.frameworks.get(self.id)
        if self.kind == "method":
            return world.methods.get(self.id)
        if self.kind == "model":
            return world.models.get(self.id)
        from quantplan.plugins.builtin.methods import kernels

        return kernels()[self.id]

    def effect(self, probe) -> tuple[str, float] | None:
        """(what it changes, coefficient) for one probe; None when it does not touch it."""
        config = probe.config
        framework, gpu = config.framework, config.gpu
        if self.kind == "model":  # MoE routing skew: the value itself, on the model's probes
            return ("routing", 1.0) if config.model.id == self.id else None
        if self.kind in ("kernel", "method"):
            from quantplan.plugins.builtin.methods import kernels

            if self.kind == "kernel" and config.execution.kernel != self.id:
                return None
            if self.kind == "method" and (config.method.id != self.id or config.execution.kernel in kernels()):
                return None  # a method on a shared kernel takes the kernel's shares
            return ("bandwidth", 1.0) if self.field == "bandwidth_efficiency" else ("peaks", 1.0)
        if framework.id != self.id:
            return None
        field, _, key = self.field.partition(".")
        if field == "bandwidth_efficiency":
            return ("bandwidth", 1.0) if gpu.device_class == key else None
        if field == "decode_compute_efficiency":
            return "decode_peak", 1.0
        if field == "prefill_efficiency":
            return None if gpu.device_class in framework.prefill_efficiency_by_class else ("prefill_peak", 1.0)
        if field == "prefill_efficiency_by_class":
            return ("prefill_peak", 1.0) if gpu.device_class == key else None
        if field == "int8_kernel_efficiency":
            return ("peaks", 1.0) if config.execution.kernel == "ggml-cuda-mmq" else None
        if field == "step_overhead_ms":
            return "overhead", 1e-3
        if field == "sequence_overhead_us":
            return "sequence", 1e-6
        if field == "prompt_step_layer_overhead_us":
            return "prompt_step", config.model.layers * 1e-6
        if field == "request_overhead_ms":  # the engine's own API server
            return ("request", 1e-3) if probe.served and not probe.server else None
        if field == "server_overhead_ms":  # another API server in front of the engine
            return ("request", 1e-3) if probe.served and probe.server == key else None
        if field == "wave_persistence":
            return "waves", 1.0
        if field == "allreduce_latency_us":
            if config.gpus <= 1 or framework.parallelism != "tensor":
                return None
            link = 1.0 if gpu.interconnect == "nvlink" else PCIE_LATENCY_FACTOR
            return "overhead", 2 * config.model.layers * 1e-6 * link
        raise ValueError(f"no fitting rule for {self.name}")


DEFAULT_PARAMETERS = tuple(
    [Parameter("framework", f, field, low, high, initial)
     for f in ("tensorrt-llm", "vllm", "sglang")
     for field, low, high, initial in (
         ("bandwidth_efficiency.datacenter", 0.4, 0.95, 0.75), ("decode_compute_efficiency", 0.15, 0.95, 0.5),
         ("prefill_efficiency", 0.2, 0.9, 0.6), ("step_overhead_ms", 0.05, 8.0, 1.0),
         ("allreduce_latency_us", 2.0, 200.0, 10.0), ("request_overhead_ms", 0.0, 300.0, 20.0),
         ("sequence_overhead_us", 0.0, 200.0, 10.0))]
    + [Parameter("framework", f, "wave_persistence", 0.0, 1.0, 0.1) for f in ("tensorrt-llm", "vllm")]
    + [Parameter("framework", "tensorrt-llm", "server_overhead_ms.nim", 0.0, 300.0, 20.0)]
    + [Parameter("framework", f, "server_overhead_ms.dynamo", 0.0, 300.0, 20.0)
       for f in ("tensorrt-llm", "vllm", "sglang")]
    + [Parameter("framework", f, "prompt_step_layer_overhead_us", 0.0, 1000.0, 50.0)
       for f in ("tensorrt-llm", "vllm", "sglang")]
    + [Parameter("framework", "llama.cpp", "prefill_efficiency_by_class.consumer", 0.1, 0.95, 0.6),
       Parameter("framework", "llama.cpp", "bandwidth_efficiency.apple", 0.3, 0.95, 0.7),
       Parameter("framework", "llama.cpp", "prefill_efficiency_by_class.apple", 0.1, 0.95, 0.6),
       Parameter("framework", "llama.cpp", "int8_kernel_efficiency", 0.05, 1.0, 0.5),
       Parameter("method", "fp8", "compute_efficiency", 0.3, 1.2, 0.8),
       Parameter("method", "nvfp4", "compute_efficiency", 0.2, 1.2, 0.7),
       Parameter("kernel", "trtllm-w4a16", "bandwidth_efficiency", 0.3, 1.2, 0.7),
       Parameter("kernel", "trtllm-w4a16", "compute_efficiency", 0.2, 1.2, 0.7)]
    # Marlin (vLLM and SGLang gptq_marlin / awq_marlin, compressed-tensors W4A16; FP8 / NVFP4 weight-only on
    # GPUs without those tensor cores): started where IST-DASLab/marlin's README puts it (near the ideal 4x over
    # FP16 to batch 16-32, ~1.5x at batch 128), fitted on the INT4 rows that run on it
    + [Parameter("kernel", "marlin", "bandwidth_efficiency", 0.3, 1.2, 0.85),
       Parameter("kernel", "marlin", "compute_efficiency", 0.2, 1.2, 0.45)]
    + [Parameter("model", m, "routing_concentration", 0.3, 100.0, 4.0) for m in ("qwen3-235b-a22b",)]
)


@dataclass
class Problem:
    """Rows, their probes and the parameters' effects on each probe, ready for trial values."""

    prepared: Prepared
    parameters: tuple[Parameter, ...]
    start: np.ndarray
    effects: list[tuple[np.ndarray, str, np.ndarray]]  # per parameter: probe mask, kind, coefficients
    measured: np.ndarray
    fitted_rows: np.ndarray  # rows the fit may use
    result: object = None  # scipy's OptimizeResult of the last fit (status, evaluations)
    reduction: Reduction | None = None  # the rows' figures from their probes' (built on first use)
    alike: np.ndarray | None = None  # per probe: a label shared by the probes every trial value changes alike

    def adjustment(self, values: np.ndarray, select: np.ndarray | None = None) -> Adjustment:
        """What `values` (one per parameter) change in the probes' step models. With `select` (probe
        indices, as Batch.evaluate takes them) for those probes only, `values` then holding a column of
        values per selected probe: several trial points' changes at once."""
        adjust = self.prepared.batch.neutral(None if select is None else len(select))
        for value, start, (mask, kind, coefficient) in zip(values, self.start, self.effects):
            if select is not None:
                mask, coefficient = mask[select], coefficient[select]
                value = value[mask]
            if not mask.any():  # touches none of these rows (a catalog value of 0 would divide by 0 below)
                continue
            if kind in ("bandwidth", "decode_peak", "prefill_peak", "peaks"):
                ratio = value / start
                if kind in ("bandwidth",):
                    adjust.bandwidth[mask] *= ratio
                if kind in ("decode_peak", "peaks"):
                    adjust.decode_peak[mask] *= ratio
                if kind in ("prefill_peak", "peaks"):
                    adjust.prefill_peak[mask] *= ratio
            elif kind == "overhead":
                adjust.overhead_s[mask] += (value - start) * coefficient[mask]
            elif kind == "sequence":
                adjust.overhead_per_sequence_s[mask] += (value - start) * coefficient[mask]
            elif kind == "prompt_step":
                adjust.prompt_step_overhead_s[mask] += (value - start) * coefficient[mask]
            elif kind == "waves":
                adjust.wave_persistence[mask] += value - start
            elif kind == "routing":
                adjust.routing_concentration[mask] = value
            else:
                adjust.request_overhead_s[mask] += (value - start) * coefficient[mask]
        return adjust

    def probe_values(self, values: np.ndarray) -> np.ndarray:
        """Every probe's figure at `values`."""
        return self.prepared.batch.evaluate(self.adjustment(values), alike=self.labels())

    def labels(self) -> np.ndarray:
        """A label per probe, the same for probes with the same load-model inputs (Batch.twin_of: a TTFT,
        a TPOT and a throughput row of one benchmark run) and the same effects of every parameter, which
        any trial values therefore adjust alike: Batch.evaluate runs the load model once for them."""
        if self.alike is None:
            batch = self.prepared.batch
            columns = [batch.twin_of] + [c for mask, _, coefficient in self.effects for c in (mask, coefficient)]
            _, found = np.unique(np.column_stack(columns).astype(float), axis=0, return_inverse=True)
            self.alike = found.reshape(-1)
        return self.alike

    def predictions(self, values: np.ndarray) -> np.ndarray:
        return self.rows_from(self.probe_values(values))

    def rows_from(self, probe_values: np.ndarray) -> np.ndarray:
        """Each row's figure from its probes' figures."""
        if self.reduction is None:
            self.reduction = Reduction(self.prepared.members, self.prepared.rules)
        return self.reduction(probe_values)

    def row_of_probe(self) -> np.ndarray:
        """The row each probe belongs to."""
        found = np.full(len(self.prepared.batch.probes), -1)
        for row, members in enumerate(self.prepared.members):
            found[members] = row
        return found

    def loss(self, values: np.ndarray) -> float:
        """The robust (soft-L1) loss of the rows at `values`, as least_squares measures it (prior excluded)."""
        z = (self.residuals(values) / LOSS_SCALE) ** 2
        return float(0.5 * LOSS_SCALE ** 2 * np.sum(2 * (np.sqrt(1 + z) - 1)))

    def residuals(self, values: np.ndarray) -> np.ndarray:
        return self.row_residuals(self.predictions(values))

    def row_residuals(self, predictions: np.ndarray) -> np.ndarray:
        """log(predicted / measured) of the fitted rows, from every row's prediction (the last axis)."""
        predicted = predictions[..., self.fitted_rows]
        error = np.log(np.clip(predicted, 1e-12, None) / self.measured[self.fitted_rows])
        return np.where(np.isfinite(error), error, 3.0)  # a row the load cannot carry: a large, finite miss


def problem(parameters=DEFAULT_PARAMETERS, world: World | None = None, devices: tuple[str, ...] = (),
            rows: list[Row] | None = None) -> Problem:
    world = world or validation_world()
    rows = [r for r in (load_rows(held_out=False) if rows is None else rows)
            if GROUPS.get(r.metric) in ("decode", "ttft")]
    known = sorted({r.gpu for r in rows})
    missing = [d for d in devices if d not in known]
    if missing:
        raise QuantplanError(f"--devices {','.join(missing)}: no speed rows on {'it' if len(missing) == 1 else 'them'} "
                             f"(devices with rows: {', '.join(known)})")
    prepared = prepare(world, rows)
    probes = prepared.batch.probes
    start = np.array([p.read(world) for p in parameters])
    effects = []
    for parameter in parameters:
        mask = np.zeros(len(probes), dtype=bool)
        coefficient = np.zeros(len(probes))
        kind = ""
        for index, found in enumerate(parameter.effect(p) for p in probes):
            if found is not None:
                kind, coefficient[index] = found
                mask[index] = True
        effects.append((mask, kind or "bandwidth", coefficient))
    measured = np.array([r.value for r in rows])
    predictable = np.array([bool(m) for m in prepared.members])
    chosen = np.array([not devices or r.gpu in devices for r in rows])
    return Problem(prepared, tuple(parameters), start, effects, measured, np.nonzero(predictable & chosen)[0])


def fit(parameters=DEFAULT_PARAMETERS, world: World | None = None, devices: tuple[str, ...] = (),
        rows: list[Row] | None = None, setup: Problem | None = None,
        from_catalog: bool = False, cold: bool = False) -> tuple[Problem, np.ndarray, list[dict]]:
    """Least-squares fit; returns the problem, the fitted values and a report per parameter. A given
    `setup` (its rows' probes already built) is fitted on its `fitted_rows`. `from_catalog`: the search
    starts at the catalog's values only (the loss, prior included, is the same): a catalog that holds a converged
    fit comes back unchanged. Otherwise it runs from the fixed starting point and, unless `cold`, from the
    catalog's values too, and keeps the lower minimum (least_squares stops where the load models' kinks make the
    valley rugged, and where depends on where it starts). `cold`: a parameter the rows do not fit
    takes its fixed starting value instead of the catalog's (a cross-validation fold: the catalog was fitted
    on the held-out rows too, and what it says of a parameter the fold's rows cannot pin came from them)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):  # see Trials
        return _fit(parameters, world, devices, rows, setup, from_catalog, cold)


# An engine's wave persistence (how far a closed-loop benchmark's first wave of identical requests stays in
# lockstep) shows in the TTFT of closed-loop rows at more than one client that run past their first wave; offline
# throughput rows touch it too, but do not pin it, and a run of one request per client is a single wave (on
# LambdaLabsML's 25 A100 vLLM rows persistence changes no figure). Fitted off H100 it went 0.065 -> 0.835 for
# TensorRT-LLM (no such row there: 58 offline throughputs, 5 offline TTFTs) and 0.071 -> 1.0 for vLLM (18 P99 rows
# beside the 25 single waves), and the H100 fold's TTFT read 85.4% median; held, 22.7%. So it is fitted only from
# at least this many such rows; with fewer it keeps its value, as a parameter no row touches does. The shipped rows
# hold 489 (TensorRT-LLM) and 162 (vLLM): the catalog's fit is unchanged.
MIN_WAVE_ROWS = 20


def _identified(setup: Problem, index: int, fitted_probes: np.ndarray) -> bool:
    """Whether the rows being fitted can pin parameter `index` (only wave persistence has a rule: MIN_WAVE_ROWS)."""
    if setup.parameters[index].field != "wave_persistence":
        return True
    row_of = setup.row_of_probe()
    touched = np.unique(row_of[setup.effects[index][0] & fitted_probes])
    rows = setup.prepared.rows
    waves = [r for r in touched if r >= 0 and rows[r].metric == "ttft_ms" and rows[r].mode == "concurrency"
             and rows[r].batch > 1 and rows[r].requests_per_client != 1]
    return len(waves) >= MIN_WAVE_ROWS


def _placed(values: np.ndarray, used: list[int], x: np.ndarray) -> np.ndarray:
    """`values` with the fitted parameters `used` set to `x`."""
    found = values.copy()
    found[used] = x
    return found


def _fit(parameters, world, devices, rows, setup, from_catalog=False,
         cold=False) -> tuple[Problem, np.ndarray, list[dict]]:
    setup = setup or problem(parameters, world, devices, rows)
    fitted_probes = np.zeros(len(setup.prepared.batch.probes), dtype=bool)
    for row in setup.fitted_rows:
        fitted_probes[setup.prepared.members[row]] = True
    used = [i for i, (mask, _, _) in enumerate(setup.effects) if (mask & fitted_probes).any()
            and _identified(setup, i, fitted_probes)]
    values = np.array([p.initial for p in parameters]) if cold else setup.start.copy()
    if used:
        chosen = [parameters[i] for i in used]
        started = setup.start[used] if from_catalog else np.array([p.initial for p in chosen])
        result = solve(setup, chosen, used, start=started, base=values)
        loss = setup.loss(_placed(values, used, result.x))
        if not from_catalog and not cold:  # and from the catalog's values: the lower of the two minima is kept
            other = solve(setup, chosen, used, start=setup.start[used], base=values)
            other_loss = setup.loss(_placed(values, used, other.x))
            if other_loss < loss:
                result, loss, started = other, other_loss, setup.start[used]
        for _ in range(RESTARTS):  # least_squares stops on a shrunken step in a flat valley: go on from there
            # from the values as they will be written (four digits, bounds snapped): the catalog must be a point a
            # fit started from it does not leave, and a fresh start a hair away can find a descent the stop missed
            written = np.array([_round(_at_bound(v, parameters[i])) for v, i in zip(result.x, used)])
            if np.array_equal(written, started):  # the same start again: the same stop (the fit is deterministic)
                break
            again = solve(setup, chosen, used, start=written, base=values)
            again_loss = setup.loss(_placed(values, used, again.x))  # the rows' loss, not the trials' cost
            if not again_loss < loss * (1 - RESTART_GAIN):
                break
            result, loss, started = again, again_loss, written
        values[used] = [_round(_at_bound(v, parameters[i])) for v, i in zip(result.x, used)]
        setup.result = result
    row_of = setup.row_of_probe()
    fitted_row = np.zeros(len(setup.prepared.rows), dtype=bool)
    fitted_row[setup.fitted_rows] = True
    report = []
    for index, parameter in enumerate(parameters):
        touched = np.unique(row_of[setup.effects[index][0]])
        rows_touched = sorted({setup.prepared.rows[r].id for r in touched if r >= 0 and fitted_row[r]})
        report.append({"parameter": parameter.name, "before": float(setup.start[index]),
                       "after": float(values[index]), "rows": rows_touched})
    return setup, values, report


def solve(setup: Problem, parameters: list[Parameter], used: list[int], batched: bool = True,
          start: np.ndarray | None = None, base: np.ndarray | None = None):
    """scipy's least_squares over `parameters` (`setup.parameters[used]`), from their initial values
    (or `start`), the other parameters at `base` (default: the catalog's values): scipy's OptimizeResult.
    `batched` False: plain finite differences, one full evaluation per point (the same path, step for step,
    only slower: the tests compare the two)."""
    from scipy.optimize import least_squares
    from threadpoolctl import threadpool_limits

    low = np.array([p.low for p in parameters])
    high = np.array([p.high for p in parameters])
    x0 = np.array([p.initial for p in parameters])
    trials = Trials(setup, used, x0, high - low, base)  # the prior pulls toward the initial values either way
    begin = x0 if start is None else np.clip(start, low, high)
    with threadpool_limits(1, user_api="blas"):  # see Trials: one thread is far faster here
        return least_squares(trials.residuals, begin, bounds=(low, high), loss="soft_l1", f_scale=LOSS_SCALE,
                             x_scale="jac", diff_step=1e-4, ftol=TOLERANCE, xtol=TOLERANCE, gtol=TOLERANCE, max_nfev=300,
                             workers=trials.map if batched else map)


class Trials:
    """The fit's residuals at trial values, and the map scipy's finite differences run on.

    least_squares differences the residuals one parameter at a time, from the point it evaluated last
    (2-point scheme): a point that changes one parameter changes only the probes that parameter
    touches (its `effects` mask), a fraction of all. `map`, given as least_squares' `workers` (a
    map-like callable that receives every point of one Jacobian at once; scipy uses it for nothing
    else here), evaluates those probes for all the points in one array pass and keeps the other
    probes' figures from the last evaluation. Every figure is computed element by element
    (Batch.evaluate), so each point's residuals are bit for bit what a full evaluation gives, and the
    fit takes the same steps as with plain finite differences (`solve(batched=False)`); only the work
    shrinks: on the shipped rows, one pass of ~11,800 load-model runs per Jacobian instead of 34
    passes over 2,121 probes.

    The trust-region steps take SVDs of the ~1,650 x 34 Jacobian, which OpenBLAS's threads make a
    hundred times slower on a busy two-core machine (0.45 s instead of 2 ms each): `solve` runs on one
    BLAS thread. That also makes the fit independent of the machine's core count: the SVD's last bits
    depend on the threads, and a flat fit (a cross-validation fold) can then end elsewhere."""

    def __init__(self, setup: Problem, used: list[int], x0: np.ndarray, ranges: np.ndarray,
                 base: np.ndarray | None = None) -> None:
        self.setup, self.used, self.x0, self.ranges = setup, used, x0, ranges
        self.base = setup.start if base is None else base  # the parameters not fitted
        self.last: tuple[np.ndarray, np.ndarray] | None = None  # (x, every probe's figure there)

    def residuals(self, x: np.ndarray) -> np.ndarray:
        probe_values = self.setup.probe_values(self._trial(x))
        self.last = (np.array(x, dtype=float), probe_values)
        return self._residuals(x, probe_values)

    def map(self, function, points) -> list[np.ndarray]:
        """`[function(x) for x in points]`, with `function` the residuals (as least_squares wraps them)."""
        points = [np.asarray(x, dtype=float) for x in points]
        if self.last is None or any(x.shape != self.last[0].shape for x in points):
            return [function(x) for x in points]
        base_x, base_values = self.last
        masks = [self._touched(np.nonzero(x != base_x)[0]) for x in points]
        select = np.concatenate([np.nonzero(mask)[0] for mask in masks])
        owner = np.repeat(np.arange(len(points)), [int(mask.sum()) for mask in masks])
        trials = np.array([self._trial(x) for x in points])
        alike = owner * len(base_values) + self.setup.labels()[select]  # alike within one point only
        changed = self.setup.prepared.batch.evaluate(self.setup.adjustment(trials[owner].T, select), select, alike)
        values = np.tile(base_values, (len(points), 1))  # every point's probe figures, a row each
        values[owner, select] = changed
        return list(self._residuals(np.array(points), values))

    def _touched(self, changed: np.ndarray) -> np.ndarray:
        """Probes whose figures the changed (used) parameters move."""
        mask = np.zeros(len(self.last[1]), dtype=bool)
        for position in changed:
            mask |= self.setup.effects[self.used[position]][0]
        return mask

    def _trial(self, x: np.ndarray) -> np.ndarray:
        trial = self.base.copy()
        trial[self.used] = x
        return trial

    def _residuals(self, x: np.ndarray, probe_values: np.ndarray) -> np.ndarray:
        """Rows' residuals and the prior's at `x` (several points: one row each, in both arguments)."""
        # a weak pull toward the starting values keeps directions the rows cannot tell apart
        # (an overhead against a share) from wandering: the fit is unique and repeatable
        prior = PRIOR_WEIGHT * (x - self.x0) / self.ranges
        return np.concatenate([self.setup.row_residuals(self.setup.rows_from(probe_values)), prior], axis=-1)


def _at_bound(value: float, parameter: Parameter) -> float:
    """A value within a millionth of its range from a bound is that bound (the search stops a hair
    inside it: NIM's server overhead at 0 ms, for one)."""
    margin = 1e-6 * (parameter.high - parameter.low)
    return parameter.low if value - parameter.low <= margin else parameter.high if parameter.high - value <= margin \
        else value


def _round(value: float) -> float:
    """Four significant digits: what the catalog carries."""
    return float(f"{value:.4g}")


def write_catalog(parameters, values, folder: Path | None = None) -> list[str]:
    """Put fitted values into catalogs/frameworks.toml and methods.toml (the row's own line)."""
    folder = folder or Path(str(resources.files("quantplan.catalogs")))
    changed = []
    for parameter, value in zip(parameters, values):
        name = {"framework": "frameworks.toml", "model": "models.toml"}.get(parameter.kind, "methods.toml")
        table = parameter.kind
        path = folder / name
        text = path.read_text()
        start = text.index(f'[[{table}]]\nid = "{parameter.id}"')
        end = text.find("\n[[", start + 1)
        end = len(text) if end < 0 else end
        block = text[start:end]
        field, _, key = parameter.field.partition(".")
        if key:
            pattern = re.compile(rf'^({field} = \{{.*?\b{re.escape(key)} = )([0-9.eE+-]+)', re.M)
        else:
            pattern = re.compile(rf'^({field} = )([0-9.eE+-]+)$', re.M)
        if pattern.search(block):
            block = pattern.sub(lambda m: m.group(1) + f"{value:g}", block, count=1)
        elif not key:
            block = block.rstrip("\n") + f"\n{field} = {value:g}\n"
        else:
            raise ValueError(f"{parameter.name}: no {field} table in {name}")
        path.write_text(text[:start] + block + text[end:])
        changed.append(f"{name}: {parameter.name} = {value:g}")
    return changed


def errors(setup: Problem, values: np.ndarray, devices: tuple[str, ...] = ()) -> list[dict]:
    """Median and p90 of |predicted / measured - 1| before and after the fit, for TPOT, TTFT and the
    other speed figures, on the fitted devices' rows and (with `devices`) on the others."""
    before, after = setup.predictions(setup.start), setup.predictions(values)
    found = []
    for sample in ("in-sample", "out-of-sample"):
        for metric in ("tpot_ms", "ttft_ms", "other"):
            chosen = [i for i, row in enumerate(setup.prepared.rows)
                      if (sample == "in-sample") == (not devices or row.gpu in devices)
                      and _metric_kind(row) == metric
                      and np.isfinite(before[i]) and np.isfinite(after[i])]
            if not chosen:
                continue
            measured = setup.measured[chosen]
            b, a = np.abs(before[chosen] / measured - 1), np.abs(after[chosen] / measured - 1)
            found.append({"sample": sample, "metric": metric, "rows": len(chosen),
                          "before_median": float(np.median(b)), "before_p90": float(np.percentile(b, 90)),
                          "after_median": float(np.median(a)), "after_p90": float(np.percentile(a, 90))})
    return found


# ---------------------------------------------------------------------------------------------
# cross-validation: fit without a group of rows, predict that group


FOLD_KEYS = ("device", "model", "source", "engine")


def source_of(row: Row) -> str:
    """The publication a row comes from: its source up to the first space or comma (a repository, a
    documentation site), so that every row of one benchmark campaign falls in one fold."""
    return re.split(r"[ ,]", row.source.strip(), maxsplit=1)[0].rstrip("/:;")


def _fold_of(row: Row, key: str) -> str:
    if key == "device":
        return row.gpu
    if key == "model":
        return row.model
    if key == "engine":
        return row.framework
    return source_of(row)


def cross_validate(key: str, parameters=DEFAULT_PARAMETERS, world: World | None = None,
                   rows: list[Row] | None = None, progress=None) -> dict:
    """Leave one group out: for each device (model, source, engine) with speed rows, fit every parameter
    on the other groups' rows and predict this group's. Returns the pooled out-of-sample errors by metric
    and load regime, and one line per fold. A parameter the remaining rows cannot pin takes its fixed
    starting value, not the catalog's: the catalog was fitted on this group's rows too (`fit(cold=True)`)."""
    if key not in FOLD_KEYS:
        raise QuantplanError(f"--cross-validate {key}: choose one of {', '.join(FOLD_KEYS)}")
    setup = problem(parameters, world, rows=rows)
    every = setup.fitted_rows
    labels = np.array([_fold_of(r, key) for r in setup.prepared.rows])
    predicted = np.full(len(setup.prepared.rows), np.nan)
    folds = []
    groups = sorted(set(labels[every]))
    for number, group in enumerate(groups):
        held = every[labels[every] == group]
        setup.fitted_rows = every[labels[every] != group]
        _, values, _ = fit(parameters, setup=setup, cold=True)
        predicted[held] = setup.predictions(values)[held]
        folds.append({"group": group, **_summary(setup, predicted, held)})
        if progress:
            progress(number + 1, len(groups), group)
    setup.fitted_rows = every
    pooled = {}
    for metric in ("tpot_ms", "ttft_ms", "other"):
        for regime in ("all", "c=1", "c=2-16", "c=17-64", "c>64", "rate", "offline"):
            chosen = [i for i in every if _metric_kind(setup.prepared.rows[i]) == metric
                      and (regime == "all" or _regime_kind(setup.prepared.rows[i]) == regime)]
            if chosen:
                pooled.setdefault(metric, {})[regime] = _stats(setup, predicted, chosen)
    return {"key": key, "folds": folds, "pooled": pooled}


def _metric_kind(row: Row) -> str:
    return row.metric if row.metric in ("tpot_ms", "ttft_ms") else "other"


def _regime_kind(row: Row) -> str:
    return row.regime if row.under_load else "offline"


def _summary(setup: Problem, predicted: np.ndarray, held) -> dict:
    found = {}
    for metric in ("tpot_ms", "ttft_ms", "other"):
        chosen = [i for i in held if _metric_kind(setup.prepared.rows[i]) == metric]
        if chosen:
            found[metric] = _stats(setup, predicted, chosen)
    return found


def _stats(setup: Problem, predicted: np.ndarray, chosen) -> dict:
    chosen = np.asarray(chosen)
    value = predicted[chosen]
    finite = np.isfinite(value)
    error = np.abs(value[finite] / setup.measured[chosen][finite] - 1)
    if not error.size:
        return {"rows": int(len(chosen)), "predicted": 0, "median": None, "p90": None}
    return {"rows": int(len(chosen)), "predicted": int(finite.sum()),
            "median": float(np.median(error)), "p90": float(np.percentile(error, 90))}
