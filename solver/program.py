"""The integer program: build -> solve -> extract. Only this module imports PuLP.

Variables: replicas[c] (integer), share[c,k] in [0, 1] (the part of class k that c serves),
used[c] (binary, only with a cap on distinct configurations).
Constraints: every class fully served; a configuration's replicas carry the load of its shares; any share
of a class that needs less than one whole replica opens one (share <= replicas: the strong form of a
facility-location program, implied by the capacity row for a class that fills a replica, which tightens
the relaxation where small classes would otherwise ride on a fraction of a replica: about half the
branch-and-bound nodes on the 10-class benchmark);
devices of each type within availability; at most N distinct configurations.
Objectives: cost ($/h); latency (load-weighted request latency, then cost); balanced (the sum of
both, each divided by its own optimum); an optional budget caps the cost under every objective.
Ties: among plans of the optimal cost a second solve takes the fewest GPUs, then the least
load-weighted quality loss; the options are handed to the solver in key order (so the same input
gives the same plan), and each chosen configuration is then swapped for the best-ranked one of equal
cost, no more GPUs and enough capacity (`rank`: fewer GPUs, inside the validation data, less quality
loss, lower TPOT, first key).
"""

from __future__ import annotations

import math
import os
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from .errors import QuantplanError
from .scenario import TrafficClass
from .space import Option


class _Pulp:
    """PuLP (and HiGHS behind it), imported on first use: `estimate` imports this module but never builds
    a program, and importing PuLP costs about 30 ms of its start-up."""

    def __getattr__(self, name: str):
        global pulp
        import pulp as module

        pulp = module
        return getattr(module, name)


pulp = _Pulp()

OPTIMALITY_TOLERANCE = 1e-6
MIP_GAP = 1e-9  # relative: proven optimal
# HiGHS restarts a MIP (presolves it again) when root-node fixing leaves integer columns inactive. On the small
# programs of one model's classes (up to a few hundred options) the restarts, and the sub-MIP heuristics run
# again after each, cost more than they save. Measured in process on this 2-core machine (Dec 4), same optima:
# the 3-class benchmark's 27 programs took 3.7 s of solver time instead of 5.8-6.3 s (whole `quantplan solve`
# 2.3-3.4 s faster in each of four pairs run back to back), the fleet example's 3.7 s instead of 4.5 s. On the 10-class
# benchmark's programs (800-5,700 columns) restarts pay: without them its solves took 120 s instead of 73 s.
# So they stay on above this many columns.
RESTART_COLUMNS = 700
# a plan only checked, never returned (settle_sharing's rounds): within 1%, or the best after so many
# branch-and-bound nodes (a count, not seconds: the same input screens to the same plan on any machine). On the
# 10-class benchmark's 14 screening programs (5,700 columns; the root closes ~9% of gap, the tree little more)
# 100 nodes found the plan 500 found in 13 and took 26.3 s instead of 35.3 s (HiGHS alone, one thread, Dec 4);
# the settled plans of the examples and benchmarks are the same (compare_plans.py --check --slow).
# Most of a screening solve is its root (1.46 s of 1.69 s on the 10-class program), a third of that the RINS and
# RENS sub-MIPs: without them the 10-class whole process took 27.5 s instead of 32 s (2026-12-04), every settled plan
# the same (compare_plans.py --check --slow: only the 10-class plan's list of mixes split along the way differs).
SCREENING_GAP, SCREENING_NODES = 0.01, 100


@dataclass
class Assignment:
    option: Option
    replicas: int
    shares: dict[str, float]


@dataclass
class Solution:
    status: str  # optimal | time_limit
    cost_per_hour: float
    assignments: list[Assignment]
    gap: float = 0.0
    solve_seconds: float = 0.0
    availability: dict[str, int] = field(default_factory=dict)


class NoSolution(Exception):
    """The program has no feasible point (given availability and configuration caps)."""


class NoPlanInTime(NoSolution):
    """The solver stopped at its time limit before it found any feasible point (which may exist)."""


def _name(text: str) -> str:
    """`text` with every character the LP format does not take as "_"; kept, since a planning run's programs
    (settle_sharing's rounds, the alternatives, a fleet's parts) name the same options again and again."""
    found = _NAMES.get(text)
    if found is None:
        if len(_NAMES) >= MAX_NAMES:
            _NAMES.clear()
        found = _NAMES[text] = re.sub(r"[^A-Za-z0-9_./\-\[\]]", "_", text)
    return found


_NAMES: dict[str, str] = {}
MAX_NAMES = 500_000


def _expression(terms):
    """pulp.lpSum(coefficient * variable for (variable, coefficient) in terms), made in one step: lpSum makes an
    expression of every product first (most of a small program's time went there). A term with coefficient 0 is
    left out, as the product leaves it out."""
    return pulp.LpAffineExpression([(variable, coefficient) for variable, coefficient in terms if coefficient != 0])


def _row(terms, sense, rhs: float = 0.0):
    """The constraint `_expression(terms) (sense) rhs`, as PuLP's `<=` / `==` make it."""
    return pulp.LpConstraint(_expression(terms), sense, rhs=rhs)


def load_per_replica(option: Option, traffic: TrafficClass) -> float:
    """Replicas of `option` that serving the whole of `traffic` takes (a continuous figure)."""
    load = traffic.rate_per_s if traffic.load_kind == "rate" else float(traffic.users)
    return load / option.performance[traffic.name].capacity


