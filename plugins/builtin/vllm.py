"""vLLM: tensor-parallel GPU serving with Marlin, CUTLASS FP8/INT8 and FP8 KV cache."""

from __future__ import annotations

from quantplan.plugins.builtin.frameworks import FrameworkPlugin, plugin_for


def plugin() -> FrameworkPlugin:
    return plugin_for("vllm")
