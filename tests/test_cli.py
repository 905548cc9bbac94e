"""The `quantplan` command: JSON output, round trips between solve and estimate, hand-computed
figures, exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from quantplan.cli import cli, main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CATALOGS = ROOT / "catalogs"
BLOG_EXAMPLES = ("chat-7b-a100.toml", "blog-2-70b-batch-2xh100.toml", "blog-3-7b-m2max-laptop.toml")

# Llama-2-70B: 80 layers x 8 KV heads x 128 head dim x (K and V) x 2 bytes = 327,680 bytes per token.
LLAMA2_70B_KV_BYTES_PER_TOKEN = 80 * 8 * 128 * 2 * 2
LLAMA2_70B_PARAMS = 68_976_648_192

REPLICA_KEYS = {"method", "gpu", "framework", "gpus_per_replica", "batch_size", "kv_cache_dtype", "count",
                "ttft_ms", "tpot_ms", "tokens_per_s", "memory_gb_per_gpu", "ppl_delta", "ppl_delta_pct"}
PLAN_KEYS = {"status", "cost_per_hour", "cost_per_million_tokens", "replicas", "binding", "alternatives"}


def run(argv: list[str], code: int = 0):
    """Invoke the CLI in-process and check the exit code; return the result."""
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    return result


def run_json(argv: list[str], code: int = 0):
    return json.loads(run(argv, code).stdout)


def prices() -> dict[str, float]:
    """Each device's default price: the median of its providers' rows in prices.toml (README, Prices)."""
    import statistics

    rows = tomllib.loads((CATALOGS / "prices.toml").read_text())["price"]
    by_gpu: dict[str, list[float]] = {}
    for row in rows:
        by_gpu.setdefault(row["gpu"], []).append(row["usd_per_hour"])
    return {gpu: statistics.median(listed) for gpu, listed in by_gpu.items()}


_solved: dict[str, dict] = {}


def solved(example: str) -> dict:
    """`quantplan solve EXAMPLE --json`, once per example for the whole module."""
    if example not in _solved:
        _solved[example] = run_json(["solve", str(EXAMPLES / example), "--json"])
    return _solved[example]


# ---------------------------------------------------------------- 1. solve --json


def test_solve_blog_example_1_is_infeasible_and_says_why():
    """The blog's 50 ms TTFT for 8 users on one A100: no served engine reaches it (exit 1, reasons in JSON)."""
    result = CliRunner().invoke(cli, ["solve", str(EXAMPLES / "blog-1-7b-chat-a100.toml"), "--json"])
    assert result.exit_code == 1
    data = json.loads(result.output.split("\ninfeasible:")[0])
    assert data["status"] == "infeasible"
    # either no configuration reaches 50 ms, or none does within the one A100 on hand: the reason
    # names the device and the figure that falls short
    reason = data["reasons"][0]
    assert "a100-80gb" in reason and ("the SLO is 50 ms" in reason or "a100-80gb=1" in reason)


def test_solve_chat_example_json():
    plan = solved("chat-7b-a100.toml")
    assert PLAN_KEYS <= set(plan)
    assert plan["status"] == "optimal"
    assert plan["model"] == "llama-2-7b"
    assert len(plan["replicas"]) == 1
    replica = plan["replicas"][0]
    assert replica["gpu"] == "a100-80gb"
    assert replica["gpus_per_replica"] == 1
    assert replica["count"] == 1
    a100 = prices()["a100-80gb"]
    assert plan["cost_per_hour"] == pytest.approx(a100, rel=1e-12)
    assert replica["cost_per_hour"] == pytest.approx(a100, rel=1e-12)
    # The SLOs of the example file hold: TTFT < 150 ms, 40 tok/s per user (TPOT <= 25 ms), ppl delta <= 0.3.
    assert replica["ttft_ms"] <= 150
    assert replica["tpot_ms"] <= 1000 / 40
    assert replica["ppl_delta"] <= 0.3
    assert replica["batch_size"] >= 8  # 8 concurrent users on one replica
    # $/M tokens follows from $/h and the plan's tokens/s.
    assert plan["cost_per_million_tokens"] == pytest.approx(a100 / (plan["tokens_per_s"] * 3600) * 1e6, rel=1e-9)
    assert isinstance(plan["binding"], list) and isinstance(plan["alternatives"], list)


