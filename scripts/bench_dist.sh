#!/usr/bin/env bash
# scripts/bench_dist.sh: the multi-process training benchmark (not a test): 1 vs 2 processes under
# torchrun, tiny Llama and SmolLM2-135M, LoRA and full; tokens/s, per-step communication, exposed
# communication with and without hook overlap; Gloo allreduce GB/s against bucket size
# (scripts/bench_dist.py). Usage: scripts/bench_dist.sh [--steps N] [--models tiny,smollm2]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/bench_prepare.sh
.venv/bin/python scripts/bench_dist.py "$@"
