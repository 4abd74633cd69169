#!/usr/bin/env bash
# scripts/bench_prepare.sh: what every training benchmark needs first, each step idempotent: setup, the
# sft binary, SmolLM2-135M, the quiz data and the golden tiny models. Sourced by scripts/bench_*.sh.
bash scripts/setup.sh >/dev/null
bash scripts/build.sh sft >/dev/null
bash scripts/get_model.sh >/dev/null
.venv/bin/python scripts/make_quiz_data.py >/dev/null
.venv/bin/python scripts/make_golden.py >/dev/null
.venv/bin/python scripts/make_train_golden.py >/dev/null
