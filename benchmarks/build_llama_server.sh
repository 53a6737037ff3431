#!/usr/bin/env bash
# Builds llama.cpp's llama-server from the llama.cpp source that llama-cpp-python 0.3.36 vendors
# (its sdist), so benchmarks/serve.py compares against the same engine version this project runs.
# Not on PyPI as a binary; never part of CI. About 8 minutes on 2 cores.
#
#   benchmarks/build_llama_server.sh          # → benchmarks/.cache/llama-server/bin/llama-server
#
# CMake's Makefile generator is used on purpose: the Ninja generator looped on
# "build.ninja still dirty" over the sdist's tree.
set -euo pipefail

VERSION=0.3.36
HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="$HERE/.cache"
PYTHON="${PYTHON:-$HERE/../.venv/bin/python}"
SRC="$CACHE/llama-cpp-python-$VERSION"
BUILD="$CACHE/llama-server-build"
OUT="$CACHE/llama-server"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"

if [ -x "$OUT/bin/llama-server" ]; then
    echo "already built: $OUT/bin/llama-server"
    exit 0
fi
mkdir -p "$CACHE"
if [ ! -d "$SRC/vendor/llama.cpp" ]; then
    "$PYTHON" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$CACHE"
    tar -xzf "$CACHE/llama_cpp_python-$VERSION.tar.gz" -C "$CACHE"
    [ -d "$SRC" ] || mv "$CACHE/llama_cpp_python-$VERSION" "$SRC"
fi
cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -G "Unix Makefiles" \
    -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF
cmake --build "$BUILD" --target llama-server -j "$JOBS"
mkdir -p "$OUT/bin.tmp"
cp "$BUILD/bin/llama-server" "$OUT/bin.tmp/llama-server"
rm -rf "$OUT/bin" && mv "$OUT/bin.tmp" "$OUT/bin"
echo "built: $OUT/bin/llama-server"
