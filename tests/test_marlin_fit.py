"""The Marlin kernel's bandwidth and compute shares (vLLM/SGLang gptq_marlin, awq_marlin, compressed-tensors
W4A16) are fitted where rows constrain them, like TensorRT-LLM's W4A16 GEMM: they touch only the probes that
run on Marlin, and `quantplan fit --write` puts them in methods.toml's [[kernel]] marlin block."""

from __future__ import annotations

import shutil
from importlib import resources

import numpy as np
import pytest

from quantplan.solver import fit, validate

MARLIN = {p.field: p for p in fit.DEFAULT_PARAMETERS if p.kind == "kernel" and p.id == "marlin"}


def test_marlin_shares_are_fitted_parameters():
    assert set(MARLIN) == {"bandwidth_efficiency", "compute_efficiency"}
    for parameter in MARLIN.values():
        assert parameter.low < parameter.initial < parameter.high


def test_the_marlin_shares_touch_the_probes_on_marlin_only():
    """AWQ and GPTQ on vLLM (an A100 row) and GPTQ on ExLlamaV2 run on Marlin; BF16 on vLLM, AWQ on
    TensorRT-LLM (its own W4A16 GEMM) and FP8 on an H100 (FP8 tensor cores) do not."""
    world = validate.validation_world()
    rows = {r.id: r for r in validate.load_rows()}
    bandwidth, compute = MARLIN["bandwidth_efficiency"], MARLIN["compute_efficiency"]
    for row_id in ("p412", "p413", "p406", "v100"):
        for probe in validate.speed_probes(world, rows[row_id])[0]:
            assert probe.config.execution.kernel == "marlin", row_id
            assert bandwidth.effect(probe) == ("bandwidth", 1.0) and compute.effect(probe) == ("peaks", 1.0)
    for row_id in ("p160", "v84", "p60"):  # vLLM BF16 on A100, TensorRT-LLM AWQ on H200, NIM FP8 on H100
        for probe in validate.speed_probes(world, rows[row_id])[0]:
            assert bandwidth.effect(probe) is None and compute.effect(probe) is None, row_id


def test_rows_on_marlin_move_its_compute_share_and_only_they():
    """Batch-1 decode rows (ExLlamaV2 GPTQ on an RTX 4090) constrain the bandwidth share alone: the compute
    share stays at its start. The A100 rows' prompt-heavy P99 TTFTs (AWQ and W4A16 GPTQ, vLLM 0.19) move it
    far from the README estimate it starts at (0.45; 0.69 with vLLM's wave persistence held at the catalog's, as
    these rows hold fewer than fit.MIN_WAVE_ROWS closed-loop TTFTs; 0.70+ when they moved it too; 0.649 with the
    catalog of 2026-12-04, refitted after the first-round queue)."""
    rows = {r.id: r for r in validate.load_rows()}
    _, values, report = fit.fit(rows=[rows["v100"], rows["v101"]])
    found = {e["parameter"]: e for e in report}
    assert found["kernel:marlin.compute_efficiency"]["after"] == pytest.approx(MARLIN["compute_efficiency"].initial,
                                                                               abs=0.01)
    assert found["kernel:marlin.bandwidth_efficiency"]["rows"] == ["v100", "v101"]
    a100 = [rows[f"p{i}"] for i in range(412, 430)]
    _, _, report = fit.fit(rows=a100)
    found = {e["parameter"]: e for e in report}
    assert found["kernel:marlin.compute_efficiency"]["rows"] == sorted(r.id for r in a100)
    assert found["kernel:marlin.compute_efficiency"]["after"] > 0.6


def test_marlin_shares_are_written_to_the_kernel_block(tmp_path):
    with resources.as_file(resources.files("quantplan.catalogs").joinpath("methods.toml")) as path:
        shutil.copy(path, tmp_path / "methods.toml")
    fit.write_catalog([MARLIN["bandwidth_efficiency"], MARLIN["compute_efficiency"]], [0.8, 0.6], tmp_path)
    text = (tmp_path / "methods.toml").read_text()
    block = text[text.index('[[kernel]]\nid = "marlin"'):]
    block = block[:block.index("\n[[", 1)]
    assert "\nbandwidth_efficiency = 0.8\n" in block and "\ncompute_efficiency = 0.6\n" in block
    other = text[text.index('[[kernel]]\nid = "trtllm-w4a16"'):]
    assert "bandwidth_efficiency = 0.8\n" not in other.split("\n[[")[0]


