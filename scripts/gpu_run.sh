#!/usr/bin/env bash
# scripts/gpu_run.sh, copied into gpu-bundle/ as run.sh by scripts/gpu_bundle.sh: the whole GPU proof in
# one call on a lent GPU machine (torch + transformers + peft for its python3, no internet), within an
# 8-minute budget with a timeout per step. Writes at most 6 files to $OUT (default gpu-bundle/out):
#   device.txt          nvidia-smi, torch/CUDA/cuDNN versions, SM count, the bundle's MANIFEST
#   attention_tests.log every AttentionCuda and FusedOpsCuda test (none may skip)
#   attention_bench.md  bench_attention --cuda: ours vs SDPA flash/cuDNN/mem-efficient and LibTorch's
#                       FlashAttention-2 varlen, seq 512-8k, head_dim 64/128, causal or not, + a packed mix
#   train.md            sft train on SmolLM2-135M-shaped random weights, bf16 mixed precision, LoRA and
#                       full x attention fused and sdpa (tokens/s, target tokens/s, peak GPU memory, every
#                       step's loss, fused-vs-sdpa agreement, loss falls), the same LoRA job with HF
#                       transformers + PEFT (bench_train.py), the NCCL world-size-1 step, and 5 steps
#                       with attention: auto (the race's logged choice)
#   train_logs.txt      the tails of the training runs' logs
#   summary.md          what ran, passed, failed or was skipped, and why
# The model's weights are NOT in the bundle: step 4 makes random-init weights from its config.json with
# this machine's python3 + transformers (the checks are throughput, agreement and a falling loss).
# `run.sh --dry-run` walks every step on a CPU machine with the CUDA parts skipping (a tiny random model,
# 3 CPU steps), checking the bundle: files present, binaries start, libraries resolve against the local
# torch (SFT_PYTHON, default python3). Exit status: 0 when nothing failed.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DRY=0
[[ "${1:-}" == --dry-run ]] && DRY=1
OUT="${OUT:-$HERE/out}"
mkdir -p "$OUT"
PY="${SFT_PYTHON:-python3}"
BUDGET_S="${SFT_GPU_BUDGET_S:-470}"  # 8 minutes, less a margin for the transfer back
START=$(date +%s)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sft-gpu.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
SUMMARY=()
FAILED=0

elapsed() { echo $(($(date +%s) - START)); }
record() {  # STEP STATUS DETAIL
  SUMMARY+=("| $1 | $2 | $3 |")
  [[ "$2" == FAILED ]] && FAILED=1
  echo "[run $(elapsed)s] $1: $2 - $3"
}
# budget CMD...: runs CMD under `timeout` of min(STEP_MAX, what is left of the budget - 10 s).
budget() {
  local max=$1 left
  shift
  left=$((BUDGET_S - $(elapsed) - 10))
  ((left < max)) && max=$left
  if ((max < 5)); then echo "out of time budget" >&2; return 124; fi
  timeout -k 5 "$max" "$@"
}

