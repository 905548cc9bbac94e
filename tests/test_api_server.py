"""The API server in front of an engine: its per-request TTFT overhead belongs to the server a
benchmark ran (NIM's is not trtllm-serve's), carried by the row, with the engine's own as default."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from quantplan.solver import fit, serving, validate
from quantplan.solver.errors import QuantplanError
from quantplan.solver.scenario import TrafficClass


def sched(overhead_s=0.1295):
    return serving.Scheduling("mixed", 8192, 2048, False, True, request_overhead_s=overhead_s)


def test_a_named_server_replaces_the_engines_overhead_and_none_keeps_it():
    engine = SimpleNamespace(id="tensorrt-llm", server_overhead_ms={"nim": 12.5})
    own = sched()
    assert serving.behind_server(own, engine, "") is own
    assert serving.behind_server(own, engine, "nim").request_overhead_s == pytest.approx(0.0125)
    with pytest.raises(QuantplanError, match="API server 'dynamo'.*known: nim"):
        serving.behind_server(own, engine, "dynamo")


def test_the_overhead_is_added_once_to_every_ttft_figure():
    """Closed loop at c = 1: TTFT behind a server with 12.5 ms is the bare TTFT + 12.5 ms, mean and
    percentiles alike; TPOT does not move."""
    world = validate.validation_world()
    row = next(r for r in validate.load_rows() if r.id == "p60")  # Llama-70B FP8 on 2 x H100
    traffic = TrafficClass(prompt_tokens=5000, output_tokens=500, concurrency=1)
    times = serving.timing(world, validate.Shared(world).placed(validate._config(world, row), traffic), traffic)
    bare = serving.Timing(times.steps, replace(times.scheduling, request_overhead_s=0.0))
    served = serving.Timing(times.steps, serving.behind_server(bare.scheduling, SimpleNamespace(
        id="tensorrt-llm", server_overhead_ms={"nim": 12.5}), "nim"))
    a, b = serving.closed_loop(bare, 5000, 500, 1.0), serving.closed_loop(served, 5000, 500, 1.0)
    assert b.ttft - a.ttft == pytest.approx(0.0125)
    assert all(b.ttft_percentiles[p] - a.ttft_percentiles[p] == pytest.approx(0.0125) for p in (50, 90, 99))
    assert b.tpot == pytest.approx(a.tpot)


def test_nim_rows_are_predicted_behind_nims_server():
    """The NIM rows name their server: 27 fitted (NIM 1.8.0, 2 x H100) and 103 held out (96 of an older NIM on
    A100, never fitted; 7 of NIM 1.0.0 on an A10G, philschmid/llmperf, kept and not scored); a NIM TTFT row differs from the same row behind trtllm's own server by exactly the two
    catalog overheads' difference."""
    rows = validate.load_rows()
    nim = [r for r in rows if r.api_server]
    assert {r.api_server for r in nim} == {"nim"} and all(r.engine_version.startswith("NIM") for r in nim)
    fitted = [r for r in nim if not r.held_out]
    assert len(fitted) == 27 and {r.gpu for r in fitted} == {"h100-sxm"}
    held = [r for r in nim if r.held_out]
    assert len(held) == 103 and {r.gpu for r in held} == {"a100-80gb", "a10g"}
    assert all(r.excluded for r in held if r.gpu == "a10g")
    assert not {r.id for r in held} & {r.id for r in validate.load_rows(held_out=False)}
    world = validate.validation_world()
    trtllm = world.frameworks.get("tensorrt-llm")
    row = next(r for r in nim if r.id == "p60")  # 5000 in / 500 out, concurrency 1, TTFT 406.77 ms
    behind_nim = validate.predict(world, row)
    behind_own = validate.predict(world, row.model_copy(update={"api_server": ""}))
    assert behind_own - behind_nim == pytest.approx(trtllm.request_overhead_ms - trtllm.server_overhead_ms["nim"])


def test_an_unknown_server_on_a_row_is_reported_not_guessed():
    row = next(r for r in validate.load_rows() if r.id == "p60").model_copy(update={"api_server": "triton"})
    found = validate.run(rows=[row])[0]
    assert found.predicted is None and "API server 'triton'" in found.reason


