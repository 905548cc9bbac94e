"""Unquantized 16-bit weights (FP16, BF16)."""

from __future__ import annotations

from quantplan.plugins.builtin.methods import MethodPlugin


def plugin() -> MethodPlugin:
    return MethodPlugin("float16-and-bfloat16", ("float",))
