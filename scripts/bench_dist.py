#!/usr/bin/env python3
"""Benchmark (not a test): multi-process `sft train` under torchrun on this machine, in one run.

For the tiny golden Llama and SmolLM2-135M-Instruct, LoRA and full fine-tuning, the same global batch
four ways: 1 process x 1 and x 2 threads (grad_accum 2); 2 processes x 1 thread (grad_accum 1) with the
gradient buckets started from the backward hooks (overlap); the same with every bucket started after the
backward (--grad-sync-after-backward, no overlap). From metrics.jsonl (one line per step, the first two
steps dropped): tokens/s of the whole job, step time, rank 0's time blocked on the gradient allreduce per
step (comm_wait_s) and its share of the step (exposed communication). Then Gloo allreduce bandwidth
against bucket size for 2 processes on loopback (torch.distributed's ProcessGroupGloo: the same c10d code
sft links). Prints markdown tables with the CPU model and date.

  .venv/bin/python scripts/bench_dist.py [--steps N] [--models tiny,smollm2]
"""
import argparse
import datetime
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = ROOT / ".venv" / "bin" / "python"
TORCHRUN = ROOT / ".venv" / "bin" / "torchrun"
SFT = ROOT / "build" / "sft"

ALLREDUCE = textwrap.dedent('''
    import json, os, time, torch, torch.distributed as dist
    from datetime import timedelta
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rows = []
    for mb in [0.25, 1, 4, 16, 64]:
        t = torch.ones(int(mb * 1024 * 1024 / 4))
        for _ in range(2):
            dist.all_reduce(t)
        iters = max(3, int(64 / mb)) if mb < 64 else 3
        dist.barrier(); start = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(t)
        elapsed = (time.perf_counter() - start) / iters
        n = dist.get_world_size(); size = t.numel() * 4
        rows.append({"mb": mb, "ms": elapsed * 1e3, "algbw": size / elapsed / 1e9, "busbw": 2 * (n - 1) / n * size / elapsed / 1e9})
    if dist.get_rank() == 0:
        print("RESULT " + json.dumps(rows))
    dist.destroy_process_group()
''')


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def model_setup(name, golden):
    if name == "tiny":
        train = golden / "train"
        return (f"model: {{path: {train / 'base'}, attention: sdpa}}\n"
                f"data: {{train: {train / 'data.jsonl'}, format: tokenized, packing: false, max_seq_len: 64}}\n"), 4
    model = ROOT / ".cache" / "models" / "smollm2-135m-instruct"
    data = ROOT / ".cache" / "data" / "quiz" / "train.jsonl"
    return (f"model: {{path: {model}, attention: sdpa}}\n"
            f"data: {{train: {data}, packing: true, max_seq_len: 256}}\n"), 2


def run(tmp, name, head, mbs, method, procs, threads, steps, overlap=True):
    out = tmp / name
    finetune = {"lora": "finetune: {method: lora, lora: {r: 8, dropout: 0.0}}\n", "full": "finetune: {method: full}\n"}[method]
    accum = 2 // procs
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(head + finetune +
                   f"train: {{max_steps: {steps}, micro_batch_size: {mbs}, grad_accum: {accum}, lr: 1.0e-5, threads: {threads},"
                   " scheduler: constant}\n"
                   "log: {every_steps: 1, progress: false}\neval: {every_steps: 0}\ncheckpoint: {every_steps: 0}\n"
                   f"dist: {{timeout_s: 600}}\noutput_dir: {out}\n")
    cmd = [str(SFT), "train", str(cfg)]
    if procs > 1:
        cmd = [str(TORCHRUN), "--no-python", "--nnodes", "1", "--nproc-per-node", str(procs), "--master-addr",
               "127.0.0.1", "--master-port", str(free_port()), *cmd]
        if not overlap:
            cmd.append("--grad-sync-after-backward")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=3600)
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    steady = lines[2:]
    span = lines[-1]["elapsed_s"] - lines[1]["elapsed_s"]
    step_s = span / len(steady)
    comm = sum(l.get("comm_wait_s", 0.0) for l in steady) / len(steady)
    return {"tokens_per_s": sum(l["tokens"] for l in steady) / span, "step_ms": step_s * 1e3,
            "comm_ms": comm * 1e3, "exposed": comm / step_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--models", default="tiny,smollm2")
    parser.add_argument("--skip-two-threads", action="store_true",
                        help="leave out 1 process x 2 threads (pathologically slow on a loaded 2-core machine)")
    args = parser.parse_args()
    golden = Path(os.environ.get("SFT_GOLDEN_DIR", ROOT / ".cache" / "golden"))
    print(f"# bench_dist: {datetime.date.today().isoformat()}, {cpu_model()}, {os.cpu_count()} cores, "
          f"{args.steps} steps (first 2 dropped)\n")
    print("| model | method | processes x threads | grad sync | tokens/s | step ms | comm wait ms/step | exposed comm |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for model in args.models.split(","):
            head, mbs = model_setup(model, golden)
            steps = args.steps if model == "tiny" else max(5, args.steps // 2)
            if model == "tiny":
                steps *= 4
            for method in ["lora", "full"]:
                layouts = [(1, 1, True, "-"), (1, 2, True, "-"), (2, 1, True, "hooks (overlap)"), (2, 1, False, "after backward")]
                if args.skip_two_threads:
                    layouts = [l for l in layouts if l[1] == 1]
                for procs, threads, overlap, label in layouts:
                    r = run(tmp, f"{model}-{method}-{procs}-{threads}-{overlap}", head, mbs, method, procs, threads, steps,
                            overlap)
                    print(f"| {model} | {method} | {procs} x {threads} | {label} | {r['tokens_per_s']:,.0f} | "
                          f"{r['step_ms']:.1f} | {r['comm_ms']:.1f} | {100 * r['exposed']:.0f}% |", flush=True)
        script = tmp / "allreduce.py"
        script.write_text(ALLREDUCE)
        res = subprocess.run([str(TORCHRUN), "--nnodes", "1", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                              "--master-port", str(free_port()), str(script)], capture_output=True, text=True,
                             timeout=1200, env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=ROOT)
        rows = next(json.loads(l[7:]) for l in res.stdout.splitlines() if l.startswith("RESULT "))
    print("\n| bucket MiB | Gloo allreduce ms (2 processes, loopback) | algorithm GB/s | bus GB/s |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['mb']} | {r['ms']:.2f} | {r['algbw']:.2f} | {r['busbw']:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