def test_wave_persistence_is_fitted_only_where_closed_loop_ttfts_pin_it():
    """TensorRT-LLM's rows off H100 are offline throughputs and TTFTs: they touch its wave persistence but hold no
    closed-loop TTFT at c > 1, so the fit keeps the parameter where it is; 20 of the H100 closed-loop TTFT rows
    (fit.MIN_WAVE_ROWS) let the fit move it, 19 do not."""
    rows = [r for r in validate.load_rows(held_out=False) if r.framework == "tensorrt-llm"]  # the rows fit reads
    index = next(i for i, p in enumerate(fit.DEFAULT_PARAMETERS) if p.name == "framework:tensorrt-llm.wave_persistence")
    off_h100 = [r for r in rows if r.gpu != "h100-sxm"]
    assert off_h100 and not any(r.mode == "concurrency" and r.metric == "ttft_ms" for r in off_h100)
    waves = [r for r in rows if r.gpu == "h100-sxm" and r.mode == "concurrency" and r.metric == "ttft_ms"
             and r.batch > 1][:fit.MIN_WAVE_ROWS]
    for chosen, pinned in ((off_h100, False), (waves, True), (waves[:-1], False)):
        setup = fit.problem(rows=chosen)
        every = np.ones(len(setup.prepared.batch.probes), dtype=bool)
        assert setup.effects[index][0].any()  # the rows touch it either way
        assert fit._identified(setup, index, every) is pinned


def test_single_wave_runs_do_not_pin_wave_persistence():
    """A run of one request per client (LambdaLabsML's vLLM sweeps) is its first wave alone: persistence changes none
    of its figures, so however many such rows there are, they do not let the fit move it."""
    rows = [r for r in validate.load_rows(held_out=False) if r.framework == "vllm" and r.mode == "concurrency"
            and r.metric == "ttft_ms" and r.batch > 1 and not r.excluded]
    single = [r for r in rows if r.requests_per_client == 1]
    assert len(single) >= fit.MIN_WAVE_ROWS
    index = next(i for i, p in enumerate(fit.DEFAULT_PARAMETERS) if p.name == "framework:vllm.wave_persistence")
    setup = fit.problem(rows=single)
    every = np.ones(len(setup.prepared.batch.probes), dtype=bool)
    assert setup.effects[index][0].any() and not fit._identified(setup, index, every)
    at_catalog = setup.predictions(setup.start)
    lockstep = setup.start.copy()
    lockstep[index] = 1.0
    assert np.allclose(setup.predictions(lockstep), at_catalog, rtol=1e-2, equal_nan=True)


def test_cold_fit_takes_no_value_from_the_catalog_for_parameters_its_rows_cannot_pin():
    """A fold of cross-validation must not learn from its held-out rows through the catalog, which was fitted on them
    too. Fitted on TensorRT-LLM's rows off H100 only, cold: Dynamo's server overhead (no row behind Dynamo there) and
    wave persistence (touched, not pinned) take their fixed starting values (20 ms, 0.1), not the catalog's (fitted on
    H100's AIConfigurator rows: 117.2 ms, 0.06674); the default fit keeps the catalog's."""
    rows = [r for r in validate.load_rows(held_out=False) if r.framework == "tensorrt-llm" and r.gpu != "h100-sxm"]
    names = ("framework:tensorrt-llm.server_overhead_ms.dynamo", "framework:tensorrt-llm.wave_persistence")
    index = {p.name: i for i, p in enumerate(fit.DEFAULT_PARAMETERS)}
    setup = fit.problem(rows=rows)
    catalog = {name: setup.start[index[name]] for name in names}
    assert all(catalog[n] != fit.DEFAULT_PARAMETERS[index[n]].initial for n in names)  # the test can tell them apart
    _, cold, _ = fit.fit(setup=setup, cold=True)
    assert [cold[index[n]] for n in names] == [20.0, 0.1]
    _, warm, _ = fit.fit(setup=setup)
    assert [warm[index[n]] for n in names] == [catalog[n] for n in names]


def test_fit_on_some_devices_reports_cold_and_writes_the_catalogs_values_where_its_rows_pin_nothing(tmp_path):
    """`quantplan fit --devices m1-max,m4 --write DIR`: the out-of-sample errors come from a cold fit (Dynamo's
    overhead, which no Apple row touches, at its fixed start); the catalog written keeps its own value there."""
    import json
    import shutil
    from importlib import resources
    from pathlib import Path

    from click.testing import CliRunner

    from quantplan.cli import cli

    shipped = Path(str(resources.files("quantplan.catalogs")))
    for name in ("frameworks.toml", "methods.toml", "models.toml"):
        shutil.copy(shipped / name, tmp_path / name)
    result = CliRunner().invoke(cli, ["fit", "--devices", "m1-max,m4", "--write", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert found["devices"] == ["m1-max", "m4"] and any(e["sample"] == "out-of-sample" for e in found["errors"])
    written = (tmp_path / "frameworks.toml").read_text()
    catalog = (shipped / "frameworks.toml").read_text()
    assert written.count("dynamo = 117.2") == catalog.count("dynamo = 117.2") == 1  # TensorRT-LLM's, kept
    setup = fit.problem(devices=("m1-max", "m4"))
    _, cold, _ = fit.fit(setup=setup, cold=True)
    name = "framework:tensorrt-llm.server_overhead_ms.dynamo"
    assert cold[next(i for i, p in enumerate(fit.DEFAULT_PARAMETERS) if p.name == name)] == 20.0
