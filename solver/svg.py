"""Inline SVG charts for the report page, written by hand: no plotting library, no script, same bytes each run."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

# matplotlib's tab10 and five stops of viridis, as hex (colours only; nothing else taken)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
SCALE = ("#440154", "#3b528b", "#21918c", "#5ec962", "#fde725")
FONT = 'font-family="system-ui, sans-serif" font-size="11"'


def _n(value: float) -> str:
    """A coordinate with two decimals: short, and the same text every run."""
    return f"{value:.2f}"


def label(value: float) -> str:
    """An axis tick: 0.5, 2, 150, 2,000, 30k."""
    if value >= 10_000:
        return f"{value / 1000:g}k"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


@dataclass(frozen=True)
class Axis:
    """Maps data values in [lo, hi] to pixels in [start, end] (end < start for a y axis), log or linear."""

    lo: float
    hi: float
    start: float
    end: float
    log: bool = False

    @classmethod
    def fitted(cls, values: list[float], start: float, end: float) -> Axis:
        """Padded around the values; logarithmic when they span more than a factor of 20 and are positive."""
        lo, hi = min(values), max(values)
        if lo > 0 and hi / lo > 20:
            return cls(lo / 1.25, hi * 1.25, start, end, log=True)
        pad = (hi - lo) * 0.08 or abs(hi) * 0.1 or 1.0
        return cls(max(lo - pad, 0.0) if lo >= 0 else lo - pad, hi + pad, start, end)

    def at(self, value: float) -> float:
        if self.log:
            share = math.log(value / self.lo) / math.log(self.hi / self.lo)
        else:
            share = (value - self.lo) / (self.hi - self.lo)
        return self.start + share * (self.end - self.start)

    def ticks(self) -> list[float]:
        if self.log:
            found = []
            for power in range(math.floor(math.log10(self.lo)), math.ceil(math.log10(self.hi)) + 1):
                found += [m * 10.0 ** power for m in (1, 2, 5) if self.lo <= m * 10.0 ** power <= self.hi]
            return found
        raw = (self.hi - self.lo) / 5
        magnitude = 10 ** math.floor(math.log10(raw))
        step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
        first = math.ceil(self.lo / step) * step
        return [round(first + i * step, 10) for i in range(int((self.hi - first) / step) + 1)]


def colour_on_scale(share: float) -> str:
    """A colour along the five-stop scale, share in [0, 1]."""
    share = min(max(share, 0.0), 1.0) * (len(SCALE) - 1)
    index = min(int(share), len(SCALE) - 2)
    t = share - index
    a, b = (tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in SCALE[index:index + 2])
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(a, b))


def _frame(width: int, height: int, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" role="img" aria-label="{escape(title)}" {FONT}>'
            f"<title>{escape(title)}</title>" + "".join(body) + "</svg>")


def _axes(x: Axis, y: Axis, x_title: str, y_title: str) -> list[str]:
    parts = []
    left, right, bottom, top = x.start, x.end, y.start, y.end
    for tick in x.ticks():
        px = _n(x.at(tick))
        parts.append(f'<line x1="{px}" y1="{_n(top)}" x2="{px}" y2="{_n(bottom)}" stroke="#e5e5e5"/>'
                     f'<text x="{px}" y="{_n(bottom + 14)}" text-anchor="middle">{label(tick)}</text>')
    for tick in y.ticks():
        py = _n(y.at(tick))
        parts.append(f'<line x1="{_n(left)}" y1="{py}" x2="{_n(right)}" y2="{py}" stroke="#e5e5e5"/>'
                     f'<text x="{_n(left - 5)}" y="{py}" text-anchor="end" dominant-baseline="middle">'
                     f"{label(tick)}</text>")
    parts.append(f'<rect x="{_n(left)}" y="{_n(top)}" width="{_n(right - left)}" height="{_n(bottom - top)}" '
                 f'fill="none" stroke="#888"/>')
    parts.append(f'<text x="{_n((left + right) / 2)}" y="{_n(bottom + 32)}" text-anchor="middle">'
                 f"{escape(x_title)}{' (log scale)' if x.log else ''}</text>")
    parts.append(f'<text transform="translate(14 {_n((top + bottom) / 2)}) rotate(-90)" text-anchor="middle">'
                 f"{escape(y_title)}{' (log scale)' if y.log else ''}</text>")
    return parts


@dataclass(frozen=True)
class Dot:
    x: float
    y: float
    shade: float  # 0..1 along the colour scale
    tip: str  # shown on hover (an SVG <title>)
    front: bool = False  # on the Pareto front: drawn larger with an outline
    chosen: bool = False  # the plan: drawn as a red ring, labelled


def scatter(dots: list[Dot], x_title: str, y_title: str, shade_title: str, shade_range: tuple[float, float],
            title: str, width: int = 900, height: int = 460) -> str:
    """Scatter of candidates: colour = third figure (legend bar on the right), front and chosen marked."""
    x = Axis.fitted([d.x for d in dots], 70, width - 150)
    y = Axis.fitted([d.y for d in dots], height - 50, 20)
    body = _axes(x, y, x_title, y_title)
    for dot in sorted(dots, key=lambda d: (d.front, d.chosen)):  # the front and the plan on top
        radius, stroke = (5, ' stroke="#111" stroke-width="1.2"') if dot.front else (2.5, "")
        body.append(f'<circle cx="{_n(x.at(dot.x))}" cy="{_n(y.at(dot.y))}" r="{radius}" '
                    f'fill="{colour_on_scale(dot.shade)}" fill-opacity="{0.95 if dot.front else 0.55}"{stroke}>'
                    f"<title>{escape(dot.tip)}</title></circle>")
    for dot in (d for d in dots if d.chosen):
        cx, cy = _n(x.at(dot.x)), _n(y.at(dot.y))
        body.append(f'<circle cx="{cx}" cy="{cy}" r="10" fill="none" stroke="#d62728" stroke-width="2.5">'
                    f"<title>{escape(dot.tip)}</title></circle>"
                    f'<text x="{_n(x.at(dot.x) + 13)}" y="{_n(y.at(dot.y) - 8)}" fill="#d62728" '
                    f'font-weight="bold">chosen plan</text>')
    body += _shade_legend(width - 120, 20, height - 70, shade_title, shade_range)
    return _frame(width, height, title, body)


def _shade_legend(left: float, top: float, height: float, title: str, extent: tuple[float, float]) -> list[str]:
    steps = 20
    parts = [f'<text x="{_n(left)}" y="{_n(top + 8)}">{escape(title)}</text>']
    for i in range(steps):
        share = 1 - i / (steps - 1)
        parts.append(f'<rect x="{_n(left)}" y="{_n(top + 16 + i * (height - 20) / steps)}" width="14" '
                     f'height="{_n((height - 20) / steps + 0.5)}" fill="{colour_on_scale(share)}"/>')
    lo, hi = extent
    parts.append(f'<text x="{_n(left + 20)}" y="{_n(top + 26)}">{hi:.3g}</text>'
                 f'<text x="{_n(left + 20)}" y="{_n(top + height - 6)}">{lo:.3g}</text>')
    parts.append(f'<circle cx="{_n(left + 7)}" cy="{_n(top + height + 20)}" r="5" fill="#ccc" stroke="#111"/>'
                 f'<text x="{_n(left + 18)}" y="{_n(top + height + 24)}">Pareto front</text>')
    return parts


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    cost_at_start: float
    cost_at_end: float
    plan: int  # index into the plan names


def price_lines(segments: list[Segment], breakpoints: list[float], marker: float | None, x_title: str,
                y_title: str, title: str, width: int = 900, height: int = 320) -> str:
    """Optimal cost against one price: one coloured line per plan, breakpoints dashed, today's price marked."""
    x = Axis(segments[0].start, segments[-1].end, 70, width - 20)
    costs = [c for s in segments for c in (s.cost_at_start, s.cost_at_end)]
    y = Axis.fitted(costs + [0.0], height - 50, 20)
    body = _axes(x, y, x_title, y_title)
    for value in breakpoints:
        body.append(f'<line x1="{_n(x.at(value))}" y1="{_n(y.end)}" x2="{_n(x.at(value))}" y2="{_n(y.start)}" '
                    f'stroke="#666" stroke-dasharray="4 3"><title>breakpoint ${value:.4g}/h</title></line>')
    for segment in segments:
        body.append(f'<line x1="{_n(x.at(segment.start))}" y1="{_n(y.at(segment.cost_at_start))}" '
                    f'x2="{_n(x.at(segment.end))}" y2="{_n(y.at(segment.cost_at_end))}" '
                    f'stroke="{PALETTE[segment.plan % len(PALETTE)]}" stroke-width="4" stroke-linecap="round">'
                    f"<title>P{segment.plan + 1}: ${segment.cost_at_start:.2f}-{segment.cost_at_end:.2f}/h</title>"
                    "</line>")
    if marker is not None and x.lo <= marker <= x.hi:
        body.append(f'<line x1="{_n(x.at(marker))}" y1="{_n(y.end)}" x2="{_n(x.at(marker))}" y2="{_n(y.start)}" '
                    f'stroke="#d62728" stroke-width="1.5"/><text x="{_n(x.at(marker) + 4)}" y="{_n(y.end + 12)}" '
                    f'fill="#d62728">price planned at</text>')
    return _frame(width, height, title, body)


