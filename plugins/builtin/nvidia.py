"""NVIDIA data-center and GeForce GPUs from catalogs/gpus.toml, with their default prices."""

from __future__ import annotations

from quantplan.plugins.builtin.devices import DevicePlugin
from quantplan.solver.catalog import builtin_catalog


def _rows(vendor: str, kind: str) -> DevicePlugin:
    gpus = [g for g in builtin_catalog("gpus")["gpu"] if g.vendor.lower().startswith(vendor) and g.kind == kind]
    ids = {g.id for g in gpus}
    prices = [p for p in builtin_catalog("prices")["price"] if p.gpu in ids]
    return gpus, prices


def plugin() -> DevicePlugin:
    return DevicePlugin("nvidia-gpus", *_rows("nvidia", "gpu"))
