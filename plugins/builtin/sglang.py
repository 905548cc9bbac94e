"""SGLang: tensor-parallel GPU serving with RadixAttention."""

from __future__ import annotations

from quantplan.plugins.builtin.frameworks import FrameworkPlugin, plugin_for


def plugin() -> FrameworkPlugin:
    return plugin_for("sglang")