@pytest.mark.parametrize("example", BLOG_EXAMPLES)
def test_solve_json_has_the_promised_keys(example):
    plan = solved(example)
    assert PLAN_KEYS <= set(plan)
    assert plan["status"] == "optimal"
    assert plan["replicas"]
    for replica in plan["replicas"]:
        assert REPLICA_KEYS <= set(replica), REPLICA_KEYS - set(replica)
        assert replica["count"] >= 1
        assert replica["ppl_delta_pct"] >= 0
    total = sum(r["cost_per_hour"] * r["count"] for r in plan["replicas"])
    assert plan["cost_per_hour"] == pytest.approx(total, rel=1e-9)


def test_solve_blog_example_2_uses_two_h100():
    plan = solved("blog-2-70b-batch-2xh100.toml")
    replica = plan["replicas"][0]
    assert replica["gpu"] == "h100-sxm"
    assert replica["gpus_per_replica"] * replica["count"] <= 2  # gpu_count = { h100-sxm = 2 }
    assert plan["cost_per_hour"] == pytest.approx(
        prices()["h100-sxm"] * replica["gpus_per_replica"] * replica["count"], rel=1e-12)
    assert replica["ppl_delta"] <= 0.1
    assert replica["ttft_ms"] <= 5000


# ---------------------------------------------------------------- 2. solve -> estimate round trip


@pytest.mark.parametrize("example", BLOG_EXAMPLES)
def test_estimate_reproduces_the_solved_replica(example):
    plan = solved(example)
    document = tomllib.loads((EXAMPLES / example).read_text())
    traffic = document["class"][0]
    replica = plan["replicas"][0]
    argv = ["estimate", "--model", document["model"], "--method", replica["method"], "--gpu", replica["gpu"],
            "--framework", replica["framework"], "--gpus", str(replica["gpus_per_replica"]),
            "--batch", str(replica["batch_size"]), "--prompt-tokens", str(traffic["prompt_tokens"]),
            "--output-tokens", str(traffic["output_tokens"]), "--kv-cache-dtype", replica["kv_cache_dtype"],
            "--json"]
    if replica.get("gpu_layers") is not None:
        argv += ["--gpu-layers", str(replica["gpu_layers"])]
    estimate = run_json(argv)
    assert estimate["compatible"] is True
    assert estimate["fits"] is True
    for key in ("ttft_ms", "tpot_ms", "memory_gb_per_gpu", "ppl_delta"):
        assert estimate[key] == pytest.approx(replica[key], rel=1e-9, abs=1e-12), key
    assert estimate["cost_per_hour"] == pytest.approx(replica["cost_per_hour"], rel=1e-12)


# ---------------------------------------------------------------- 3. an estimate computed by hand


