"""Typed records that plugins and catalogs declare: devices, methods, frameworks, models."""

from __future__ import annotations

import math
import re
import types
import typing
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, ValidationInfo, field_validator, model_validator

ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")

DeviceKind = Literal["gpu", "apple", "cpu"]
DeviceClass = Literal["datacenter", "consumer", "apple", "cpu"]
ComputeDtype = Literal["fp16", "bf16", "fp8", "int8", "fp4"]
KVDtype = Literal["fp16", "bf16", "fp8", "int8", "q8_0", "q4_0"]
MethodKind = Literal["float", "w8a8", "weight-only", "gguf", "fp4"]


class Record(BaseModel):
    """Frozen, strict base: unknown fields are errors, ids are lower-case, numbers are numbers, finite and
    within the plausible bounds below."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _scalar_types(cls, value, info: ValidationInfo):
        return scalar_types(cls, value, info)

    @field_validator("*", mode="after")
    @classmethod
    def _plausible(cls, value, info: ValidationInfo):
        return within_bounds(cls.__name__, value, info.field_name)


class Identified(Record):
    id: str
    name: str
    aliases: tuple[str, ...] = ()
    source: str = Field(min_length=3)

    @field_validator("id")
    @classmethod
    def _id_is_lower_case(cls, value: str) -> str:
        if not ID_PATTERN.match(value):
            raise ValueError(f"id {value!r} must be lower-case letters, digits, '.', '_' or '-'")
        return value


class GPUSpec(Identified):
    """One accelerator (or Apple SoC, or CPU socket). Tensor rates are dense, never 2:4 sparse."""

    kind: DeviceKind
    device_class: DeviceClass
    vendor: str
    architecture: str
    compute_capability: float | None = None
    memory_gb: float = Field(gt=0)
    usable_memory_gb: float | None = Field(default=None, gt=0)
    bandwidth_tb_s: float = Field(gt=0)
    tflops_fp16: float = Field(gt=0)
    tflops_bf16: float = Field(default=0.0, ge=0)
    tflops_fp8: float = Field(default=0.0, ge=0)
    tops_int8: float = Field(default=0.0, ge=0)
    tflops_fp4: float = Field(default=0.0, ge=0)
    interconnect: Literal["nvlink", "pcie", "infinity-fabric", "none"] = "pcie"
    interconnect_gb_s: float = Field(default=32.0, ge=0)
    max_devices_per_node: int = Field(default=8, ge=1)
    host_memory_gb: float = Field(default=0.0, ge=0)
    host_bandwidth_tb_s: float = Field(default=0.0, ge=0)
    rentable: bool = True  # False: a device one owns (a laptop); planned only when asked for by name
    # The architecture name engines' support tables use (volta, turing, ampere, ada, hopper, blackwell,
    # cdna3, cdna4, apple, cpu); derived from the compute capability or the architecture text when absent.
    arch: str | None = None

    @property
    def arch_id(self) -> str:
        if self.arch:
            return self.arch
        if self.kind != "gpu":
            return self.kind
        if self.vendor.lower() == "nvidia" and self.compute_capability is not None:
            return _nvidia_arch(self.compute_capability)
        text = self.architecture.lower().replace(" ", "")
        for name, marks in (("cdna4", ("cdna4", "gfx950")), ("cdna3", ("cdna3", "gfx942")),
                            ("cdna2", ("cdna2", "gfx90a")), ("rdna4", ("rdna4", "gfx12")), ("rdna3", ("rdna3", "gfx11"))):
            if any(mark in text for mark in marks):
                return name
        return self.vendor.lower()

    @model_validator(mode="after")
    def _usable_within_physical(self) -> GPUSpec:
        if self.usable_memory_gb is not None and self.usable_memory_gb > self.memory_gb:
            raise ValueError("usable_memory_gb exceeds memory_gb")
        return self

    @property
    def usable_gb(self) -> float:
        return self.usable_memory_gb if self.usable_memory_gb is not None else self.memory_gb

    def peak_tflops(self, dtype: ComputeDtype) -> float:
        """Dense tensor rate for `dtype`, 0.0 where the device has no native unit for it."""
        rates = {
            "fp16": self.tflops_fp16,
            "bf16": self.tflops_bf16 or self.tflops_fp16,
            "fp8": self.tflops_fp8,
            "int8": self.tops_int8,
            "fp4": self.tflops_fp4,
        }
        return rates[dtype]


def _nvidia_arch(cc: float) -> str:
    """NVIDIA's architecture for a compute capability (SM 7.0 Volta ... SM 10.x/12.x Blackwell)."""
    for floor, name in ((10.0, "blackwell"), (9.0, "hopper"), (8.9, "ada"), (8.0, "ampere"), (7.5, "turing")):
        if cc >= floor - 1e-9:
            return name
    return "volta"


