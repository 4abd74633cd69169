#!/usr/bin/env bash
# scripts/bench_qlora.sh: QLoRA's memory benchmark (not a test). Runs the same LoRA SFT job on SmolLM2-135M-
# Instruct with the quiz data four ways: LoRA on an fp32 base, LoRA on a bf16 base, QLoRA (model.quantization
# nf4, double quantisation) computing in fp32, and QLoRA computing in bf16; prints one markdown table with
# peak RSS (getrusage of the child: the process's high-water mark, load included), steady-state tokens/s
# (mean of the logged steps after the first) and the ratios of peak RSS to the two LoRA rows.
# Usage: scripts/bench_qlora.sh [--steps N] [--micro-batch B] [--seq-len S] [--threads T] [--gradient-checkpointing]
#        [--no-prepare] [--scaled-1b]
# (--no-prepare: skip scripts/bench_prepare.sh, e.g. while another build runs in build/;
#  --scaled-1b: the same runs on a random 1.1B Llama with SmolLM2's tokenizer, made once by
#  scripts/make_scaled_llama.py into .cache/models/scaled-llama-1b (2.1 GiB), where the weights dominate)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STEPS=6 MICRO=2 SEQ=256 THREADS=2 PREPARE=1 EXTRA="" SCALED=0
while (($#)); do
  case "$1" in
    --steps) STEPS="$2"; shift 2 ;;
    --micro-batch) MICRO="$2"; shift 2 ;;
    --seq-len) SEQ="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --no-prepare) PREPARE=0; shift ;;
    --gradient-checkpointing) EXTRA="model.gradient_checkpointing=true"; shift ;;
    --scaled-1b) SCALED=1; shift ;;
    *) echo "bench_qlora.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
((PREPARE)) && source scripts/bench_prepare.sh
MODEL_NAME="SmolLM2-135M-Instruct" MODEL_OVERRIDE=""
if ((SCALED)); then
  .venv/bin/python scripts/make_scaled_llama.py .cache/models/smollm2-135m-instruct .cache/models/scaled-llama-1b
  MODEL_NAME="a random 1.1B Llama (scripts/make_scaled_llama.py)" MODEL_OVERRIDE="model.path=.cache/models/scaled-llama-1b"
fi
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"  # the machine may be shared: the table says how busy it was
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# name|overrides
RUNS=("LoRA, fp32 base|model.dtype=float32"
      "LoRA, bf16 base|model.dtype=bfloat16"
      "QLoRA nf4, fp32 compute|model.dtype=float32 model.quantization=nf4"
      "QLoRA nf4, bf16 compute|model.dtype=bfloat16 model.quantization=nf4")
declare -A RSS TRAIN_RSS TPS
for run in "${RUNS[@]}"; do
  name="${run%%|*}" overrides="${run#*|}"
  out="$WORK/$(tr -c 'a-zA-Z0-9\n' _ <<<"$name")"
  # Peak RSS: getrusage of the child (ru_maxrss: the high-water mark, model load included), and the peak
  # while training (VmRSS polled every 50 ms from /proc once step 1 is logged), so no `time` package is needed.
  # shellcheck disable=SC2086
  .venv/bin/python -c '
import os, resource, subprocess, sys, time
proc = subprocess.Popen(sys.argv[3:])
metrics, train_peak = sys.argv[2], 0
while proc.poll() is None:
    if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
        try:
            status = open("/proc/%d/status" % proc.pid).read()
            train_peak = max(train_peak, int(status.split("VmRSS:")[1].split()[0]))
        except (OSError, IndexError):
            pass
    time.sleep(0.05)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
open(sys.argv[1], "w").write("%d %d\n" % (peak, train_peak))
sys.exit(proc.returncode)' "$out.rss" "$out/metrics.jsonl" build/sft train configs/demo.yaml output_dir="$out" train.max_steps="$STEPS" \
    train.threads="$THREADS" train.micro_batch_size="$MICRO" data.max_seq_len="$SEQ" data.eval=null \
    eval.generate=false log.every_steps=1 log.progress=false $MODEL_OVERRIDE $EXTRA $overrides >"$out.log" 2>&1 ||
    { echo "bench_qlora.sh: '$name' failed:" >&2; tail -5 "$out.log" >&2; exit 1; }
  read -r peak train_peak <"$out.rss"
  RSS[$name]=$((peak / 1024)) TRAIN_RSS[$name]=$((train_peak / 1024))
  TPS[$name]=$(.venv/bin/python -c "
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])][1:]
print(round(sum(r['tokens_per_s'] for r in rows) / max(len(rows), 1)))" "$out/metrics.jsonl")
done
CPU="$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
echo "$MODEL_NAME, configs/demo.yaml (LoRA r 16 on all seven projections), $STEPS steps, micro-batch $MICRO"
echo "packed rows of $SEQ tokens, $THREADS threads${EXTRA:+, $EXTRA}; $(date -u '+%F %H:%M UTC'), $CPU ($(nproc) cores)"
echo "load average (1, 5, 15 min) before: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| run | peak RSS (MiB) | / LoRA fp32 | / LoRA bf16 | peak RSS while training (MiB) | / LoRA fp32 | / LoRA bf16 | tokens/s |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for run in "${RUNS[@]}"; do
  name="${run%%|*}"
  awk -v n="$name" -v r="${RSS[$name]}" -v f="${RSS[LoRA, fp32 base]}" -v b="${RSS[LoRA, bf16 base]}" \
    -v tr="${TRAIN_RSS[$name]}" -v tf="${TRAIN_RSS[LoRA, fp32 base]}" -v tb="${TRAIN_RSS[LoRA, bf16 base]}" \
    -v t="${TPS[$name]}" 'BEGIN { printf "| %s | %d | %.2f | %.2f | %d | %.2f | %.2f | %s |\n",
                                  n, r, r / f, r / b, tr, tr / tf, tr / tb, t }'
done
