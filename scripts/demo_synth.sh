#!/usr/bin/env bash
# The sft synth demo: grow 20 quiz questions (the seeds) into SFT data with SmolLM2-135M-Instruct itself,
# by Self-Instruct and then Evol-Instruct (over the new instructions), fine-tune SmolLM2 with LoRA on what came out, and score the
# quiz held-out set before and after. A 135M model writes weak instructions and answers: the mechanics
# are the point (filters, reports, resume), and the same commands take a bigger local model.
# At Self-Instruct's temperature 0.7 / top-p 0.5, SmolLM2 mostly repeats the templated quiz seeds
# (rejected as too_similar), so the demo samples at 1.0 / 0.95.
# Every step resumes: run it again after an interruption and each synth command continues (--resume).
# Environment: NUM (self-instruct instructions, default 20), ROUNDS (evol rounds, default 1),
# THREADS (default 2).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
start=$(date +%s)
NUM="${NUM:-20}"; ROUNDS="${ROUNDS:-1}"; THREADS="${THREADS:-2}"
bash scripts/setup.sh
bash scripts/build.sh sft
bash scripts/get_model.sh
.venv/bin/python scripts/make_quiz_data.py
SFT=build/sft
MODEL=.cache/models/smollm2-135m-instruct
OUT=runs/synth
mkdir -p "$OUT"
head -n 20 .cache/data/quiz/train.jsonl > "$OUT/seeds.jsonl"

echo "== self-instruct: $NUM new instructions from 20 quiz seeds =="
$SFT synth self-instruct --model "$MODEL" --seeds "$OUT/seeds.jsonl" --num "$NUM" --out "$OUT/self_instruct.jsonl" \
  --seed 1 --batch 4 --per-prompt 6 --max-new-tokens 100 --response-max-new-tokens 64 --keep-truncated \
  --temperature 1.0 --top-p 0.95 --threads "$THREADS" --resume
echo "== evol: $ROUNDS round(s) over the new instructions =="
$SFT synth evol --model "$MODEL" --input "$OUT/self_instruct.jsonl" --rounds "$ROUNDS" --out "$OUT/evol.jsonl" \
  --seed 1 --batch 4 --max-new-tokens 96 --response-max-new-tokens 96 --keep-truncated --threads "$THREADS" --resume

cat "$OUT/seeds.jsonl" "$OUT/self_instruct.jsonl" "$OUT/evol.jsonl" > "$OUT/train.jsonl"
echo "[demo_synth] training data: $(wc -l < "$OUT/train.jsonl") pairs (20 seeds + $(wc -l < "$OUT/self_instruct.jsonl") self-instruct + $(wc -l < "$OUT/evol.jsonl") evol)"
echo "== held-out quiz scores before fine-tuning =="
$SFT eval configs/demo.yaml --out "$OUT/eval-before" train.threads="$THREADS" > /dev/null
echo "== fine-tuning (LoRA) on the synthesized data =="
$SFT train configs/demo.yaml --force data.train="$OUT/train.jsonl" output_dir="$OUT/run" train.threads="$THREADS" \
  train.epochs=2 log.every_steps=5
echo "== held-out quiz scores after =="
$SFT eval configs/demo.yaml --adapter "$OUT/run/adapter" --out "$OUT/eval-after" train.threads="$THREADS" > /dev/null
.venv/bin/python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
for name in ("self_instruct", "evol"):
    r = json.load(open(f"{out}/{name}.jsonl.report.json"))
    print(f"{name}: accepted {r['accepted']}, rejected {r['rejected_total']} {r['rejected']}, "
          f"{r['generated_tokens']} tokens in {r['seconds']:.0f} s")
before = json.load(open(f"{out}/eval-before/summary.json"))
after = json.load(open(f"{out}/eval-after/summary.json"))
print("\n| held-out metric | base model | after LoRA on synth data |\n|---|---|---|")
for key in ("loss", "perplexity", "token_accuracy", "exact_match", "exact_match_normalized"):
    if key in before:
        print(f"| {key} | {before[key]:.4f} | {after[key]:.4f} |")
print("\nsamples:")
for name in ("self_instruct", "evol"):
    for line in [json.loads(l) for l in open(f"{out}/{name}.jsonl")][:3]:
        print(f"  [{name}] {line['prompt'][:100]!r} -> {line['response'][:80]!r}")
PY
echo "[demo_synth] total $(( $(date +%s) - start )) s; outputs in $OUT"