# ---- the environment: our binaries see the bundle's libraries plus this machine's torch and CUDA ----
TORCH_DIR="$("$PY" -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null)" || TORCH_DIR=""
NV_LIBS=""
if [[ -n "$TORCH_DIR" ]]; then
  for d in "$TORCH_DIR"/../nvidia/*/lib; do [[ -d "$d" ]] && NV_LIBS="$NV_LIBS:$(cd "$d" && pwd)"; done
fi
OUR_LD="$HERE/lib:$TORCH_DIR/lib$NV_LIBS"
ours() { LD_LIBRARY_PATH="$OUR_LD${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$@"; }
# bench_train.py runs sft through this wrapper, so the python side keeps its own environment.
printf '#!/usr/bin/env bash\nLD_LIBRARY_PATH="%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "%s" "$@"\n' \
  "$OUR_LD" "$HERE/bin/sft" >"$WORK/sft"
chmod +x "$WORK/sft"
HAVE_GPU=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 &&
  "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  HAVE_GPU=1
fi
if ((!DRY && !HAVE_GPU)); then
  echo "run.sh: no CUDA GPU visible here (nvidia-smi / torch.cuda); use --dry-run on a CPU machine" >&2
  exit 1
fi
MODE=$([[ $DRY == 1 ]] && echo "dry run (CPU; CUDA parts skip)" || echo "GPU run")
echo "[run] $MODE, budget ${BUDGET_S}s, out $OUT"

# ---- 0. the bundle itself ----
step0() {
  local missing=() f problems
  for f in bin/sft bin/sft_tests bin/bench_attention bin/libsft_cuda.so model/config.json model/tokenizer.json data/train.jsonl \
    scripts/bench_train.py MANIFEST; do
    [[ -e "$HERE/$f" ]] || missing+=("$f")
  done
  ((${#missing[@]} == 0)) || { record "0 bundle" FAILED "missing: ${missing[*]}"; return; }
  [[ -n "$TORCH_DIR" ]] || { record "0 bundle" FAILED "$PY cannot import torch"; return; }
  problems="$(for f in "$HERE"/bin/*; do ours ldd "$f" | grep -E "not found" | sed "s|^|${f##*/}: |"; done)"
  [[ -z "$problems" ]] || { record "0 bundle" FAILED "unresolved libraries: $(tr '\n' ';' <<<"$problems")"; return; }
  # Everything that is not LibTorch/CUDA/NCCL/cuDNN or the C/C++ runtime (the list in gpu_bundle.sh) must
  # come from the bundle, even where this machine happens to have its own copy (a dry run's Debian libs).
  local provided='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|librt\.so|libpthread\.so|libutil\.so|libstdc\+\+\.so|libgcc_s\.so|libgomp|libtorch|libc10|libcaffe2|libshm|libcuda|libcudart|libcublas|libcudnn|libcufft|libcufile|libcurand|libcusolver|libcusparse|libcupti|libnccl|libnvJitLink|libnvrtc|libnvshmem|libnvToolsExt|libnvtx|libnvperf)'
  problems="$(for f in "$HERE"/bin/*; do ours ldd "$f" | awk '/=>/ {print $1, $3}'; done | grep -vE "$provided" |
    grep -v -F " $HERE/lib/" | sort -u || true)"
  [[ -z "$problems" ]] || { record "0 bundle" FAILED "not from the bundle: $(tr '\n' ';' <<<"$problems")"; return; }
  # LD_LIBRARY_PATH comes before the binaries' RUNPATH (build-machine paths): torch must come from here.
  problems="$(ours ldd "$HERE/bin/sft" | awk '/libtorch_cpu|libc10\.so/ {print $3}' | grep -v -F "$TORCH_DIR" || true)"
  [[ -z "$problems" ]] || { record "0 bundle" FAILED "torch resolved outside $TORCH_DIR: $problems"; return; }
  ours "$HERE/bin/sft" --version >"$WORK/version" 2>&1 || { record "0 bundle" FAILED "sft --version: $(cat "$WORK/version")"; return; }
  # The CUDA plugin (bin/libsft_cuda.so, dlopen'ed by sft) must load against this machine's torch when
  # asked to (any machine), and by itself on the GPU; its status line says why not.
  SFT_CUDA_PLUGIN=load ours "$HERE/bin/sft" --version >"$WORK/version_load" 2>&1
  if ! grep -q "^CUDA: plugin loaded from $HERE/bin/libsft_cuda.so" "$WORK/version_load"; then
    record "0 bundle" FAILED "SFT_CUDA_PLUGIN=load: the CUDA plugin did not load: $(grep '^CUDA:' "$WORK/version_load")"; return
  fi
  if ((HAVE_GPU)) && ! grep -q "^CUDA: plugin loaded from" "$WORK/version"; then
    record "0 bundle" FAILED "the CUDA plugin did not load: $(grep '^CUDA:' "$WORK/version")"; return
  fi
  ours "$HERE/bin/sft" help config >"$WORK/help_config" 2>&1 || { record "0 bundle" FAILED "sft help config failed"; return; }
  ours "$HERE/bin/sft_tests" --gtest_list_tests --gtest_filter='AttentionCuda*:FusedOpsCuda*:Nf4Cuda*:DropoutLinearCuda*' >"$WORK/tests_list" 2>&1 ||
    { record "0 bundle" FAILED "sft_tests does not start: $(tail -3 "$WORK/tests_list")"; return; }
  N_CUDA_TESTS=$(grep -c '^  ' "$WORK/tests_list")
  ((N_CUDA_TESTS > 0)) || { record "0 bundle" FAILED "no AttentionCuda tests listed"; return; }
  "$PY" -c 'import transformers, peft' 2>"$WORK/py_err" || { record "0 bundle" FAILED "$PY lacks transformers/peft: $(tail -1 "$WORK/py_err")"; return; }
  record "0 bundle" ok "files present, libraries resolve (torch from $TORCH_DIR), binaries start ($(head -1 "$WORK/version")), the CUDA plugin loads, $N_CUDA_TESTS AttentionCuda tests listed"
}
N_CUDA_TESTS=0
step0

