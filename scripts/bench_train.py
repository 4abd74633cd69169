#!/usr/bin/env python3
"""Benchmark (not a test): the same SFT job with `sft train` and with HF transformers (+ PEFT for LoRA), on
this machine, in one run: same torch build, threads, model, token ids (made once by `sft data --out`),
optimizer (AdamW) and steps. One table row per case of the matrix
  rows:      padded (micro-batch 4 unpacked rows of one example each, padded to the longest) |
             packed (micro-batch 1 row of up to 512 tokens, several examples, attention never crosses them)
  method:    lora (r=8, the seven projections) | full | full_inbwd (full with sft's
             train.optimizer_in_backward: AdamW per parameter inside the backward, gradients freed as they
             are used; clipping is off in BOTH runners for this method, since it rules clipping out; HF
             Trainer has no such option, so HF runs its usual step after the backward, unclipped)
  precision: fp32 | bf16 (both runners under bf16 autocast over fp32 weights, so AMX is used where it exists)
with tokens/s, target tokens/s, peak RSS, time to the first optimizer step, the ratios sft / HF, and each
runner's MFU against the machine's measured torch.mm peak for the dtype (flops_per_token() below).

  .venv/bin/python scripts/bench_train.py --model smollm2            # the whole matrix
  .venv/bin/python scripts/bench_train.py --model smollm2 --quick    # lora fp32 padded + packed, fewer steps
  .venv/bin/python scripts/bench_train.py --model smollm2 --sft-only --cases lora-packed-fp32 \\
      --label jemalloc --sft-env LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2   # allocator sweeps
On a GPU (gpu-bundle/run.sh): --device cuda runs the old single case (LoRA, padded, bf16) and adds each
process's peak GPU memory; --sft, --python, --model-dir and --train-data point at the bundle's files.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")
PACKED_LEN = 512

# The HF side, run as `python -c HF_LOOP model_dir batches.jsonl threads rank method autocast device`.
HF_LOOP = textwrap.dedent('''
    import json, sys, time
    t0 = time.time()
    import torch
    from transformers import AutoModelForCausalLM
    model_dir, batch_path, threads, r, method, autocast_mode, device = sys.argv[1:8]
    torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    batches = [json.loads(l) for l in open(batch_path)]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").to(device)
    # bf16 autocast over fp32 weights, what sft's train.mixed_precision: bf16 does.
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=autocast_mode == "bf16")
    if method == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=int(r), lora_alpha=2 * int(r), lora_dropout=0.0, task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    model.train()
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=1e-4)
    tokens = 0
    first = None
    t_loop = time.time()
    for b in batches:
        inputs = {k: torch.tensor(v, device=device) for k, v in b.items()}
        with autocast:
            out = model(**inputs)  # padded: attention_mask; packed: position_ids restarting per example
        out.loss.backward()
        if method != "full_inbwd":  # that method runs unclipped in both runners
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step(); opt.zero_grad(set_to_none=True)
        tokens += sum(len(row) for row in b["input_ids"]) if "attention_mask" not in b else sum(map(sum, b["attention_mask"]))
        if first is None:
            if device == "cuda": torch.cuda.synchronize()
            first = time.time() - t0
            t_loop = time.time(); tokens = 0
    if device == "cuda": torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else 0.0
    print(json.dumps({"tokens": tokens, "elapsed": time.time() - t_loop, "first_step_s": first,
                      "torch_peak_allocated_mib": peak}))
''')

# The machine's matmul peak: `python -c PEAK_LOOP threads seconds device` -> GFLOP/s per dtype of torch.mm
# on square matrices (the largest of the sizes tried that is fastest), on the benchmark's thread count.
PEAK_LOOP = textwrap.dedent('''
    import json, sys, time
    import torch
    threads, seconds, device = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(threads)
    result = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        best = 0.0
        for n in (1024, 2048):
            a = torch.randn(n, n, dtype=dtype, device=device); b = torch.randn(n, n, dtype=dtype, device=device)
            torch.mm(a, b)
            count, start = 0, time.time()
            while time.time() - start < seconds / 3:
                torch.mm(a, b); count += 1
                if device == "cuda": torch.cuda.synchronize()
            rate = 2 * n ** 3 * count / (time.time() - start) / 1e9
            if rate > best: best, result["size"] = rate, n
        result[name] = best
    print(json.dumps(result))
''')


def machine_header(threads):
    """CPU model, cores, thread count, date and load average: tables from different machines stay apart."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    flags = Path("/proc/cpuinfo").read_text()
    isa = [f for f in ("avx512f", "amx_bf16", "avx512_bf16") if f" {f}" in flags]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{model} ({os.cpu_count()} cores, {'/'.join(isa) or 'no AVX-512'}), {threads} threads,"
            f" {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {load}")


