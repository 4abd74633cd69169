#!/usr/bin/env bash
# scripts/bench_attention.sh: CPU attention benchmark, our fused CPU twin against LibTorch's SDPA (fp32
# forward and forward+backward, packed rows of 1 to 8 documents), printed as a markdown table. A benchmark,
# not a test. Usage: scripts/bench_attention.sh [THREADS (default 2)] [REPS (default 5)]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh >/dev/null
bash scripts/build.sh bench_attention >/dev/null
THREADS="${1:-2}"
OMP_NUM_THREADS="$THREADS" "${SFT_BUILD_DIR:-build}/bench_attention" "${2:-5}"
