"""Estimators against hand-computed values and cited measurements (catalogs/measurements.csv)."""

from __future__ import annotations

import math

import pytest

from quantplan.plugins.builtin.methods import bytes_read_per_step, weight_bytes
from quantplan.solver import shapes
from quantplan.solver.api import estimate
from quantplan.solver.candidates import Config, Execution, Step
from quantplan.solver.estimator import memory, step_terms, step_time

GIB = 1024**3


def config(world, model="llama-2-7b", method="fp16", gpu="a100-80gb", framework="vllm", kv="fp16",
           gpus=1, batch=1) -> Config:
    m = world.methods.get(method)
    return Config(world.models.get(model), m, world.gpus.get(gpu), world.frameworks.get(framework),
                  world.kv_caches.get(kv), gpus, Execution(m.compute_dtype, m.weight_only, m.kernel), batch)


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("model, params", [
    ("llama-2-7b", 6_738_415_616),  # reference catalog_models.csv total_params_computed
    ("llama-2-70b", 68_976_648_192),
    ("llama-3.1-8b", 8_030_261_248),
    ("llama-3.1-405b", 405_853_388_800),
    ("mixtral-8x7b", 46_702_792_704),
    ("qwen2.5-7b", 7_615_616_512),
])
def test_parameter_counts_from_shapes_match_config_counts(world, model, params):
    assert shapes.parameter_counts(world.models.get(model)).total == params


def test_mixtral_active_parameters(world):
    """Two of eight experts: 12,879,925,248 active parameters (reference catalog_models.csv)."""
    model = world.models.get("mixtral-8x7b")
    counts = shapes.parameter_counts(model)
    active = shapes.active_linear_params(model) + counts.embedding + counts.lm_head + counts.norms
    assert active == 12_879_925_248


@pytest.mark.parametrize("model, bytes_per_token", [
    ("llama-2-70b", 327_680),  # 2 x 80 layers x 8 KV heads x 128 x 2 bytes
    ("llama-2-7b", 524_288),  # 2 x 32 x 32 x 128 x 2 (MHA)
    ("llama-3.1-8b", 131_072),  # 2 x 32 x 8 x 128 x 2
    ("qwen2.5-7b", 57_344),  # 2 x 28 x 4 x 128 x 2
])
def test_kv_cache_bytes_per_token_fp16(world, model, bytes_per_token):
    assert shapes.kv_elements_per_token(world.models.get(model)) * 2 == bytes_per_token


def test_kv_heads_split_over_tensor_parallel_and_replicated_below_one(world):
    model = world.models.get("llama-3.1-70b")  # 8 KV heads
    assert shapes.kv_heads_per_gpu(model, 2) == 4
    assert shapes.kv_heads_per_gpu(model, 8) == 1
    assert shapes.kv_heads_per_gpu(world.models.get("qwen2.5-7b"), 8) == 1  # 4 heads: replicated


def test_experts_touched_grows_with_tokens(world):
    model = world.models.get("mixtral-8x7b")
    assert shapes.experts_touched_fraction(model, 1) == pytest.approx(2 / 8)
    assert shapes.experts_touched_fraction(model, 2) == pytest.approx(1 - (6 / 8) ** 2)
    assert shapes.experts_touched_fraction(model, 512) == pytest.approx(1.0)


# ---------------------------------------------------------------- memory


def _model_bits_per_weight(world, model, method):
    parts = weight_bytes(config(world, model, method))
    return sum(parts.values()) * 8 / shapes.parameter_counts(world.models.get(model)).total


@pytest.mark.parametrize("row, method", [(1, "fp16"), (2, "gguf-q8_0"), (3, "gguf-q6_k"), (4, "gguf-q5_k_m"),
                                         (6, "gguf-q4_k_m"), (9, "gguf-q3_k_m"), (11, "gguf-q2_k")])
def test_gguf_bits_per_weight_llama31_8b_within_3_percent(world, measurements, row, method):
    """llama.cpp quantize README whole-model b/w for Llama-3.1-8B (the rows the linear b/w were fitted on)."""
    measured = float(measurements[row]["value"])
    assert _model_bits_per_weight(world, "llama-3.1-8b", method) == pytest.approx(measured, rel=0.03)


@pytest.mark.parametrize("row, method", [(51, "fp16"), (52, "gguf-q6_k"), (53, "gguf-q4_k_m"),
                                         (54, "gguf-q4_0"), (55, "gguf-q3_k_m")])
