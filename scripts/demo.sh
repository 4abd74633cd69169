#!/usr/bin/env bash
# The demo: set up, build, fetch SmolLM2-135M-Instruct and real quiz data, score the held-out set with
# the base model, fine-tune with LoRA (configs/demo.yaml), score it again with the adapter, and draw the
# run report (runs/demo/report.png).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
start=$(date +%s)
bash scripts/setup.sh
bash scripts/build.sh sft
bash scripts/get_model.sh
.venv/bin/python scripts/make_quiz_data.py
SFT=build/sft
echo "== held-out scores before fine-tuning (base model) =="
$SFT eval configs/demo.yaml --out runs/demo-eval-before | tee /tmp/sft_demo_before.json
echo "== fine-tuning (LoRA) =="
# Metrics every step, held-out scores every 10 steps and TensorBoard files, for the report (none of
# these change the training itself).
$SFT train configs/demo.yaml --force log.every_steps=1 eval.every_steps=10 log.tensorboard=true "$@"
.venv/bin/python scripts/plot_run.py runs/demo --out runs/demo/report.png --label "LoRA (demo)"
echo "== held-out scores after fine-tuning (base + runs/demo/adapter) =="
$SFT eval configs/demo.yaml --adapter runs/demo/adapter --out runs/demo-eval-after | tee /tmp/sft_demo_after.json
.venv/bin/python - <<'PY'
import json
before = json.load(open("runs/demo-eval-before/summary.json"))
after = json.load(open("runs/demo-eval-after/summary.json"))
print("\n| held-out metric | before | after |\n|---|---|---|")
for key in ("loss", "perplexity", "token_accuracy", "exact_match", "exact_match_normalized"):
    if key in before:
        print(f"| {key} | {before[key]:.4f} | {after[key]:.4f} |")
examples = [json.loads(l) for l in open("runs/demo-eval-after/examples.jsonl")]
for e in examples[:5]:
    print(f"  {e.get('reference')!r:>24} <- {e.get('output')!r}")
PY
echo "[demo] total $(( $(date +%s) - start )) s; outputs in runs/demo"
