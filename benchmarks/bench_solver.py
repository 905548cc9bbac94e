"""Benchmark: candidates, build and solve time on the full catalog, and exact price sweeps vs a grid;
then every figure of issue 11 (whole processes) against its issue baseline and its target.

Run: python benchmarks/bench_solver.py [--grid 1000] [--repeats 5] [--quick]
Prints figures; asserts nothing (speed targets live here, not in unit tests: machines are noisy).
Times are medians of wall time; on a shared machine they move with the other load: compare runs made
at the same time, not with figures from another day.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import contextmanager

from quantplan.solver import program
from quantplan.solver.api import prune_dominated
from quantplan.solver.registry import load_world
from quantplan.solver.scenario import make_scenario
from quantplan.solver.space import build_space
from quantplan.solver.sweep import plan_at_price, price_grid, price_sweep

ONE_CLASS = [{"name": "chat", "prompt_tokens": 1024, "output_tokens": 256, "concurrency": 64, "ttft_ms": 2000,
              "tpot_ms": 50, "use_case": "chat_general"}]
THREE_CLASSES = ONE_CLASS + [
    {"name": "rag", "prompt_tokens": 6000, "output_tokens": 300, "rate_per_s": 2.0, "ttft_ms": 3000, "tpot_ms": 60,
     "use_case": "summarization"},
    {"name": "batch", "prompt_tokens": 512, "output_tokens": 512, "concurrency": 256, "ttft_ms": 20000,
     "min_tokens_per_s": 10, "max_ppl_delta": 0.5},
]


def timed(function, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def solve_figures(world, classes, repeats: int) -> None:
    scenario = make_scenario({"model": "llama-3.1-70b", "classes": classes, "alternatives": False})
    prices = world.with_prices({})
    space_s, space = timed(lambda: build_space(world, scenario, prices), 1)
    # as a solve prunes (cost objective, no device limits): per device, then across the devices
    prune_s, options = timed(lambda: prune_dominated(prune_dominated(space.options, scenario.classes),
                                                     scenario.classes, limited=set()), 1)
    build_s, _ = timed(lambda: program.build(options, scenario.classes, {}, None), repeats)
    solve_s, solution = timed(lambda: program.solve(options, scenario.classes, {}), repeats)
    print(f"  {len(classes)} class(es): {space.configurations} configurations, {len(space.options)} candidates, "
          f"{len(options)} after pruning")
    print(f"    candidate generation {space_s:.2f} s, pruning {prune_s:.3f} s, "
          f"program build {build_s:.3f} s (median of {repeats}), build + solve to proven optimum "
          f"{solve_s:.3f} s (median of {repeats}), status {solution.status}, ${solution.cost_per_hour:.2f}/h")


def solver_share(world, classes, alternatives: bool) -> None:
    """One planning run in this process on one CPU (QUANTPLAN_FORK=0, the alternatives' programs solved one after
    another) and the share of it HiGHS itself took (program.solver_time): a floor under the whole process's time on
    this machine whatever the rest of quantplan takes (on two CPUs, half of it at best)."""
    from quantplan.solver.api import solve

    scenario = make_scenario({"model": "llama-3.1-70b", "classes": classes, "alternatives": alternatives})
    parallel = program.in_parallel
    program.in_parallel = lambda function, items: [function(item) for item in items]
    try:
        with forking("0"):
            seconds, runs = program.solver_time()
            start = time.perf_counter()
            solve(scenario, world)
            elapsed = time.perf_counter() - start
            spent, count = program.solver_time()
    finally:
        program.in_parallel = parallel
    print(f"  {len(classes)} class(es){' with alternatives' if alternatives else ''}: planned in {elapsed:.2f} s "
          f"(its candidate space included), of which HiGHS {spent - seconds:.2f} s in {count - runs} runs")


@contextmanager
def forking(flag: str):
    """QUANTPLAN_FORK set to `flag` for the block (solver/forked.py: "0" keeps everything in one process)."""
    before = os.environ.get("QUANTPLAN_FORK")
    os.environ["QUANTPLAN_FORK"] = flag
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("QUANTPLAN_FORK")
        else:
            os.environ["QUANTPLAN_FORK"] = before


def fork_figures(repeats: int) -> None:
    """The 3-class candidate space built in one process and over two (solver/forked.py), each from a fresh world
    (nothing kept from an earlier build), the two alternating run after run."""

    scenario = make_scenario({"model": "llama-3.1-70b", "classes": THREE_CLASSES, "alternatives": False})
    found: dict[str, list[float]] = {"0": [], "1": []}
    for _ in range(repeats):
        for flag in found:
            with forking(flag):
                world = load_world()
                start = time.perf_counter()
                build_space(world, scenario, world.with_prices({}))
                found[flag].append(time.perf_counter() - start)
    print(f"  3-class candidate space: one process {statistics.median(found['0']):.2f} s, two processes "
          f"{statistics.median(found['1']):.2f} s (medians of {repeats}; QUANTPLAN_FORK=0 / default)")


def sweep_figures(world, grid_points: int) -> None:
    scenario = make_scenario({"model": "llama-3.1-8b", "gpus": ["a100-80gb", "l40s", "l4", "a10g", "h100-sxm"],
                              "max_gpus": 2, "alternatives": False,
                              "classes": [{"name": "chat", "concurrency": 48, "prompt_tokens": 512,
                                           "output_tokens": 256, "ttft_ms": 1500, "tpot_ms": 40,
                                           "use_case": "chat_general"}]})
    lo, hi = 0.3, 4.0
    exact_s, result = timed(lambda: price_sweep(scenario, "l40s", lo, hi, world=world), 1)
    prices = [lo + (hi - lo) * i / (grid_points - 1) for i in range(grid_points)]
    grid_s, points = timed(lambda: price_grid(scenario, "l40s", prices, world=world), 1)
    same_plan = sum(p.plan == plan_at_price(result, p.value) for p in points)
    same_cost = sum(abs(p.cost_per_hour - next(s.intercept + s.slope * p.value for s in result.segments
                                               if s.start <= p.value <= s.end)) < 1e-6 for p in points)
    print(f"  price sweep l40s ${lo}-{hi}/h: exact search {result.solves} solves in {exact_s:.2f} s, "
          f"{len(result.breakpoints)} breakpoint(s); grid {grid_points} solves in {grid_s:.2f} s "
          f"({grid_points / result.solves:.0f}x more solves)")
    print(f"    grid points with the same plan as the exact segments: {same_plan}/{grid_points}; "
          f"same cost: {same_cost}/{grid_points}")


def ten_classes() -> list[dict]:
    """THREE_CLASSES and seven more at other lengths and loads (distinct names)."""
    more = []
    for i, (prompt, output, load) in enumerate([(256, 128, 16), (2048, 512, 8), (4096, 256, 1.0), (512, 64, 4.0),
                                                (8000, 500, 4), (128, 1024, 32), (1024, 1024, 0.5)]):
        traffic = {"name": f"extra{i}", "prompt_tokens": prompt, "output_tokens": output, "ttft_ms": 5000,
                   "tpot_ms": 80}
        traffic["concurrency" if isinstance(load, int) else "rate_per_s"] = load
        more.append(traffic)
    return THREE_CLASSES + more


# ---------------------------------------------------------------------------------------------
# issue 11's figures: whole processes, as `quantplan` runs them

# (label, issue baseline in s (its text: this 2-core machine, whole process, median of 5), target in s)
ISSUE_FIGURES = [
    ("full catalog, 1 class", 2.9, None),
    ("full catalog, 3 classes, with alternatives", 10.5, 1.0),
    ("full catalog, 10 classes", 32.0, 3.0),
    ("fleet example (examples/fleet-five-models.toml)", None, 5.0),
    ("sweep --vary concurrency=8:256 --points 9", 41.0, 4.0),
    ("5x5 price x rate region map", 69.0, 10.0),
    ("quantplan fit", 18.0, 3.0),
    ("list gpus", 0.59, 0.3),
    ("estimate", 0.73, 0.3),
]
SLOW = {"full catalog, 10 classes", "sweep --vary concurrency=8:256 --points 9", "5x5 price x rate region map"}

# The fit's other commands, on the same machinery (batched finite differences): (label, argv, before in s:
# commit d88e371, before the batched fit, this machine on Dec 3 under a load average of 4-6, whole
# process; --devices the median of 3 run back to back with the batched fit (1.5 s then), the
# cross-validation one run (5.5 s after, median of 3)). Not issue 11's figures: printed apart, no target.
# `quantplan fit` starts from the catalog's values (since 2026-12-04); --from-start also searches from the fixed
# starting point, as `fit` did before then (its "before": `fit` at the issue's baseline, 18 s).
FIT_FIGURES = [
    ("quantplan fit --from-start", ["fit", "--from-start", "--json"], 18.0),
    ("quantplan fit --devices h100-sxm", ["fit", "--devices", "h100-sxm", "--json"], 9.4),
    ("quantplan fit --cross-validate model", ["fit", "--cross-validate", "model", "--json"], 468.0),
]


def scenario_toml(model: str, classes: list[dict], extra: str = "") -> str:
    """A scenario file (TOML) for `model` and `classes`, as `quantplan solve FILE` reads it."""
    import json

    lines = [f'model = "{model}"', extra, ""]
    for traffic in classes:
        lines.append("[[class]]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in traffic.items()]
        lines.append("")
    return "\n".join(lines)


def issue_commands(folder) -> dict[str, list[str]]:
    """The command behind each of ISSUE_FIGURES (scenario files written to `folder`)."""
    from pathlib import Path

    files = {}
    for name, classes in (("one", ONE_CLASS), ("three", THREE_CLASSES), ("ten", ten_classes())):
        files[name] = Path(folder) / f"{name}.toml"
        files[name].write_text(scenario_toml("llama-3.1-70b", classes))
    sweep_load = ["--model", "llama-3.1-8b", "--ttft-ms", "1000", "--tpot-ms", "40", "--json"]  # README's sweep
    return {
        "full catalog, 1 class": ["solve", str(files["one"]), "--json"],
        "full catalog, 3 classes, with alternatives": ["solve", str(files["three"]), "--json"],
        # as the issue measured it: without alternatives (with them, seven more solves)
        "full catalog, 10 classes": ["solve", str(files["ten"]), "--no-alternatives", "--json"],
        "fleet example (examples/fleet-five-models.toml)": ["solve", "examples/fleet-five-models.toml", "--json"],
        "sweep --vary concurrency=8:256 --points 9": ["sweep", "--vary", "concurrency=8:256", "--points", "9",
                                                      *sweep_load],
        "5x5 price x rate region map": ["sweep", "--price-range", "h100-sxm=1:6", "--vary", "rate=1:20",
                                        "--points", "5", *sweep_load],
        "quantplan fit": ["fit", "--json"],
        "list gpus": ["list", "gpus"],
        "estimate": ["estimate", "--model", "llama-3.1-8b", "--method", "fp8", "--gpu", "h100-sxm",
                     "--framework", "vllm", "--concurrency", "8"],
    }


def issue_figures(repeats: int, quick: bool) -> None:
    """Issue 11's table: issue baseline, now (median of `repeats`; 1 for runs over 10 s), target, met or missed."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        commands = issue_commands(folder)
        print(f"  {'figure':50s} {'issue baseline':>14s} {'now':>9s} {'target':>8s}")
        for label, baseline, target in ISSUE_FIGURES:
            shown = f"{baseline:.2f} s" if baseline is not None else "-"
            goal = f"{target:g} s" if target is not None else "-"
            if quick and label in SLOW:
                print(f"  {label:50s} {shown:>14s} {'skipped (--quick)':>19s}")
                continue
            seconds, code = command_seconds(commands[label], repeats)
            verdict = "" if target is None else ("met" if seconds <= target else "missed")
            if code is None:
                print(f"  {label:50s} {shown:>14s} {'> ' + format(seconds, 'g') + ' s':>9s} {goal:>8s}  "
                      f"{verdict} (stopped)")
                continue
            failed = f"  (exit {code})" if code not in (0, 1) else ""  # 1: a plan that is infeasible
            print(f"  {label:50s} {shown:>14s} {seconds:7.2f} s {goal:>8s}  {verdict}{failed}")


