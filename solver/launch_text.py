"""A launch as JSON (`launch --json`) or as text: per replica group the checkpoint or recipe, the
engine command and the benchmark; then the Kubernetes manifest and the compose file."""

from __future__ import annotations

from . import manifests


def as_json(replicas) -> dict:
    groups = []
    for r in replicas:
        entry = dict(name=r.name, framework=r.framework, gpu=r.gpu, gpus_per_replica=r.gpus_per_replica,
                     count=r.count, image=r.image, command=r.command)
        if r.config_file:
            entry["config_file"] = r.config_file
        key = "checkpoint" if r.checkpoint.kind in ("public", "base") else "recipe"
        entry[key] = r.checkpoint.model_dump()
        entry["benchmark_command"] = r.benchmark_command
        entry["benchmarks"] = [b.model_dump() for b in r.benchmarks]
        groups.append(entry)
    return {"replicas": groups, "kubernetes": manifests.kubernetes(replicas), "compose": manifests.compose(replicas)}


def as_text(replicas) -> str:
    lines = []
    for r in replicas:
        c = r.checkpoint
        lines.append(f"## {r.name}: {r.count} x ({r.gpus_per_replica}x {r.gpu}, {r.framework})")
        if c.kind == "recipe":
            lines.append(f"# 1. make the checkpoint ({c.tool or 'no known tool'}) -> {c.path}")
            if c.recipe:
                lines += ["# recipe:"] + [f"#   {line}" for line in c.recipe.rstrip().splitlines()]
            lines += c.steps
        else:
            lines.append(f"# 1. checkpoint ({c.kind}): {c.path}" + (f"  [{c.source}]" if c.source else ""))
            lines += c.steps
        lines += [f"# note: {note}" for note in c.notes]
        if r.config_file:
            lines += ["# 2. TabbyAPI config.yml:"] + [f"#   {line}" for line in r.config_file.rstrip().splitlines()]
        lines += ["# 2. start one replica:", r.command]
        for b in r.benchmarks:
            slo = b.slo
            target = ", ".join(f"{name.upper()} <= {slo[key]:.4g} ms (plan: {slo['predicted_' + key]:.1f} ms)"
                               for name, key in (("ttft", "ttft_ms"), ("tpot", "tpot_ms")) if slo.get(key))
            lines += [f"# 3. check class {b.traffic_class} on one replica ({slo['statistic']} {target or 'no SLO'}):",
                      b.command, f"#    or: {b.aiperf_command}"]
        if len(r.benchmarks) > 1:
            lines.append("# the plan's figures are for these classes together: run their benchmarks at the same time")
        lines.append("")
    lines += ["# Kubernetes (kubectl apply -f -):", manifests.kubernetes(replicas),
              "# docker compose (compose.yaml):", manifests.compose(replicas)]
    return "\n".join(lines)
