"""TensorRT-LLM: compiled GPU engines, FP8/INT8/INT4/NVFP4, no CPU or Apple path."""

from __future__ import annotations

from quantplan.plugins.builtin.frameworks import FrameworkPlugin, plugin_for


def plugin() -> FrameworkPlugin:
    return plugin_for("tensorrt-llm")
