"""INT4 weight-only methods (AWQ, GPTQ) with Marlin or ExLlama kernels."""

from __future__ import annotations

from quantplan.plugins.builtin.methods import MethodPlugin


def plugin() -> MethodPlugin:
    return MethodPlugin("int4-weight-only", ("weight-only",))
