"""Server CPU sockets for llama.cpp CPU serving, from catalogs/gpus.toml."""

from __future__ import annotations

from quantplan.plugins.builtin.devices import DevicePlugin, catalog_devices


def plugin() -> DevicePlugin:
    return catalog_devices("server-cpus", lambda g: g.kind == "cpu")
