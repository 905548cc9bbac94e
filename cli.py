"""The `quantplan` command: parse options, call the solver, render tables or JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from quantplan.solver.errors import InfeasibleError, QuantplanError

if TYPE_CHECKING:  # rich is imported by the commands that print tables, not by --help or --json
    from rich.console import Console

OBJECTIVES = ("cost", "latency", "balanced")


def _pairs(values: tuple[str, ...], option: str, kind: type) -> dict:
    """Parse repeated DEV=VALUE options."""
    parsed = {}
    for value in values:
        name, sep, number = value.partition("=")
        if not sep or not name.strip():
            raise QuantplanError(f"{option} {value!r}: expected DEVICE=VALUE")
        try:
            parsed[name.strip()] = kind(number)
        except ValueError:
            raise QuantplanError(f"{option} {value!r}: {number!r} is not a {kind.__name__}") from None
    return parsed


def check_output_path(path: str | None, option: str) -> None:
    """Fail before any work when `path` cannot be written: its folder missing or read-only, or a folder
    in its place (nothing is solved, and nothing written, for an answer that cannot be saved)."""
    import os

    if not path:
        return
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise QuantplanError(f"{option} {path}: is a folder, not a file")
    if not folder.is_dir():
        raise QuantplanError(f"{option} {path}: folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise QuantplanError(f"{option} {path}: not writable")


def _console() -> Console:
    """A console as wide as the terminal, or $COLUMNS; 160 columns when output goes to a file or pipe."""
    import os
    import sys

    from rich.console import Console

    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=160)


def _emit(data, as_json: bool, render) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        render(_console())


catalog_option = click.option("--catalog", "catalogs", multiple=True, type=click.Path(dir_okay=False),
                              help="TOML file registering more devices, prices, models and calibrations "
                                   "(repeatable).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
provider_option = click.option("--provider", help="Use this provider's on-demand prices (catalogs/prices.toml; "
                                                 "list gpus --json shows each device's providers); default: each "
                                                 "device's median across providers.")


def workload_options(function):
    options = [
        click.option("--model", help="Model id or alias (quantplan list models)."),
        click.option("--model-config", type=click.Path(dir_okay=False), help="Hugging Face config.json of any model."),
        click.option("--gpu", "gpus", multiple=True, help="Restrict to these devices (repeatable)."),
        click.option("--method", "methods", multiple=True, help="Restrict to these methods (repeatable)."),
        click.option("--framework", "frameworks", multiple=True, help="Restrict to these frameworks (repeatable)."),
        click.option("--kv-cache-dtype", "kv_cache_dtypes", multiple=True, help="Restrict KV-cache precisions."),
        click.option("--max-gpus", type=int, help="Most GPUs in one replica (tensor parallel or layer split)."),
        click.option("--gpu-count", multiple=True, help="Devices available, DEV=N (repeatable)."),
        click.option("--price", multiple=True, help="Override a price, DEV=USD per device-hour (repeatable)."),
        provider_option,
        click.option("--prompt-tokens", type=int, help="Prompt (input) tokens per request."),
        click.option("--output-tokens", type=int, help="Output tokens per request."),
        click.option("--concurrency", type=int, help="Concurrent users (closed loop of clients)."),
        click.option("--rate", type=float, help="Requests per second (Poisson arrivals)."),
        click.option("--ttft-ms", type=float, help="Time-to-first-token SLO, ms (at --slo-statistic)."),
        click.option("--tpot-ms", type=float, help="Time-per-output-token SLO, ms."),
        click.option("--min-tokens-per-s", type=float, help="Decode tokens/s per user SLO (= 1000 / TPOT)."),
        click.option("--slo-statistic", type=click.Choice(("mean", "p50", "p90", "p99")),
                     help="What the TTFT/TPOT SLOs bound (default: p90 for a rate class, mean for concurrency)."),
        click.option("--requests-per-client", type=float,
                     help="Closed loop: requests each client sends after warm-up, as your benchmark runs "
                          "(default 10; 0: steady state only)."),
        click.option("--max-ppl-delta", type=float, help="Quality floor: largest perplexity increase."),
        click.option("--use-case", help="Quality floor by use case (its ppl and KL thresholds): chat_general, "
                                        "code_generation, medical_legal, summarization."),
        click.option("--min-recovery", "min_recovery_pct", type=float,
                     help="Accuracy-recovery floor, % of the base model's score on every task kind (knowledge, "
                          "math, code, chat); per kind: min_recovery_pct = {code = 99} in the scenario."),
        click.option("--objective", type=click.Choice(OBJECTIVES), help="cost (default), latency or balanced."),
        click.option("--max-configurations", type=int, help="At most this many distinct configurations."),
        click.option("--time-limit", type=float, help="Solver time limit, seconds."),
        click.option("--solver", type=click.Choice(("highs", "cbc")), help="MILP solver (default highs)."),
        click.option("--margin", type=click.Choice(("auto", "none", "median", "p90")),
                     help="Plan against figures made pessimistic by the validation error (default auto: p90 for "
                          "configurations outside the validation data, none inside)."),
        click.option("--max-cost-per-hour", type=float,
                     help="Budget, USD per hour: no plan above it (with --objective latency or balanced too)."),
        click.option("--gpu-class", type=click.Choice(("datacenter", "consumer", "all")),
                     help="Plan on data-center parts, consumer GPUs and laptops, or all (default all)."),
        click.option("--api-server", help="The API server in front of the engines when not their own (e.g. nim): "
                                          "its per-request TTFT overhead; engines without one for it are left out."),
        catalog_option,
    ]
    for option in reversed(options):
        function = option(function)
    return click.argument("scenario_file", required=False, type=click.Path(dir_okay=False))(function)


WORKLOAD_KEYS = ("prompt_tokens", "output_tokens", "concurrency", "rate", "ttft_ms", "tpot_ms",
                 "min_tokens_per_s", "max_ppl_delta", "use_case", "slo_statistic", "requests_per_client",
                 "min_recovery_pct")


def scenario_from_options(scenario_file, options: dict):
    """Scenario file (if any) with command-line options on top."""
    from quantplan.solver.scenario import load_scenario, make_scenario

    top = {
        "model": options.get("model"), "model_config_path": options.get("model_config"),
        "gpus": options.get("gpus") or None, "methods": options.get("methods") or None,
        "frameworks": options.get("frameworks") or None, "kv_cache_dtypes": options.get("kv_cache_dtypes") or None,
        "max_gpus": options.get("max_gpus"), "objective": options.get("objective"),
        "max_configurations": options.get("max_configurations"), "time_limit_s": options.get("time_limit"),
        "solver": options.get("solver"), "margin": options.get("margin"), "provider": options.get("provider"),
        "max_cost_per_hour": options.get("max_cost_per_hour"), "gpu_class": options.get("gpu_class"),
        "api_server": options.get("api_server"),
    }
    if options.get("gpu_count"):
        top["gpu_count"] = _pairs(options["gpu_count"], "--gpu-count", int)
    if options.get("price"):
        top["prices"] = _pairs(options["price"], "--price", float)
    if options.get("model") and not options.get("model_config"):
        top["model_config_path"] = None
    if options.get("model_config"):
        top["model"] = None
    workload = {k.replace("rate", "rate_per_s") if k == "rate" else k: options.get(k) for k in WORKLOAD_KEYS}
    workload = {k: v for k, v in workload.items() if v is not None}
    base: dict = {}
    if scenario_file:
        base = load_scenario(scenario_file, require_class=not workload).model_dump()
        base = {k: v for k, v in base.items()}
    fields = {**base, **{k: v for k, v in top.items() if v is not None}}
    if options.get("model"):
        fields["model_config_path"] = None
    if options.get("model_config"):
        fields["model"] = None
    if workload:
        classes = list(base.get("classes") or [{}])
        if len(classes) > 1:
            raise QuantplanError(f"workload options apply to one traffic class; the scenario has {len(classes)}")
        traffic = dict(classes[0])
        if "rate_per_s" in workload:
            traffic["concurrency"] = None
        if "concurrency" in workload:
            traffic["rate_per_s"] = None
        if "tpot_ms" in workload:
            traffic["min_tokens_per_s"] = None
        if "min_tokens_per_s" in workload:
            traffic["tpot_ms"] = None
        if "use_case" in workload:
            traffic["max_ppl_delta"] = None
        if "max_ppl_delta" in workload:
            traffic["use_case"] = None
        traffic.update(workload)
        fields["classes"] = [traffic]
    catalogs = list(base.get("catalogs") or []) + [str(Path(c).resolve()) for c in options.get("catalogs") or ()]
    fields["catalogs"] = catalogs
    return make_scenario(fields)


class QuantplanGroup(click.Group):
    """Turns domain errors into one line on stderr and an exit code; bugs still raise."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except InfeasibleError as error:
            _report_plugin_failures()  # warnings first, then the one line that ends the command
            if ctx.meta.get("as_json"):
                click.echo(json.dumps({"status": "infeasible", "reasons": error.reasons}, indent=2))
            click.echo(f"infeasible: {error}", err=True)
            ctx.exit(error.exit_code)
        except QuantplanError as error:
            _report_plugin_failures()
            click.echo(f"error: {error}", err=True)
            ctx.exit(error.exit_code)
        finally:
            _report_plugin_failures()


