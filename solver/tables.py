"""The seed blog's memory table, computed: model x method, and whether it fits each device."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from .candidates import Config, Execution
from .estimator import memory
from .registry import World

BLOG_MODELS = ("llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b")
BLOG_METHODS = ("fp16", "int8-w8a8", "awq-int4")
BLOG_DEVICES = ("a100-80gb", "rtx4090")


class MemoryRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    method: str
    weights_gb: float
    kv_cache_gb: float
    overhead_gb: float
    total_gb: float
    fits: dict[str, bool]
    gpus_needed: dict[str, int | None]


def memory_table(world: World, models=BLOG_MODELS, methods=BLOG_METHODS, devices=BLOG_DEVICES,
                 batch: int = 8, context_tokens: int = 4096, framework: str = "vllm",
                 kv_cache_dtype: str = "fp16") -> list[MemoryRow]:
    """Per model and method: weights, KV for `batch` x `context_tokens`, framework overhead, on one GPU.

    `fits` compares one GPU's usable memory (after the framework's reserve); `gpus_needed` is the
    smallest tensor-parallel degree (1, 2, 4, 8) that fits, or None.
    """
    engine, kv = world.frameworks.get(framework), world.kv_caches.get(kv_cache_dtype)
    rows = []
    for model_name in models:
        model = world.models.get(model_name)
        for method_name in methods:
            method = world.methods.get(method_name)
            fits, needed, single = {}, {}, None
            for device_name in devices:
                device = world.gpus.get(device_name)
                execution = Execution(method.compute_dtype, method.weight_only, method.kernel)
                needed[device.id] = None
                for size in (1, 2, 4, 8):
                    config = Config(model, method, device, engine, kv, size, execution, batch)
                    result = memory(world, config, context_tokens)
                    if size == 1:
                        fits[device.id] = result.fits
                        single = single or result
                    if result.fits:
                        needed[device.id] = size
                        break
            divisor = single.memory_divisor
            rows.append(MemoryRow(
                model=model.id, method=method.id, weights_gb=single.weights_per_gpu * divisor / 1e9,
                kv_cache_gb=single.kv_per_gpu * divisor / 1e9, overhead_gb=single.overhead_per_gpu / 1e9,
                total_gb=single.used_per_gpu / 1e9, fits=fits, gpus_needed=needed))
    return rows
