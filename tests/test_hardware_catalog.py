"""The newer devices in catalogs/gpus.toml: rows parse, carry sources, and their dense rates are the
datasheet figures converted as the file's conventions say (hand-checked here)."""

from __future__ import annotations

import pytest

from quantplan.solver.catalog import builtin_catalog

NEW = ("mi300x", "mi325x", "mi355x", "gb200", "b300", "rtx5090", "rtx-pro-6000")


@pytest.fixture(scope="module")
def rows():
    return {g.id: g for g in builtin_catalog("gpus")["gpu"]}


def test_new_devices_parse_with_vendor_architecture_and_sources(rows, world):
    for device in NEW:
        row = rows[device]
        assert row.vendor in ("AMD", "NVIDIA") and row.architecture
        assert len(row.source) > 100 and ("nvidia.com" in row.source or "amd.com" in row.source
                                          or "ISSCC" in row.source), device
        assert device in world.gpus.by_id  # a plugin declares it (amd-gpus, nvidia-gpus)
    assert {rows[d].vendor for d in ("mi300x", "mi325x", "mi355x")} == {"AMD"}
    assert all(rows[d].interconnect == "infinity-fabric" and rows[d].compute_capability is None
               for d in ("mi300x", "mi325x", "mi355x"))


def test_amd_rates_are_dense_and_match_the_clock_arithmetic(rows):
    """MI300X: 304 CUs x 2,048 FP16 flop/clock x 2.1 GHz = 1,307.4 TFLOPS (AMD lists 2,614.9 with sparsity).
    MI355X: 256 CUs x 8,192 FP8 flop/clock x 2.4 GHz = 5,033.2 TFLOPS; FP16 half, FP4 double."""
    assert rows["mi300x"].tflops_fp16 == pytest.approx(304 * 2048 * 2.1e9 / 1e12, abs=0.05)
    assert rows["mi300x"].tflops_fp8 == pytest.approx(2 * rows["mi300x"].tflops_fp16, abs=0.1)
    assert rows["mi325x"].tflops_fp8 == rows["mi300x"].tflops_fp8  # same compute die, more memory
    assert (rows["mi325x"].memory_gb, rows["mi325x"].bandwidth_tb_s) == (256, 6.0)
    assert rows["mi355x"].tflops_fp8 == pytest.approx(256 * 8192 * 2.4e9 / 1e12, abs=0.05)
    assert rows["mi355x"].tflops_fp16 == pytest.approx(rows["mi355x"].tflops_fp8 / 2, abs=0.05)
    assert rows["mi355x"].tflops_fp4 == pytest.approx(256 * 16384 * 2.4e9 / 1e12, abs=0.05)
    assert rows["mi300x"].interconnect_gb_s == 7 * 128 / 2  # 896 GB/s aggregate bidirectional, per direction


def test_nvidia_rates_are_halves_of_the_sparse_headlines(rows):
    """GB200 NVL72 (per 72 GPUs, sparse): FP8 720 PF, FP16 360 PF, FP4 1,440 PF; HGX B300 (per 8): FP8 72 PF,
    FP16 36 PF, INT8 2 POPS, FP4 dense 108 PF; RTX 5090: FP16 838.4 sparse with FP16 accumulate, FP32
    accumulate at half; RTX PRO 6000: 4,000 FP4 TOPS sparse, FP4 = 4 x FP16 on GB202."""
    gb200, b300, rtx5090, pro = rows["gb200"], rows["b300"], rows["rtx5090"], rows["rtx-pro-6000"]
    assert (gb200.tflops_fp8, gb200.tflops_fp16, gb200.tflops_fp4) == (720e3 / 72 / 2, 360e3 / 72 / 2, 1440e3 / 72 / 2)
    assert gb200.usable_gb == pytest.approx(13.4e3 / 72, abs=0.2)
    assert (b300.tflops_fp8, b300.tflops_fp16, b300.tops_int8, b300.tflops_fp4) == (72e3 / 16, 36e3 / 16,
                                                                                     2e3 / 16, 108e3 / 8)
    assert rtx5090.tflops_fp16 == pytest.approx(838.4 / 2 / 2) and rtx5090.tflops_fp4 == pytest.approx(3352 / 2)
    assert pro.tflops_fp4 == 4000 / 2 and pro.tflops_fp16 == pro.tflops_fp4 / 4 / 2
    assert rtx5090.compute_capability == pro.compute_capability == 12.0 and b300.compute_capability == 10.3
    assert (pro.memory_gb, pro.bandwidth_tb_s, rtx5090.memory_gb) == (96, 1.792, 32)


def test_validation_rows_for_the_new_devices_carry_sources():
    """Public measurements (TensorRT-LLM perf overview, Oracle/AMD vLLM tables, two llama.cpp reports: the
    RTX 5090 one and the llm-tracker.info RTX PRO 6000 llama-bench page); MLPerf and the other reserved
    sources are not used."""
    from quantplan.solver import validate

    rows = [r for r in validate.load_rows() if r.gpu in NEW]
    counts = {device: sum(r.gpu == device for r in rows) for device in NEW}
    assert counts["gb200"] == 12 and counts["rtx-pro-6000"] == 12 and counts["mi300x"] == 12
    assert counts["rtx5090"] == 13  # one llama.cpp report; 12 AccelMark vLLM rows (validation_load_public.csv)
    for row in rows:
        assert len(row.source) > 30 and "mlperf" not in (row.source + row.note).lower(), row.id
    derived = [r for r in rows if r.gpu == "mi300x" and r.batch == 2 and r.model == "llama-3.1-70b"]
    assert derived[0].value == pytest.approx(2 * 2048 / 17.934, abs=0.01)  # batch x output / latency


def test_gb200_rows_are_predicted_like_the_b200_rows():
    """Same table and method as the shipped B200 rows: median error 8.7% when this was written."""
    from quantplan.solver import validate

    checks = validate.run(where={"gpu": "gb200"})
    errors = sorted(abs(c.error) for c in checks if c.gpu == "gb200" and c.error is not None)
    assert len(errors) == 12 and errors[len(errors) // 2] <= 0.15