def _report_plugin_failures() -> None:
    """Name each plugin that failed to load, or was dropped for raising or answering with junk, once on stderr."""
    manager = sys.modules.get("quantplan.plugins.manager")  # not imported: no plugin loaded, none failed
    if manager is None:
        return
    for failure in manager.take_failures():
        click.echo(f"warning: {failure.line()}", err=True)


@click.group(cls=QuantplanGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="quantplan")
def cli():
    """quantplan: the cheapest way to serve a language model under latency SLOs and a quality floor."""


@cli.command()
@workload_options
@click.option("--no-alternatives", is_flag=True, help="Skip the runner-up plans (faster).")
@click.option("--write-lp", type=click.Path(dir_okay=False), help="Also write the integer program to an LP file.")
@click.option("--emit", type=click.Choice(("launch",)), help="launch: also the engine commands, checkpoints, "
                                                              "manifests and benchmarks (as `quantplan launch`).")
@click.option("--quality", "quality_records", multiple=True, type=click.Path(dir_okay=False),
              help="Measured quality record (quantplan quality -o FILE): its ppl increase replaces the "
                   "prediction for that model and method (repeatable).")
@json_option
@click.pass_context
def solve(ctx, scenario_file, no_alternatives, write_lp, emit, quality_records, as_json, **options):
    """Cheapest deployment for a scenario file and/or options."""
    from quantplan.solver.api import solve as run
    from quantplan.solver.report import render_plan

    ctx.meta["as_json"] = as_json
    check_output_path(write_lp, "--write-lp")
    scenario = scenario_from_options(scenario_file, options)
    if no_alternatives or write_lp:
        scenario = scenario.model_copy(update={"alternatives": not no_alternatives, "write_lp": write_lp})
    if quality_records:
        plan = _solve_with_measured(scenario, quality_records, run)
    else:
        plan = run(scenario)
    if emit == "launch":
        _solve_and_launch(plan, scenario, as_json)
        return
    _emit(plan.model_dump(), as_json, lambda console: render_plan(plan, console))


def _range(text: str, option: str) -> tuple[str, float, float]:
    """NAME=LO:HI -> (name, lo, hi)."""
    name, sep, span = text.partition("=")
    lo, colon, hi = span.partition(":")
    try:
        if not sep or not colon:
            raise ValueError
        return name.strip(), float(lo), float(hi)
    except ValueError:
        raise QuantplanError(f"{option} {text!r}: expected NAME=FROM:TO, e.g. h100-sxm=1:6") from None


def _progress(total: int | None, enabled: bool):
    """A progress bar on stderr for long sweeps; None when not a terminal or when printing JSON."""
    if not enabled or not sys.stderr.isatty():
        return None, None
    from rich.console import Console
    from rich.progress import Progress

    # drawn when a step ends, with no thread of its own: a sweep forks its points only where no other thread runs
    bar = Progress(console=Console(stderr=True), transient=True, auto_refresh=False)
    task = bar.add_task("solving", total=total)
    bar.start()

    def tick(done: int) -> None:
        bar.update(task, completed=done)
        bar.refresh()

    return bar, tick


@cli.command()
@workload_options
@click.option("--price-range", "price_ranges", multiple=True,
              help="DEV=FROM:TO: sweep one device's $/h (exact breakpoints); twice for a region map.")
@click.option("--vary", "varies", multiple=True,
              help="AXIS=FROM:TO on a grid: price-factor, concurrency, rate, ttft, tpot or ppl.")
@click.option("--points", type=int, default=11, show_default=True, help="Grid points per axis.")
@click.option("--engine", type=click.Choice(("serial", "processes", "dask", "ray")), default="processes",
              show_default=True, help="Where grid points run (dask/ray: an existing cluster with --address).")
@click.option("--address", help="Dask scheduler or Ray cluster address.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Also write the table as CSV.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Plot to FILE.png or FILE.svg.")
@json_option
@click.pass_context
def sweep(ctx, scenario_file, price_ranges, varies, points, engine, address, csv_path, plot_path, as_json, **options):
    """Re-plan while a price, the load, an SLO or the quality floor varies."""
    from quantplan.solver import sweeps
    from quantplan.solver.report import render_rows

    ctx.meta["as_json"] = as_json
    check_output_path(csv_path, "--csv")
    check_output_path(plot_path, "--plot")
    scenario = scenario_from_options(scenario_file, options)
    axes = [("price:" + n, lo, hi) for n, lo, hi in (_range(t, "--price-range") for t in price_ranges)]
    axes += [_range(t, "--vary") for t in varies]
    bar, tick = _progress(None, not as_json)
    try:
        table = sweeps.run(scenario, axes, points, engine, address, plot_path, tick)
    finally:
        if bar:
            bar.stop()
    if csv_path:
        import csv

        with open(csv_path, "w", newline="") as handle:
            csv.writer(handle).writerows([table.columns] + table.rows)
    if as_json:
        click.echo(json.dumps(table.data, indent=2, default=str))
        return
    console = _console()
    for b in table.data.get("breakpoints", []):
        console.print(f"breakpoint at ${b['value']:.4f}/h: {b['plan_before']}  ->  {b['plan_after']}")
    render_rows(f"{table.title} ({table.data['solves']} solves)", table.columns, table.rows, console)