def test_estimate_llama2_70b_fp16_on_two_h100_by_hand():
    data = run_json(["estimate", "--model", "llama-2-70b", "--method", "fp16", "--gpu", "h100-sxm",
                     "--framework", "vllm", "--gpus", "2", "--batch", "1", "--prompt-tokens", "1000",
                     "--output-tokens", "1000", "--kv-cache-dtype", "fp16", "--json"])
    assert (data["model"], data["method"], data["gpu"], data["framework"]) == (
        "llama-2-70b", "fp16", "h100-sxm", "vllm")
    assert data["gpus"] == 2 and data["batch_size"] == 1
    assert LLAMA2_70B_KV_BYTES_PER_TOKEN == 327_680
    assert data["kv_cache_gb"] == pytest.approx(327_680 * 2000 / 1e9, rel=1e-12)
    assert data["weights_gb"] == pytest.approx(LLAMA2_70B_PARAMS * 2 / 1e9, abs=0.01)
    assert data["weights_gb"] == pytest.approx(137.953, abs=0.01)
    assert data["fits"] is True
    # Per GPU: half the weights and half the KV cache plus per-GPU overhead.
    assert data["memory_gb_per_gpu"] == pytest.approx(
        (data["weights_gb"] + data["kv_cache_gb"]) / 2 + data["overhead_gb"], rel=1e-9)
    assert data["memory_gb_per_gpu"] <= data["memory_capacity_gb_per_gpu"]
    # Two H100 at the catalog price.
    assert data["cost_per_hour"] == pytest.approx(2 * prices()["h100-sxm"], rel=1e-12)
    assert data["ppl_delta"] == 0.0
    terms = data["terms"]
    assert isinstance(terms, list) and terms
    for term in terms:
        assert isinstance(term["plugin"], str) and term["plugin"]
    plugins = {term["plugin"] for term in terms}
    assert {"vllm", "nvidia-gpus"} <= plugins


# ---------------------------------------------------------------- 4. incompatible, and does not fit


def test_estimate_incompatible_exits_1():
    data = run_json(["estimate", "--model", "llama-2-7b", "--method", "fp8", "--gpu", "a100-80gb",
                     "--framework", "tensorrt-llm", "--json"], code=1)
    assert data["compatible"] is False
    assert data["reasons"]
    assert any("fp8" in reason for reason in data["reasons"])
    assert data["ttft_ms"] is None and data["memory_gb_per_gpu"] is None


def test_estimate_that_does_not_fit_exits_0():
    data = run_json(["estimate", "--model", "llama-3.1-405b", "--method", "fp16", "--gpu", "a100-80gb",
                     "--framework", "vllm", "--json"])
    assert data["compatible"] is True
    assert data["fits"] is False
    assert data["memory_gb_per_gpu"] > 80
    assert data["memory_gb_per_gpu"] > data["memory_capacity_gb_per_gpu"]


# ---------------------------------------------------------------- 5. infeasible


INFEASIBLE = ["solve", "--model", "llama-3.1-70b", "--gpu", "h100-sxm", "--concurrency", "1", "--ttft-ms", "1",
              "--json"]


def test_infeasible_solve_json_and_exit_code():
    result = run(INFEASIBLE, code=1)
    data = json.loads(result.stdout)
    assert data["status"] == "infeasible"
    assert data["reasons"]
    assert any("TTFT" in reason for reason in data["reasons"])
    assert result.stderr.startswith("infeasible: ")
    assert len(result.stderr.splitlines()) == 1


def test_infeasible_solve_one_line_on_stderr(capsys):
    main(INFEASIBLE)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("infeasible: ")
    assert "TTFT" in lines[0]
    assert "the SLO is 1 ms" in lines[0]
    assert json.loads(captured.out)["status"] == "infeasible"


# ---------------------------------------------------------------- 6. bad input: one line, exit code 2


@pytest.fixture
def bad_files(tmp_path):
    syntax = tmp_path / "cli_syntax_error.toml"
    syntax.write_text('model = "llama-2-7b"\n[[class]\nname = "x"\n')
    broken_json = tmp_path / "cli_broken_config.json"
    broken_json.write_text('{"num_hidden_layers": 2,')
    no_layers = tmp_path / "cli_no_layers" / "config.json"
    no_layers.parent.mkdir()
    no_layers.write_text(json.dumps({"hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2,
                                     "intermediate_size": 512, "vocab_size": 1000}))
    return {"syntax": syntax, "broken_json": broken_json, "no_layers": no_layers,
            "missing": tmp_path / "cli_does_not_exist.toml"}


