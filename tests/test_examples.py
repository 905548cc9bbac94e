"""The seed blog's three worked examples, solved; where quantplan differs from the blog, the numbers say why."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantplan.solver.api import DeploymentConstraints, estimate, solve
from quantplan.solver.errors import InfeasibleError
from quantplan.solver.scenario import load_scenario

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def plans():
    return {name: solve(load_scenario(EXAMPLES / f"{name}.toml"))
            for name in ("chat-7b-a100", "blog-2-70b-batch-2xh100", "blog-3-7b-m2max-laptop")}


def test_example_1_fp16_meets_40_tokens_per_s_on_one_a100(plans, world):
    """The blog says FP16 gives ~32 tok/s per user at batch 8 and fails the 40 tok/s SLO. The roofline
    disagrees: 13.5 GB of FP16 weights at 2.039 TB/s is a 6.6 ms floor per step (<= 151 tok/s), and
    quantplan predicts ~90 tok/s. So no quantization is needed; at equal cost the tie-break keeps
    the unquantized weights. (The blog's 50 ms TTFT is not reachable through a served engine's API:
    examples/chat-7b-a100.toml asks 150 ms; see the next test.)"""
    plan = plans["chat-7b-a100"]
    assert plan.status == "optimal"
    [group] = plan.replicas
    assert (group.gpu, group.gpus_per_replica, group.count) == ("a100-80gb", 1, 1)
    assert group.method in ("fp16", "bf16") and group.ppl_delta == 0.0
    assert 40 < group.tokens_per_s_per_user <= 2.039e12 / 13.48e9
    assert group.ttft_ms <= 150
    fp16 = estimate("llama-2-7b", "fp16", "a100-80gb", "vllm", batch=8, prompt_tokens=128, output_tokens=256,
                    world=world)
    assert fp16.tokens_per_s_per_user > 40


def test_example_1_awq_alone_misses_ttft_on_one_a100():
    """The blog's pick, AWQ INT4, prefills on 16-bit tensor cores through the Marlin kernel: behind SGLang's
    own server (~21 ms per request) an AWQ replica meets the 50 ms TTFT with two users (37.3 ms with one,
    46.1 ms with two, 55.0 ms with three; 45.8 ms with one and 64.7 ms with two while Marlin's compute share
    was the 0.45 estimate, before the INT4 rows p412-p431 fitted it at 0.97), so 8 users need 4 A100s and
    one is available: the explanation says so."""
    scenario = load_scenario(EXAMPLES / "blog-1-7b-chat-a100.toml").model_copy(update={"methods": ("awq-int4",)})
    with pytest.raises(InfeasibleError) as raised:
        solve(scenario)
    message = str(raised.value)
    assert "not within the devices available (a100-80gb=1)" in message
    assert "needs 4 a100-80gb (4 x (1x a100-80gb, awq-int4, sglang, batch 2)" in message


def test_example_2_int4_on_one_h100(plans, world):
    """The blog's answer (FP8 W8A8 on 2x H100) is no longer the cheapest: INT4 on vLLM's Marlin kernel,
    whose compute share the INT4 rows p412-p431 fit at 0.97 (0.45 estimated before: INT4 then needed two
    single-H100 replicas of 64 clients, $13.04/h like FP8, and the tie-break kept FP8), serves all 128 clients
    from one H100 at batch 128 (TPOT ~94 ms, 10.7 tok/s each), half the FP8 plan's cost. A GPTQ/AWQ replica
    at that batch is an extrapolation of Marlin's share: the INT4 rows under load are prompt-heavy A100 runs
    and 1000-request bursts (the README says so)."""
    plan = plans["blog-2-70b-batch-2xh100"]
    [group] = plan.replicas
    assert (group.gpu, group.gpus_per_replica, group.count, group.batch_size) == ("h100-sxm", 1, 1, 128)
    assert group.method in ("awq-int4", "gptq-int4") and group.framework == "vllm"
    assert group.ttft_ms <= 5000 and group.tokens_per_s_per_user >= 10 and group.ppl_delta <= 0.1
    fp8 = [a for a in plan.alternatives if a.label == "fp8 only"]
    assert fp8 and fp8[0].cost_per_hour == pytest.approx(2 * plan.cost_per_hour)
    one_gpu = estimate("llama-2-70b", "awq-int4", "h100-sxm", "tensorrt-llm", batch=64, prompt_tokens=512,
                       output_tokens=256, kv_cache_dtype="fp16", world=world)
    assert one_gpu.fits and one_gpu.ttft_ms <= 5000 and one_gpu.tokens_per_s_per_user >= 10


def test_example_2_one_gpu_replicas_serve_it_as_one_int4_replica():
    """Limited to one GPU per replica, the 128 clients fit one INT4 replica on one H100 (two replicas of 64
    on the two H100s while Marlin's compute share was the 0.45 estimate)."""
    scenario = load_scenario(EXAMPLES / "blog-2-70b-batch-2xh100.toml").model_copy(update={"max_gpus": 1})
    plan = solve(scenario)
    [group] = plan.replicas
    assert (group.gpus_per_replica, group.count, group.batch_size) == (1, 1, 128)
    # one h100-sxm at the default price, the median of six providers: 6.5175 (catalogs/prices.toml)
    assert group.method in ("awq-int4", "gptq-int4") and plan.cost_per_hour == pytest.approx(6.5175)


def test_example_3_m2_max_llama_cpp_4_bit(plans):
    """Fastest plan meeting +0.2 ppl: a 4-5 bit GGUF in llama.cpp on Metal, well above 15 tok/s
    (the blog's ~24-28 tok/s is below what 400 GB/s allows for a 4 GB model). Quality model v2 puts
    Q4_0 on Llama-2-7B at +2.7% (measured +2.86%, llama.cpp PR #4969), +0.16 ppl: within the floor."""
    plan = plans["blog-3-7b-m2max-laptop"]
    [group] = plan.replicas
    assert (group.gpu, group.framework) == ("m2-max", "llama.cpp")
    assert group.method in ("gguf-q4_0", "gguf-q4_k_m", "gguf-q5_k_m")
    assert group.ppl_delta <= 0.2 and group.tokens_per_s_per_user > 28
    assert group.tokens_per_s_per_user < 400e9 / 3.8e9  # bandwidth / bytes of a 4-bit 7B model


def test_deployment_constraints_take_the_blog_field_names():
    constraints = DeploymentConstraints(
        model_params_B=7, available_gpu_memory_GB=80, num_gpus=1, gpu_type="A100", target_latency_ms=60,
        target_throughput_tps=40, max_batch_size=8, quality_floor_ppl=0.3, cost_priority="minimize_cost",
        prompt_tokens=128, output_tokens=256, model="Llama-2 7B")
    scenario = constraints.to_scenario()
    assert scenario.gpus == ("a100-80gb",) and scenario.max_gpus == 1
    plan = solve(constraints)
    assert plan.replicas[0].gpu == "a100-80gb" and plan.replicas[0].tokens_per_s_per_user >= 40


def test_cpu_only_and_hybrid_offload_are_candidate_kinds():
    """A server CPU serves through llama.cpp; 70B on one 24 GB RTX 4090 fits only with some layers in
    host RAM, and the plan says how many are on the GPU."""
    from quantplan.solver.scenario import make_scenario

    cpu = solve(make_scenario({"model": "llama-3.1-8b", "gpus": ["xeon-8480"], "alternatives": False,
                               "classes": [{"concurrency": 1, "min_tokens_per_s": 5, "max_ppl_delta": 0.3}]}))
    assert (cpu.replicas[0].gpu, cpu.replicas[0].framework) == ("xeon-8480", "llama.cpp")
    assert cpu.replicas[0].tokens_per_s_per_user >= 5
    hybrid = solve(make_scenario({"model": "llama-3.1-70b", "gpus": ["rtx4090"], "max_gpus": 1,
                                  "alternatives": False, "classes": [{"concurrency": 1}]}))
    group = hybrid.replicas[0]
    assert group.framework == "llama.cpp" and 0 < group.gpu_layers < 80
    assert group.memory_gb_per_gpu <= group.memory_capacity_gb_per_gpu


def test_owned_laptops_enter_plans_only_when_named(world):
    from collections import Counter

    from quantplan.solver.scenario import make_scenario
    from quantplan.solver.space import configurations

    def devices(**fields):
        scenario = make_scenario({"model": "llama-2-7b", **fields})
        return {c.gpu.id for c in configurations(world, scenario, world.models.get("llama-2-7b"), Counter())}

    assert "m2-max" not in devices() and "h100-sxm" in devices()
    assert devices(gpus=["m2-max"]) == {"m2-max"}
    assert "m2-max" in devices(gpu_count={"m2-max": 1})


def test_deployment_constraints_cpu_path_of_example_3():
    """Blog example 3: available_gpu_memory_GB 0 (its CPU path) on an M2 Max keeps the plan on llama.cpp."""
    constraints = DeploymentConstraints(
        model_params_B=7, available_gpu_memory_GB=0, num_gpus=0, gpu_type="M2 Max", target_latency_ms=500,
        target_throughput_tps=15, max_batch_size=1, quality_floor_ppl=0.2, cost_priority="minimize_latency",
        prompt_tokens=128, output_tokens=256, model="llama-2-7b")
    assert constraints.to_scenario().frameworks == ("llama.cpp",)
    group = solve(constraints).replicas[0]
    assert (group.gpu, group.framework) == ("m2-max", "llama.cpp") and group.tokens_per_s_per_user >= 15


def test_an_alternative_costs_what_the_restricted_solve_costs(world):
    """examples/mixed-fleet-two-classes.toml: the alternatives are planned as the plan is, classes sharing a replica
    meeting their SLOs under the combined load. Unquantized weights cost $5.583/h, as `--method fp16 --method bf16`
    plans them; before the alternatives settled their mixes they read $3.722/h, a plan whose shared replicas broke
    chat's TTFT. The GGUF Q4_K_M alternative read $8.379/h against its restricted plan's $12.10/h."""
    scenario = load_scenario(EXAMPLES / "mixed-fleet-two-classes.toml")
    plan = solve(scenario, world)
    shown = {a.label: a.cost_per_hour for a in plan.alternatives}
    restrictions = (("unquantized (fp16/bf16 weights)", ["fp16", "bf16"]), ("gguf-q4_k_m only", ["gguf-q4_k_m"]))
    for label, methods in restrictions:
        restricted = solve(scenario.model_copy(update={"methods": tuple(methods), "alternatives": False}), world)
        assert shown[label] == pytest.approx(restricted.cost_per_hour, rel=1e-9), label
    assert shown["unquantized (fp16/bf16 weights)"] == pytest.approx(5.583, abs=1e-3)
