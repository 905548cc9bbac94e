"""`quantplan calibrate`: the tools' result formats, matching results to configurations, the fit of a
device/framework/method's efficiencies, the overlay catalog, and one-line errors for bad files.

The files under tests/data/calibrate were written for these tests by hand, following each tool's
documented field names (cited in solver/results.py); their figures are illustrative, not measured.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from quantplan.cli import cli
from quantplan.solver import results as reading
from quantplan.solver.catalog import Registry, user_catalog
from quantplan.solver.registry import load_world
from quantplan.solver.validate import Row, prepare

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "calibrate"
LLAMA8 = ["--model", "llama-3.1-8b", "--method", "fp16", "--gpu", "h100-sxm"]

# A device that is in no shipped catalog: its datasheet row, as a user registers new hardware.
DATASHEET = """schema_version = 1

[[gpu]]
id = "lab-accelerator"
name = "Lab accelerator (test datasheet)"
kind = "gpu"
device_class = "datacenter"
vendor = "NVIDIA"
architecture = "test"
compute_capability = 9.0
memory_gb = 96
bandwidth_tb_s = 2.0
tflops_fp16 = 400.0
tflops_bf16 = 400.0
tflops_fp8 = 800.0
interconnect = "pcie"
source = "test datasheet: round figures chosen for the test"

