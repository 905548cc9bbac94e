"""Sweep plots (PNG or SVG): cost against the swept value coloured by plan, or a two-axis region map."""

from __future__ import annotations

from pathlib import Path

from .errors import QuantplanError


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise QuantplanError("plots need matplotlib: pip install 'quantplan[plot]'") from None
    return plt


def check_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg"):
        raise QuantplanError(f"--plot {path}: the file must end in .png or .svg")
    return path


def _legend_names(plans: list[str]) -> dict[str, str]:
    return {plan: f"P{index + 1}" for index, plan in enumerate(dict.fromkeys(plans))}


def _legend_share(figure, entries: int) -> float:
    """Share of the figure height the legend below the axes takes (about 0.2 inch per entry)."""
    return min(0.6, (0.3 + 0.2 * entries) / figure.get_figheight())


def _wrap(text: str, width: int = 95) -> str:
    words, lines, line = text.split(" "), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])


def plot_price_sweep(result, path: str | Path, title: str) -> Path:
    """Segments of the optimal cost line, one colour per plan; breakpoints marked and labelled."""
    path, plt = check_path(path), _pyplot()
    names = _legend_names([s.plan for s in result.segments])
    colours = plt.get_cmap("tab10")
    figure, axis = plt.subplots(figsize=(10, 5 + 0.2 * len(names)))
    for segment in result.segments:
        index = list(names).index(segment.plan)
        axis.plot([segment.start, segment.end], [segment.cost_per_hour_at_from, segment.cost_per_hour_at_to],
                  color=colours(index % 10), linewidth=3, label=_wrap(f"{names[segment.plan]}: {segment.plan}"))
    for breakpoint in result.breakpoints:
        axis.axvline(breakpoint.value, color="grey", linestyle="--", linewidth=1)
        axis.annotate(f"${breakpoint.value:.3f}", (breakpoint.value, axis.get_ylim()[1]), rotation=90,
                      va="top", ha="right", fontsize=8)
    axis.set_xlabel(f"{result.axis.split(':', 1)[-1]} price ($/device-hour)")
    axis.set_ylabel("plan cost ($/hour)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    handles, labels = axis.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    figure.legend(unique.values(), unique.keys(), loc="lower center", fontsize=7, frameon=False)
    figure.tight_layout(rect=(0, _legend_share(figure, len(unique)), 1, 1))
    figure.savefig(path)
    plt.close(figure)
    return path


def plot_points(points, path: str | Path, axis_name: str, title: str) -> Path:
    """Cost at each grid point, coloured by plan; infeasible points marked on the axis."""
    path, plt = check_path(path), _pyplot()
    feasible = [p for p in points if p.cost_per_hour is not None]
    names = _legend_names([p.plan for p in feasible])
    colours = plt.get_cmap("tab10")
    figure, axis = plt.subplots(figsize=(10, 5 + 0.2 * len(names)))
    for index, (plan, short) in enumerate(names.items()):
        chosen = [p for p in feasible if p.plan == plan]
        axis.plot([p.value for p in chosen], [p.cost_per_hour for p in chosen], "o-", color=colours(index % 10),
                  markersize=4, label=_wrap(f"{short}: {plan}"))
    missing = [p.value for p in points if p.cost_per_hour is None]
    if missing:
        axis.plot(missing, [0] * len(missing), "x", color="black", label="infeasible")
    axis.set_xlabel(axis_name)
    axis.set_ylabel("plan cost ($/hour)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    figure.legend(loc="lower center", fontsize=7, frameon=False)
    figure.tight_layout(rect=(0, _legend_share(figure, len(names) + bool(missing)), 1, 1))
    figure.savefig(path)
    plt.close(figure)
    return path


def plot_region_map(xs: list[float], ys: list[float], plans: list[list[str]], path: str | Path,
                    x_name: str, y_name: str, title: str) -> Path:
    """Two swept values: each cell coloured by its optimal plan, with a legend naming the plans."""
    path, plt = check_path(path), _pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    names = _legend_names([plan for row in plans for plan in row])
    index = {plan: i for i, plan in enumerate(names)}
    grid = [[index[plan] for plan in row] for row in plans]
    colours = ListedColormap([plt.get_cmap("tab20")(i % 20) for i in range(max(len(names), 1))])
    figure, axis = plt.subplots(figsize=(9, 6 + 0.2 * len(names)))
    axis.imshow(grid, origin="lower", aspect="auto", cmap=colours, vmin=-0.5, vmax=len(names) - 0.5,
                extent=(xs[0], xs[-1], ys[0], ys[-1]), interpolation="nearest")
    axis.set_xlabel(x_name)
    axis.set_ylabel(y_name)
    axis.set_title(title)
    handles = [Patch(color=colours(i), label=_wrap(f"{short}: {plan}")) for plan, short in names.items()
               for i in [index[plan]]]
    figure.legend(handles=handles, loc="lower center", fontsize=7, frameon=False)
    figure.tight_layout(rect=(0, _legend_share(figure, len(names)), 1, 1))
    figure.savefig(path)
    plt.close(figure)
    return path
