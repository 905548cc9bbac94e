"""Engines declare what they run on: vendor, architecture, method and KV-cache support tables."""

from __future__ import annotations

import json
import textwrap

import pytest
from click.testing import CliRunner

from quantplan.cli import cli

AMD_ROW = textwrap.dedent('''
    schema_version = 1

    [[gpu]]
    id = "test-cdna3"
    name = "a CDNA3 test accelerator"
    kind = "gpu"
    device_class = "datacenter"
    vendor = "AMD"
    architecture = "CDNA 3 (gfx942)"
    memory_gb = 192
    bandwidth_tb_s = 5.3
    tflops_fp16 = 1307.4
    tflops_bf16 = 1307.4
    tflops_fp8 = 2614.9
    tops_int8 = 2614.9
    interconnect = "infinity-fabric"
    interconnect_gb_s = 448
    source = "test row: MI300X-like figures (AMD Instinct MI300X datasheet: 192 GB HBM3, 5.3 TB/s)"

    [[price]]
    gpu = "test-cdna3"
    usd_per_hour = 2.0
    provider = "test"
    as_of = "2026-12"
    source = "test price"
''')


def estimate(*argv: str, catalog=None) -> dict:
    args = ["estimate", "--model", "llama-3.1-8b", *argv, "--json"]
    if catalog:
        args += ["--catalog", str(catalog)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def amd_catalog(tmp_path):
    path = tmp_path / "amd.toml"
    path.write_text(AMD_ROW)
    return path


def test_tensorrt_llm_refuses_an_amd_gpu(tmp_path):
    found = estimate("--method", "fp16", "--gpu", "test-cdna3", "--framework", "tensorrt-llm",
                     catalog=amd_catalog(tmp_path))
    assert not found["compatible"]
    assert "tensorrt-llm runs on nvidia GPUs only; test-cdna3 is AMD" in found["reasons"][0]


def test_vllm_runs_fp8_natively_on_cdna3_without_a_cuda_compute_capability(tmp_path):
    found = estimate("--method", "fp8", "--gpu", "test-cdna3", "--framework", "vllm", catalog=amd_catalog(tmp_path))
    assert found["compatible"], found
    assert "fp8 compute" in found["execution"]


def test_vllm_table_refuses_awq_and_int8_on_amd(tmp_path):
    catalog = amd_catalog(tmp_path)
    for method in ("awq-int4", "int8-w8a8"):
        found = estimate("--method", method, "--gpu", "test-cdna3", "--framework", "vllm", catalog=catalog)
        assert not found["compatible"]
        assert f"support table has no {method} on cdna3" in found["reasons"][0]


def test_vllm_fp8_kv_cache_on_a100_and_awq_on_t4_are_planned():
    fp8_kv = estimate("--method", "fp16", "--gpu", "a100-80gb", "--framework", "vllm", "--kv-cache-dtype", "fp8")
    assert fp8_kv["compatible"], fp8_kv
    awq = estimate("--method", "awq-int4", "--gpu", "t4", "--framework", "vllm")
    assert awq["compatible"], awq
    assert "awq-gemm" in awq["execution"] and "no measured speed" in awq["execution"]
    # TensorRT-LLM's FP8 KV cache needs FP8 units (Ada and later): still refused on an A100
    trt = estimate("--method", "fp16", "--gpu", "a100-80gb", "--framework", "tensorrt-llm", "--kv-cache-dtype", "fp8")
    assert not trt["compatible"]
    assert "no fp8 KV cache on ampere" in trt["reasons"][0]


def test_a_bf16_model_runs_with_an_fp16_kv_cache_where_the_gpu_has_no_bf16():
    found = estimate("--method", "awq-int4", "--gpu", "t4", "--framework", "vllm")
    assert found["kv_cache_dtype"] == "fp16"
    assert "no bf16 units" in found["kv_cache_note"]


def test_architecture_ids_follow_the_compute_capability():
    from quantplan.solver.registry import load_world

    world = load_world()
    expected = {"t4": "turing", "a100-80gb": "ampere", "l40s": "ada", "h100-sxm": "hopper", "b200": "blackwell",
                "m2-max": "apple", "xeon-8480": "cpu"}
    assert {g: world.gpus.get(g).arch_id for g in expected} == expected


def test_solve_never_plans_an_engine_on_a_vendor_it_does_not_run_on(tmp_path):
    result = CliRunner().invoke(cli, ["solve", "--model", "llama-3.1-8b", "--gpu", "test-cdna3", "--concurrency", "8",
                                      "--catalog", str(amd_catalog(tmp_path)), "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    for group in plan["replicas"]:
        assert group["framework"] in ("vllm", "sglang", "llama.cpp")


def solve_json(*argv: str) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, ["solve", *argv, "--json"])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def test_equal_cost_plans_prefer_less_quality_loss_across_replica_structures():
    """Blog example 2 at twice its clients (256; at its own 128 one single-H100 INT4 replica is now cheapest):
    FP8 on 2x H100 and two single-H100 INT4 replicas both cost two H100-hours; FP8 loses less perplexity, so
    it wins whichever the solver meets first."""
    from quantplan.solver.registry import load_world

    _, plan = solve_json("--model", "llama-2-70b", "--gpu", "h100-sxm", "--max-gpus", "2", "--gpu-count",
                         "h100-sxm=2", "--concurrency", "256", "--prompt-tokens", "512", "--output-tokens", "256",
                         "--ttft-ms", "5000", "--min-tokens-per-s", "10", "--max-ppl-delta", "0.1")
    assert plan["cost_per_hour"] == pytest.approx(2 * load_world().with_prices({})["h100-sxm"].usd_per_hour)
    assert [(g["method"], g["gpus_per_replica"], g["count"]) for g in plan["replicas"]] == [("fp8", 2, 1)]
    int4 = [a for a in plan["alternatives"] if a["label"] in ("awq-int4 only", "gptq-int4 only")]
    assert int4 and all(a["cost_per_hour"] == pytest.approx(plan["cost_per_hour"]) for a in int4)


def test_an_unmeasured_engine_loses_a_tie_to_a_measured_one():
    """70B for 16 users on one H100: llama.cpp Q8_0 (no data-center measurements) and AWQ on SGLang both fit
    on one H100; the measured configuration wins the tie, the other stays an alternative."""
    _, plan = solve_json("--model", "llama-3.1-70b", "--concurrency", "16", "--prompt-tokens", "1024",
                         "--output-tokens", "512", "--gpu", "h100-sxm")
    (group,) = plan["replicas"]
    assert group["framework"] != "llama.cpp" and group["basis"] == "measured-near" and group["margin"] == "none"


def test_auto_margin_plans_an_extrapolated_configuration_at_its_p90_error():
    from quantplan.solver import errorbars

    # TensorRT-LLM's only rows on a consumer device are one RTX 3090's (held out, since 2026-12-04): 70B AWQ on two
    # RTX 4090s (tensor parallel over PCIe) lies outside them
    argv = ("--model", "llama-3.1-70b", "--concurrency", "4", "--gpu", "rtx4090", "--method", "awq-int4",
            "--framework", "tensorrt-llm", "--max-gpus", "2", "--no-alternatives")
    _, auto = solve_json(*argv)
    _, none = solve_json(*argv, "--margin", "none")
    group, plain = auto["replicas"][0], none["replicas"][0]
    assert group["basis"] == "extrapolated" and group["margin"] == "p90" and plain["margin"] == "none"
    # decode work is planned at the decode p90 factor and prompt work at the TTFT one; TensorRT-LLM's in-flight
    # batching puts prompt chunks into the decode steps, so TPOT grows by a factor between the two
    decode, ttft = (errorbars.shipped().factor(group_name, "tensorrt-llm", "p90") for group_name in ("decode", "ttft"))
    assert 1 < decode < group["tpot_ms"] / plain["tpot_ms"] < ttft
    assert any("outside the validation data" in note for note in auto["notes"])


def test_budget_caps_the_latency_objective_and_explains_when_too_small():
    _, fast = solve_json("--model", "llama-3.1-8b", "--concurrency", "1", "--objective", "latency",
                         "--max-cost-per-hour", "3", "--no-alternatives")
    assert fast["cost_per_hour"] <= 3
    code, plan = solve_json("--model", "llama-3.1-8b", "--concurrency", "1", "--max-cost-per-hour", "0.05",
                            "--no-alternatives")
    assert code == 1 and plan["status"] == "infeasible"
    assert "no plan within the budget of $0.05/h: the cheapest" in plan["reasons"][0]


def test_gpu_class_restricts_and_labels_devices():
    _, consumer = solve_json("--model", "llama-3.1-8b", "--concurrency", "4", "--gpu-class", "consumer",
                             "--no-alternatives")
    _, datacenter = solve_json("--model", "llama-3.1-8b", "--concurrency", "4", "--gpu-class", "datacenter",
                               "--no-alternatives")
    assert {g["gpu_class"] for g in consumer["replicas"]} == {"consumer"}
    assert {g["gpu_class"] for g in datacenter["replicas"]} == {"datacenter"}


def test_latency_alternatives_show_the_objective_measure():
    _, plan = solve_json("--model", "llama-3.1-8b", "--concurrency", "1", "--objective", "latency",
                         "--max-cost-per-hour", "10")
    assert plan["alternatives"]
    for alternative in plan["alternatives"]:
        assert alternative["latency_ms"] > 0 and alternative["latency_difference_ms"] >= -1e-6


def test_infeasible_figures_print_enough_digits_to_differ_from_the_slo():
    from quantplan.solver.explain import distinct

    assert distinct(3.03, 3.0, 1) == ("3.03", "3.00")
    assert distinct(120.0, 50.0, 0) == ("120", "50")


def test_exllamav2_loads_only_the_architectures_its_loader_knows():
    """ExLlamaV2's architecture.py (turboderp-org/exllamav2 @753296959325) has Llama, Mistral, Mixtral, Qwen2 and
    Gemma2 but no Qwen3 or Qwen3-MoE: a Qwen3 model gets no ExLlamaV2 configuration, with the reason; Llama does."""
    from quantplan.solver.api import estimate

    qwen3 = estimate("qwen3-8b", "gptq-int4", "rtx4090", "exllamav2")
    assert not qwen3.compatible
    assert any("exllamav2 does not load qwen3 models" in reason for reason in qwen3.reasons)
    assert estimate("llama-3.1-8b", "gptq-int4", "rtx4090", "exllamav2").compatible
