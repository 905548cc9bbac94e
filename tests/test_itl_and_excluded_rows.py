"""Median inter-token latency (what `sglang.bench_serving` reports as median ITL) as its own statistic,
and validation rows kept with a reason but not scored."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from quantplan.solver import serving, validate
from quantplan.solver.stepmodel import StepModel

# A step model simple enough to solve by hand: a decode step reads 1 GB at 100 GB/s (10 ms, whatever
# the batch); a prompt token costs 1 GFLOP at 10 TFLOP/s (0.1 ms), so a prefill batch of p >= 100
# tokens takes p x 0.1 ms (compute-bound) and one of fewer tokens the 10 ms weight read.
STEPS = StepModel(weight_bytes=1e9, expert_bytes=0.0, bytes_per_sequence=0.0, bytes_per_prompt_token=0.0,
                  flops_per_sequence=0.0, flops_per_prompt_token=1e9, bandwidth=1e11, decode_peak=1e15,
                  prefill_peak=1e13, host_bytes=0.0, host_bytes_per_sequence=0.0, host_bytes_per_prompt_token=0.0,
                  host_bandwidth=0.0, overhead_s=0.0, overhead_per_sequence_s=0.0, overhead_per_prompt_token_s=0.0)
PREFILL_FIRST = serving.Timing(STEPS, serving.Scheduling("prefill-first", 8192, 1000, True, False))


def test_median_gap_is_the_plain_step_while_fewer_than_half_the_steps_carry_prompts():
    assert serving._median_gap(0.010, 0.025, 0.3) == 0.010
    assert serving._median_gap(0.010, 0.025, 0.7) == 0.025


def test_prefill_first_median_itl_is_the_decode_step_below_the_mean_tpot():
    """200-token prompts at 5/s: a decode step of 10 ms is followed, with probability 1 - exp(-a) (a = 5 x
    tau arrivals), by a prefill batch of 200 a / (1 - exp(-a)) tokens at 0.1 ms each, so on average it
    adds 0.02 a = 0.1 tau: tau = 10 / 0.9 = 11.11 ms. a = 0.056, so 5.4% of the gaps hold a prefill
    batch: the median gap is the plain 10 ms step, 10% under the mean TPOT."""
    load = serving.poisson(PREFILL_FIRST, 200, 101, 5.0)
    assert load.tpot == pytest.approx(0.010 / 0.9, rel=1e-6)
    assert load.itl_median == pytest.approx(0.010, rel=1e-12)
    assert serving.statistic(load, "tpot", "itl_p50") == load.itl_median
    assert serving.statistic(load, "tpot", "p50") == pytest.approx(0.010 / 0.9, rel=1e-6)


def test_prefill_first_median_itl_holds_a_prefill_batch_when_most_gaps_do():
    """At 30/s, tau = 10 / (1 - 0.02 x 30) = 25 ms, a = 0.75 arrivals per step, 1 - exp(-0.75) = 52.8% of
    the gaps hold a prefill batch of 200 x 0.75 / 0.528 = 284 tokens (28.4 ms): the median gap is
    10 + 28.4 = 38.4 ms, above the mean TPOT."""
    load = serving.poisson(PREFILL_FIRST, 200, 101, 30.0)
    assert load.tpot == pytest.approx(0.025, rel=1e-6)
    share = 1 - math.exp(-0.75)
    assert load.itl_median == pytest.approx(0.010 + 200 * 0.75 / share * 1e-4, rel=1e-6)


def test_prefill_first_fixed_point_settles_near_capacity():
    """At 40/s the prompts take 40 x 20 ms = 80% of the time: tau = 10 / (1 - 0.8) = 50 ms exactly (a damped
    iteration of 20 rounds stopped at 45 ms here)."""
    assert serving.poisson(PREFILL_FIRST, 200, 101, 40.0).tpot == pytest.approx(0.050, rel=1e-9)


def test_multi_step_rounds_make_arrivals_wait_for_the_round():
    """vLLM V0's --num-scheduler-steps 10: a prompt waits for the 10-step round in progress. At 5/s, tau is
    11.11 ms either way (compute-bound prefill costs 0.1 ms per prompt token however it is batched), the
    M/D/1 wait is 0.1 x 20 ms / (2 x 0.9) = 1.11 ms (rho = 5 x 200/8192 x 819.2 ms); one step per round:
    TTFT = 10/2 + 1.11 + a prefill batch of 200 x 0.0556 / (1 - exp(-0.0556)) = 205.6 tokens (20.56 ms) =
    26.67 ms; ten: 10 x 10/2 + 1.11 + 200 x 0.556 / (1 - exp(-0.556)) = 260.7 tokens (26.07 ms) = 77.18 ms."""
    ten = serving.Timing(STEPS, serving.Scheduling("prefill-first", 8192, 1000, False, False, scheduler_steps=10))
    one, rounds = serving.poisson(PREFILL_FIRST, 200, 101, 5.0), serving.poisson(ten, 200, 101, 5.0)
    tau = 0.010 / 0.9
    wait = 0.1 * 0.02 / (2 * 0.9)
    assert one.tpot == pytest.approx(tau, rel=1e-9) and rounds.tpot == pytest.approx(tau, rel=1e-9)
    for load, k in ((one, 1), (rounds, 10)):
        a = 5.0 * k * tau
        assert load.ttft == pytest.approx(k * 0.010 / 2 + wait + 200 * a / -math.expm1(-a) * 1e-4, rel=1e-9)
    assert rounds.ttft == pytest.approx(0.07718, rel=1e-3) and one.ttft == pytest.approx(0.02667, rel=1e-3)


def test_vllm_060_rows_run_as_their_benchmark_started_vllm():
    """SGLang's benchmark_vllm_060 README starts vLLM 0.6.0 with --num-scheduler-steps 10 (no chunked
    prefill then); LambdaLabs' runs are vLLM 0.5.4 at --max-model-len 2048: both V0 prefill-first."""
    rows = {r.id: r for r in validate.load_rows()}
    base = serving.Scheduling("mixed", 8192, 1024, True, False)
    sixty = validate.benchmark_limits(rows["p3"], base)
    assert (sixty.policy, sixty.chunked, sixty.token_budget, sixty.max_sequences, sixty.scheduler_steps) == (
        "prefill-first", False, 4096, 256, 10)
    lambda_labs = validate.benchmark_limits(rows["p90"], base)
    assert (lambda_labs.policy, lambda_labs.token_budget, lambda_labs.scheduler_steps) == ("prefill-first", 2048, 1)
    assert validate.benchmark_limits(rows["p1"], base) == base  # SGLang's own rows: its defaults
    # Crusoe's L40S cookbook: vLLM 0.5.5 with --enable-chunked-prefill, V0's 512-token budget, decodes first
    crusoe = validate.benchmark_limits(rows["p709"], replace(base, token_budget=2048, max_sequences=256))
    assert (crusoe.policy, crusoe.chunked, crusoe.token_budget, crusoe.max_sequences) == ("mixed", True, 512, 256)