def request_latency_ms(option: Option, traffic: TrafficClass) -> float:
    result = option.performance[traffic.name]
    return result.ttft_ms + (traffic.output_tokens - 1) * result.tpot_ms


def _carried(option: Option, classes: tuple[TrafficClass, ...]) -> list[tuple[str, float]]:
    """The classes `option` serves, each with the replicas that serving all of it there takes."""
    return [(k.name, load_per_replica(option, k)) for k in classes if k.name in option.performance]


def _most_replicas(carried: list[tuple[str, float]]) -> int:
    """Never more replicas than serving every class it can (`_carried`) wholly on it takes: a bound no optimum
    reaches past."""
    return math.ceil(sum(load for _, load in carried) - 1e-9)


def _variable_factory(problem):
    """PuLP 3.3+ attaches variables to the problem (the PuLP 4 way); older PuLP builds them alone."""
    if hasattr(problem, "add_variable"):
        return lambda name, low, high, cat: problem.add_variable(name, lowBound=low, upBound=high, cat=cat)
    return lambda name, low, high, cat: pulp.LpVariable(name, lowBound=low, upBound=high, cat=cat)


def build(options: list[Option], classes: tuple[TrafficClass, ...], availability: dict[str, int],
          max_configurations: int | None):
    problem = pulp.LpProblem("quantplan", pulp.LpMinimize)
    variable = _variable_factory(problem)
    keys = [o.key for o in options]
    carried = [_carried(o, classes) for o in options]
    replicas = {key: variable(_name(f"replicas[{key}]"), 0, _most_replicas(loads), "Integer")
                for key, loads in zip(keys, carried)}
    shares = {(key, name): variable(_name(f"share[{key}][{name}]"), 0, 1, "Continuous")
              for key, loads in zip(keys, carried) for name, _ in loads}
    less, equal = pulp.LpConstraintLE, pulp.LpConstraintEQ
    for traffic in classes:
        served = [(shares[key, traffic.name], 1) for key in keys if (key, traffic.name) in shares]
        problem.addConstraint(_row(served, equal, 1), _name(f"serve[{traffic.name}]"))
    for key, loads in zip(keys, carried):
        replica = replicas[key]
        problem.addConstraint(_row([*((shares[key, name], load) for name, load in loads), (replica, -1)], less),
                              _name(f"capacity[{key}]"))
        for name, load in loads:  # any share at all opens a whole replica (implied above when it carries a full one)
            if load < 1.0:
                problem.addConstraint(_row([(shares[key, name], 1), (replica, -1)], less),
                                      _name(f"open[{key}][{name}]"))
    for device, limit in sorted(availability.items()):
        using = [(replicas[key], option.config.gpus) for key, option in zip(keys, options)
                 if option.config.gpu.id == device]
        if using:
            problem.addConstraint(_row(using, less, limit), _name(f"available[{device}]"))
    if max_configurations is not None:
        used = {o.key: variable(_name(f"used[{o.key}]"), 0, 1, "Binary") for o in options}
        for key, loads in zip(keys, carried):
            bound = sum(math.ceil(load) for _, load in loads)
            problem += replicas[key] <= bound * used[key], _name(f"link[{key}]")
        problem += pulp.lpSum(used.values()) <= max_configurations, "distinct_configurations"
    return problem, replicas, shares


def _solver(name: str, time_limit: float, warm: bool = False, gap: float = MIP_GAP, nodes: int | None = None,
            columns: int = 0):
    if name == "cbc":
        limits = {"maxNodes": nodes} if nodes else {}
        solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, warmStart=warm, gapRel=gap, **limits)
        if not solver.available():
            raise QuantplanError("solver 'cbc' was asked for but is not installed; use --solver highs")
        return solver
    limits = {"mip_max_nodes": nodes} if nodes else {}
    if nodes:  # a screening solve: no RINS / RENS sub-MIPs at its root (SCREENING_NODES' comment)
        limits.update(mip_heuristic_run_rins=False, mip_heuristic_run_rens=False)
    if columns <= RESTART_COLUMNS:
        limits["mip_allow_restart"] = False
    return _highs()(warm, msg=False, timeLimit=time_limit, mip_rel_gap=gap, threads=1, **limits)


_HIGHS = None