class PriceSpec(Record):
    """One provider's on-demand price for one device, per device-hour (see catalogs/prices.toml)."""

    gpu: str
    usd_per_hour: float = Field(gt=0, allow_inf_nan=False)
    provider: str = Field(min_length=1)
    as_of: str
    source: str = Field(min_length=3)
    offering: str = ""  # the instance or product the price is for
    gpus_per_instance: int = Field(default=1, ge=1)
    instance_usd_per_hour: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    url: str = ""

    @model_validator(mode="after")
    def _per_device_matches_instance(self) -> PriceSpec:
        if self.instance_usd_per_hour is not None:
            derived = self.instance_usd_per_hour / self.gpus_per_instance
            if abs(derived - self.usd_per_hour) > 0.005 * self.usd_per_hour:
                raise ValueError(f"usd_per_hour {self.usd_per_hour:g} is not instance_usd_per_hour / "
                                 f"gpus_per_instance = {derived:.4g}")
        return self


class MethodSpec(Identified):
    """A weight quantization method: storage cost, compute path and kernel requirements."""

    kind: MethodKind
    linear_bits_per_weight: float = Field(gt=0, le=32)
    embedding_bits_per_weight: float = Field(gt=0, le=32)
    lm_head_bits_per_weight: float = Field(gt=0, le=32)
    bits_derivation: str
    compute_dtype: ComputeDtype
    weight_only: bool
    kernel: str
    act_order: bool = False
    min_compute_capability: float | None = None
    bandwidth_efficiency: float = Field(default=1.0, gt=0, le=1.2)
    compute_efficiency: float = Field(default=1.0, gt=0, le=1.2)
    efficiency_source: str = "unity: no kernel penalty assumed"


class KVCacheSpec(Identified):
    bytes_per_element: float = Field(gt=0)
    min_compute_capability: float | None = None


class KernelSpec(Identified):
    """A GEMM kernel family's share of a dense 16-bit GEMM, shared by every method that runs on it."""

    bandwidth_efficiency: float = Field(default=1.0, gt=0, le=1.2)
    compute_efficiency: float = Field(default=1.0, gt=0, le=1.2)
    efficiency_source: str