[[price]]
gpu = "lab-accelerator"
usd_per_hour = 2.0
provider = "test"
as_of = "2026-12"
source = "test price"
"""

# The engine's "true" efficiencies on the new device: what the synthetic benchmark is computed from.
TRUTH = {"bandwidth_efficiency": 0.70, "prefill_efficiency": 0.45, "step_overhead_ms": 3.5,
         "request_overhead_ms": 30.0}
# Runs (clients, prompt tokens, output tokens): several loads and lengths, so every figure is informed.
RUNS = ((1, 128, 128), (8, 1024, 512), (48, 256, 1024), (96, 128, 1024))
VLLM_FIELDS = (("ttft_ms", "mean", "mean_ttft_ms"), ("ttft_ms", "p50", "median_ttft_ms"),
               ("tpot_ms", "mean", "mean_tpot_ms"), ("output_tokens_per_s", "mean", "output_throughput"))


def invoke(argv: list[str], code: int = 0):
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    return result


def calibrate_json(argv: list[str], tmp_path: Path) -> dict:
    return json.loads(invoke(["calibrate", *argv, "-o", str(tmp_path / "overlay.toml"), "--json"]).stdout)


# ---------------------------------------------------------------------------------------------
# reading the tools' files


def test_vllm_bench_serve_result():
    """160 prompts at --max-concurrency 16: 163,840 / 160 = 1,024 prompt tokens, 40,960 / 160 = 256 out,
    160 / 16 = 10 requests per client; medians read as p50."""
    (m,) = reading.read([DATA / "vllm_serve_c16.json"]).measurements
    assert (m.tool, m.mode, m.load, m.prompt_tokens, m.output_tokens) == \
        ("vllm bench serve", "concurrency", 16, 1024, 256)
    assert m.requests_per_client == 10
    assert m.model == "meta-llama/Llama-3.1-8B-Instruct"
    figures = {(metric, stat): value for metric, stat, value in m.figures}
    assert figures == {("ttft_ms", "mean"): 131.2, ("ttft_ms", "p50"): 118.5, ("ttft_ms", "p99"): 262.7,
                       ("tpot_ms", "mean"): 10.2, ("tpot_ms", "p50"): 10.1, ("tpot_ms", "p99"): 11.9,
                       ("output_tokens_per_s", "mean"): 1494.9}


def test_sglang_jsonl_one_run_per_line():
    """Line 1 is a Poisson run at 4 requests/s (max_concurrency null); line 2 has request_rate
    Infinity (as json.dumps writes float('inf')) with --max-concurrency 32: a closed loop of 32 clients,
    320 completed / 32 = 10 requests each."""
    rate, closed = reading.read([DATA / "sglang_bench_serving.jsonl"]).measurements
    assert (rate.tool, rate.mode, rate.load, rate.prompt_tokens, rate.output_tokens) == \
        ("sglang bench_serving", "rate", 4.0, 512, 128)
    assert (closed.mode, closed.load, closed.requests_per_client, closed.where) == ("concurrency", 32, 10, ":2")
    assert ("tpot_ms", "mean", 11.8) in closed.figures


def test_aiperf_json_csv_and_genai_perf_agree():
    """The AIPerf JSON and CSV exports of one run give the same figures; the CSV records no load, so
    --concurrency supplies it. inter_token_latency is TPOT. genai-perf keeps its load in input_config."""
    (as_json,) = reading.read([DATA / "profile_export_aiperf.json"]).measurements
    (as_csv,) = reading.read([DATA / "profile_export_aiperf.csv"], concurrency=8).measurements
    assert (as_json.mode, as_json.load, as_json.prompt_tokens, as_json.output_tokens) == ("concurrency", 8, 1024, 256)
    assert as_json.requests_per_client == 160 / 8
    assert set(as_json.figures) == set(as_csv.figures)
    assert ("tpot_ms", "p90", 8.31) in as_json.figures and ("ttft_ms", "mean", 96.3) in as_json.figures
    (genai,) = reading.read([DATA / "profile_export_genai_perf.json"]).measurements
    assert (genai.tool, genai.mode, genai.load, genai.prompt_tokens) == ("genai-perf", "concurrency", 4, 512)


def test_llama_bench_json_and_csv():
    """pp512 is prompt tokens/s, tg128 one stream's tokens/s (prompt 0 read as 1); the CSV's pp512+tg128
    test mixes both and is skipped with its reason."""
    from_json = reading.read([DATA / "llama_bench.json"])
    from_csv = reading.read([DATA / "llama_bench.csv"])
    pp, tg = from_json.measurements
    assert (pp.mode, pp.prompt_tokens, pp.figures) == ("single", 512, (("prefill_tokens_per_s", "mean", 6080.0),))
    assert (tg.prompt_tokens, tg.output_tokens, tg.figures) == (1, 128, (("tokens_per_s_per_user", "mean", 131.1),))
    assert [(m.prompt_tokens, m.output_tokens, m.figures) for m in from_csv.measurements] == \
        [(m.prompt_tokens, m.output_tokens, m.figures) for m in from_json.measurements]
    assert len(from_csv.skipped) == 1 and "combined test" in from_csv.skipped[0].reason
    assert pp.kv_cache_dtype == "fp16" and pp.gpu_layers == 99


def test_trtllm_bench_report():
    """An offline batch of round(63.7) = 64 concurrent requests, 128 in / 512 out, TP 1; TTFT not used."""
    (m,) = reading.read([DATA / "trtllm_bench_report.json"]).measurements
    assert (m.tool, m.mode, m.load, m.prompt_tokens, m.output_tokens, m.gpus) == \
        ("trtllm-bench", "lockstep", 64, 128, 512, 1)
    assert m.figures == (("output_tokens_per_s", "mean", 5031.0), ("tpot_ms", "mean", 12.47))


@pytest.mark.parametrize("name, words", [
    ("not_json.json", ("not_json.json", "not valid JSON")),
    ("missing_field.json", ("missing_field.json", "'total_input_tokens'")),
    ("unknown_format.json", ("unknown_format.json", "unknown result format")),
    ("profile_export_aiperf.csv", ("profile_export_aiperf.csv", "concurrency", "--concurrency")),
    ("no_such_file.json", ("no_such_file.json", "no such file")),
])
def test_bad_result_file_is_one_line_exit_2(name, words, tmp_path):
    result = invoke(["calibrate", str(DATA / name), *LLAMA8, "--framework", "vllm",
                     "-o", str(tmp_path / "o.toml")], code=2)
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    for word in words:
        assert word in result.stderr
    assert not (tmp_path / "o.toml").exists()


def test_wrong_field_type_names_the_field(tmp_path):
    record = json.loads((DATA / "vllm_serve_c16.json").read_text())
    record["max_concurrency"] = "sixteen"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(record))
    result = invoke(["calibrate", str(path), *LLAMA8, "--framework", "vllm", "-o", str(tmp_path / "o.toml")], code=2)
    assert "bad.json: field 'max_concurrency' is 'sixteen', expected a number" in result.stderr


# ---------------------------------------------------------------------------------------------
# matching results to configurations


def test_result_for_another_model_matches_no_configuration(tmp_path):
    """The vLLM file names meta-llama/Llama-3.1-8B-Instruct; calibrating llama-2-7b with it is refused."""
    result = invoke(["calibrate", str(DATA / "vllm_serve_c16.json"), "--model", "llama-2-7b", "--method", "fp16",
                     "--gpu", "h100-sxm", "--framework", "vllm", "-o", str(tmp_path / "o.toml")], code=2)
    assert "vllm_serve_c16.json: the result is for model 'llama-3.1-8b'" in result.stderr


def test_run_on_other_gpu_count_matches_no_configuration(tmp_path):
    result = invoke(["calibrate", str(DATA / "trtllm_bench_report.json"), *LLAMA8, "--framework", "tensorrt-llm",
                     "--gpus", "2", "-o", str(tmp_path / "o.toml")], code=2)
    assert "used 1 GPUs" in result.stderr


PLAN = {"status": "optimal", "model": "llama-3.1-8b", "replicas": [
    {"model": "llama-3.1-8b", "method": "fp16", "gpu": "h100-sxm", "framework": "tensorrt-llm",
     "gpus_per_replica": 1, "kv_cache_dtype": "fp16", "count": 1},
    {"model": "llama-3.1-8b", "method": "fp8", "gpu": "h100-sxm", "framework": "vllm",
     "gpus_per_replica": 2, "kv_cache_dtype": "fp8", "count": 1}]}


def test_plan_groups_are_told_apart_by_what_the_file_records(tmp_path):
    """A plan with two replica groups (the fields of a solve --json output that calibrate reads): the
    trtllm-bench report records TP 1, so it belongs to group 1; the vLLM file records only the model,
    which both groups run: refused as ambiguous."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(PLAN))
    found = calibrate_json([str(DATA / "trtllm_bench_report.json"), "--plan", str(plan)], tmp_path)
    assert [(s["gpu"], s["framework"], s["method"]) for s in found["calibrations"]] == \
        [("h100-sxm", "tensorrt-llm", "fp16")]
    result = invoke(["calibrate", str(DATA / "vllm_serve_c16.json"), "--plan", str(plan),
                     "-o", str(tmp_path / "o.toml")], code=2)
    assert "matches several configurations" in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("argv, words", [
    (["--plan", "p.json", "--model", "llama-3.1-8b"], "not both"),
    (["--model", "llama-3.1-8b"], "missing --method, --gpu, --framework"),
])
def test_configuration_options_checked(argv, words, tmp_path):
    result = invoke(["calibrate", str(DATA / "vllm_serve_c16.json"), *argv, "-o", str(tmp_path / "o.toml")], code=2)
    assert words in result.stderr


