"""The Python API: `solve(scenario)` and `estimate(...)`, the two doors the CLI also uses."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from . import collection, errorbars, program
from .errors import InfeasibleError, QuantplanError
from .explain import binding_constraints, infeasibility, workload
from .gates import gate
from .plan import (Alternative, Plan, SolveStats, mean_request_latency_ms, replica_group,
                   served_tokens_per_s, summary)
from .prices import PricesUsed, prices_used
from .registry import World, load_world
from .scenario import Scenario, TrafficClass, make_scenario
from .space import Option, Space, build_space, candidate_devices, free_if_owned, pool, served_figures


def prune_dominated(options: list[Option], classes: tuple[TrafficClass, ...],
                    with_latency: bool = False, limited: set[str] | None = None,
                    per_method: bool = False) -> list[Option]:
    """Drop options another option beats or ties on every count, using the same GPUs.

    b dominates a when both use the same device type, b needs no more GPUs per replica, costs no
    more, serves every class a serves with at least a's capacity, no higher request latency, no
    more quality loss, and lies inside the validation data if a does; on a full tie the
    alphabetically first key survives. Any plan using a can use b instead at no extra cost.

    `limited`: the device ids whose counts are limited. When given, options on the other devices are
    compared across device types too: without a limit a device type changes no constraint of the program,
    only cost, GPUs, capacity, latency and quality do (a sweep over one device's price must not use this:
    there the device type decides how cost moves). None: every device is compared only with itself.
    `per_method`: compare only options of one method too (what a one-method alternative prunes from: the
    skyline of any set of methods is the skyline of their per-method skylines).

    Sort-filter skyline: per device, options in an order that puts every dominator before what it
    dominates (lexicographic on cost, GPUs, loss, outside-the-data, total capacity, classes served, total
    latency, rank); each is kept unless a kept one dominates it (dominance is transitive, so the kept set is
    enough). `_prune_pairwise` is the all-pairs definition the tests compare it with.
    """
    keep: list[int] = []
    for members, crit in _criteria(options, classes, with_latency, limited, per_method):
        cost, gpus, loss, outside, capacity, latency, position = crit
        if latency is not None:  # a dominator serves every class its victim serves, at no higher latency
            finite = np.isfinite(latency)
            served, total = -finite.sum(axis=1), np.where(finite, latency, 0.0).sum(axis=1)
        else:
            served = total = np.zeros(len(members))
        order = np.lexsort((position, total, served, -capacity.sum(axis=1), outside, loss, gpus, cost))
        keep += [members[i] for i in _skyline(order, crit)]
    return [options[i] for i in sorted(keep)]


SKYLINE_BLOCK = 256  # options checked at once against those kept so far


def _skyline(order: np.ndarray, crit) -> list[int]:
    """The options (indices, in `order`) that no other option dominates. `order` puts every dominator before
    what it dominates, and dominance is transitive, so an option is dropped exactly when an option kept
    earlier dominates it: each block of SKYLINE_BLOCK options is compared with the options kept before it and
    with itself, in array operations."""
    kept: list[int] = []
    for start in range(0, len(order), SKYLINE_BLOCK):
        block = order[start:start + SKYLINE_BLOCK]
        beaten = _dominated(block, block, crit).any(axis=0)
        if kept:
            beaten |= _dominated(np.array(kept), block, crit).any(axis=0)
        kept += [int(i) for i in block[~beaten]]
    return kept


def _dominated(by: np.ndarray, who: np.ndarray, crit) -> np.ndarray:
    """[b, a]: option by[b] dominates option who[a] (prune_dominated's rule; a full tie goes to the earlier rank)."""
    cost, gpus, loss, outside, capacity, latency, position = crit
    b, a = by[:, None], who[None, :]
    more = capacity[by][:, None, :] - capacity[who][None, :, :]  # b's capacity over a's, per class
    no_worse = ((cost[b] <= cost[a]) & (gpus[b] <= gpus[a]) & (loss[b] <= loss[a]) & (outside[b] <= outside[a])
                & (more >= 0).all(axis=2))
    strictly = ((cost[b] < cost[a]) | (gpus[b] < gpus[a]) | (loss[b] < loss[a]) | (outside[b] < outside[a])
                | (more > 0).any(axis=2) | (position[b] < position[a]))
    if latency is not None:
        no_worse &= (latency[by][:, None, :] <= latency[who][None, :, :]).all(axis=2)
        strictly |= (latency[by][:, None, :] < latency[who][None, :, :]).any(axis=2)
    return no_worse & strictly


def _criteria(options: list[Option], classes, with_latency: bool, limited: set[str] | None = None,
              per_method: bool = False):
    """Per device type (devices not in `limited`, when given, as one group; per method too when `per_method`):
    member indices and the arrays dominance compares (position: the order of program.rank, as arrays)."""
    groups: dict[tuple[str, str], list[int]] = {}
    for index, option in enumerate(options):
        device = option.config.gpu.id
        group = (device if limited is None or device in limited else "", option.config.method.id if per_method else "")
        groups.setdefault(group, []).append(index)
    names = [k.name for k in classes]
    for members in groups.values():
        count = len(members)
        chosen = [options[i] for i in members]
        cost = np.array([o.cost_per_hour for o in chosen], dtype=float)
        loss = np.array([o.quality.relative for o in chosen], dtype=float)
        rounded = np.array([round(o.quality.relative, 9) for o in chosen], dtype=float)
        outside = np.array([o.extrapolated for o in chosen], dtype=int)
        gpus = np.array([o.config.gpus for o in chosen], dtype=int)
        keys = [o.key for o in chosen]
        latency = np.full((count, len(names)), np.inf) if with_latency else None
        found = served_figures(chosen, names)
        if found is not None:
            capacity, tpot = found
        else:
            capacity, tpot = np.zeros((count, len(names))), np.empty(count)
            for row, option in enumerate(chosen):
                performance = option.performance
                tpot[row] = round(sum(performance[name].tpot_ms for name in performance) / len(performance), 6)
                for column, name in enumerate(names):
                    if name in performance:
                        capacity[row, column] = performance[name].capacity
        if with_latency:
            for row, option in enumerate(chosen):
                for column, name in enumerate(names):
                    if name in option.performance:
                        latency[row, column] = program.request_latency_ms(option, classes[column])
        # program.rank's order: GPUs, outside the data, quality loss (9 decimals), mean TPOT (6 decimals), key
        ranked = np.lexsort((np.array(keys), tpot, rounded, outside, gpus))
        position = np.empty(count, dtype=int)
        position[ranked] = np.arange(count)
        yield members, (cost, gpus, loss, outside, capacity, latency, position)


def _prune_pairwise(options: list[Option], classes: tuple[TrafficClass, ...],
                    with_latency: bool = False, limited: set[str] | None = None) -> list[Option]:
    """The all-pairs definition of `prune_dominated` (blocks of 256 rows), kept to test it against."""
    keep: list[int] = []
    for members, (cost, gpus, loss, outside, capacity, latency, earlier) in _criteria(options, classes, with_latency,
                                                                                      limited):
        for start in range(0, len(members), 256):  # rows a (the dominated), in blocks to bound memory
            a = slice(start, start + 256)
            extra = capacity[None, :, :] - capacity[a, None, :]  # b's capacity over a's, per class
            no_worse = ((cost[None, :] <= cost[a, None]) & (gpus[None, :] <= gpus[a, None])
                        & (loss[None, :] <= loss[a, None]) & (extra >= 0).all(axis=2)
                        & (outside[None, :] <= outside[a, None]))
            strictly = ((cost[None, :] < cost[a, None]) | (gpus[None, :] < gpus[a, None])
                        | (loss[None, :] < loss[a, None]) | (extra > 0).any(axis=2)
                        | (outside[None, :] < outside[a, None]))
            if with_latency:
                no_worse &= (latency[None, :, :] <= latency[a, None, :]).all(axis=2)  # inf <= inf: unserved
                strictly |= (latency[None, :, :] < latency[a, None, :]).any(axis=2)
            beaten = no_worse & (strictly | (earlier[None, :] < earlier[a, None]))
            rows = np.arange(len(members))[a]
            beaten[np.arange(len(rows)), rows] = False
            keep += [members[i] for i in rows[~beaten.any(axis=1)]]
    return [options[i] for i in sorted(keep)]


def solve(scenario: Scenario | dict | "DeploymentConstraints", world: World | None = None) -> Plan:
    """Plan the cheapest deployment (or fastest, or balanced) for `scenario`.

    Returns a Plan whose status is 'optimal' or 'time_limit'; raises InfeasibleError (with reasons
    saying what cannot be met and what could) when no plan exists.
    """
    return solve_with_space(scenario, world)[0]


def solve_with_space(scenario: Scenario | dict | "DeploymentConstraints",
                     world: World | None = None) -> tuple[Plan, Space | None]:
    """solve(), and the candidate space it chose from (options priced as planned, owned devices free);
    the space is None for a fleet (several models), whose candidates are per model."""
    with collection.paused():
        return _solve_with_space(scenario, world)


def _solve_with_space(scenario: Scenario | dict | "DeploymentConstraints",
                      world: World | None = None) -> tuple[Plan, Space | None]:
    scenario = as_scenario(scenario)
    world = world or load_world(scenario.catalogs)
    if scenario.api_server:  # another API server in front of the engines: its overhead, its engines only
        from .servers import behind_api_server

        world, scenario, server_note = behind_api_server(world, scenario)
        try:
            plan, space = solve_with_space(scenario.model_copy(update={"api_server": None}), world)
        except InfeasibleError as error:
            raise InfeasibleError(f"{error}; {server_note}", [*error.reasons, server_note]) from None
        return plan.model_copy(update={"api_server": scenario.api_server, "notes": [server_note, *plan.notes]}), space
    if scenario.fleet:
        from .fleet import solve_fleet

        return solve_fleet(scenario, world), None
    prices = world.with_prices(scenario.prices, scenario.provider)
    availability, owned = pool(world, scenario)
    space = build_space(world, scenario, prices)
    space.options = free_if_owned(space.options, owned)
    latency = scenario.objective != "cost"
    # per device and method, for the one-method alternatives; then per device, for the one-device alternatives
    by_method = prune_dominated(space.options, scenario.classes, latency, per_method=True)
    pruned = prune_dominated(by_method, scenario.classes, latency)
    # across the devices without a limit: the skyline of per-device skylines is the skyline of the whole
    options = prune_dominated(pruned, scenario.classes, latency, limited=set(availability))
    model_id = space.model.id
    memo: dict = {}  # programs met again in settle_sharing's rounds are not solved again
    try:
        solution = _solve(options, scenario, availability, memo=memo)
    except program.NoPlanInTime as stopped:
        raise _out_of_time(stopped) from None
    except program.NoSolution:
        try:
            unconstrained = program.solve(options, scenario.classes, {}, "cost", None, scenario.solver,
                                          scenario.time_limit_s)
        except program.NoSolution:
            unconstrained = None
        reasons = infeasibility(world, scenario, space, model_id, unconstrained)
        raise InfeasibleError("; ".join(reasons), reasons) from None
    solution, groups, options, sharing_notes = settle_sharing(
        solution, options, scenario.classes, lambda chosen, screening: _solve(chosen, scenario, availability, screening,
                                                                              memo))
    tokens = served_tokens_per_s(solution, scenario.classes)
    alternatives = (_alternatives(by_method, scenario, availability, solution, pruned)
                    if scenario.alternatives else [])
    notes = sorted({g.execution for g in groups if "Marlin" in g.execution or "weight-only" in g.execution})
    notes += sharing_notes
    notes += sorted({g.ppl_measured for g in groups if g.ppl_measured})
    notes += _unbounded_quality_notes(world, scenario.classes, groups)
    if scenario.margin not in ("none", "auto"):
        notes.append(f"planned against {scenario.margin} validation error: TTFT and TPOT figures include that margin")
    notes += [f"{g.key} lies outside the validation data ({'; '.join(g.coverage_warnings)}): planned against its "
              f"{g.margin} error (--margin median or none overrides)" for g in groups if g.margin != "none"
              and scenario.margin == "auto"]
    plan = Plan(
        status=solution.status, objective=scenario.objective, model=model_id,
        cost_per_hour=solution.cost_per_hour,
        cost_per_million_tokens=solution.cost_per_hour / (tokens * 3600) * 1e6 if tokens > 0 else None,
        tokens_per_s=tokens, replicas=groups,
        binding=binding_constraints(world, scenario, solution, groups, space),
        alternatives=alternatives, reasons=[], notes=notes, workload=workload(world, scenario, model_id),
        prices=prices_used(prices, scenario.provider, [g.gpu for g in groups], candidate_devices(world, scenario)),
        stats=SolveStats(configurations=space.configurations, candidates=len(space.options),
                         candidates_after_pruning=len(options), solve_seconds=solution.solve_seconds,
                         gap=None if solution.status == "optimal" else solution.gap),
        traffic=scenario.classes,
    )
    return plan, space


def _solve(options: list[Option], scenario: Scenario, availability: dict[str, int],
           screening: bool = False, memo: dict | None = None) -> program.Solution:
    return program.solve(options, scenario.classes, availability, scenario.objective,
                         scenario.max_configurations, scenario.solver, scenario.time_limit_s, scenario.write_lp,
                         scenario.max_cost_per_hour, screening, memo)


ALTERNATIVES_PER_KIND = 3
# how far a broken class leaves mixes, round after round (ROUNDS_PER_SCOPE each)
SPLIT_SCOPES = ("option", "configuration", "partners", "everywhere")
ROUNDS_PER_SCOPE = 4
MAX_SHARING_ROUNDS = 20


def settle_sharing(solution, options: list[Option], classes: tuple[TrafficClass, ...], resolve):
    """Classes sharing a replica must meet their SLOs under the combined load: a class that misses one on an
    option it shares is served there only on replicas of its own; every ROUNDS_PER_SCOPE rounds the split widens
    (SPLIT_SCOPES: every batch size of that configuration, then every mix holding a class it broke beside, then
    every mix); if mixes still break after MAX_SHARING_ROUNDS, every class is served on replicas of its own.

    `resolve(options, screening)`: the program's solution over `options`; the rounds between only screen (a plan
    within 1% of the cheapest, no tie-breaks: it shows which mixes break); once a screened plan shares nothing
    broken, the proven cheapest plan (still no tie-breaks: on a hard program they cost most of a solve) is
    checked the same way, and once that breaks nothing either the options are solved in full (proven optimal,
    tie-breaks), which may choose other mixes, checked the same way.
    Returns (solution, groups, options, notes); raises InfeasibleError when the devices cannot serve
    the classes apart.
    """
    notes: list[str] = []
    original, rounds, stage = options, 0, "full"
    partners: dict[str, set[str]] = {}
    while True:
        groups = [replica_group(a.option, a.replicas, a.shares, classes)
                  for a in sorted(solution.assignments, key=lambda a: a.option.key)]
        broken = _shared_violations(groups, classes)
        if not broken and stage == "full":
            return solution, groups, options, notes
        if broken and rounds < MAX_SHARING_ROUNDS:
            for group in groups:  # whom each broken class shared a replica with
                for name in broken.get(group.key, ()):
                    partners.setdefault(name, set()).update(f.name for f in group.classes if f.name != name)
            scope = SPLIT_SCOPES[min(rounds // ROUNDS_PER_SCOPE, len(SPLIT_SCOPES) - 1)]
            options = _split_off(options, broken, scope, partners)
            notes += [f"{name} not mixed with other classes on {key}: under their combined load it would miss "
                      f"its SLO" for key, names in sorted(broken.items()) for name in names]
        elif broken:
            if rounds > MAX_SHARING_ROUNDS:
                raise AssertionError("classes served apart cannot share a replica")  # pragma: no cover
            options = [single for o in original for single in _apart(o)]
            notes.append(f"mixes kept breaking an SLO under the combined load after {MAX_SHARING_ROUNDS} rounds: "
                         f"every class is served on replicas of its own")
        rounds += bool(broken)
        # a screened plan breaks nothing: the proven cheapest; that breaks nothing either: the full solve
        stage = "screen" if broken else {"screen": "cost", "cost": "full"}[stage]
        try:
            solution = _resolve(resolve, options, screening={"screen": True, "cost": "cost", "full": False}[stage])
        except program.NoPlanInTime as stopped:
            raise _out_of_time(stopped) from None
        except program.NoSolution:
            reasons = ["every class meets its SLOs alone, but classes that share replicas miss them under "
                       "their combined load, and there are not enough devices to serve them apart"]
            raise InfeasibleError("; ".join(reasons), reasons) from None


def _resolve(resolve, options: list[Option], screening: bool):
    """resolve(options, screening); a screening run stopped at its time limit with no plan: the full solve decides."""
    try:
        return resolve(options, screening)
    except program.NoPlanInTime:
        if not screening:
            raise
        return resolve(options, False)


def _out_of_time(stopped: Exception) -> QuantplanError:
    return QuantplanError(f"the integer program found {stopped}: the plan may exist; give --time-limit more "
                          f"seconds")


def _split_off(options: list[Option], broken: dict[str, list[str]], scope: str = "option",
               partners: dict[str, set[str]] | None = None) -> list[Option]:
    """`options` with each broken class taken out of the mix where it broke and given a copy of that option
    that serves it alone (the class still runs there, only not mixed). `scope`: "option" (that batch size
    only), "configuration" (every batch size of it: a larger batch only adds load), "partners" (every mix
    that holds one of the classes it broke beside: `partners`, by class) or "everywhere" (every mix: each
    such round leaves one class fewer that mixes, so the rounds end)."""
    partners = partners or {}
    by_key = {o.key: o for o in options}
    where = {"option": lambda o: o.key, "configuration": _configuration}.get(scope, lambda o: "")
    apart = {(where(by_key[key]), name) for key, names in broken.items() for name in names}
    found: dict[str, Option] = {}
    for option in options:
        if scope == "partners":  # every pair ever seen broken, not only this round's
            names = [n for n in option.performance if partners.get(n, set()) & (set(option.performance) - {n})]
        else:
            names = [name for name in option.performance if (where(option), name) in apart]
        if len(option.performance) < 2:
            names = []
        for part in [_without(option, names), *(_alone(option, name) for name in names)]:
            if part.performance:
                found.setdefault(part.key, part)
    return list(found.values())


def _configuration(option: Option) -> tuple[str, str]:
    """An option's configuration whatever its batch size (and the model it serves in a fleet)."""
    return option.owner, option.config.with_batch(0).key


def _unbounded_quality_notes(world: World, classes: tuple[TrafficClass, ...], groups) -> list[str]:
    """A class with no quality floor takes whatever is cheapest; where that loses more perplexity than the
    loosest use case allows (the seed's VALIDATION_THRESHOLDS, catalogs/quality.toml), the plan says so."""
    if not world.quality.use_cases:
        return []
    loosest = max(world.quality.use_cases.values(), key=lambda u: u.max_ppl_delta)
    unbounded = {k.name for k in classes if not gate(world, k).bounds}
    return [f"{', '.join(sorted(unbounded & {c.name for c in g.classes}))}: no quality floor was given, and "
            f"{g.key} raises perplexity by {g.ppl_delta:.2f} ({g.ppl_delta_pct:.0f}%), more than the loosest use "
            f"case allows ({loosest.id}: {loosest.max_ppl_delta:g}); give --use-case or --max-ppl-delta to bound it"
            for g in groups if unbounded & {c.name for c in g.classes} and g.ppl_delta > loosest.max_ppl_delta]


def _apart(option: Option) -> list[Option]:
    """One option per class it serves (a replica that serves one class only)."""
    if len(option.performance) < 2:
        return [option]
    return [_alone(option, name) for name in sorted(option.performance)]


def _alone(option: Option, name: str) -> Option:
    """A copy of `option` that serves class `name` only, under a key of its own."""
    prefix = f"{option.owner}|" if option.owner else ""
    return replace(_without(option, [n for n in option.performance if n != name]), owner=prefix + name)


def _shared_violations(groups, classes: tuple[TrafficClass, ...]) -> dict[str, list[str]]:
    """Option key -> classes that miss an SLO on a replica they share with other classes."""
    by_name = {k.name: k for k in classes}
    broken: dict[str, list[str]] = {}
    for group in groups:
        if len(group.classes) < 2:
            continue
        missing = []
        for figures in group.classes:
            traffic = by_name[figures.name]
            ttft = figures.ttft_at_statistic_ms if figures.ttft_at_statistic_ms is not None else figures.ttft_ms
            tpot = figures.tpot_at_statistic_ms if figures.tpot_at_statistic_ms is not None else figures.tpot_ms
            if (traffic.ttft_ms is not None and not ttft <= traffic.ttft_ms) or (
                    traffic.tpot_limit_ms is not None and not tpot <= traffic.tpot_limit_ms):
                missing.append(figures)
        if missing:  # move the smallest share elsewhere first
            smallest = min(missing, key=lambda f: (f.share, f.name))
            broken.setdefault(group.key, []).append(smallest.name)
    return broken


def _without(option: Option, names) -> Option:
    if not names:
        return option
    keep = lambda table: {k: v for k, v in table.items() if k not in names}  # noqa: E731
    return replace(option, memory=keep(option.memory), performance=keep(option.performance),
                   timings=keep(option.timings))


def _single_bound(options: list[Option], classes: tuple[TrafficClass, ...]) -> float:
    """Cost of the best single-configuration plan, ignoring availability: a cheap way to rank choices."""
    best = float("inf")
    for option in options:
        if all(k.name in option.performance for k in classes):
            replicas = sum(program.load_per_replica(option, k) for k in classes)
            best = min(best, option.cost_per_hour * max(1, -(-replicas // 1)))
    return best


def _alternatives(options, scenario, availability, chosen: program.Solution, pruned=None) -> list[Alternative]:
    """Cheapest plans under other choices: unquantized weights, and the most promising other devices
    and methods (ranked by their best single-configuration plan, then solved exactly).

    `options`: the candidates pruned per device and method (a choice of methods prunes again from them: the
    skyline of a union is the skyline of its parts' skylines; a pruned option's best single-configuration
    plan is no cheaper than its dominator's, so the ranking is that of every candidate).
    `pruned`: the options already pruned per device for the main solve: a one-device restriction takes its
    part of that set as it is."""
    used_methods = {a.option.config.method.id for a in chosen.assignments}
    used_gpus = {a.option.config.gpu.id for a in chosen.assignments}
    filters = []
    if not used_methods & {"fp16", "bf16"}:
        filters.append(("unquantized (fp16/bf16 weights)", lambda o: o.config.method.id in ("fp16", "bf16")))
    unquantized = {"fp16", "bf16"} if filters else set()  # shown together already: the method slots go to others
    for kind, used, attribute in (("on {} only", used_gpus, "gpu"), ("{} only", used_methods | unquantized, "method")):
        names = sorted({getattr(o.config, attribute).id for o in options} - used)
        ranked = sorted(names, key=lambda n: (_single_bound([o for o in options if getattr(o.config, attribute).id == n],
                                                            scenario.classes), n))
        for name in ranked[:ALTERNATIVES_PER_KIND]:
            filters.append((kind.format(name), lambda o, a=attribute, n=name: getattr(o.config, a).id == n,
                            attribute == "gpu"))
    subsets = []
    for label, keep, *one_device in filters:
        if one_device and one_device[0] and pruned is not None:
            subset = [o for o in pruned if keep(o)]
        else:
            subset = prune_dominated([o for o in options if keep(o)], scenario.classes, scenario.objective != "cost",
                                     set(availability))
        if subset:
            subsets.append((label, subset))
    alone = replace_alternatives(scenario)

    def cheapest(subset: list[Option]) -> program.Solution | None:
        try:
            return _solve(subset, alone, availability)
        except program.NoSolution:
            return None

    found = []
    for (label, _), other in zip(subsets, program.in_parallel(cheapest, [subset for _, subset in subsets])):
        if other is None:
            continue
        difference = other.cost_per_hour - chosen.cost_per_hour
        groups = [replica_group(a.option, a.replicas, a.shares, scenario.classes) for a in other.assignments]
        latency = mean_request_latency_ms(other, scenario.classes)
        found.append(Alternative(label=label, cost_per_hour=other.cost_per_hour,
                                 cost_difference_per_hour=difference,
                                 cost_ratio=other.cost_per_hour / chosen.cost_per_hour if chosen.cost_per_hour else 0,
                                 replicas=[summary(g) for g in groups], latency_ms=latency,
                                 latency_difference_ms=latency - mean_request_latency_ms(chosen, scenario.classes)))
    measure = (lambda a: a.latency_ms) if scenario.objective == "latency" else (lambda a: a.cost_per_hour)
    found.sort(key=lambda a: (not a.label.startswith("unquantized"), measure(a), a.label))
    return found


def replace_alternatives(scenario: Scenario) -> Scenario:
    return scenario.model_copy(update={"alternatives": False, "write_lp": None})


# ---------------------------------------------------------------- the seed blog's constraints


_BLOG_USE_CASES = {"minimize_cost": "cost", "minimize_latency": "latency", "balanced": "balanced"}


class DeploymentConstraints(BaseModel):
    """The seed blog's nine decision variables, under the names it uses, turned into a Scenario.

    model_params_B picks the catalog model nearest in size unless `model` names one; gpu_type names the
    device (its memory comes from the catalog); available_gpu_memory_GB == 0 (the blog's CPU path)
    restricts the plan to llama.cpp.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())

    model_params_B: float = Field(gt=0)
    available_gpu_memory_GB: float = Field(ge=0)
    num_gpus: int = Field(ge=0)
    gpu_type: str
    target_latency_ms: float = Field(gt=0)
    target_throughput_tps: float = Field(gt=0)
    max_batch_size: int = Field(gt=0)
    quality_floor_ppl: float = Field(ge=0)
    cost_priority: Literal["minimize_cost", "minimize_latency", "balanced"] = "minimize_cost"
    model: str | None = None
    prompt_tokens: int = Field(default=512, gt=0)
    output_tokens: int = Field(default=256, gt=0)

    def to_scenario(self, world: World | None = None) -> Scenario:
        world = world or load_world()
        model = self.model or _nearest_model(world, self.model_params_B)
        device = world.gpus.get(self.gpu_type)
        traffic = TrafficClass(name="blog", prompt_tokens=self.prompt_tokens, output_tokens=self.output_tokens,
                               concurrency=self.max_batch_size, ttft_ms=self.target_latency_ms,
                               min_tokens_per_s=self.target_throughput_tps, max_ppl_delta=self.quality_floor_ppl)
        return make_scenario({
            "model": model, "classes": (traffic,), "gpus": (device.id,),
            "max_gpus": max(self.num_gpus, 1), "objective": _BLOG_USE_CASES[self.cost_priority],
            **({"frameworks": ("llama.cpp",)} if self.available_gpu_memory_GB == 0 else {}),
        }, "DeploymentConstraints")


def _nearest_model(world: World, params_b: float) -> str:
    from .shapes import parameter_counts

    sizes = sorted((abs(parameter_counts(m).total / 1e9 - params_b), m.id) for m in world.models)
    return sizes[0][1]


def as_scenario(value) -> Scenario:
    if isinstance(value, Scenario):
        return value
    if isinstance(value, DeploymentConstraints):
        return value.to_scenario()
    if isinstance(value, dict):
        return make_scenario(value)
    raise QuantplanError(f"solve() takes a Scenario, DeploymentConstraints or dict, not {type(value).__name__}")


# ---------------------------------------------------------------- one configuration


class EstimateResult(BaseModel):
    """Predictions for one configuration, as `quantplan estimate` prints them."""

    model_config = ConfigDict(frozen=True)

    model: str
    method: str
    gpu: str
    framework: str
    gpus: int
    batch_size: int
    kv_cache_dtype: str
    prompt_tokens: int
    output_tokens: int
    compatible: bool
    expert_parallel: int = 1  # MoE: devices the routed experts are split over whole (1: tensor-parallel slices)
    reasons: list[str] = []
    fits: bool | None = None
    gpu_layers: int | None = None
    memory_gb_per_gpu: float | None = None
    memory_capacity_gb_per_gpu: float | None = None
    weights_gb: float | None = None
    kv_cache_gb: float | None = None
    overhead_gb: float | None = None
    host_memory_gb: float | None = None
    ttft_ms: float | None = None
    ttft_max_ms: float | None = None
    tpot_ms: float | None = None
    tokens_per_s: float | None = None
    tokens_per_s_per_user: float | None = None
    decode_tokens_per_s: float | None = None
    prefill_tokens_per_s: float | None = None
    decode_bound: str | None = None
    ttft_p50_ms: float | None = None
    ttft_p90_ms: float | None = None
    ttft_p99_ms: float | None = None
    tpot_p50_ms: float | None = None
    tpot_p90_ms: float | None = None
    tpot_p99_ms: float | None = None
    load_model: str | None = None
    scheduling: dict = {}
    kv_cache_note: str | None = None
    simulated: dict | None = None
    ppl_delta: float | None = None
    ppl_delta_pct: float | None = None
    kl_divergence: float | None = None  # mean KL divergence to the base model, nats per token
    accuracy_recovery_pct: dict[str, float] | None = None  # knowledge, math, code, chat
    quality_error_bars: dict = {}  # 10th-90th percentile band of each quality figure
    quality_notes: list[str] = []  # conservative fallbacks taken (a family or method without rows)
    cost_per_hour: float | None = None
    cost_per_million_tokens: float | None = None
    execution: str | None = None
    error_bars: dict = {}
    coverage_warnings: list[str] = []
    terms: list[dict] = []
    prices: PricesUsed | None = None  # the price this estimate used: provider (or median) and date


def _expert_parallel(model, framework, gpus: int, size: int) -> int:
    """A MoE layout the engine can run: `size` devices, each holding whole experts (one line if not)."""
    if size <= 0:
        raise QuantplanError(f"--expert-parallel {size}: must be positive")
    if not model.is_moe:
        raise QuantplanError(f"--expert-parallel {size}: {model.id} has no routed experts")
    if framework.parallelism != "tensor":
        raise QuantplanError(f"--expert-parallel {size}: {framework.id} does not split a model over GPUs")
    if gpus % size or model.num_experts % size:
        raise QuantplanError(f"--expert-parallel {size}: must divide --gpus {gpus} and {model.id}'s "
                             f"{model.num_experts} experts")
    return size


def estimate(model: str, method: str, gpu: str, framework: str, gpus: int = 1, batch: int = 1,
             prompt_tokens: int = 512, output_tokens: int = 256, kv_cache_dtype: str | None = None,
             gpu_layers: int | None = None, prices: dict[str, float] | None = None,
             model_config: str | None = None, world: World | None = None,
             catalogs: tuple[str, ...] = (), rate: float | None = None, max_num_seqs: int | None = None,
             requests_per_client: float = 10.0, simulate: bool = False,
             provider: str | None = None, api_server: str | None = None,
             expert_parallel: int = 1) -> EstimateResult:
    """Predict memory, TTFT/TPOT (means and percentiles), quality and cost: a closed loop of `batch`
    clients (the engine runs at most `max_num_seqs`, default its own limit, the rest queue), or with
    `rate`, Poisson arrivals of that many requests/s at this replica. `kv_cache_dtype` None: the
    engine's default for the checkpoint. `simulate`: also run the step-by-step scheduler simulation.
    `api_server`: the server in front of the engine when not its own (its per-request TTFT overhead).
    `expert_parallel`: a MoE model's routed experts split whole over that many of the replica's GPUs
    (TensorRT-LLM moe_expert_parallel_size, SGLang --ep-size, vLLM --enable-expert-parallel) instead of
    sliced over all of them (1, the engines' default)."""
    from .candidates import Config, Step
    from .estimator import cost_terms, memory, memory_terms, quality, step_terms
    from .serving import performance, timing
    from .shapes import model_from_config
    from .space import execution_of, fit_placement, objections

    if gpus <= 0 or batch <= 0 or prompt_tokens <= 0 or output_tokens <= 0 or (rate is not None and rate <= 0):
        raise QuantplanError("--gpus, --concurrency, --prompt-tokens, --output-tokens and --rate must be positive")
    if max_num_seqs is not None and max_num_seqs <= 0:
        raise QuantplanError("--max-num-seqs must be positive")
    if rate is not None and not math.isfinite(rate):
        raise QuantplanError(f"--rate {rate}: give a finite number of requests/s")
    from .scenario import MAX_CONCURRENCY, MAX_RATE_PER_S, MAX_TOKENS

    if batch > MAX_CONCURRENCY:
        raise QuantplanError(f"--concurrency {batch}: at most {MAX_CONCURRENCY} clients")
    if rate is not None and rate > MAX_RATE_PER_S:
        raise QuantplanError(f"--rate {rate:g}: at most {MAX_RATE_PER_S:g} requests/s")
    if max(prompt_tokens, output_tokens) > MAX_TOKENS:
        raise QuantplanError(f"--prompt-tokens / --output-tokens: at most {MAX_TOKENS} tokens each")
    if max_num_seqs is not None and max_num_seqs > MAX_CONCURRENCY:
        raise QuantplanError(f"--max-num-seqs {max_num_seqs}: at most {MAX_CONCURRENCY}")
    if not (math.isfinite(requests_per_client) and requests_per_client >= 0):
        raise QuantplanError(f"--requests-per-client {requests_per_client}: give 0 (steady state) or more")
    world = world or load_world(catalogs)
    priced = world.with_prices(prices or {}, provider)  # an unknown provider fails before any work
    spec = model_from_config(model_config) if model_config else world.models.get(model)
    m, g, f = world.methods.get(method), world.gpus.get(gpu), world.frameworks.get(framework)
    kv_note = None
    if kv_cache_dtype is None:
        kv_cache_dtype = f.kv_cache_default.get(m.id, f.kv_cache_default.get("*", "fp16"))
        kv_note = f"KV cache {kv_cache_dtype}: {f.id}'s default for a {m.id} checkpoint (give --kv-cache-dtype to change)"
        if kv_cache_dtype == "bf16" and g.kind == "gpu" and g.tflops_bf16 <= 0:
            kv_cache_dtype = "fp16"  # engines cast a bf16 model to fp16 where the GPU has no bf16
            kv_note = f"KV cache fp16: {f.id} runs a bf16 model in fp16 on {g.id} (no bf16 units)"
    kv = world.kv_caches.get(kv_cache_dtype)
    head = dict(model=spec.id, method=m.id, gpu=g.id, framework=f.id, gpus=gpus, batch_size=batch,
                kv_cache_dtype=kv.id, prompt_tokens=prompt_tokens, output_tokens=output_tokens, kv_cache_note=kv_note,
                expert_parallel=expert_parallel)
    execution = execution_of(world, m, g, f)
    if not execution.possible:
        return EstimateResult(**head, compatible=False, reasons=[execution.reason])
    config = Config(spec, m, g, f, kv, gpus, execution, batch)
    if expert_parallel != 1:
        config = replace(config, expert_parallel=_expert_parallel(spec, f, gpus, expert_parallel))
    reasons = objections(world, config)
    if reasons:
        return EstimateResult(**head, compatible=False, reasons=reasons)
    traffic = TrafficClass(prompt_tokens=prompt_tokens, output_tokens=output_tokens,
                           requests_per_client=requests_per_client,
                           **({"rate_per_s": rate} if rate is not None else {"concurrency": batch}))
    if gpu_layers is not None:
        if not 0 < gpu_layers <= spec.layers or not f.hybrid_offload:
            raise QuantplanError(f"--gpu-layers must be 1..{spec.layers} and needs a framework with "
                                 f"hybrid offload (llama.cpp)")
        config = replace(config, gpu_layer_fraction=min(gpu_layers / spec.layers, 1.0))
    else:
        placed = fit_placement(world, config.with_batch(1), (traffic,))
        if placed is not None and placed.hybrid:
            config = replace(config, gpu_layer_fraction=placed.gpu_layer_fraction)
    times = timing(world, config, traffic)
    if api_server:
        from .serving import behind_server

        times = type(times)(times.steps, behind_server(times.scheduling, f, api_server))
    if max_num_seqs is not None:
        times = type(times)(times.steps, times.scheduling.with_sequences(max_num_seqs))
    running = min(batch, times.scheduling.max_sequences)
    if rate is not None:
        from .serving import rate_capacity

        most = rate_capacity(times, traffic)
        if not rate <= most * (1 + 1e-9):  # a plan may load a replica to its capacity exactly
            return EstimateResult(**head, compatible=False, reasons=[
                f"{rate:g} requests/s is more than one replica carries: at most {most:.4g} requests/s with "
                f"{times.scheduling.max_sequences} running and prefill below 90% busy; beyond that the queue "
                f"grows without bound (add replicas: {math.ceil(rate / most) if most > 0 else 'many'} would do)"])
    result = performance(config.with_batch(running if rate is None else times.scheduling.max_sequences),
                         traffic, times, rate=rate, engine_limit=True)
    simulated = None
    if simulate:
        from .simulate import simulate as run_simulation

        simulated = run_simulation(times, traffic, clients=None if rate is not None else batch).as_dict()
    if rate is not None:  # memory at the sequences running on average at that rate
        decoding = result.decode_tokens_per_s * result.tpot_ms / 1e3
        running = min(times.scheduling.max_sequences, max(1, math.ceil(decoding))) if math.isfinite(decoding) else 1
    config = config.with_batch(running)
    found = memory_terms(world, config, traffic.context_tokens)
    used = memory(world, config, traffic.context_tokens, found)
    assessed = quality(world, config)
    costs = cost_terms(world, config, priced)
    cost = sum(t.value for t in costs) if costs else None
    speed = (step_terms(world, config, Step("decode", running, running, prompt_tokens + output_tokens / 2))
             + step_terms(world, config, Step("prefill", 1, prompt_tokens, prompt_tokens)))
    divisor = used.memory_divisor
    bars, warnings = errorbars.describe(f.id, g.device_class, running, gpus, g.vendor, g.interconnect)
    if not config.execution.measured:
        warnings = [*warnings, f"no speed measurement of the {config.execution.kernel} kernel"]
    return EstimateResult(
        **head, compatible=True, fits=used.fits, gpu_layers=config.gpu_layers if config.hybrid else None,
        memory_gb_per_gpu=used.used_per_gpu / 1e9, memory_capacity_gb_per_gpu=used.available_per_gpu / 1e9,
        weights_gb=used.weights_per_gpu * divisor / 1e9, kv_cache_gb=used.kv_per_gpu * divisor / 1e9,
        overhead_gb=used.overhead_per_gpu / 1e9, host_memory_gb=used.host_bytes / 1e9 if config.hybrid else None,
        ttft_ms=result.ttft_ms, ttft_max_ms=result.ttft_max_ms, tpot_ms=result.tpot_ms,
        tokens_per_s=result.output_tokens_per_s, tokens_per_s_per_user=result.tokens_per_s_per_user,
        decode_tokens_per_s=result.decode_tokens_per_s, prefill_tokens_per_s=result.prefill_tokens_per_s,
        decode_bound=times.decode_bound,
        ttft_p50_ms=result.ttft_percentiles_ms.get(50), ttft_p90_ms=result.ttft_percentiles_ms.get(90),
        ttft_p99_ms=result.ttft_percentiles_ms.get(99), tpot_p50_ms=result.tpot_percentiles_ms.get(50),
        tpot_p90_ms=result.tpot_percentiles_ms.get(90), tpot_p99_ms=result.tpot_percentiles_ms.get(99),
        load_model=result.load_model, simulated=simulated,
        scheduling=dict(policy=times.scheduling.policy, token_budget=times.scheduling.token_budget,
                        max_sequences=times.scheduling.max_sequences, chunked_prefill=times.scheduling.chunked,
                        kv_reserved_up_front=times.scheduling.reserve_full,
                        kv_cache_tokens=times.scheduling.kv_tokens if math.isfinite(times.scheduling.kv_tokens)
                        else None, source=times.scheduling.source,
                        request_overhead_ms=times.scheduling.request_overhead_s * 1e3, api_server=api_server or None),
        ppl_delta=assessed.ppl_delta, ppl_delta_pct=assessed.ppl_delta_pct,
        kl_divergence=assessed.kl_divergence, accuracy_recovery_pct=assessed.recovery_pct,
        quality_error_bars=assessed.error_bars(), quality_notes=assessed.notes,
        cost_per_hour=cost,
        cost_per_million_tokens=cost / (result.output_tokens_per_s * 3600) * 1e6
        if cost and result.output_tokens_per_s else None,
        execution=execution.note or f"{execution.compute_dtype} compute, {execution.kernel} kernel",
        error_bars=bars, coverage_warnings=warnings,
        terms=[t.as_dict() for t in found + speed + assessed.terms + costs],
        prices=prices_used(priced, provider, [g.id], [g.id]),
    )
