"""The integer program on tiny instances whose optimum is checked by hand."""

from __future__ import annotations

import pytest

from quantplan.solver import program
from quantplan.solver.api import prune_dominated
from quantplan.solver.candidates import Config, Execution
from quantplan.solver.estimator import Quality
from quantplan.solver.scenario import TrafficClass
from quantplan.solver.serving import Performance
from quantplan.solver.space import Option


def option(world, gpu: str, cost: float, capacities: dict[str, float], gpus: int = 1, method: str = "fp16",
           batch: int = 8, tpot_ms: float = 20.0, ttft_ms: float = 100.0, relative_loss: float = 0.0) -> Option:
    """A candidate with made-up figures: only cost, capacity and latency matter to the program."""
    m = world.methods.get(method)
    config = Config(world.models.get("llama-2-7b"), m, world.gpus.get(gpu), world.frameworks.get("vllm"),
                    world.kv_caches.get("fp16"), gpus, Execution(), batch)
    performance = {name: Performance(ttft_ms=ttft_ms, ttft_max_ms=ttft_ms, tpot_ms=tpot_ms, capacity=capacity,
                                     output_tokens_per_s=capacity * 10, decode_tokens_per_s=batch / tpot_ms * 1e3,
                                     prefill_tokens_per_s=1e4)
                   for name, capacity in capacities.items()}
    return Option(config, cost, Quality(relative_loss, 6.0), {}, performance)


def chat(users: int = 10) -> TrafficClass:
    return TrafficClass(name="chat", concurrency=users, output_tokens=100)


def test_mixing_two_configurations_beats_either_alone(world):
    """10 users. A: $2/h for 4 users (3 replicas = $6). B: $3/h for 8 users (2 = $6). 1 A + 1 B = $5."""
    a = option(world, "l4", 2.0, {"chat": 4})
    b = option(world, "l40s", 3.0, {"chat": 8})
    solution = program.solve([a, b], (chat(),), {})
    assert solution.cost_per_hour == pytest.approx(5.0)
    assert sorted((x.option.config.gpu.id, x.replicas) for x in solution.assignments) == [("l4", 1), ("l40s", 1)]


def test_two_classes_mixed_fleet_beats_every_single_device_plan(world):
    """Chat (10 users) can only be served by H100 ($3/h, 10 users). Summaries (12 users): H100 carries 4 per
    replica, L4 carries 6 for $0.8/h. Mixed: 1 H100 + 2 L4 = $4.60. H100 only: chat 1.0 + summaries 3.0
    replicas = 4 x $3 = $12. L4 only: cannot serve chat (infeasible)."""
    traffic = (chat(10), TrafficClass(name="summaries", concurrency=12, prompt_tokens=4000))
    h100 = option(world, "h100-sxm", 3.0, {"chat": 10, "summaries": 4})
    l4 = option(world, "l4", 0.8, {"summaries": 6})
    mixed = program.solve([h100, l4], traffic, {})
    assert mixed.cost_per_hour == pytest.approx(4.6)
    assert program.solve([h100], traffic, {}).cost_per_hour == pytest.approx(12.0)
    with pytest.raises(program.NoSolution):
        program.solve([l4], traffic, {})


def test_one_configuration_serves_two_classes_by_shares(world):
    """Chat 10 users (capacity 20) and summaries 6 users (capacity 12): 0.5 + 0.5 replica = one replica."""
    traffic = (chat(10), TrafficClass(name="summaries", concurrency=6))
    both = option(world, "a100-80gb", 2.7, {"chat": 20, "summaries": 12})
    solution = program.solve([both], traffic, {})
    assert [(a.replicas, sorted(a.shares)) for a in solution.assignments] == [(1, ["chat", "summaries"])]


def test_availability_forces_the_more_expensive_device(world):
    """Cheapest is 3 x A ($6) or A+B ($5), but only one A may be rented: 1 A + 1 B = $5; with no A: 2 B = $6."""
    a = option(world, "l4", 2.0, {"chat": 4})
    b = option(world, "l40s", 3.0, {"chat": 8})
    assert program.solve([a, b], (chat(),), {"l4": 1}).cost_per_hour == pytest.approx(5.0)
    assert program.solve([a, b], (chat(),), {"l4": 0}).cost_per_hour == pytest.approx(6.0)
    with pytest.raises(program.NoSolution):
        program.solve([a, b], (chat(),), {"l4": 0, "l40s": 1})


def test_availability_counts_gpus_not_replicas(world):
    """A 2-GPU replica uses two devices: 4 users need 2 replicas = 4 GPUs; only 3 available -> infeasible."""
    tp2 = option(world, "h100-sxm", 6.0, {"chat": 2}, gpus=2)
    with pytest.raises(program.NoSolution):
        program.solve([tp2], (chat(4),), {"h100-sxm": 3})
    assert program.solve([tp2], (chat(4),), {"h100-sxm": 4}).cost_per_hour == pytest.approx(12.0)


def test_cap_on_distinct_configurations(world):
    """With at most one configuration the mixed $5 plan is not allowed: 3 A or 2 B, both $6."""
    a = option(world, "l4", 2.0, {"chat": 4})
    b = option(world, "l40s", 3.0, {"chat": 8})
    solution = program.solve([a, b], (chat(),), {}, max_configurations=1)
    assert solution.cost_per_hour == pytest.approx(6.0)
    assert len(solution.assignments) == 1