# ---------------------------------------------------------------------------------------------
# fitting


def test_llama_bench_fits_bandwidth_and_prefill_only(tmp_path):
    """One tg and one pp figure: the bandwidth share and the prefill share are fitted (one figure each,
    so each is met exactly); a step overhead needs two step sizes and a request overhead a server."""
    found = calibrate_json([str(DATA / "llama_bench.json"), "--model", "llama-2-7b", "--method", "gguf-q4_k_m",
                            "--gpu", "rtx4090", "--framework", "llama.cpp"], tmp_path)
    (scope,) = found["calibrations"]
    assert scope["fitted"] == ["bandwidth_efficiency", "prefill_efficiency"]
    assert scope["values"]["step_overhead_ms"] == scope["catalog"]["step_overhead_ms"]
    for error in found["errors"]:
        assert error["after_median"] < 0.002 < error["before_median"]


def test_trtllm_bench_offline_run_fits_bandwidth(tmp_path):
    """An offline batch at one load: the bandwidth share only; both decode figures end within 2%."""
    found = calibrate_json([str(DATA / "trtllm_bench_report.json"), *LLAMA8, "--framework", "tensorrt-llm"], tmp_path)
    assert found["calibrations"][0]["fitted"] == ["bandwidth_efficiency"]
    assert all(e["after_median"] < 0.02 < e["before_median"] for e in found["errors"])


def _truth_world(datasheet: Path):
    """The world with vLLM's catalog row set to TRUTH on data-center devices: an engine whose real
    efficiencies differ from the catalog (through the framework plugin, not the calibration plugin)."""
    world = load_world([datasheet])
    vllm = world.frameworks.get("vllm")
    truth = vllm.model_copy(update={
        "bandwidth_efficiency": {**vllm.bandwidth_efficiency, "datacenter": TRUTH["bandwidth_efficiency"]},
        "prefill_efficiency_by_class": {**vllm.prefill_efficiency_by_class,
                                        "datacenter": TRUTH["prefill_efficiency"]},
        "step_overhead_ms": TRUTH["step_overhead_ms"], "request_overhead_ms": TRUTH["request_overhead_ms"]})
    world.frameworks = Registry("framework", [truth if f.id == "vllm" else f for f in world.frameworks])
    return world