# (argv, substrings the error line must contain); {name} is replaced by a path from bad_files.
BAD_INPUTS = {
    "unknown-model": (["estimate", "--model", "llama-9", "--method", "fp16", "--gpu", "h100-sxm",
                       "--framework", "vllm"], ["unknown model 'llama-9'", "closest:", "llama-2-7b"]),
    "unknown-model-solve": (["solve", "--model", "llama-9", "--gpu", "h100-sxm"],
                            ["unknown model 'llama-9'"]),
    "unknown-gpu": (["solve", "--model", "llama-2-7b", "--gpu", "h100-sx", "--no-alternatives"],
                    ["unknown device 'h100-sx'", "closest:", "h100-sxm"]),
    "unknown-gpu-estimate": (["estimate", "--model", "llama-2-7b", "--method", "fp16", "--gpu", "h100-sx",
                              "--framework", "vllm"], ["unknown device 'h100-sx'", "h100-sxm"]),
    "concurrency-zero": (["solve", "--model", "llama-2-7b", "--gpu", "h100-sxm", "--concurrency", "0"],
                         ["concurrency", "greater than 0"]),
    "concurrency-and-rate": (["solve", "--model", "llama-2-7b", "--gpu", "h100-sxm", "--concurrency", "4",
                              "--rate", "1"], ["concurrency or rate_per_s, not both"]),
    "missing-scenario": (["solve", "{missing}"], ["{missing}", "no such file"]),
    "scenario-syntax": (["solve", "{syntax}"], ["{syntax}", "malformed TOML"]),
    "config-bad-json": (["estimate", "--model-config", "{broken_json}", "--method", "fp16", "--gpu", "h100-sxm",
                         "--framework", "vllm"], ["--model-config {broken_json}", "not valid JSON"]),
    "config-bad-json-solve": (["solve", "--model-config", "{broken_json}", "--gpu", "h100-sxm"],
                              ["not valid JSON"]),
    "config-no-layers": (["estimate", "--model-config", "{no_layers}", "--method", "fp16", "--gpu", "h100-sxm",
                          "--framework", "vllm"], ["missing field 'num_hidden_layers'"]),
    "config-no-layers-solve": (["solve", "--model-config", "{no_layers}", "--gpu", "h100-sxm"],
                               ["missing field 'num_hidden_layers'"]),
    "gpu-count-not-int": (["solve", "--model", "llama-2-7b", "--gpu", "h100-sxm", "--gpu-count", "h100=abc"],
                          ["--gpu-count 'h100=abc'", "'abc' is not a"]),
    "gpu-count-no-equals": (["solve", "--model", "llama-2-7b", "--gpu", "h100-sxm", "--gpu-count", "h100"],
                            ["--gpu-count 'h100'", "DEVICE=VALUE"]),
    "negative-price": (["solve", "--model", "llama-2-7b", "--gpu", "h100-sxm", "--price", "h100-sxm=-3",
                        "--no-alternatives"], ["--price h100-sxm=-3", "0.0001 to 1000"]),
    "negative-price-estimate": (["estimate", "--model", "llama-2-7b", "--method", "fp16", "--gpu", "h100-sxm",
                                 "--framework", "vllm", "--price", "h100-sxm=-3"], ["0.0001 to 1000"]),
    "model-and-config": (["estimate", "--model", "llama-2-7b", "--model-config", "{no_layers}", "--method",
                          "fp16", "--gpu", "h100-sxm", "--framework", "vllm"],
                         ["exactly one of --model or --model-config"]),
    "unknown-method": (["estimate", "--model", "llama-2-7b", "--method", "awq-int5", "--gpu", "h100-sxm",
                        "--framework", "vllm"], ["unknown method 'awq-int5'", "awq-int4"]),
}