def test_ties_prefer_fewer_gpus_then_less_quality_loss(world):
    """Three $4 plans for 4 users: 1x TP2 replica (2 GPUs), an INT4 single-GPU and an FP16 single-GPU one."""
    tp2 = option(world, "h100-sxm", 4.0, {"chat": 4}, gpus=2, method="fp8")
    int4 = option(world, "a100-80gb", 4.0, {"chat": 4}, method="awq-int4", relative_loss=0.02)
    fp16 = option(world, "l40s", 4.0, {"chat": 4}, method="fp16")
    for order in ([tp2, int4, fp16], [fp16, int4, tp2], [int4, tp2, fp16]):
        solution = program.solve(order, (chat(4),), {})
        assert [a.option.config.gpu.id for a in solution.assignments] == ["l40s"]


def test_equal_cost_replicas_of_one_class_on_one_device_run_one_configuration(world):
    """10 users on L4s at $1/h a replica: FP16 (no loss) carries 3 per replica, AWQ INT4 (loss 0.02) carries 4.
    Three replicas are the fewest (INT4 alone: 12 >= 10; FP16 alone needs 4). The quality tie-break alone would
    keep two FP16 replicas (6 users, share 0.6) and one INT4 (4 users): loss 0.02 x 0.4 = 0.008 against 0.02, but
    two engines to run for the same $3/h. One configuration carries it all: three INT4 replicas."""
    fp16 = option(world, "l4", 1.0, {"chat": 3}, method="fp16")
    int4 = option(world, "l4", 1.0, {"chat": 4}, method="awq-int4", relative_loss=0.02)
    split = program.break_ties([program.Assignment(fp16, 2, {"chat": 0.6}), program.Assignment(int4, 1, {"chat": 0.4})],
                               [fp16, int4], (chat(),))
    assert [(a.option.config.method.id, a.replicas) for a in split] == [("awq-int4", 1), ("fp16", 2)]
    solution = program.solve([fp16, int4], (chat(),), {})
    assert solution.cost_per_hour == pytest.approx(3.0)
    assert [(a.option.config.method.id, a.replicas, a.shares) for a in solution.assignments] == [
        ("awq-int4", 3, {"chat": pytest.approx(1.0)})]


def test_groups_outside_the_validation_data_are_not_merged_into_it(world):
    """The same two L4 options, the INT4 one outside the validation data: the plan keeps as little load on it as
    three replicas allow (FP16 carries 6 on two), and consolidation may not move the FP16 load there."""
    fp16 = option(world, "l4", 1.0, {"chat": 3}, method="fp16")
    int4 = option(world, "l4", 1.0, {"chat": 4}, method="awq-int4", relative_loss=0.02)
    int4.extrapolated = True
    solution = program.solve([fp16, int4], (chat(),), {})
    assert sorted((a.option.config.method.id, a.replicas) for a in solution.assignments) == [("awq-int4", 1),
                                                                                            ("fp16", 2)]


def test_latency_objective_takes_the_faster_plan(world):
    """Cost picks the cheap slow option; latency picks the fast one and, among those, the cheapest."""
    slow = option(world, "l4", 1.0, {"chat": 10}, tpot_ms=40)
    fast = option(world, "h100-sxm", 3.0, {"chat": 10}, tpot_ms=10)
    fast_dear = option(world, "h200", 6.0, {"chat": 10}, tpot_ms=10)
    assert program.solve([slow, fast, fast_dear], (chat(),), {}).cost_per_hour == pytest.approx(1.0)
    latency = program.solve([slow, fast, fast_dear], (chat(),), {}, objective="latency")
    assert [a.option.config.gpu.id for a in latency.assignments] == ["h100-sxm"]


def test_pruning_keeps_the_optimum_and_drops_dominated(world):
    cheap = option(world, "l4", 2.0, {"chat": 4})
    dominated = option(world, "l4", 2.5, {"chat": 3}, batch=4)  # dearer and smaller: never needed
    other = option(world, "l40s", 3.0, {"chat": 8})
    kept = prune_dominated([cheap, dominated, other], (chat(),))
    assert [o.key for o in kept] == [cheap.key, other.key]
    assert program.solve(kept, (chat(),), {}).cost_per_hour == program.solve(
        [cheap, dominated, other], (chat(),), {}).cost_per_hour


def test_same_input_same_plan(world):
    options = [option(world, gpu, cost, {"chat": cap}) for gpu, cost, cap in
               [("l4", 2.0, 4), ("l40s", 3.0, 8), ("a10g", 1.0, 2), ("a100-80gb", 2.0, 4)]]
    first = program.solve(options, (chat(),), {})
    second = program.solve(list(reversed(options)), (chat(),), {})
    assert [(a.option.key, a.replicas) for a in first.assignments] == \
           [(a.option.key, a.replicas) for a in second.assignments]


def test_rate_class_load_divides_by_requests_per_second(world):
    """4 req/s, a replica carries 1.5 req/s -> 3 replicas (2.67 rounded up)."""
    traffic = TrafficClass(name="api", rate_per_s=4.0)
    one = option(world, "l40s", 1.0, {"api": 1.5})
    assert program.solve([one], (traffic,), {}).assignments[0].replicas == 3


