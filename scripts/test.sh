#!/usr/bin/env bash
# The test command: set up, build, make golden data with the reference tools, fetch the real model,
# then run every test (GoogleTest + pytest reference checks, all through CTest) and a short fuzz run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
start=$(date +%s)
bash scripts/setup.sh
bash scripts/build.sh
bash scripts/get_model.sh
.venv/bin/python scripts/make_quiz_data.py
for script in scripts/make_golden.py scripts/make_tokenizer_golden.py scripts/make_data_golden.py \
              scripts/make_train_golden.py; do
  [[ -f "$script" ]] && .venv/bin/python "$script"
done
echo "[test] setup + build + golden: $(( $(date +%s) - start )) s"
status=0
(cd build && ctest --output-on-failure --timeout 1800 -j2) || status=$?
if [[ -f scripts/fuzz_safetensors.sh ]]; then
  FUZZ_SECONDS="${FUZZ_SECONDS:-60}" bash scripts/fuzz_safetensors.sh || status=$?
fi
echo "[test] total: $(( $(date +%s) - start )) s"
exit $status