def fit_figures(repeats: int) -> None:
    """FIT_FIGURES: before (the commit before the batched fit) and now."""
    print(f"  {'command':50s} {'before':>14s} {'now':>9s}")
    for label, argv, before in FIT_FIGURES:
        seconds, code = command_seconds(argv, repeats)
        shown = f"{before:.2f} s" if before is not None else "-"
        failed = f"  (exit {code})" if code != 0 else ""
        print(f"  {label:50s} {shown:>14s} {seconds:7.2f} s{failed}")


def command_seconds(argv: list[str], repeats: int, limit: float = 300.0) -> tuple[float, int | None]:
    """Median wall time of `quantplan ARGV` as a whole process (one run when the first takes over 10 s);
    (limit, None) when a run takes longer than `limit` seconds."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "quantplan.cli", *argv]
    times, code = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        try:
            code = subprocess.run(command, capture_output=True, check=False, timeout=limit).returncode
        except subprocess.TimeoutExpired:
            return limit, None
        times.append(time.perf_counter() - start)
        if times[0] > 10:
            break
    return statistics.median(times), code


def synthetic_figures(repeats: int) -> None:
    """How time grows with the catalog: the built-in one and a user catalog holding 9 scaled copies of
    every built-in device (so 10x the devices) and of every model, solved for one class."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        catalog = Path(folder) / "synthetic.toml"
        devices, models = write_synthetic_catalog(catalog, copies=9)
        scenario = Path(folder) / "one.toml"
        scenario.write_text(scenario_toml("llama-3.1-70b", ONE_CLASS))
        rows = [("built-in catalog", []), (f"10x catalog (+{devices} devices, +{models} models)",
                                           ["--catalog", str(catalog)])]
        for label, more in rows:
            listed, _ = command_seconds(["list", "gpus", *more], repeats)
            solved, code = command_seconds(["solve", str(scenario), "--no-alternatives", "--json", *more], repeats)
            configurations = count_configurations(more[1:] if more else [])
            print(f"  {label}: list gpus {listed:.2f} s; solve llama-3.1-70b, 1 class: {solved:.2f} s "
                  f"({configurations} compatible configurations before pricing{'' if code in (0, 1) else f', exit {code}'})")


