"""`quantplan validate`: the estimators against the shipped measurements meet the fidelity targets,
the shipped error bars are what validation finds, and the fit reproduces the catalog values."""

from __future__ import annotations

import json
import tomllib
from importlib import resources

import numpy as np
import pytest
from click.testing import CliRunner

from quantplan.cli import cli
from quantplan.solver import errorbars, fit, validate
from quantplan.solver.api import estimate, solve
from quantplan.solver.scenario import load_scenario

# Quality rows that miss max(0.05 ppl, 25%), each with its reason (kept visible, not dropped):
KNOWN_QUALITY_MISSES = {  # quality model v2 (the AWQ-paper and Quark rows are not among its fitted rows)
    "v25",  # Llama-2-70B Q2_K (2023 build) +8.8%: v2 +13.5% (Q2_K's method term is shared by all families)
    "v102",  # AWQ-paper GPTQ Llama-2-7B +4.0%; Marlin's README measures +2.9% for the same model (v2: +2.6%)
    "v109",  # AWQ-paper AWQ Llama-2-13B +1.84%: v2 +3.0% at 2048 tokens
}


@pytest.fixture(scope="module")
def checks():
    return validate.run()


@pytest.fixture(scope="module")
def summary(checks):
    return validate.summary(checks)


def test_memory_median_error_within_3_percent(summary):
    memory = summary["by_group"]["memory"]
    assert memory["rows"] >= 10 and memory["median_ape"] <= 0.03


def test_decode_median_12_and_p90_30_percent(summary):
    decode = summary["by_group"]["decode"]
    assert decode["rows"] >= 80
    assert decode["median_ape"] <= 0.12 and decode["p90_ape"] <= 0.30


def test_ttft_of_engine_benchmarks_without_load(summary):
    """TTFT and prefill rows as a whole (offline tables and rows under load): regression bounds at what
    the model reaches today (median 21%, p90 66%); the issue's 20% / 50% target is not met yet."""
    ttft = summary["by_group"]["ttft"]
    assert ttft["rows"] >= 700
    assert ttft["median_ape"] <= 0.25 and ttft["p90_ape"] <= 0.75


def test_at_least_300_latency_under_load_rows_with_their_protocol():
    rows = [r for r in validate.load_rows() if r.under_load]
    assert len(rows) >= 300
    for row in rows:
        assert row.metric in ("ttft_ms", "tpot_ms", "output_tokens_per_s") and row.engine_version, row.id
        assert (row.mode == "rate") == (row.rate is not None), row.id
        assert row.statistic in ("mean", "p50", "p90", "p99", "itl_p50")
    # AIConfigurator silicon rows: only its h100_sxm system may be used (the others are held out)
    aic = [r for r in rows if "aiconfigurator" in r.source]
    assert aic and all("system h100_sxm" in r.source and r.gpu == "h100-sxm" for r in aic)
    assert {r.regime for r in rows} >= {"c=2-16", "c=17-64", "c>64", "rate"}


def test_tpot_under_load_meets_the_target_on_dense_models(summary):
    """TPOT of dense models under load (608 rows): median <= 10%, p90 <= 25%, each concurrency regime within
    twice that. The rate regime (23 rows) misses it at p90 (17.6% / 54.7%: three runs at or past the servers'
    capacity, where a capacity 10% off moves TPOT 2-3x; the README says so): held to its figure."""
    tpot = summary["under_load"]["tpot_ms"]
    assert tpot["all"]["rows"] >= 500 and tpot["all"]["meets"]
    assert all(v["within_twice_target"] for k, v in tpot["by_regime"].items() if k != "rate")
    assert tpot["by_regime"]["rate"]["median_ape"] <= 0.20 and tpot["by_regime"]["rate"]["p90_ape"] <= 0.56


def test_ttft_under_load_regression_bounds(summary):
    """TTFT of dense models under load: median 22%, p90 66% today against a 20% / 50% target (missed;
    the README says so). These bounds keep it from getting worse; SGLang's waves are within 11%."""
    ttft = summary["under_load"]["ttft_ms"]
    assert ttft["all"]["median_ape"] <= 0.23 and ttft["all"]["p90_ape"] <= 0.70
    assert ttft["by_framework"]["sglang"]["median_ape"] <= 0.11


