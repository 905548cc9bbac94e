"""The report page's launch commands: from quantplan.solver.launch when this build has it, else how to get them."""

from __future__ import annotations

from html import escape

from .errors import QuantplanError
from .plan import Plan
from .registry import World
from .scenario import Scenario


def _p(text: str, css: str = "") -> str:
    return f'<p class="{css}">{escape(text)}</p>' if css else f"<p>{escape(text)}</p>"


# Filled in by quantplan.solver.launch (`quantplan launch PLAN.json`) when this build has it; otherwise the
# page says how to get them. Integration point: launch(plan_dict, world, model_config=...) -> replicas with
# .name, .framework, .gpu, .count, .command, .checkpoint (kind, path, steps) and .benchmarks[].command.


def launch_section(plan: Plan, world: World, scenario: Scenario | None = None) -> str:
    how = ("quantplan solve SCENARIO.toml --json > plan.json && quantplan launch plan.json "
           "(engine commands, the checkpoint or the recipe that makes it, Kubernetes and compose manifests, and "
           "the benchmark that checks the SLOs)")
    try:
        from .launch import launch  # type: ignore[import-not-found]
    except ImportError:
        return _p("This build of quantplan has no launch module. To get the commands: " + how + ".")
    data = plan.model_dump()
    if scenario is not None and all(isinstance(line, str) for line in data.get("workload", [])):
        # launch reads the planned traffic classes; a plan whose `workload` is its human lines gets them here
        data["workload"] = [k.model_dump() for k in scenario.classes]
    try:
        replicas = launch(data, world, model_config=scenario.model_config_path if scenario else None)
    except QuantplanError as error:
        return _p(f"Launch commands unavailable for this plan ({error}). Try: {how}.", "warn")
    html = ""
    for replica in replicas:
        checkpoint = getattr(replica, "checkpoint", None)
        html += (f"<h3>{escape(str(getattr(replica, 'name', '')))}: {getattr(replica, 'count', 1)} x "
                 f"{escape(str(getattr(replica, 'framework', '')))} on {escape(str(getattr(replica, 'gpu', '')))}"
                 "</h3>")
        if checkpoint is not None:
            source = getattr(checkpoint, "source", "")
            html += _p(f"Checkpoint ({getattr(checkpoint, 'kind', '')}): {getattr(checkpoint, 'path', '')}"
                       + (f" (source: {source})" if source else ""))
            if getattr(checkpoint, "recipe", ""):
                html += _p(f"Recipe ({getattr(checkpoint, 'tool', '')}):") + f"<pre>{escape(checkpoint.recipe)}</pre>"
            html += "".join(f"<pre>{escape(step)}</pre>" for step in getattr(checkpoint, "steps", []) or [])
        html += _p("Start the engine:") + f"<pre>{escape(replica.command)}</pre>"
        benchmarks = [b.command for b in getattr(replica, "benchmarks", []) or []]
        if benchmarks:
            html += _p("Check the SLOs:") + "".join(f"<pre>{escape(command)}</pre>" for command in benchmarks)
    return html or _p("The launch module returned no replicas.")
