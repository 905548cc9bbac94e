"""Server CPU sockets for llama.cpp CPU serving, from catalogs/gpus.toml."""

from __future__ import annotations

from quantplan.plugins.builtin.devices import DevicePlugin
from quantplan.solver.catalog import builtin_catalog


def plugin() -> DevicePlugin:
    cpus = [g for g in builtin_catalog("gpus")["gpu"] if g.kind == "cpu"]
    ids = {g.id for g in cpus}
    prices = [p for p in builtin_catalog("prices")["price"] if p.gpu in ids]
    return DevicePlugin("server-cpus", cpus, prices)
