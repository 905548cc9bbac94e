"""Sweeps: exact price breakpoints checked against independent solves, and the monotonicity the
economics implies (concave in one price, never cheaper when a price rises, never dearer when an SLO
loosens or a device is added)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from quantplan.cli import cli
from quantplan.solver import grid
from quantplan.solver.api import solve
from quantplan.solver.scenario import make_scenario
from quantplan.solver.sweep import plan_at_price, price_grid, price_sweep

DEVICES = ["a100-80gb", "l40s", "l4", "a10g", "h100-sxm"]


def chat_scenario(**update):
    fields = {"model": "llama-3.1-8b", "gpus": DEVICES, "max_gpus": 2, "alternatives": False,
              "classes": [{"name": "chat", "concurrency": 48, "prompt_tokens": 512, "output_tokens": 256,
                           "ttft_ms": 1500, "tpot_ms": 40, "use_case": "chat_general"}]}
    fields.update(update)
    return make_scenario(fields)


@pytest.fixture(scope="module")
def l40s_sweep():
    return price_sweep(chat_scenario(), "l40s", 0.3, 4.0)


def test_breakpoints_hold_just_left_and_right(l40s_sweep):
    assert l40s_sweep.breakpoints, "the L40S price should change the plan somewhere in $0.3-4/h"
    for breakpoint in l40s_sweep.breakpoints:
        left = price_grid(chat_scenario(), "l40s", [breakpoint.value * (1 - 1e-4)])[0]
        right = price_grid(chat_scenario(), "l40s", [breakpoint.value * (1 + 1e-4)])[0]
        assert left.plan == breakpoint.plan_before
        assert right.plan == breakpoint.plan_after


def test_segments_are_continuous_and_match_independent_solves(l40s_sweep):
    segments = l40s_sweep.segments
    for before, after in zip(segments, segments[1:]):
        assert before.end == pytest.approx(after.start)
        assert before.cost_per_hour_at_to == pytest.approx(after.cost_per_hour_at_from, rel=1e-6)
    prices = [min(4.0, 0.3 + i * 3.7 / 24) for i in range(25)]
    for point in price_grid(chat_scenario(), "l40s", prices):
        segment = next(s for s in segments if s.start <= point.value <= s.end)
        assert point.cost_per_hour == pytest.approx(segment.intercept + segment.slope * point.value, rel=1e-6)
        on_breakpoint = any(abs(point.value - b.value) < 1e-9 for b in l40s_sweep.breakpoints)
        if not on_breakpoint:
            assert point.plan == plan_at_price(l40s_sweep, point.value)


def test_cost_is_concave_and_never_falls_as_the_price_rises(l40s_sweep):
    slopes = [s.slope for s in l40s_sweep.segments]
    assert all(s >= 0 for s in slopes)  # a dearer L40S never makes the plan cheaper
    assert slopes == sorted(slopes, reverse=True)  # slopes only fall: concave
    costs = [s.cost_per_hour_at_from for s in l40s_sweep.segments] + [l40s_sweep.segments[-1].cost_per_hour_at_to]
    assert costs == sorted(costs)


def test_exact_search_uses_far_fewer_solves_than_a_grid(l40s_sweep):
    assert l40s_sweep.solves <= 4 * len(l40s_sweep.breakpoints) + 3


def test_loosening_an_slo_or_adding_a_device_never_raises_the_cost():
    tight = solve(chat_scenario()).cost_per_hour
    looser = solve(chat_scenario(classes=[{"name": "chat", "concurrency": 48, "prompt_tokens": 512,
                                           "output_tokens": 256, "ttft_ms": 3000, "tpot_ms": 60,
                                           "use_case": "chat_general"}])).cost_per_hour
    fewer = solve(chat_scenario(gpus=["a100-80gb", "l4"])).cost_per_hour
    assert looser <= tight <= fewer


def test_grid_engines_agree_with_the_serial_run():
    scenario = chat_scenario()
    values = [800.0, 1500.0, 3000.0]
    serial = grid.grid_sweep(scenario, "ttft", values, engine="serial")
    processes = grid.grid_sweep(scenario, "ttft", values, engine="processes")
    assert [p.model_dump() for p in processes] == [p.model_dump() for p in serial]
    costs = [p.cost_per_hour for p in serial if p.cost_per_hour is not None]
    assert costs == sorted(costs, reverse=True)  # a looser TTFT never costs more


FORKED_SWEEP = """
import json, sys
from quantplan.solver import forked, grid
from quantplan.solver.scenario import make_scenario
calls = []
spread = forked.spread
def counted(function, items, *args, **kwargs):
    calls.append((len(items), kwargs.get("run")))
    return spread(function, items, *args, **kwargs)