def test_the_fit_gives_each_server_its_own_overhead():
    """sglang's request_overhead_ms moves the rows behind its own server only (SGLang's README rate runs),
    server_overhead_ms.dynamo the AIConfigurator rows only (they ran behind Dynamo's frontend), and
    tensorrt-llm's server_overhead_ms.nim the NIM rows only (solver/fit.py's effects), all in ms."""
    world = validate.validation_world()
    rows = {r.id: r for r in validate.load_rows()}
    nim_probe = validate.speed_probes(world, rows["p60"])[0][0]
    trt_dynamo = validate.speed_probes(world, rows["a773"])[0][0]  # AIConfigurator, Llama-3.1-8B, c = 8
    sglang_own = validate.speed_probes(world, rows["p1"])[0][0]  # sglang.launch_server, bench_serving
    sglang_dynamo = validate.speed_probes(world, rows["a1"])[0][0]  # AIConfigurator, Qwen3-32B, c = 16
    named = {p.name: p for p in fit.DEFAULT_PARAMETERS}
    own = named["framework:sglang.request_overhead_ms"]
    dynamo = named["framework:sglang.server_overhead_ms.dynamo"]
    nim = named["framework:tensorrt-llm.server_overhead_ms.nim"]
    assert own.effect(sglang_own) == ("request", 1e-3) and own.effect(sglang_dynamo) is None
    assert dynamo.effect(sglang_dynamo) == ("request", 1e-3) and dynamo.effect(sglang_own) is None
    assert nim.effect(nim_probe) == ("request", 1e-3) and nim.effect(trt_dynamo) is None
    assert named["framework:tensorrt-llm.server_overhead_ms.dynamo"].effect(trt_dynamo) == ("request", 1e-3)
    trtllm_own = validate.speed_probes(world, rows["p641"])[0][0]  # trtllm-serve, GPUStack's Qwen3-8B H100 run
    own_trt = named["framework:tensorrt-llm.request_overhead_ms"]  # fitted since these rows joined
    assert own_trt.effect(trtllm_own) == ("request", 1e-3) and own_trt.effect(trt_dynamo) is None
    assert own_trt.effect(nim_probe) is None
    engines = world.frameworks
    assert nim_probe.scheduling.request_overhead_s == pytest.approx(
        engines.get("tensorrt-llm").server_overhead_ms["nim"] / 1e3)
    assert sglang_dynamo.scheduling.request_overhead_s == pytest.approx(
        engines.get("sglang").server_overhead_ms["dynamo"] / 1e3)
    assert sglang_own.scheduling.request_overhead_s == pytest.approx(engines.get("sglang").request_overhead_ms / 1e3)


def test_aiconfigurator_rows_ran_behind_dynamo():
    """AIConfigurator's run.sh templates put Dynamo's frontend in front of every engine: its rows say so;
    a row's own api_server, or none, otherwise."""
    rows = validate.load_rows()
    assert {validate.api_server_of(r) for r in rows if r.source.startswith(validate.AICONFIGURATOR)} == {"dynamo"}
    assert {validate.api_server_of(r) for r in rows if "nim/benchmarking" in r.source} == {"nim"}
    assert {validate.api_server_of(r) for r in rows if r.source.startswith("datacrunch-research")} == {""}


def test_estimate_behind_nim_drops_trtllms_own_overhead():
    """Llama-70B FP8 on 2 x H100 behind NIM: TTFT is trtllm's own server's overhead minus NIM's (129.5 - 0 ms
    in frameworks.toml today) below the same estimate behind trtllm's own server; TPOT does not move; JSON
    says which server and overhead."""
    from quantplan.solver.api import estimate
    from quantplan.solver.registry import load_world

    trtllm = load_world().frameworks.get("tensorrt-llm")
    own_ms, nim_ms = trtllm.request_overhead_ms, trtllm.server_overhead_ms["nim"]
    args = dict(gpus=2, prompt_tokens=500, output_tokens=2000)
    own = estimate("llama-3.1-70b", "fp8", "h100-sxm", "tensorrt-llm", **args)
    nim = estimate("llama-3.1-70b", "fp8", "h100-sxm", "tensorrt-llm", api_server="nim", **args)
    assert own.ttft_ms - nim.ttft_ms == pytest.approx(own_ms - nim_ms)
    assert own.tpot_ms == pytest.approx(nim.tpot_ms)
    assert (nim.scheduling["api_server"], nim.scheduling["request_overhead_ms"]) == ("nim", pytest.approx(nim_ms))
    assert (own.scheduling["api_server"], own.scheduling["request_overhead_ms"]) == (None, pytest.approx(own_ms))


