"""The report page's launch commands: each replica group's checkpoint or recipe, engine command and SLO benchmark."""

from __future__ import annotations

import json
from html import escape

from .errors import QuantplanError
from .launch import launch
from .plan import Plan
from .registry import World
from .scenario import Scenario

HOW = ("quantplan solve SCENARIO.toml --json > plan.json && quantplan launch plan.json (engine commands, the "
       "checkpoint or the recipe that makes it, Kubernetes and compose manifests, and the benchmark that checks "
       "the SLOs)")


def _p(text: str, css: str = "") -> str:
    return f'<p class="{css}">{escape(text)}</p>' if css else f"<p>{escape(text)}</p>"


def _pre(text: str) -> str:
    return f"<pre>{escape(text)}</pre>"


def launch_section(plan: Plan, world: World, scenario: Scenario | None = None) -> str:
    """What `quantplan launch` gives for this plan; where it cannot, why, and the command that shows more."""
    try:  # launch reads a plan as `solve --json` writes it
        replicas = launch(json.loads(plan.model_dump_json()), world,
                          model_config=scenario.model_config_path if scenario else None)
    except QuantplanError as error:
        return _p(f"Launch commands unavailable for this plan ({error}). Try: {HOW}.", "warn")
    html = _p("Kubernetes and compose manifests, and all of this as JSON: quantplan solve SCENARIO.toml --json > "
              "plan.json && quantplan launch plan.json [--json].", "muted")
    for replica in replicas:
        checkpoint = replica.checkpoint
        html += (f"<h3>{escape(replica.name)}: {replica.count} x {escape(replica.framework)} on "
                 f"{escape(replica.gpu)}</h3>")
        html += _p(f"Checkpoint ({checkpoint.kind}): {checkpoint.path}"
                   + (f" (source: {checkpoint.source})" if checkpoint.source else ""))
        if checkpoint.recipe:
            html += _p(f"Recipe ({checkpoint.tool}):") + _pre(checkpoint.recipe)
        if checkpoint.steps:
            html += _p("Make the checkpoint:" if not checkpoint.recipe else "Then run:")
            html += "".join(_pre(step) for step in checkpoint.steps)
        html += _p("Start the engine:") + _pre(replica.command)
        if replica.benchmarks:
            html += _p("Check the SLOs:") + "".join(_pre(b.command) for b in replica.benchmarks)
    return html