def test_mixed_median_itl_is_the_plain_step_at_low_load():
    """The mixed scheduler at 5/s: prompts ride in about 5 x 10 ms = 5% of the steps, so the median gap is
    t(d, 0) = 10 ms while the mean TPOT is longer."""
    mixed = serving.Timing(STEPS, serving.Scheduling("mixed", 8192, 1000, True, False))
    load = serving.poisson(mixed, 200, 101, 5.0)
    assert load.itl_median == pytest.approx(0.010, rel=1e-12)
    assert load.tpot > 0.0105


def test_closed_loops_read_the_median_tpot_for_itl():
    """The closed-loop forms carry no step mixture: the median ITL statistic falls back to the median TPOT."""
    load = serving.Load(ttft=0.1, tpot=0.02, throughput=1.0, decoding=4.0, tpot_percentiles={50: 0.021})
    assert serving.statistic(load, "tpot", "itl_p50") == 0.021
    with pytest.raises(ValueError):
        serving.statistic(load, "ttft", "itl_p50")


def test_sglang_logged_median_itl_rows_use_the_itl_statistic():
    """datacrunch's sglang.bench_serving logs give median_itl_ms, not a TPOT, and SGLang's README gives both
    columns: the ITL rows say so (and the README's ITL rows pair with its TPOT rows of the same runs)."""
    rows = {r.id: r for r in validate.load_rows()}
    for row in rows.values():
        itl = "value is sglang median ITL" in row.note or "Median ITL column" in row.note
        assert (row.statistic == "itl_p50") == itl, row.id
    for itl, tpot in (("p99", "p2"), ("p100", "p6"), ("p101", "p10"), ("p102", "p14")):
        assert rows[itl].value < rows[tpot].value and rows[itl].rate == rows[tpot].rate