forked.spread = counted
scenario = make_scenario(json.loads(sys.argv[1]))
axis, values = sys.argv[2], json.loads(sys.argv[3])
points = grid.grid_sweep(scenario, axis, values, engine=sys.argv[4])
print(json.dumps({"points": [p.model_dump() for p in points], "calls": calls}))
"""


@pytest.mark.skipif(__import__("sys").platform != "linux", reason="points are forked on Linux only")
@pytest.mark.parametrize("axis, values, run", [("concurrency", [16.0, 48.0, 96.0], 1),
                                               ("price:l40s", [0.5, 1.0, 2.0], 2)])
def test_a_fresh_process_forks_its_points_after_one_first_pass_and_agrees_with_the_serial_run(axis, values, run):
    """In a process where no solver has run yet, `--engine processes` makes the first passes once, then shares the
    points with a forked child (grid._forked_points): one at a time, or in halves where a price is swept (a process
    re-prices the space of the load it holds). Each run in its own interpreter: the points' plans equal the serial
    engine's, and one spread is over the points themselves (run: items taken at a time), which the serial run has
    not."""
    import os
    import subprocess
    import sys

    scenario = json.dumps(chat_scenario().model_dump())
    found = {}
    for engine in ("serial", "processes"):
        result = subprocess.run([sys.executable, "-c", FORKED_SWEEP, scenario, axis, json.dumps(values), engine],
                                capture_output=True, text=True, check=True, timeout=300,
                                env={**os.environ, "QUANTPLAN_FORK": "1"})
        found[engine] = json.loads(result.stdout)
    assert found["processes"]["points"] == found["serial"]["points"]
    if (os.cpu_count() or 1) >= 2:
        assert [len(values), run] in found["processes"]["calls"]
        assert [len(values), run] not in found["serial"]["calls"]


def test_dask_local_cluster_agrees_with_the_serial_run():
    pytest.importorskip("dask.distributed")
    scenario = chat_scenario()
    values = [24.0, 48.0]
    serial = grid.grid_sweep(scenario, "concurrency", values, engine="serial")
    dask = grid.grid_sweep(scenario, "concurrency", values, engine="dask")
    assert [p.model_dump() for p in dask] == [p.model_dump() for p in serial]
    assert serial[0].cost_per_hour <= serial[1].cost_per_hour  # more users never cost less


def _devices(plan: str) -> dict[str, int]:
    """GPUs per device in a plan label such as '2x[1x l4 fp8 ...] + 1x[2x l40s ...]'."""
    import re

    counts: dict[str, int] = {}
    for replicas, gpus, device in re.findall(r"(\d+)x\[(\d+)x (\S+)", plan):
        counts[device] = counts.get(device, 0) + int(replicas) * int(gpus)
    return counts


def test_price_factor_scales_the_cost_and_keeps_the_devices():
    """Scaling every price leaves the optimal set unchanged: the same devices, cost scaled (the solver
    may return another optimal arrangement of them, e.g. one TP2 replica for two TP1 replicas)."""
    points = grid.grid_sweep(chat_scenario(), "price-factor", [0.5, 1.0, 2.0], engine="serial")
    assert _devices(points[0].plan) == _devices(points[1].plan) == _devices(points[2].plan)
    assert points[0].cost_per_hour * 4 == pytest.approx(points[2].cost_per_hour)


def test_cli_price_sweep_json_csv_and_plots(tmp_path):
    runner = CliRunner()
    png, svg, table = tmp_path / "sweep.png", tmp_path / "sweep.svg", tmp_path / "sweep.csv"
    args = ["sweep", "--model", "llama-3.1-8b", "--concurrency", "48", "--prompt-tokens", "512",
            "--output-tokens", "256", "--ttft-ms", "1500", "--tpot-ms", "40", "--use-case", "chat_general",
            "--max-gpus", "2", "--price-range", "l40s=0.3:4"] + [a for d in DEVICES for a in ("--gpu", d)]
    result = runner.invoke(cli, args + ["--json", "--plot", str(png), "--csv", str(table)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["solves"] >= 3 and data["breakpoints"]
    assert set(data["segments"][0]) >= {"from", "to", "plan", "cost_per_hour_at_from", "cost_per_hour_at_to"}
    assert set(data["breakpoints"][0]) == {"value", "plan_before", "plan_after"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert table.read_text().splitlines()[0].startswith("from ($/h),to ($/h)")
    assert len(table.read_text().splitlines()) == len(data["segments"]) + 1
    result = runner.invoke(cli, args + ["--plot", str(svg)])
    assert result.exit_code == 0 and b"<svg" in svg.read_bytes()[:500]


def test_cli_two_axis_region_map(tmp_path):
    png = tmp_path / "map.png"
    result = CliRunner().invoke(cli, ["sweep", "--model", "llama-2-7b", "--gpu", "a100-80gb", "--gpu", "l40s",
                                      "--concurrency", "8", "--price-range", "a100-80gb=0.5:4",
                                      "--price-range", "l40s=0.5:3", "--points", "3", "--engine", "serial",
                                      "--json", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["solves"] == 9 and len(data["points"]) == 9
    cheap_a100 = next(p for p in data["points"] if p["x"] == 0.5 and p["y"] == 3.0)
    cheap_l40s = next(p for p in data["points"] if p["x"] == 4.0 and p["y"] == 0.5)
    assert "a100-80gb" in cheap_a100["plan"] and "l40s" in cheap_l40s["plan"]
    assert png.stat().st_size > 1000


def test_sweep_rejects_a_bad_range():
    result = CliRunner().invoke(cli, ["sweep", "--model", "llama-2-7b", "--price-range", "l40s=3:1"])
    assert result.exit_code == 2 and "FROM must be below TO" in result.output


def test_a_concurrency_sweep_makes_first_passes_once_and_cuts_each_points_sizes_out_of_them():
    """A concurrency sweep's points cut the batch sizes at their own number of users (space.useful_batches); with
    the grid's union as the hint (grid.batch_hint), each configuration's first pass is made once over all of them
    and every point takes its own sizes out: the candidate space of each point, option by option, and the plan are
    those built without the hint."""
    from quantplan.solver import space
    from quantplan.solver.registry import load_world

    base = chat_scenario(classes=[
        {"name": "chat", "concurrency": 8, "prompt_tokens": 512, "output_tokens": 256, "ttft_ms": 1500, "tpot_ms": 40},
        {"name": "long", "concurrency": 4, "prompt_tokens": 4000, "output_tokens": 300, "ttft_ms": 3000,
         "tpot_ms": 60}])
    points = [(8.0,), (200.0,)]
    hint = grid.batch_hint(base, ("concurrency",), points)
    # two classes of `value` users each: the default sizes up to 2 x value, and value itself
    assert hint == (1, 2, 4, 8, 16, 32, 64, 128, 200, 256)
    world = load_world()
    for (value,) in points:
        scenario = grid.vary(base, "concurrency", value, None)
        with space.expected_batches(hint):
            assert space._first_pass_batches(space.useful_batches(scenario)) == list(hint)
            hinted = space.build_space(world, scenario, world.with_prices({}))
        plain = space.build_space(load_world(), scenario, world.with_prices({}))  # a fresh world: nothing kept
        assert [repr(o) for o in hinted.options] == [repr(o) for o in plain.options]
        assert hinted.incompatible == plain.incompatible and repr(hinted.per_class) == repr(plain.per_class)
    assert grid.batch_hint(base, ("rate",), [(1.0,), (2.0,)]) == ()


def test_a_concurrency_sweeps_points_share_their_figures_and_options():
    """Points cut from the same first passes read one set of closed-loop figures made at every size of the hint
    (space._whole_figures) and take again the options an earlier point made at a size they share: the same objects,
    so pruning's figures kept on them serve both points. Each point's space, option by option, and its diagnostics
    are still those built without the hint."""
    from quantplan.solver import space
    from quantplan.solver.registry import load_world

    base = chat_scenario(gpus=["l40s", "a10g"], classes=[
        {"name": "chat", "concurrency": 8, "prompt_tokens": 512, "output_tokens": 256, "ttft_ms": 1500,
         "tpot_ms": 40}])
    points = [(12.0,), (24.0,), (300.0,)]
    hint = grid.batch_hint(base, ("concurrency",), points)
    world = load_world()
    built = {}
    with space.expected_batches(hint):  # the points one after another, as a sweep's process solves them
        for (value,) in points:
            built[value] = space.build_space(world, grid.vary(base, "concurrency", value, None), world.with_prices({}))
    for (value,) in points:
        scenario = grid.vary(base, "concurrency", value, None)
        plain = space.build_space(load_world(), scenario, world.with_prices({}))  # a fresh world: nothing kept
        assert [repr(o) for o in built[value].options] == [repr(o) for o in plain.options]
        assert repr(built[value].per_class) == repr(plain.per_class)
    first = {o.key: o for o in built[12.0].options}
    shared = [o for o in built[24.0].options if o.key in first]
    assert shared and all(first[o.key] is o for o in shared)  # the same objects at the sizes both points have
    # the figures behind them are one set for both points
    figures = {id(o.performance._names["chat"][0]) for o in built[12.0].options + built[24.0].options}
    assert len(figures) == 1