def test_skyline_pruning_keeps_exactly_what_the_pairwise_comparison_keeps():
    """Full built-in catalog, 70B, three classes (capacities per class), with and without latency."""
    from quantplan.solver.api import _prune_pairwise, prune_dominated
    from quantplan.solver.registry import load_world
    from quantplan.solver.scenario import make_scenario
    from quantplan.solver.space import build_space

    classes = [{"name": "chat", "prompt_tokens": 1024, "output_tokens": 256, "concurrency": 64, "ttft_ms": 2000,
                "tpot_ms": 50},
               {"name": "rag", "prompt_tokens": 6000, "output_tokens": 300, "rate_per_s": 2.0, "ttft_ms": 3000},
               {"name": "batch", "prompt_tokens": 512, "output_tokens": 512, "concurrency": 256}]
    world = load_world()
    scenario = make_scenario({"model": "llama-3.1-70b", "classes": classes, "max_gpus": 4,
                              "gpus": ["h100-sxm", "l40s", "a100-80gb", "rtx4090"]})
    options = build_space(world, scenario, world.with_prices({})).options
    assert len(options) > 500
    for latency in (False, True):
        kept = {}
        for limited in (None, {"h100-sxm", "l40s"}, set()):  # per device; two limited, two pooled; all pooled
            skyline = [o.key for o in prune_dominated(options, scenario.classes, latency, limited)]
            pairwise = [o.key for o in _prune_pairwise(options, scenario.classes, latency, limited)]
            assert skyline == pairwise and len(skyline) < len(options)
            kept[None if limited is None else len(limited)] = skyline
        # pooling devices only removes more; pruning the per-device skyline again gives the pooled skyline
        assert set(kept[0]) < set(kept[2]) < set(kept[None])
        per_device = prune_dominated(options, scenario.classes, latency)
        assert [o.key for o in prune_dominated(per_device, scenario.classes, latency, set())] == kept[0]
        # per device and method first (what the alternatives start from): the same skylines after
        by_method = prune_dominated(options, scenario.classes, latency, per_method=True)
        assert set(o.key for o in per_device) < set(o.key for o in by_method)
        assert [o.key for o in prune_dominated(by_method, scenario.classes, latency)] == kept[None]
        for method in ("fp8", "awq-int4"):  # one method's skyline, from all options or from by_method
            alone = [o.key for o in prune_dominated([o for o in options if o.config.method.id == method],
                                                    scenario.classes, latency, set())]
            assert alone == [o.key for o in prune_dominated([o for o in by_method if o.config.method.id == method],
                                                            scenario.classes, latency, set())]


def test_re_priced_options_are_pruned_as_the_pairwise_comparison_prunes_them(world):
    """A price sweep's points re-price one space (Option.but); pruning remembers each group's skyline by the
    options' price-free figures and the order of their costs. Hand-made: on one device, `cheap` (1 GPU, $2/h,
    capacity 10) dominates `dear` (1 GPU, $3/h, capacity 8). At twice the prices the order holds: the same
    skyline, remembered. With `dear` re-priced to $1/h it no longer is dominated: both stay."""
    from quantplan.solver.api import _SKYLINES, _prune_pairwise

    cheap = option(world, "h100-sxm", 2.0, {"chat": 10.0})
    dear = option(world, "h100-sxm", 3.0, {"chat": 8.0}, method="fp8")
    assert [o.cost_per_hour for o in prune_dominated([cheap, dear], (chat(),))] == [2.0]
    remembered = len(_SKYLINES)
    doubled = [cheap.repriced(4.0), dear.but(cost_per_hour=6.0)]
    assert [o.cost_per_hour for o in prune_dominated(doubled, (chat(),))] == [4.0]
    assert len(_SKYLINES) == remembered  # the same figures in the same cost order: nothing pruned anew
    reordered = [cheap.but(cost_per_hour=2.0), dear.but(cost_per_hour=1.0)]
    kept = prune_dominated(reordered, (chat(),))
    assert [o.cost_per_hour for o in kept] == [o.cost_per_hour for o in _prune_pairwise(reordered, (chat(),))]
    assert [o.cost_per_hour for o in kept] == [2.0, 1.0]
    # a copy that changes more than the price (a fleet's owner) carries no remembered figures
    assert "_compared" in cheap.__dict__ and "_compared" not in cheap.but(owner="m").__dict__


def test_independent_parts_are_solved_apart_with_the_same_optimum(world):
    """Chat (10 users) only on A ($2/h, 4 users: 3 replicas = $6) and summaries (12 users) only on B ($1/h,
    5 users: 3 replicas = $3): no option serves both, so the program splits into two parts whose optima add up
    ($9). With L4 limited to 8 GPUs the parts still decide it (their 3 + 3 L4 fit); limited to 5, no plan."""
    traffic = (chat(10), TrafficClass(name="summaries", concurrency=12))
    a = option(world, "l4", 2.0, {"chat": 4})
    b = option(world, "l40s", 1.0, {"summaries": 5})
    parts = program._parts([a, b], traffic)
    assert [([o.key for o in part], [k.name for k in kept]) for part, kept in parts] == [
        ([a.key], ["chat"]), ([b.key], ["summaries"])]
    solution = program.solve([a, b], traffic, {})
    assert solution.cost_per_hour == pytest.approx(9.0)
    assert sorted((x.option.key, x.replicas) for x in solution.assignments) == sorted([(a.key, 3), (b.key, 3)])
    b_on_l4 = option(world, "l4", 1.0, {"summaries": 5}, batch=16)
    assert program.solve([a, b_on_l4], traffic, {"l4": 8}).cost_per_hour == pytest.approx(9.0)
    with pytest.raises(program.NoSolution):  # 6 replicas of one GPU each do not fit in 5
        program.solve([a, b_on_l4], traffic, {"l4": 5})


