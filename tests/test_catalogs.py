"""Every catalog row carries its source, and derived figures say how they were derived."""

from __future__ import annotations

import pytest

from quantplan.solver.catalog import builtin_catalog

CATALOGS = ("gpus", "prices", "models", "methods", "frameworks", "quality")


@pytest.mark.parametrize("name", CATALOGS)
def test_every_row_names_its_source(name):
    for table, rows in builtin_catalog(name).items():
        assert rows, f"{name}.toml [[{table}]] is empty"
        for row in rows:
            assert len(row.source) >= 10, f"{name}.toml [[{table}]] {getattr(row, 'id', row)} has no real source"


def test_methods_and_frameworks_say_how_their_figures_were_made():
    for method in builtin_catalog("methods")["method"]:
        assert len(method.bits_derivation) >= 10, method.id
        if method.bandwidth_efficiency != 1.0 or method.compute_efficiency != 1.0:
            assert "unity" not in method.efficiency_source, method.id
    for framework in builtin_catalog("frameworks")["framework"]:
        assert len(framework.efficiency_source) >= 20, framework.id


def test_model_baselines_are_sourced_or_marked_as_estimates():
    for model in builtin_catalog("models")["model"]:
        assert len(model.ppl_source) >= 10, model.id


def test_prices_have_a_provider_and_a_date():
    for price in builtin_catalog("prices")["price"]:
        assert price.provider and price.as_of, price.gpu


def test_dense_tensor_rates_are_not_sparse_headlines():
    """NVIDIA's datasheets quote 2:4 sparse rates; the catalog keeps dense ones (H100 SXM: 989.4 BF16)."""
    gpus = {g.id: g for g in builtin_catalog("gpus")["gpu"]}
    assert gpus["h100-sxm"].tflops_bf16 == pytest.approx(989.4)
    assert gpus["l40s"].tflops_fp16 == pytest.approx(362.05, rel=0.01)
    assert gpus["l4"].tflops_fp16 == pytest.approx(121, rel=0.01)
    assert gpus["a100-80gb"].tflops_fp8 == 0  # no FP8 tensor cores on Ampere


def test_engines_without_served_latency_rows_take_the_smallest_fitted_request_overhead():
    """llama.cpp and ExLlamaV2 have no latency-under-load rows to fit their API server's per-request
    TTFT overhead on; frameworks.toml gives them the smallest fitted engine's, and a refit must move them."""
    frameworks = {f.id: f for f in builtin_catalog("frameworks")["framework"]}
    fitted = min(frameworks[name].request_overhead_ms for name in ("vllm", "tensorrt-llm", "sglang"))
    assert frameworks["llama.cpp"].request_overhead_ms == fitted
    assert frameworks["exllamav2"].request_overhead_ms == fitted
