"""One entry for every kind of sweep: the table, JSON and plot that `quantplan sweep` shows."""

from __future__ import annotations

from dataclasses import dataclass

from . import grid, plots
from . import sweep as exact
from .errors import QuantplanError
from .scenario import Scenario

Axis = tuple[str, float, float]  # ("price:<device>" or a grid axis, from, to)


@dataclass
class SweepTable:
    data: dict  # what --json prints
    columns: list[str]
    rows: list[list[str]]
    title: str


def _cost(value) -> str:
    return f"{value:.3f}" if value is not None else "-"


def run(scenario: Scenario, axes: list[Axis], points: int = 11, engine: str = "processes",
        address: str | None = None, plot_path: str | None = None, progress=None) -> SweepTable:
    """Exact breakpoints for one price axis; a grid for any other axis; a region map for two axes."""
    if not 1 <= len(axes) <= 2:
        raise QuantplanError("give one or two axes: --price-range DEV=FROM:TO and/or --vary AXIS=FROM:TO")
    for name, lo, hi in axes:
        if not lo < hi:
            raise QuantplanError(f"sweep {name}: FROM must be below TO")
    check_axes(scenario, axes, points)
    if plot_path:
        plots.check_path(plot_path)  # a bad file name is bad input: say so before any solving
    title = f"{scenario.model or scenario.model_config_path}: " + " x ".join(a[0] for a in axes)
    if len(axes) == 2:
        return _region(scenario, axes, points, engine, address, plot_path, progress, title)
    name, lo, hi = axes[0]
    if name.startswith("price:"):
        result = exact.price_sweep(scenario, name.split(":", 1)[1], lo, hi, progress=progress)
        if plot_path:
            plots.plot_price_sweep(result, plot_path, title)
        rows = [[f"{s.start:.4g}", f"{s.end:.4g}", _cost(s.cost_per_hour_at_from), _cost(s.cost_per_hour_at_to), s.plan]
                for s in result.segments]
        return SweepTable(result.as_json(), ["from ($/h)", "to ($/h)", "plan $/h at from", "plan $/h at to", "plan"],
                          rows, title)
    values = grid.linspace(lo, hi, points)
    found = grid.grid_sweep(scenario, name, values, engine, address, progress=progress)
    if plot_path:
        plots.plot_points(found, plot_path, name, title)
    data = {"axis": name, "from": lo, "to": hi, "solves": len(values), "points": [p.model_dump() for p in found]}
    rows = [[f"{p.value:.4g}", p.status, _cost(p.cost_per_hour), p.plan] for p in found]
    return SweepTable(data, [name, "status", "plan $/h", "plan"], rows, title)


MAX_POINTS = 1_000


def check_axes(scenario: Scenario, axes: list[Axis], points: int) -> None:
    """Bad input before any solving: non-finite ends, too many points, and ends that make an invalid
    scenario (a rate above the limit, a price factor that pushes a price past the plausible bound)."""
    import math

    from .registry import load_world

    if not 2 <= points <= MAX_POINTS:
        raise QuantplanError(f"--points {points}: give 2 to {MAX_POINTS} points per axis")
    world = None
    for name, lo, hi in axes:
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise QuantplanError(f"sweep {name}={lo:g}:{hi:g}: give finite numbers")
        if name.startswith("price") and world is None:
            world = load_world(scenario.catalogs)
        for value in (lo, hi):
            varied = grid.vary(scenario, name, value, world)
            if name.startswith("price"):
                world.with_prices(varied.prices)


def _region(scenario, axes, points, engine, address, plot_path, progress, title) -> SweepTable:
    (x_name, x_lo, x_hi), (y_name, y_lo, y_hi) = axes
    xs, ys = grid.linspace(x_lo, x_hi, points), grid.linspace(y_lo, y_hi, points)
    results = grid.run_points(scenario, (x_name, y_name), [(x, y) for y in ys for x in xs], engine, address,
                              progress=progress)
    cells = [{"x": r["values"][0], "y": r["values"][1], "status": r["status"], "plan": r["plan"],
              "cost_per_hour": r["cost_per_hour"]} for r in results]
    if plot_path:
        plans = [[c["plan"] if c["status"] != "infeasible" else "infeasible" for c in cells[i:i + len(xs)]]
                 for i in range(0, len(cells), len(xs))]
        plots.plot_region_map(xs, ys, plans, plot_path, x_name, y_name, title)
    data = {"axes": [x_name, y_name], "x": xs, "y": ys, "solves": len(cells), "points": cells}
    rows = [[f"{c['x']:.4g}", f"{c['y']:.4g}", c["status"], _cost(c["cost_per_hour"]), c["plan"]] for c in cells]
    return SweepTable(data, [x_name, y_name, "status", "plan $/h", "plan"], rows, title)