def test_parts_that_contest_a_limited_device_share_it_at_the_least_total(world):
    """Chat (10 users): 3 L4 replicas at $1/h for 4 users ($3), or one H100 replica ($4/h, 10 users).
    Summaries (12 users): 3 L4 replicas at $1/h for 5 users ($3), or one L40S replica ($5/h, 12 users).
    Two L4 replicas and the other device cost more than the other device alone (chat $2 + $4, summaries
    $2 + $5), so with fewer than 3 L4 each part takes none. With 4 L4 the parts want 6: the choices are
    chat on L4 + summaries on L40S ($3 + $5 = $8), chat on H100 + summaries on L4 ($4 + $3 = $7, the cheapest),
    neither on L4 ($9). With 6 L4 both take theirs ($6); with 2, neither ($9)."""
    traffic = (chat(10), TrafficClass(name="summaries", concurrency=12))
    chat_l4, chat_h100 = option(world, "l4", 1.0, {"chat": 4}), option(world, "h100-sxm", 4.0, {"chat": 10})
    sum_l4 = option(world, "l4", 1.0, {"summaries": 5}, batch=16)
    sum_l40s = option(world, "l40s", 5.0, {"summaries": 12}, batch=16)
    options = [chat_l4, chat_h100, sum_l4, sum_l40s]
    staircase = program._staircase(lambda limits: program.solve([chat_l4, chat_h100], traffic[:1], limits),
                                   {"l4": 4}, ["l4"])
    assert [(program._devices_used(plan, "l4"), plan.cost_per_hour) for plan in staircase] == [(0, 4.0), (3, 3.0)]
    solution = program.solve(options, traffic, {"l4": 4})
    assert solution.cost_per_hour == pytest.approx(7.0)
    assert sorted((x.option.key, x.replicas) for x in solution.assignments) == sorted(
        [(chat_h100.key, 1), (sum_l4.key, 3)])
    assert program.solve(options, traffic, {"l4": 6}).cost_per_hour == pytest.approx(6.0)
    assert program.solve(options, traffic, {"l4": 2}).cost_per_hour == pytest.approx(9.0)
    # the same optimum from the one program over both parts (a cap on distinct configurations, here no cap at
    # all, is a constraint the parts cannot split: the whole program decides)
    whole = program.solve(options, traffic, {"l4": 4}, max_configurations=len(options))
    assert whole.cost_per_hour == pytest.approx(7.0)


def test_a_screening_solve_is_one_run_and_skips_the_tie_breaks(world, monkeypatch):
    """settle_sharing's rounds only check a plan: one solver run (cost), where the full solve runs four."""
    traffic = (chat(10),)
    a, b = option(world, "l4", 2.0, {"chat": 4}), option(world, "l40s", 3.0, {"chat": 8}, relative_loss=0.01)
    runs = []
    original = program._run
    monkeypatch.setattr(program, "_run", lambda *args, **kw: runs.append(1) or original(*args, **kw))
    assert program.solve([a, b], traffic, {}, screening=True).cost_per_hour == pytest.approx(5.0)
    assert len(runs) == 1
    runs.clear()
    gaps = []
    monkeypatch.setattr(program, "_run", lambda *args, **kw: gaps.append(kw["gap"]) or original(*args, **kw))
    # "cost": the proven cheapest plan (the full solve's gap), still one run and no tie-breaks
    assert program.solve([a, b], traffic, {}, screening="cost").cost_per_hour == pytest.approx(5.0)
    assert gaps == [program.MIP_GAP]
    monkeypatch.setattr(program, "_run", lambda *args, **kw: runs.append(1) or original(*args, **kw))
    assert program.solve([a, b], traffic, {}).cost_per_hour == pytest.approx(5.0)
    # cost, quality loss: the cost stage's plan (1 + 1 replicas) already has the fewest GPUs any plan can have
    # (10 users / 8 per L40S replica: 1.25, so 2), and nothing lies outside the validation data
    assert len(runs) == 2


def test_a_tie_break_stage_without_a_plan_runs_again_from_the_previous_optimum(world, monkeypatch):
    """A later stage that stops at its time limit with no plan (the previous stage's optimum is feasible for
    it) is run again, started from that optimum, instead of ending the solve as if nothing were feasible."""
    traffic = (chat(10),)
    a, b = option(world, "l4", 2.0, {"chat": 4}), option(world, "l40s", 3.0, {"chat": 8})
    lean = option(world, "h100-sxm", 100.0, {"chat": 100})  # one GPU could carry all: the GPU stage must run
    calls = []
    original = program._run

    def flaky(problem, solver_name, time_limit, warm=False, gap=program.MIP_GAP, nodes=None):
        calls.append(warm)
        if len(calls) == 2:  # the GPU stage, cold: as if it had hit the limit with nothing found
            raise program.NoSolution("Not Solved")
        return original(problem, solver_name, time_limit, warm, gap, nodes)

    monkeypatch.setattr(program, "_run", flaky)
    solution = program.solve([a, b, lean], traffic, {})
    assert solution.cost_per_hour == pytest.approx(5.0)
    assert calls[:3] == [False, False, True]


def test_alternatives_name_unquantized_weights_once():
    """When the plan quantizes, "unquantized (fp16/bf16 weights)" is one alternative; "fp16 only" and "bf16
    only" would repeat it (the same plan with the other 16-bit name), so the method slots go to other methods."""
    from quantplan.solver.api import solve

    # here bf16 and fp16 ranked first and second of the other methods, and showed the unquantized plan again
    plan = solve({"model": "llama-3.1-70b", "gpus": ["mi300x", "h100-sxm"], "max_gpus": 2,
                  "classes": [{"name": "chat", "prompt_tokens": 1024, "output_tokens": 256, "concurrency": 64,
                               "ttft_ms": 2000, "tpot_ms": 50}]})
    assert {g.method for g in plan.replicas}.isdisjoint({"fp16", "bf16"})
    labels = [a.label for a in plan.alternatives]
    assert labels.count("unquantized (fp16/bf16 weights)") == 1
    assert not {"fp16 only", "bf16 only"} & set(labels)
    assert len([label for label in labels if label.endswith(" only") and not label.startswith("on ")]) == 3