def count_configurations(catalogs: list[str]) -> int:
    world = load_world(catalogs)
    scenario = make_scenario({"model": "llama-3.1-70b", "classes": ONE_CLASS, "alternatives": False,
                              "catalogs": catalogs})
    from collections import Counter

    from quantplan.solver.space import configurations

    model = world.models.get("llama-3.1-70b")
    return sum(1 for _ in configurations(world, scenario, model, Counter()))


def write_synthetic_catalog(path, copies: int) -> tuple[int, int]:
    """A user catalog of `copies` scaled copies of every built-in device (bandwidth, tensor rates and
    price scaled together, new ids) and of every model (new ids, same shapes); returns the counts added."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "catalogs"
    gpus = tomllib.loads((root / "gpus.toml").read_text())["gpu"]
    models = tomllib.loads((root / "models.toml").read_text())["model"]
    prices = {gpu: price.usd_per_hour for gpu, price in load_world().with_prices({}).items()}
    rates = ("bandwidth_tb_s", "tflops_fp16", "tflops_bf16", "tflops_fp8", "tops_int8", "tflops_fp4")
    lines = ["schema_version = 1", ""]
    added_gpus = added_models = 0
    for k in range(1, copies + 1):
        scale = 1.0 + 0.05 * k
        for gpu in gpus:
            row = {key: value for key, value in gpu.items() if key != "aliases"}
            row.update(id=f"{gpu['id']}-synthetic-{k}", name=f"{gpu['name']} (synthetic copy {k})",
                       source=f"benchmark copy of {gpu['id']}, rates x {scale:g}")
            row.update({key: row[key] * scale for key in rates if isinstance(row.get(key), (int, float))})
            lines += ["[[gpu]]", *_toml_pairs(row), ""]
            added_gpus += 1
            if gpu["id"] in prices:
                lines += ["[[price]]", *_toml_pairs({"gpu": row["id"], "usd_per_hour": prices[gpu["id"]] * scale,
                                                     "provider": "synthetic", "as_of": "2026-12",
                                                     "source": "benchmark: built-in price x the rate scale"}), ""]
        for model in models:
            row = {key: value for key, value in model.items() if key != "aliases"}
            row.update(id=f"{model['id']}-synthetic-{k}")
            lines += ["[[model]]", *_toml_pairs(row), ""]
            added_models += 1
    Path(path).write_text("\n".join(lines))
    return added_gpus, added_models


def _toml_pairs(row: dict) -> list[str]:
    import json

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + "}"
        return json.dumps(v)

    return [f"{key} = {value(v)}" for key, v in row.items()]


def compile_package() -> str:
    """Byte-compile quantplan's modules before timing whole processes, as `pip install` does: a process started
    with PYTHONDONTWRITEBYTECODE set (this workplace sets it) compiles every module whose cached bytecode is
    stale, on every start, and never writes it (cli.py alone is ~1,100 lines)."""
    import compileall
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    ok = all(compileall.compile_dir(str(root / folder), quiet=1) for folder in ("solver", "plugins", "catalogs"))
    ok = all([compileall.compile_file(str(root / name), quiet=1) for name in ("cli.py", "__init__.py")]) and ok
    return "bytecode compiled first" if ok else "bytecode NOT compiled: a module failed to compile"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--grid", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="Skip the 10-class solve and the price sweep.")
    args = parser.parse_args()
    world = load_world()
    print("Full built-in catalog, llama-3.1-70b:")
    solve_figures(world, ONE_CLASS, args.repeats)
    solve_figures(world, THREE_CLASSES, args.repeats)
    if not args.quick:
        solve_figures(world, ten_classes(), 1)
    print("HiGHS's share of a planning run (one process, one CPU):")
    solver_share(world, THREE_CLASSES, alternatives=True)
    if not args.quick:
        solver_share(world, ten_classes(), alternatives=False)
    print("Candidate evaluation over two processes:")
    fork_figures(min(args.repeats, 3))
    if not args.quick:
        print("Price sweep:")
        sweep_figures(world, args.grid)
    compiled = compile_package()
    print(f"Issue 11 figures (wall time, median of up to {args.repeats} whole processes; shared machine; "
          f"{compiled}):")
    issue_figures(args.repeats, args.quick)
    if not args.quick:
        print("The fit's other commands (wall time, whole processes):")
        fit_figures(min(args.repeats, 3))
    if not args.quick:
        print("How time grows with the catalog:")
        synthetic_figures(min(args.repeats, 3))


if __name__ == "__main__":
    main()