def fill(items: list[str], files: dict[str, Path]) -> list[str]:
    return [item.format(**{k: str(v) for k, v in files.items()}) for item in items]


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_error_line(case, bad_files, capsys):
    argv, expected = BAD_INPUTS[case]
    argv, expected = fill(argv, bad_files), fill(expected, bad_files)
    main(argv)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    for text in expected:
        assert text in lines[0]
    assert "Traceback" not in captured.err
    assert captured.out == ""


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_via_click(case, bad_files):
    argv, _ = BAD_INPUTS[case]
    result = CliRunner().invoke(cli, fill(argv, bad_files))
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.stderr.startswith("error: ")


def test_usage_error_from_click_is_one_line_and_exit_2(capsys):
    assert main(["list", "gpuz"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ") and "'gpuz' is not one of" in lines[0]


@pytest.mark.parametrize("case", ["unknown-model", "unknown-gpu", "concurrency-zero", "missing-scenario",
                                  "negative-price"])
def test_main_returns_2_for_bad_input(case, bad_files, capsys):
    argv, _ = BAD_INPUTS[case]
    assert main(fill(argv, bad_files)) == 2


def test_main_returns_1_for_infeasible(capsys):
    assert main(INFEASIBLE) == 1


def test_main_returns_1_for_incompatible_estimate(capsys):
    assert main(["estimate", "--model", "llama-2-7b", "--method", "fp8", "--gpu", "a100-80gb",
                 "--framework", "tensorrt-llm", "--json"]) == 1


def test_console_script_exits_2_for_bad_input():
    script = Path(sys.executable).with_name("quantplan")
    if not script.exists():
        pytest.skip("console script not installed next to the interpreter")
    done = subprocess.run([str(script), "estimate", "--model", "llama-9", "--method", "fp16", "--gpu", "h100-sxm",
                           "--framework", "vllm"], capture_output=True, text=True, timeout=120)
    assert done.stderr.startswith("error: unknown model 'llama-9'")
    assert done.returncode == 2


# ---------------------------------------------------------------- 7. memory --json


def memory_rows(argv: list[str] = ()) -> dict[tuple[str, str], dict]:
    rows = run_json(["memory", *argv, "--json"])
    return {(row["model"], row["method"]): row for row in rows}


def test_memory_table_llama2_70b_by_hand():
    rows = memory_rows()
    row = rows[("llama-2-70b", "fp16")]
    assert row["kv_cache_gb"] == pytest.approx(327_680 * 8 * 4096 / 1e9, rel=1e-12)  # batch 8 x 4096 tokens
    assert row["weights_gb"] == pytest.approx(LLAMA2_70B_PARAMS * 2 / 1e9, rel=1e-9)
    assert row["fits"]["a100-80gb"] is False
    assert row["fits"]["rtx4090"] is False
    assert row["total_gb"] == pytest.approx(row["weights_gb"] + row["kv_cache_gb"] + row["overhead_gb"],
                                            rel=1e-9)
    # The default table: the seed blog's models x fp16, int8-w8a8, awq-int4 on a100-80gb and rtx4090.
    assert {method for _, method in rows} == {"fp16", "int8-w8a8", "awq-int4"}
    assert set(row["fits"]) == {"a100-80gb", "rtx4090"}


def test_memory_table_llama2_7b_awq_on_rtx4090():
    # At the default batch 8 x 4096 tokens the fp16 KV cache alone is 8 * 4096 * 524,288 B = 17.18 GB;
    # with the ~3.9 GB of AWQ weights and ~1.6 GB overhead that exceeds the 24 GB x 0.9 vLLM hands out.
    default = memory_rows(["--model", "llama-2-7b", "--method", "awq-int4", "--gpu", "rtx4090"])
    row = default[("llama-2-7b", "awq-int4")]
    assert row["kv_cache_gb"] == pytest.approx(32 * 32 * 128 * 2 * 2 * 8 * 4096 / 1e9, rel=1e-12)
    assert row["total_gb"] > 24 * 0.9
    assert row["fits"]["rtx4090"] is False
    # One sequence of 4096 tokens fits easily.
    single = memory_rows(["--model", "llama-2-7b", "--method", "awq-int4", "--gpu", "rtx4090", "--batch", "1"])
    row = single[("llama-2-7b", "awq-int4")]
    assert row["kv_cache_gb"] == pytest.approx(32 * 32 * 128 * 2 * 2 * 4096 / 1e9, rel=1e-12)
    assert row["fits"]["rtx4090"] is True
    assert row["weights_gb"] < 6.738415616 * 2 / 3  # well under a third of fp16's 2 bytes per parameter


# ---------------------------------------------------------------- 8. list, and aliases


def test_list_models_includes_moe_with_fewer_active_params():
    rows = {row["id"]: row for row in run_json(["list", "models", "--json"])}
    qwen = rows["qwen3-30b-a3b"]
    assert qwen["active_params_b"] < qwen["params_b"]
    assert qwen["params_b"] == pytest.approx(30.5, abs=0.1)
    assert qwen["active_params_b"] == pytest.approx(3.3, abs=0.1)
    dense = rows["llama-2-70b"]
    assert dense["params_b"] == pytest.approx(LLAMA2_70B_PARAMS / 1e9, rel=1e-12)
    assert dense["active_params_b"] == pytest.approx(dense["params_b"], rel=1e-12)


def test_list_methods():
    ids = {row["id"] for row in run_json(["list", "methods", "--json"])}
    expected = {"fp16", "bf16", "fp8", "int8-w8a8", "awq-int4", "gptq-int4", "gptq-int4-actorder", "gguf-q8_0",
                "gguf-q6_k", "gguf-q5_k_m", "gguf-q4_k_m", "gguf-q4_0", "gguf-q3_k_m", "gguf-q2_k", "nvfp4"}
    assert expected <= ids, expected - ids


def test_list_frameworks():
    ids = {row["id"] for row in run_json(["list", "frameworks", "--json"])}
    assert {"vllm", "tensorrt-llm", "sglang", "llama.cpp", "exllamav2"} <= ids


def test_list_gpus_matches_the_catalog():
    catalog = {row["id"]: row for row in tomllib.loads((CATALOGS / "gpus.toml").read_text())["gpu"]}
    rows = {row["id"]: row for row in run_json(["list", "gpus", "--json"])}
    assert set(catalog) <= set(rows)
    assert rows["h100-sxm"]["memory_gb"] == catalog["h100-sxm"]["memory_gb"]
    assert rows["a100-80gb"]["price"]["usd_per_hour"] == prices()["a100-80gb"]


def test_aliases_resolve_case_insensitively():
    data = run_json(["estimate", "--model", "Llama-2 7B", "--gpu", "H100", "--method", "AWQ INT4 g128",
                     "--framework", "vLLM", "--json"])
    assert data["model"] == "llama-2-7b"
    assert data["gpu"] == "h100-sxm"
    assert data["method"] == "awq-int4"
    assert data["framework"] == "vllm"
    assert data["compatible"] is True


# ---------------------------------------------------------------- 9. --model-config


TINY = {"_name_or_path": "tiny-gqa", "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 512, "vocab_size": 1000, "max_position_embeddings": 2048,
        "tie_word_embeddings": False}


def test_estimate_with_model_config(tmp_path):
    config = tmp_path / "cli_tiny" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps(TINY))
    batch, prompt, output = 4, 100, 28
    data = run_json(["estimate", "--model-config", str(config), "--method", "fp16", "--gpu", "a100-80gb",
                     "--framework", "vllm", "--batch", str(batch), "--prompt-tokens", str(prompt),
                     "--output-tokens", str(output), "--json"])
    assert data["model"] == "tiny-gqa"
    assert data["compatible"] is True and data["fits"] is True
    layers, kv_heads, head_dim = 2, 2, 256 // 4
    kv_bytes_per_token = 2 * layers * kv_heads * head_dim * 2  # K and V, fp16
    assert kv_bytes_per_token == 1024
    assert data["kv_cache_gb"] == pytest.approx(kv_bytes_per_token * batch * (prompt + output) / 1e9, rel=1e-12)
    # Parameters by hand: embeddings and (untied) lm_head, and per layer q, k, v, o, gate/up/down, 2 norms.
    per_layer = 256 * 256 + 2 * 256 * 128 + 256 * 256 + 3 * 256 * 512 + 2 * 256
    params = 2 * 1000 * 256 + 2 * per_layer + 256
    assert data["weights_gb"] == pytest.approx(params * 2 / 1e9, rel=1e-9)
    assert data["ttft_ms"] > 0 and data["tpot_ms"] > 0


def test_solve_with_model_config(tmp_path):
    config = tmp_path / "cli_tiny_solve" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps(TINY))
    plan = run_json(["solve", "--model-config", str(config), "--gpu", "l4", "--method", "fp16",
                     "--concurrency", "1", "--no-alternatives", "--json"])
    assert plan["status"] == "optimal"
    assert plan["model"] == "tiny-gqa"
    assert plan["replicas"][0]["gpu"] == "l4"
    assert plan["cost_per_hour"] == pytest.approx(prices()["l4"] * plan["replicas"][0]["gpus_per_replica"],
                                                  rel=1e-12)


