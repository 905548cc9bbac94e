"""Re-plan while one thing varies: exact price breakpoints, and grids over load, SLOs and quality.

A device's price p enters the objective linearly: every plan costs a + b p, with b the number of
that device it rents. The optimal cost is the lower envelope of those lines, concave and piecewise
linear in p, so the prices where the optimal plan changes are found exactly by intersecting the
cost lines of the plans at the two ends of an interval and solving once more at the intersection
(the classic parametric-cost search), not by a dense grid.
"""

from __future__ import annotations

from dataclasses import replace, dataclass, field
from typing import Callable

from pydantic import BaseModel, ConfigDict

from . import program
from .api import as_scenario, prune_dominated
from .errors import InfeasibleError, QuantplanError
from .registry import World, load_world
from .scenario import Scenario
from .space import Option, build_space

COST_TOLERANCE = 1e-7


class Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class Breakpoint(Out):
    value: float
    plan_before: str
    plan_after: str


class Segment(Out):
    start: float
    end: float
    plan: str
    cost_per_hour_at_from: float
    cost_per_hour_at_to: float
    intercept: float
    slope: float

    def as_json(self) -> dict:
        data = self.model_dump()
        data["from"], data["to"] = data.pop("start"), data.pop("end")
        return data


class Point(Out):
    value: float
    status: str
    plan: str
    cost_per_hour: float | None


class SweepResult(Out):
    axis: str
    start: float
    end: float
    solves: int
    breakpoints: list[Breakpoint] = []
    segments: list[Segment] = []
    points: list[Point] = []

    def as_json(self) -> dict:
        data = self.model_dump(exclude={"segments"})
        data["from"], data["to"] = data.pop("start"), data.pop("end")
        data["segments"] = [s.as_json() for s in self.segments]
        return data


def plan_label(solution: program.Solution) -> str:
    """One line naming a plan: its replica groups, sorted."""
    parts = []
    for assignment in sorted(solution.assignments, key=lambda a: a.option.key):
        config = assignment.option.config
        parts.append(f"{assignment.replicas}x[{config.gpus}x {config.gpu.id} {config.method.id} "
                     f"{config.framework.id} b{config.batch} kv-{config.kv.id}]")
    return " + ".join(parts)


@dataclass
class PriceProblem:
    """Options priced as intercept + slope x p for one device; the program re-solved per price."""

    options: list[Option]
    scenario: Scenario
    availability: dict[str, int]
    device: str
    base_price: float
    solves: int = 0
    cache: dict[float, tuple] = field(default_factory=dict)

    def at(self, price: float) -> tuple[str, float, float, float] | None:
        """(plan label, cost, intercept, slope) of the optimal plan at `price`; None when infeasible."""
        if price in self.cache:
            return self.cache[price]
        priced = [self._priced(o, price) for o in self.options]
        self.solves += 1
        try:
            solution = program.solve(priced, self.scenario.classes, self.availability, "cost",
                                     self.scenario.max_configurations, self.scenario.solver,
                                     self.scenario.time_limit_s)
        except program.NoSolution:
            self.cache[price] = None
            return None
        slope = program.gpus_by_device(solution.assignments).get(self.device, 0)
        cost = solution.cost_per_hour
        result = (plan_label(solution), cost, cost - slope * price, float(slope))
        self.cache[price] = result
        return result

    def _priced(self, option: Option, price: float) -> Option:
        if option.config.gpu.id != self.device:
            return option
        delta = (price - self.base_price) * option.config.gpus
        return replace(option, cost_per_hour=option.cost_per_hour + delta)