def _highs():
    """PuLP's HiGHS interface, started from the variables' current values when told to (`warm`), and reading a
    stop at the node limit (which PuLP does not know) as a stop at the time limit: a plan if one was found."""
    global _HIGHS
    if _HIGHS is None:
        import highspy
        import numpy as np

        class WarmHiGHS(pulp.HiGHS):
            def __init__(self, warm: bool, **options) -> None:
                super().__init__(**options)
                self.warm = warm

            def callSolver(self, lp):
                variables = lp.variables()
                if self.warm and variables and all(v.varValue is not None for v in variables):
                    lp.solverModel.setSolution(len(variables), np.array([v.index for v in variables], dtype=np.int32),
                                               np.array([v.varValue for v in variables], dtype=float))
                started = time.perf_counter()
                lp.solverModel.run()
                with _SOLVER_TIME_LOCK:  # in_parallel's threads solve at once
                    _SOLVER_TIME["seconds"] += time.perf_counter() - started
                    _SOLVER_TIME["runs"] += 1

            def buildSolverModel(self, lp):
                # PuLP's own adds each column and row through its own call into HiGHS; the same columns and rows
                # in the same order, each kind in one call, make the same model (most of a small program's time
                # went to those calls: the fleet example's 171 programs)
                inf = highspy.kHighsInf
                sense = -1 if lp.sense == pulp.LpMaximize else 1
                variables = lp.variables()
                objective = lp.objective if lp.objective is not None else {}
                for index, var in enumerate(variables):
                    var.index = index
                lower = [-inf if v.lowBound is None else v.lowBound for v in variables]
                upper = [inf if v.upBound is None else v.upBound for v in variables]
                costs = [sense * objective.get(v, 0.0) for v in variables]
                none = np.zeros(0, dtype=np.int32)
                lp.solverModel.addCols(len(variables), np.array(costs, dtype=float), np.array(lower, dtype=float),
                                       np.array(upper, dtype=float), 0, none, none, np.zeros(0))
                integers = [v.index for v in variables if v.cat == pulp.LpInteger] if self.mip else []
                if integers:
                    lp.solverModel.changeColsIntegrality(
                        len(integers), np.array(integers, dtype=np.int32),
                        np.full(len(integers), int(highspy.HighsVarType.kInteger), dtype=np.uint8))
                starts, columns, values, low, high = [], [], [], [], []
                for index, constraint in enumerate(lp._constraints.values()):
                    constraint.index = index
                    starts.append(len(columns))
                    for var, coefficient in constraint.items():
                        if coefficient != 0:
                            columns.append(var.index)
                            values.append(coefficient)
                    bound = constraint.getLb()
                    low.append(-inf if bound is None else bound)
                    bound = constraint.getUb()
                    high.append(inf if bound is None else bound)
                if starts:
                    lp.solverModel.addRows(len(starts), np.array(low, dtype=float), np.array(high, dtype=float),
                                           len(columns), np.array(starts, dtype=np.int32),
                                           np.array(columns, dtype=np.int32), np.array(values, dtype=float))

            def findSolutionValues(self, lp):
                if lp.solverModel.getModelStatus() != highspy.HighsModelStatus.kSolutionLimit:
                    return super().findSolutionValues(lp)
                found = lp.solverModel.getInfo().primal_solution_status == highspy.SolutionStatus.kSolutionStatusFeasible
                if found:
                    for var, value in zip(lp.variables(), lp.solverModel.getSolution().col_value):
                        var.varValue = value
                return ((pulp.LpStatusOptimal, pulp.LpSolutionIntegerFeasible) if found
                        else (pulp.LpStatusNotSolved, pulp.LpSolutionNoSolutionFound))

        _HIGHS = WarmHiGHS
    return _HIGHS


_SOLVER_TIME = {"seconds": 0.0, "runs": 0}  # HiGHS's own runs in this process (solver_time)
_SOLVER_TIME_LOCK = threading.Lock()


def solver_time() -> tuple[float, int]:
    """Seconds HiGHS has spent solving in this process (summed over threads: CPU time, one thread each) and in how
    many runs; what a planning run cannot go below on this machine whatever the rest of quantplan takes
    (benchmarks/bench_solver.py prints it)."""
    return _SOLVER_TIME["seconds"], _SOLVER_TIME["runs"]


_QUIET = {"depth": 0, "saved": None}
_QUIET_LOCK = threading.Lock()


@contextmanager
def _quiet_stdout():
    """HiGHS prints a banner on the C-level stdout even with msg=False; keep --json output clean. Reentrant
    and shared by threads (`in_parallel`): the first to enter sends file descriptor 1 to the null device, the
    last to leave gives it back."""
    with _QUIET_LOCK:
        if _QUIET["depth"] == 0:
            sys.stdout.flush()
            _QUIET["saved"] = os.dup(1)
            with open(os.devnull, "w") as sink:
                os.dup2(sink.fileno(), 1)
        _QUIET["depth"] += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _QUIET["depth"] -= 1
            if _QUIET["depth"] == 0:
                sys.stdout.flush()
                os.dup2(_QUIET["saved"], 1)
                os.close(_QUIET["saved"])


def in_parallel(function, items: list) -> list:
    """[function(item) for item in items], each item's program solved in a thread of its own (up to one per
    CPU): HiGHS gives up Python's lock while it solves, and each program runs on one solver thread, so the
    results are those of the plain loop, in its order. An exception is raised as the loop would raise it
    (the first item's that failed)."""
    workers = min(len(items), os.cpu_count() or 1)
    if workers < 2 or getattr(_WORKER, "busy", False):  # inside a worker: its CPU is taken already
        return [function(item) for item in items]

    def run(item):
        _WORKER.busy = True
        try:
            return function(item)
        finally:
            _WORKER.busy = False

    with _quiet_stdout(), ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, items))


_WORKER = threading.local()


def _gap(problem) -> float:
    """The relative MIP gap HiGHS reached (NaN where the solver does not say)."""
    model = getattr(problem, "solverModel", None)
    try:
        return float(model.getInfo().mip_gap)
    except (AttributeError, TypeError, ValueError):
        return float("nan")


_STARTED = {"on": False}  # a solver has run in this process (solver_started)


def solver_started() -> bool:
    """Whether an integer program has been solved in this process: the solver's own threads then exist, and a
    forked child that solves again could hang on them (a sweep forks its points only before: grid._forked_points)."""
    return _STARTED["on"]


def _variables(problem) -> list:
    """problem.variables(), made at its first solve and kept: every variable joins a program when it is built (its
    stages after that add rows and objectives over the same variables), and PuLP walks every row and sorts the
    variables again on each call."""
    found = problem.__dict__.get("_quantplan_variables")
    if found is None:
        found = problem.__dict__["_quantplan_variables"] = problem.variables()
    return found


