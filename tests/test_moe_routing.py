"""MoE under load: distinct experts a step touches, skewed routing, the busiest expert-parallel device."""

from __future__ import annotations

import math
import re
import shutil
from importlib import resources

import numpy as np
import pytest
from scipy.stats import binom

from quantplan.solver import fit, shapes, validate
from quantplan.solver.stepmodel import step_model

QWEN3_235B = "qwen3-235b-a22b"  # 128 experts, top-8, 94 layers


@pytest.mark.parametrize("count, expected", [(1, 0.0), (2, 1 / math.sqrt(math.pi)), (4, 1.02938), (8, 1.42360)])
def test_expected_largest_of_standard_normals(count, expected):
    """Order-statistics table values: E[max of 2] = 1/sqrt(pi), of 4 = 1.02938, of 8 = 1.42360."""
    assert shapes.expected_max_normal(count) == pytest.approx(expected, abs=2e-4)


def test_uniform_routing_touches_one_minus_the_miss_probability():
    """Top-8 of 128: 4 tokens miss a given expert with probability (120/128)^4 = 0.772476..."""
    assert shapes.routed_share(8 / 128, 4) == pytest.approx(1 - (15 / 16) ** 4, rel=1e-12)
    assert shapes.routed_share(8 / 128, 4) == pytest.approx(0.227524, abs=1e-6)
    assert shapes.routed_share(0.0, 4) == 0.0  # dense


def test_skewed_routing_keeps_one_token_and_touches_fewer_experts_with_more():
    """Beta(c k/E, c (1 - k/E)) pick probabilities, c = 1, k/E = 1/16: a = 1/16, b = 15/16.
    One token: E[1 - q] = b / (a + b) = 15/16, the uniform miss. Two tokens: E[(1 - q)^2] =
    b (b + 1) / ((a + b)(a + b + 1)) = (15/16)(31/16) / 2 = 0.908203125, so 0.091796875 touched
    (uniform: 1 - (15/16)^2 = 0.12109375)."""
    assert shapes.routed_share(1 / 16, 1, concentration=1.0) == pytest.approx(1 / 16, rel=1e-12)
    assert shapes.routed_share(1 / 16, 2, concentration=1.0) == pytest.approx(0.091796875, rel=1e-12)
    assert shapes.routed_share(1 / 16, 2) == pytest.approx(0.12109375, rel=1e-12)
    # very concentrated routing tends to uniform as c grows
    assert shapes.routed_share(1 / 16, 64, concentration=1e6) == pytest.approx(1 - (15 / 16) ** 64, rel=1e-4)


def test_busiest_expert_parallel_device():
    """E = 128 over D = 4 devices (32 experts each), 4 tokens: f = 0.227524; the busiest device reads
    f + z_4 sqrt(f (1 - f) / 32) = 0.227524 + 1.02938 x 0.419232 / 5.656854 = 0.303811."""
    imbalance = shapes.rank_imbalance(128, 4)
    assert imbalance == pytest.approx(1.02938 / math.sqrt(32), rel=1e-4)
    assert shapes.routed_share(8 / 128, 4, imbalance=imbalance) == pytest.approx(0.303811, abs=2e-5)
    assert shapes.rank_imbalance(128, 1) == 0.0
    assert shapes.routed_share(8 / 128, 4096, imbalance=imbalance) == pytest.approx(1.0)  # every expert touched


@pytest.mark.parametrize("devices, tokens", [(4, 4), (4, 16), (8, 4), (8, 32)])
def test_normal_approximation_of_the_busiest_device_against_the_exact_binomial(devices, tokens):
    """Independent Binomial(m, f) counts on D devices: E[max] = sum_j (1 - F(j)^D) exactly; the closed
    form the step model uses stays within 3% of it at the batch sizes the validation rows cover."""
    m, f = 128 // devices, 1 - (15 / 16) ** tokens
    exact = float(np.sum(1 - binom.cdf(np.arange(m), m, f) ** devices)) / m
    closed = shapes.routed_share(8 / 128, tokens, imbalance=shapes.rank_imbalance(128, devices))
    assert closed == pytest.approx(exact, rel=0.03)


