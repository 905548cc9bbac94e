"""quantplan launch: engine commands, recipes, manifests and benchmarks from a plan.

Expected values are worked out by hand from the plan and the catalogs (each test's docstring says
how); every flag the launcher writes is checked against catalogs/engine_flags.toml.
"""

from __future__ import annotations

import json
import shlex

import pytest
import yaml
from click.testing import CliRunner

from quantplan.cli import cli
from quantplan.solver import manifests
from quantplan.solver.api import solve
from quantplan.solver.launch import launch, programs
from quantplan.solver.launch_text import as_json
from quantplan.solver.registry import load_world
from quantplan.solver.scenario import load_scenario, make_scenario

EXAMPLES = "examples"


def _plan(scenario) -> dict:
    return json.loads(solve(scenario).model_dump_json())


def _restricted(model, gpu, framework, method, **traffic) -> dict:
    traffic = {"name": "t", "prompt_tokens": 512, "output_tokens": 128, "concurrency": 8, "ttft_ms": 5000,
               "tpot_ms": 200, **traffic}
    return _plan(make_scenario(dict(model=model, gpus=[gpu], frameworks=[framework], methods=[method],
                                    alternatives=False, classes=[traffic])))


@pytest.fixture(scope="module")
def world():
    return load_world(())


@pytest.fixture(scope="module")
def plans():
    """Plans covering every engine: the examples, plus one plan per engine and method family."""
    found = {name: _plan(load_scenario(f"{EXAMPLES}/{name}.toml").model_copy(update={"alternatives": False}))
             for name in ("chat-7b-a100", "blog-2-70b-batch-2xh100", "blog-3-7b-m2max-laptop",
                          "mixed-fleet-two-classes")}
    found["chat-vllm"] = _plan(load_scenario(f"{EXAMPLES}/chat-7b-a100.toml").model_copy(
        update={"alternatives": False, "frameworks": ("vllm",)}))
    found["chat-sglang"] = _plan(load_scenario(f"{EXAMPLES}/chat-7b-a100.toml").model_copy(
        update={"alternatives": False, "frameworks": ("sglang",)}))
    # blog example 2 in FP8: SGLang on 2x H100 (the example's own plan is one H100 of INT4 on vLLM)
    found["blog-2-fp8"] = _plan(load_scenario(f"{EXAMPLES}/blog-2-70b-batch-2xh100.toml").model_copy(
        update={"alternatives": False, "methods": ("fp8",)}))
    found["vllm-awq"] = _restricted("llama-3.1-8b", "h100-sxm", "vllm", "awq-int4")
    found["vllm-qwen-awq"] = _restricted("qwen3-8b", "h100-sxm", "vllm", "awq-int4")
    found["vllm-actorder"] = _restricted("llama-3.1-8b", "a100-80gb", "vllm", "gptq-int4-actorder")
    found["sglang-w8a8"] = _restricted("llama-3.1-8b", "a100-80gb", "sglang", "int8-w8a8")
    found["trtllm-nvfp4"] = _restricted("llama-3.1-8b", "b200", "tensorrt-llm", "nvfp4")
    found["trtllm-w8a8"] = _restricted("llama-3.1-8b", "h100-sxm", "tensorrt-llm", "int8-w8a8")
    found["exllamav2"] = _restricted("llama-2-7b", "rtx4090", "exllamav2", "gptq-int4")
    found["llama-cpp-gpu"] = _restricted("llama-3.1-8b", "rtx4090", "llama.cpp", "gguf-q5_k_m")
    found["llama-cpp-q8"] = _restricted("llama-3.1-8b", "rtx4090", "llama.cpp", "gguf-q8_0")
    found["laptop-q4km"] = _restricted("llama-2-7b", "m2-max", "llama.cpp", "gguf-q4_k_m", concurrency=1)
    return found


@pytest.fixture(scope="module")
def launched(plans, world):
    return {name: launch(plan, world) for name, plan in plans.items()}