def _run(problem, solver_name: str, time_limit: float, warm: bool = False, gap: float = MIP_GAP,
         nodes: int | None = None) -> tuple[str, float]:
    _STARTED["on"] = True
    variables = _variables(problem)
    # no variable joins the program while it solves: PuLP's own calls for its variables (each walks every row and
    # sorts them again, three or four times a solve) take this list
    problem.variables = lambda: variables
    try:
        solver = _solver(solver_name, time_limit, warm, gap, nodes, len(variables))
        with _quiet_stdout():
            problem.solve(solver)
    finally:
        del problem.variables
    status = pulp.LpStatus[problem.status]
    if status == "Optimal" and problem.sol_status != pulp.LpSolutionIntegerFeasible:  # PuLP says "Optimal"
        return "optimal", 0.0  # for a stop at the time limit too: its solution status tells them apart
    if status in ("Infeasible", "Undefined") and problem.sol_status in (pulp.LpSolutionNoSolutionFound,
                                                                        pulp.LpSolutionInfeasible, 0):
        raise NoSolution(status)
    if problem.sol_status == pulp.LpSolutionIntegerFeasible:
        return "time_limit", _gap(problem)
    if status == "Unbounded":
        raise QuantplanError("the integer program is unbounded (a bug: please report the scenario)")
    if status == "Not Solved":
        raise NoPlanInTime(f"no plan within the time limit of {time_limit:g} s")
    raise NoSolution(status)


def solve(options: list[Option], classes: tuple[TrafficClass, ...], availability: dict[str, int],
          objective: str = "cost", max_configurations: int | None = None, solver: str = "highs",
          time_limit: float = 60.0, write_lp: str | None = None,
          max_cost_per_hour: float | None = None, screening: bool | str = False, memo: dict | None = None) -> Solution:
    """Minimise the objective, then break ties deterministically; raise NoSolution when infeasible.

    `write_lp`: also write the program (with its domain names) to that LP file.
    `max_cost_per_hour`: a budget every objective must stay within.
    `screening`: under the cost objective, a plan within SCREENING_GAP of the cheapest or the best after
    SCREENING_NODES nodes, without tie-breaks (one solver run): for plans that are only checked (settle_sharing's
    rounds), never returned; "cost": the proven cheapest plan, without tie-breaks (settle_sharing's check before
    the tie-breaks are paid for).
    `memo`: programs solved before in the same planning run (settle_sharing's rounds), by their options, classes,
    devices and settings: a program met again is not solved again, and a full solve whose proven cheapest cost
    is known (a "cost" screening of the same program) starts from it instead of solving for it again. The memo
    holds the options it was asked about (their identities key it).
    """
    if not options:
        raise NoSolution("no candidates")
    options = sorted(options, key=lambda o: o.key)  # the solver sees one model whatever the input order
    if memo is None or write_lp:
        return _solve(options, classes, availability, objective, max_configurations, solver, time_limit, write_lp,
                      max_cost_per_hour, screening, None)
    settings = (objective, max_configurations, solver, time_limit, max_cost_per_hour)
    key = (tuple(map(id, options)), tuple(map(id, classes)), tuple(sorted(availability.items())), settings)
    found = memo.get((key, screening))
    if found is None:
        try:
            found = _solve(options, classes, availability, objective, max_configurations, solver, time_limit, None,
                           max_cost_per_hour, screening, memo, known=memo.get((key, "cost")))
        except NoSolution as failed:
            found = failed
        memo[key, screening] = found
        memo.setdefault("kept", []).append((options, classes))  # the identities in the key stay those objects
    if isinstance(found, NoSolution):
        raise found
    return found