# ---- 1. device facts ----
{
  echo "# device facts, $(date -u +%Y-%m-%dT%H:%M:%SZ), $MODE"
  echo "uname: $(uname -srm); CPUs: $(nproc); memory: $(awk '/MemTotal/ {print $2 / 1048576 " GiB"}' /proc/meminfo)"
  if ((HAVE_GPU)); then
    nvidia-smi
    nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv
  else
    echo "nvidia-smi: no GPU visible"
  fi
  "$PY" - <<'EOF'
import torch
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version(),
      "| NCCL", torch.cuda.nccl.version() if torch.cuda.is_available() else "-")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device 0: {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB")
else:
    print("torch.cuda.is_available(): False")
EOF
  command -v nvcc >/dev/null && nvcc --version | tail -2
  echo; echo "## bundle MANIFEST"; cat "$HERE/MANIFEST"
} >"$OUT/device.txt" 2>&1
if ((HAVE_GPU)); then
  record "1 device facts" ok "$(grep -m1 '^device 0' "$OUT/device.txt")"
else
  record "1 device facts" skipped "no GPU (dry run); torch/python facts written"
fi

# ---- 2. every AttentionCuda test, none skipped ----
{
  echo "# bin/sft_tests --gtest_filter='AttentionCuda*:FusedOpsCuda*:Nf4Cuda*:DropoutLinearCuda*' ($MODE)"
  budget 150 env SFT_TEST_SEED="${SFT_TEST_SEED:-}" LD_LIBRARY_PATH="$OUR_LD" "$HERE/bin/sft_tests" --gtest_filter='AttentionCuda*:FusedOpsCuda*:Nf4Cuda*:DropoutLinearCuda*'
  echo "exit status: $?"
} >"$OUT/attention_tests.log" 2>&1
rc=$(sed -n 's/^exit status: //p' "$OUT/attention_tests.log")
skipped=$(grep -cE '^\[  SKIPPED \] (AttentionCuda|FusedOpsCuda|Nf4Cuda|DropoutLinearCuda)\.[A-Za-z0-9_]+ \([0-9]+ ms\)' "$OUT/attention_tests.log")
passed=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) tests\{0,1\}.*/\1/p' "$OUT/attention_tests.log")
if ((DRY)); then
  if [[ "$rc" == 0 ]] && ((skipped == N_CUDA_TESTS)); then
    record "2 AttentionCuda tests" skipped "dry run: all $skipped listed tests skip here ($(grep -m1 -o -E '(no CUDA device|the CUDA plugin is not loaded)[^"(]*' "$OUT/attention_tests.log" || echo 'no GPU'))"
  else
    record "2 AttentionCuda tests" FAILED "dry run: exit $rc, $skipped of $N_CUDA_TESTS skipped"
  fi