def test_gguf_file_sizes_llama2_70b_within_3_percent(world, measurements, row, method):
    """Held out from the fit: Llama-2-70B GGUF sizes (GiB) from the llama.cpp perplexity scorechart."""
    measured = float(measurements[row]["value"]) * GIB
    predicted = sum(weight_bytes(config(world, "llama-2-70b", method)).values())
    assert predicted == pytest.approx(measured, rel=0.03)


def test_awq_checkpoint_size_llama2_70b(world, measurements):
    """TheBloke/Llama-2-70B-AWQ shards total 36.61 GB (row 273): 4.156 b/w linear + FP16 embeddings/head."""
    predicted = sum(weight_bytes(config(world, "llama-2-70b", "awq-int4")).values())
    assert predicted == pytest.approx(float(measurements[273]["value"]) * 1e9, rel=0.03)


def test_llama31_8b_q4_k_m_file_size(world, measurements):
    """Row 26: 4.9 GB (README 'Memory/Disk Requirements')."""
    predicted = sum(weight_bytes(config(world, "llama-3.1-8b", "gguf-q4_k_m")).values())
    assert predicted / 1e9 == pytest.approx(float(measurements[26]["value"]), rel=0.03)


def test_kv_cache_memory_llama2_70b_split_over_two_gpus(world):
    """1000 + 1000 tokens x 4 sequences x 327,680 B, halved per GPU at TP2 (8 KV heads split 4 + 4)."""
    c = config(world, "llama-2-70b", gpus=2, batch=4)
    used = memory(world, c, 2000)
    assert used.kv_per_gpu == pytest.approx(327_680 * 2000 * 4 / 2)
    assert used.weights_per_gpu == pytest.approx(68_976_648_192 * 2 / 2)


