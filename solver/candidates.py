"""Plain-data records the estimator works on: configurations, execution paths, steps, quality book."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

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

    @property
    def key(self) -> str:
        """Readable, unique name: used for ILP variable names and tie-breaking."""
        offload = "" if self.gpu_layer_fraction >= 1.0 else f"/ngl{self.gpu_layers}"
        return (f"{self.gpu.id}/{self.method.id}/{self.framework.id}/tp{self.gpus}/"
                f"b{self.batch}/kv-{self.kv.id}{offload}")

    @property
    def gpu_layers(self) -> int:
        return round(self.gpu_layer_fraction * self.model.layers)

    @property
    def hybrid(self) -> bool:
        return self.gpu_layer_fraction < 1.0

    def with_batch(self, batch: int) -> Config:
        return replace(self, batch=batch)


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


@dataclass
class QualityBook:
    """Published quality points collected from plugins, looked up by method, family and KV format."""

    methods: dict[str, MethodQualitySpec] = field(default_factory=dict)
    families: dict[str, FamilyQualitySpec] = field(default_factory=dict)
    kv: dict[str, KVQualitySpec] = field(default_factory=dict)
    use_cases: dict[str, UseCaseSpec] = field(default_factory=dict)

    def family_sensitivity(self, family: str) -> tuple[float, str]:
        spec = self.families.get(family)
        if spec is None:
            fallback = max(self.families.values(), key=lambda f: f.sensitivity, default=None)
            if fallback is None:
                return 1.0, "no family data: sensitivity 1.0"
            return fallback.sensitivity, f"family {family!r} unknown: most sensitive known family ({fallback.family})"
        return spec.sensitivity, spec.source