elif [[ "$rc" == 0 ]] && ((skipped == 0)) && [[ "${passed:-0}" == "$N_CUDA_TESTS" ]]; then
  record "2 AttentionCuda tests" ok "$passed of $N_CUDA_TESTS passed, none skipped"
else
  record "2 AttentionCuda tests" FAILED "exit $rc, passed ${passed:-0} of $N_CUDA_TESTS, skipped $skipped (see attention_tests.log)"
fi

# ---- 3. attention throughput ----
budget 110 env LD_LIBRARY_PATH="$OUR_LD" "$HERE/bin/bench_attention" --cuda >"$OUT/attention_bench.md" 2>&1
rc=$?
if ((DRY)); then
  if grep -q -E "no CUDA device is visible|the CUDA plugin is not loaded: no NVIDIA driver" "$OUT/attention_bench.md"; then
    record "3 attention throughput" skipped "dry run: bench_attention starts and reports no CUDA device ($(tail -1 "$OUT/attention_bench.md" | cut -c1-80))"
  else
    record "3 attention throughput" FAILED "dry run: unexpected output (exit $rc): $(tail -1 "$OUT/attention_bench.md")"
  fi
elif ((rc == 0)); then
  record "3 attention throughput" ok "$(grep -c '^| [0-9]' "$OUT/attention_bench.md") rows in attention_bench.md"
else
  record "3 attention throughput" FAILED "exit $rc (124: timed out); partial table in attention_bench.md"
fi

# ---- 4. training: random-init SmolLM2-135M-shaped weights, then LoRA and full x fused and sdpa ----
MODEL="$WORK/model"
TRAIN_MD="$OUT/train.md"
LOGS="$OUT/train_logs.txt"
: >"$LOGS"
make_model() {  # random init from the bundle's config.json (dry run: a 2-layer model of the same family)
  budget 90 "$PY" - "$HERE/model" "$MODEL" "$DRY" <<'EOF'
import shutil, sys
from pathlib import Path
import torch, transformers
src, dst, dry = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
config = transformers.AutoConfig.from_pretrained(src)
if dry:  # small enough for a few CPU steps; head_dim stays 64 (a CUDA kernel size)
    config.num_hidden_layers, config.hidden_size, config.intermediate_size = 2, 128, 256
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = 2, 1, 64
torch.manual_seed(0)
model = transformers.AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
model.save_pretrained(dst)
for f in src.iterdir():
    if f.name != "config.json":
        shutil.copy(f, dst / f.name)
n = sum(p.numel() for p in model.parameters())
print(f"random-init {config.model_type}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
      f"heads {config.num_attention_heads}/{config.num_key_value_heads}, head_dim {config.head_dim}, {n / 1e6:.1f}M parameters, bf16")
EOF
}
if make_model >"$WORK/model.log" 2>&1; then
  MODEL_DESC="$(tail -1 "$WORK/model.log")"
  record "4a random-init model" ok "$MODEL_DESC (transformers $("$PY" -c 'import transformers; print(transformers.__version__)'))"
else
  record "4a random-init model" FAILED "$(tail -3 "$WORK/model.log" | tr '\n' ' ')"
  MODEL_DESC=""
fi

# gpu_peak_mib PID: nvidia-smi's used memory, sampled every 0.2 s while PID lives, minus the idle value.
gpu_peak_mib() {
  local pid=$1 base peak=0 used
  ((HAVE_GPU)) || { echo "n/a"; return; }
  base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 | head -1)
  while kill -0 "$pid" 2>/dev/null; do
    used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 | head -1)
    ((used > peak)) && peak=$used
    sleep 0.2
  done
  echo $((peak > base ? peak - base : 0))
}

