#!/usr/bin/env bash
# scripts/bench_runtime.sh: the allocator and OpenMP sweep behind sft's runtime defaults (not a test).
# Runs `sft train` alone (scripts/bench_train.py --sft-only) on SmolLM2 LoRA fp32, packed 512-token rows
# and padded short rows, once per variant, the variants interleaved over --repeats rounds so that a load
# change hits them all alike, and prints tokens/s, peak RSS and minor page faults per step (a 2-step
# run's faults subtracted from a --steps run's: setup cancels) per variant, median over the rounds.
#   sft's defaults (trainer/process_defaults.cpp): libgomp's own spin-then-sleep wait when the machine is
#              idle at start, passive when it is busy (the table's "wait" column says which sft chose),
#              glibc malloc with mallopt's fixed 32 MiB mmap and 1 GiB trim thresholds;
#   allocator: glibc untuned (SFT_MALLOC_TUNING=off), Debian's jemalloc and tcmalloc via LD_PRELOAD;
#   OpenMP (LibTorch's wheel brings libgomp): passive forced, 1 thread.
# Usage: scripts/bench_runtime.sh [--repeats N] [--sft PATH] [--steps N]   (about 5 min per round, idle)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
repeats=2
sft="$ROOT/build/sft"
steps=6
while (($#)); do
  case "$1" in
    --repeats) repeats="$2"; shift 2 ;;
    --sft) sft="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    *) echo "bench_runtime: unknown argument $1" >&2; exit 2 ;;
  esac
done
((steps > 2)) || { echo "bench_runtime: --steps must be > 2 (a 2-step run is the page-fault baseline)" >&2; exit 2; }
[[ "$sft" != "$ROOT/build/sft" ]] || source scripts/bench_prepare.sh
lib=/usr/lib/x86_64-linux-gnu
[[ -e $lib/libjemalloc.so.2 && -e $lib/libtcmalloc_minimal.so.4 ]] || bash scripts/setup.sh >/dev/null
# name | bench_train.py flags (--sft-env KEY=VALUE reaches sft only; --omp-wait-policy and --threads both)
variants=(
  "sft-default (its start-up choice, glibc + mallopt)|"
  "glibc untuned|--sft-env SFT_MALLOC_TUNING=off"
  "jemalloc|--sft-env LD_PRELOAD=$lib/libjemalloc.so.2"
  "tcmalloc|--sft-env LD_PRELOAD=$lib/libtcmalloc_minimal.so.4"
  "passive|--omp-wait-policy passive"
  "1 thread|--threads 1"
)
out_dir="$(mktemp -d)"
trap 'rm -rf "$out_dir"' EXIT
out="$out_dir/runtime.jsonl"
echo "bench_runtime: ${#variants[@]} variants x $repeats rounds, about $((repeats * 5)) min on an idle 2-core machine" >&2
for ((round = 1; round <= repeats; round++)); do
  for v in "${variants[@]}"; do
    name="${v%%|*}"
    read -r -a flags <<<"${v#*|}"
    echo "[round $round] $name" >&2
    # A 2-step run and a $steps-step run: the difference of their page faults is the steps' own.
    for n in 2 "$steps"; do
      .venv/bin/python scripts/bench_train.py --model smollm2 --sft-only --sft "$sft" --steps "$n" --peak-seconds 0.3 \
        --cases lora-packed-fp32,lora-padded-fp32 --label "$name|$n" "${flags[@]}" --json-out "$out" >/dev/null
    done
  done
done
.venv/bin/python - "$out" "$steps" <<'EOF'
import json, os, statistics, sys, time
rows = [json.loads(l) for l in open(sys.argv[1])]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown CPU")
print(f"\n{cpu}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average now "
      + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + "; medians over rounds; load = the runs' 1-min load average\n")
print(f"| variant | packed 512 tokens/s | packed peak RSS MiB | packed page faults per step | padded tokens/s |"
      f" padded peak RSS MiB | padded page faults per step | load | wait (sft's log) |")
print("|---|---|---|---|---|---|---|---|---|")
steps = int(sys.argv[2])
done = lambda r: all(v["sft"] for v in r["results"].values())
for label in dict.fromkeys(r["label"].split("|")[0] for r in rows):
    short = [r["results"] for r in rows if r["label"] == f"{label}|2" and done(r)]
    long = [r["results"] for r in rows if r["label"] == f"{label}|{steps}" and done(r)]
    if not short or not long:
        print(f"| {label} | timed out | | | | | | | |")
        continue
    med = lambda runs, case, key: statistics.median(m[case]["sft"][key] for m in runs)
    load = statistics.mean(m[c]["sft"]["load"] for m in long for c in m)
    cells = [f"{med(long, c, 'tokens_per_s'):.0f} | {med(long, c, 'rss'):.0f} |"
             f" {(med(long, c, 'minor_faults') - med(short, c, 'minor_faults')) / (steps - 2):,.0f}"
             for c in ("lora-packed-fp32", "lora-padded-fp32")]
    waits = ", ".join(sorted({m[c]["sft"].get("wait_policy", "?") for m in long for c in m}))
    print(f"| {label} | {cells[0]} | {cells[1]} | {load:.1f} | {waits} |")
EOF