def test_scalar_and_array_forms_agree():
    tokens = np.array([1.0, 3.0, 17.0, 250.0])
    for concentration, imbalance in ((0.0, 0.0), (9.4, 0.0), (9.4, shapes.rank_imbalance(128, 8))):
        arrays = shapes.routed_share(1 / 16, tokens, concentration, imbalance)
        scalars = [shapes.routed_share_scalar(1 / 16, t, concentration, imbalance) for t in tokens]
        assert arrays == pytest.approx(scalars, rel=1e-12)


def _config(expert_parallel: int):
    world = validate.validation_world()
    row = next(r for r in validate.load_rows() if r.model == QWEN3_235B and r.gpus == 4
               and r.expert_parallel == 4)
    return world, validate._config(world, row.model_copy(update={"expert_parallel": expert_parallel}))


def test_expert_parallel_step_waits_for_the_busiest_device():
    """Same replica, experts split whole over 4 devices instead of sliced: the routed expert bytes per
    device are the same, a decode step of 4 reads the busiest device's share instead of the mean."""
    world, sliced = _config(1)
    _, whole = _config(4)
    assert whole.key.endswith("kv-fp8") and "/tp4/ep4/" in whole.key and "/ep" not in sliced.key
    a, b = step_model(world, sliced, 512, 128), step_model(world, whole, 512, 128)
    assert b.expert_bytes == pytest.approx(a.expert_bytes, rel=1e-9)
    assert b.weight_bytes == pytest.approx(a.weight_bytes, rel=1e-9)
    concentration = world.models.get(QWEN3_235B).routing_concentration
    mean = shapes.routed_share(1 / 16, 4, concentration)
    busiest = shapes.routed_share(1 / 16, 4, concentration, shapes.rank_imbalance(128, 4))
    extra = a.expert_bytes * (busiest - mean) / a.bandwidth
    assert b.seconds(4, 0) - a.seconds(4, 0) == pytest.approx(extra, rel=1e-6)
    assert extra > 0


def test_validation_rows_carry_the_sources_expert_parallel_size():
    """AIConfigurator's Qwen3-235B runs name moe_ep in the row note; the column holds it. The held-out
    Qwen3-235B rows (GPUStack's 8x A100 page, p728-p745) ran without --enable-expert-parallel, and the SGLang
    cookbook's 8x B200 runs (p936-p948) with --tp 8 and no --ep: the held-out file has no expert_parallel column,
    so they read as 1."""
    held = [r for r in validate.load_rows() if r.model == QWEN3_235B and r.held_out]
    assert len(held) == 31 and all(r.expert_parallel == 1 for r in held)
    assert all("no --ep given" in r.note for r in held if r.source.startswith("sgl-project/sgl-cookbook"))
    rows = [r for r in validate.load_rows() if r.model == QWEN3_235B and not r.held_out]
    assert len(rows) == 252
    for row in rows:
        assert re.search(rf"moe_ep{row.expert_parallel}\b", row.note), row.id
    assert all(r.expert_parallel == 1 for r in validate.load_rows() if r.model != QWEN3_235B)
    bad = rows[0].model_copy(update={"expert_parallel": 3})
    with pytest.raises(ValueError, match="expert_parallel 3"):
        validate._config(validate.validation_world(), bad)


def test_routing_concentration_is_fitted_and_written_to_the_model_catalog(tmp_path):
    parameter = next(p for p in fit.DEFAULT_PARAMETERS if p.kind == "model")
    assert parameter.name == f"model:{QWEN3_235B}.routing_concentration"
    with resources.as_file(resources.files("quantplan.catalogs").joinpath("models.toml")) as path:
        shutil.copy(path, tmp_path / "models.toml")
    fit.write_catalog([parameter], [5.5], tmp_path)
    text = (tmp_path / "models.toml").read_text()
    block = text[text.index(f'id = "{QWEN3_235B}"'):]
    block = block[:block.index("[[model]]") if "[[model]]" in block else len(block)]
    assert "\nrouting_concentration = 5.5\n" in block
    assert text.count("routing_concentration = ") == 1