def _solve(options: list[Option], classes: tuple[TrafficClass, ...], availability: dict[str, int], objective: str,
           max_configurations: int | None, solver: str, time_limit: float, write_lp: str | None,
           max_cost_per_hour: float | None, screening: bool | str, memo: dict | None,
           known: Solution | NoSolution | None = None) -> Solution:
    """solve() without the memo. `known`: the proven cheapest plan of this very program (a "cost" screening),
    whose cost a full solve takes instead of solving for it."""
    started = time.perf_counter()
    if objective == "cost" and max_configurations is None and not write_lp:
        found = _by_parts(options, classes, availability, solver, time_limit, max_cost_per_hour, screening, memo)
        if found is not None:
            return replace(found, solve_seconds=time.perf_counter() - started)
    problem, replicas, shares = build(options, classes, availability, max_configurations)
    cost = _expression((replicas[o.key], o.cost_per_hour) for o in options)
    latency = _expression((shares[o.key, k.name], request_latency_ms(o, k) / 1000.0)
                          for o in options for k in classes if (o.key, k.name) in shares)
    statuses = []
    if max_cost_per_hour is not None:
        problem += cost <= max_cost_per_hour, "budget"
    if write_lp:
        problem.setObjective(cost)
        try:
            problem.writeLP(write_lp, max_length=255)  # CPLEX LP's limit on a name's length
        except pulp.PulpError as refused:
            raise QuantplanError(f"cannot write the program to {write_lp}: {refused}") from None
    if objective == "cost":
        if isinstance(known, Solution) and known.status == "optimal" and not screening and max_configurations is None:
            best = _start_from(known, replicas, shares, statuses)
        else:
            gap = (SCREENING_GAP, SCREENING_NODES) if screening is True else (MIP_GAP, None)
            if screening is not True and solver == "highs" and len(_variables(problem)) > FLOOR_COLUMNS:
                floor = cost_floor(options, classes, availability, max_configurations, max_cost_per_hour, time_limit)
                if floor is not None:
                    problem += cost >= floor, "cost_floor"
                    gap = (FLOORED_GAP, None)
            best = _optimum(problem, cost, solver, time_limit, statuses, *gap)
        if not screening:
            problem += cost <= best + OPTIMALITY_TOLERANCE * max(1.0, abs(best)), "keep_cost"
            _lexicographic(problem, _tie_breaks(options, classes, replicas, shares), solver, time_limit, statuses)
    else:
        if objective == "latency":
            primary = latency
        else:  # balanced: each part divided by its own optimum
            best_cost = _optimum(problem, cost, solver, time_limit, statuses)
            best_latency = _optimum(problem, latency, solver, time_limit, statuses)
            primary = cost / max(best_cost, 1e-9) + latency / max(best_latency, 1e-9)
        best = _optimum(problem, primary, solver, time_limit, statuses)
        problem += primary <= best + OPTIMALITY_TOLERANCE * max(1.0, abs(best)), "keep_optimum"
        _optimum(problem, cost, solver, time_limit, statuses)
    assignments = []
    for option in options:
        count = round(replicas[option.key].value() or 0)
        if count <= 0:
            continue
        taken = {k.name: shares[option.key, k.name].value() or 0.0
                 for k in classes if (option.key, k.name) in shares}
        assignments.append(Assignment(option, count, {k: v for k, v in taken.items() if v > 1e-9}))
    if objective == "cost" and not screening:
        assignments = consolidate(break_ties(assignments, options, classes, availability), options, classes)
    gaps = [gap for status, gap in statuses if status == "time_limit"]
    status = "time_limit" if gaps else "optimal"
    total = sum(a.option.cost_per_hour * a.replicas for a in assignments)
    return Solution(status, total, assignments, gap=max(gaps) if gaps else 0.0,
                    solve_seconds=time.perf_counter() - started,
                    availability=dict(availability))


# Programs above this many columns prove their cheapest cost against a floor (cost_floor). Measured on the 10-class
# benchmark's cost stage (5,610 columns, 2026-12-04, HiGHS alone, one thread): 7-43 s over four random seeds
# without it, the floor itself 0.9 s, then 0.8-8.5 s. On the 2,200-3,400-column programs of the same scenario's
# alternatives and settled parts the floor (0.3-1.0 s each) saved about what it cost: the 10-class solve with
# alternatives took 51.7-52.8 s with it from 2,000 columns against 50.0-50.1 s without, the same plans.
FLOOR_COLUMNS = 4000
# With the floor in the program its root bound sits at the floor less the LP's feasibility tolerance (1e-7 absolute),
# so the proof is asked to 1e-7 relative: a plan within $0.0000013/h of the cheapest on a $13/h plan, below the
# tolerance (OPTIMALITY_TOLERANCE) within which the tie-breaks already take costs as equal.
FLOORED_GAP = 1e-7


def cost_floor(options: list[Option], classes, availability: dict[str, int], max_configurations: int | None,
               max_cost_per_hour: float | None, time_limit: float) -> float | None:
    """A lower bound on the cost of every plan, from a relaxation: each option's replicas continuous, but the
    replicas of each (device, GPUs per replica), which cost the same, a whole number between them. Every plan
    is a point of it, so its optimum bounds theirs from below; and unlike the program's own relaxation (fractional
    replicas everywhere) it needs whole replicas of a kind of device, which is most of what the proof of the
    cheapest plan is about (on the 10-class benchmark it is the optimum itself, $12.95/h, against $11.66/h at the
    program's root). With 24 integers instead of 686 it solves in about a second. None where it is not proven
    within the time limit (the program then proves its optimum alone)."""
    relaxed, replicas, _ = build(options, classes, availability, max_configurations)
    cost = _expression((replicas[o.key], o.cost_per_hour) for o in options)
    kinds: dict[tuple[str, int], list] = {}
    for option in options:
        replicas[option.key].cat = pulp.LpContinuous
        kinds.setdefault((option.config.gpu.id, option.config.gpus), []).append(replicas[option.key])
    variable = _variable_factory(relaxed)
    for index, (_, members) in enumerate(sorted(kinds.items())):
        whole = variable(f"kind_{index}", 0, None, "Integer")
        relaxed += pulp.lpSum(members) == whole, f"whole_{index}"
    if max_cost_per_hour is not None:
        relaxed += cost <= max_cost_per_hour, "budget"
    relaxed.setObjective(cost)
    try:
        status, _ = _run(relaxed, "highs", time_limit)
    except NoSolution:
        return None
    if status != "optimal":
        return None
    found = float(pulp.value(cost))
    # the relaxation's plan is within MIP_GAP of its optimum: step below it by twice that
    return found - 2 * MIP_GAP * max(1.0, abs(found))


def _parts(options: list[Option], classes) -> list[tuple[list[Option], tuple]]:
    """The program's parts: groups of classes with the options that serve them, where no option serves classes
    of two groups (a fleet's models; classes served apart, settle_sharing's last resort, make one part each).
    Only devices with a limit (and the budget) can still couple them. [] when everything is one part."""
    groups, root = _linked(options, classes)
    if len(groups) < 2:
        return []
    return [([o for o in options if root(next(iter(o.performance))) == part], tuple(kept))
            for part, kept in groups.items()]