def price_sweep(scenario, device: str, start: float, end: float, world: World | None = None,
                progress: Callable[[int], None] | None = None) -> SweepResult:
    """Exact breakpoints of the optimal plan as `device`'s price runs from `start` to `end` ($/h)."""
    scenario = as_scenario(scenario)
    if not 0 < start < end:
        raise QuantplanError(f"--price-range {device}={start}:{end}: need 0 < from < to")
    world = world or load_world(scenario.catalogs)
    gpu = world.gpus.get(device)
    prices = world.with_prices({**scenario.prices, gpu.id: start}, scenario.provider)
    space = build_space(world, scenario.model_copy(update={"alternatives": False}), prices)
    # prune_dominated compares options of one device only, and keeps b over a only if b needs no
    # more GPUs: as the price rises from `start`, b's cost grows no faster than a's, so the pruning
    # done at the lowest price holds at every price of the sweep.
    options = prune_dominated(space.options, scenario.classes)
    availability = {world.gpus.get(n).id: c for n, c in scenario.gpu_count.items()}
    problem = PriceProblem(options, scenario, availability, gpu.id, start)
    left, right = problem.at(start), problem.at(end)
    if left is None or right is None:
        raise InfeasibleError(f"no plan at {gpu.id} = ${start if left is None else end:g}/h; "
                              f"run `quantplan solve` there for the reasons")
    breakpoints: list[tuple[float, str, str]] = []
    _search(problem, start, left, end, right, breakpoints, progress)
    breakpoints.sort()
    return SweepResult(axis=f"price:{gpu.id}", start=start, end=end, solves=problem.solves,
                       breakpoints=[Breakpoint(value=v, plan_before=b, plan_after=a) for v, b, a in breakpoints],
                       segments=_segments(problem, start, end, breakpoints))


def _search(problem: PriceProblem, lo: float, left, hi: float, right, found: list, progress) -> None:
    """Between two priced optima: same line -> nothing changes; else solve where the lines cross."""
    if progress:
        progress(problem.solves)
    label_l, _, a_l, b_l = left
    label_r, _, a_r, b_r = right
    if abs(a_l - a_r) <= COST_TOLERANCE * max(1.0, abs(a_l)) and abs(b_l - b_r) <= COST_TOLERANCE:
        if label_l != label_r:  # equal cost lines, different plans: the tie-break switches here
            found.append((hi, label_l, label_r))
        return
    if b_l <= b_r:  # concavity: the slope only falls as the price rises; anything else is solver noise
        if label_l != label_r:
            found.append((hi, label_l, label_r))
        return
    cross = (a_r - a_l) / (b_l - b_r)
    if not lo < cross < hi:
        found.append((hi, label_l, label_r))
        return
    middle = problem.at(cross)
    if middle is None:
        return
    line_cost = a_l + b_l * cross
    if middle[1] >= line_cost - COST_TOLERANCE * max(1.0, abs(line_cost)):
        # nothing beats the two lines where they cross: the envelope is the left line up to here
        # and the right line after (a concave function equal to a line at two points follows it)
        found.append((cross, label_l, label_r))
        return
    _search(problem, lo, left, cross, middle, found, progress)
    _search(problem, cross, middle, hi, right, found, progress)


def _segments(problem: PriceProblem, start: float, end: float, breakpoints) -> list[Segment]:
    edges = [start] + [v for v, _, _ in breakpoints] + [end]
    segments = []
    for lo, hi in zip(edges, edges[1:]):
        if hi <= lo:
            continue
        label, _, intercept, slope = problem.at((lo + hi) / 2) or (None, None, None, None)
        if label is None:
            continue
        segments.append(Segment(start=lo, end=hi, plan=label, cost_per_hour_at_from=intercept + slope * lo,
                                cost_per_hour_at_to=intercept + slope * hi, intercept=intercept, slope=slope))
    return segments


def plan_at_price(result: SweepResult, price: float) -> str:
    """The plan the segments say is optimal at `price` (left segment at a breakpoint)."""
    for segment in result.segments:
        if segment.start <= price <= segment.end:
            return segment.plan
    raise QuantplanError(f"price {price} is outside the sweep {result.start}..{result.end}")


def price_grid(scenario, device: str, prices: list[float], world: World | None = None) -> list[Point]:
    """Independent solves at each price (for checking and benchmarking the exact search)."""
    scenario = as_scenario(scenario)
    world = world or load_world(scenario.catalogs)
    gpu = world.gpus.get(device)
    prices = sorted(prices)  # pruned at the lowest price, valid above it
    space = build_space(world, scenario, world.with_prices({**scenario.prices, gpu.id: prices[0]}, scenario.provider))
    options = prune_dominated(space.options, scenario.classes)
    availability = {world.gpus.get(n).id: c for n, c in scenario.gpu_count.items()}
    problem = PriceProblem(options, scenario, availability, gpu.id, prices[0])
    points = []
    for price in prices:
        answer = problem.at(price)
        points.append(Point(value=price, status="optimal" if answer else "infeasible",
                            plan=answer[0] if answer else "", cost_per_hour=answer[1] if answer else None))
    return points
