"""Why: binding constraints of a plan, and what cannot be met (and what could) when there is no plan."""

from __future__ import annotations

import math

from .plan import ReplicaGroup
from .serving import distinct
from .program import Solution, gpus_by_device
from .scenario import Scenario
from .gates import gate
from .space import Space

BINDING_SHARE = 0.9  # a figure within 10% of its limit is reported as binding


def binding_constraints(world, scenario: Scenario, solution: Solution, groups: list[ReplicaGroup],
                        space: Space) -> list[str]:
    found = []
    by_name = {k.name: k for k in scenario.classes}
    for group in groups:
        label = f"{group.gpu}/{group.method}/b{group.batch_size}"
        for figures in group.classes:
            name = figures.name
            traffic = by_name[name]
            stat = "" if figures.statistic == "mean" else f" {figures.statistic}"
            ttft = figures.ttft_at_statistic_ms if figures.ttft_at_statistic_ms is not None else figures.ttft_ms
            tpot = figures.tpot_at_statistic_ms if figures.tpot_at_statistic_ms is not None else figures.tpot_ms
            if traffic.ttft_ms and ttft >= BINDING_SHARE * traffic.ttft_ms:
                found.append(f"{name}: TTFT{stat} {ttft:.0f} of {traffic.ttft_ms:g} ms ({label})")
            limit = traffic.tpot_limit_ms
            if limit and tpot >= BINDING_SHARE * limit:
                found.append(f"{name}: TPOT{stat} {tpot:.1f} of {limit:.1f} ms ({label})")
            if figures.quality_headroom is not None and figures.quality_headroom <= 1 - BINDING_SHARE:
                found.append(f"{name}: quality, {figures.quality_bound} ({label})")
        if group.memory_gb_per_gpu >= BINDING_SHARE * group.memory_capacity_gb_per_gpu:
            found.append(f"memory: {group.memory_gb_per_gpu:.1f} of {group.memory_capacity_gb_per_gpu:.1f} GB "
                         f"per GPU ({label})")
        users = sum(k.users for k in scenario.classes if k.load_kind == "concurrency")
        nxt = _next_batch_limit(space, group) if group.batch_size < users or users == 0 else ""
        if nxt:
            found.append(nxt)
    taken = gpus_by_device(solution.assignments)
    for device, limit in sorted(solution.availability.items()):
        used = taken.get(device, 0)
        if used and used >= limit:
            found.append(f"availability: all {limit} {device} in use")
    if scenario.max_configurations and len(groups) >= scenario.max_configurations:
        found.append(f"at most {scenario.max_configurations} distinct configuration(s)")
    return found


def _next_batch_limit(space: Space, group: ReplicaGroup) -> str:
    """What stops the same configuration at the next larger batch size."""
    same = [o for o in space.options if o.config.gpu.id == group.gpu and o.config.method.id == group.method
            and o.config.framework.id == group.framework and o.config.gpus == group.gpus_per_replica
            and o.config.kv.id == group.kv_cache_dtype and o.config.batch > group.batch_size]
    if same:
        return ""
    return (f"batch {group.batch_size} is the largest for {group.gpu}/{group.method} that fits memory and "
            f"meets the SLOs")


