"""The Python API: `solve(scenario)` and `estimate(...)` (solver/estimate.py, re-exported here), the two doors the
CLI also uses."""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from . import collection, program
from .errors import InfeasibleError, QuantplanError
from .explain import binding_constraints, infeasibility, workload
from .gates import gate
from .plan import (Alternative, Plan, SolveStats, mean_request_latency_ms, replica_group,
                   served_tokens_per_s, summary)
from .prices import prices_used
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
    names = [k.name for k in classes]
    for members in _groups(options, limited, per_method):
        chosen = [options[i] for i in members]
        cost = np.array([o.cost_per_hour for o in chosen], dtype=float)
        remembered = _remembered(chosen, names, with_latency, cost)
        if remembered is not None:
            keep += [members[i] for i in remembered]
            continue
        crit = _group_criteria(chosen, names, classes, with_latency, cost)
        cost, gpus, loss, outside, capacity, latency, position = crit
        if latency is not None:  # a dominator serves every class its victim serves, at no higher latency
            finite = np.isfinite(latency)
            served, total = -finite.sum(axis=1), np.where(finite, latency, 0.0).sum(axis=1)
        else:
            served = total = np.zeros(len(members))
        order = np.lexsort((position, total, served, -capacity.sum(axis=1), outside, loss, gpus, cost))
        kept = _skyline(order, crit)
        _remember(chosen, names, with_latency, cost, kept)
        keep += [members[i] for i in kept]
    return [options[i] for i in sorted(keep)]


# The last skylines found, by their options' price-free figures (api._compared: shared by an option and its
# re-priced copies) and the order of their costs. Cost enters dominance only through comparisons, so options
# whose figures are those of a group pruned before, with their costs in the same order (ties included), have
# the same skyline: a price sweep re-prunes each point's options per device, and a device's prices move all its
# options' costs together.
_SKYLINES: dict = {}
MAX_REMEMBERED = 200_000  # options over all remembered groups (each keeps its options' figures alive): ~40 MB
_REMEMBERED = 0  # the options the entries of _SKYLINES hold between them


def _cost_order(cost: np.ndarray) -> np.ndarray:
    """Each cost's rank among distinct costs (equal costs, equal ranks)."""
    return np.unique(cost, return_inverse=True)[1]


def _remembered(chosen: list[Option], names: list[str], with_latency: bool, cost: np.ndarray) -> list[int] | None:
    """The skyline (positions in `chosen`) of a group pruned before with the same figures and cost order; None
    when there is none."""
    figures = [o.__dict__.get("_compared") for o in chosen]
    if any(f is None for f in figures):
        return None
    found = _SKYLINES.get((tuple(names), with_latency, tuple(map(id, figures))))
    if found is None or not np.array_equal(found[0], _cost_order(cost)):
        return None
    return found[1]