@cli.command()
@click.option("--filter", "filters", multiple=True, help="COLUMN=VALUE: only matching rows (repeatable).")
@click.option("--rows/--no-rows", "show_rows", default=False, help="Print every row too (default: the summary).")
@click.option("--write-error-bars", type=click.Path(dir_okay=False),
              help="Write the error-bar table that estimate and solve report (catalogs/error_bars.toml).")
@click.option("--simulate", is_flag=True,
              help="Also run the scheduler simulation on every TTFT/TPOT row under load and compare its errors "
                   "with the closed forms' (about a minute on the whole set; --filter narrows it).")
@json_option
def validate(filters, show_rows, write_error_bars, simulate, as_json):
    """Predicted vs measured on the shipped validation set, with error summaries."""
    from quantplan.solver import errorbars
    from quantplan.solver import validate as checks_module
    from quantplan.solver.report import render_rows

    where = _pairs(filters, "--filter", str)
    check_output_path(write_error_bars, "--write-error-bars")
    world = checks_module.validation_world()
    rows = checks_module.select(checks_module.load_rows(), where)
    checks = checks_module.run(world, rows)
    result = checks_module.summary(checks)
    result["quality_model"] = checks_module.quality_table()
    if write_error_bars:
        devices = {g.id: g.device_class for g in world.gpus}
        vendors = {g.id: g.vendor.lower() for g in world.gpus}
        links = {g.id: g.interconnect for g in world.gpus}
        Path(write_error_bars).write_text(errorbars.to_toml(errorbars.compute(checks, devices, vendors, links)))
    if simulate:
        bar, tick = _progress(None, not as_json)
        try:
            figures = checks_module.simulated(world, rows, progress=(lambda done, total: tick(done)) if tick else None)
        finally:
            if bar:
                bar.stop()
        result["simulation"] = checks_module.simulation_table(checks, figures)
    if as_json:
        click.echo(json.dumps({"summary": result, "rows": [c.model_dump() for c in checks]}, indent=2))
        return
    console = _console()
    if show_rows:
        render_rows("Predicted vs measured", ["id", "metric", "framework", "gpu", "model", "method", "batch",
                                               "measured", "predicted", "error"],
                    [[c.id, c.metric, c.framework, c.gpu, c.model, c.method, c.batch, f"{c.measured:.4g}",
                      f"{c.predicted:.4g}" if c.predicted is not None else c.reason,
                      ("-" if c.error is None else f"{c.error:+.1%}" if c.group != "quality"
                       else f"{c.error:+.2f} of allowance")] for c in checks], console)
    for name in ("by_group", "by_framework", "by_device", "by_device_class"):
        table = result[name]
        render_rows(name.replace("_", " "), ["key", "rows", "median |error|", "p90 |error|", "max |error|", "target"],
                    [[key, v["rows"], f"{v['median_ape']:.1%}", f"{v['p90_ape']:.1%}", f"{v['max_ape']:.1%}",
                      ("met" if v["meets"] else "MISSED") if "meets" in v else ""] for key, v in table.items()],
                    console)
    for name, title in (("under_load", "Latency under load, dense models"),
                        ("under_load_moe", "Latency under load, MoE"),
                        ("under_load_held_out", "Latency under load, held-out rows (never fitted: out of sample)")):
        lines = []
        for metric, entry in result[name].items():
            every = entry["all"]
            lines.append([metric, "all", every["rows"], f"{every['median_ape']:.1%}", f"{every['p90_ape']:.1%}",
                          f"<={every['target_median']:.0%} / <={every['target_p90']:.0%}: "
                          + ("met" if every["meets"] else "MISSED")])
            for regime, v in entry["by_regime"].items():
                lines.append([metric, regime, v["rows"], f"{v['median_ape']:.1%}", f"{v['p90_ape']:.1%}",
                              "within 2x target" if v["within_twice_target"] else "OVER 2x target"])
            for framework, v in entry["by_framework"].items():
                lines.append([metric, framework, v["rows"], f"{v['median_ape']:.1%}", f"{v['p90_ape']:.1%}", ""])
        if lines:
            render_rows(title, ["metric", "regime / engine", "rows", "median", "p90", "target"], lines, console)
    if result["quality"]:
        q = result["quality"]
        console.print(f"quality: {q['within']} of {q['rows']} rows within max(0.05 ppl, 25%); misses: "
                      f"{', '.join(q['misses']) or 'none'}")
    _render_quality_model(result["quality_model"], console)
    for sample, table in result.get("simulation", {}).items():
        lines = [[metric, key, pair["closed_form"]["rows"],
                  f"{pair['closed_form']['median_ape']:.1%} / {pair['closed_form']['p90_ape']:.1%}",
                  f"{pair['simulation']['median_ape']:.1%} / {pair['simulation']['p90_ape']:.1%}"]
                 for metric, entry in table.items()
                 for key, pair in [("all", entry["all"]), *entry["by_regime"].items(), *entry["by_framework"].items()]]
        render_rows(f"Closed forms vs the scheduler simulation, {sample.replace('_', '-')} rows (median / p90 |error|)",
                    ["metric", "regime / engine", "rows", "closed form", "simulation"], lines, console)
    if result["unpredicted"]:
        console.print(f"not predicted: {len(result['unpredicted'])} rows (" +
                      "; ".join(f"{u['id']}: {u['reason']}" for u in result["unpredicted"][:6]) + " ...)")


@cli.command(name="fit-quality")
@click.option("--write", "write_to", type=click.Path(file_okay=False),
              help="Write quality_model.toml into this folder (the shipped one: catalogs).")
@json_option
def fit_quality(write_to, as_json):
    """Fit quality model v2 (ppl, KL, task recovery) on catalogs/quality_measurements.csv; print the family
    parameters and the out-of-sample errors (leave one source out)."""
    from quantplan.solver import quality_data, quality_fit
    from quantplan.solver.report import render_rows

    points, skipped = quality_data.load()
    outcomes = quality_fit.out_of_sample(points)
    model = quality_fit.fit(points, quality_fit.bands(outcomes))
    table = quality_fit.table(outcomes)
    if write_to:
        if not Path(write_to).is_dir():
            raise QuantplanError(f"--write {write_to}: no such folder")
        Path(write_to, "quality_model.toml").write_text(quality_fit.to_toml(model, outcomes, skipped, points))
    if as_json:
        click.echo(json.dumps({"ppl": model.ppl, "kl": model.kl, "accuracy": model.accuracy, "bands": model.bands,
                               "rows": len(points), "skipped": skipped, "out_of_sample": table}, indent=2))
        return
    console = _console()
    families = sorted(model.rows)
    render_rows(f"Quality model v2 fitted on {len(points)} rows", ["family", "rows", "ppl offset (ln)",
                                                                    "ppl bits slope", "ppl size slope",
                                                                    "accuracy offset (ln)"],
                [[f, model.rows[f], f"{model.ppl.get('family.' + f, 0.0):+.3f}",
                  f"{model.ppl.get('family_slope.' + f, 0.0):+.3f}", f"{model.ppl.get('size.' + f, 0.0):+.3f}",
                  f"{model.accuracy.get('family.' + f, float('nan')):+.3f}"]
                 for f in families], console)
    console.print(f"ln dce = {model.ppl['bits.intercept']:.3f} {model.ppl['bits.slope']:+.3f} (bits - 4.5) "
                  f"{model.ppl.get('size', 0.0):+.3f} ln(N/8B) + kind + method + family (dce = ln(1 + rel)); "
                  f"KL = exp({model.kl['intercept']:.3f}) x dce^{model.kl['slope']:.3f}; accuracy loss = "
                  f"exp(task + {model.accuracy['damage']:.3f} ln dce {model.accuracy['size']:+.3f} ln(N/8B) + ...)")
    _render_quality_model(table, console)