class FrameworkSpec(Identified):
    """A serving engine: what it runs, how much memory it keeps, and its per-step costs."""

    methods: tuple[str, ...]
    kv_cache_dtypes: tuple[str, ...]
    device_kinds: tuple[DeviceKind, ...]
    parallelism: Literal["tensor", "layer-split", "none"]
    max_gpus: int = Field(default=8, ge=1)
    hybrid_offload: bool = False
    weight_only_fallback: tuple[str, ...] = ()
    weight_only_fallback_min_cc: float = 8.0
    memory_reserve_fraction: float = Field(ge=0, lt=1)
    # what memory_reserve_fraction is a share of: the device's memory (vLLM's gpu_memory_utilization, SGLang's
    # mem_fraction_static) or the memory left free once weights, activations and runtime are placed
    # (TensorRT-LLM's kv_cache_free_gpu_mem_fraction)
    memory_reserve_of: Literal["device", "free"] = "device"
    runtime_overhead_gb: float = Field(ge=0)
    max_batched_tokens: int = Field(default=8192, ge=1)
    max_batch: int = Field(default=512, ge=1)
    step_overhead_ms: float = Field(ge=0)
    layer_overhead_us: float = Field(default=0.0, ge=0)
    # host time per decoding sequence per step (scheduler bookkeeping, sampling, detokenizing and
    # streaming each new token): grows with the batch whatever the GPUs do. Fitted (solver/fit.py).
    sequence_overhead_us: float = Field(default=0.0, ge=0)
    # host time per layer of a step that carries prompt tokens, on top of a decode step's: engines that
    # replay CUDA graphs for decode-only steps launch a prompt-carrying step's kernels one by one. Fitted.
    prompt_step_layer_overhead_us: float = Field(default=0.0, ge=0)
    bandwidth_efficiency: dict[DeviceClass, float]
    prefill_efficiency: float = Field(gt=0, le=1)
    prefill_efficiency_by_class: dict[DeviceClass, float] = Field(default_factory=dict)
    int8_kernel_efficiency: float = Field(default=1.0, gt=0, le=1)  # its quantized int8 GEMMs vs its dense path
    decode_compute_efficiency: float = Field(default=0.7, gt=0, le=1)
    allreduce_latency_us: float = Field(default=10.0, ge=0)
    efficiency_source: str
    # How the engine schedules under load (solver/serving.py): "mixed" puts prompt chunks into the
    # decode steps (vLLM V1, TensorRT-LLM in-flight batching, llama.cpp server, ExLlamaV2 dynamic
    # generator); "prefill-first" runs waiting prompts as their own batches, pausing decode (SGLang).
    scheduler: Literal["mixed", "prefill-first"] = "mixed"
    chunked_prefill: bool = True  # False: a prompt enters one step whole (TensorRT-LLM default)
    kv_reservation: Literal["paged", "reserved"] = "paged"  # reserved: prompt + output held from admission
    # Token budget per step by device memory: [[min_memory_gb, tokens], ...] (first row 0 GB);
    # exceptions by device id. Empty: max_batched_tokens on every device.
    token_budget_by_memory_gb: tuple[tuple[float, int], ...] = ()
    token_budget_exceptions: dict[str, int] = Field(default_factory=dict)
    max_seqs_by_memory_gb: tuple[tuple[float, int], ...] = ()  # default max running sequences
    kv_cache_default: dict[str, str] = Field(default_factory=dict)  # method id (or "*") -> KV format
    request_overhead_ms: float = Field(default=0.0, ge=0)  # added to every TTFT: HTTP, tokenizer, admission
    # Another API server in front of the engine (e.g. "nim"): its per-request TTFT overhead replaces
    # request_overhead_ms, which is the engine's own server. Rows and plans name the server.
    server_overhead_ms: dict[str, NonNegativeFloat] = Field(default_factory=dict)
    # Closed loops of identical requests start in a lockstep wave; 0: the engine spreads them out
    # (steady state of independent arrivals), 1: every round stays a wave. Fitted (solver/fit.py).
    wave_persistence: float = Field(default=0.0, ge=0, le=1)
    # Decode steps by which each first token reaches the client late: an overlap scheduler launches the
    # next step before handing out the last one's tokens (SGLang since v0.4). 0: handed out at once.
    first_token_steps: float = Field(default=0.0, ge=0, le=4)
    kernels: dict[str, str] = Field(default_factory=dict)  # method id -> the kernel this engine runs it on
    # What the engine runs on (its own support tables; `support_source`). Empty: no restriction.
    vendors: tuple[str, ...] = ()  # lower-case GPU vendors: nvidia, amd, apple, intel
    operating_systems: tuple[str, ...] = ()
    method_archs: dict[str, tuple[str, ...]] = Field(default_factory=dict)  # method id -> GPU arch ids
    kv_archs: dict[str, tuple[str, ...]] = Field(default_factory=dict)  # KV format -> GPU arch ids
    model_families: tuple[str, ...] = ()  # model families (ModelSpec.family) the engine loads; empty: every one
    # method id -> kernel used on a supported arch below the method's usual kernel's compute capability
    legacy_kernels: dict[str, str] = Field(default_factory=dict)
    support_source: str = ""
    scheduling_source: str = ""