def _synthetic_vllm_results(world, folder: Path) -> list[Path]:
    """What `vllm bench serve --max-concurrency C --num-prompts 10C --save-result` would have written
    on the new device, computed from the load model at the true efficiencies."""
    paths = []
    for index, (clients, prompt, output) in enumerate(RUNS):
        rows = [Row(id=f"{metric}:{stat}", model="llama-3.1-8b", gpu="lab-accelerator", gpus=1, framework="vllm",
                    method="fp16", kv_cache_dtype="bf16", batch=clients, prompt_tokens=prompt, output_tokens=output,
                    metric=metric, statistic=stat, value=1.0, unit="", mode="concurrency", source="synthetic",
                    requests_per_client=10) for metric, stat, _ in VLLM_FIELDS]
        predicted = [check.predicted for check in prepare(world, rows).checks()]
        prompts = 10 * clients
        record = {"backend": "openai", "model_id": "meta-llama/Llama-3.1-8B-Instruct", "num_prompts": prompts,
                  "request_rate": "inf", "burstiness": 1.0, "max_concurrency": clients, "completed": prompts,
                  "failed": 0, "total_input_tokens": prompts * prompt, "total_output_tokens": prompts * output}
        record.update({key: value for (_, _, key), value in zip(VLLM_FIELDS, predicted)})
        paths.append(folder / f"vllm-c{clients}.json")
        paths[-1].write_text(json.dumps(record, indent=2))
    return paths


def test_new_hardware_datasheet_plus_one_benchmark_run(tmp_path):
    """A user registers a new device (datasheet TOML) and runs vllm bench serve at four loads;
    calibrate recovers the engine's efficiencies there within 2%, and `estimate --catalog overlay.toml`
    alone reproduces every measured mean within 1%."""
    datasheet = tmp_path / "lab.toml"
    datasheet.write_text(DATASHEET)
    results = _synthetic_vllm_results(_truth_world(datasheet), tmp_path)
    overlay = tmp_path / "overlay.toml"
    found = json.loads(invoke(["calibrate", *map(str, results), "--model", "llama-3.1-8b", "--method", "fp16",
                               "--gpu", "lab-accelerator", "--framework", "vllm", "--catalog", str(datasheet),
                               "-o", str(overlay), "--json"]).stdout)
    (scope,) = found["calibrations"]
    assert sorted(scope["fitted"]) == sorted(TRUTH)
    for name, value in TRUTH.items():
        assert scope["values"][name] == pytest.approx(value, rel=0.02), name
        assert abs(scope["catalog"][name] / value - 1) > 0.05, name  # the catalog was off: a real recovery
    for error in found["errors"]:
        assert error["after_median"] < 0.01
    tables = user_catalog(overlay)
    assert [g.id for g in tables["gpu"]] == ["lab-accelerator"] and len(tables["calibration"]) == 1
    for path, (clients, prompt, output) in zip(results, RUNS):
        measured = json.loads(path.read_text())
        estimate = json.loads(invoke(["estimate", "--model", "llama-3.1-8b", "--method", "fp16", "--gpu",
                                      "lab-accelerator", "--framework", "vllm", "--concurrency", str(clients),
                                      "--prompt-tokens", str(prompt), "--output-tokens", str(output),
                                      "--catalog", str(overlay), "--json"]).stdout)
        assert estimate["ttft_ms"] == pytest.approx(measured["mean_ttft_ms"], rel=0.01)
        assert estimate["tpot_ms"] == pytest.approx(measured["mean_tpot_ms"], rel=0.01)
        assert estimate["tokens_per_s"] == pytest.approx(measured["output_throughput"], rel=0.01)