def _render_quality_model(table: dict, console) -> None:
    """Quality model v2 out of sample (leave one source out), per metric: overall, by family, by task
    kind, and the methods with under 5 rows (thin)."""
    from quantplan.solver.report import render_rows

    for metric, entry in table.items():
        lines = [["all", entry["rows"], entry["sources"], f"{entry['share_within']:.0%}",
                  f"{entry['median_abs_residual']:.3g}",
                  f">= {entry['target_share']:.0%} {entry['target']}: " + ("met" if entry["meets"] else "MISSED")]]
        for group in ("by_family", "by_kind"):
            lines += [[key, v["rows"], v["sources"], f"{v['share_within']:.0%}", f"{v['median_abs_residual']:.3g}",
                       group.removeprefix("by_")] for key, v in entry.get(group, {}).items()]
        render_rows(f"Quality model out of sample (leave one source out): {metric}",
                    ["rows", "n", "sources", "within", "median |resid|", "target / group"], lines, console)
        thin = sorted(k for k, v in entry["by_method"].items() if v["rows"] < 5)
        console.print(f"{metric}: methods with under 5 rows: {', '.join(thin) or 'none'}")


@cli.command()
@click.option("--devices", help="Fit on these devices' rows only (comma-separated ids); report the others "
                                "as out-of-sample (a parameter those rows cannot pin at its fixed start, not the "
                                "catalog's value; --write keeps the catalog's there).")
@click.option("--write", "write_to", type=click.Path(file_okay=False),
              help="Write the fitted values into the catalogs in this folder (frameworks.toml, methods.toml).")
@click.option("--cross-validate", "fold_key", type=click.Choice(["device", "model", "source", "engine"]),
              help="Leave one device (model, source, engine) out at a time: fit on the rest, predict it; "
                   "print the pooled out-of-sample errors by metric and load regime, and each fold.")
@click.option("--from-start", is_flag=True,
              help="Also search from the fit's fixed starting point and keep the lower minimum (about three times "
                   "slower); by default the search starts from the catalog's values.")
@json_option
def fit(devices, write_to, fold_key, from_start, as_json):
    """Fit engine and kernel efficiencies to the validation rows; print them and the error before and after,
    in-sample and (with --devices) out-of-sample. The search starts from the catalog's values (with
    --from-start, from its fixed starting point as well); with --devices or --cross-validate, from the fixed
    starting point only: an out-of-sample fit must not start from values the held-out rows helped fit."""
    from quantplan.solver import fit as fitting
    from quantplan.solver.report import render_rows

    if fold_key:
        if devices or write_to or from_start:
            raise QuantplanError("--cross-validate stands alone: it fits once per fold, from the fixed start, and "
                                 "writes nothing (drop --devices, --write and --from-start)")
        _cross_validate(fitting, fold_key, as_json)
        return
    chosen = tuple(d.strip() for d in devices.split(",") if d.strip()) if devices else ()
    if chosen and from_start:
        raise QuantplanError("--from-start: --devices always searches from the fixed start (drop one of them)")
    for name in ("frameworks.toml", "methods.toml") if write_to else ():
        if not (Path(write_to) / name).is_file():
            raise QuantplanError(f"--write {write_to}: no {name} there to update (give a copy of catalogs/)")
        check_output_path(str(Path(write_to) / name), "--write")
    # out of sample (--devices): a parameter these devices' rows cannot pin takes its fixed start, not the
    # catalog's value (fitted on the held-out rows too)
    setup, values, report = fitting.fit(devices=chosen, cold=bool(chosen), from_catalog=not chosen and not from_start)
    errors = fitting.errors(setup, values, chosen)
    if write_to:
        if chosen:  # the catalog written keeps its own values where these devices' rows pin nothing
            _, values, report = fitting.fit(setup=setup)
        fitting.write_catalog(setup.parameters, values, Path(write_to))
    if as_json:
        click.echo(json.dumps({"parameters": report, "errors": errors, "devices": list(chosen)}, indent=2))
        return
    console = _console()
    render_rows("Fitted parameters", ["parameter", "catalog", "fitted", "rows"],
                [[r["parameter"], f"{r['before']:g}", f"{r['after']:g}", len(r["rows"])] for r in report], console)
    render_rows("Error (|predicted / measured - 1|)", ["rows", "metric", "n", "median before", "p90 before",
                                                        "median after", "p90 after"],
                [[e["sample"], e["metric"], e["rows"], f"{e['before_median']:.1%}", f"{e['before_p90']:.1%}",
                  f"{e['after_median']:.1%}", f"{e['after_p90']:.1%}"] for e in errors], console)


def _cross_validate(fitting, key: str, as_json: bool) -> None:
    from quantplan.solver.report import render_rows

    console = _console()
    report = lambda done, total, group: console.print(  # noqa: E731
        f"fold {done}/{total}: {group} held out", style="dim") if not as_json else None
    found = fitting.cross_validate(key, progress=report)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return

    def cell(stats):
        if stats is None or stats["median"] is None:
            return "-"
        return f"{stats['median']:.1%} / {stats['p90']:.1%} ({stats['rows']})"

    lines = [[metric, regime, stats["rows"], f"{stats['median']:.1%}" if stats["median"] is not None else "-",
              f"{stats['p90']:.1%}" if stats["p90"] is not None else "-"]
             for metric, by_regime in found["pooled"].items() for regime, stats in by_regime.items()]
    render_rows(f"Out of sample, one {key} left out at a time (|predicted / measured - 1|)",
                ["metric", "regime", "rows", "median", "p90"], lines, console)
    render_rows(f"Each fold: the {key} held out (median / p90 (rows))", [key, "TPOT", "TTFT", "other"],
                [[f["group"], cell(f.get("tpot_ms")), cell(f.get("ttft_ms")), cell(f.get("other"))]
                 for f in found["folds"]], console)
    console.print(f"Each fold is fitted cold: a parameter the other {key}s' rows cannot pin takes its fixed starting "
                  "value, not the catalog's (which was fitted on every row).", style="dim")


@cli.command()
@click.option("--model", help="Model id or alias.")
@click.option("--model-config", type=click.Path(dir_okay=False), help="Hugging Face config.json.")
@click.option("--method", required=True)
@click.option("--gpu", required=True)
@click.option("--framework", required=True)
@click.option("--gpus", type=int, default=1, show_default=True, help="GPUs per replica.")
@click.option("--concurrency", "--batch", "concurrency", type=int, default=1, show_default=True,
              help="Closed loop: concurrent clients (vllm bench serve --max-concurrency, aiperf --concurrency).")