class ModelSpec(Identified):
    """Transformer shapes from a Hugging Face config.json; parameter counts are derived from them."""

    family: str
    layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    attention_heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    num_experts: int = Field(default=0, ge=0)
    experts_per_token: int = Field(default=0, ge=0)
    moe_intermediate_size: int = Field(default=0, ge=0)
    shared_expert_intermediate_size: int = Field(default=0, ge=0)
    dense_layers: int = Field(default=0, ge=0)
    max_position_embeddings: int = Field(default=4096, gt=0)
    # MoE routing skew: concentration c of each expert's per-step pick probability, Beta(c k/E, c (1 - k/E))
    # (shapes.routed_share); 0 = uniform routing (no measurement)
    routing_concentration: float = Field(default=0.0, ge=0)
    routing_source: str = ""
    wikitext2_ppl: float = Field(gt=1)
    ppl_source: str
    params_reported_b: float | None = None

    @model_validator(mode="after")
    def _shapes_consistent(self) -> ModelSpec:
        if self.attention_heads % self.kv_heads:
            raise ValueError("attention_heads must be a multiple of kv_heads")
        if self.num_experts and not (0 < self.experts_per_token <= self.num_experts):
            raise ValueError("experts_per_token must be between 1 and num_experts")
        if self.num_experts and not self.moe_intermediate_size:
            raise ValueError("an MoE model needs moe_intermediate_size")
        if self.dense_layers >= self.layers and self.num_experts:
            raise ValueError(f"dense_layers (first_k_dense_replace) {self.dense_layers} leaves no MoE layer "
                             f"of {self.layers}")
        return self

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0


class MethodQualitySpec(Record):
    """Relative perplexity increase of a method at 7B for the reference family (llama-2)."""

    method: str
    relative_ppl_increase_at_7b: float = Field(ge=0)
    size_exponent: float = Field(default=0.0, ge=0, le=2)
    fitted_on: str
    source: str = Field(min_length=3)


class FamilyQualitySpec(Record):
    family: str
    sensitivity: float = Field(gt=0)
    source: str = Field(min_length=3)


class KVQualitySpec(Record):
    kv_dtype: str
    relative_ppl_increase: float = Field(ge=0)
    source: str = Field(min_length=3)


class UseCaseSpec(Record):
    id: str
    max_ppl_delta: float = Field(gt=0)
    max_kl_divergence: float = Field(gt=0)
    source: str = Field(min_length=3)


class CalibrationSpec(Record):
    """A framework's efficiencies on one device for one method, fitted to the user's own benchmark runs
    (`quantplan calibrate`). Each given figure replaces the framework's catalog value for this device,
    framework and method only; a figure left out keeps the catalog's."""

    gpu: str
    framework: str
    method: str
    bandwidth_efficiency: float | None = Field(default=None, gt=0, le=1.2)  # share of datasheet bandwidth
    prefill_efficiency: float | None = Field(default=None, gt=0, le=1)  # share of dense tensor peak, prompts
    step_overhead_ms: float | None = Field(default=None, ge=0)  # per engine step
    request_overhead_ms: float | None = Field(default=None, ge=0)  # per request, added to TTFT
    fitted_on: str = ""
    source: str = Field(min_length=3)


# ---------------------------------------------------------------- plausible physical bounds