def _remember(chosen: list[Option], names: list[str], with_latency: bool, cost: np.ndarray, kept: list[int]) -> None:
    global _REMEMBERED
    figures = [o.__dict__.get("_compared") for o in chosen]
    if any(f is None for f in figures):
        return
    key = (tuple(names), with_latency, tuple(map(id, figures)))
    if key in _SKYLINES:
        _REMEMBERED -= len(_SKYLINES.pop(key)[2])
    while _SKYLINES and _REMEMBERED + len(figures) > MAX_REMEMBERED:  # the oldest groups go first
        _REMEMBERED -= len(_SKYLINES.pop(next(iter(_SKYLINES)))[2])
    # the figures themselves are kept in the entry: their ids in the key stay theirs while it lives
    _SKYLINES[key] = (_cost_order(cost), kept, figures)
    _REMEMBERED += len(figures)


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
    member indices and the arrays dominance compares (_group_criteria)."""
    names = [k.name for k in classes]
    for members in _groups(options, limited, per_method):
        chosen = [options[i] for i in members]
        yield members, _group_criteria(chosen, names, classes, with_latency,
                                       np.array([o.cost_per_hour for o in chosen], dtype=float))


def _groups(options: list[Option], limited: set[str] | None, per_method: bool) -> list[list[int]]:
    """Indices of `options` by device type (devices not in `limited`, when given, as one group), and by method
    too when `per_method`."""
    groups: dict[tuple[str, str], list[int]] = {}
    for index, option in enumerate(options):
        device = option.config.gpu.id
        group = (device if limited is None or device in limited else "", option.config.method.id if per_method else "")
        groups.setdefault(group, []).append(index)
    return list(groups.values())


def _group_criteria(chosen: list[Option], names: list[str], classes, with_latency: bool, cost: np.ndarray):
    """The arrays dominance compares over one group's options (position: the order of program.rank)."""
    count = len(chosen)
    loss, rounded, outside, gpus, keys, tpot, capacity = zip(*_compared(chosen, names))
    loss, rounded, tpot = (np.array(values, dtype=float) for values in (loss, rounded, tpot))
    outside, gpus = np.array(outside, dtype=int), np.array(gpus, dtype=int)
    capacity = np.array(capacity, dtype=float).reshape(count, len(names))
    latency = np.full((count, len(names)), np.inf) if with_latency else None
    if with_latency:
        for row, option in enumerate(chosen):
            for column, name in enumerate(names):
                if name in option.performance:
                    latency[row, column] = program.request_latency_ms(option, classes[column])
    # program.rank's order: GPUs, outside the data, quality loss (9 decimals), mean TPOT (6 decimals), key
    ranked = np.lexsort((np.array(keys), tpot, rounded, outside, gpus))
    position = np.empty(count, dtype=int)
    position[ranked] = np.arange(count)
    return cost, gpus, loss, outside, capacity, latency, position


def _compared(chosen: list[Option], names: list[str]) -> list[tuple]:
    """Per option, what dominance compares besides cost: (quality loss, the loss to 9 decimals, outside the data,
    GPUs, key, mean TPOT to 6 decimals, capacity by class in the order of `names`). None of it depends on prices, so
    it is kept on the option for these names, and a re-priced copy (Option.but) keeps it: a price sweep prunes
    each point's options anew, and reading the load models' figures again was most of its time."""
    names_key = tuple(names)
    rows = [o.__dict__.get("_compared", _NOTHING).get(names_key) for o in chosen]
    missing = [i for i, row in enumerate(rows) if row is None]
    if not missing:
        return rows
    fresh = [chosen[i] for i in missing]
    found = served_figures(fresh, names)
    if found is not None:
        capacity, tpot = found[0].tolist(), found[1].tolist()
    else:
        capacity, tpot = [], []
        for option in fresh:
            performance = option.performance
            tpot.append(round(sum(performance[name].tpot_ms for name in performance) / len(performance), 6))
            capacity.append([performance[name].capacity if name in performance else 0.0 for name in names])
    for position, index in enumerate(missing):
        option = chosen[index]
        row = (option.quality.relative, round(option.quality.relative, 9), int(option.extrapolated),
               option.config.gpus, option.key, tpot[position], capacity[position])
        option.__dict__.setdefault("_compared", {})[names_key] = rows[index] = row
    return rows


