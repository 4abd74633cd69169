#!/usr/bin/env bash
# scripts/profile_train.sh: where one `sft train` step's CPU time goes (not a test). Samples a short
# SmolLM2 run (default: LoRA r=8, packed 512-token rows, fp32) with `perf record -e cpu-clock` (a software
# event: works where hardware counters do not, e.g. in VMs where `perf stat -e instructions` says
# <not supported>) and sorts each sample's own function (self time) into matmul, elementwise,
# attention, optimizer, data, OpenMP waiting, page faults, allocator and other. Setup (model load, data)
# is sampled too; it shrinks with more --steps. A second table splits the categories by thread (main
# thread vs OpenMP worker): the worker's OpenMP-waiting share is the time the main thread ran alone.
# Usage: scripts/profile_train.sh [--case lora-packed-fp32] [--steps 6] [--sft PATH] [--top 25]
#        [extra --sft-env KEY=VALUE ... passed to bench_train.py]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
case_name=lora-packed-fp32
steps=6
sft="$ROOT/build/sft"
top=25
extra=()
while (($#)); do
  case "$1" in
    --case) case_name="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --sft) sft="$2"; shift 2 ;;
    --top) top="$2"; shift 2 ;;
    *) extra+=("$1"); shift ;;
  esac
done
command -v perf >/dev/null || { echo "profile_train: perf is not installed (Debian: linux-perf)" >&2; exit 2; }
[[ "$sft" != "$ROOT/build/sft" ]] || source scripts/bench_prepare.sh
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
.venv/bin/python scripts/bench_train.py --model smollm2 --sft-only --sft "$sft" --cases "$case_name" --steps "$steps" \
  --peak-seconds 0.3 --sft-prefix "perf record -q --no-buildid-cache -e cpu-clock -F 499 -o $work/perf.data --" "${extra[@]}" \
  | grep -E '^\| '"$case_name" || true
# The categoriser reads perf report's text on stdin (so it is passed with -c, not as a here-document).
categorize=$(cat <<'EOF'
import os, re, sys, time
top, case, steps = int(sys.argv[1]), sys.argv[2], sys.argv[3]
# First match wins: (category, regex on "dso symbol").
RULES = [
    ("OpenMP waiting (libgomp spin, barriers)", r"^libgomp"),
    ("page faults: zeroing new pages (kernel)", r"kallsyms.*(clear_page|page_fault|do_anonymous_page|handle_mm_fault|alloc_pages|rmqueue|_raw_spin|folio|lru|zap_|unmap|tlb|memcg|list_del)"),
    ("kernel: scheduling, syscalls", r"kallsyms"),
    ("attention (SDPA, softmax)", r"flash_attention|scaled_dot_product|sdpa|softmax|attention"),
    ("matmul (MKL/oneDNN GEMM + packing)", r"mkl_|gemm|dnnl|brgemm|gblock|acopy|bcopy|jit_|\[unknown\]"),
    ("optimizer (AdamW, grad norm)", r"adam|Adam|foreach|norm_two|vector_norm|lerp|addcdiv|addcmul|sqrt_kernel"),
    ("RNG (dropout masks, adapter init)", r"bernoulli|random|normal_kernel|uniform|mt19937|philox"),
    ("allocator (malloc/free)", r"malloc|free|_int_|arena|jemalloc|je_|tcmalloc|tc_|sbrk|mmap|munmap"),
    ("memcpy / memset", r"memmove|memcpy|memset"),
    ("data (sft data pipeline)", r"sft::data|nlohmann|YAML|tokeniz"),
    ("elementwise and reductions (ATen CPU kernels)", r"sft::kernels::cpu|Vectorized|VectorizedLoop|cpu_kernel|_kernel|reduce|vec::|at::native"),
    ("autograd, dispatcher, other", r"."),
]
if case == "--threads":
    # perf report --sort pid,dso,sym: the same categories per thread, for the two busiest threads (the
    # main thread, whose tid is the pid, and the OpenMP worker). Samples are of the whole process, so a
    # worker spinning while the main thread runs alone shows up as the worker's OpenMP-waiting share.
    per = {}
    for line in sys.stdin:
        m = re.match(r"\s+([0-9.]+)%\s+(\d+):\S+\s+(\S+)\s+\[.\]\s+(.*)", line)
        if not m:
            continue
        pct, tid, dso, sym = float(m.group(1)), int(m.group(2)), m.group(3), m.group(4).strip()
        category = next(c for c, rx in RULES if re.search(rx, f"{dso} {sym}"))
        per.setdefault(tid, {}).setdefault(category, 0.0)
        per[tid][category] += pct
    busiest = sorted(sorted(per, key=lambda t: -sum(per[t].values()))[:2])
    if len(busiest) < 2:
        sys.exit(0)
    main, worker = busiest
    print("\nBy thread (share of all samples; the main thread runs the autograd engine and every serial part):\n")
    print("| where | main thread | OpenMP worker |")
    print("|---|---|---|")
    cats = sorted(set(per[main]) | set(per[worker]), key=lambda c: -(per[main].get(c, 0) + per[worker].get(c, 0)))
    for c in cats:
        print(f"| {c} | {per[main].get(c, 0):.1f}% | {per[worker].get(c, 0):.1f}% |")
    print(f"| all | {sum(per[main].values()):.1f}% | {sum(per[worker].values()):.1f}% |")
    sys.exit(0)
shares, symbols = {}, []
for line in sys.stdin:
    m = re.match(r"\s+([0-9.]+)%\s+(\S+)\s+\[.\]\s+(.*)", line)
    if not m:
        continue
    pct, dso, sym = float(m.group(1)), m.group(2), m.group(3).strip()
    key = f"{dso} {sym}"
    category = next(c for c, rx in RULES if re.search(rx, key))
    shares[category] = shares.get(category, 0.0) + pct
    symbols.append((pct, category, dso, sym[:110]))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown CPU")
print(f"\nperf cpu-clock self time, sft train {case}, {steps} steps (setup included), {cpu},"
      f" {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
      + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + "\n")
print("| where | share of samples |")
print("|---|---|")
for category, pct in sorted(shares.items(), key=lambda kv: -kv[1]):
    print(f"| {category} | {pct:.1f}% |")
print(f"\nTop {top} functions:\n")
print("| share | category | library | function |")
print("|---|---|---|---|")
for pct, category, dso, sym in symbols[:top]:
    print(f"| {pct:.2f}% | {category} | {dso} | `{sym}` |")
EOF
)
perf report -i "$work/perf.data" --stdio --no-children --sort dso,sym -g none 2>/dev/null \
  | .venv/bin/python -c "$categorize" "$top" "$case_name" "$steps"
perf report -i "$work/perf.data" --stdio --no-children --sort pid,dso,sym -g none 2>/dev/null \
  | .venv/bin/python -c "$categorize" "$top" --threads "$steps"
