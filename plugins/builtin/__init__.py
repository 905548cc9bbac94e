"""Built-in plugins, registered explicitly (never through entry points) so a plain checkout works."""

from __future__ import annotations

from quantplan.plugins.builtin import (
    amd,
    apple,
    cpus,
    exllamav2,
    float_methods,
    fp4,
    gguf,
    int4_weight_only,
    kv_cache,
    llama_cpp,
    models,
    nvidia,
    quality,
    sglang,
    tensorrt_llm,
    vllm,
    w8a8,
)

BUILTIN_PLUGINS = (
    nvidia, amd, apple, cpus,
    float_methods, w8a8, int4_weight_only, gguf, fp4, kv_cache,
    vllm, tensorrt_llm, sglang, llama_cpp, exllamav2,
    models, quality,
)


def builtin_plugins() -> list[object]:
    """Fresh instances of every built-in plugin, in a fixed order."""
    return [module.plugin() for module in BUILTIN_PLUGINS]
