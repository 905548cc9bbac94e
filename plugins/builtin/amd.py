"""AMD Instinct GPUs from catalogs/gpus.toml (ROCm builds of vLLM and SGLang)."""

from __future__ import annotations

from quantplan.plugins.builtin.devices import DevicePlugin
from quantplan.plugins.builtin.nvidia import _rows


def plugin() -> DevicePlugin:
    return DevicePlugin("amd-gpus", *_rows("amd", "gpu"))