def test_a_solver_stopped_before_any_plan_is_not_called_infeasible(world, monkeypatch):
    """HiGHS at its time limit with no feasible point says "Not Solved": the plan may exist, so the user is
    told to give the solver more time (one line, exit 2), not that nothing can serve the load."""
    from click.testing import CliRunner

    from quantplan.cli import cli

    def stopped(problem, solver_name, time_limit, warm=False, gap=program.MIP_GAP, nodes=None):
        raise program.NoPlanInTime(f"no plan within the time limit of {time_limit:g} s")

    monkeypatch.setattr(program, "_run", stopped)
    result = CliRunner().invoke(cli, ["solve", "--model", "llama-3.1-8b", "--gpu", "l40s", "--max-gpus", "1",
                                      "--concurrency", "8", "--ttft-ms", "2000", "--tpot-ms", "60",
                                      "--time-limit", "3", "--no-alternatives"])
    assert result.exit_code == 2
    assert "found no plan within the time limit of 3 s" in result.output and "--time-limit" in result.output
    assert "infeasible" not in result.output.lower()


def test_a_screening_solve_stops_at_a_node_count_and_still_returns_its_plan(world, monkeypatch):
    """Screening stops at SCREENING_NODES nodes, not at a time (the same input screens to the same plan on any
    machine): HiGHS then says kSolutionLimit, which PuLP does not know; the plan found so far comes back, marked
    as not proven (a stop at a limit: PuLP calls it "Optimal", its solution status says integer feasible).
    70B, three classes on four devices (82 options after pruning): one node does not finish it (with 64 chat
    users it did until the catalog's refit of Dec 3, with 96 until the Marlin shares were fitted: with each
    refit the root node solved the smaller one)."""
    from quantplan.solver.scenario import make_scenario
    from quantplan.solver.space import build_space

    classes = [{"name": "chat", "prompt_tokens": 1024, "output_tokens": 256, "concurrency": 128, "ttft_ms": 2000,
                "tpot_ms": 50},
               {"name": "rag", "prompt_tokens": 6000, "output_tokens": 300, "rate_per_s": 2.0, "ttft_ms": 3000},
               {"name": "batch", "prompt_tokens": 512, "output_tokens": 512, "concurrency": 256}]
    scenario = make_scenario({"model": "llama-3.1-70b", "classes": classes, "max_gpus": 4,
                              "gpus": ["h100-sxm", "l40s", "a100-80gb", "rtx4090"]})
    options = prune_dominated(build_space(world, scenario, world.with_prices({})).options, scenario.classes,
                              limited=set())
    monkeypatch.setattr(program, "SCREENING_NODES", 1)
    monkeypatch.setattr(program, "SCREENING_GAP", 0.0)
    screened = program.solve(options, scenario.classes, {}, screening=True)
    exact = program.solve(options, scenario.classes, {})
    assert screened.status == "time_limit" and exact.status == "optimal"
    assert screened.cost_per_hour >= exact.cost_per_hour - 1e-9
    for traffic in scenario.classes:  # whatever it found serves every class
        assert sum(a.shares.get(traffic.name, 0.0) for a in screened.assignments) == pytest.approx(1.0)


def test_fewest_gpus_bound_is_each_class_on_its_leanest_option(world):
    """Chat 10 users: 1-GPU option of 4 users (2.5 GPUs of load) or 2-GPU option of 8 (2.5); summaries 6
    users on a 4-GPU option of 12 (2.0 GPUs of load). No option serves both, so each rounds up alone: chat
    to 3 GPUs, summaries to a multiple of its options' 4 GPUs, 4: at least 7 (the optimum: one 2-GPU and one
    1-GPU replica, and one 4-GPU replica). With an option serving both (8-GPU replicas of 24 users each: 0.42
    + 0.25 replicas, 5.33 GPUs of load) the classes form one group: at least 2.5 + 2.0 = 4.5 GPUs, so 5."""
    traffic = (chat(10), TrafficClass(name="summaries", concurrency=6))
    options = [option(world, "l4", 1.0, {"chat": 4}), option(world, "l40s", 3.0, {"chat": 8}, gpus=2),
               option(world, "a100-80gb", 9.0, {"summaries": 12}, gpus=4)]
    assert program._fewest_gpus(options, traffic) == 7.0
    solution = program.solve(options, traffic, {})
    assert sum(a.option.config.gpus * a.replicas for a in solution.assignments) == 7
    both = option(world, "h100-sxm", 20.0, {"chat": 24, "summaries": 24}, gpus=8)
    assert program._fewest_gpus(options + [both], traffic) == 5.0


def test_a_tie_break_stage_the_plan_already_wins_is_not_solved(world, monkeypatch):
    """One option inside the data, no quality loss anywhere, one GPU needed: after the cost stage the plan is
    at every tie-break's lower bound (1 GPU, nothing extrapolated, no loss), so only the cost stage runs; the
    plan is the one the full sequence gives."""
    runs = []
    optimum = program._optimum
    monkeypatch.setattr(program, "_optimum", lambda *a, **k: runs.append(1) or optimum(*a, **k))
    a = option(world, "l4", 2.0, {"chat": 12})
    b = option(world, "l40s", 3.0, {"chat": 12})
    solution = program.solve([a, b], (chat(),), {})
    assert len(runs) == 1
    assert [(x.option.config.gpu.id, x.replicas) for x in solution.assignments] == [("l4", 1)]
    # two GPUs of load on two one-GPU options at equal cost, one outside the data: the extrapolated stage runs
    runs.clear()
    inside, outside = option(world, "l4", 2.0, {"chat": 6}), option(world, "l40s", 2.0, {"chat": 6})
    outside.extrapolated = True
    solution = program.solve([outside, inside], (chat(),), {})
    assert [(x.option.config.gpu.id, x.replicas) for x in solution.assignments] == [("l4", 2)]
    assert len(runs) >= 1