if ((DRY)); then STEPS=3; DEVICE=cpu; THREADS="threads: 1, "; else STEPS=30; DEVICE=cuda; THREADS=""; fi
train_run() {  # METHOD ATTENTION -> $WORK/runs/METHOD-ATTENTION, peak memory in .../gpu_peak
  local method=$1 attention=$2 dir="$WORK/runs/$1-$2" lr
  lr=$([[ $method == lora ]] && echo 2.0e-3 || echo 1.0e-4)
  mkdir -p "$dir"
  cat >"$dir.yaml" <<EOF
model: {path: $MODEL, attention: $attention}
data: {train: $HERE/data/train.jsonl, max_seq_len: 1024, packing: true}
finetune: {method: $method, lora: {r: 8, alpha: 16, dropout: 0.0}}
train: {max_steps: $STEPS, micro_batch_size: 8, grad_accum: 1, lr: $lr, scheduler: constant, seed: 1,
        ${THREADS}device: $DEVICE, mixed_precision: bf16}
log: {every_steps: 1, progress: false}
output_dir: $dir
EOF
  budget 75 env LD_LIBRARY_PATH="$OUR_LD" "$HERE/bin/sft" train "$dir.yaml" --force >"$dir.log" 2>&1 &
  local pid=$!
  gpu_peak_mib $pid >"$dir.gpu_peak"
  wait $pid
  local rc=$?
  { echo "== sft train $method, attention $attention (exit $rc)"; tail -25 "$dir.log"; echo; } >>"$LOGS"
  return $rc
}
RUNS=()
if [[ -n "$MODEL_DESC" ]]; then
  for method in lora full; do
    for attention in fused sdpa; do
      if train_run "$method" "$attention"; then
        RUNS+=("$method-$attention")
        record "4 sft train $method $attention" ok "$STEPS steps"
      else
        record "4 sft train $method $attention" FAILED "see train_logs.txt"
      fi
    done
  done
fi

# The tables and checks from each run's metrics.jsonl (steady state excludes step 1).
"$PY" - "$WORK/runs" "$DRY" "$MODEL_DESC" >"$TRAIN_MD" 2>"$WORK/report_err" <<'EOF'
import json, sys
from pathlib import Path
runs, dry, model = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
# The CPU tests' bf16 tolerances (tests/test_train_precision.cpp, README "What the training tests check"): bf16 compute
# over exact fp32 trained weights (LoRA) within 3e-3 relative, bf16-rounded trained weights (full) 2e-2.
TOL = {"lora": 3e-3, "full": 2e-2}
print(f"# sft train on the GPU ({'DRY RUN on the CPU: tiny model, 3 steps, numbers are not GPU results' if dry else 'CUDA'})\n")
print(f"Model: {model}. Data: the bundle's quiz examples packed into rows of 1024 tokens, micro-batch 8, "
      "bf16 mixed precision (fp32 master weights), constant lr (LoRA r=8 2e-3, full 1e-4), LoRA dropout 0.\n")
print("| method | attention | steps | tokens/s | target tokens/s | peak GPU MiB (nvidia-smi, minus idle) | first loss | last loss |")
print("|---|---|---|---|---|---|---|---|")
losses, checks = {}, []
for m in ("lora", "full"):
    for a in ("fused", "sdpa"):
        f = runs / f"{m}-{a}" / "metrics.jsonl"
        if not f.exists():
            print(f"| {m} | {a} | - | - | - | - | - | - |")
            continue
        rows = [json.loads(l) for l in open(f)]
        losses[(m, a)] = [r["loss"] for r in rows]
        rest, span = rows[1:], rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]
        tps = sum(r["tokens"] for r in rest) / span if rest and span > 0 else float("nan")
        ttps = sum(r["target_tokens"] for r in rest) / span if rest and span > 0 else float("nan")
        peak = (runs / f"{m}-{a}.gpu_peak").read_text().strip() if (runs / f"{m}-{a}.gpu_peak").exists() else "n/a"
        print(f"| {m} | {a} | {len(rows)} | {tps:,.0f} | {ttps:,.0f} | {peak} | {rows[0]['loss']:.4f} | {rows[-1]['loss']:.4f} |")