def test_cli_unknown_api_server_is_one_line_and_exit_2():
    from click.testing import CliRunner

    from quantplan.cli import cli

    result = CliRunner().invoke(cli, ["estimate", "--model", "llama-3.1-8b", "--method", "bf16", "--gpu", "h100-sxm",
                                      "--framework", "vllm", "--api-server", "nim"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "API server 'nim'" in result.output


# ---------------------------------------------------------------- solve behind a named server


def _scenario(**top):
    """Llama-3.1-8B FP8 on one H100 under TensorRT-LLM, one user (a closed loop at c = 1, whose completion
    rate the per-request overhead does not enter), SLOs loose enough that both servers plan the same."""
    from quantplan.solver.scenario import make_scenario

    return make_scenario({"model": "llama-3.1-8b", "gpus": ["h100-sxm"], "methods": ["fp8"], "max_gpus": 1,
                          "frameworks": ["tensorrt-llm"], "alternatives": False, **top,
                          "classes": [{"name": "chat", "concurrency": 1, "prompt_tokens": 1000,
                                       "output_tokens": 200, "ttft_ms": 5000, "tpot_ms": 200}]})


def _with_nim(world, overhead_ms: float):
    """`world` with NIM's server in front of TensorRT-LLM at `overhead_ms` (the catalog fits it at 0 ms)."""
    from quantplan.solver.catalog import Registry

    frameworks = [f.model_copy(update={"server_overhead_ms": {"nim": overhead_ms}}) if f.id == "tensorrt-llm" else f
                  for f in world.frameworks]
    return replace(world, frameworks=Registry("framework", frameworks))


def test_a_plan_behind_a_named_server_differs_by_the_two_overheads(world):
    """TensorRT-LLM's own server costs 26.65 ms a request (catalogs/frameworks.toml request_overhead_ms), a
    NIM at 12.5 ms: the same replica's TTFT is 26.65 - 12.5 = 14.15 ms lower behind NIM, its TPOT and cost
    unchanged, and the plan names the server it assumed."""
    from quantplan.solver.api import solve

    world = _with_nim(world, 12.5)
    own, nim = solve(_scenario(), world), solve(_scenario(api_server="nim"), world)
    assert world.frameworks.get("tensorrt-llm").request_overhead_ms == 26.65
    assert (own.replicas[0].key, own.cost_per_hour) == (nim.replicas[0].key, nim.cost_per_hour)
    assert own.replicas[0].ttft_ms - nim.replicas[0].ttft_ms == pytest.approx(14.15, abs=1e-6)
    assert nim.replicas[0].tpot_ms == pytest.approx(own.replicas[0].tpot_ms, rel=1e-12)
    assert (own.api_server, nim.api_server) == (None, "nim")
    assert nim.notes[0].startswith("API server nim in front of the engine") and "tensorrt-llm 12.5 ms" in nim.notes[0]


def test_frameworks_without_an_overhead_for_the_server_are_left_out_and_counted(world):
    """Only TensorRT-LLM has an overhead for NIM: asked for vLLM and SGLang as well, the plan is TensorRT-LLM's
    and its note counts the two left out; asked for vLLM alone, there is nothing to plan (one error)."""
    from quantplan.solver.api import solve

    plan = solve(_scenario(api_server="nim", frameworks=["vllm", "sglang", "tensorrt-llm"]), world)
    assert {g.framework for g in plan.replicas} == {"tensorrt-llm"}
    assert "2 frameworks left out, with no overhead known for nim in front of them: vllm, sglang" in plan.notes[0]
    with pytest.raises(QuantplanError, match="none of the frameworks considered \\(vllm\\).*tensorrt-llm"):
        solve(_scenario(api_server="nim", frameworks=["vllm"]), world)


def test_solve_names_the_server_in_json_and_rejects_an_unknown_one(tmp_path):
    """`api_server` at the top of a scenario file and `--api-server` alike; an unknown server is one line on
    stderr and exit 2."""
    import json

    from click.testing import CliRunner

    from quantplan.cli import cli

    path = tmp_path / "nim.toml"
    path.write_text('model = "llama-3.1-8b"\ngpus = ["h100-sxm"]\nmethods = ["fp8"]\nmax_gpus = 1\n'
                    'api_server = "nim"\nalternatives = false\n\n[[class]]\nname = "chat"\nconcurrency = 1\n'
                    'prompt_tokens = 1000\noutput_tokens = 200\nttft_ms = 5000\ntpot_ms = 200\n')
    runner = CliRunner()
    found = runner.invoke(cli, ["solve", str(path), "--json"])
    assert found.exit_code == 0, found.output
    plan = json.loads(found.output)
    assert plan["api_server"] == "nim" and {g["framework"] for g in plan["replicas"]} == {"tensorrt-llm"}
    unknown = runner.invoke(cli, ["solve", str(path), "--api-server", "triton"])
    assert unknown.exit_code == 2
    assert unknown.stderr.strip().count("\n") == 0 and "api_server 'triton'" in unknown.stderr
