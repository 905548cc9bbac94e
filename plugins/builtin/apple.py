"""Apple Silicon SoCs (unified memory, Metal) from catalogs/gpus.toml."""

from __future__ import annotations

from quantplan.plugins.builtin.devices import DevicePlugin
from quantplan.plugins.builtin.nvidia import _rows


def plugin() -> DevicePlugin:
    return DevicePlugin("apple-silicon", *_rows("apple", "apple"))
