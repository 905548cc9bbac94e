"""A fleet: several models, each with its own traffic classes and quality floor, planned together on one
device pool by one integer program (shared `gpu_count` limits, owned devices at zero price, a budget).

Each model's candidates come from the single-model candidate space; its classes are renamed
`model/class` so that every class stays distinct, and its options carry the model as owner so that
their keys do too. The program is the single-model program over the union: each class fully served,
replicas carry their shares, the pool and the budget shared.
"""

from __future__ import annotations

from collections import Counter

from . import program
from .errors import InfeasibleError
from .explain import binding_constraints, infeasibility, workload
from .plan import Plan, SolveStats, served_tokens_per_s
from .registry import World
from .scenario import Scenario
from .prices import prices_used
from .space import Space, build_space, candidate_devices, free_if_owned, pool


def member_scenario(scenario: Scenario, index: int) -> Scenario:
    """The single-model scenario of fleet member `index`, its classes named `model/class`."""
    member = scenario.models[index]
    classes = tuple(c.model_copy(update={"name": f"{member.label}/{c.name}"}) for c in member.floored())
    return scenario.model_copy(update={"model": member.id, "model_config_path": member.model_config_path,
                                       "classes": classes, "models": (), "alternatives": False})


def solve_fleet(scenario: Scenario, world: World) -> Plan:
    from .api import (_out_of_time, _solve, _unbounded_quality_notes, fewest_slots, first_solution, prune_dominated,
                      settle_sharing, slot_index)

    prices = world.with_prices(scenario.prices, scenario.provider)
    availability, owned = pool(world, scenario)
    members = [member_scenario(scenario, i) for i in range(len(scenario.models))]
    spaces = [build_space(world, member, prices) for member in members]
    options = []
    for member, space in zip(members, spaces):
        space.options = free_if_owned([o.but(owner=space.model.id) for o in space.options], owned)
        options += prune_dominated(space.options, member.classes, scenario.objective != "cost", set(availability))
    whole = scenario.model_copy(update={"classes": tuple(c for m in members for c in m.classes),
                                        "alternatives": False})
    merged = _merged(spaces)
    memo: dict = {}  # programs met again in settle_sharing's rounds (a model's part, most often) are not solved again
    resolve = lambda chosen, screening: _solve(chosen, whole, availability, screening, memo)  # noqa: E731
    try:
        solution, stage = first_solution(options, scenario.objective, resolve)
    except program.NoPlanInTime as stopped:
        raise _out_of_time(stopped) from None
    except program.NoSolution:
        reasons = _why_not(world, scenario, members, spaces, options, whole, availability)
        raise InfeasibleError("; ".join(reasons), reasons) from None
    solution, groups, options, notes = settle_sharing(solution, options, whole.classes, resolve, stage)
    solution, groups = fewest_slots(solution, groups, slot_index([o for space in spaces for o in space.options]),
                                    whole.classes, scenario.objective)
    notes += _unbounded_quality_notes(world, whole.classes, groups)
    tokens = served_tokens_per_s(solution, whole.classes)
    lines = [line for member, space in zip(members, spaces) for line in workload(world, member, space.model.id)[:-1]]
    lines += workload(world, whole.model_copy(update={"classes": ()}), "fleet")[-1:]
    return Plan(
        status=solution.status, objective=scenario.objective, model=", ".join(s.model.id for s in spaces),
        cost_per_hour=solution.cost_per_hour,
        cost_per_million_tokens=solution.cost_per_hour / (tokens * 3600) * 1e6 if tokens > 0 else None,
        tokens_per_s=tokens, replicas=groups,
        binding=binding_constraints(world, whole, solution, groups, merged),
        alternatives=[], reasons=[], notes=notes + ["a fleet plan: no per-restriction alternatives"],
        workload=lines, pool=pool_use(solution, availability), traffic=whole.classes,
        prices=prices_used(prices, scenario.provider, [g.gpu for g in groups], candidate_devices(world, scenario)),
        stats=SolveStats(configurations=merged.configurations, candidates=len(merged.options),
                         candidates_after_pruning=len(options), solve_seconds=solution.solve_seconds,
                         gap=None if solution.status == "optimal" else solution.gap),
    )


def _merged(spaces: list[Space]) -> Space:
    incompatible: Counter = Counter()
    per_class = {}
    for space in spaces:
        incompatible.update(space.incompatible)
        per_class.update(space.per_class)
    return Space(spaces[0].model, [o for s in spaces for o in s.options], incompatible, per_class,
                 sum(s.configurations for s in spaces))


def pool_use(solution: program.Solution, availability: dict[str, int]) -> list[dict]:
    """GPUs each device type gives the plan, against what the pool holds (None: as many as rented)."""
    use = program.gpus_by_device(solution.assignments)
    return [{"gpu": device, "used": use.get(device, 0), "available": availability.get(device)}
            for device in sorted(set(use) | set(availability))]


def _why_not(world: World, scenario: Scenario, members, spaces, options, whole, availability) -> list[str]:
    """Models that cannot be served even alone come first; otherwise the pool or the budget is short."""
    reasons = []
    for member, space in zip(members, spaces):
        mine = [o for o in options if o.owner == space.model.id]
        try:
            _alone(mine, member, scenario, availability)
        except program.NoSolution:
            reasons += [f"model {space.model.id}: {r}" for r in infeasibility(world, member, space, space.model.id)]
    if reasons:
        return reasons
    try:
        unconstrained = program.solve(options, whole.classes, {}, "cost", None, scenario.solver, scenario.time_limit_s)
    except program.NoSolution:
        unconstrained = None
    return infeasibility(world, whole, _merged(spaces), "the fleet", unconstrained)


def _alone(options, member: Scenario, scenario: Scenario, availability) -> program.Solution:
    return program.solve(options, member.classes, availability, "cost", None, scenario.solver, scenario.time_limit_s,
                         None, scenario.max_cost_per_hour)
