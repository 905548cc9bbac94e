"""GGUF k-quants and legacy quants (llama.cpp and its CPU, Metal and CUDA kernels)."""

from __future__ import annotations

from quantplan.plugins.builtin.methods import MethodPlugin


def plugin() -> MethodPlugin:
    return MethodPlugin("gguf-k-quants", ("gguf",))