# Generous but finite: a value beyond its bound is a typo or a unit slip (3350 TB/s for 3.35 TB/s,
# 8e10 GB for 80 GB), not hardware. The largest shipped values (catalogs/*.toml, 2026) are far inside:
# 512 GB and 8 TB/s per device, 9,000 dense FP4 TFLOPS, 900 GB/s NVLink, $8.60 per device-hour.
PLAUSIBLE_BOUNDS: dict[str, dict[str, tuple[float, float, str]]] = {
    "GPUSpec": {
        "memory_gb": (0, 16_384, "GB per device"),
        "usable_memory_gb": (0, 16_384, "GB per device"),
        "bandwidth_tb_s": (0, 100, "TB/s per device"),
        "tflops_fp16": (0, 100_000, "dense TFLOPS per device"),
        "tflops_bf16": (0, 100_000, "dense TFLOPS per device"),
        "tflops_fp8": (0, 100_000, "dense TFLOPS per device"),
        "tops_int8": (0, 100_000, "dense TOPS per device"),
        "tflops_fp4": (0, 100_000, "dense TFLOPS per device"),
        "compute_capability": (0.1, 20, "(CUDA compute capability, e.g. 9.0)"),
        "interconnect_gb_s": (0, 10_000, "GB/s per direction per device"),
        "max_devices_per_node": (1, 1024, "devices per node"),
        "host_memory_gb": (0, 65_536, "GB of host memory"),
        "host_bandwidth_tb_s": (0, 100, "TB/s of host bandwidth"),
    },
    "PriceSpec": {"usd_per_hour": (0.0001, 1_000, "$ per device-hour")},
    "ModelSpec": {
        "layers": (1, 10_000, "layers"),
        "hidden_size": (1, 1_000_000, ""),
        "attention_heads": (1, 100_000, "heads"),
        "kv_heads": (1, 100_000, "heads"),
        "head_dim": (1, 100_000, ""),
        "intermediate_size": (1, 10_000_000, ""),
        "vocab_size": (1, 100_000_000, "tokens"),
        "num_experts": (0, 100_000, "experts"),
        "experts_per_token": (0, 100_000, "experts"),
        "moe_intermediate_size": (0, 10_000_000, ""),
        "shared_expert_intermediate_size": (0, 10_000_000, ""),
        "dense_layers": (0, 10_000, "layers"),
        "max_position_embeddings": (1, 1_000_000_000, "tokens"),
        "wikitext2_ppl": (1, 10_000, ""),
        "params_reported_b": (0, 1_000_000, "billion parameters"),
    },
}


def within_bounds(record: str, value, field: str | None):
    """`value` unchanged when finite and inside its PLAUSIBLE_BOUNDS entry; else a ValueError saying so."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    bounds = PLAUSIBLE_BOUNDS.get(record, {}).get(field or "")
    if bounds is None or value is None:
        return value
    low, high, unit = bounds
    if not low <= value <= high:
        hint = " (a unit slip?)" if value > high else ""
        raise ValueError(f"{value:g} is outside the plausible range {low:g} to {high:g} {unit}".rstrip() + hint)
    return value


def _allowed_types(annotation) -> set[type]:
    """The scalar types an annotation admits (unions and Optionals flattened)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return set().union(*(_allowed_types(a) for a in typing.get_args(annotation)))
    return {annotation} if isinstance(annotation, type) else set()


def scalar_types(cls, value, info: ValidationInfo):
    """Reject a boolean where a number is declared, a number where a boolean is, and a string where a
    number is: TOML's and JSON's `true` is not 1, `1` is not true, and `"512"` is not 512."""
    field = cls.model_fields.get(info.field_name or "")
    if field is None:
        return value
    allowed = _allowed_types(field.annotation)
    numeric = bool(allowed & {int, float})
    if isinstance(value, bool):
        if numeric and bool not in allowed:
            raise ValueError(f"expected a number, got {str(value).lower()}")
    elif bool in allowed and not numeric and isinstance(value, (int, float, str)) and str not in allowed:
        raise ValueError(f"expected true or false, got {value!r}")
    elif numeric and isinstance(value, str) and str not in allowed:
        raise ValueError(f"expected a number, got the string {value!r}")
    return value