def _by_parts(options: list[Option], classes, availability: dict[str, int], solver: str, time_limit: float,
              max_cost_per_hour: float | None, screening: bool | str, memo: dict | None) -> Solution | None:
    """The cost objective's lexicographic optimum assembled from the parts' (`_parts`), or None where the parts
    cannot decide it alone (one part; a part with more than MAX_PART_SOLVES plans to weigh; a screened plan over
    the budget).

    Each part first gets the whole of every limit. Where their plans together stay within the limits, that is
    the optimum: no plan does better on any part. Where they do not, the devices over their limit are contested:
    each part is solved again with less of them (from each plan, one GPU fewer than it used of each contested
    device in turn), which gives its lexicographic optimum (cost, GPUs, load outside the validation data, quality
    loss) for every share of the contested devices. The plans, one per part, whose contested GPUs sum within the
    limits with the least total (a knapsack over the parts, exact) are the optimum of the program in which only
    the contested devices are shared, a relaxation of the whole; where a device not contested yet goes over its
    limit, it is contested too and the knapsack runs again. The budget: a proven cheapest plan over it means none
    is within it."""
    parts = _parts(options, classes)
    if not parts:
        return None

    def part(index: int, limits: dict[str, int]) -> Solution | None:  # None: no plan within these limits
        try:
            return solve(parts[index][0], parts[index][1], limits, "cost", None, solver, time_limit, None, None,
                         screening, memo)
        except NoPlanInTime:
            raise
        except NoSolution:
            return None

    chosen = in_parallel(lambda index: part(index, availability), list(range(len(parts))))
    if any(found is None for found in chosen):
        raise NoSolution("a part of the program has no plan")
    contested: list[str] = []
    while over := [device for device, limit in sorted(availability.items())
                   if sum(_devices_used(found, device) for found in chosen) > limit]:
        contested += over
        plans = in_parallel(lambda index: _staircase(lambda limits: part(index, limits), availability, contested),
                            list(range(len(parts))))
        if any(found is None for found in plans):
            return None
        chosen = _knapsack(plans, contested, availability, screening)
        if chosen is None:
            raise NoSolution(f"the parts of the program do not fit in the devices {', '.join(contested)}")
    gaps = [found.gap for found in chosen if found.status == "time_limit"]
    whole = Solution("time_limit" if gaps else "optimal", sum(found.cost_per_hour for found in chosen),
                     sorted((a for found in chosen for a in found.assignments), key=lambda a: a.option.key),
                     gap=max(gaps) if gaps else 0.0, availability=dict(availability))
    if max_cost_per_hour is not None and whole.cost_per_hour > max_cost_per_hour + OPTIMALITY_TOLERANCE * max(
            1.0, max_cost_per_hour):
        if screening is True or gaps:  # a plan within 1% of the cheapest: the cheapest may still be within it
            return None
        raise NoSolution("over the budget")
    return whole


MAX_PART_SOLVES = 64  # a part's solves over the shares of the contested devices before the whole program decides


def _staircase(part, availability: dict[str, int], contested: list[str]) -> list[Solution] | None:
    """A part's distinct lexicographic optima over every share of the `contested` devices (`part(limits)`: its
    plan within those limits, None when it has none); None past MAX_PART_SOLVES solves. A plan found within
    shares `a` that uses `u` of them is also the optimum for every share between `u` and `a`; the other shares
    below `a` lie below `a` with one device at one GPU fewer than `u` of it, and are searched from there."""
    tried: set[tuple[int, ...]] = set()
    found: dict[tuple, Solution] = {}
    waiting = [tuple(availability[device] for device in contested)]
    while waiting:
        shares = waiting.pop()
        if shares in tried:
            continue
        if len(tried) >= MAX_PART_SOLVES:
            return None
        tried.add(shares)
        plan = part({**availability, **dict(zip(contested, shares))})
        if plan is None:
            continue
        found.setdefault(tuple((a.option.key, a.replicas) for a in plan.assignments), plan)
        used = [_devices_used(plan, device) for device in contested]
        waiting += [shares[:j] + (used[j] - 1,) + shares[j + 1:] for j in range(len(contested)) if used[j] > 0]
    return sorted(found.values(), key=lambda plan: [_devices_used(plan, device) for device in contested])


def gpus_by_device(assignments) -> dict[str, int]:
    """The GPUs `assignments` (a plan's replica groups) take, by device id."""
    used: dict[str, int] = {}
    for assignment in assignments:
        device = assignment.option.config.gpu.id
        used[device] = used.get(device, 0) + assignment.replicas * assignment.option.config.gpus
    return used


def _devices_used(solution: Solution, device: str) -> int:
    return gpus_by_device(solution.assignments).get(device, 0)


def _standing(solution: Solution, screening: bool | str) -> tuple:
    """What the lexicographic stages compare, rounded so that sums compare exactly: cost; then (a full solve)
    GPUs, load served outside the validation data, load-weighted quality loss."""
    cost = round(solution.cost_per_hour, 6)
    if screening:
        return (cost,)
    shares = [(a.option, share) for a in solution.assignments for share in a.shares.values()]
    return (cost, sum(gpus_by_device(solution.assignments).values()),
            round(sum(share for option, share in shares if option.extrapolated), 9),
            round(sum(option.quality.relative * share for option, share in shares), 9))