def test_vllm_command_for_the_chat_example(launched):
    """chat-7b-a100 on vLLM plans 1 x (1x A100-80GB, BF16, vLLM, batch 8) for 128 + 256 tokens: context 384;
    running limit 8; memory share 1 - 0.10 (vLLM's memory_reserve_fraction); 2048 batched tokens (vLLM's
    default on an A100, which its >= 70 GiB tier of 8192 leaves out)."""
    [r] = launched["chat-vllm"]
    assert r.framework == "vllm" and r.count == 1 and r.checkpoint.kind == "base"
    assert r.command == ("vllm serve meta-llama/Llama-2-7b-hf --host 0.0.0.0 --port 8000 --dtype bfloat16 "
                         "--tensor-parallel-size 1 --max-num-seqs 8 --kv-cache-dtype auto --max-model-len 384 "
                         "--gpu-memory-utilization 0.9 --max-num-batched-tokens 2048")


def test_sglang_command_for_the_chat_example(launched):
    """chat-7b-a100 on SGLang plans 1 x (1x A100-80GB, BF16, SGLang, batch 8) for 128 + 256 tokens (the example's
    own plan is TensorRT-LLM's at the same cost since trtllm-serve's overhead was fitted): context 384; running
    limit 8; memory share 1 - 0.12 (SGLang's memory_reserve_fraction); chunked prefill 8192 (SGLang's tier for
    80 GB >= 36.7 GB)."""
    [r] = launched["chat-sglang"]
    assert r.framework == "sglang" and r.count == 1 and r.checkpoint.kind == "base"
    assert r.command == ("python -m sglang.launch_server --model-path meta-llama/Llama-2-7b-hf --host 0.0.0.0 "
                         "--port 30000 --dtype bfloat16 --tp-size 1 --max-running-requests 8 --kv-cache-dtype auto "
                         "--context-length 384 --mem-fraction-static 0.88 --chunked-prefill-size 8192")


def test_benchmark_runs_the_class_at_the_planned_load(launched):
    """8 clients x 10 requests per client = 80 prompts at concurrency 8; the SLOs as goodput: TTFT
    150 ms, TPOT 1000 / 40 tok/s = 25 ms."""
    [r] = launched["chat-7b-a100"]
    [b] = r.benchmarks
    args = shlex.split(b.command)
    value = lambda flag: args[args.index(flag) + 1]  # noqa: E731
    assert (value("--random-input-len"), value("--random-output-len")) == ("128", "256")
    assert (value("--num-prompts"), value("--max-concurrency")) == ("80", "8")
    assert args[args.index("--goodput") + 1:args.index("--goodput") + 3] == ["ttft:150", "tpot:25"]
    assert b.slo["ttft_ms"] == 150 and b.slo["tpot_ms"] == 25 and b.slo["statistic"] == "mean"
    aiperf = shlex.split(b.aiperf_command)
    assert aiperf[aiperf.index("--concurrency") + 1] == "8" and aiperf[aiperf.index("--request-count") + 1] == "80"


