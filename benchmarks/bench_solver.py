"""Benchmark: candidates, build and solve time on the full catalog, and exact price sweeps vs a grid.

Run: python benchmarks/bench_solver.py [--grid 1000] [--repeats 5]
Prints figures; asserts nothing (speed targets live here, not in unit tests: machines are noisy).
"""

from __future__ import annotations

import argparse
import statistics
import time

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
    prune_s, options = timed(lambda: prune_dominated(space.options, scenario.classes), 1)  # cost objective
    build_s, _ = timed(lambda: program.build(options, scenario.classes, {}, None), repeats)
    solve_s, solution = timed(lambda: program.solve(options, scenario.classes, {}), repeats)
    print(f"  {len(classes)} class(es): {space.configurations} configurations, {len(space.options)} candidates, "
          f"{len(options)} after pruning")
    print(f"    candidate generation {space_s:.2f} s, pruning {prune_s:.3f} s, "
          f"program build {build_s:.3f} s (median of {repeats}), build + solve to proven optimum "
          f"{solve_s:.3f} s (median of {repeats}), status {solution.status}, ${solution.cost_per_hour:.2f}/h")


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


TARGETS_S = {"3 classes": 1.0, "10 classes": 3.0, "fleet example": 5.0, "list gpus": 0.3, "estimate": 0.3}


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


def process_seconds(argv: list[str], repeats: int) -> float:
    """Whole-process wall time of a quantplan command (median)."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "quantplan.cli", *argv]
    return timed(lambda: subprocess.run(command, capture_output=True, check=False), repeats)[0]


def whole_figures(repeats: int) -> None:
    """The figures users feel: whole processes, as `quantplan` runs them (median of `repeats`)."""
    rows = [
        ("list gpus", ["list", "gpus"]),
        ("estimate", ["estimate", "--model", "llama-3.1-8b", "--method", "fp8", "--gpu", "h100-sxm",
                      "--framework", "vllm", "--concurrency", "8"]),
        ("fleet example", ["solve", "examples/fleet-five-models.toml", "--json"]),
    ]
    for label, argv in rows:
        seconds = process_seconds(argv, repeats if label != "fleet example" else 1)
        target = TARGETS_S.get(label)
        print(f"  {label}: {seconds:.2f} s" + (f" (target {target:g} s: {'met' if seconds <= target else 'missed'})"
                                               if target else ""))


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
    print("Whole processes:")
    whole_figures(args.repeats)
    if not args.quick:
        print("Price sweep:")
        sweep_figures(world, args.grid)


if __name__ == "__main__":
    main()