def test_moe_rows_reported_apart(summary):
    moe = summary["under_load_moe"]
    assert moe["tpot_ms"]["all"]["rows"] >= 100
    assert moe["tpot_ms"]["all"]["median_ape"] <= 0.15 and moe["ttft_ms"]["all"]["median_ape"] <= 0.20


def test_quality_within_005_or_25_percent_except_known_misses(summary):
    quality = summary["quality"]
    assert quality["rows"] >= 25
    assert set(quality["misses"]) == KNOWN_QUALITY_MISSES


def test_every_row_names_its_source():
    for row in validate.load_rows():
        assert len(row.source) > 10, row.id


def test_shipped_error_bars_match_a_fresh_validation(checks):
    world = validate.validation_world()
    fresh = errorbars.compute(checks, {g.id: g.device_class for g in world.gpus},
                              {g.id: g.vendor.lower() for g in world.gpus}, {g.id: g.interconnect for g in world.gpus})
    with resources.files("quantplan.catalogs").joinpath("error_bars.toml").open("rb") as handle:
        shipped = errorbars.ErrorBars(**tomllib.load(handle))
    assert shipped.covered == fresh.covered
    assert [(b.group, b.framework, b.rows) for b in shipped.bar] == [(b.group, b.framework, b.rows) for b in fresh.bar]
    for old, new in zip(shipped.bar, fresh.bar):
        assert old.median_ape == pytest.approx(new.median_ape, abs=1e-5)
        assert old.p90_ape == pytest.approx(new.p90_ape, abs=1e-5)


def test_multi_gpu_coverage_follows_the_link_between_the_gpus():
    """vLLM rows on one H100 and on 8 NVLink H100s: 8 NVLink GPUs are covered, 2 PCIe GPUs are not (tensor
    parallelism was never measured over PCIe), one PCIe GPU is; a table without links (`*`) covers any link."""
    bars = errorbars.ErrorBars(generated_by="hand", bar=[], covered=[
        errorbars.Coverage(framework="vllm", device_class="datacenter", max_batch=256, max_gpus=1, rows=10),
        errorbars.Coverage(framework="vllm", device_class="datacenter", max_batch=256, max_gpus=8, rows=5,
                           interconnect="nvlink")])
    assert bars.coverage("vllm", "datacenter", 64, 8, "nvidia", "nvlink") == []
    assert bars.coverage("vllm", "datacenter", 64, 1, "nvidia", "pcie") == []
    assert bars.coverage("vllm", "datacenter", 64, 2, "nvidia", "pcie") == [
        "2 GPUs over pcie: vllm measured that wide over nvlink only"]
    assert bars.coverage("vllm", "datacenter", 64, 16, "nvidia", "nvlink") == [
        "16 GPUs above the most measured for vllm (8)"]
    unlinked = errorbars.ErrorBars(generated_by="hand", bar=[], covered=[
        errorbars.Coverage(framework="vllm", device_class="datacenter", max_batch=256, max_gpus=8, rows=5)])
    assert unlinked.coverage("vllm", "datacenter", 64, 2, "nvidia", "pcie") == []


def test_fit_reproduces_the_catalog():
    """A fit of the shipped rows returns the shipped values, searched from its fixed starting point and from the
    catalog's values, the lower minimum kept (`quantplan fit --from-start`), and so does a fit started from the
    catalog's values alone (`quantplan fit`: the catalog is a fixed point): each within 0.5% or, for a value at a bound (NIM's
    server overhead and vLLM's prompt-step overhead sit at 0), within 0.01 of its unit; the loss no
    higher than the catalog's. Not exactly: the trial values adjust probes built at the catalog's values,
    so a refit with other catalog values rounds differently in the last bits and ends elsewhere along
    the loss's flat directions (an overhead against a share), ~0.2% at most on the shipped rows."""
    setup, values, report = fit.fit()
    assert all(entry["rows"] for entry in report)
    catalog = setup.loss(setup.start)
    for start, found in (("fixed", report), ("catalog", fit.fit(setup=setup, from_catalog=True)[2])):
        for entry in found:
            assert entry["after"] == pytest.approx(entry["before"], rel=5e-3, abs=1e-2), (start, entry["parameter"])
        assert setup.loss(np.array([e["after"] for e in found])) <= catalog * (1 + 1e-6)
    errors = {(e["sample"], e["metric"]): e for e in fit.errors(setup, values)}
    assert errors["in-sample", "tpot_ms"]["after_median"] <= 0.11


