#!/usr/bin/env bash
# scripts/bench_train.sh: the training benchmark (not a test), one command. Runs the same SFT jobs with
# `sft train` and with HF transformers (+ PEFT) (same torch, threads, model, token ids, rows, steps) on
# the tiny golden Llama and on SmolLM2-135M-Instruct, and prints one table per model
# (scripts/bench_train.py): padded short rows and packed 512-token rows, LoRA and full fine-tuning, fp32
# and bf16 autocast, tokens/s, peak RSS, MFU against the measured torch.mm peak, and issue 17's targets.
# Usage: scripts/bench_train.sh [--quick] [extra bench_train.py flags, e.g. --threads 2]
#   full matrix: about 9 minutes on an idle 2-core machine (bounded by the fixed steps per case);
#   --quick: LoRA fp32 padded + packed only, fewer steps, about 3 minutes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/bench_prepare.sh
quick=0
for arg in "$@"; do [[ "$arg" == --quick ]] && quick=1; done
echo "bench_train: $( ((quick)) && echo "about 3 minutes (--quick)" || echo "about 9 minutes (full matrix)") on an idle 2-core machine; $(uptime | sed 's/.*load/load/')" >&2
start=$SECONDS
for model in tiny smollm2; do
  .venv/bin/python scripts/bench_train.py --model "$model" "$@"
done
echo "bench_train: done in $((SECONDS - start)) s" >&2