def test_programs_solved_in_parallel_give_the_plain_loops_results_in_order(world, monkeypatch):
    """in_parallel: each item's program in a thread of its own, results in the items' order and equal to a
    plain loop's; the first failing item's exception is the one raised; stdout is given back afterwards."""
    monkeypatch.setattr(program.os, "cpu_count", lambda: 2)
    traffic = (chat(10),)
    cases = [[option(world, "l4", cost, {"chat": users})] for cost, users in ((2.0, 4), (1.0, 5), (3.0, 10))]
    serial = [program.solve(options, traffic, {}).cost_per_hour for options in cases]
    assert serial == pytest.approx([6.0, 2.0, 3.0])  # 3, 2 and 1 replicas
    assert program.in_parallel(lambda options: program.solve(options, traffic, {}).cost_per_hour, cases) == serial
    descriptor = program.os.fstat(1)

    def fails(item):
        if item > 0:
            raise ValueError(f"item {item}")
        return item

    with pytest.raises(ValueError, match="item 1"):
        program.in_parallel(fails, [0, 1, 2])
    assert program.os.fstat(1).st_ino == descriptor.st_ino and program._QUIET["depth"] == 0


def test_a_share_of_a_class_smaller_than_a_replica_opens_one(world):
    """Chat (2 users) and summaries (3 users) fit in one replica of A ($2/h, 10 users each: 0.2 + 0.3 of a
    replica) or apart on B ($1.5/h, chat only, 4 users) and A: one A ($2) beats B + A ($3.5). The program
    holds share <= replicas for every pair whose class needs less than one replica, and only those (C, 1 user
    per replica, needs 2 replicas for chat: its capacity row implies it)."""
    traffic = (chat(2), TrafficClass(name="summaries", concurrency=3))
    a = option(world, "l4", 2.0, {"chat": 10, "summaries": 10})
    b = option(world, "l40s", 1.5, {"chat": 4})
    c = option(world, "a10g", 0.5, {"chat": 1})
    problem, _, _ = program.build([a, b, c], traffic, {}, None)
    listed = problem.constraints() if callable(problem.constraints) else problem.constraints.values()  # PuLP 3.3+
    opened = [c.name for c in listed if c.name.startswith("open")]
    # never more replicas than serving all it can alone takes: A 0.5 -> 1, B 0.5 -> 1, C 2 users / 1 -> 2
    assert [program._most_replicas(program._carried(o, traffic)) for o in (a, b, c)] == [1, 1, 2]
    assert len(opened) == 3 and sum("l4/" in n for n in opened) == 2 and sum("l40s/" in n for n in opened) == 1
    solution = program.solve([a, b], traffic, {})
    assert solution.cost_per_hour == pytest.approx(2.0)
    assert [(x.option.key, x.replicas) for x in solution.assignments] == [(a.key, 1)]
    assert program.solve([a, b, c], traffic, {}).cost_per_hour == pytest.approx(2.0)  # 2 x C + A: $3


def test_the_program_is_written_with_long_names(world, tmp_path):
    """A fleet's classes split apart give variables names past 100 characters (model, class and configuration
    in each): the LP file takes names up to 255 (CPLEX LP's limit), where PuLP's default of 100 refused them."""
    traffic = (TrafficClass(name="llama-3.1-70b/assistant-" + "x" * 40, concurrency=10, output_tokens=100),)
    long = option(world, "l4", 2.0, {traffic[0].name: 4}).but(owner="llama-3.1-70b|llama-3.1-70b/assistant")
    path = tmp_path / "program.lp"
    assert program.solve([long], traffic, {}, write_lp=str(path)).cost_per_hour == pytest.approx(6.0)
    written = path.read_text()
    assert max(len(word) for word in written.split()) > 100 and "replicas" in written


def test_a_budget_over_the_parts_cheapest_plan_has_no_plan(world):
    """The two independent parts above cost $6 + $3: a budget of $9 holds, $8.99 does not (the parts' proven
    cheapest plan is over it, so no plan is within it), the same from a screening solve (whose plan is only
    within 1% of the cheapest: the whole program decides) and from the whole program (a configuration cap)."""
    traffic = (chat(10), TrafficClass(name="summaries", concurrency=12))
    a, b = option(world, "l4", 2.0, {"chat": 4}), option(world, "l40s", 1.0, {"summaries": 5})
    assert program.solve([a, b], traffic, {}, max_cost_per_hour=9.0).cost_per_hour == pytest.approx(9.0)
    for screening in (False, True, "cost"):
        with pytest.raises(program.NoSolution):
            program.solve([a, b], traffic, {}, max_cost_per_hour=8.99, screening=screening)
    with pytest.raises(program.NoSolution):
        program.solve([a, b], traffic, {}, max_cost_per_hour=8.99, max_configurations=2)


def test_highs_restarts_only_on_programs_past_restart_columns():
    """Small programs (one model's classes) solve without HiGHS's restarts, larger ones keep them (the measurements
    behind RESTART_COLUMNS are in its comment); the rest of the settings are the same either way."""
    small = program._solver("highs", 60.0, columns=program.RESTART_COLUMNS)
    large = program._solver("highs", 60.0, columns=program.RESTART_COLUMNS + 1)
    assert small.optionsDict == {**large.optionsDict, "mip_allow_restart": False}
    assert "mip_allow_restart" not in large.optionsDict
    assert large.optionsDict["mip_rel_gap"] == program.MIP_GAP and large.threads == small.threads == 1


def test_settling_starts_from_a_screened_plan_only_where_classes_can_share_a_replica():
    """api.first_solution: a plan whose mixes may break an SLO under their combined load is screened first
    (the full solve with its tie-breaks comes once the mixes hold); with no option serving two classes, or under
    an objective that does not screen, the full solve at once."""
    from types import SimpleNamespace

    from quantplan.solver.api import first_solution

    asked = []
    resolve = lambda options, screening: asked.append(screening) or "plan"  # noqa: E731
    mixed = [SimpleNamespace(performance={"chat": 1, "rag": 1}), SimpleNamespace(performance={"chat": 1})]
    apart = [SimpleNamespace(performance={"chat": 1}), SimpleNamespace(performance={"rag": 1})]
    assert first_solution(mixed, "cost", resolve) == ("plan", "screen") and asked == [True]
    asked.clear()
    assert first_solution(apart, "cost", resolve) == ("plan", "full") and asked == [False]
    asked.clear()
    assert first_solution(mixed, "latency", resolve) == ("plan", "full") and asked == [False]