def stacked_bars(rows: list[tuple[str, list[tuple[str, float, str]]]], unit: str, title: str,
                 width: int = 900) -> str:
    """Horizontal bars, one per row, each a stack of (part, value, colour); a legend of the parts below."""
    height = 40 + 34 * len(rows) + 30
    most = max(sum(v for _, v, _ in parts) for _, parts in rows) or 1.0
    x = Axis(0.0, most, 230, width - 80)  # room for the total on the right
    body, legend = [], {}
    for index, (name, parts) in enumerate(rows):
        top = 20 + index * 34
        body.append(f'<text x="222" y="{top + 13}" text-anchor="end">{escape(name)}</text>')
        start = 0.0
        for part, value, colour in parts:
            legend.setdefault(part, colour)
            if value <= 0:
                continue
            body.append(f'<rect x="{_n(x.at(start))}" y="{top}" width="{_n(x.at(start + value) - x.at(start))}" '
                        f'height="22" fill="{colour}" stroke="#fff"><title>{escape(part)}: {value:.2f} {unit}'
                        "</title></rect>")
            start += value
        body.append(f'<text x="{_n(x.at(start) + 4)}" y="{top + 15}">{start:.1f} {unit}</text>')
    bottom = 20 + len(rows) * 34 + 10
    left = 230.0
    for part, colour in legend.items():
        body.append(f'<rect x="{_n(left)}" y="{bottom}" width="12" height="12" fill="{colour}"/>'
                    f'<text x="{_n(left + 16)}" y="{bottom + 10}">{escape(part)}</text>')
        left += 24 + 6.5 * len(part)
    return _frame(width, height, title, body)