def _knapsack(plans: list[list[Solution]], contested: list[str], availability: dict[str, int],
              screening: bool | str) -> list[Solution] | None:
    """One plan per part, their GPUs of each contested device within its limit, least in `_standing` summed (ties:
    fewer contested GPUs, then the earlier plans); None when no choice fits."""
    limits = [availability[device] for device in contested]
    best: dict[tuple[int, ...], tuple[tuple, list[Solution]]] = {(0,) * len(contested): ((), [])}
    for found in plans:
        reached: dict[tuple[int, ...], tuple[tuple, list[Solution]]] = {}
        for used, (standing, taken) in sorted(best.items()):
            for plan in found:
                total = tuple(u + _devices_used(plan, device) for u, device in zip(used, contested))
                if any(t > limit for t, limit in zip(total, limits)):
                    continue
                own = _standing(plan, screening)
                summed = tuple(round(a + b, 9) for a, b in zip(standing, own)) if standing else own
                if total not in reached or summed < reached[total][0]:
                    reached[total] = (summed, [*taken, plan])
        best = reached
    if not best:
        return None
    return min(best.items(), key=lambda item: (item[1][0], item[0]))[1][1]


def _start_from(known: Solution, replicas, shares, statuses: list) -> float:
    """Take the proven cheapest plan `known` of this program as the cost stage's plan (the tie-breaks' starting
    point and their retry's); returns its cost."""
    for variable in (*replicas.values(), *shares.values()):
        variable.varValue = 0.0
    for assignment in known.assignments:
        replicas[assignment.option.key].varValue = float(assignment.replicas)
        for name, share in assignment.shares.items():
            shares[assignment.option.key, name].varValue = share
    statuses.append(("optimal", 0.0))
    return known.cost_per_hour


def _linked(options: list[Option], classes, limited=()) -> tuple[dict[str, list[TrafficClass]], object]:
    """Classes joined wherever one option serves two of them (and, for the devices in `limited`, wherever their
    options share that device): the groups by their root, and the function that finds a class's root."""
    parent = {k.name: k.name for k in classes}

    def root(node):
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for option in options:
        nodes = [name for name in option.performance if name in parent]
        if option.config.gpu.id in limited:
            nodes.append(parent.setdefault(f"device:{option.config.gpu.id}", f"device:{option.config.gpu.id}"))
        for node in nodes[1:]:
            parent[root(node)] = root(nodes[0])
    groups: dict[str, list[TrafficClass]] = {}
    for k in classes:
        groups.setdefault(root(k.name), []).append(k)
    return groups, root


def _tie_breaks(options: list[Option], classes, replicas, shares) -> list[tuple[str, object, float]]:
    """Among plans of the optimal cost, in order: fewest GPUs; the least load served by configurations
    outside the validation data; the least load-weighted quality loss. Solved one after another, so
    the choice crosses replica structures (which the swaps in break_ties cannot). Each with a lower bound no
    plan goes below (a stage whose plan so far reaches it needs no solve)."""
    served = [(o, k) for o in options for k in classes if (o.key, k.name) in shares]
    return [
        ("gpus", _expression((replicas[o.key], o.config.gpus) for o in options), _fewest_gpus(options, classes)),
        ("extrapolated", _expression((shares[o.key, k.name], 1) for o, k in served if o.extrapolated), 0.0),
        ("quality_loss", _expression((shares[o.key, k.name], o.quality.relative) for o, k in served),
         sum(min(o.quality.relative for o in options if k.name in o.performance) for k in classes)),
    ]


def _fewest_gpus(options: list[Option], classes) -> float:
    """A lower bound on the GPUs of any plan: each class needs at least its load's GPUs on the option that
    serves it with the fewest (a replica's GPUs carry the shares of every class it serves). Classes that no
    option links (no option serves two of them: a fleet's models, classes split apart) sit on replicas of
    their own, so each such group's bound is rounded up on its own: to whole GPUs, and to a multiple of the
    GPUs per replica its options have in common (only 4-GPU replicas: a multiple of 4)."""
    groups, _ = _linked(options, classes)
    total = 0
    for members in groups.values():
        names = {k.name for k in members}
        need = sum(min(o.config.gpus * load_per_replica(o, k) for o in options if k.name in o.performance)
                   for k in members)
        step = math.gcd(*{o.config.gpus for o in options if names & set(o.performance)})
        total += math.ceil(need / step - 1e-9) * step
    return float(total)


def _lexicographic(problem, objectives, solver: str, time_limit: float, statuses: list) -> None:
    """Each objective in turn at its optimum among the previous ones' optima. A stage whose plan so far already
    reaches the objective's lower bound (`floor`) is not solved: no plan does better, and the next stage's
    program is the same either way."""
    for name, objective, floor in objectives:
        if len(objective) == 0:  # nothing to choose on (no option outside the validation data ...)
            continue
        reached = _value(objective)
        if reached is not None and reached <= floor + 1e-9 * max(1.0, abs(floor)):
            best = reached
        else:
            best = _optimum(problem, objective, solver, time_limit, statuses)
        problem += objective <= best + 1e-7 * max(1.0, abs(best)), f"keep_{name}"


def _value(objective) -> float | None:
    """The objective at the variables' current values (the last stage's plan); None before any solve."""
    if any(variable.varValue is None for variable in objective):
        return None
    return float(pulp.value(objective))


