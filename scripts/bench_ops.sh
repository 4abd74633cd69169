#!/usr/bin/env bash
# scripts/bench_ops.sh: the fused-op benchmarks (tests/bench_ops_kernels.cpp) and the training-step
# profile (tests/bench_ops_main.cpp), printed as markdown tables with the CPU model and date. A benchmark,
# not a test.
#   scripts/bench_ops.sh [ops] [REPS]            fused vs composite ATen per op, fwd and bwd, ms and GB/s;
#                                                loss memory of fused linear CE vs plain logits (49k, 128k)
#   scripts/bench_ops.sh profile [STEPS] [k=v..] one SmolLM2-135M LoRA step on packed 512-token rows
#                                                under LibTorch's profiler, before (model.fused_ops=none)
#                                                and after (auto), as shares of the step
# THREADS (default 2) sets the CPU threads.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/build.sh bench_ops >/dev/null
BIN="${SFT_BUILD_DIR:-build}/bench_ops"
export OMP_NUM_THREADS="${THREADS:-2}"
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u +%Y-%m-%d)"
MODE="${1:-ops}"
if [[ "$MODE" == profile ]]; then
  shift
  STEPS="${1:-6}"
  shift || true
  for FUSED in none auto; do
    echo
    echo "## model.fused_ops: $FUSED"
    "$BIN" profile configs/demo.yaml "$STEPS" data.max_seq_len=512 data.packing=true train.micro_batch_size=4 \
      train.threads="$OMP_NUM_THREADS" "model.fused_ops=$FUSED" "$@"
  done
else
  "$BIN" ops "${2:-20}"
fi
