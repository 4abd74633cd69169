#!/usr/bin/env python3
"""Benchmark (not a test): the same LoRA SFT job with `sft train` and with HF transformers + PEFT, on this
machine, in one run: same torch build, same threads, model, token ids (made once by `sft data --out`),
sequence length, batch (unpacked, padded rows), steps and optimizer. Prints a table: tokens/s,
target tokens/s, peak RSS and time to the first optimizer step (process start to step 1 done).

  .venv/bin/python scripts/bench_train.py --model tiny      # golden tiny Llama
  .venv/bin/python scripts/bench_train.py --model smollm2   # SmolLM2-135M-Instruct
On a GPU (gpu-bundle/run.sh): --device cuda runs both in bf16 mixed precision (fp32 master weights) and
adds each process's peak GPU memory (nvidia-smi's used memory minus what was in use before it started);
--sft, --python, --model-dir and --train-data point at the bundle's binary, the machine's python3, model
and data.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")

HF_LOOP = textwrap.dedent('''
    import json, sys, time
    t0 = time.time()
    import torch
    from transformers import AutoModelForCausalLM
    from peft import LoraConfig, get_peft_model
    model_dir, data_path, steps, mbs, threads, r = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    device = sys.argv[7] if len(sys.argv) > 7 else "cpu"
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    examples = [json.loads(l) for l in open(data_path)]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").to(device)
    # CUDA: bf16 autocast over fp32 weights, what sft's train.mixed_precision: bf16 does.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    tokens = targets = 0
    first = None
    cursor = 0
    t_loop = time.time()
    for step in range(steps):
        batch = [examples[(cursor + i) % len(examples)] for i in range(mbs)]
        cursor += mbs
        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.tensor([e["input_ids"] + [0] * (width - len(e["input_ids"])) for e in batch])
        labels = torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in batch])
        attention = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in batch])
        with autocast:
            out = model(input_ids=ids.to(device), attention_mask=attention.to(device), labels=labels.to(device))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step(); opt.zero_grad(set_to_none=True)
        tokens += sum(len(e["input_ids"]) for e in batch)
        targets += sum(sum(1 for t in e["labels"][1:] if t != -100) for e in batch)
        if first is None:
            if device == "cuda": torch.cuda.synchronize()
            first = time.time() - t0
            t_loop = time.time(); tokens = targets = 0
    if device == "cuda": torch.cuda.synchronize()
    elapsed = time.time() - t_loop
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else 0.0
    print(json.dumps({"tokens_per_s": tokens / elapsed, "targets_per_s": targets / elapsed, "first_step_s": first,
                      "torch_peak_allocated_mib": peak}))
''')


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
        import threading
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


def peak_rss_of(cmd, gpu=False, **kwargs):
    """Runs cmd and returns (stdout, stderr, its peak RSS in MiB, seconds, peak GPU MiB or None). One child
    at a time, so the RUSAGE_CHILDREN high-water mark is this child's (a forked wait4 gives it exactly)."""
    start = time.time()
    memory = GpuMemoryPeak(gpu)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    _, status, usage = os.wait4(proc.pid, 0)
    gpu_peak = memory.finish()
    out, err = proc.stdout.read(), proc.stderr.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"bench_train: {cmd[0]} failed ({code}):\n{out}\n{err}")
    return out, err, usage.ru_maxrss / 1024.0, time.time() - start, gpu_peak


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--sft", default=str(ROOT / "build" / "sft"), help="the sft binary")
    parser.add_argument("--python", default=PY, help="python with torch, transformers and peft (the HF side)")
    parser.add_argument("--model-dir", default=None, help="instead of --model's directory")
    parser.add_argument("--train-data", default=str(ROOT / ".cache/data/quiz/train.jsonl"), help="smollm2's data")
    args = parser.parse_args()
    sft = Path(args.sft)
    model_dir = {"tiny": ROOT / ".cache/golden/train/base", "smollm2": ROOT / ".cache/models/smollm2-135m-instruct"}[args.model]
    model_dir = Path(args.model_dir) if args.model_dir else model_dir
    gpu = args.device == "cuda"
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    tokens_file = work / "tokens.jsonl"
    if args.model == "smollm2":
        data_cfg = work / "data.yaml"
        data_cfg.write_text(f"model: {{path: {model_dir}}}\ndata: {{train: {args.train_data}, max_seq_len: 256}}\n"
                            f"output_dir: {work}/data\n")
        subprocess.run([str(sft), "data", str(data_cfg), "--out", str(tokens_file)], check=True, capture_output=True)
    else:
        tokens_file.write_text((ROOT / ".cache/golden/train/data.jsonl").read_text())
    cfg = work / "bench.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        model: {{path: {model_dir}, attention: sdpa}}
        data: {{train: {tokens_file}, format: tokenized, packing: false, max_seq_len: 256}}
        finetune: {{method: lora, lora: {{r: {args.rank}, alpha: {2 * args.rank}, dropout: 0.0}}}}
        train: {{max_steps: {args.steps}, micro_batch_size: {args.micro_batch_size}, grad_accum: 1, lr: 1.0e-4,
                 scheduler: constant, threads: {args.threads}, seed: 1, device: {args.device},
                 mixed_precision: {"bf16" if gpu else "none"}}}
        log: {{every_steps: 1, progress: false}}
        output_dir: {work}/run
        """))
    start = time.time()
    _, _, ours_rss, _, ours_gpu = peak_rss_of([str(sft), "train", str(cfg), "--force"], gpu=gpu)
    lines = [json.loads(l) for l in open(work / "run" / "metrics.jsonl")]
    first_step = lines[0]["elapsed_s"]
    rest = lines[1:]
    span = rest[-1]["elapsed_s"] - lines[0]["elapsed_s"]
    ours = {"tokens_per_s": sum(l["tokens"] for l in rest) / span,
            "targets_per_s": sum(l["target_tokens"] for l in rest) / span}
    # first step measured from process start: sft's elapsed_s starts after setup, so add setup time.
    setup_s = (time.time() - start) - lines[-1]["elapsed_s"]
    ours["first_step_s"] = first_step + setup_s
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    out, _, hf_rss, _, hf_gpu = peak_rss_of([args.python, "-c", HF_LOOP, str(model_dir), str(tokens_file), str(args.steps),
                                             str(args.micro_batch_size), str(args.threads), str(args.rank), args.device],
                                            gpu=gpu, env=env)
    hf = json.loads(out.strip().splitlines()[-1])
    where = "CUDA, bf16 mixed precision" if gpu else "fp32, CPU"
    print(f"\nLoRA r={args.rank} SFT, model {args.model}, {args.steps} steps x {args.micro_batch_size} rows, "
          f"{args.threads} threads, {where} (steady state excludes step 1)\n")
    if not gpu:
        print("| runner | tokens/s | target tokens/s | peak RSS (MiB) | time to first step (s) |")
        print("|---|---|---|---|---|")
        print(f"| sft | {ours['tokens_per_s']:.0f} | {ours['targets_per_s']:.0f} | {ours_rss:.0f} | {ours['first_step_s']:.2f} |")
        print(f"| transformers + peft | {hf['tokens_per_s']:.0f} | {hf['targets_per_s']:.0f} | {hf_rss:.0f} | {hf['first_step_s']:.2f} |")
        return
    mib = lambda x: "n/a" if x is None else f"{x:.0f}"
    print("| runner | tokens/s | target tokens/s | peak GPU MiB (nvidia-smi) | torch peak allocated MiB | peak RSS (MiB) |"
          " time to first step (s) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| sft | {ours['tokens_per_s']:.0f} | {ours['targets_per_s']:.0f} | {mib(ours_gpu)} | n/a | {ours_rss:.0f} |"
          f" {ours['first_step_s']:.2f} |")
    print(f"| transformers + peft | {hf['tokens_per_s']:.0f} | {hf['targets_per_s']:.0f} | {mib(hf_gpu)} |"
          f" {hf['torch_peak_allocated_mib']:.0f} | {hf_rss:.0f} | {hf['first_step_s']:.2f} |")


if __name__ == "__main__":
    main()