def test_a_light_rate_plan_reserves_the_fewest_slots_that_add_no_wait():
    """0.2 requests/s of Llama-3.1-8B (512 + 256 tokens) on one RTX 3090 with llama.cpp: every batch size from 8 to
    64 slots carries it on the one GPU at the same cost, and pruning keeps the largest (more capacity for nothing).
    The plan reserves 8 (-np 8: 17.4 GB of 24, where 64 slots took 23.0): the smallest whose TTFT and TPOT, mean
    and p90, are within 2% of the largest's. At 4 slots a request waits for a slot often enough to add 12% to the
    mean TTFT (Erlang C, serving._slot_wait)."""
    from quantplan.solver.api import solve_with_space
    from quantplan.solver.plan import replica_group
    from quantplan.solver.registry import load_world
    from quantplan.solver.scenario import make_scenario

    world = load_world()
    scenario = make_scenario({"model": "llama-3.1-8b", "gpus": ["rtx3090"], "frameworks": ["llama.cpp"],
                              "methods": ["bf16"], "kv_cache_dtypes": ["fp16"], "alternatives": False,
                              "classes": [{"prompt_tokens": 512, "output_tokens": 256, "rate_per_s": 0.2,
                                           "ttft_ms": 2000, "tpot_ms": 100}]})
    plan, space = solve_with_space(scenario, world)
    (group,) = plan.replicas
    assert (group.count, group.batch_size, plan.cost_per_hour) == (1, 8, pytest.approx(0.43))
    assert group.memory_gb_per_gpu == pytest.approx(17.4, abs=0.05)
    by_batch = {o.config.batch: o for o in space.options
                if o.config.with_batch(0).key == "rtx3090/bf16/llama.cpp/tp1/b0/kv-fp16"}
    largest = replica_group(by_batch[64], 1, {"default": 1.0}, scenario.classes)
    smaller = replica_group(by_batch[4], 1, {"default": 1.0}, scenario.classes)
    assert largest.memory_gb_per_gpu == pytest.approx(23.0, abs=0.05)
    (mine,), (big,), (few,) = group.classes, largest.classes, smaller.classes
    assert mine.ttft_ms <= big.ttft_ms * 1.02 and mine.tpot_ms <= big.tpot_ms * 1.02
    assert few.ttft_ms > big.ttft_ms * 1.1


def test_twenty_requests_a_second_on_rtx3090s_run_one_engine():
    """20 req/s of Llama-3.1-8B (1000 + 300 tokens, chat_general floor) on RTX 3090s ($0.43/h): four replicas are
    the cheapest ($1.72/h). The quality tie-break had put 23% of the load on one vLLM INT8 replica (FP8 KV cache,
    ppl +0.077) beside three TensorRT-LLM INT8 ones (+0.086): now four of one configuration carry it all."""
    from quantplan.solver.api import solve
    from quantplan.solver.registry import load_world

    plan = solve({"model": "llama-3.1-8b", "gpus": ["rtx3090"], "alternatives": False,
                  "classes": [{"prompt_tokens": 1000, "output_tokens": 300, "rate_per_s": 20, "ttft_ms": 1000,
                               "tpot_ms": 50, "use_case": "chat_general"}]}, load_world())
    (group,) = plan.replicas
    assert (group.count, plan.cost_per_hour) == (4, pytest.approx(4 * 0.43))
    assert (group.method, group.framework) == ("int8-w8a8", "tensorrt-llm")


def test_the_cost_floor_needs_whole_replicas_of_a_device_kind(world):
    """Three classes of 6 users. On one device kind (an A100 at $2/h) option A carries 10 users of x or y, option B
    10 of y or z; an L4 at $0.5/h carries 10 of z. Each class is 0.6 of a replica. The cheapest plan is two A100s,
    $4/h (A: x and 2/3 of y, 1.0 replica; B: the last third of y and z, 0.8), against $4.50 with the L4 (x and y on
    A need 1.2 replicas, so two A100s anyway). The program's own relaxation, replicas fractional and any share
    opening its replica, reads $2.90 (x and y on A, 1.2 x $2, z on the L4 opened whole). The floor keeps each
    option's replicas fractional but the A100 kind's whole: $4.00, the optimum itself."""
    import pulp

    traffic = tuple(TrafficClass(name=name, concurrency=6, output_tokens=100) for name in ("x", "y", "z"))
    a = option(world, "a100-80gb", 2.0, {"x": 10, "y": 10}, batch=8)
    b = option(world, "a100-80gb", 2.0, {"y": 10, "z": 10}, batch=16)
    c = option(world, "l4", 0.5, {"z": 10})
    floor = program.cost_floor([a, b, c], traffic, {}, None, None, 60.0)
    solution = program.solve([a, b, c], traffic, {})
    assert solution.cost_per_hour == pytest.approx(4.0)
    assert floor == pytest.approx(4.0, rel=1e-8) and floor <= solution.cost_per_hour
    problem, replicas, _ = program.build([a, b, c], traffic, {}, None)
    problem.setObjective(pulp.lpSum(o.cost_per_hour * replicas[o.key] for o in (a, b, c)))
    for variable in problem.variables():
        variable.cat = pulp.LpContinuous
    problem.solve(pulp.HiGHS(msg=False))
    assert pulp.value(problem.objective) == pytest.approx(2.9)  # the relaxation the floor improves on