@dataclass(frozen=True)
class Whisker:
    name: str
    value: float
    median_error: float  # share, e.g. 0.084: the thick bar spans value x (1 -/+ it)
    p90_error: float  # the thin whisker
    limit: float | None  # the SLO, drawn as a red tick


def whiskers(rows: list[Whisker], quantity: str, unit: str, title: str, width: int = 900) -> str:
    """Predicted figures with their median and p90 error ranges, against their SLO."""
    height = 30 + 26 * len(rows) + 40
    ends = [r.value * (1 + r.p90_error) for r in rows] + [r.limit for r in rows if r.limit]
    x = Axis(0.0, max(ends) * 1.05, 260, width - 30)
    y_bottom = 20 + 26 * len(rows)
    body = [f'<line x1="{_n(x.at(t))}" y1="14" x2="{_n(x.at(t))}" y2="{y_bottom}" stroke="#e5e5e5"/>'
            f'<text x="{_n(x.at(t))}" y="{y_bottom + 14}" text-anchor="middle">{label(t)}</text>' for t in x.ticks()]
    for index, row in enumerate(rows):
        middle = 27 + index * 26
        low, high = max(row.value * (1 - row.p90_error), 0.0), row.value * (1 + row.p90_error)
        box_low, box_high = x.at(row.value * (1 - row.median_error)), x.at(row.value * (1 + row.median_error))
        tip = (f"{row.name}: {quantity} {row.value:,.1f} {unit}; median error {row.median_error:.1%}, "
               f"p90 {row.p90_error:.1%}" + (f"; SLO {row.limit:g} {unit}" if row.limit else ""))
        body.append(f'<text x="252" y="{middle + 4}" text-anchor="end">{escape(row.name)}</text><g>'
                    f"<title>{escape(tip)}</title>"
                    f'<line x1="{_n(x.at(low))}" y1="{middle}" x2="{_n(x.at(high))}" y2="{middle}" stroke="#555"/>'
                    f'<rect x="{_n(box_low)}" y="{middle - 6}" width="{_n(box_high - box_low)}" height="12" '
                    f'fill="{PALETTE[0]}" fill-opacity="0.45"/><line x1="{_n(x.at(row.value))}" y1="{middle - 8}" '
                    f'x2="{_n(x.at(row.value))}" y2="{middle + 8}" stroke="#111" stroke-width="2"/></g>')
        if row.limit:
            body.append(f'<line x1="{_n(x.at(row.limit))}" y1="{middle - 10}" x2="{_n(x.at(row.limit))}" '
                        f'y2="{middle + 10}" stroke="#d62728" stroke-width="3"><title>SLO {row.limit:g} {unit}'
                        "</title></line>")
    body.append(f'<text x="260" y="{y_bottom + 32}">{escape(quantity)} ({escape(unit)}): black = predicted, '
                "box = median error, whisker = p90 error, red = SLO</text>")
    return _frame(width, height, title, body)
