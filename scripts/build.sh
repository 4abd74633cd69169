#!/usr/bin/env bash
# Configures (once) and builds into build/: the given targets (default: all, i.e. sft, sft_tests and the
# library). Incremental and ccache'd. Example: scripts/build.sh sft
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUILD_DIR="${SFT_BUILD_DIR:-build}"
if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  # SFT_WERROR=ON (set by .ci/run): warnings in our sources fail the build.
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DSFT_WERROR="${SFT_WERROR:-OFF}" >/dev/null
fi
TARGETS=()
for target in "$@"; do TARGETS+=(--target "$target"); done
# The filter hides progress and ptxas chatter; the build's own exit status decides (a stale binary from an
# earlier build must not pass for a new one).
set +e
cmake --build "$BUILD_DIR" -j"$(nproc)" "${TARGETS[@]}" 2>&1 | grep -v -E "^\[ *[0-9]+%\]|ptxas info|bytes stack frame|Used [0-9]+ registers|Compiling entry function|Function properties"
build_rc=${PIPESTATUS[0]}
set -e
((build_rc == 0)) || { echo "[build] failed (cmake --build exit $build_rc)" >&2; exit 1; }
test -x "$BUILD_DIR/sft" || { echo "[build] failed" >&2; exit 1; }
if (($# == 0)); then test -x "$BUILD_DIR/sft_tests" || { echo "[build] failed" >&2; exit 1; }; fi
echo "[build] ok: $BUILD_DIR/sft"
