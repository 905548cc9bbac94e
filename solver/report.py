"""Human output: aligned tables with units in the headers (rich), for plans, estimates and listings."""

from __future__ import annotations

from typing import TYPE_CHECKING

# typing only: listing and estimating need not import the solver, nor --json output rich (the console's
# maker imports it; the functions that draw import what they draw with)
if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console
    from rich.table import Table

    from .estimate import EstimateResult
    from .plan import Plan


def _table(title: str, columns: list[str]) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_lines=False, pad_edge=False)
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right", no_wrap=index > 0)
    return table


def _f(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def render_plan(plan: Plan, console: Console) -> None:
    from rich.markup import escape

    for line in plan.workload:
        console.print(f"[dim]Workload:[/dim] {escape(line)}")
    console.print(f"[bold]{plan.model}[/bold]: {plan.status}, objective {plan.objective}")
    table = _table("Replica groups (figures per replica)", [
        "configuration", "count", "batch", "TTFT (ms)", "TPOT (ms)", "tok/s/user", "tok/s",
        "mem/GPU (GB)", "ppl Δ", "ppl Δ (%)", "$/h"])
    for group in plan.replicas:
        offload = f", ngl {group.gpu_layers}" if group.gpu_layers is not None else ""
        owner = f"{group.model}: " if plan.pool else ""  # a fleet plan (several models) has a pool
        name = (f"{owner}{group.gpus_per_replica}x {group.gpu} {group.method} {group.framework} "
                f"kv={group.kv_cache_dtype}{offload}"
                + (" (consumer)" if group.gpu_class == "consumer" else "")
                + (" (extrapolated)" if group.basis == "extrapolated" else ""))
        table.add_row(name, str(group.count), str(group.batch_size), _f(group.ttft_ms, 0), _f(group.tpot_ms, 1),
                      _f(group.tokens_per_s_per_user, 1), _f(group.tokens_per_s, 0),
                      f"{group.memory_gb_per_gpu:.1f}/{group.memory_capacity_gb_per_gpu:.1f}",
                      _f(group.ppl_delta, 3), _f(group.ppl_delta_pct, 2), _f(group.cost_per_hour * group.count, 2))
    console.print(table)
    console.print(f"Total: ${plan.cost_per_hour:,.2f}/h, {_f(plan.tokens_per_s, 0)} output tokens/s, "
                  f"${_f(plan.cost_per_million_tokens, 3)} per 1M output tokens")
    if plan.pool:
        console.print("Pool: " + ", ".join(f"{p['gpu']} {p['used']}" + (f" of {p['available']}" if p["available"]
                                                                        is not None else " (rented)")
                                           for p in plan.pool))
    if plan.prices:
        console.print(plan.prices.line())
    if any(len(g.classes) > 1 for g in plan.replicas):
        per_class = _table("Per traffic class (a shared replica: each class under the combined load)",
                           ["group / class", "share", "TTFT mean/p90 (ms)", "TPOT mean/p90 (ms)", "capacity"])
        for group in plan.replicas:
            for figures in group.classes:
                per_class.add_row(f"{group.gpu}/{group.method} / {figures.name}", f"{figures.share:.2f}",
                                  f"{_f(figures.ttft_ms, 0)} / {_f(figures.ttft_p90_ms, 0)}",
                                  f"{_f(figures.tpot_ms, 1)} / {_f(figures.tpot_p90_ms, 1)}",
                                  f"{figures.capacity:.3g} {figures.capacity_unit}")
        console.print(per_class)
    shown = set()
    for group in plan.replicas:
        if (group.framework, tuple(group.coverage_warnings), group.margin) in shown:
            continue
        shown.add((group.framework, tuple(group.coverage_warnings), group.margin))
        console.print(f"Error bars ({group.framework}): " + _bars(group.error_bars)
                      + "".join(f"; [yellow]outside validated range: {w}[/yellow]" for w in group.coverage_warnings)
                      + (f"; [yellow]extrapolated: its TTFT/TPOT include the {group.margin} validation error[/yellow]"
                         if group.margin != "none" and group.basis == "extrapolated" else ""))
    for line in dict.fromkeys(_quality_line(group) for group in plan.replicas):  # groups alike in it: once
        console.print(line)
    best = {"cost": "cheapest", "latency": "fastest", "balanced": "best balanced"}.get(plan.objective, "best")
    why = f"[bold]Why this plan[/bold]: the {best} that meets every SLO and quality floor"
    rivals = [a for a in plan.alternatives if not a.label.startswith("unquantized")]
    if rivals:
        rival = rivals[0]
        gap = (f"{rival.latency_difference_ms:+,.0f} ms mean request latency" if plan.objective == "latency"
               and rival.latency_difference_ms is not None else f"{rival.cost_difference_per_hour:+,.2f} $/h")
        if plan.objective == "cost" and abs(rival.cost_difference_per_hour) < 0.005:
            gap = "the same cost; ties go to fewer GPUs, then measured configurations, then less quality loss"
        why += f"; the best plan {escape(rival.label)}: {gap}"
    console.print(why)
    if plan.binding:
        console.print("[bold]Binding[/bold]: " + "; ".join(plan.binding))
    for note in plan.notes:
        console.print(f"Note: {note}")
    if plan.alternatives:
        best = "fastest" if plan.objective == "latency" else "best" if plan.objective == "balanced" else "cheapest"
        latency = plan.objective != "cost"
        table = _table(f"Alternatives ({best} plan under each restriction)",
                       ["restriction", "$/h", "Δ $/h", "x"] + (["latency (ms)", "Δ ms"] if latency else []) + ["plan"])
        table.columns[-1].no_wrap = False  # the plan text wraps; the figures keep their columns
        for alt in plan.alternatives:
            extra = [_f(alt.latency_ms, 0), f"{alt.latency_difference_ms:+,.0f}"] if latency else []
            table.add_row(alt.label, _f(alt.cost_per_hour, 2), f"{alt.cost_difference_per_hour:+,.2f}",
                          f"{alt.cost_ratio:.2f}", *extra, "; ".join(alt.replicas))
        console.print(table)
    if plan.stats:
        s = plan.stats
        console.print(f"[dim]{s.configurations} configurations, {s.candidates} candidates, "
                      f"{s.candidates_after_pruning} after pruning, solved in {s.solve_seconds:.2f} s[/dim]")


def render_estimate(result: EstimateResult, console: Console) -> None:
    head = (f"{result.model} on {result.gpus}x {result.gpu}, {result.method}, {result.framework}, "
            f"batch {result.batch_size}, {result.kv_cache_dtype} KV, {result.prompt_tokens}+{result.output_tokens} tokens")
    console.print(f"[bold]{head}[/bold]")
    if not result.compatible:
        console.print("incompatible: " + "; ".join(result.reasons))
        return
    rows = [
        ("fits", "yes" if result.fits else "NO"),
        ("memory per GPU (GB)", f"{result.memory_gb_per_gpu:.2f} of {result.memory_capacity_gb_per_gpu:.2f}"),
        ("weights, replica (GB)", _f(result.weights_gb, 2)), ("KV cache, replica (GB)", _f(result.kv_cache_gb, 2)),
        ("overhead per GPU (GB)", _f(result.overhead_gb, 2)),
        ("layers on GPU", str(result.gpu_layers) if result.gpu_layers is not None else "all"),
        ("load", result.load_model or "-"),
        ("TTFT mean / p50 / p90 / p99 (ms)", " / ".join(_f(v, 1) for v in (result.ttft_ms, result.ttft_p50_ms,
                                                                           result.ttft_p90_ms, result.ttft_p99_ms))),
        ("TPOT mean / p90 / p99 (ms)", " / ".join(_f(v, 2) for v in (result.tpot_ms, result.tpot_p90_ms,
                                                                     result.tpot_p99_ms))),
        ("tokens/s per user", _f(result.tokens_per_s_per_user, 1)),
        ("decode tokens/s per replica", _f(result.decode_tokens_per_s, 0)),
        ("output tokens/s per replica", _f(result.tokens_per_s, 0)),
        ("prefill tokens/s", _f(result.prefill_tokens_per_s, 0)), ("decode bound", result.decode_bound or "-"),
        *_quality_rows(result),
        ("$/h, $/1M output tokens", f"{_f(result.cost_per_hour, 3)}, {_f(result.cost_per_million_tokens, 3)}"),
        ("prices", result.prices.line().removeprefix("Prices: ") if result.prices else "-"),
        ("execution", result.execution or "-"),
    ]
    if result.simulated:
        sim = result.simulated
        at = next(i for i, row in enumerate(rows) if row[0] == "load") + 3
        rows.insert(at, ("simulated TTFT mean / p50 / p90 / p99 (ms)", " / ".join(
            _f(sim[k], 1) for k in ("ttft_ms", "ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms"))))
        rows.insert(at + 1, ("simulated TPOT mean / p90 / p99 (ms)", " / ".join(
            _f(sim[k], 2) for k in ("tpot_ms", "tpot_p90_ms", "tpot_p99_ms"))))
    sched = result.scheduling
    if sched:
        rows.append(("engine scheduling", f"{sched['policy']}, budget {sched['token_budget']} tokens/step, "
                                          f"at most {sched['max_sequences']} running"
                                          f"{', chunked prefill' if sched['chunked_prefill'] else ''}"
                                          f"{', KV reserved up front' if sched['kv_reserved_up_front'] else ''}"))
    if result.kv_cache_note:
        rows.append(("KV cache", result.kv_cache_note))
    table = _table("Prediction", ["figure", "value"])
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    console.print("Error bars: " + _bars(result.error_bars)
                  + "".join(f"; [yellow]outside validated range: {w}[/yellow]" for w in result.coverage_warnings))
    terms = _table("Terms (plugin: what)", ["plugin", "quantity", "phase", "value", "detail"])
    for term in result.terms:
        terms.add_row(term["plugin"], term["quantity"], term["phase"] or "-", f"{term['value']:.4g}", term["detail"])
    console.print(terms)


def _quality_line(group) -> str:
    """'Quality (h100-sxm/awq-int4): KL 0.021, recovery knowledge 99.3% ...; bound: ...'."""
    recovery = ", ".join(f"{k} {v:.1f}%" for k, v in group.accuracy_recovery_pct.items())
    bounds = "; ".join(f"{f.name}: {f.quality_bound}" for f in group.classes if f.quality_bound)
    line = f"Quality ({group.gpu}/{group.method}): KL {group.kl_divergence:.4f}, recovery {recovery}"
    line += f"; tightest bound {bounds}" if bounds else ""
    return line + "".join(f"; [yellow]{note}[/yellow]" for note in group.quality_notes)


def _quality_rows(result: EstimateResult) -> list[tuple[str, str]]:
    """ppl, KL and recovery lines with their 10th-90th percentile bands, and any fallback taken."""
    bars = result.quality_error_bars or {}
    span = lambda key, digits: (f" ({_f(bars[key][0], digits)}-{_f(bars[key][1], digits)})"  # noqa: E731
                                if key in bars else "")
    rows = [("ppl Δ / ppl Δ (%)", f"{_f(result.ppl_delta, 3)}{span('ppl_delta', 3)} / "
                                  f"{_f(result.ppl_delta_pct, 2)}{span('ppl_delta_pct', 2)}")]
    if result.kl_divergence is not None:
        rows.append(("KL divergence (nats/token)", f"{result.kl_divergence:.4f}{span('kl_divergence', 4)}"))
    if result.accuracy_recovery_pct:
        recovery = bars.get("accuracy_recovery_pct", {})
        rows.append(("accuracy recovery (%)", ", ".join(
            f"{kind} {value:.1f}" + (f" ({recovery[kind][0]:.1f}-{recovery[kind][1]:.1f})" if kind in recovery else "")
            for kind, value in result.accuracy_recovery_pct.items())))
    rows += [("quality fallback", note) for note in result.quality_notes]
    return rows


def _bars(bars: dict) -> str:
    """'TPOT ±9% (p90 26%, 87 tensorrt-llm rows)' for each figure with an error bar."""
    names = {"tpot_ms": "TPOT", "ttft_ms": "TTFT", "tokens_per_s": "tok/s", "memory_gb_per_gpu": "weights"}
    return ", ".join(f"{names.get(k, k)} ±{v['median_pct']:g}% (p90 {v['p90_pct']:g}%, {v['basis']})"
                     for k, v in bars.items()) or "none"


def render_rows(title: str, columns: list[str], rows: list[list[str]], console: Console) -> None:
    table = _table(title, columns)
    for row in rows:
        table.add_row(*[str(cell) for cell in row])
    console.print(table)


__all__ = ["render_plan", "render_estimate", "render_rows"]
