#!/usr/bin/env bash
# Configures (once) and builds sft, sft_tests and the library into build/. Incremental and ccache'd.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUILD_DIR="${SFT_BUILD_DIR:-build}"
if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
cmake --build "$BUILD_DIR" -j"$(nproc)" 2>&1 | grep -v -E "^\[ *[0-9]+%\]|ptxas info|bytes stack frame|Used [0-9]+ registers|Compiling entry function|Function properties" || true
test -x "$BUILD_DIR/sft" && test -x "$BUILD_DIR/sft_tests" || { echo "[build] failed" >&2; exit 1; }
echo "[build] ok: $BUILD_DIR/sft"
