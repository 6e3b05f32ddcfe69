#!/usr/bin/env bash
# Builds llama-server from the llama.cpp that the pinned llama-cpp-python sdist vendors, so the
# benchmark's llama_server contender runs the same llama.cpp as ecso-edge. The binary is cached at
# bench/out/llama-server-<pin>/bin/llama-server and printed on the last line; a second run only
# prints it. About 8-25 minutes on 2 cores (nice'd). Needs pip's index or its cache, cmake, a C++
# compiler; exits non-zero (and the benchmark skips the contender) when any is missing.
#
#     bash bench/build_llama_server.sh [--jobs N]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
jobs="$(nproc 2>/dev/null || echo 2)"
if [ "${1:-}" = "--jobs" ]; then jobs="$2"; fi

pin="$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' "$root/pyproject.toml" | head -n 1)"
if [ -z "$pin" ]; then echo "no llama-cpp-python pin found in $root/pyproject.toml" >&2; exit 1; fi
out="$here/out/llama-server-$pin"
binary="$out/bin/llama-server"
if [ -x "$binary" ]; then echo "$binary"; exit 0; fi

python="${PYTHON:-python3}"
mkdir -p "$out/sdist"
if ! ls "$out/sdist"/llama_cpp_python-"$pin".tar.gz >/dev/null 2>&1; then
    "$python" -m pip download --quiet --no-binary :all: --no-deps --no-build-isolation \
        "llama-cpp-python==$pin" -d "$out/sdist"
fi
rm -rf "$out/src"
mkdir -p "$out/src"
tar -xzf "$out/sdist/llama_cpp_python-$pin.tar.gz" -C "$out/src"
source_dir="$out/src/llama_cpp_python-$pin/vendor/llama.cpp"
# GGML_NATIVE as the llama-cpp-python wheel is built on this machine (pip builds it from source here).
cmake -S "$source_dir" -B "$out/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \
    >"$out/cmake.log"
nice cmake --build "$out/build" --target llama-server -j "$jobs" >"$out/build.log"
mkdir -p "$out/bin"
cp "$out/build/bin/llama-server" "$binary"
rm -rf "$out/src" "$out/build"
echo "$binary"
