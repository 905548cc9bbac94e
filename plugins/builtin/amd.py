"""AMD Instinct data-center GPUs from catalogs/gpus.toml, with their default prices."""

from __future__ import annotations

from quantplan.plugins.builtin.devices import DevicePlugin, catalog_devices


def plugin() -> DevicePlugin:
    return catalog_devices("amd-gpus", lambda g: g.vendor.lower().startswith("amd") and g.kind == "gpu")