def _estimate(*extra):
    from click.testing import CliRunner

    from quantplan.cli import cli

    return CliRunner().invoke(cli, ["estimate", "--model", QWEN3_235B, "--method", "fp8", "--gpu", "h100-sxm",
                                    "--framework", "tensorrt-llm", "--gpus", "4", "--concurrency", "4",
                                    "--prompt-tokens", "512", "--output-tokens", "128", *extra])


def test_estimate_with_expert_parallel_reads_the_busiest_devices_experts():
    """TP4 at 4 clients: whole experts on 4 devices make a decode step wait for the busiest device, so
    TPOT rises; the step model's own difference (test above) is what the closed loop carries."""
    import json

    sliced, whole = (json.loads(_estimate("--json", "--expert-parallel", n).output) for n in ("1", "4"))
    assert (sliced["expert_parallel"], whole["expert_parallel"]) == (1, 4)
    assert whole["tpot_ms"] > sliced["tpot_ms"] * 1.05


@pytest.mark.parametrize("size, words", [("3", "must divide --gpus 4"), ("0", "must be positive")])
def test_estimate_rejects_an_expert_parallel_size_the_replica_cannot_hold(size, words):
    result = _estimate("--expert-parallel", size)
    assert result.exit_code == 2
    assert words in result.output and len(result.output.strip().splitlines()) == 1


def test_llama_cpp_moe_prompt_runs_its_routed_experts_at_the_measured_share(world):
    """llama.cpp's routed-expert GEMMs get a micro-batch's tokens x k / E each: a MoE prompt step's compute share is
    1 / ((1 - s) + s / e), e = 0.13 at 32 tokens per expert (Qwen3-30B-A3B: 512 x 8 / 128), growing with the tokens
    (Mixtral 8x7B: 512 x 2 / 8 = 128 tokens, e = 0.13 x 4 = 0.52), held at 0.13 below 32; dense models and decode
    steps get no such term."""
    from quantplan.plugins.builtin import llama_cpp
    from quantplan.solver.candidates import Config, Step
    from quantplan.solver.estimator import step_terms
    from quantplan.solver.space import execution_of
    from quantplan.solver.terms import COMPUTE_EFFICIENCY

    def share(model_id: str, step: Step):
        model = world.models.get(model_id)
        m, g, f = world.methods.get("gguf-q4_k_m"), world.gpus.get("h100-sxm"), world.frameworks.get("llama.cpp")
        config = Config(model, m, g, f, world.kv_caches.get("fp16"), 1, execution_of(world, m, g, f), 1)
        found = [t.value for t in step_terms(world, config, step)
                 if t.quantity == COMPUTE_EFFICIENCY and "routed experts" in t.detail]
        counts = shapes.parameter_counts(model)
        routed = counts.moe_layers * model.experts_per_token * counts.expert_size
        return found, routed / (counts.dense_linear + routed)

    for model_id, prompt, expected_e in (("qwen3-30b-a3b", 512, 0.13), ("qwen3-30b-a3b", 4000, 0.13),
                                         ("qwen3-30b-a3b", 100, 0.13), ("mixtral-8x7b", 512, 0.52)):
        found, s = share(model_id, Step("prefill", 1, prompt, prompt))
        assert found == [pytest.approx(1 / ((1 - s) + s / expected_e))], (model_id, prompt)
    assert llama_cpp.ROUTED_PREFILL_EFFICIENCY_AT_32 == 0.13
    assert share("qwen3-30b-a3b", Step("decode", 8, 8, 1000))[0] == []
    assert share("llama-3.1-8b", Step("prefill", 1, 512, 512))[0] == []