_NOTHING: dict = {}


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
    resolve = lambda chosen, screening: _solve(chosen, scenario, availability, screening, memo)  # noqa: E731
    try:
        solution, stage = first_solution(options, scenario.objective, resolve)
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
    solution, groups, options, sharing_notes = settle_sharing(solution, options, scenario.classes, resolve, stage)
    slots = slot_index(space.options)
    solution, groups = fewest_slots(solution, groups, slots, scenario.classes, scenario.objective)
    tokens = served_tokens_per_s(solution, scenario.classes)
    alternatives = (_alternatives(by_method, scenario, availability, solution, pruned, slots)
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


def first_solution(options: list[Option], objective: str, resolve) -> tuple[program.Solution, str]:
    """The plan settle_sharing starts from and the stage it was solved at. Where some option serves two classes
    on one replica, under the cost objective, a screened plan (resolve(options, True)): the first plan's mixes
    may break an SLO under their combined load, and the proven optimum with its tie-breaks would then be solved
    for nothing (on the 10-class benchmark that first full solve took 16 s of the minute). Otherwise, and under
    the other objectives (which do not screen), the full solve."""
    if objective == "cost" and any(len(option.performance) > 1 for option in options):
        return _resolve(resolve, options, screening=True), "screen"
    return resolve(options, False), "full"


def settle_sharing(solution, options: list[Option], classes: tuple[TrafficClass, ...], resolve,
                   stage: str = "full"):
    """Classes sharing a replica must meet their SLOs under the combined load: a class that misses one on an
    option it shares is served there only on replicas of its own; every ROUNDS_PER_SCOPE rounds the split widens
    (SPLIT_SCOPES: every batch size of that configuration, then every mix holding a class it broke beside, then
    every mix); if mixes still break after MAX_SHARING_ROUNDS, every class is served on replicas of its own.

    `resolve(options, screening)`: the program's solution over `options`; the rounds between only screen (a plan
    within 1% of the cheapest, no tie-breaks: it shows which mixes break); once a screened plan shares nothing
    broken, the proven cheapest plan (still no tie-breaks: on a hard program they cost most of a solve) is
    checked the same way, and once that breaks nothing either the options are solved in full (proven optimal,
    tie-breaks), which may choose other mixes, checked the same way.
    `stage`: what `solution` was solved as: "screen" (first_solution's screened plan), "cost" or "full".
    Returns (solution, groups, options, notes); raises InfeasibleError when the devices cannot serve
    the classes apart.
    """
    notes: list[str] = []
    original, rounds = options, 0
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


def slot_index(candidates: list[Option]) -> dict[tuple, list[Option]]:
    """Candidates by what fixes a configuration but its batch size (model, device, method, engine, GPUs), for
    fewest_slots: made once per plan, its main solve and alternatives alike. Not `_configuration`: the options a
    plan ends on may be copies split off for one class (settle_sharing), under an owner of their own."""
    index: dict[tuple, list[Option]] = {}
    for option in candidates:
        config = option.config
        index.setdefault((config.model.id, config.gpu.id, config.method.id, config.framework.id, config.gpus),
                         []).append(option)
    return index


def fewest_slots(solution, groups, index: dict[tuple, list[Option]], classes: tuple[TrafficClass, ...],
                 objective: str = "cost"):
    """Each replica group on the smallest batch of its configuration that carries the same shares in as many
    replicas at the same cost, within the validation data if the chosen batch is, as fast for every class (TTFT
    and TPOT, mean and at the SLO statistic, within SLOTS_SLOWER: no queue for slots) and (on a shared replica)
    still meeting every class's SLOs under the combined load. Pruning keeps the largest such batch, since it adds
    capacity for nothing; a plan should not reserve 64 slots and 23 of 24 GB for 0.2 requests a second. Under the
    latency and balanced objectives a smaller batch must be no slower at all (the plan was chosen for its latency).
    `index`: slot_index of every candidate before pruning.
    Returns (solution, groups) with the smaller batches; the cost, devices and shares are those solved for."""
    by_name = {k.name: k for k in classes}
    before = {group.key: group for group in groups}
    slower = SLOTS_SLOWER if objective == "cost" else 0.0
    taken = {a.option.key for a in solution.assignments}  # two groups never end up as one configuration
    assignments, changed = [], False
    for assignment in solution.assignments:
        chosen = assignment.option
        config, served = chosen.config, set(chosen.performance)
        unbatched = config.with_batch(0).key
        smaller = sorted((o for o in index.get((config.model.id, config.gpu.id, config.method.id,
                                                config.framework.id, config.gpus), ())
                          if o.config.batch < config.batch and o.config.with_batch(0).key == unbatched
                          and served <= set(o.performance) and o.extrapolated <= chosen.extrapolated
                          and abs(o.cost_per_hour - chosen.cost_per_hour) <= 1e-9 * max(1.0, chosen.cost_per_hour)),
                         key=lambda o: o.config.batch)
        for option in smaller:
            option = replace(_without(option, set(option.performance) - served), owner=chosen.owner)
            if option.key in taken or not program.carries(option, assignment, by_name):
                continue
            group = replica_group(option, assignment.replicas, assignment.shares, classes)
            if _shared_violations([group], classes) or not _as_fast(group, before[chosen.key], slower):
                continue
            assignment, changed = program.Assignment(option, assignment.replicas, dict(assignment.shares)), True
            taken.add(option.key)
            break
        assignments.append(assignment)
    if not changed:
        return solution, groups
    solution = replace(solution, assignments=assignments)
    groups = [replica_group(a.option, a.replicas, a.shares, classes)
              for a in sorted(solution.assignments, key=lambda a: a.option.key)]
    return solution, groups


SLOTS_SLOWER = 0.02  # fewest_slots: a smaller batch may add at most this share to a class's TTFT or TPOT


def _as_fast(group, chosen, slower: float) -> bool:
    """Every class's TTFT and TPOT, mean and at its SLO statistic, on `group` within `slower` of those on
    `chosen`: the fewer slots add no queue that matters."""
    def figures(replica):
        return {f.name: (f.ttft_ms, f.tpot_ms,
                         f.ttft_at_statistic_ms if f.ttft_at_statistic_ms is not None else f.ttft_ms,
                         f.tpot_at_statistic_ms if f.tpot_at_statistic_ms is not None else f.tpot_ms)
                for f in replica.classes}
    old = figures(chosen)
    return all(new <= old[name][i] * (1 + slower) for name, pair in figures(group).items()
               for i, new in enumerate(pair))


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


def _alternatives(options, scenario, availability, chosen: program.Solution, pruned=None,
                  slots: dict | None = None) -> list[Alternative]:
    """Cheapest plans under other choices: unquantized weights, and the most promising other devices
    and methods (ranked by their best single-configuration plan, then solved exactly).

    `options`: the candidates pruned per device and method (a choice of methods prunes again from them: the
    skyline of a union is the skyline of its parts' skylines; a pruned option's best single-configuration
    plan is no cheaper than its dominator's, so the ranking is that of every candidate).
    `pruned`: the options already pruned per device for the main solve: a one-device restriction takes its
    part of that set as it is. `slots`: slot_index of every option before pruning, where each plan takes the
    fewest slots (fewest_slots)."""
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
        """The restricted plan as the main plan is made: classes that share a replica must meet their SLOs under the
        combined load (settle_sharing), or the alternative's cost reads low (the mixed-fleet example's unquantized
        plan at $3.72/h where its mixes broke the chat class's TTFT; $5.58/h served as they must be)."""
        memo: dict = {}
        resolve = lambda chosen, screening: _solve(chosen, alone, availability, screening, memo)  # noqa: E731
        try:
            found, stage = first_solution(subset, alone.objective, resolve)
            return settle_sharing(found, subset, alone.classes, resolve, stage)[0]
        except (program.NoSolution, QuantplanError):  # no plan under this restriction (or none in time)
            return None

    found = []
    for (label, _), other in zip(subsets, program.in_parallel(cheapest, [subset for _, subset in subsets])):
        if other is None:
            continue
        difference = other.cost_per_hour - chosen.cost_per_hour
        groups = [replica_group(a.option, a.replicas, a.shares, scenario.classes) for a in other.assignments]
        other, groups = fewest_slots(other, groups, slots or {}, scenario.classes, scenario.objective)
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


# one configuration: solver/estimate.py (imported by `quantplan estimate` without the planner's modules)
from .estimate import EstimateResult, estimate  # noqa: E402,F401
