"""Apple Silicon SoCs (unified memory, Metal) from catalogs/gpus.toml."""

from __future__ import annotations

from quantplan.plugins.builtin.devices import DevicePlugin, catalog_devices


def plugin() -> DevicePlugin:
    return catalog_devices("apple-silicon", lambda g: g.kind == "apple")
