#!/usr/bin/env bash
# scripts/gpu_check.sh: the one command to run on a machine with an NVIDIA GPU. Builds sft_tests with the
# CUDA kernels (for sm_80, sm_90 and the local GPU's arch), runs the GPU-free build checks, runs every
# attention test (the GPU ones must not skip here), then prints the TFLOP/s table of our forward and
# forward+backward against LibTorch SDPA (flash, cuDNN and memory-efficient backends) and LibTorch's
# FlashAttention-2 varlen for seq 512-8k, head_dim 64/128, causal and not, plus a packed mix
# (FlashAttention's FLOP formula; kernels/README.md explains it). This is the from-source variant of the
# carried proof, gpu-bundle/run.sh (scripts/gpu_bundle.sh), for a GPU machine that can build the project.
# Usage: bash scripts/gpu_check.sh [BUILD_DIR]   (default build-gpu; -j from SFT_JOBS, default 8)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUILD="${1:-$ROOT/build-gpu}"
JOBS="${SFT_JOBS:-8}"

bash scripts/setup.sh
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU visible (nvidia-smi -L failed)" >&2
  exit 1
fi
nvidia-smi -L
# Our cubins are sm_80 (runs on all sm_8x) and sm_90; add the local arch when it is something else.
cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '. ')"
archs="80;90"
case "$cap" in 80|86|87|89|90) ;; *) archs="$archs;$cap" ;; esac

cmake -S "$ROOT" -B "$BUILD" -DSFT_CUDA=ON -DCMAKE_BUILD_TYPE=Release "-DSFT_CUDA_ARCHITECTURES=$archs"
cmake --build "$BUILD" -j "$JOBS" --target sft_tests bench_attention

echo "== build checks (ptxas spills / stack / shared memory, tensor-core SASS) =="
.venv/bin/python scripts/check_cuda_build.py --build-dir "$BUILD" --arch 80 --arch 90

echo "== attention tests (CPU twin + GPU) =="
log="$(mktemp)"
"$BUILD/sft_tests" --gtest_filter='Attention*' 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
if grep -q '^\[  SKIPPED \] AttentionCuda' "$log"; then
  echo "gpu_check: GPU tests skipped on a GPU machine: see the reasons above" >&2
  status=1
fi
rm -f "$log"
[[ $status -eq 0 ]] || { echo "gpu_check: attention tests FAILED" >&2; exit "$status"; }

echo "== benchmark: TFLOP/s, bf16, 16k tokens per run, model dim 2048 =="
"$BUILD/bench_attention" --cuda
echo "gpu_check: ok"