def test_excluded_row_is_reported_with_its_reason_and_not_scored():
    row = next(r for r in validate.load_rows() if r.id == "p33")  # a scored SGLang rate row
    kept = row.model_copy(update={"excluded": ""})
    dropped = row.model_copy(update={"id": "x1", "excluded": "a copied table"})
    checks = validate.run(rows=[kept, dropped])
    assert checks[0].predicted is not None and checks[0].error is not None
    assert checks[1].predicted is None and checks[1].reason == "excluded: a copied table"
    summary = validate.summary(checks)
    assert {"id": "x1", "reason": "excluded: a copied table"} in summary["unpredicted"]
    assert summary["under_load"]["tpot_ms"]["all"]["rows"] == 1


ACCELMARK_TTFT = {"p509", "p511", "p513", "p515", "p517", "p519", "p521", "p523", "p525", "p527", "p529", "p531",
                  "p535", "p537", "p539", "p541", "p543", "p545", "p547", "p549", "p551", "p553", "p555", "p557",
                  "p559", "p561", "p563", "p565", "p567", "p569", "p571", "p573", "p575", "p577", "p579", "p581",
                  "p583", "p585"}
# surajssd/llm-k8s: vLLM 0.8.3 with --enable-prefix-caching, the same 200 ShareGPT prompts replayed at QPS 1, 4, 16
# and inf in one server session: every TTFT after the first rate's is of cached prompts
LLM_K8S_TTFT = {"p593", "p594", "p595", "p599", "p600", "p601", "p605", "p606", "p607"}
# AccelMark's vLLM 0.7.3 (V0 engine) BF16 and INT8 W8A8 TPOT pairs, held out: V0's host time per step sets them
ACCELMARK_V0 = {f"p{n}" for n in range(800, 816)}
# AccelMark's vLLM 0.20 GPTQ and INT8 W8A8 TPOTs on an A100, run with enforce_eager (no CUDA graphs)
ACCELMARK_EAGER = {"p544", "p546", "p548", "p550"}
# the SGLang cookbook's Llama-3.1 70B A100 TTFTs above one client: seeded random prompts replayed with the radix cache on
SGL_COOKBOOK_TTFT = {f"p{i}" for i in (906, 907, 908, 912, 913, 914, 924, 925, 926, 930, 931, 932)}
# philschmid/llmperf's A10G TTFTs (NIM 1.0.0 TensorRT-LLM and vLLM 0.4.3, Llama-3-8B): the A10G's catalog FP16 rate
# (a third-party 70 TFLOPS estimate) would have to run the whole c=1 TTFT's prefill at 80-93% of peak
A10G_LLMPERF_TTFT = {f"p{n}" for n in range(660, 674)}


def test_shipped_exclusions():
    """June 2023 llama.cpp (weights on the GPU, attention on the CPU), the partly copied H200 table, and the
    LambdaLabs A100 bursts' median TTFTs where more than 15% of the requests (Llama-3-70B-Instruct, Mixtral)
    returned no token and count as TTFT 0 in the median, and GPUStack's 1000-request INT4 bursts whose same-page
    BF16 run quantplan's engine model misses by more than a factor 2 (A100 and RTX 4090 Qwen3-8B, A100 Qwen3-32B), and
    AccelMark's TTFTs (three runs over the same requests pooled in one engine session with prefix caching on, the engine
    called in-process), and llm-k8s's TTFTs after its first rate (prompts replayed with prefix caching on), and
    AccelMark's vLLM 0.7.3 TPOT pairs (V0 engine, whose host time per step quantplan does not model), and
    AccelMark's vLLM 0.20 GPTQ and W8A8 TPOTs on an A100 run with enforce_eager (no CUDA graphs), and the
    llm-tracker.info RTX PRO 6000 llama-bench rows (a GDDR7 card the catalog classes datacenter, whose llama.cpp
    shares are set for HBM datacenter GPUs; kept for their MoE-vs-dense comparison at one build), and one M1 Max
    llama-bench session whose GPU the source names 24-core and 32-core in different places (dense controls 1.5-2.2x
    slower than the 32-core part; kept for its MoE-vs-dense ratios), the SGLang cookbook's Llama-3.1 70B A100
    TTFTs above one client (bench_serving's seeded random prompts replayed run after run with the radix cache on),
    and philschmid/llmperf's A10G TTFTs (NIM 1.0.0 and vLLM 0.4.3), whose c=1 values would need 80-93% of the
    A10G's catalog FP16 rate, a third-party estimate, for the prefill alone."""
    excluded = {r.id for r in validate.load_rows() if r.excluded}
    assert excluded == {"v31", "v32", "v33", "v34", "p56", "p57", "p58", "p59", "p89", "p92", "p95", "p98",
                        "p127", "p131", "p133", "p143", "p149",
                        "p400", "p401", "p402", "p403", "p404", "p405", "p408", "p409", "p410", "p411",
                        "v333", "v334", "v335", "v336", "v337", "v338",
                        *(f"v{i}" for i in range(339, 348))} | ACCELMARK_TTFT | LLM_K8S_TTFT | ACCELMARK_V0 \
        | ACCELMARK_EAGER | SGL_COOKBOOK_TTFT | A10G_LLMPERF_TTFT


