"""Grid sweeps (load, SLOs, quality floor, all prices, two axes) run serially, on local processes, or on
an existing Dask or Ray cluster; every engine gives the same points as the serial run."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable

from quantplan.plugins.manager import record_failures, take_failures

from . import collection
from .api import as_scenario, solve
from .errors import InfeasibleError, QuantplanError
from .registry import World, load_world
from .scenario import Scenario, make_scenario
from .space import expected_batches, useful_batches
from .sweep import Point

AXES = {
    "price-factor": "every device price multiplied by the value",
    "concurrency": "concurrent users of every class",
    "rate": "requests per second of every class",
    "ttft": "TTFT SLO (ms) of every class",
    "tpot": "TPOT SLO (ms) of every class",
    "ppl": "largest perplexity increase of every class",
}
ENGINES = ("serial", "processes", "dask", "ray")

_WORLDS: dict[tuple, World] = {}


def vary(scenario: Scenario, axis: str, value: float, world: World | None) -> Scenario:
    """The scenario with `axis` set to `value` (price axes take 'price:<device>'; only they read `world`)."""
    data = scenario.model_dump()
    if axis == "price-factor":
        base = world.with_prices(scenario.prices, scenario.provider)
        data["prices"] = {gpu: price.usd_per_hour * value for gpu, price in base.items()}
    elif axis.startswith("price:"):
        data["prices"] = {**scenario.prices, axis.split(":", 1)[1]: value}
    else:
        field = {"concurrency": "concurrency", "rate": "rate_per_s", "ttft": "ttft_ms", "tpot": "tpot_ms",
                 "ppl": "max_ppl_delta"}.get(axis)
        if field is None:
            raise QuantplanError(f"unknown sweep axis {axis!r}; known: {', '.join(AXES)} and price:<device>")
        classes = []
        for traffic in data["classes"]:
            traffic = dict(traffic)
            if field == "concurrency":
                traffic.update(concurrency=max(1, round(value)), rate_per_s=None)
            elif field == "rate_per_s":
                traffic.update(rate_per_s=value, concurrency=None)
            elif field == "tpot_ms":
                traffic.update(tpot_ms=value, min_tokens_per_s=None)
            elif field == "max_ppl_delta":
                traffic.update(max_ppl_delta=value, use_case=None)
            else:
                traffic[field] = value
            classes.append(traffic)
        data["classes"] = classes
    data["alternatives"] = False
    return make_scenario(data, f"sweep {axis}={value:g}")


def solve_point(scenario_data: dict, axes: tuple[str, ...], values: tuple[float, ...],
                batches: tuple[int, ...] = ()) -> dict:
    """One grid point (module-level so that process pools and clusters can run it). `batches`: the batch sizes
    the whole grid's points ask for (batch_hint): a process makes each configuration's first pass once for all."""
    if multiprocessing.parent_process() is not None:  # a pool's worker: it ends with the sweep
        collection.keep_out_of_collections()
    scenario, world = _point(scenario_data, axes, values)
    try:
        with expected_batches(batches):
            plan = solve(scenario, world)
    except InfeasibleError as error:
        return {"values": list(values), "status": "infeasible", "plan": "; ".join(error.reasons)[:300],
                "cost_per_hour": None, "plugin_failures": take_failures()}
    label = " + ".join(f"{g.count}x[{g.gpus_per_replica}x {g.gpu} {g.method} {g.framework} b{g.batch_size} "
                       f"kv-{g.kv_cache_dtype}]" for g in sorted(plan.replicas, key=lambda g: (g.gpu, g.method,
                                                                                               g.framework,
                                                                                               g.gpus_per_replica,
                                                                                               g.batch_size)))
    return {"values": list(values), "status": plan.status, "plan": label, "cost_per_hour": plan.cost_per_hour,
            "plugin_failures": take_failures()}  # a worker's failures, for the command to name


def _point(scenario_data: dict, axes: tuple[str, ...], values: tuple[float, ...]) -> tuple[Scenario, World]:
    """A grid point's scenario, and the world this process keeps for its catalogs."""
    scenario = make_scenario(scenario_data)
    key = tuple(scenario.catalogs)
    world = _WORLDS.get(key) or _WORLDS.setdefault(key, load_world(scenario.catalogs))
    for axis, value in zip(axes, values):
        scenario = vary(scenario, axis, value, world)
    return scenario, world