@click.option("--rate", type=float, help="Open loop: Poisson arrivals at this replica, requests/s.")
@click.option("--prompt-tokens", type=int, default=512, show_default=True)
@click.option("--output-tokens", type=int, default=256, show_default=True)
@click.option("--kv-cache-dtype", help="KV-cache precision (default: the engine's default for the checkpoint).")
@click.option("--max-num-seqs", type=int, help="Engine limit on running sequences (default: the engine's own).")
@click.option("--requests-per-client", type=float, default=10.0, show_default=True,
              help="Closed loop: requests each client sends after warm-up (0: steady state only).")
@click.option("--simulate", is_flag=True, help="Also run the step-by-step scheduler simulation.")
@click.option("--api-server", help="The API server in front of the engine when not its own (e.g. nim): its "
                                   "per-request TTFT overhead (frameworks.toml server_overhead_ms).")
@click.option("--gpu-layers", type=int, help="llama.cpp: layers on the GPU (the rest in host RAM).")
@click.option("--expert-parallel", type=int, default=1, show_default=True,
              help="MoE: GPUs the routed experts are split over whole (1: every GPU holds a slice of each).")
@click.option("--price", multiple=True, help="Override a price, DEV=USD.")
@provider_option
@catalog_option
@json_option
@click.pass_context
def estimate(ctx, model, model_config, method, gpu, framework, gpus, concurrency, rate, prompt_tokens, output_tokens,
             kv_cache_dtype, max_num_seqs, requests_per_client, simulate, api_server, gpu_layers, expert_parallel,
             price, provider,
             catalogs, as_json):
    """Predictions for one configuration under load, with every term and the plugin that gave it."""
    from quantplan.solver.estimate import estimate as run
    from quantplan.solver.report import render_estimate

    if (model is None) == (model_config is None):
        raise QuantplanError("give exactly one of --model or --model-config")
    result = run(model, method, gpu, framework, gpus, concurrency, prompt_tokens, output_tokens, kv_cache_dtype,
                 gpu_layers, _pairs(price, "--price", float), model_config, catalogs=tuple(catalogs), rate=rate,
                 max_num_seqs=max_num_seqs, requests_per_client=requests_per_client, simulate=simulate,
                 provider=provider, api_server=api_server, expert_parallel=expert_parallel)
    _emit(result.model_dump(), as_json, lambda console: render_estimate(result, console))
    if not result.compatible:
        ctx.exit(1)


@cli.command()
@click.option("--model", "models", multiple=True, help="Models (default: the seed blog's six).")
@click.option("--method", "methods", multiple=True, help="Methods (default: fp16, int8-w8a8, awq-int4).")
@click.option("--gpu", "gpus", multiple=True, help="Devices (default: a100-80gb, rtx4090).")
@click.option("--batch", type=int, default=8, show_default=True)
@click.option("--context-tokens", type=int, default=4096, show_default=True)
@click.option("--framework", default="vllm", show_default=True)
@click.option("--kv-cache-dtype", default="fp16", show_default=True)
@catalog_option
@json_option
def memory(models, methods, gpus, batch, context_tokens, framework, kv_cache_dtype, catalogs, as_json):
    """The memory table: model x method, weights + KV + overhead, and where it fits."""
    from quantplan.solver import tables
    from quantplan.solver.registry import load_world
    from quantplan.solver.report import render_rows

    if batch <= 0 or context_tokens <= 0:
        raise QuantplanError("--batch and --context-tokens must be positive")
    from quantplan.solver.scenario import MAX_CONCURRENCY, MAX_TOKENS

    if batch > MAX_CONCURRENCY or context_tokens > 2 * MAX_TOKENS:
        raise QuantplanError(f"--batch {batch} / --context-tokens {context_tokens}: at most {MAX_CONCURRENCY} "
                             f"sequences of {2 * MAX_TOKENS} tokens")
    world = load_world(catalogs)
    rows = tables.memory_table(world, models or tables.BLOG_MODELS, methods or tables.BLOG_METHODS,
                               gpus or tables.BLOG_DEVICES, batch, context_tokens, framework, kv_cache_dtype)
    devices = list(rows[0].fits) if rows else []

    def render(console):
        cells = [[r.model, r.method, f"{r.weights_gb:.1f}", f"{r.kv_cache_gb:.1f}", f"{r.overhead_gb:.1f}",
                  f"{r.total_gb:.1f}"] + [("fits" if r.fits[d] else "NO") + (f" (TP{r.gpus_needed[d]})"
                                          if not r.fits[d] and r.gpus_needed[d] else "") for d in devices]
                 for r in rows]
        render_rows(f"Memory per replica at batch {batch} x {context_tokens} tokens ({framework}, "
                    f"{kv_cache_dtype} KV); fit on one GPU", ["model", "method", "weights (GB)", "KV cache (GB)",
                                                              "overhead (GB)", "total (GB)"] + devices, cells, console)

    _emit([r.model_dump() for r in rows], as_json, render)


@cli.command(name="list")
@click.argument("what", type=click.Choice(("gpus", "methods", "frameworks", "models")))
@provider_option
@catalog_option
@json_option
def list_(what, provider, catalogs, as_json):
    """List devices, methods, frameworks or models."""
    from quantplan.solver.registry import load_world
    from quantplan.solver.report import render_rows
    from quantplan.solver.shapes import active_linear_params, parameter_counts

    world = load_world(catalogs)
    prices = world.with_prices({}, provider)
    if what == "gpus":
        columns = ["id", "kind", "memory (GB)", "bandwidth (TB/s)", "fp16 (TFLOPS)", "fp8 (TFLOPS)",
                   "int8 (TOPS)", "fp4 (TFLOPS)", "cc", "$/h", "provider"]
        rows = [[g.id, g.kind, f"{g.usable_gb:g}", f"{g.bandwidth_tb_s:g}", f"{g.tflops_fp16:g}", f"{g.tflops_fp8:g}",
                 f"{g.tops_int8:g}", f"{g.tflops_fp4:g}", f"{g.compute_capability or '-'}",
                 f"{prices[g.id].usd_per_hour:g}" if g.id in prices else "-",
                 prices[g.id].provider if g.id in prices else "-"] for g in world.gpus]
        data = [dict(g.model_dump(), price_per_hour=prices[g.id].usd_per_hour if g.id in prices else None,
                     provider=prices[g.id].provider if g.id in prices else None,
                     price=prices[g.id].model_dump() if g.id in prices else None,
                     offers=[o.model_dump() for o in world.offers.get(g.id, [])])
                for g in world.gpus]
    elif what == "methods":
        columns = ["id", "kind", "bits/weight (linear)", "compute", "kernel", "min cc"]
        rows = [[m.id, m.kind, f"{m.linear_bits_per_weight:g}", m.compute_dtype, m.kernel,
                 f"{m.min_compute_capability or '-'}"] for m in world.methods]
        data = [m.model_dump() for m in world.methods]
    elif what == "frameworks":
        columns = ["id", "devices", "parallelism", "methods", "KV caches"]
        rows = [[f.id, ",".join(f.device_kinds), f.parallelism, ",".join(f.methods), ",".join(f.kv_cache_dtypes)]
                for f in world.frameworks]
        data = [f.model_dump() for f in world.frameworks]
    else:
        columns = ["id", "family", "params (B)", "active (B)", "layers", "KV heads", "KV KiB/token (fp16)"]
        rows, data = [], []
        for m in world.models:
            counts = parameter_counts(m)
            kv = 2 * m.layers * m.kv_heads * m.head_dim * 2 / 1024
            active = active_linear_params(m) + counts.embedding + counts.lm_head + counts.norms
            rows.append([m.id, m.family, f"{counts.total / 1e9:.2f}", f"{active / 1e9:.2f}", m.layers, m.kv_heads,
                         f"{kv:g}"])
            data.append(dict(m.model_dump(), params_b=counts.total / 1e9, active_params_b=active / 1e9))
    _emit(data, as_json, lambda console: render_rows(what, columns, rows, console))


