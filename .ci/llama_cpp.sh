#!/usr/bin/env bash
# Build llama.cpp's llama-server and llama-quantize for tests/test_quality_llama_cpp.py, once per machine.
# The source is the llama.cpp that PyPI's llama-cpp-python sdist vendors (no other download); the binaries
# are cached in $QUANTPLAN_CACHE (default ~/.cache/quantplan) and the folder is printed on stdout.
# Usage: bash .ci/llama_cpp.sh [PIP]   (PIP: the pip to download with; default .venv/bin/pip)
set -euo pipefail
VERSION=0.3.36  # llama-cpp-python release whose vendored llama.cpp is built
PIP=${1:-.venv/bin/pip}
CACHE=${QUANTPLAN_CACHE:-$HOME/.cache/quantplan}/llama.cpp-$VERSION
if [[ -x $CACHE/bin/llama-server && -x $CACHE/bin/llama-quantize ]]; then
    echo "$CACHE/bin"
    exit 0
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PIP" download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK" >&2
tar xzf "$WORK"/llama_cpp_python-$VERSION.tar.gz -C "$WORK"
SOURCE=$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp
cmake -S "$SOURCE" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON >&2
cmake --build "$WORK/build" -j "$(nproc)" -t llama-server llama-quantize llama-perplexity >&2
mkdir -p "$CACHE/bin.tmp"
cp "$WORK"/build/bin/llama-server "$WORK"/build/bin/llama-quantize "$WORK"/build/bin/llama-perplexity "$CACHE/bin.tmp/"
rm -rf "$CACHE/bin" && mv "$CACHE/bin.tmp" "$CACHE/bin"
echo "$CACHE/bin"
