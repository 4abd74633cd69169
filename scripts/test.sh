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
              scripts/make_train_golden.py scripts/make_nf4_golden.py \
              scripts/make_synth_golden.py; do
  [[ -f "$script" ]] && .venv/bin/python "$script"
done
echo "[test] setup + build + golden: $(( $(date +%s) - start )) s"
status=0
(cd build && ctest --output-on-failure --timeout 1800 -j2) || status=$?
if [[ -f scripts/fuzz_safetensors.sh ]]; then
  FUZZ_SECONDS="${FUZZ_SECONDS:-60}" bash scripts/fuzz_safetensors.sh || status=$?
fi
# The carried GPU proof (scripts/gpu_bundle.sh; reuses build/'s objects) and its CPU dry run, so a broken
# bundle is caught before device time is spent. Needs nvcc (a CUDA build); skipped with a message without.
if [[ -x /usr/local/cuda/bin/nvcc ]] || command -v nvcc >/dev/null; then
  bundle_start=$(date +%s)
  { bash scripts/gpu_bundle.sh && SFT_PYTHON="$ROOT/.venv/bin/python" OUT="$ROOT/gpu-bundle/dry-run" \
      bash gpu-bundle/run.sh --dry-run; } || status=$?
  echo "[test] gpu bundle + dry run: $(( $(date +%s) - bundle_start )) s"
else
  echo "[test] gpu bundle: skipped (no nvcc, so no CUDA build to bundle)"
fi
echo "[test] total: $(( $(date +%s) - start )) s"
exit $status