@cli.command()
@catalog_option
@json_option
def plugins(catalogs, as_json):
    """Plugins loaded (with where they came from) and plugins that failed."""
    from quantplan.plugins.manager import make_plugin_set
    from quantplan.solver.report import render_rows

    found = make_plugin_set(catalogs=catalogs)
    loaded = [{"name": n, "origin": found.origins.get(n, "")} for n in found.names()]
    failed = [{"name": f.name, "distribution": f.distribution, "version": f.version, "error": f.error}
              for f in found.failures]

    def render(console):
        render_rows("Loaded plugins", ["name", "from"], [[p["name"], p["origin"]] for p in loaded], console)
        if failed:
            render_rows("Failed plugins", ["name", "distribution", "error"],
                        [[f["name"], f"{f['distribution']} {f['version']}".strip(), f["error"]] for f in failed],
                        console)

    _emit({"loaded": loaded, "failed": failed}, as_json, render)


# --- From plan to production: launch and check ------------------------------------------------------


def _launch_replicas(plan: dict, catalogs, calibration_data: str, model_config: str | None = None):
    from quantplan.solver.launch import launch as build
    from quantplan.solver.registry import load_world

    return build(plan, load_world(tuple(catalogs)), calibration_data, model_config)


def _solve_and_launch(plan, scenario, as_json: bool) -> None:
    """`solve --emit launch`: the plan, then its launch (JSON: the plan with a `launch` field)."""
    from quantplan.solver.launch_text import as_json as launch_json, as_text
    from quantplan.solver.report import render_plan

    replicas = _launch_replicas(json.loads(plan.model_dump_json()), scenario.catalogs, "calibration.jsonl",
                                scenario.model_config_path)
    if as_json:
        click.echo(json.dumps({**plan.model_dump(), "launch": launch_json(replicas)}, indent=2, default=str))
        return
    render_plan(plan, _console())
    click.echo(as_text(replicas))


@cli.command(name="launch")
@click.argument("plan_file", type=click.Path(dir_okay=False))
@click.option("--calibration-data", default="calibration.jsonl", show_default=True,
              help="Your domain's calibration samples, as recipes name them (one text per line).")
@click.option("--model-config", type=click.Path(dir_okay=False),
              help="The config.json a plan for a model outside the catalog was solved with.")
@catalog_option
@json_option
def launch_(plan_file, calibration_data, model_config, catalogs, as_json):
    """Engine commands, checkpoints or recipes, manifests and SLO benchmarks for a `solve --json` plan."""
    from quantplan.solver.launch import read_plan
    from quantplan.solver.launch_text import as_json as launch_json, as_text

    replicas = _launch_replicas(read_plan(plan_file), catalogs, calibration_data, model_config)
    if as_json:
        click.echo(json.dumps(launch_json(replicas), indent=2))
    else:
        click.echo(as_text(replicas))


@cli.command(name="check")
@click.option("--model", help="Model id or alias.")
@click.option("--method", help="Quantization method id or alias.")
@click.option("--gpu", help="Device id or alias.")
@click.option("--framework", help="Serving engine id or alias.")
@click.option("--gpus", type=int, help="GPUs per replica (default 1).")
@click.option("--batch", type=int, help="Peak concurrent sequences.")
@click.option("--prompt-tokens", type=int, help="Peak prompt tokens per request.")
@click.option("--output-tokens", type=int, help="Peak output tokens per request.")
@click.option("--kv-cache-dtype", help="KV-cache precision (default: the engine's default).")
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False), help="Check every replica group of a plan.")
@click.option("--command", "command_line", help='An engine command, e.g. "vllm serve M --quantization gptq_marlin".')
@click.option("--recipe", type=click.Path(dir_okay=False), help="The quantization recipe used (YAML or Python).")
@click.option("--checkpoint-config", type=click.Path(dir_okay=False),
              help="The checkpoint's config.json or quantize_config.json (quant_method, desc_act).")
@click.option("--quality-record", type=click.Path(dir_okay=False),
              help="Quality measured on your own data (JSON or TOML); without it, domain validation is missing.")
@catalog_option
@json_option
@click.pass_context
def check_(ctx, model, method, gpu, framework, gpus, batch, prompt_tokens, output_tokens, kv_cache_dtype, plan_file,
           command_line, recipe, checkpoint_config, quality_record, catalogs, as_json):
    """Which of the seed guide's common mistakes and checklist items a deployment runs into.
    Exit 0: none; 1: findings; 2: bad input."""
    from quantplan.solver import check_inputs
    from quantplan.solver.check import read_quality_record, run
    from quantplan.solver.launch import read_plan
    from quantplan.solver.registry import load_world

    sources = [name for name, given in (("--plan", plan_file), ("--command", command_line),
                                        ("--method/--gpu/--framework", method or framework)) if given]
    if len(sources) != 1:
        raise QuantplanError("give one of --plan, --command, or --model --method --gpu --framework"
                             + (f" (got {' and '.join(sources)})" if sources else ""))
    world = load_world(tuple(catalogs))
    extra = {"recipe": check_inputs.read_text(recipe, "--recipe")} if recipe else {}
    if quality_record:
        read_quality_record(quality_record)
    if plan_file:
        deployments = check_inputs.from_plan(world, read_plan(plan_file))
    elif command_line:
        config = check_inputs.read_checkpoint_config(checkpoint_config) if checkpoint_config else None
        deployments = [check_inputs.from_command(world, command_line, model, gpu, batch, prompt_tokens,
                                                 output_tokens, config, **extra)]
    else:
        if not (model and method and gpu and framework):
            raise QuantplanError("a deployment needs --model, --method, --gpu and --framework")
        deployments = [check_inputs.from_options(world, model, method, gpu, framework, gpus,
                                                 1 if batch is None else batch,
                                                 512 if prompt_tokens is None else prompt_tokens,
                                                 256 if output_tokens is None else output_tokens, kv_cache_dtype,
                                                 **extra)]
    findings, skipped = run(world, deployments, quality_record)
    if as_json:
        click.echo(json.dumps({"findings": [f.model_dump() for f in findings], "not_checked": skipped,
                               "deployments": [d.model_dump(exclude={"recipe"}) for d in deployments]}, indent=2))
    else:
        for f in findings:
            item = f" (checklist {f.checklist_item})" if f.checklist_item else ""
            click.echo(f"{f.where}: {f.item}{item}\n  evidence: {f.evidence}\n  fix: {f.fix}")
        for line in skipped:
            click.echo(f"not checked: {line}")
        if not findings:
            click.echo("no common mistake found")
    if findings:
        ctx.exit(1)