def test_the_fit_command_starts_from_the_catalog_and_cross_validation_from_the_fixed_start():
    """`quantplan fit` refines the catalog's values (the shipped catalog comes back within 0.5%); a cross-validation
    fold must not start from values its held-out rows helped fit, so --from-start is refused there and with --devices
    (which always starts there) (exit 2)."""
    from click.testing import CliRunner

    from quantplan.cli import cli

    result = CliRunner().invoke(cli, ["fit", "--json"])
    assert result.exit_code == 0, result.output
    for entry in json.loads(result.output)["parameters"]:
        assert entry["after"] == pytest.approx(entry["before"], rel=5e-3, abs=1e-2), entry["parameter"]
    refused = CliRunner().invoke(cli, ["fit", "--cross-validate", "device", "--from-start"])
    assert refused.exit_code == 2 and "--cross-validate stands alone" in refused.output
    refused = CliRunner().invoke(cli, ["fit", "--devices", "h100-sxm", "--from-start"])
    assert refused.exit_code == 2 and "--devices always searches from the fixed start" in refused.output


def test_estimate_and_solve_report_error_bars_and_coverage():
    result = estimate("llama-3.1-8b", "fp8", "h100-sxm", "tensorrt-llm", batch=8)
    assert result.error_bars["tpot_ms"]["p90_pct"] > result.error_bars["tpot_ms"]["median_pct"] > 0
    assert result.coverage_warnings == []
    server_cpu = estimate("llama-2-7b", "gguf-q4_k_m", "xeon-8480", "llama.cpp")
    assert any("cpu" in w for w in server_cpu.coverage_warnings)  # no CPU rows in the validation set
    plan = solve(load_scenario("examples/blog-3-7b-m2max-laptop.toml"))  # Apple rows exist (M1 Max, M4)
    assert plan.replicas[0].coverage_warnings == [] and plan.replicas[0].error_bars["tpot_ms"]["median_pct"] > 0


def test_p90_margin_never_plans_cheaper_and_reports_slower_figures():
    scenario = load_scenario("examples/blog-2-70b-batch-2xh100.toml")
    plain = solve(scenario)
    careful = solve(scenario.model_copy(update={"margin": "p90"}))
    assert careful.cost_per_hour >= plain.cost_per_hour
    bars = errorbars.shipped()
    group = careful.replicas[0]
    same = estimate("llama-2-70b", group.method, group.gpu, group.framework, gpus=group.gpus_per_replica,
                    batch=group.batch_size, prompt_tokens=512, output_tokens=256,
                    kv_cache_dtype=group.kv_cache_dtype)
    decode, prefill = bars.factor("decode", group.framework, "p90"), bars.factor("ttft", group.framework, "p90")
    # decode steps slowed by the decode factor, the prompt chunks they carry by the prefill factor
    assert same.tpot_ms * min(decode, prefill) * 0.999 <= group.tpot_ms <= same.tpot_ms * max(decode, prefill) * 1.001


