#!/usr/bin/env bash
# scripts/bench_train.sh: the training benchmark (not a test). Runs the same LoRA SFT job with `sft train`
# and with HF transformers + PEFT (same torch, threads, model, token ids, sequence length, batch, steps)
# on the tiny golden Llama and on SmolLM2-135M-Instruct, and prints one table per model
# (scripts/bench_train.py). Usage: scripts/bench_train.sh [extra bench_train.py flags, e.g. --steps 20]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/bench_prepare.sh
for model in tiny smollm2; do
  .venv/bin/python scripts/bench_train.py --model "$model" "$@"
done