def test_tensorrt_llm_keeps_a_tenth_of_the_free_memory_back(world):
    """TensorRT-LLM sizes its KV cache as kv_cache_free_gpu_mem_fraction (0.9) of the memory left once the engine is
    loaded. Llama-3.1-70B FP8 on 2x H100, 100 sequences of 5,000 + 500 tokens: 36.36 GB of weights per GPU, an
    activation workspace of 8,192 tokens x (2 x 28,672 / 2 + 4 x 8,192) x 2 B = 1.007 GB and 1.5 GB of runtime leave
    41.13 GB free, of which 4.113 GB is kept back: 75.89 GB available, not vLLM's 72. The KV cache then holds
    (75.89 - 36.36 - 2.507) / (5,500 x 81,920 B) = 82 sequences (74 at 90% of the device)."""
    c = config(world, "llama-3.1-70b", method="fp8", gpu="h100-sxm", framework="tensorrt-llm", kv="fp8", gpus=2,
               batch=100)
    used = memory(world, c, 5500)
    activations = 8192 * (2 * 28672 / 2 + 4 * 8192) * 2
    assert used.activations_per_gpu == pytest.approx(activations)
    free = 80e9 - used.weights_per_gpu - activations - 1.5e9
    assert used.weights_per_gpu == pytest.approx(36.36e9, rel=1e-3)
    assert used.reserved_per_gpu == pytest.approx(0.1 * free)
    assert used.available_per_gpu == pytest.approx(75.89e9, rel=1e-4)
    room = used.available_per_gpu - used.weights_per_gpu - activations - 1.5e9
    assert int(room // (5500 * 81920)) == 82


def test_vllm_reserve_and_fit(world):
    """vLLM keeps 10% back: 72 of 80 GB available; 70B FP16 (138 GB) cannot fit one A100."""
    used = memory(world, config(world, "llama-2-70b"), 2048)
    assert used.available_per_gpu == pytest.approx(72e9)
    assert not used.fits


def test_hybrid_offload_keeps_gpu_within_memory(world):
    result = estimate("llama-3.1-70b", "gguf-q4_k_m", "rtx4090", "llama.cpp", world=world)
    assert result.fits and 0 < result.gpu_layers < 80
    assert result.memory_gb_per_gpu <= result.memory_capacity_gb_per_gpu
    assert result.host_memory_gb > 0


# ---------------------------------------------------------------- speed


def test_decode_step_by_hand_llama2_7b_fp16_a100(world):
    """Batch 1, context 192: bytes = layers + lm_head + KV; time = bytes / (2.039 TB/s x vLLM's fitted
    datacenter share) + vLLM's fitted per-step overhead + its host time for the one decoding sequence."""
    c = config(world)
    counts = shapes.parameter_counts(c.model)
    weights = (counts.linear_total + counts.norms + counts.lm_head) * 2
    kv = 192 * 524_288
    share, overhead_ms = c.framework.bandwidth_efficiency["datacenter"], c.framework.step_overhead_ms
    found = step_terms(world, c, Step("decode", 1, 1, 192))
    time = step_time(found, "decode")
    assert time.memory_s == pytest.approx((weights + kv) / (2.039e12 * share))
    assert time.bound == "memory"
    host_s = c.framework.sequence_overhead_us / 1e6 * 1
    assert time.seconds == pytest.approx(time.memory_s + overhead_ms / 1e3 + host_s)


@pytest.mark.parametrize("model, method, gpu, framework, gpus, batch", [
    ("llama-3.1-8b", "fp16", "h100-sxm", "vllm", 1, 1),
    ("llama-3.1-70b", "fp8", "h100-sxm", "tensorrt-llm", 2, 8),
    ("llama-2-7b", "awq-int4", "rtx4090", "vllm", 1, 32),
    ("mixtral-8x7b", "awq-int4", "a100-80gb", "vllm", 2, 4),
    ("llama-2-7b", "gguf-q4_k_m", "m2-max", "llama.cpp", 1, 1),
])
def test_no_plan_decodes_faster_than_bandwidth_allows(world, model, method, gpu, framework, gpus, batch):
    """TPOT >= bytes each GPU must read per step / datasheet bandwidth."""
    c = config(world, model, method, gpu, framework, gpus=gpus, batch=batch)
    layers, head = bytes_read_per_step(c, batch)
    floor_s = (layers + head) / gpus / (c.gpu.bandwidth_tb_s * 1e12)
    result = estimate(model, method, gpu, framework, gpus=gpus, batch=batch, world=world)
    assert result.tpot_ms / 1e3 >= floor_s
    assert result.decode_tokens_per_s <= batch / floor_s


def test_weight_only_int4_loses_its_advantage_at_large_batch(world):
    """At batch 1 INT4 decodes faster than BF16 (fewer bytes); at large batch the dequant cost wins."""
    def tpot(method, batch):
        return estimate("llama-3.1-8b", method, "h200", "tensorrt-llm", batch=batch, prompt_tokens=2048,
                        output_tokens=128, world=world).tpot_ms
    assert tpot("awq-int4", 1) < tpot("bf16", 1)
    assert tpot("awq-int4", 256) > tpot("bf16", 256)


def test_tensor_parallel_adds_allreduce_time(world):
    c = config(world, "llama-3.1-70b", "fp8", "h100-sxm", "vllm", gpus=4)
    found = step_terms(world, c, Step("decode", 1, 1, 512))
    comm = [t for t in found if "all-reduce" in t.detail]
    assert len(comm) == 1
    # 2 per layer x 80 layers x (2 x 3/4 x 8192 x 2 B / 450 GB/s + vLLM's fitted all-reduce latency)
    latency = c.framework.allreduce_latency_us * 1e-6
    assert comm[0].value == pytest.approx(160 * (1.5 * 8192 * 2 / 450e9 + latency))


def test_fp8_runs_weight_only_on_ampere_in_vllm_and_not_in_tensorrt(world):
    vllm = estimate("llama-3.1-8b", "fp8", "a100-80gb", "vllm", world=world)
    trt = estimate("llama-3.1-8b", "fp8", "a100-80gb", "tensorrt-llm", world=world)
    assert vllm.compatible and "Marlin" in vllm.execution
    assert not trt.compatible and "fp8" in trt.reasons[0]


def test_marlin_needs_ampere(world):
    """vLLM's table runs AWQ on Turing with its non-Marlin kernel; SGLang only has Marlin (Ampere+)."""
    vllm = estimate("llama-2-7b", "awq-int4", "t4", "vllm", world=world)
    assert vllm.compatible and "awq-gemm" in vllm.execution
    sglang = estimate("llama-2-7b", "awq-int4", "t4", "sglang", world=world)
    assert not sglang.compatible and "turing" in sglang.reasons[0]


def test_tensorrt_has_no_apple_path(world):
    result = estimate("llama-2-7b", "fp16", "m2-max", "tensorrt-llm", world=world)
    assert not result.compatible and "apple" in result.reasons[0]


# ---------------------------------------------------------------- quality

QUALITY_ROWS = [  # (fp16 row, quantized row, model, method): llama.cpp perplexity, ctx 512
    (29, 30, "llama-3-8b", "gguf-q8_0"), (29, 31, "llama-3-8b", "gguf-q6_k"), (29, 32, "llama-3-8b", "gguf-q5_k_m"),
    (29, 33, "llama-3-8b", "gguf-q4_k_m"), (29, 37, "llama-3-8b", "gguf-q4_0"),
    (43, 44, "llama-2-70b", "gguf-q6_k"), (43, 45, "llama-2-70b", "gguf-q5_k_m"),
    (43, 46, "llama-2-70b", "gguf-q4_k_m"), (43, 48, "llama-2-70b", "gguf-q4_0"),
]
# Misses of the quality model, kept visible rather than dropped (v2 fits Llama-3-8B Q4_0: +0.49 vs +0.47):
KNOWN_MISSES: set = set()


@pytest.mark.parametrize("base, row, model, method", QUALITY_ROWS)
def test_ppl_delta_within_005_or_25_percent(world, measurements, base, row, model, method):
    """Target: |predicted - measured| <= max(0.05, 25%) for 4-bit and above, on the model's own baseline."""
    from quantplan.solver.estimator import quality

    measured_relative = float(measurements[row]["value"]) / float(measurements[base]["value"]) - 1
    c = config(world, model, method, "rtx4090", "llama.cpp")
    predicted = quality(world, c)
    baseline = world.models.get(model).wikitext2_ppl
    error = abs(predicted.ppl_delta - measured_relative * baseline)
    within = error <= max(0.05, 0.25 * measured_relative * baseline)
    assert within != ((base, row) in KNOWN_MISSES)


def test_llama3_degrades_more_than_llama2(world):
    """Llama-3 loses about 2x (measured Q4_K_M pair 1.98; model v2 2.9 at 7-8B) to 2-5x (70B) the relative
    ppl of Llama-2; within Llama-3, 70B loses more relative ppl than 8B, the absolute increase stays
    within a factor 2, and task recovery improves with size (DESIGN.md 'Quality')."""
    from quantplan.solver.estimator import quality

    q = lambda model: quality(world, config(world, model, "gguf-q4_k_m", "h100-sxm", "llama.cpp"))  # noqa: E731
    l3, l2, l3_70, l2_70 = q("llama-3.1-8b"), q("llama-2-7b"), q("llama-3-70b"), q("llama-2-70b")
    assert 1.5 < l3.relative / l2.relative < 3.0
    assert 2.0 < l3_70.relative / l2_70.relative < 5.0
    assert l3_70.relative > l3.relative and 0.5 < l3_70.ppl_delta / l3.ppl_delta < 2.0
    assert all(l3_70.recovery_pct[k] > l3.recovery_pct[k] for k in l3.recovery_pct)


def test_kv_cache_precision_adds_quality_cost(world):
    from quantplan.solver.estimator import quality

    plain = quality(world, config(world, "llama-3.1-8b", "fp16", "rtx4090", "llama.cpp", kv="fp16"))
    q4 = quality(world, config(world, "llama-3.1-8b", "fp16", "rtx4090", "llama.cpp", kv="q4_0"))
    assert plain.relative == 0.0 and q4.relative > 0.0


def test_cost_per_million_tokens_by_hand(world):
    result = estimate("llama-2-7b", "fp16", "a100-80gb", "vllm", batch=8, world=world)
    assert result.cost_per_million_tokens == pytest.approx(result.cost_per_hour / (result.tokens_per_s * 3600) * 1e6)
    assert math.isfinite(result.cost_per_million_tokens)


def test_a_plugins_share_of_free_memory_kept_back_must_be_below_one():
    """reserved_free_share keeps back a share of the memory weights, activations and runtime leave free: at 1 or more
    no KV cache fits anywhere, a silent wrong answer, so such a term drops its plugin like any bad number."""
    from quantplan.plugins.results import problem_with
    from quantplan.solver.terms import RESERVED_FREE_SHARE, Term

    def problem(value) -> str | None:
        return problem_with("quantplan_memory_terms", [Term(RESERVED_FREE_SHARE, value, "test", "a share")])

    assert problem(0.1) is None and problem(0.0) is None
    assert "below 1" in problem(1.0)
    assert "negative" in problem(-0.1)
