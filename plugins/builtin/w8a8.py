"""W8A8 methods: FP8 and INT8 SmoothQuant on 8-bit tensor cores."""

from __future__ import annotations

from quantplan.plugins.builtin.methods import MethodPlugin


def plugin() -> MethodPlugin:
    return MethodPlugin("w8a8-methods", ("w8a8",))