def test_solve_writes_a_readable_lp_file(tmp_path):
    """The program carries domain names: replicas[<device>/<method>/...] and serve[<class>]."""
    lp = tmp_path / "plan.lp"
    result = CliRunner().invoke(cli, ["solve", "examples/chat-7b-a100.toml", "--write-lp", str(lp), "--json"])
    assert result.exit_code == 0, result.output
    text = lp.read_text()
    chosen = json.loads(result.output)["replicas"][0]
    assert f"replicas_{chosen['gpu'].replace('-', '_')}_{chosen['method'].replace('-', '_')}" in text
    assert "serve_chat" in text and "Minimize" in text


def test_rate_classes_round_trip_through_estimate():
    """A rate class solved alone (the chat class of examples/mixed-fleet-two-classes.toml): each group's
    figures equal `estimate --rate <load per replica> --max-num-seqs <batch>` for that configuration."""
    runner = CliRunner()
    solved = runner.invoke(cli, ["solve", "--model", "llama-3.1-8b", "--gpu", "l40s", "--gpu", "l4",
                                 "--prompt-tokens", "256", "--output-tokens", "256", "--rate", "4",
                                 "--ttft-ms", "300", "--tpot-ms", "25", "--no-alternatives", "--json"])
    assert solved.exit_code == 0, solved.output
    plan = json.loads(solved.output)
    checked = 0
    for group in plan["replicas"]:
        for figures in group["classes"]:
            assert figures["statistic"] == "p90" and not figures["shared_with"]
            result = runner.invoke(cli, [
                "estimate", "--model", plan["model"], "--method", group["method"], "--gpu", group["gpu"],
                "--framework", group["framework"], "--gpus", str(group["gpus_per_replica"]),
                "--max-num-seqs", str(group["batch_size"]), "--prompt-tokens", "256", "--output-tokens", "256",
                "--kv-cache-dtype", group["kv_cache_dtype"], "--rate", repr(figures["load_per_replica"]), "--json"])
            assert result.exit_code == 0, result.output
            estimated = json.loads(result.output)
            assert estimated["ttft_ms"] == pytest.approx(figures["ttft_ms"], rel=1e-9)
            assert estimated["tpot_ms"] == pytest.approx(figures["tpot_ms"], rel=1e-9)
            assert estimated["ttft_p90_ms"] == pytest.approx(figures["ttft_p90_ms"], rel=1e-9)
            assert estimated["ttft_p90_ms"] <= 300 and estimated["tpot_p90_ms"] <= 25
            checked += 1
    assert checked >= 1