print("\nLoss of every step:\n")
print("| step | " + " | ".join(f"{m} {a}" for (m, a) in losses) + " |")
print("|---" * (len(losses) + 1) + "|")
for i in range(max((len(v) for v in losses.values()), default=0)):
    print(f"| {i + 1} | " + " | ".join(f"{v[i]:.5f}" if i < len(v) else "-" for v in losses.values()) + " |")
print()
for m in ("lora", "full"):
    f, s = losses.get((m, "fused")), losses.get((m, "sdpa"))
    if f and s and len(f) == len(s):
        worst = max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(f, s))
        ok = worst <= TOL[m]
        checks.append(ok)
        print(f"- {m}: fused vs sdpa, worst per-step relative loss difference {worst:.2e} (tolerance {TOL[m]:g}): {'ok' if ok else 'FAILED'}")
    for a in ("fused", "sdpa"):
        v = losses.get((m, a))
        if v and len(v) >= 2:
            k = max(1, min(5, len(v) // 2))
            first, last = sum(v[:k]) / k, sum(v[-k:]) / k
            ok = last < first
            checks.append(ok)
            print(f"- {m} {a}: mean loss of the first {k} steps {first:.4f}, of the last {k} {last:.4f}: {'falls' if ok else 'FAILED: does not fall'}")
sys.exit(0 if checks and all(checks) else 3)
EOF
rc=$?
if ((rc == 0)); then
  record "4 training checks" ok "fused vs sdpa within the bf16 tolerance, loss falls (train.md)"
else
  record "4 training checks" FAILED "exit $rc: $(grep -E 'FAILED' "$TRAIN_MD" | head -3 | tr '\n' ' ')$(tail -2 "$WORK/report_err" | tr '\n' ' ')"
fi

# ---- 5. the same LoRA job with HF transformers + PEFT, side by side ----
{
  echo
  echo "## sft vs HF transformers + PEFT (scripts/bench_train.py, same token ids, unpacked padded rows)"
} >>"$TRAIN_MD"
if [[ -n "$MODEL_DESC" ]]; then
  hf_steps=$([[ $DRY == 1 ]] && echo 3 || echo 30)
  budget 100 "$PY" "$HERE/scripts/bench_train.py" --model smollm2 --model-dir "$MODEL" --train-data "$HERE/data/train.jsonl" \
    --sft "$WORK/sft" --python "$PY" --device "$DEVICE" --steps "$hf_steps" --micro-batch-size 8 \
    --cases "$([[ $DRY == 1 ]] && echo lora-padded-fp32 || echo lora-padded-bf16)" --peak-seconds 1 \
    --threads "$([[ $DRY == 1 ]] && echo 1 || nproc)" >"$WORK/hf.md" 2>&1
  rc=$?
  cat "$WORK/hf.md" >>"$TRAIN_MD"
  if ((rc == 0)); then
    record "5 HF transformers + PEFT" ok "$hf_steps steps each, $DEVICE (train.md)"
  else
    record "5 HF transformers + PEFT" FAILED "exit $rc: $(tail -2 "$WORK/hf.md" | tr '\n' ' ')"
  fi
else
  record "5 HF transformers + PEFT" FAILED "no model (step 4a)"
fi

# ---- 6. NCCL: a world-size-1 process group training a few steps with allreduce on ----
echo -e "\n## NCCL, world size 1" >>"$TRAIN_MD"
if ! grep -q 'dist\.force_process_group' "$WORK/help_config" 2>/dev/null; then
  echo "Skipped: this sft has no dist.force_process_group key (no process group at world size 1)." >>"$TRAIN_MD"
  record "6 NCCL world size 1" skipped "sft help config lists no dist.force_process_group: world size 1 builds no group"
elif ((!HAVE_GPU)); then
  record "6 NCCL world size 1" skipped "dry run: NCCL needs a GPU (dist.force_process_group present)"
elif [[ ! -f "$WORK/runs/lora-fused.yaml" ]]; then
  record "6 NCCL world size 1" FAILED "no training config (step 4)"
else
  # dist.force_process_group builds a real NCCL group of one under torchrun's environment: the gradient
  # buckets and the per-step [loss, stop] allreduce run through NCCL (comm_wait_s is logged only then).
  sed 's/max_steps: [0-9]*/max_steps: 5/' "$WORK/runs/lora-fused.yaml" >"$WORK/nccl.yaml"
  budget 90 env LD_LIBRARY_PATH="$OUR_LD" RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 LOCAL_WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 \
    MASTER_PORT=29517 "$HERE/bin/sft" train "$WORK/nccl.yaml" output_dir="$WORK/runs/nccl" dist.backend=nccl \
    dist.force_process_group=true --force >"$WORK/nccl.log" 2>&1
  rc=$?
  { echo "== NCCL world size 1 (exit $rc)"; tail -25 "$WORK/nccl.log"; } >>"$LOGS"
  comm_lines=$(grep -c comm_wait_s "$WORK/runs/nccl/metrics.jsonl" 2>/dev/null || echo 0)
  { echo "exit $rc; metrics lines with comm_wait_s: $comm_lines"; grep -m1 "processes (" "$WORK/nccl.log"; } >>"$TRAIN_MD"
  if ((rc == 0)) && grep -q "1 processes (nccl)" "$WORK/nccl.log" && ((comm_lines > 0)); then
    record "6 NCCL world size 1" ok "5 steps on an NCCL group of one, allreduce on ($comm_lines metrics lines)"
  else
    record "6 NCCL world size 1" FAILED "exit $rc, comm_wait_s lines $comm_lines (train_logs.txt)"
  fi
fi

# ---- 7. attention: auto end to end (the race on the run's shape), if time is left ----
echo -e "\n## attention: auto (5 LoRA steps)" >>"$TRAIN_MD"
if [[ -f "$WORK/runs/lora-fused.yaml" ]]; then
  sed 's/max_steps: [0-9]*/max_steps: 5/; s/attention: fused/attention: auto/' "$WORK/runs/lora-fused.yaml" >"$WORK/auto.yaml"
  budget 45 env LD_LIBRARY_PATH="$OUR_LD" "$HERE/bin/sft" train "$WORK/auto.yaml" output_dir="$WORK/runs/auto" --force \
    >"$WORK/auto.log" 2>&1
  rc=$?
  choice="$(grep -m1 'model.attention=auto' "$WORK/auto.log" || echo "no choice logged")"
  echo "exit $rc: $choice" >>"$TRAIN_MD"
  { echo "== sft train lora, attention auto (exit $rc)"; tail -10 "$WORK/auto.log"; } >>"$LOGS"
  if ((rc != 0)); then
    record "7 attention auto" FAILED "exit $rc (train_logs.txt)"
  elif ((DRY)); then
    record "7 attention auto" ok "dry run: CPU auto is sdpa, no race ($choice)"
  else
    record "7 attention auto" ok "$choice"
  fi
else
  record "7 attention auto" FAILED "no LoRA config from step 4"
fi

# ---- summary ----
{
  echo "# gpu-bundle/run.sh: $MODE, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(elapsed) s of a ${BUDGET_S} s budget"
  echo
  echo "| step | status | detail |"
  echo "|---|---|---|"
  printf '%s\n' "${SUMMARY[@]}"
} >"$OUT/summary.md"
cat "$OUT/summary.md"
exit $FAILED