def _optimum(problem, objective, solver: str, time_limit: float, statuses: list, gap: float = MIP_GAP,
             nodes: int | None = None) -> float:
    """The objective's optimum. A later stage (a tie-break, whose constraints keep the previous stage's optimum
    feasible) that stops at the time limit with no plan runs again from that optimum (the retry only: a warm
    start takes another path through equal-cost plans, and plans stay what they were)."""
    previous = [v.varValue for v in _variables(problem)] if statuses else None
    problem.setObjective(objective)
    try:
        status, reached = _run(problem, solver, time_limit, gap=gap, nodes=nodes)
    except NoSolution:
        if previous is None or any(v is None for v in previous):
            raise
        for variable, value in zip(_variables(problem), previous):
            variable.varValue = value
        status, reached = _run(problem, solver, time_limit, warm=True, gap=gap, nodes=nodes)
    statuses.append((status, reached))
    return float(pulp.value(objective) or 0.0)


def rank(option: Option) -> tuple:
    """The documented tie-break order: fewer GPUs, inside the validation data, less quality loss, lower
    TPOT, first key."""
    tpot = sum(r.tpot_ms for r in option.performance.values()) / len(option.performance)
    return (option.config.gpus, option.extrapolated, round(option.quality.relative, 9), round(tpot, 6), option.key)


def carries(candidate: Option, assignment: Assignment, classes: dict) -> bool:
    """`candidate` serves the classes of `assignment` with its shares in as many replicas."""
    if any(name not in candidate.performance for name in assignment.shares):
        return False
    needed = sum(share * load_per_replica(candidate, classes[name]) for name, share in assignment.shares.items())
    return needed <= assignment.replicas + 1e-9


def _room(candidate: Option, assignment: Assignment, use: dict[str, int], availability: dict[str, int]) -> bool:
    """Moving `assignment`'s replicas to `candidate` stays within the devices available."""
    current = assignment.option
    device = candidate.config.gpu.id
    extra = assignment.replicas * candidate.config.gpus
    if device == current.config.gpu.id:
        extra -= assignment.replicas * current.config.gpus
    return device not in availability or use.get(device, 0) + extra <= availability[device]


def break_ties(assignments: list[Assignment], options: list[Option], classes,
               availability: dict[str, int] | None = None) -> list[Assignment]:
    """Swap each chosen configuration for the best-ranked one that costs the same per replica, needs
    no more GPUs, fits the devices still available and carries the same shares in as many replicas.

    The swap keeps cost and feasibility; it runs in a fixed order, so the same input gives the same plan.
    """
    by_name = {k.name: k for k in classes}
    availability = availability or {}
    use = gpus_by_device(assignments)
    merged: dict[str, Assignment] = {}
    for assignment in sorted(assignments, key=lambda a: a.option.key):
        current = assignment.option
        equal = [o for o in options if o.config.gpus <= current.config.gpus
                 and abs(o.cost_per_hour - current.cost_per_hour) <= 1e-9 * max(1.0, current.cost_per_hour)
                 and rank(o) < rank(current) and carries(o, assignment, by_name)
                 and _room(o, assignment, use, availability)]
        best = min(equal, key=rank, default=current)
        moved = assignment.replicas
        use[current.config.gpu.id] -= moved * current.config.gpus
        use[best.config.gpu.id] = use.get(best.config.gpu.id, 0) + moved * best.config.gpus
        if best.key in merged:
            previous = merged[best.key]
            shares = dict(previous.shares)
            for name, share in assignment.shares.items():
                shares[name] = shares.get(name, 0.0) + share
            merged[best.key] = Assignment(best, previous.replicas + assignment.replicas, shares)
        else:
            merged[best.key] = Assignment(best, assignment.replicas, dict(assignment.shares))
    return [merged[key] for key in sorted(merged)]


def consolidate(assignments: list[Assignment], options: list[Option], classes) -> list[Assignment]:
    """Replica groups of one class on one device at as many GPUs per replica become one group where a single
    configuration carries all their shares in all their replicas for no more cost: one engine to deploy and
    watch instead of several. The load-weighted quality tie-break splits such load (20 req/s of an 8B model on
    RTX 3090s: three TensorRT-LLM INT8 replicas and one vLLM INT8 replica with an FP8 KV cache, the less lossy
    one taking what it can); an inference team runs four of one. The configuration taken is the best by `rank`
    of those that carry it, inside the validation data unless every group was outside. Groups serving several
    classes are left as they are (their combined load is settle_sharing's to check)."""
    by_name = {k.name: k for k in classes}
    together: dict[tuple, list[Assignment]] = {}
    for assignment in assignments:
        config = assignment.option.config
        together.setdefault((config.gpu.id, config.gpus, tuple(sorted(assignment.shares))), []).append(assignment)
    found = []
    for (device, gpus, names), members in together.items():
        if len(members) == 1 or len(names) != 1:
            found += members
            continue
        spent = sum(m.option.cost_per_hour * m.replicas for m in members)
        merged = Assignment(members[0].option, sum(m.replicas for m in members),
                            {names[0]: sum(m.shares[names[0]] for m in members)})
        outside = all(m.option.extrapolated for m in members)
        carrying = [o for o in options if o.config.gpu.id == device and o.config.gpus == gpus
                    and (outside or not o.extrapolated)
                    and o.cost_per_hour * merged.replicas <= spent + 1e-9 * max(1.0, spent)
                    and carries(o, merged, by_name)]
        if not carrying:
            found += members
            continue
        found.append(replace(merged, option=min(carrying, key=rank)))
    return sorted(found, key=lambda a: a.option.key)