def gpu_memory_used_mib():
    """Device 0's used memory per nvidia-smi (all processes), or None without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10).stdout
        return float(out.strip().splitlines()[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


class GpuMemoryPeak:
    """Samples nvidia-smi every 0.2 s while a child runs: the peak minus the memory in use before it."""

    def __init__(self, enabled):
        self.enabled, self.peak, self.stop = enabled, None, threading.Event()
        self.base = gpu_memory_used_mib() if enabled else None
        self.thread = threading.Thread(target=self._poll, daemon=True)
        if self.base is not None:
            self.thread.start()

    def _poll(self):
        while not self.stop.is_set():
            used = gpu_memory_used_mib()
            if used is not None:
                self.peak = used if self.peak is None else max(self.peak, used)
            self.stop.wait(0.2)

    def finish(self):
        if self.base is None:
            return None
        self.stop.set()
        self.thread.join()
        return None if self.peak is None else self.peak - self.base


def peak_rss_of(cmd, gpu=False, timeout=None, watch=None, **kwargs):
    """Runs cmd and returns (stdout, stderr, {rss MiB, minor_faults, first_line_s}, seconds, peak GPU MiB or
    None); stdout is None when it ran past `timeout` seconds (then it is killed). One child at a time; wait4
    gives this child's own rusage. first_line_s: seconds from the start until the file `watch` (if given)
    was first seen non-empty (polled every 50 ms)."""
    start = time.time()
    first_line_s = None
    memory = GpuMemoryPeak(gpu)
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        proc = subprocess.Popen(cmd, stdout=out_file, stderr=err_file, text=True, **kwargs)  # files: no pipe stalls
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if watch is not None and first_line_s is None and os.path.exists(watch) and os.path.getsize(watch) > 0:
                first_line_s = time.time() - start
            if timeout and time.time() - start > timeout:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                timed_out = True
                break
            time.sleep(0.05)
        gpu_peak = memory.finish()
        out_file.seek(0), err_file.seek(0)
        out, err = out_file.read(), err_file.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0 and not timed_out:
        sys.exit(f"bench_train: {cmd[0]} failed ({code}):\n{out}\n{err}")
    usage = {"rss": usage.ru_maxrss / 1024.0, "minor_faults": usage.ru_minflt, "first_line_s": first_line_s}
    return None if timed_out else out, err, usage, time.time() - start, gpu_peak


# Targets of issue 17 (SmolLM2-135M against transformers + PEFT in the same run).
TARGET_SPEEDUP = {"lora": 2.0, "full": 1.5, "full_inbwd": 1.5}
TARGET_RSS_RATIO = 0.6
TARGET_MFU_FP32_PACKED = 0.60

# Steps per case, and the rough idle 2-core seconds per case (both runners, SmolLM2) used for the printed
# duration estimate.
STEPS = {"padded": 12, "packed": 8}
QUICK_STEPS = {"padded": 6, "packed": 4}
EXPECTED_S = {"tiny": 8, "smollm2": {"padded": 30, "packed": 55}}


def all_cases():
    return [f"{m}-{r}-{p}" for r in ("padded", "packed") for m in ("lora", "full", "full_inbwd") for p in ("fp32", "bf16")]


def flops_per_token(cfg, method, rank, doc_len_sq_mean):
    """Model FLOPs per token of one training step: (per input token, per target token).

    Matmul params per layer: q,o (d x d_q), k,v (d x d_kv), gate,up,down (d x d_ff), so
      P_layer = d*(2*d_q + 2*d_kv) + 3*d*d_ff,   forward = 2*P_layer per token per layer.
    Attention forward per token per layer: 4*T*d_q (QK^T and PV, non-causal count as in PaLM's 6N+12LHQT),
      with T the document length the token attends in (per-document: packed rows never cross examples);
      T enters as E[T] over tokens = sum(len^2)/sum(len) (doc_len_sq_mean).
    lm_head: 2*d*V per *target* token: the loss needs logits only there (sft computes only those; HF
      computes them for every position, which is HF's extra work, not counted as useful).
    Full FT: backward = 2x forward everywhere -> 3 * forward.
    LoRA: the frozen matmuls need only grad_x in backward (1x forward) -> 2 * forward; attention has no
      weights and needs dq, dk, dv (2x) -> 3x; adapters (A: d_in x r, B: r x d_out per projection) 3x their
      forward 2*r*(d_in + d_out). The frozen lm_head still needs grad_x -> 2 * its forward.
    Norms, RoPE, SwiGLU, softmax and the optimizer are not counted (MFU is matmul FLOPs / matmul peak)."""
    d, L, V = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or d // cfg["num_attention_heads"]
    d_q, d_kv, d_ff = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd, cfg["intermediate_size"]
    p_layer = d * (2 * d_q + 2 * d_kv) + 3 * d * d_ff
    fwd_matmul = 2 * p_layer * L
    fwd_attention = 4 * doc_len_sq_mean * d_q * L
    fwd_head = 2 * d * V
    if method.startswith("full"):
        return 3 * (fwd_matmul + fwd_attention), 3 * fwd_head
    adapters = 2 * rank * ((d + d_q) * 2 + (d + d_kv) * 2 + (d + d_ff) * 3) * L
    return 2 * fwd_matmul + 3 * fwd_attention + 3 * adapters, 2 * fwd_head


def pack_best_fit(examples, capacity):
    """Best-fit-decreasing, as sft's data/packing.h (longest first, fullest row that fits)."""
    rows = []  # [used, [examples]]
    for e in sorted(examples, key=lambda e: -len(e["input_ids"])):
        n = len(e["input_ids"])
        best = None
        for row in rows:
            if row[0] + n <= capacity and (best is None or row[0] > best[0]):
                best = row
        if best is None:
            best = [0, []]
            rows.append(best)
        best[0] += n
        best[1].append(e)
    return [r[1] for r in rows]


def hf_batches(examples, rows, mbs, steps):
    """Micro-batches for the HF loop: padded rows + attention_mask, or one packed row + position_ids that
    restart per example (transformers detects that with attention_mask=None and builds a block-diagonal
    causal mask, masking_utils.find_packed_sequence_indices; each example's first label is -100, as
    DataCollatorWithFlattening does, so no token predicts across a boundary)."""
    batches = []
    if rows == "padded":
        for step in range(steps):
            batch = [examples[(step * mbs + i) % len(examples)] for i in range(mbs)]
            width = max(len(e["input_ids"]) for e in batch)
            batches.append({"input_ids": [e["input_ids"] + [0] * (width - len(e["input_ids"])) for e in batch],
                            "labels": [e["labels"] + [-100] * (width - len(e["labels"])) for e in batch],
                            "attention_mask": [[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"]))
                                               for e in batch],
                            "docs": [len(e["input_ids"]) for e in batch]})
        return batches
    packed = pack_best_fit(examples, PACKED_LEN)
    for step in range(steps):
        row = packed[step % len(packed)]
        ids, labels, pos = [], [], []
        for e in row:
            ids += e["input_ids"]
            labels += [-100] + e["labels"][1:]
            pos += list(range(len(e["input_ids"])))
        batches.append({"input_ids": [ids], "labels": [labels], "position_ids": [pos],
                        "docs": [len(e["input_ids"]) for e in row]})
    return batches


def doc_len_sq_mean(batches):
    lens = [n for b in batches for n in b["docs"]]
    return sum(n * n for n in lens) / sum(lens)


def targets_of(batch):
    return sum(sum(1 for t in row[1:] if t != -100) for row in batch["labels"])


def sft_config(work, model_dir, tokens_file, case, steps, args, name):
    method, rows, precision = case.split("-")
    packed = rows == "packed"
    lora = f"lora: {{r: {args.rank}, alpha: {2 * args.rank}, dropout: 0.0}}" if method == "lora" else ""
    in_backward = ", max_grad_norm: 0, optimizer_in_backward: true" if method == "full_inbwd" else ""
    mixed = "bf16" if precision == "bf16" or args.device == "cuda" else "none"
    cfg = work / f"{name}.yaml"
    cfg.write_text(
        f"model: {{path: {model_dir}, attention: sdpa}}\n"
        f"data: {{train: {tokens_file}, format: tokenized, packing: {str(packed).lower()}, "
        f"max_seq_len: {PACKED_LEN if packed else 256}}}\n"
        f"finetune: {{method: {method.split('_')[0]}{', ' + lora if lora else ''}}}\n"
        f"train: {{max_steps: {steps}, micro_batch_size: {1 if packed else args.micro_batch_size}, grad_accum: 1,"
        f" lr: 1.0e-4, scheduler: constant, threads: {args.threads}, seed: 1, device: {args.device},"
        f" mixed_precision: {mixed}{in_backward}}}\n"
        f"log: {{every_steps: 1, progress: false}}\n"
        f"output_dir: {work}/{name}\n")
    return cfg


def run_sft(args, work, model_dir, tokens_file, case, steps, name, env):
    cfg = sft_config(work, model_dir, tokens_file, case, steps, args, name)
    load = os.getloadavg()[0]
    prefix = args.sft_prefix.split() if args.sft_prefix else []
    metrics = work / name / "metrics.jsonl"
    if metrics.exists():
        metrics.unlink()
    out, err, usage, _, gpu_mib = peak_rss_of(prefix + [args.sft, "train", str(cfg), "--force"] + args.sft_set,
                                              gpu=args.device == "cuda",
                                              timeout=args.case_timeout, env=env, watch=metrics)
    if out is None:
        return None
    lines = [json.loads(l) for l in open(work / name / "metrics.jsonl")]
    rest = lines[1:]
    span = rest[-1]["elapsed_s"] - lines[0]["elapsed_s"]
    # Process start to the first metrics line (step 1 logged), as the HF loop's first_step_s; not the whole
    # run minus the steps, which would count the final checkpoint and export (HF's loop saves nothing).
    first_step_s = usage.pop("first_line_s")
    return {"tokens_per_s": sum(l["tokens"] for l in rest) / span,
            "targets_per_s": sum(l["target_tokens"] for l in rest) / span,
            "first_step_s": first_step_s if first_step_s is not None else float("nan"), "gpu": gpu_mib, "load": load,
            "wait_policy": sft_wait_policy(err), **usage}


def run_hf(args, work, model_dir, batches, case, name):
    method, _, precision = case.split("-")
    batch_file = work / f"{name}.batches.jsonl"
    batch_file.write_text("".join(json.dumps({k: v for k, v in b.items() if k != "docs"}) + "\n" for b in batches))
    env = openmp_env(dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error"), args.omp_wait_policy)
    autocast = "bf16" if precision == "bf16" or args.device == "cuda" else "none"
    load = os.getloadavg()[0]
    out, _, usage, _, gpu_mib = peak_rss_of([args.python, "-c", HF_LOOP, str(model_dir), str(batch_file), str(args.threads),
                                           str(args.rank), method, autocast, args.device], gpu=args.device == "cuda",
                                            timeout=args.case_timeout, env=env)
    if out is None:
        return None
    result = json.loads(out.strip().splitlines()[-1])
    result.update(**usage, gpu=gpu_mib, load=load, tokens_per_s=result["tokens"] / result["elapsed"],
                  targets_per_s=sum(targets_of(b) for b in batches[1:]) / result["elapsed"])
    return result


def median_run(runs):
    """The run with the median tokens/s (the lower middle for an even count), with the spread of all runs
    in "tokens_per_s_all"; None if any run timed out."""
    if any(r is None for r in runs):
        return None
    ordered = sorted(runs, key=lambda r: r["tokens_per_s"])
    middle = dict(ordered[(len(ordered) - 1) // 2])
    middle["tokens_per_s_all"] = [r["tokens_per_s"] for r in runs]
    return middle


def measure_peaks(args):
    out, _, _, _, _ = peak_rss_of([args.python, "-c", PEAK_LOOP, str(args.threads), str(args.peak_seconds), args.device])
    return json.loads(out.strip().splitlines()[-1])


def tokens_file_for(args, work, model_dir):
    """The token ids both runners train on, repeated so that packed 512-token rows never run out."""
    tokens_file = work / "tokens.jsonl"
    if args.model == "smollm2" or args.model_dir:
        data_cfg = work / "data.yaml"
        data_cfg.write_text(f"model: {{path: {model_dir}}}\ndata: {{train: {args.train_data}, max_seq_len: 256}}\n"
                            f"output_dir: {work}/data\n")
        subprocess.run([args.sft, "data", str(data_cfg), "--out", str(tokens_file)], check=True, capture_output=True)
    else:
        tokens_file.write_text((ROOT / ".cache/golden/train/data.jsonl").read_text())
    examples = [json.loads(l) for l in open(tokens_file)]
    needed = (max(STEPS.values()) + 2) * PACKED_LEN * 2
    repeats = max(1, -(-needed // sum(len(e["input_ids"]) for e in examples)))
    examples = examples * repeats
    tokens_file.write_text("".join(json.dumps(e) + "\n" for e in examples))
    return tokens_file, examples


OPENMP_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def openmp_env(env, policy):
    """Sets the libgomp wait of one runner's environment `env`: `defaults` = each runner's own (none set:
    HF gets libgomp's spin-then-sleep, sft its start-up choice, spin on an idle machine, passive on a busy
    one, which its log names), passive or active via OMP_WAIT_POLICY, or libgomp's own unset behaviour
    (spin 300000 times, then sleep) spelled out as GOMP_SPINCOUNT so that sft does not choose."""
    for name in OPENMP_VARIABLES:
        env.pop(name, None)
    if policy == "libgomp-default":
        env["GOMP_SPINCOUNT"] = "300000"
    elif policy != "defaults":
        env["OMP_WAIT_POLICY"] = policy
    return env


def sft_wait_policy(log):
    """The wait policy sft's start-up log names (trainer/process_defaults.cpp), shortened for the table."""
    m = re.search(r"wait policy: ([^(;\n]*?)(?: \(|;|$)", log, re.M)
    return m.group(1) if m else "unknown"


def openmp_footer(args, results):
    if args.omp_wait_policy != "defaults":
        return f"{args.omp_wait_policy} for both runners"
    chosen = sorted({ours["wait_policy"] for ours, _, _ in results.values() if ours})
    return ("each runner's own default: HF libgomp's (spin, then sleep), sft's start-up choice "
            f"({', '.join(chosen) or 'no run'})")


def fmt_ratio(x, target=None, higher=True):
    if target is None:
        return f"{x:.2f}x"
    met = x >= target if higher else x <= target
    return f"{x:.2f}x ({'met' if met else 'not met'}: {'>=' if higher else '<='} {target})"


def print_table(args, results, peaks, matmul_cfg, estimate):
    print(f"\n## bench_train: model {args.model}, {args.threads} threads{' (sft only: ' + args.label + ')' if args.sft_only else ''}\n")
    if os.getloadavg()[0] > os.cpu_count():
        print("**Loaded machine** (1-min load average above the core count): the measured peak, MFU and"
              " tokens/s are all depressed by other work; compare ratios of the same run only.\n")
    print(machine_header(args.threads) + f"; torch.mm peak fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s"
          f" (square {peaks['size']}, {args.peak_seconds:.0f} s each); expected duration on an idle machine ~{estimate:.0f} s\n")
    print("| case | runner | tokens/s | target tok/s | peak RSS MiB | first step s | MFU | load | sft/HF tokens/s | sft/HF RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case, (ours, hf, flops) in results.items():
        method, rows, precision = case.split("-")
        peak = peaks[precision] * 1e9
        for who, r in (("sft", ours), ("HF", hf)):
            if r is None:
                if who == "sft" or not args.sft_only:
                    print(f"| {case} | {who} | timed out (--case-timeout {args.case_timeout:.0f} s) | | | | | | | |")
                continue
            mfu = (r["tokens_per_s"] * flops[0] + r["targets_per_s"] * flops[1]) / peak
            mfu_text = f"{100 * mfu:.1f}%"
            if who == "sft" and precision == "fp32" and rows == "packed" and args.model == "smollm2":
                mfu_text += f" ({'met' if mfu >= TARGET_MFU_FP32_PACKED else 'not met'}: >= {TARGET_MFU_FP32_PACKED:.0%})"
            ratio = rss = ""
            if who == "sft" and hf is not None and ours is not None:
                smol = args.model == "smollm2"
                ratio = fmt_ratio(ours["tokens_per_s"] / hf["tokens_per_s"], TARGET_SPEEDUP[method] if smol else None)
                rss = fmt_ratio(ours["rss"] / hf["rss"], TARGET_RSS_RATIO if smol else None, higher=False)
            all_tps = r.get("tokens_per_s_all", [])
            spread = f" ({min(all_tps):.0f}-{max(all_tps):.0f})" if len(all_tps) > 1 else ""
            print(f"| {case} | {who} | {r['tokens_per_s']:.0f}{spread} | {r['targets_per_s']:.0f} | {r['rss']:.0f} |"
                  f" {r['first_step_s']:.2f} | {mfu_text} | {r['load']:.1f} | {ratio} | {rss} |")
    print(f"\nFLOPs per token (flops_per_token() in scripts/bench_train.py): per input token + per target token;"
          f" matmul params per layer {matmul_cfg}. Steady state excludes step 1; load = 1-min load average when"
          f" the runner started. HF packed rows: sdpa with transformers' block-diagonal causal mask from"
          f" position_ids (CPU has no varlen SDPA, so HF computes the full {PACKED_LEN}x{PACKED_LEN} square"
          f" masked; sft runs SDPA per example); MFU counts the per-example attention for both."
          f" OpenMP wait (libgomp, LibTorch's OpenMP runtime): " + openmp_footer(args, results) + "." +
          (f" --repeats {args.repeats}: sft and HF alternate; each row is the run with the median tokens/s (the"
           f" lower middle for an even count), its range in parentheses; ratios are of those runs."
           if args.repeats > 1 else ""))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--cases", default=None, help=f"comma list from {','.join(all_cases())} (default: all)")
    parser.add_argument("--quick", action="store_true", help="lora fp32 padded + packed, fewer steps")
    parser.add_argument("--steps", type=int, default=None, help="steps for every case (default: 12 padded, 8 packed)")
    parser.add_argument("--micro-batch-size", type=int, default=4, help="padded rows per micro-batch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--peak-seconds", type=float, default=3.0, help="seconds of torch.mm per dtype")
    parser.add_argument("--case-timeout", type=float, default=240.0,
                        help="seconds one runner may take on one case before it is killed (bounds the run)")
    parser.add_argument("--sft-only", action="store_true", help="skip the HF runner (allocator/thread sweeps)")
    parser.add_argument("--sft-env", action="append", default=[], help="KEY=VALUE for the sft process (repeatable)")
    parser.add_argument("--sft-set", action="append", default=[],
                        help="a config override for sft train, e.g. model.fused_ops=[rmsnorm,rope,dropout,projections] (repeatable)")
    parser.add_argument("--omp-wait-policy", choices=["defaults", "passive", "active", "libgomp-default"],
                        default="defaults", help="libgomp's wait: each runner's own default, or the same for both")
    parser.add_argument("--sft-prefix", default=None, help="command words before sft (e.g. perf record ... --)")
    parser.add_argument("--label", default="default", help="name of the --sft-env variant in the title")
    parser.add_argument("--json-out", default=None, help="also append the results as one JSON line here")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per case and runner, alternating sft and HF; the table shows the median run")
    parser.add_argument("--keep-work", action="store_true",
                        help="keep the work directory (configs, run outputs); by default it is removed at exit,"
                             " since every full-FT case writes GiBs of checkpoints")
    parser.add_argument("--sft", default=str(ROOT / "build" / "sft"), help="the sft binary")
    parser.add_argument("--python", default=PY, help="python with torch, transformers and peft (the HF side)")
    parser.add_argument("--model-dir", default=None, help="instead of --model's directory")
    parser.add_argument("--train-data", default=str(ROOT / ".cache/data/quiz/train.jsonl"), help="smollm2's data")
    args = parser.parse_args()
    model_dir = {"tiny": ROOT / ".cache/golden/train/base", "smollm2": ROOT / ".cache/models/smollm2-135m-instruct"}[args.model]
    model_dir = Path(args.model_dir) if args.model_dir else model_dir
    if args.device == "cuda":
        cases = ["lora-padded-bf16"]
    elif args.cases:
        cases = args.cases.split(",")
        unknown = [c for c in cases if c not in all_cases()]
        if unknown:
            sys.exit(f"bench_train: unknown cases {unknown}; known: {all_cases()}")
    else:
        cases = ["lora-padded-fp32", "lora-packed-fp32"] if args.quick else all_cases()
    steps_for = lambda rows: args.steps or (QUICK_STEPS if args.quick else STEPS)[rows]
    per_case = lambda c: EXPECTED_S["tiny"] if args.model == "tiny" else EXPECTED_S["smollm2"][c.split("-")[1]]
    if args.repeats < 1:
        sys.exit(f"bench_train: --repeats {args.repeats}: at least 1")
    estimate = 2 * args.peak_seconds + 5 + args.repeats * sum(per_case(c) * (0.5 if args.sft_only else 1) *
                                               (0.6 if args.quick else 1) for c in cases)
    print(f"bench_train {args.model}: {len(cases)} cases, expected ~{estimate:.0f} s on an idle 2-core machine",
          file=sys.stderr, flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        run_cases(args, cases, steps_for, work, model_dir, estimate)
    finally:
        if args.keep_work:
            print(f"bench_train: work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_cases(args, cases, steps_for, work, model_dir, estimate):
    tokens_file, examples = tokens_file_for(args, work, model_dir)
    sft_env = openmp_env(dict(os.environ), args.omp_wait_policy)
    for item in args.sft_env:
        key, _, value = item.partition("=")
        sft_env[key] = value
    peaks = measure_peaks(args)
    model_cfg = json.loads((model_dir / "config.json").read_text())
    results = {}
    for i, case in enumerate(cases):
        method, rows, _ = case.split("-")
        steps = steps_for(rows)
        batches = hf_batches(examples, rows, args.micro_batch_size, steps)
        flops = flops_per_token(model_cfg, method, args.rank, doc_len_sq_mean(batches))
        print(f"[{i + 1}/{len(cases)}] {case}: {steps} steps", file=sys.stderr, flush=True)
        # --repeats: sft and HF alternate, so a slow phase of the machine falls on both runners.
        ours_runs, hf_runs = [], []
        for _ in range(args.repeats):
            ours_runs.append(run_sft(args, work, model_dir, tokens_file, case, steps, f"run{i}", sft_env))
            hf_runs.append(None if args.sft_only else run_hf(args, work, model_dir, batches, case, f"hf{i}"))
            if not args.keep_work:  # a full-FT run leaves ~2 GiB of checkpoint and export behind
                shutil.rmtree(work / f"run{i}", ignore_errors=True)
        results[case] = (median_run(ours_runs), median_run(hf_runs), flops)
    d, hd = model_cfg["hidden_size"], model_cfg.get("head_dim") or model_cfg["hidden_size"] // model_cfg["num_attention_heads"]
    print_table(args, results, peaks, f"d={d}, heads {model_cfg['num_attention_heads']}/{model_cfg['num_key_value_heads']}"
                f" x {hd}, d_ff={model_cfg['intermediate_size']}, layers {model_cfg['num_hidden_layers']},"
                f" vocab {model_cfg['vocab_size']}", estimate)
    if args.device == "cuda":
        for case, (ours, hf, _) in results.items():
            if ours is None or hf is None:
                continue
            mib = lambda x: "n/a" if x is None else f"{x:.0f}"
            print(f"\npeak GPU MiB (nvidia-smi): sft {mib(ours['gpu'])}, HF {mib(hf['gpu'])}; "
                  f"HF torch peak allocated {hf['torch_peak_allocated_mib']:.0f} MiB")
    if args.json_out:
        with open(args.json_out, "a") as f:
            f.write(json.dumps({"model": args.model, "label": args.label, "env": args.sft_env, "peaks": peaks,
                                "results": {c: {"sft": o, "hf": h} for c, (o, h, _) in results.items()}}) + "\n")


if __name__ == "__main__":
    main()