def run_points(scenario: Scenario, axes: tuple[str, ...], grid: list[tuple[float, ...]], engine: str = "processes",
               address: str | None = None, workers: int | None = None,
               progress: Callable[[int], None] | None = None) -> list[dict]:
    """Solve every grid point with `engine`; results come back in grid order whatever the engine."""
    if engine not in ENGINES:
        raise QuantplanError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    data = scenario.model_dump()
    hint = batch_hint(scenario, axes, grid)
    jobs = [(data, axes, point, hint) for point in grid]
    if engine == "serial" or len(jobs) == 1:
        order = by_load(axes, grid)
        return _in_grid_order(order, _collect((solve_point(*jobs[i]) for i in order), progress))
    if engine == "processes":
        workers = workers or max(1, min(len(jobs), os.cpu_count() or 1))
        order = by_load(axes, grid)
        ordered = [jobs[i] for i in order]
        found = _forked_points(scenario, axes, ordered, hint, workers, progress)
        if found is not None:
            return _in_grid_order(order, _collect(found, progress))
        # spawn, not fork: a forked child inherits the solver's thread pool mid-state and can hang
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            # each worker a run of neighbouring points: those at one load differ in prices only (re-priced, not rebuilt)
            found = pool.map(solve_point, *zip(*ordered), chunksize=-(-len(ordered) // workers))
            return _in_grid_order(order, _collect(found, progress))
    if engine == "dask":
        return _dask(jobs, address, workers, progress)
    return _ray(jobs, address, progress)


def _forked_points(scenario: Scenario, axes: tuple[str, ...], ordered: list[tuple], hint: tuple[int, ...],
                   workers: int, progress: Callable[[int], None] | None = None) -> list[dict] | None:
    """The points solved here and in forked children (solver/forked.py) once this process has made the candidate
    spaces' first passes, which the children inherit: a spawned pool's workers start a fresh interpreter and each
    make every first pass again (1.6 s of a 9-point concurrency sweep of Llama-3.1-8B on the full catalog, in each
    of the two). Neighbouring points at one load (prices apart) stay in one process when a price is swept. None
    where this process cannot fork its points (another platform, one CPU, QUANTPLAN_FORK=0, a fleet, or a solver
    that has already run here: its threads do not survive a fork): the pool runs them. `progress` hears of the
    points this process finishes as it finishes them, and of the children's when they answer."""
    from . import forked, program
    from .space import build_space

    if (workers < 2 or len(ordered) < 2 or scenario.fleet or program.solver_started()
            or not forked.available()):
        return None
    data, _, values, batches = ordered[0]
    try:  # the first passes, made once here (a point that cannot be planned says why when it is solved)
        first, world = _point(data, axes, values)
        with expected_batches(batches):
            build_space(world, first, world.with_prices(first.prices, first.provider))
    except QuantplanError:
        pass
    priced = any(axis.startswith("price") for axis in axes)
    run = -(-len(ordered) // forked.processes()) if priced else 1
    parent, done = os.getpid(), [0]

    def point(job):
        found = solve_point(*job)
        if progress and os.getpid() == parent:
            done[0] += 1
            progress(done[0])
        return found

    return forked.spread(point, ordered, [], minimum=2, run=run)


def batch_hint(scenario: Scenario, axes: tuple[str, ...], grid: list[tuple[float, ...]]) -> tuple[int, ...]:
    """The batch sizes the grid's points build their candidate spaces with, where an axis changes them (the
    number of users cuts a concurrency class's sizes: space.useful_batches); () where none does."""
    if "concurrency" not in axes:
        return ()
    column = axes.index("concurrency")
    sizes: set[int] = set()
    for value in sorted({point[column] for point in grid}):
        sizes.update(useful_batches(vary(scenario, "concurrency", value, None)))
    return tuple(sorted(sizes))


def by_load(axes: tuple[str, ...], grid: list[tuple[float, ...]]) -> list[int]:
    """The grid's indices with points that differ only on price axes next to each other (then in grid order): a
    process keeps the last candidate space it built and re-prices it for such a point (space.build_space)."""
    loads = [i for i, axis in enumerate(axes) if not axis.startswith("price")]
    return sorted(range(len(grid)), key=lambda i: (tuple(grid[i][k] for k in loads), i))


def _in_grid_order(order: list[int], results: list[dict]) -> list[dict]:
    """`results` (of the points in `order`) back in grid order."""
    return [result for _, result in sorted(zip(order, results), key=lambda pair: pair[0])]


def _collect(results: Iterable[dict], progress) -> list[dict]:
    found = []
    for result in results:
        record_failures(result.pop("plugin_failures", ()))
        found.append(result)
        if progress:
            progress(len(found))
    return found


def _dask(jobs, address, workers, progress) -> list[dict]:
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise QuantplanError("engine 'dask' needs the extra: pip install 'quantplan[distributed]'") from None
    cluster = None
    if address:
        client = Client(address)
    else:
        cluster = LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    try:
        futures = client.map(solve_point, *zip(*jobs), pure=False)
        return _collect((future.result() for future in futures), progress)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _ray(jobs, address, progress) -> list[dict]:
    try:
        import ray
    except ImportError:
        raise QuantplanError("engine 'ray' needs Ray installed: pip install ray") from None
    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False)
    remote = ray.remote(solve_point)
    refs = [remote.remote(*job) for job in jobs]
    return _collect((ray.get(ref) for ref in refs), progress)


def grid_sweep(scenario, axis: str, values: list[float], engine: str = "processes", address: str | None = None,
               progress=None) -> list[Point]:
    scenario = as_scenario(scenario)
    results = run_points(scenario, (axis,), [(v,) for v in values], engine, address, progress=progress)
    return [Point(value=r["values"][0], status=r["status"], plan=r["plan"], cost_per_hour=r["cost_per_hour"])
            for r in results]


def linspace(start: float, end: float, count: int) -> list[float]:
    if count < 2:
        raise QuantplanError("a sweep needs at least 2 points")
    return [start + (end - start) * i / (count - 1) for i in range(count)]
