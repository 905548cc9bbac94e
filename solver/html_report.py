"""`quantplan report`: one self-contained HTML page (inline CSS and SVG, no network) for a plan and why it won."""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import escape
from importlib.metadata import PackageNotFoundError, version

from . import pareto, svg
from .api import as_scenario, solve_with_space
from .errors import InfeasibleError
from .html_launch import launch_section
from .plan import Plan, ReplicaGroup
from .registry import World, load_world
from .scenario import Scenario
from .space import pool

NUMBER = re.compile(r"^[+\-$]?[\d,]+(\.\d+)?x?( \(|$)")
FIGURES = {"ttft_ms": "TTFT", "tpot_ms": "TPOT", "tokens_per_s": "tokens/s", "memory_gb_per_gpu": "memory"}
SWEEP_SPAN = (0.5, 2.0)  # default price sweep: half to twice the price planned at
FRONT_ROWS = 20
MEMORY_PARTS = (("weights", "#1f77b4"), ("KV cache", "#ff7f0e"), ("activations", "#2ca02c"),
                ("engine runtime", "#9467bd"), ("free", "#e6e6e6"), ("reserved by the engine", "#b0b0b0"))

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#1d1d1d;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:30px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid #e4e4e4;padding:4px 8px;text-align:left;vertical-align:top}
td.num{text-align:right}
.scroll{overflow-x:auto}th{background:#f4f4f4}
.muted{color:#666}.headline{font-size:16px}.warn{color:#a15c00}
pre{background:#f6f6f6;padding:8px;white-space:pre-wrap;overflow-wrap:anywhere}
svg{max-width:100%;height:auto;display:block;margin:8px 0}
"""

# Records any script error into the page, so a headless browser's DOM shows it (the page has no other script).
ERROR_PROBE = """<script>
window.addEventListener('error', function (e) {
  var box = document.getElementById('page-errors');
  if (box) { box.textContent += 'page error: ' + e.message + '\\n'; }
});
document.addEventListener('DOMContentLoaded', function () { document.body.setAttribute('data-rendered', 'yes'); });
</script>"""


@dataclass(frozen=True)
class Report:
    html: str
    plan: Plan | None  # None when infeasible
    candidates: int  # single-configuration candidates drawn
    front: int  # of them on the Pareto front
    sweep: str  # the price axis swept, or why none
    infeasible: InfeasibleError | None = None  # no plan: the page says why, and the caller exits 1


def build(scenario: Scenario | dict, world: World | None = None, price_range: tuple[str, float, float] | None = None,
          sweep: bool = True) -> Report:
    """Solve `scenario` and lay the answer out as one page; `price_range` (device, from, to) picks the price
    sweep, else the plan's costliest device from half to twice its price."""
    scenario = as_scenario(scenario)
    world = world or load_world(scenario.catalogs)
    try:
        plan, space = solve_with_space(scenario, world)
    except InfeasibleError as error:
        return _infeasible(scenario, world, error)
    options = space.options if space is not None else []
    availability, _ = pool(world, scenario)
    found = pareto.candidates(options, scenario.classes, availability)
    swept, sweep_html = _sweep(scenario, world, plan, price_range) if sweep else ("none", _p("Not run (--no-sweep)."))
    sections = [
        _section("workload", "The workload as understood", _list(plan.workload)),
        _section("plan", "The plan", _plan_table(plan, scenario)),
        _section("why", "Why it won", _why(plan)),
        _section("alternatives", "Why the alternatives lost", _alternatives(plan, found, scenario)),
        _section("pareto", "Cost, latency and quality of every feasible candidate", _pareto(plan, found, options,
                                                                                           scenario)),
        _section("memory", "Memory per GPU", _memory(plan, options)),
        _section("sweep", "Price sweep", sweep_html),
        _section("launch", "Launch commands", launch_section(plan, world, scenario)),
    ]
    stats = plan.stats
    footer = (f"quantplan {_version()}; {stats.configurations} configurations, {stats.candidates} candidates, "
              f"{stats.candidates_after_pruning} after pruning" if stats else f"quantplan {_version()}")
    page = _page(f"quantplan plan: {plan.model}", _headline(plan), sections, footer)
    return Report(page, plan, len(found), sum(c.front for c in found), swept)


def _page(title: str, headline: str, sections: list[str], footer: str) -> str:
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{escape(title)}</title>"
            f"<style>{STYLE}</style>{ERROR_PROBE}</head><body>"
            f"<h1>{escape(title)}</h1>{headline}<pre id=\"page-errors\" hidden></pre>"
            + "".join(sections) + f"<p class=\"muted\">{escape(footer)}</p></body></html>\n")


def _infeasible(scenario: Scenario, world: World, error: InfeasibleError) -> Report:
    """No plan: the workload as understood and what cannot be met (and what could)."""
    from .explain import workload
    from .space import resolve_model

    lines = [] if scenario.fleet else workload(world, scenario, resolve_model(world, scenario).id)
    name = "fleet" if scenario.fleet else resolve_model(world, scenario).id
    sections = [_section("workload", "The workload as understood", _list(lines)),
                _section("why", "Why there is no plan", _list(error.reasons or [str(error)]))]
    page = _page(f"quantplan plan: {name}", '<p class="headline"><b>infeasible</b>: no plan meets every SLO and '
                                            "quality floor with the devices allowed</p>", sections,
                 f"quantplan {_version()}")
    return Report(page, None, 0, 0, "none", infeasible=error)


def _version() -> str:
    try:
        return version("quantplan")
    except PackageNotFoundError:  # pragma: no cover - running from a plain checkout
        return "(not installed)"


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{body}</section>'


def _p(text: str, css: str = "") -> str:
    return f'<p class="{css}">{escape(text)}</p>' if css else f"<p>{escape(text)}</p>"


def _list(lines: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{escape(line)}</li>" for line in lines) + "</ul>" if lines else _p("(none)")


def _table(columns: list[str], rows: list[list[str]], row_class: str = "", table_id: str = "") -> str:
    """A table; cells are escaped here, so callers pass plain text."""
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    cls = f' class="{row_class}"' if row_class else ""
    body = "".join(f"<tr{cls}>" + "".join(_cell(str(cell)) for cell in row) + "</tr>" for row in rows)
    ident = f' id="{table_id}"' if table_id else ""
    return f'<div class="scroll"><table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _cell(text: str) -> str:
    """A cell; figures (1,234.5, +0.13, $2.70, 120 (110-130; ...)) align right."""
    return f'<td class="num">{escape(text)}</td>' if NUMBER.match(text) else f"<td>{escape(text)}</td>"


def _headline(plan: Plan) -> str:
    per_million = f"${plan.cost_per_million_tokens:,.3f}" if plan.cost_per_million_tokens is not None else "-"
    return (f'<p class="headline"><b>{escape(plan.status)}</b>, objective {escape(plan.objective)}: '
            f"<b>${plan.cost_per_hour:,.2f}/h</b>, {plan.tokens_per_s or 0:,.0f} output tokens/s, "
            f"{escape(per_million)} per 1M output tokens</p>")


def _with_bar(value: float, bars: dict, name: str, digits: int) -> str:
    """'120 (110-130; p90 81-158)': the figure and its ranges at the median and p90 validation error."""
    bar = bars.get(name)
    if not bar:
        return f"{value:,.{digits}f}"
    median, p90 = bar["median_pct"] / 100, bar["p90_pct"] / 100
    return (f"{value:,.{digits}f} ({value * (1 - median):,.{digits}f}-{value * (1 + median):,.{digits}f}; "
            f"p90 {value * (1 - p90):,.{digits}f}-{value * (1 + p90):,.{digits}f})")


def _configuration(group: ReplicaGroup, fleet: bool = False) -> str:
    owner = f"{group.model}: " if fleet else ""
    marks = "".join(f" ({m})" for m, on in (("consumer", group.gpu_class == "consumer"),
                                             ("extrapolated", group.basis == "extrapolated")) if on)
    offload = f", {group.gpu_layers} layers on GPU" if group.gpu_layers is not None else ""
    return (f"{owner}{group.gpus_per_replica}x {group.gpu} {group.method} {group.framework} "
            f"kv={group.kv_cache_dtype}{offload}{marks}")


def _slo_whiskers(plan: Plan, scenario: Scenario) -> str:
    """TTFT and TPOT of every class on every group at the SLO's statistic, with error ranges, against the SLO."""
    limits = {k.name: k for k in scenario.classes}
    limits.update({f"{m.label}/{k.name}": k for m in scenario.models for k in m.classes})  # a fleet's names
    charts = ""
    for metric, quantity, slo in (("ttft_ms", "TTFT", "ttft_ms"), ("tpot_ms", "TPOT", "tpot_limit_ms")):
        rows = []
        for group in plan.replicas:
            bar = group.error_bars.get(metric, {"median_pct": 0.0, "p90_pct": 0.0})
            for figures in group.classes:
                value = getattr(figures, metric.replace("_ms", "_at_statistic_ms")) or getattr(figures, metric)
                traffic = limits.get(figures.name)
                stat = "" if figures.statistic == "mean" else f" {figures.statistic}"
                rows.append(svg.Whisker(f"{figures.name}{stat} on {group.gpu}/{group.method}/b{group.batch_size}",
                                        value, bar["median_pct"] / 100, bar["p90_pct"] / 100,
                                        getattr(traffic, slo) if traffic else None))
        if rows:
            charts += svg.whiskers(rows, quantity, "ms", f"{quantity} against the SLO")
    return charts


def _plan_table(plan: Plan, scenario: Scenario) -> str:
    fleet = bool(plan.pool) or "," in plan.model
    rows = [[_configuration(g, fleet), g.count, g.batch_size, _with_bar(g.ttft_ms, g.error_bars, "ttft_ms", 0),
             _with_bar(g.tpot_ms, g.error_bars, "tpot_ms", 1), f"{g.tokens_per_s_per_user:,.1f}",
             _with_bar(g.tokens_per_s, g.error_bars, "tokens_per_s", 0),
             f"{g.memory_gb_per_gpu:.1f} / {g.memory_capacity_gb_per_gpu:.1f}", f"+{g.ppl_delta:.3f}",
             f"{g.cost_per_hour * g.count:,.2f}"] for g in plan.replicas]
    html = _table(["configuration", "replicas", "batch", "TTFT ms (median-error range; p90 range)",
                   "TPOT ms (ranges)", "tok/s/user", "tok/s per replica (ranges)", "memory/GPU GB",
                   "ppl Δ", "$/h"], rows, row_class="plan-row", table_id="plan-rows")
    if any(len(g.classes) > 1 for g in plan.replicas) or len({f.name for g in plan.replicas for f in g.classes}) > 1:
        html += _table(["group / class", "share", "load per replica", "TTFT mean / p90 ms", "TPOT mean / p90 ms",
                        "SLO statistic", "shared with"],
                       [[f"{g.gpu}/{g.method} / {f.name}", f"{f.share:.2f}", f"{f.load_per_replica:.3g}",
                         f"{f.ttft_ms:,.0f} / {f.ttft_p90_ms or f.ttft_ms:,.0f}",
                         f"{f.tpot_ms:.1f} / {f.tpot_p90_ms or f.tpot_ms:.1f}", f.statistic,
                         ", ".join(f.shared_with) or "-"] for g in plan.replicas for f in g.classes])
    if plan.pool:
        html += _p("Device pool: " + ", ".join(f"{p['gpu']} {p['used']}" + (f" of {p['available']}" if p["available"]
                                                                          is not None else " (rented)")
                                                for p in plan.pool))
    html += _slo_whiskers(plan, scenario)
    bars = {(g.framework, k): v for g in plan.replicas for k, v in g.error_bars.items()}
    html += _p("Ranges are each figure's median and 90th-percentile error on the validation rows: "
               + "; ".join(f"{framework} {FIGURES.get(name, name)}: ±{v['median_pct']:g}% / ±{v['p90_pct']:g}% "
                           f"({v['basis']})"
                           for (framework, name), v in sorted(bars.items())), "muted")
    warnings = [w for g in plan.replicas for w in g.coverage_warnings]
    return html + "".join(_p(f"outside the validation data: {w}", "warn") for w in dict.fromkeys(warnings)) + \
        (_list(plan.notes) if plan.notes else "")


def _why(plan: Plan) -> str:
    best = {"cost": "cheapest", "latency": "fastest", "balanced": "best balanced"}.get(plan.objective, "best")
    html = _p(f"The {best} plan that meets every SLO and quality floor. Constraints at or within 10% of their "
              f"limit (binding):")
    return html + _list(plan.binding or ["none: the plan has room on every SLO, the quality floor and memory"])


def _alternatives(plan: Plan, found: list[pareto.Candidate], scenario: Scenario) -> str:
    if scenario.fleet:
        return _p("A fleet (several models sharing one device pool): the per-restriction and single-configuration "
                  "comparisons are per model; run quantplan report on one model's scenario for them.")
    html = _p("The cheapest plan under each restriction, solved exactly:")
    html += _table(["restriction", "plan", "$/h", "difference $/h", "ratio", "mean latency difference ms"],
                   [[a.label, "; ".join(a.replicas), f"{a.cost_per_hour:,.2f}", f"{a.cost_difference_per_hour:+,.2f}",
                     f"{a.cost_ratio:.2f}x", f"{a.latency_difference_ms:+,.0f}" if a.latency_difference_ms is not None
                     else "-"] for a in plan.alternatives]) if plan.alternatives else _p("(none computed)")
    used = {attribute: {getattr(g, attribute) for g in plan.replicas} for attribute in ("gpu", "method")}
    for attribute, title in (("gpu", "device"), ("method", "method")):
        best = {k: c for k, c in pareto.best_by(found, attribute, scenario.objective).items()
                if k not in used[attribute]}
        html += _p(f"The best single configuration on each other {title} (one configuration for all the traffic):")
        html += _table([title, "configuration", "replicas", "$/h", "mean latency ms", "ppl Δ", "why it lost"],
                       [[name, f"{c.gpus_per_replica}x {c.gpu} {c.method} {c.framework}", c.replicas,
                         f"{c.cost_per_hour:,.2f}", f"{c.latency_ms:,.0f}", f"+{c.ppl_delta:.3f}",
                         pareto.why_lost(c, plan, scenario.objective)]
                        for name, c in best.items()]) if best else _p(f"(no other {title} serves all the traffic)")
    return html


def _pareto(plan: Plan, found: list[pareto.Candidate], options, scenario: Scenario) -> str:
    if scenario.fleet:
        return _p("A fleet plan: candidates are per model; run quantplan report on one model's scenario.")
    if not found:
        return _p("No single configuration serves every class alone within the devices available: nothing to draw.")
    chosen = pareto.plan_point(plan, options, scenario.classes)
    ppl = [c.ppl_delta for c in found]
    lo, hi = min(ppl), max(ppl)
    shade = (lambda v: (v - lo) / (hi - lo)) if hi > lo else (lambda v: 0.0)  # noqa: E731
    dots = [svg.Dot(c.cost_per_hour, c.latency_ms, shade(c.ppl_delta),
                    f"{c.replicas} x {c.gpus_per_replica}x {c.gpu} {c.method} {c.framework} ({c.key}): "
                    f"${c.cost_per_hour:.2f}/h, {c.latency_ms:,.0f} ms, ppl +{c.ppl_delta:.3f}", front=c.front)
            for c in found]
    dots.append(svg.Dot(*chosen[:2], shade(min(max(chosen[2], lo), hi)),
                        f"the plan: ${chosen[0]:.2f}/h, {chosen[1]:,.0f} ms, ppl +{chosen[2]:.3f}", chosen=True))
    chart = svg.scatter(dots, "cost of serving all the traffic ($/h)", "mean request latency (ms)", "ppl Δ", (lo, hi),
                        f"{len(found)} candidates; colour: perplexity increase")
    front = sorted((c for c in found if c.front), key=lambda c: (c.cost_per_hour, c.latency_ms, c.key))
    same: dict[tuple, list[str]] = {}  # batch and KV variants with the same figures share a row
    for c in front:
        shown = (f"{c.gpus_per_replica}x {c.gpu} {c.method} {c.framework}", c.replicas, f"{c.cost_per_hour:,.2f}",
                 f"{c.latency_ms:,.0f}", f"+{c.ppl_delta:.3f}")
        same.setdefault(shown, []).append(c.key.split("/", 3)[-1])
    table = _table(["configuration", "variants (tp/batch/KV)", "replicas", "$/h", "mean latency ms", "ppl Δ"],
                   [[shown[0], ", ".join(keys), *shown[1:]] for shown, keys in list(same.items())[:FRONT_ROWS]])
    more = f" (the {FRONT_ROWS} cheapest rows shown)" if len(same) > FRONT_ROWS else ""
    return (_p(f"Each dot is one configuration serving all the traffic alone, with as many replicas as the load "
               f"needs (mean request latency = TTFT + (output - 1) x TPOT, averaged over the classes). Outlined: "
               f"the {len(front)} on the Pareto front (nothing cheaper, faster and better at once); ringed: the "
               f"plan (${chosen[0]:.2f}/h, {chosen[1]:,.0f} ms, ppl +{chosen[2]:.3f}). Hover a dot for its name.")
            + chart + _p(f"Pareto front{more}:") + table)


def _memory(plan: Plan, options) -> str:
    by_key = {o.key: o for o in options}
    rows = []
    for group in plan.replicas:
        main = max(group.classes, key=lambda f: (f.share, f.name)).name
        option = by_key.get(group.key)
        if option is None or main not in option.memory:  # a fleet: the plan's own totals per GPU
            divisor = group.gpus_per_replica
            parts = [group.weights_gb / divisor, group.kv_cache_gb / divisor,
                     group.memory_gb_per_gpu - (group.weights_gb + group.kv_cache_gb) / divisor, 0.0,
                     group.memory_capacity_gb_per_gpu - group.memory_gb_per_gpu, 0.0]
        else:
            m = option.memory[main]
            parts = [v / 1e9 for v in (m.weights_per_gpu, m.kv_per_gpu, m.activations_per_gpu, m.runtime_per_gpu,
                                       m.available_per_gpu - m.used_per_gpu, m.reserved_per_gpu)]
        rows.append((f"{group.gpu} {group.method} b{group.batch_size}",
                     [(name, max(value, 0.0), colour) for (name, colour), value in zip(MEMORY_PARTS, parts)]))
    chart = svg.stacked_bars(rows, "GB", "memory per GPU")
    table = _table(["replica group"] + [name for name, _ in MEMORY_PARTS] + ["total (GB)"],
                   [[name] + [f"{v:.2f}" for _, v, _ in parts] + [f"{sum(v for _, v, _ in parts):.1f}"]
                    for name, parts in rows])
    return _p("One GPU of each replica group at its planned batch and context (GB = 10^9 bytes).") + chart + table


def _sweep(scenario: Scenario, world: World, plan: Plan, price_range) -> tuple[str, str]:
    from .sweep import price_sweep

    if scenario.fleet:
        return "none", _p("Fleet plans: run quantplan sweep per model.")
    if price_range is None:
        group = max(plan.replicas, key=lambda g: (g.cost_per_hour * g.count, g.gpu))
        price = world.with_prices(scenario.prices).get(group.gpu)
        if price is None or group.cost_per_hour <= 0:
            return "none", _p(f"{group.gpu} has no hourly price (owned): no price sweep.")
        price_range = (group.gpu, price.usd_per_hour * SWEEP_SPAN[0], price.usd_per_hour * SWEEP_SPAN[1])
    device, start, end = price_range
    try:
        result = price_sweep(scenario, device, start, end, world)
    except InfeasibleError as error:
        return device, _p(f"No sweep over {device} ${start:.2f}-{end:.2f}/h: {error}")
    names = {label: i for i, label in enumerate(dict.fromkeys(s.plan for s in result.segments))}
    planned = world.with_prices(scenario.prices).get(world.gpus.get(device).id)
    chart = svg.price_lines([svg.Segment(s.start, s.end, s.cost_per_hour_at_from, s.cost_per_hour_at_to, names[s.plan])
                             for s in result.segments], [b.value for b in result.breakpoints],
                            planned.usd_per_hour if planned else None, f"{device} price ($/device-hour)",
                            "optimal plan cost ($/h)", f"price sweep of {device}")
    table = _table(["", "from $/h", "to $/h", "plan $/h at from", "plan $/h at to", "plan"],
                   [[f"P{names[s.plan] + 1}", f"{s.start:.4g}", f"{s.end:.4g}", f"{s.cost_per_hour_at_from:.2f}",
                     f"{s.cost_per_hour_at_to:.2f}", s.plan] for s in result.segments])
    note = (f"The cheapest plan as {device}'s price runs from ${start:.2f} to ${end:.2f}/h, exact breakpoints "
            f"({result.solves} solves"
            + ("; swept at the cost objective" if scenario.objective != "cost" else "") + "). "
            + (f"Breakpoints: {', '.join(f'${b.value:.4g}' for b in result.breakpoints)}."
               if result.breakpoints else "The plan does not change over this range."))
    return device, _p(note) + chart + table
