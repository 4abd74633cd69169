#!/usr/bin/env bash
# scripts/bench_dist.sh: the multi-process training benchmark (not a test): 1 vs 2 processes under
# torchrun, tiny Llama and SmolLM2-135M, LoRA and full; tokens/s, per-step communication, exposed
# communication with and without hook overlap; Gloo allreduce GB/s against bucket size
# (scripts/bench_dist.py). Usage: scripts/bench_dist.sh [--steps N] [--models tiny,smollm2]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh >/dev/null
bash scripts/build.sh sft >/dev/null
bash scripts/get_model.sh >/dev/null
.venv/bin/python scripts/make_quiz_data.py >/dev/null
.venv/bin/python scripts/make_golden.py >/dev/null
.venv/bin/python scripts/make_train_golden.py >/dev/null
.venv/bin/python scripts/bench_dist.py "$@"