@cli.command(name="traffic")
@click.argument("log_file", type=click.Path(dir_okay=False))
@click.option("--model", help="Model id to write into the scenario.")
@click.option("--peak", is_flag=True, help="Rates of the busiest minute instead of the mean over the log.")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), help="Write the scenario TOML here.")
@json_option
def traffic_(log_file, model, peak, output, as_json):
    """Traffic classes (length clusters, rates, burstiness) from a request log, as a scenario TOML."""
    from quantplan.solver.traffic import profile, read_log, scenario_toml

    classes = profile(read_log(log_file))
    text = scenario_toml(classes, Path(log_file).name, model, peak)
    if output:
        Path(output).write_text(text)
    if as_json:
        click.echo(json.dumps({"classes": [c.model_dump() for c in classes], "scenario": text}, indent=2))
    elif not output:
        click.echo(text)


# --- quantplan calibrate: fit a device/framework/method's efficiencies to the user's own benchmark runs ---


@cli.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--model", help="Model id or alias the results were measured with.")
@click.option("--method", help="Quantization method.")
@click.option("--gpu", help="Device id (a new one: give its datasheet with --catalog).")
@click.option("--framework", help="Serving framework.")
@click.option("--gpus", type=int, default=1, show_default=True, help="GPUs per replica.")
@click.option("--kv-cache-dtype", help="KV-cache precision (default: the engine's default for the checkpoint).")
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False),
              help="A quantplan solve --json output: match each result to one of its replica groups instead.")
@click.option("--concurrency", type=float, help="Load of results that record none (AIPerf CSV): clients.")
@click.option("--rate", type=float, help="Load of results that record none: requests/s.")
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False),
              help="Overlay catalog to write (use it with --catalog).")
@catalog_option
@json_option
def calibrate(results, model, method, gpu, framework, gpus, kv_cache_dtype, plan_path, concurrency, rate, output,
              catalogs, as_json):
    """Fit efficiencies to your own measurements (vllm bench serve, AIPerf/genai-perf, SGLang bench_serving,
    llama-bench, trtllm-bench) and write an overlay catalog; prints the error before and after."""
    from quantplan.solver import calibrate as calibration
    from quantplan.solver import results as reading
    from quantplan.solver.registry import load_world
    from quantplan.solver.report import render_rows

    flags = {"--model": model, "--method": method, "--gpu": gpu, "--framework": framework}
    if plan_path and any(flags.values()):
        raise QuantplanError("give --plan or --model/--method/--gpu/--framework, not both")
    if not plan_path and not all(flags.values()):
        missing = ", ".join(k for k, v in flags.items() if not v)
        raise QuantplanError(f"missing {missing} (or give --plan PLAN.json)")
    world = load_world(catalogs)
    if plan_path:
        targets = calibration.targets_from_plan(world, plan_path)
    else:
        targets = [calibration.target_from_options(world, model, method, gpu, framework, gpus, kv_cache_dtype)]
    found = calibration.calibrate(world, reading.read(results, concurrency, rate), targets, catalogs)
    Path(output).write_text(found.overlay)
    if as_json:
        click.echo(json.dumps({"overlay": output, "calibrations": found.scopes, "errors": found.errors,
                               "rows": found.rows, "skipped": found.skipped}, indent=2))
        return
    console = _console()
    render_rows("Calibrated efficiencies", ["device / framework / method", "figure", "catalog", "calibrated", "fitted"],
                [[f"{s['gpu']} / {s['framework']} / {s['method']}", name, f"{s['catalog'][name]:.4g}",
                  f"{s['values'][name]:.4g}", ("yes, at its bound: check the runs" if name in s["at_bound"] else "yes")
                  if name in s["fitted"] else "no (data cannot inform it)"]
                 for s in found.scopes for name in s["values"]], console)
    render_rows("Error (|predicted / measured - 1|)", ["metric", "statistic", "n", "median before", "p90 before",
                                                        "median after", "p90 after"],
                [[e["metric"], e["statistic"] + ("" if e["fitted"] else " (not fitted)"), e["rows"],
                  f"{e['before_median']:.1%}", f"{e['before_p90']:.1%}", f"{e['after_median']:.1%}",
                  f"{e['after_p90']:.1%}"] for e in found.errors], console)
    for skipped in found.skipped:
        console.print(f"skipped {skipped['record']}: {skipped['reason']}")
    console.print(f"wrote {output}: use it with --catalog {output}")


# ---------------------------------------------------------------- quantplan report


@cli.command()
@workload_options
@click.option("-o", "--output", "output", required=True,
              help="Write the page here (one self-contained HTML file: inline CSS and SVG, no network).")
@click.option("--price-range", "price_range", help="DEV=FROM:TO: the price sweep to show (default: the plan's "
                                                   "costliest device, half to twice its price).")
@click.option("--no-sweep", is_flag=True, help="Leave the price sweep out (faster).")
@json_option
@click.pass_context
def report(ctx, scenario_file, output, price_range, no_sweep, as_json, **options):
    """One HTML page: the workload, the plan with error bars, why it won, the alternatives, a cost-latency-quality
    chart of every candidate, memory per GPU, a price sweep and the launch commands."""
    from quantplan.solver.html_report import build

    ctx.meta["as_json"] = as_json
    check_output_path(output, "-o")
    target = Path(output)
    scenario = scenario_from_options(scenario_file, options)
    page = build(scenario, price_range=_range(price_range, "--price-range") if price_range else None,
                 sweep=not no_sweep)
    try:
        target.write_text(page.html, encoding="utf-8")
    except OSError as error:
        raise QuantplanError(f"-o {output}: cannot write: {error.strerror or error}") from None
    if page.infeasible is not None:  # the page says why; the exit code and stderr say infeasible
        raise page.infeasible
    summary = {"output": str(target), "status": page.plan.status, "cost_per_hour": page.plan.cost_per_hour,
               "replica_groups": len(page.plan.replicas), "candidates": page.candidates,
               "pareto_front": page.front, "price_sweep": page.sweep}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"wrote {target}: {summary['replica_groups']} replica group(s), ${page.plan.cost_per_hour:,.2f}/h; "
                   f"{page.candidates} candidates, {page.front} on the Pareto front; price sweep: {page.sweep}")




# ---- quantplan quality: measured perplexity, KL and agreement against running engines -----------------

def _solve_with_measured(scenario, paths, run):
    """solve with measured quality records in place of predicted ppl; the plan notes records it did not use."""
    from quantplan.solver.measured_quality import load_measured
    from quantplan.solver.registry import load_world

    world = load_world(scenario.catalogs)
    world.measured_quality = load_measured(paths, world)
    plan = run(scenario, world)
    used = {(plan.model, g.method) for g in plan.replicas if g.ppl_measured}
    unused = [f"measured record for {model} / {method} not used: "
              + (f"the plan is for {plan.model}" if model != plan.model else "the plan chose another method")
              for model, method in sorted(world.measured_quality) if (model, method) not in used]
    return plan.model_copy(update={"notes": plan.notes + unused}) if unused else plan