def test_cli_validate_json_with_filter():
    result = CliRunner().invoke(cli, ["validate", "--json", "--filter", "framework=exllamav2"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {row["framework"] for row in data["rows"]} == {"exllamav2"}
    assert all(abs(row["error"]) < 0.3 for row in data["rows"])


def test_cross_validation_predicts_each_device_from_a_fit_without_it():
    """Leave one device out on llama.cpp's speed rows: one fold per device, every held-out row appears in
    exactly one fold, and the pooled row count is the sum of the folds' (each row predicted once)."""
    from quantplan.solver import fit as fitting
    from quantplan.solver.validate import load_rows

    rows = [r for r in load_rows(held_out=False) if r.framework == "llama.cpp"
            and fitting.GROUPS.get(r.metric) in ("decode", "ttft") and not r.excluded]
    found = fitting.cross_validate("device", rows=rows)
    assert [f["group"] for f in found["folds"]] == sorted({r.gpu for r in rows})
    per_fold = sum(stats["rows"] for f in found["folds"] for stats in f.values() if isinstance(stats, dict))
    pooled = sum(by_regime["all"]["rows"] for by_regime in found["pooled"].values())
    assert per_fold == pooled == len(rows)


def test_the_simulation_reads_each_row_at_its_own_load_protocol_and_statistic():
    """validate.simulated: a closed-loop row (a1367: 4 clients, 20 requests each, mean) and a Poisson row (p1:
    4 req/s, median) are simulated on their own probe's step model and scheduler, API-server overhead in, and read
    at their statistic: the figures of simulate() run by hand on the same inputs."""
    from quantplan.solver.scenario import TrafficClass
    from quantplan.solver.serving import Timing
    from quantplan.solver.simulate import simulate

    world = validate.validation_world()
    rows = {r.id: r for r in validate.load_rows()}
    found = validate.simulated(world, [rows["a1367"], rows["p1"], rows["v1"]])
    assert set(found) == {"a1367", "p1"}  # v1 (bits per weight) is no row under load
    (closed,), _ = validate.speed_probes(world, rows["a1367"])
    assert (closed.kind, closed.load, closed.requests_per_client) == ("closed", 4.0, 20.0)
    by_hand = simulate(Timing(closed.steps, closed.scheduling),
                       TrafficClass(prompt_tokens=1024, output_tokens=1024, concurrency=4, requests_per_client=20),
                       clients=4).as_dict()
    assert found["a1367"] == by_hand["ttft_ms"]
    (poisson,), _ = validate.speed_probes(world, rows["p1"])
    assert (poisson.kind, poisson.load, rows["p1"].statistic) == ("rate", 4.0, "p50")
    by_hand = simulate(Timing(poisson.steps, poisson.scheduling),
                       TrafficClass(prompt_tokens=224, output_tokens=189, rate_per_s=4.0), rate=4.0).as_dict()
    assert found["p1"] == by_hand["ttft_p50_ms"]


def test_simulation_table_compares_the_closed_forms_and_the_simulation_on_the_same_rows():
    """Three TTFT rows at 8 clients, measured 100 ms: closed forms 110, 80 and 100 ms (errors +10%, -20%, 0), the
    simulation 150, 100 and (no figure) -: the simulation's two rows are +50% and 0, and the closed forms are
    compared on those two rows only (+10%, -20%: median 15%)."""
    def check(name: str, predicted: float) -> validate.Check:
        return validate.Check(id=name, metric="ttft_ms", group="ttft", framework="vllm", gpu="h100-sxm",
                              device_class="datacenter", method="bf16", model="llama-3.1-8b", batch=8, gpus=1,
                              measured=100.0, predicted=predicted, error=predicted / 100.0 - 1, within=None,
                              source="by hand", regime="c=2-16")

    table = validate.simulation_table([check("a", 110.0), check("b", 80.0), check("c", 100.0)],
                                      {"a": 150.0, "b": 100.0})
    every = table["fitted"]["ttft_ms"]["all"]
    assert every["closed_form"]["rows"] == every["simulation"]["rows"] == 2
    assert every["closed_form"]["median_ape"] == pytest.approx(0.15)
    assert every["simulation"]["median_ape"] == pytest.approx(0.25)
    assert table["fitted"]["ttft_ms"]["by_regime"]["c=2-16"] == every
    assert "held_out" not in table


def test_cli_validate_simulate_reports_both_errors_on_the_same_rows():
    result = CliRunner().invoke(cli, ["validate", "--simulate", "--json", "--filter", "id=a1367"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    (row,) = data["rows"]
    pair = data["summary"]["simulation"]["fitted"]["ttft_ms"]["all"]
    assert pair["closed_form"]["median_ape"] == pytest.approx(abs(row["error"]))
    assert pair["simulation"]["rows"] == 1
    text = CliRunner().invoke(cli, ["validate", "--simulate", "--filter", "id=a1367"], env={"COLUMNS": "120"})
    assert "Closed forms vs the scheduler simulation, fitted rows" in text.output