def test_overlap_scheduler_hands_the_first_token_out_a_step_late(world):
    """SGLang's overlap scheduler (first_token_steps 1): the wave of 16 prompts of 1000 tokens on an H100
    reads TTFT exactly one decode step of 16 sequences, t(16, 0), later than without it; TPOT is the same.
    The step-by-step simulation hands each token out after the step that follows its prompt's: the
    second prefill batch for the first half of the wave, a decode step for the second half."""
    from dataclasses import replace

    from quantplan.solver.scenario import TrafficClass
    from quantplan.solver.simulate import simulate
    from tests.test_serving import bare

    assert world.frameworks.get("sglang").first_token_steps == 1
    plain = bare(world, "sglang", 1000, 200, sequences=16)
    late = serving.Timing(plain.steps, replace(plain.scheduling, first_token_steps=1.0))
    without, with_it = (serving.closed_loop(t, 1000, 200, 16, serving.Protocol(10)) for t in (plain, late))
    assert float(with_it.ttft - without.ttft) == pytest.approx(plain.steps.seconds(16, 0), rel=1e-12)
    assert float(with_it.tpot) == float(without.tpot)
    traffic = TrafficClass(prompt_tokens=1000, output_tokens=200, concurrency=16)
    simulated = [simulate(t, traffic, clients=16).as_dict() for t in (plain, late)]
    half_and_half = (plain.steps.seconds(0, 7808) + plain.steps.seconds(16, 0)) / 2
    assert simulated[1]["ttft_ms"] - simulated[0]["ttft_ms"] == pytest.approx(half_and_half * 1e3, rel=0.05)
    assert simulated[1]["tpot_ms"] == pytest.approx(simulated[0]["tpot_ms"], rel=1e-12)


def test_sglang_before_the_overlap_scheduler_hands_tokens_out_at_once():
    rows = {r.id: r for r in validate.load_rows()}
    base = serving.Scheduling("prefill-first", 8192, 1024, True, False, first_token_steps=1.0)
    assert validate.benchmark_limits(rows["p1"], base).first_token_steps == 0.0  # SGLang 0.3.0
    assert validate.benchmark_limits(rows["p17"], base).first_token_steps == 1.0  # December 2024 build


def test_held_out_rows_are_scored_apart_and_never_fitted():
    """A held-out row (validation_load_held_out.csv) is predicted and scored in its own table, not among the
    rows the fit used; the fit's rows leave it out."""
    row = next(r for r in validate.load_rows() if r.id == "p33")  # a scored SGLang rate row
    held = row.model_copy(update={"id": "h1", "held_out": True})
    checks = validate.run(rows=[row, held])
    assert checks[1].held_out and checks[1].error == pytest.approx(checks[0].error)
    summary = validate.summary(checks)
    assert summary["under_load"]["tpot_ms"]["all"]["rows"] == 1
    assert summary["under_load_held_out"]["tpot_ms"]["all"]["rows"] == 1
    shipped = validate.load_rows()
    held_ids = {r.id for r in shipped if r.held_out}
    assert {"p200", "p295", "p296", "p313"} <= held_ids  # the A100 NIM runs and GPUStack's bursts
    assert not held_ids & {r.id for r in validate.load_rows(held_out=False)}
