"""Plain-data records the estimator works on: configurations, execution paths, steps, quality book."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .quality_data import method_bits
from .quality_model import Case, QualityModel, shipped
from .specs import (
    FamilyQualitySpec,
    FrameworkSpec,
    GPUSpec,
    KVCacheSpec,
    KVQualitySpec,
    MethodQualitySpec,
    MethodSpec,
    ModelSpec,
    UseCaseSpec,
)


@dataclass(frozen=True)
class Execution:
    """How a framework runs a method on a device: the tensor-core precision and the kernel."""

    compute_dtype: str = "fp16"
    weight_only: bool = True
    kernel: str = ""
    note: str = ""
    reason: str = ""  # non-empty: cannot run
    measured: bool = True  # False: a kernel with no speed measurement behind its efficiency

    @property
    def possible(self) -> bool:
        return not self.reason


@dataclass(frozen=True)
class Config:
    """One deployable configuration: a replica of `gpus` devices serving `batch` sequences."""

    model: ModelSpec
    method: MethodSpec
    gpu: GPUSpec
    framework: FrameworkSpec
    kv: KVCacheSpec
    gpus: int
    execution: Execution
    batch: int = 1
    gpu_layer_fraction: float = 1.0  # < 1: llama.cpp hybrid offload, the rest of the layers in host RAM
    expert_parallel: int = 1  # MoE: devices the routed experts are split over whole (1: tensor-parallel slices)

    @property
    def key(self) -> str:
        """Readable, unique name: used for ILP variable names and tie-breaking. Made once per configuration
        (pruning and the program read it for every option, many times): kept beside the fields, not among
        them, so equality and hashing do not see it; `with_batch` drops it."""
        found = self.__dict__.get("_key")
        if found is None:
            offload = "" if self.gpu_layer_fraction >= 1.0 else f"/ngl{self.gpu_layers}"
            experts = f"/ep{self.expert_parallel}" if self.expert_parallel > 1 else ""
            found = self.__dict__["_key"] = (f"{self.gpu.id}/{self.method.id}/{self.framework.id}/tp{self.gpus}"
                                             f"{experts}/b{self.batch}/kv-{self.kv.id}{offload}")
        return found

    @property
    def gpu_layers(self) -> int:
        return round(self.gpu_layer_fraction * self.model.layers)

    @property
    def hybrid(self) -> bool:
        return self.gpu_layer_fraction < 1.0

    def with_batch(self, batch: int) -> Config:
        """The same configuration at another batch size (dataclasses.replace without re-running __init__:
        the candidate space makes one per option)."""
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy.__dict__["batch"] = batch
        copy.__dict__.pop("_key", None)
        return copy


@dataclass(frozen=True)
class Placement:
    """How weights and reads divide over the devices of a replica."""

    memory_divisor: int  # devices that share the weights and the KV cache
    read_divisor: int  # devices that read in parallel during one step (1 for a layer split)
    gpu_fraction: float  # share of layers on the GPU(s); the rest is in host RAM


def placement(config: Config) -> Placement:
    """Tensor parallel splits memory and reads; a layer split divides memory but reads in sequence."""
    if config.framework.parallelism == "tensor":
        return Placement(config.gpus, config.gpus, 1.0)
    return Placement(config.gpus, 1, config.gpu_layer_fraction)


@dataclass(frozen=True)
class Step:
    """One engine step: `new_tokens` tokens of `sequences` sequences, attending to `context` tokens each."""

    phase: str  # "decode" or "prefill"
    sequences: int
    new_tokens: int
    context: float  # decode: mean tokens already cached per sequence; prefill: prompt length
    passes: int = 1  # engine passes the work is split into (prefill chunks): weights are read once per pass


# quantplan method ids whose quality rows sit under another key, with the options that tell them apart.
# FP8 W8A8 has accuracy rows but no perplexity row: its perplexity is taken from INT8 W8A8 (both quantize
# weights and activations to 8 bits; the bits line alone would treat it as weight-only).
QUALITY_KEYS: dict[str, tuple[str, dict]] = {"gptq-int4-actorder": ("gptq-int4", {"act_order": True}),
                                             "fp8": ("int8-w8a8", {})}
QUALITY_PROXIES = {"fp8": "fp8 has no perplexity rows: its figures are INT8 W8A8's (both 8-bit weights and "
                          "activations)"}


def quality_bits(key: str, linear_bits: float) -> float:
    """Bits per weight on the axis quality model v2 was fitted on (solver/quality_data.py: block
    bits of a GGUF type, g128 scales), so that a method's fitted offset applies at the bits it was
    fitted at; a method key it does not know keeps the method's own linear bits."""
    try:
        return method_bits(key)
    except (KeyError, ValueError):
        return linear_bits


@dataclass
class QualityBook:
    """Quality data collected from plugins (per-method points, KV formats, use cases) and the fitted
    quality model v2 (catalogs/quality_model.toml)."""

    methods: dict[str, MethodQualitySpec] = field(default_factory=dict)
    families: dict[str, FamilyQualitySpec] = field(default_factory=dict)
    kv: dict[str, KVQualitySpec] = field(default_factory=dict)
    use_cases: dict[str, UseCaseSpec] = field(default_factory=dict)
    model: QualityModel = field(default_factory=shipped)

    def case_for(self, config: Config) -> Case | None:
        """What quality model v2 needs to know about `config`; None for a 16-bit (reference) method."""
        from .shapes import parameter_counts

        method = config.method
        if method.linear_bits_per_weight >= 16:
            return None
        key, options = QUALITY_KEYS.get(method.id, (method.id, {}))
        size_b = parameter_counts(config.model).total / 1e9
        return Case(config.model.family, size_b, key, quality_bits(key, method.linear_bits_per_weight), **options)

    def family_sensitivity(self, family: str) -> tuple[float, str]:
        """How much more than llama-2 a family loses at the same size and method: a plugin's
        [[family_quality]] row, else exp(family offset - llama-2's offset) of quality model v2 at its
        4.5-bit, 8 B pivot (the most sensitive fitted family for one without rows)."""
        spec = self.families.get(family)
        if spec is not None:
            return spec.sensitivity, spec.source
        reference = self.model.ppl.get("family.llama-2", 0.0)
        offsets = {k.split(".", 1)[1]: v - reference for k, v in self.model.ppl.items() if k.startswith("family.")}
        if family == "llama-2":
            return 1.0, "quality model v2 reference family"
        if family in offsets:
            return float(math.exp(offsets[family])), "quality model v2 family offset"
        worst = max(offsets, key=offsets.get)
        return float(math.exp(offsets[worst])), (f"family {family!r} has no quality rows: the "
                                                               f"most sensitive fitted family ({worst})")
