"""NVFP4 W4A4 on Blackwell FP4 tensor cores."""

from __future__ import annotations

from quantplan.plugins.builtin.methods import MethodPlugin


def plugin() -> MethodPlugin:
    return MethodPlugin("nvfp4", ("fp4",))
