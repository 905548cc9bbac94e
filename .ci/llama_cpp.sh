#!/usr/bin/env bash
# Build llama.cpp's llama-server, llama-quantize and llama-perplexity for tests/test_quality_llama_cpp.py,
# once per machine. The source is the llama.cpp that PyPI's llama-cpp-python sdist vendors (no other
# download). Source and build stay in $QUANTPLAN_CACHE (default ~/.cache/quantplan); the folder holding the
# binaries is printed on stdout, everything else goes to stderr.
# Usage: bash .ci/llama_cpp.sh [PIP]   (PIP: the pip to download with; default .venv/bin/pip)
# Cost measured on this project's 2-core machine: 12.3-12.7 CPU-minutes (25-33 min wall while shared with
# other work, so about 7 min alone); a cached build returns at once.
set -euo pipefail
VERSION=0.3.36  # llama-cpp-python release whose vendored llama.cpp is built
PIP=${1:-.venv/bin/pip}
# GGML_NATIVE=OFF: a portable build (SSE4.2, AVX, AVX2, BMI2, FMA, F16C; no AVX-512, no AMX). A native build on a
# Sapphire Rapids host that lists AMX but runs in a VM whose kernel refuses it died on `tilezero` (SIGILL in
# libggml-cpu, 2026-12-04); the folder name keeps such a build from being reused.
CACHE=${QUANTPLAN_CACHE:-$HOME/.cache/quantplan}/llama.cpp-$VERSION-portable
BIN=$CACHE/build/bin
if [[ -f $CACHE/done && -x $BIN/llama-server && -x $BIN/llama-quantize && -x $BIN/llama-perplexity ]] \
        && "$BIN/llama-server" --version >/dev/null 2>&1; then  # a cached build that still runs (its libraries found)
    echo "$BIN"
    exit 0
fi
rm -rf "$CACHE" && mkdir -p "$CACHE"
"$PIP" download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$CACHE" >&2
tar xzf "$CACHE"/llama_cpp_python-$VERSION.tar.gz -C "$CACHE"
rm "$CACHE"/llama_cpp_python-$VERSION.tar.gz
cmake -S "$CACHE/llama_cpp_python-$VERSION/vendor/llama.cpp" -B "$CACHE/build" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_SERVER=ON -DGGML_NATIVE=OFF >&2
cmake --build "$CACHE/build" -j "$(nproc)" -t llama-server llama-quantize llama-perplexity >&2
touch "$CACHE/done"
echo "$BIN"