def test_under_the_latency_objective_fewer_slots_must_be_no_slower():
    """The same 0.2 requests/s as above, planned for latency: 8 slots add 0.01 ms to the mean TTFT that 64 give, so
    the plan keeps 16, the smallest batch whose TTFT and TPOT are no higher than the largest's."""
    from quantplan.solver.api import solve
    from quantplan.solver.registry import load_world
    from quantplan.solver.scenario import make_scenario

    fields = {"model": "llama-3.1-8b", "gpus": ["rtx3090"], "frameworks": ["llama.cpp"], "methods": ["bf16"],
              "kv_cache_dtypes": ["fp16"], "alternatives": False,
              "classes": [{"prompt_tokens": 512, "output_tokens": 256, "rate_per_s": 0.2, "ttft_ms": 2000,
                           "tpot_ms": 100}]}
    world = load_world()
    by_objective = {objective: solve(make_scenario({**fields, "objective": objective}), world).replicas[0]
                    for objective in ("cost", "latency")}
    assert (by_objective["cost"].batch_size, by_objective["latency"].batch_size) == (8, 16)
    assert by_objective["latency"].ttft_ms <= by_objective["cost"].ttft_ms


def _built_with_lpsum(options, classes, availability):
    """The program as PuLP's own operators make it (lpSum of products, `<=` / `==`): what program.build made before
    it built rows from (variable, coefficient) lists in one step."""
    import math

    import pulp

    problem = pulp.LpProblem("quantplan", pulp.LpMinimize)
    variable = program._variable_factory(problem)
    replicas = {o.key: variable(program._name(f"replicas[{o.key}]"), 0,
                                math.ceil(sum(program.load_per_replica(o, k) for k in classes
                                              if k.name in o.performance) - 1e-9), "Integer") for o in options}
    shares = {(o.key, k.name): variable(program._name(f"share[{o.key}][{k.name}]"), 0, 1, "Continuous")
              for o in options for k in classes if k.name in o.performance}
    for traffic in classes:
        problem += pulp.lpSum(shares[o.key, traffic.name] for o in options
                              if (o.key, traffic.name) in shares) == 1, program._name(f"serve[{traffic.name}]")
    for o in options:
        carried = [program.load_per_replica(o, k) * shares[o.key, k.name] for k in classes if (o.key, k.name) in shares]
        problem += pulp.lpSum(carried) <= replicas[o.key], program._name(f"capacity[{o.key}]")
        for k in classes:
            if (o.key, k.name) in shares and program.load_per_replica(o, k) < 1.0:
                problem += shares[o.key, k.name] <= replicas[o.key], program._name(f"open[{o.key}][{k.name}]")
    for device, limit in sorted(availability.items()):
        using = [o.config.gpus * replicas[o.key] for o in options if o.config.gpu.id == device]
        if using:
            problem += pulp.lpSum(using) <= limit, program._name(f"available[{device}]")
    return problem


def test_rows_are_those_pulps_operators_make(world):
    """Every row of program.build (made from coefficient lists) has the name, sense, constant and terms, in the same
    order, that lpSum and `<=` / `==` give: the solver sees the same program it saw before that change."""
    summaries = TrafficClass(name="summaries", concurrency=12, output_tokens=100)
    options = [option(world, "h100-sxm", 3.0, {"chat": 10, "summaries": 4}, gpus=2),
               option(world, "l4", 0.8, {"summaries": 6}), option(world, "l4", 0.0, {"chat": 40}, batch=64)]
    classes, availability = (chat(), summaries), {"l4": 3, "h100-sxm": 4}
    made, _, _ = program.build(options, classes, availability, None)
    expected = _built_with_lpsum(options, classes, availability)

    def rows(problem):
        return [(name, c.sense, c.constant, [(v.name, x) for v, x in c.items()])
                for name, c in problem._constraints.items()]

    assert rows(made) == rows(expected)
    # serve x2, capacity x3, open x1 (chat on the owned L4: 10 of 40 users, the only share below one replica),
    # available x2
    assert len(rows(made)) == 2 + 3 + 1 + 2
    assert [(v.name, v.lowBound, v.upBound, v.cat) for v in made.variables()] == \
           [(v.name, v.lowBound, v.upBound, v.cat) for v in expected.variables()]


def test_an_objective_leaves_out_zero_terms_as_lpsum_does(world):
    """An owned device's option costs nothing: lpSum(0 * x) has no term for x, and neither has program's expression."""
    import pulp

    a, b = option(world, "l4", 0.0, {"chat": 4}), option(world, "l40s", 3.0, {"chat": 8})
    problem = pulp.LpProblem("terms", pulp.LpMinimize)
    variable = program._variable_factory(problem)
    x, y = variable("x", None, None, "Continuous"), variable("y", None, None, "Continuous")
    made = program._expression([(x, a.cost_per_hour), (y, b.cost_per_hour)])
    assert dict(made) == dict(pulp.lpSum([a.cost_per_hour * x, b.cost_per_hour * y])) == {y: 3.0}


def test_solver_time_counts_each_run(world):
    """A plain cost solve of one class runs HiGHS for the cost, then once per tie-break stage it cannot skip."""
    seconds, runs = program.solver_time()
    options = [option(world, "l4", 2.0, {"chat": 4}), option(world, "l40s", 3.0, {"chat": 8})]
    program.solve(options, (chat(),), {})
    spent, count = program.solver_time()
    assert count - runs >= 1 and spent >= seconds


def test_an_options_key_follows_its_owner(world):
    """Option.key is kept once made; a copy for another owner (a fleet's model) has that owner's key."""
    a = option(world, "l4", 2.0, {"chat": 4})
    plain = a.key
    owned = a.but(owner="llama-3.1-8b")
    assert owned.key == f"llama-3.1-8b:{plain}" and a.key == plain and a.but(cost_per_hour=1.0).key == plain