def test_rate_class_benchmark_uses_the_rate_per_replica(launched, plans):
    """A rate class is benchmarked at the rate one replica carries (share x rate / replicas) over
    five minutes of arrivals (at least 100 prompts)."""
    for r, group in zip(launched["mixed-fleet-two-classes"], plans["mixed-fleet-two-classes"]["replicas"]):
        for b, figures in zip(r.benchmarks, group["classes"]):
            args = shlex.split(b.command)
            rate = figures["load_per_replica"]
            assert float(args[args.index("--request-rate") + 1]) == pytest.approx(rate, rel=1e-3)
            assert int(args[args.index("--num-prompts") + 1]) == max(100, -(-rate * 300 // 1))


def _flags(args: list[str]) -> list[tuple[str, str | None]]:
    pairs = []
    for index, token in enumerate(args):
        if token.startswith("-") and not token.lstrip("-").replace(".", "").isdigit():
            following = args[index + 1] if index + 1 < len(args) else None
            pairs.append((token, following if following is not None and not following.startswith("--") else None))
    return pairs


def _check_documented(program, args: list[str]) -> None:
    for flag, value in _flags(args):
        assert flag in program.flags, f"{program.id}: {flag} is not in its documented flags"
        choices = program.values.get(flag.lstrip("-"))
        if choices and value is not None:
            assert value in choices, f"{program.id}: {flag} {value} is not a documented choice"


def test_every_flag_is_documented(launched):
    catalog = programs()
    engines_seen = set()
    for name, replicas in launched.items():
        for r in replicas:
            engines_seen.add(r.framework)
            program = catalog[r.framework]
            if r.config_file:  # TabbyAPI: config keys instead of flags
                keys = yaml.safe_load(r.config_file)
                for section, values in keys.items():
                    for key in values:
                        assert f"{section}.{key}" in program.flags
                assert keys["model"]["cache_mode"] in program.values["cache_mode"]
            else:
                assert r.command.startswith(program.command + " ")
                _check_documented(program, r.args)
            for step in r.checkpoint.steps:
                if step.startswith("trtllm-build "):
                    _check_documented(catalog["trtllm-build"], shlex.split(step)[1:])
            for b in r.benchmarks:
                _check_documented(catalog["vllm-bench"], shlex.split(b.command)[3:])
                _check_documented(catalog["aiperf"], shlex.split(b.aiperf_command)[2:])
    assert engines_seen == {"vllm", "sglang", "tensorrt-llm", "llama.cpp", "exllamav2"}


def test_checkpoints_and_recipes_follow_the_seed_rules(launched):
    """W8A8 per-token activations, no act-order for Marlin, domain calibration data, an imatrix step for
    k-quants, public checkpoints where the catalog has one."""
    [w8a8] = launched["sglang-w8a8"]
    assert w8a8.checkpoint.tool == "llm-compressor" and "scheme: W8A8" in w8a8.checkpoint.recipe
    assert "strategy: tensor" not in w8a8.checkpoint.recipe and "calibration.jsonl" in w8a8.checkpoint.steps[0]
    assert "--quantization compressed-tensors" in w8a8.command
    [awq] = launched["vllm-awq"]
    assert awq.checkpoint.tool == "AutoAWQ" and "'q_group_size': 128" in awq.checkpoint.recipe
    assert "--quantization awq_marlin" in awq.command
    [qwen] = launched["vllm-qwen-awq"]
    assert qwen.checkpoint.kind == "public" and qwen.checkpoint.path == "Qwen/Qwen3-8B-AWQ"
    [actorder] = launched["vllm-actorder"]
    assert "desc_act=True" in actorder.checkpoint.recipe and "--quantization gptq " in actorder.command + " "
    [gptq] = launched["exllamav2"]
    assert "desc_act=False" in gptq.checkpoint.recipe
    [gguf] = launched["llama-cpp-gpu"]
    assert [s.split()[0] for s in gguf.checkpoint.steps] == ["python", "llama-imatrix", "llama-quantize"]
    assert gguf.checkpoint.steps[-1].endswith("Q5_K_M") and "-m /models/Llama-3.1-8B-Q5_K_M.gguf" in gguf.command
    [q8] = launched["llama-cpp-q8"]
    assert [s.split()[0] for s in q8.checkpoint.steps] == ["python", "llama-quantize"]
    [laptop] = launched["laptop-q4km"]  # TheBloke's Q4_K_M file is in catalogs/checkpoints.toml
    assert laptop.checkpoint.path == "/models/llama-2-7b.Q4_K_M.gguf"
    assert laptop.checkpoint.steps == ["huggingface-cli download TheBloke/Llama-2-7B-GGUF llama-2-7b.Q4_K_M.gguf "
                                       "--local-dir /models"]
    [nvfp4] = launched["trtllm-nvfp4"]
    assert nvfp4.checkpoint.tool == "NVIDIA ModelOpt" and "NVFP4_DEFAULT_CFG" in nvfp4.checkpoint.recipe


def test_int8_smoothquant_on_tensorrt_llm_builds_an_engine(launched, plans):
    """INT8 SmoothQuant runs on TensorRT engines: quantize (int8_sq), trtllm-build at the plan's batch,
    context 512 + 128 = 640 and the token budget, then trtllm-serve the engine with the base tokenizer."""
    [r] = launched["trtllm-w8a8"]
    group = plans["trtllm-w8a8"]["replicas"][0]
    quantize, build = r.checkpoint.steps
    assert "--qformat int8_sq" in quantize and "calibration.jsonl" in quantize
    build_args = shlex.split(build)
    assert build_args[build_args.index("--max_seq_len") + 1] == "640"
    assert build_args[build_args.index("--max_batch_size") + 1] == str(group["batch_size"])
    assert r.args[0] == r.checkpoint.path and "--backend" not in r.args
    assert r.args[r.args.index("--tokenizer") + 1] == "meta-llama/Llama-3.1-8B"


def test_llama_cpp_slots_share_the_context(launched, plans):
    """llama-server's -c is the context of all slots together: -np (the plan's batch) x (prompt + output)."""
    [r] = launched["llama-cpp-gpu"]
    group = plans["llama-cpp-gpu"]["replicas"][0]
    args = r.args
    assert args[args.index("-np") + 1] == str(group["batch_size"])
    assert args[args.index("-c") + 1] == str(group["batch_size"] * (512 + 128))


def test_kubernetes_manifest_has_the_required_fields(launched):
    for name, replicas in launched.items():
        served = [r for r in replicas if r.device_kind != "apple"]
        documents = [d for d in yaml.safe_load_all(manifests.kubernetes(replicas)) if d]
        deployments = [d for d in documents if d["kind"] == "Deployment"]
        services = [d for d in documents if d["kind"] == "Service"]
        assert len(deployments) == len(services) == len(served), name
        for document in documents:
            assert document["apiVersion"] and document["metadata"]["name"]
        for r, deployment, service in zip(served, deployments, services):
            spec = deployment["spec"]
            assert deployment["apiVersion"] == "apps/v1" and spec["replicas"] == r.count
            assert spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
            [container] = spec["template"]["spec"]["containers"]
            assert container["image"] == r.image and container["args"] == r.args
            assert container["readinessProbe"]["periodSeconds"] == 10
            assert {e["name"] for e in container["env"]} == {"HF_HOME", "HF_TOKEN"}
            if r.device_kind == "gpu":
                assert container["resources"]["limits"]["nvidia.com/gpu"] == str(r.gpus_per_replica)
            assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
            assert service["spec"]["ports"][0]["targetPort"] == r.port


def test_compose_file_reserves_the_gpus(launched):
    [r] = launched["blog-2-fp8"]
    document = yaml.safe_load(manifests.compose([r]))
    service = document["services"][r.name]
    assert service["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 2
    assert service["entrypoint"] == ["python3", "-m", "sglang.launch_server"] and service["command"] == r.args
    [one] = launched["blog-2-70b-batch-2xh100"]  # one H100 of INT4 on vLLM
    service = yaml.safe_load(manifests.compose([one]))["services"][one.name]
    assert service["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 1


def test_yaml_writer_quotes_what_yaml_would_misread():
    text = manifests.to_yaml({"a": ["yes", "1", "on: x", "- y", 'quote"d'], "b": {"c": True, "d": 2.5}, "e": []})
    assert yaml.safe_load(text) == {"a": ["yes", "1", "on: x", "- y", 'quote"d'], "b": {"c": True, "d": 2.5},
                                    "e": []}


def test_launch_cli_json(plans, tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plans["chat-7b-a100"]))
    result = CliRunner().invoke(cli, ["launch", str(path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    [group] = data["replicas"]
    assert {"framework", "gpu", "count", "command", "checkpoint", "benchmark_command"} <= set(group)
    assert group["gpu"] == "a100-80gb" and group["count"] == 1
    assert yaml.safe_load(data["compose"])["services"] and "kind: \"Deployment\"" in data["kubernetes"]


@pytest.mark.parametrize("content, message", [
    (None, "no such plan file"),
    ("{not json", "not JSON"),
    ('{"status": "optimal"}', "no 'replicas'"),
    ('{"status": "infeasible", "replicas": []}', "no replicas"),
    ('{"model": "llama-2-7b", "replicas": [{"gpu": "a100-80gb"}]}', "no 'traffic'"),
    ('{"model": "llama-2-7b", "replicas": [{"gpu": "a100-80gb"}], "traffic": [{"name": "c"}]}',
     "malformed replica group"),
])
def test_bad_plans_end_in_one_line_and_exit_2(tmp_path, content, message):
    path = tmp_path / "plan.json"
    if content is not None:
        path.write_text(content)
    result = CliRunner().invoke(cli, ["launch", str(path)])
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_solve_emit_launch_appends_the_launch():
    result = CliRunner().invoke(cli, ["solve", f"{EXAMPLES}/chat-7b-a100.toml", "--no-alternatives", "--emit",
                                      "launch", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["replicas"][0]["framework"] == data["launch"]["replicas"][0]["framework"] == "tensorrt-llm"


TINY = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2, "hidden_size": 256,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 512, "vocab_size": 1000,
        "max_position_embeddings": 2048, "tie_word_embeddings": False}


def test_launch_a_plan_for_a_model_outside_the_catalog(tmp_path):
    """A plan solved with --model-config launches with the same config.json: the base checkpoint is the
    config's _name_or_path, the context the class's 100 + 28 tokens; another model's config is refused."""
    config = tmp_path / "tiny" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({**TINY, "_name_or_path": "example/tiny-gqa"}))
    runner = CliRunner()
    solved = runner.invoke(cli, ["solve", "--model-config", str(config), "--gpu", "l4", "--method", "fp16",
                                 "--framework", "vllm", "--concurrency", "1", "--prompt-tokens", "100",
                                 "--output-tokens", "28", "--no-alternatives", "--json"])
    assert solved.exit_code == 0, solved.output
    plan = tmp_path / "plan.json"
    plan.write_text(solved.output)
    result = runner.invoke(cli, ["launch", str(plan), "--model-config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    command = json.loads(result.output)["replicas"][0]["command"]
    assert command.startswith("vllm serve example/tiny-gqa ") and "--max-model-len 128" in command
    other = tmp_path / "other" / "config.json"
    other.parent.mkdir()
    other.write_text(json.dumps({**TINY, "_name_or_path": "example/other"}))
    refused = runner.invoke(cli, ["launch", str(plan), "--model-config", str(other)])
    assert refused.exit_code == 2 and "the plan is for" in refused.stderr


def test_tensorrt_llm_kv_fraction_reproduces_the_planned_memory():
    """TensorRT-LLM's fraction is of the memory free after weights and runtime: 2 GPUs of 80 GB, 18 GB of
    weights (9 per GPU) + 2 GB runtime per GPU, 72 GB per GPU planned: (72 - 11) / (80 - 11) = 0.884."""
    from types import SimpleNamespace

    from quantplan.solver.launch import kv_share_of_free_memory

    guess = SimpleNamespace(weights_gb=18.0, overhead_gb=2.0, memory_capacity_gb_per_gpu=72.0)
    assert kv_share_of_free_memory(guess, 80.0, 2) == 0.88


def test_catalog_rows_name_known_ids_and_carry_sources(world):
    from quantplan.solver.recipes import public_checkpoints

    for row in public_checkpoints():
        assert world.models.get(row.model).id == row.model and world.methods.get(row.method).id == row.method
        assert len(row.source) > 30 and "/" in row.repo
    for program in programs().values():
        assert len(program.source) > 30 and program.version and program.flags
        for flag in program.values:
            assert any(f.lstrip("-").replace("_", "-") == flag.replace("_", "-") or f.endswith("." + flag)
                       for f in program.flags), f"{program.id}: values for an unlisted flag {flag}"