def _new_quality_run(baseline, candidate, data, engine, top_k, max_tokens, model, method, kv_cache_dtype, target):
    """Check the data, the output and both servers before anything is scored."""
    from quantplan.solver import quality_check as check
    from quantplan.solver.quality_engines import connect

    if not (baseline and candidate and data):
        raise QuantplanError("give --baseline URL[#MODEL], --candidate URL[#MODEL] and --data FILE "
                             "(or --resume RECORD, or --from-llama-perplexity LOG)")
    check.read_documents(data)
    if target.exists() and _unfinished(target):
        raise QuantplanError(f"-o {target} holds an unfinished run: carry it on with --resume {target}, "
                             f"or choose another -o")
    return check.Run(connect(baseline, engine, "baseline"), connect(candidate, engine, "candidate"),
                     Path(data), top_k, max_tokens, model, method, kv_cache_dtype)


def _unfinished(path: Path) -> bool:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("complete") is False


def _render_quality(record: dict, use_case: str | None, console) -> None:
    from quantplan.solver.report import render_rows

    summary = record["summary"]
    names = {"ppl_baseline": "perplexity, baseline", "ppl_candidate": "perplexity, candidate",
             "ppl_delta": "ppl increase", "ppl_delta_pct": "ppl increase (%)", "kl_divergence": "KL divergence",
             "top1_agreement": "top-1 agreement"}
    level = f"{summary['ci_level']:.0%} interval"
    render_rows(f"{record.get('model') or 'model'} / {record.get('method') or 'candidate'}: "
                f"{summary['documents'] or '-'} documents, {summary['tokens'] or '-'} tokens",
                ["figure", "value", level],
                [[label, f"{summary[key]:.5g}", "{:.5g} .. {:.5g}".format(*summary["ci"][key])
                  if key in summary["ci"] else "-"] for key, label in names.items() if key in summary], console)
    verdicts = {k: v for k, v in summary["verdicts"].items() if use_case in (None, k)}
    render_rows("Use cases (seed VALIDATION_THRESHOLDS: ppl increase < max and KL < max)",
                ["use case", "max ppl increase", "max KL", "ppl", "KL", "verdict", "at interval's upper end"],
                [[name, f"{v['max_ppl_delta']:g}", f"{v['max_kl_divergence']:g}", "pass" if v["ppl_pass"] else "FAIL",
                  "pass" if v["kl_pass"] else "FAIL", "pass" if v["pass"] else "FAIL",
                  "pass" if v["pass_at_ci_upper"] else "FAIL"] for name, v in verdicts.items()], console)
    console.print(f"KL: {record['kl_estimator']}.")
    console.print(f"intervals: {summary['ci_method']}.")


@cli.command()
@click.option("--baseline", help="Baseline server, URL[#MODEL] (the OpenAI-compatible server's base URL).")
@click.option("--candidate", help="Candidate (quantized) server, URL[#MODEL].")
@click.option("--data", type=click.Path(dir_okay=False), help="Your text: plain text (documents split at blank "
                                                              "lines) or .jsonl with a \"text\" field.")
@click.option("--engine", type=click.Choice(("auto", "vllm", "llama.cpp", "sglang")), default="auto",
              show_default=True, help="Engine API to use (auto: from /v1/models owned_by).")
@click.option("--use-case", help="Show and gate on one use case: chat_general, code_generation, medical_legal, "
                                 "summarization (exit 1 when it fails).")
@click.option("--top-k", type=int, default=20, show_default=True, help="Top tokens per position for KL and agreement.")
@click.option("--max-tokens-per-doc", type=int, help="Score at most this many tokens of each document.")
@click.option("--model", help="Model id the record is for (quantplan list models): solve --quality uses it.")
@click.option("--method", help="Method id of the candidate (quantplan list methods).")
@click.option("--kv-cache-dtype", default="fp16", show_default=True, help="KV-cache format the candidate ran with.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="quantplan-quality.json", show_default=True,
              help="Quality record, rewritten after every document.")
@click.option("--resume", type=click.Path(dir_okay=False), help="Carry on an unfinished record.")
@click.option("--from-llama-perplexity", "perplexity_log", type=click.Path(dir_okay=False),
              help="Read a llama-perplexity --kl-divergence log instead of querying servers.")
@catalog_option
@json_option
@click.pass_context
def quality(ctx, baseline, candidate, data, engine, use_case, top_k, max_tokens_per_doc, model, method,
            kv_cache_dtype, output, resume, perplexity_log, catalogs, as_json):
    """Perplexity, KL divergence and top-1 agreement of a candidate against a baseline, on your text."""
    from quantplan.solver import quality_check as check
    from quantplan.solver.registry import load_world

    world = load_world(catalogs)
    use_cases = world.quality.use_cases
    if use_case is not None and use_case not in use_cases:
        raise QuantplanError(f"--use-case {use_case!r}: known use cases are {', '.join(sorted(use_cases))}")
    model = world.models.get(model).id if model else None
    method = world.methods.get(method).id if method else None
    kv_cache_dtype = world.kv_caches.get(kv_cache_dtype).id
    if top_k < 1 or (max_tokens_per_doc is not None and max_tokens_per_doc < 2):
        raise QuantplanError("--top-k must be at least 1 and --max-tokens-per-doc at least 2")
    target = Path(resume or output)
    if perplexity_log:
        if baseline or candidate or data or resume:
            raise QuantplanError("--from-llama-perplexity reads a log: give no --baseline, --candidate, --data "
                                 "or --resume")
        summary = check.from_llama_perplexity(perplexity_log, use_cases)
        record = check.record_from_log(perplexity_log, summary, model, method, kv_cache_dtype)
        check.write_record(target, record)
    else:
        if resume:  # the run's settings come from the record; servers that moved may be given again
            saved = check.read_record(resume)
            run = check.resume_run(saved, data, baseline, candidate, engine)
        else:
            saved = None
            run = _new_quality_run(baseline, candidate, data, engine, top_k, max_tokens_per_doc, model, method,
                                   kv_cache_dtype, target)
        bar, tick = _progress(len(check.read_documents(run.data)[0]), not as_json)
        try:
            record = check.measure(run, target, use_cases, saved, (lambda done, total: tick(done)) if tick else None)
        finally:
            if bar:
                bar.stop()
    shown = {k: v for k, v in record.items() if k != "results"} | {"record": str(target)}
    _emit(shown, as_json, lambda console: _render_quality(record, use_case, console))
    if use_case is not None and not record["summary"]["verdicts"][use_case]["pass"]:
        ctx.exit(1)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: click's usage errors also become one line and exit code 2. Run as the
    process's own command line (`argv` None), the process ends after the command: what its plans leave alive
    stays out of the garbage collector's later passes (solver/collection.py)."""
    if argv is None:
        from quantplan.solver import collection

        collection.keep_out_of_collections()
    try:
        code = cli.main(args=argv, prog_name="quantplan", standalone_mode=False)
    except click.exceptions.Exit as done:
        return done.exit_code
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 1
    except click.ClickException as error:
        click.echo(f"error: {error.format_message()}", err=True)
        return 2
    except click.Abort:
        click.echo("aborted", err=True)
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