def infeasibility(world, scenario: Scenario, space: Space, model_id: str, unconstrained=None) -> list[str]:
    """Say what cannot be met, with the best each constraint allows."""
    reasons = []
    if not space.configurations:
        top = ", ".join(f"{reason} ({count}x)" for reason, count in space.incompatible.most_common(3))
        return [f"no compatible configuration for {model_id} with the devices, methods and frameworks allowed"
                + (f": {top}" if top else "")]
    served = {name for o in space.options for name in o.performance}
    for traffic in scenario.classes:
        if traffic.name in served:
            continue
        diagnostics = space.per_class[traffic.name]
        prefix = f"class {traffic.name!r}: " if len(scenario.classes) > 1 else ""
        if not diagnostics.fits:
            smallest = diagnostics.smallest_memory
            reasons.append(f"{prefix}{model_id} does not fit any allowed device at {traffic.context_tokens} tokens "
                           f"of context: the smallest need is {smallest.value:.1f} GB per GPU ({smallest.what}); "
                           f"allow more GPUs per replica (--max-gpus), a lower-bit method or a larger device")
            continue
        quality_gate = gate(world, traffic)
        best_ppl = diagnostics.best_ppl
        if quality_gate.bounds and not diagnostics.meets_quality:
            asked = ", ".join(f"{b.figure.replace('recovery.', '')} {'<=' if b.ceiling else '>='} {b.limit:g}"
                              + ("%" if not b.ceiling else "") for b in quality_gate.bounds)
            reasons.append(f"{prefix}no fitting configuration meets the quality gate ({asked}): the closest is "
                           f"{diagnostics.best_quality.what}")
            continue
        if traffic.tpot_limit_ms is not None and diagnostics.best_tpot.value > traffic.tpot_limit_ms:
            best = diagnostics.best_tpot
            value, limit = distinct(best.value, traffic.tpot_limit_ms, 1)
            reasons.append(f"{prefix}best TPOT{_stat(traffic)} reachable for {model_id} is {value} ms "
                           f"({1000 / best.value:.1f} tokens/s per user) on {best.what}; the SLO is {limit} ms")
        if traffic.ttft_ms is not None:
            best = diagnostics.best_ttft_meeting_tpot if traffic.tpot_limit_ms else diagnostics.best_ttft
            if best.value > traffic.ttft_ms and math.isfinite(best.value):
                value, limit = distinct(best.value, traffic.ttft_ms, 0)
                reasons.append(f"{prefix}best TTFT{_stat(traffic)} reachable for {model_id} is {value} ms on "
                               f"{best.what}; the SLO is {limit} ms")
            elif best.value > traffic.ttft_ms:
                reasons.append(f"{prefix}no configuration meets the TPOT SLO, so none can meet TTFT and TPOT together")
        if len(reasons) == 0 or not reasons[-1].startswith(prefix + "best"):
            reasons.append(f"{prefix}no single configuration meets all SLOs and the quality floor together "
                           f"(best TTFT {diagnostics.best_ttft.value:.0f} ms, best TPOT "
                           f"{diagnostics.best_tpot.value:.1f} ms, best ppl +{best_ppl.value:.3f})")
    budget = scenario.max_cost_per_hour
    if not reasons and budget is not None and unconstrained is not None \
            and unconstrained.cost_per_hour > budget * (1 + 1e-9):
        reasons.append(f"no plan within the budget of ${budget:.2f}/h: the cheapest that meets the SLOs and the "
                       f"quality floor costs ${unconstrained.cost_per_hour:.2f}/h ({_plan_text(unconstrained)})")
    if not reasons:
        limits = ", ".join([f"{d}={n}" for d, n in sorted(scenario.gpu_count.items())]
                           + [f"{d}={n} owned" for d, n in sorted(scenario.owned.items())])
        needed = ""
        if unconstrained is not None:
            use = gpus_by_device(unconstrained.assignments)
            plan = _plan_text(unconstrained)
            needed = (f"; the cheapest plan that meets them needs "
                      f"{', '.join(f'{n} {d}' for d, n in sorted(use.items()))} ({plan}, "
                      f"${unconstrained.cost_per_hour:.2f}/h)")
        reasons.append("every class has configurations that meet its SLOs, but not within the devices available"
                       + (f" ({limits})" if limits else "")
                       + (f" and at most {scenario.max_configurations} configurations"
                          if scenario.max_configurations else "")
                       + needed)
    return reasons


def _plan_text(solution) -> str:
    return "; ".join(f"{a.replicas} x ({a.option.config.gpus}x {a.option.config.gpu.id}, "
                     f"{a.option.config.method.id}, {a.option.config.framework.id}, batch "
                     f"{a.option.config.batch})" for a in solution.assignments)


def _stat(traffic) -> str:
    return "" if traffic.statistic == "mean" else f" {traffic.statistic}"



def workload(world, scenario: Scenario, model_id: str) -> list[str]:
    """The problem as understood, one line per traffic class plus one for the hardware and objective."""
    lines = []
    for traffic in scenario.classes:
        load = (f"{traffic.rate_per_s:g} req/s (Poisson)" if traffic.load_kind == "rate"
                else f"{traffic.users} concurrent users (closed loop, {traffic.requests_per_client:g} requests each)")
        slos = []
        stat = "" if traffic.statistic == "mean" else f" {traffic.statistic}"
        if traffic.ttft_ms is not None:
            slos.append(f"TTFT{stat} <= {traffic.ttft_ms:g} ms")
        if traffic.tpot_limit_ms is not None:
            slos.append(f"TPOT{stat} <= {traffic.tpot_limit_ms:.4g} ms")
        bounds = gate(world, traffic).bounds
        if bounds:
            slos.append(", ".join(f"{b.figure.replace('recovery.', 'recovery ')} {'<=' if b.ceiling else '>='} "
                                  f"{b.limit:g}{'' if b.ceiling else '%'}" for b in bounds)
                        + (f" ({traffic.use_case})" if traffic.use_case else ""))
        lines.append(f"{model_id}, class {traffic.name}: {load}, {traffic.prompt_tokens} prompt + "
                     f"{traffic.output_tokens} output tokens; " + (", ".join(slos) if slos else "no SLO"))
    devices = ", ".join(scenario.gpus) if scenario.gpus else f"{scenario.gpu_class} devices"
    limits = [f"at most {scenario.max_gpus} GPU{'' if scenario.max_gpus == 1 else 's'} per replica"]
    if scenario.gpu_count:
        limits.append("available " + ", ".join(f"{n} {d}" for d, n in sorted(scenario.gpu_count.items())))
    if scenario.owned:
        limits.append("owned (no hourly price) " + ", ".join(f"{n} {d}" for d, n in sorted(scenario.owned.items())))
    if scenario.max_cost_per_hour is not None:
        limits.append(f"budget ${scenario.max_cost_per_hour:g}/h")
    restricted = [f"{label} {', '.join(values)}" for label, values in (
        ("methods", scenario.methods), ("frameworks", scenario.frameworks), ("KV", scenario.kv_cache_dtypes)) if values]
    lines.append(f"on {devices}; {'; '.join(limits + restricted)}; objective {scenario.objective}; "
                 f"margin {scenario.margin}")
    return lines