def test_overlay_leaves_other_configurations_alone(tmp_path):
    """A calibration of vLLM on h100-sxm at fp16 moves that configuration only: fp8 on the same device and
    engine, and fp16 under SGLang, are predicted as before."""
    overlay = tmp_path / "overlay.toml"
    invoke(["calibrate", str(DATA / "vllm_serve_c16.json"), *LLAMA8, "--framework", "vllm", "-o", str(overlay)])

    def estimate(method, framework, *catalog):
        return json.loads(invoke(["estimate", "--model", "llama-3.1-8b", "--method", method, "--gpu", "h100-sxm",
                                  "--framework", framework, "--concurrency", "16", "--prompt-tokens", "1024",
                                  "--output-tokens", "256", *catalog, "--json"]).stdout)

    for method, framework in (("fp8", "vllm"), ("fp16", "sglang")):
        plain, calibrated = estimate(method, framework), estimate(method, framework, "--catalog", str(overlay))
        assert (calibrated["ttft_ms"], calibrated["tpot_ms"]) == (plain["ttft_ms"], plain["tpot_ms"])
    plain, calibrated = estimate("fp16", "vllm"), estimate("fp16", "vllm", "--catalog", str(overlay))
    assert calibrated["tpot_ms"] != plain["tpot_ms"]
    assert abs(calibrated["ttft_ms"] / 131.2 - 1) < abs(plain["ttft_ms"] / 131.2 - 1)


def test_solve_then_calibrate_then_solve_with_the_overlay(tmp_path):
    """The loop: solve a scenario, benchmark its plan (here the SGLang file stands in), calibrate against
    the plan's replica group, and solve again with the overlay."""
    plan = tmp_path / "plan.json"
    plan.write_text(invoke(["solve", str(ROOT / "examples" / "chat-7b-a100.toml"), "--json"]).stdout)
    group = json.loads(plan.read_text())["replicas"][0]
    overlay = tmp_path / "overlay.toml"
    found = json.loads(invoke(["calibrate", str(DATA / "sglang_bench_serving.jsonl"), "--plan", str(plan),
                               "-o", str(overlay), "--json"]).stdout)
    assert [(s["gpu"], s["framework"], s["method"]) for s in found["calibrations"]] == \
        [(group["gpu"], group["framework"], group["method"])]
    assert all(e["after_median"] <= e["before_median"] for e in found["errors"] if e["fitted"])
    again = json.loads(invoke(["solve", str(ROOT / "examples" / "chat-7b-a100.toml"), "--catalog", str(overlay),
                               "--json"]).stdout)
    assert again["status"] == "optimal"


def test_calibration_row_with_unknown_id_is_one_line_exit_2(tmp_path):
    overlay = tmp_path / "overlay.toml"
    overlay.write_text('schema_version = 1\n\n[[calibration]]\ngpu = "h100-sxm"\nframework = "vllm"\n'
                       'method = "fp17"\nbandwidth_efficiency = 0.8\nsource = "typo in the method"\n')
    result = invoke(["list", "gpus", "--catalog", str(overlay)], code=2)
    assert result.stderr == "error: calibration:overlay.toml: [[calibration]] method 'fp17' is not a known method id\n"


def test_recalibrating_with_an_overlay_keeps_its_other_rows_and_replaces_its_own(tmp_path):
    """Overlay 1 calibrates llama.cpp on rtx4090; calibrating TensorRT-LLM on top of it keeps that row;
    calibrating llama.cpp again starts from overlay 1's values and leaves one row for that combination."""
    first, second, third = (tmp_path / f"overlay{i}.toml" for i in (1, 2, 3))
    llama = [str(DATA / "llama_bench.json"), "--model", "llama-2-7b", "--method", "gguf-q4_k_m", "--gpu", "rtx4090",
             "--framework", "llama.cpp"]
    invoke(["calibrate", *llama, "-o", str(first)])
    invoke(["calibrate", str(DATA / "trtllm_bench_report.json"), *LLAMA8, "--framework", "tensorrt-llm",
            "--catalog", str(first), "-o", str(second)])
    assert sorted(r.framework for r in user_catalog(second)["calibration"]) == ["llama.cpp", "tensorrt-llm"]
    again = json.loads(invoke(["calibrate", *llama, "--catalog", str(second), "-o", str(third), "--json"]).stdout)
    (row,) = [r for r in user_catalog(first)["calibration"]]
    assert again["calibrations"][0]["catalog"]["bandwidth_efficiency"] == row.bandwidth_efficiency
    rows = user_catalog(third)["calibration"]
    assert sorted(r.framework for r in rows) == ["llama.cpp", "tensorrt-llm"]


def test_result_without_any_figure_names_the_field(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text(json.dumps({"completed": 10, "total_input_tokens": 1000, "total_output_tokens": 1000,
                                "max_concurrency": 1, "mean_ttft_ms": None}))
    result = invoke(["calibrate", str(path), *LLAMA8, "--framework", "vllm", "-o", str(tmp_path / "o.toml")], code=2)
    assert "empty.json: field 'mean_ttft_ms' is missing" in result.stderr
