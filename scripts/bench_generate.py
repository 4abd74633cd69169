#!/usr/bin/env python3
"""Decoding speed of `sft generate` with the KV cache vs. full recompute (--no-cache) at several prompt
lengths. Each run decodes a fixed number of tokens after a random prompt (--ignore-eos) and reads the
timing line `sft generate` prints on stderr: time to the first token (prefill) and ms per later token.

With the cache a step costs O(current length) (projections are constant, attention reads the cached
prefix), so ms/token should be nearly flat; full recompute reruns the whole sequence every step, so
its ms/token grows at least linearly with the context (and its total cost quadratically).

Batched decoding (--batch-sizes): B random prompts of --batch-prompt-len tokens decoded together
(`sft generate --prompt-ids a;b;...`, model::generate_batch) beside transformers' generate on the same
batch (same ids, greedy, no padding needed as the prompts have one length, min_new_tokens = max_new_tokens
like --ignore-eos), same torch threads: generated tokens per second of the generate call (prefill
included, model loading excluded).

usage: scripts/bench_generate.py [--model DIR] [--contexts 64,256,1024] [--new-tokens 32]
                                 [--new-tokens-no-cache 4] [--threads 1] [--sft build/sft]
                                 [--batch-sizes 1,8] [--batch-prompt-len 32] [--batch-new-tokens 32]
"""
import argparse
import datetime
import platform
import random
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH_TIMING = re.compile(r"batch of (\d+) prompts \((\d+) prompt tokens\), (\d+) new tokens in ([\d.]+) s")
TIMING = re.compile(r"prompt (\d+) tokens, (\d+) new tokens, first token ([\d.]+) s"
                    r"(?:, then ([\d.]+) tokens/s \(([\d.]+) ms/token\))?")


def run(sft, model, prompt, new_tokens, cache, threads):
    args = [str(sft), "generate", "--model", str(model), "--prompt-ids", ",".join(map(str, prompt)),
            "--max-new-tokens", str(new_tokens), "--ignore-eos", "--threads", str(threads)] + ([] if cache else ["--no-cache"])
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"sft generate failed ({result.returncode}):\n{result.stderr}")
    match = TIMING.search(result.stderr)
    if not match or match.group(5) is None:
        sys.exit(f"no timing line in:\n{result.stderr}")
    return float(match.group(3)), float(match.group(5))  # prefill s, ms per later token


def cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def run_batch_sft(sft, model, prompts, new_tokens, threads):
    """Generated tokens/s of one sft generate_batch call (B > 1) or one generate call (B = 1)."""
    args = [str(sft), "generate", "--model", str(model), "--max-new-tokens", str(new_tokens), "--ignore-eos",
            "--threads", str(threads), "--prompt-ids", ";".join(",".join(map(str, p)) for p in prompts)]
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"sft generate failed ({result.returncode}):\n{result.stderr}")
    if len(prompts) == 1:
        match = TIMING.search(result.stderr)
        first_s, tokens = float(match.group(3)), int(match.group(2))
        seconds = first_s + (tokens - 1) * float(match.group(5)) / 1000
    else:
        match = BATCH_TIMING.search(result.stderr)
        if not match:
            sys.exit(f"no batch timing line in:\n{result.stderr}")
        tokens, seconds = int(match.group(3)), float(match.group(4))
    return tokens, seconds


def run_batch_hf(model_dir, prompts, new_tokens, threads):
    import time

    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(threads if threads > 0 else torch.get_num_threads())
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    input_ids = torch.tensor(prompts)
    with torch.no_grad():
        start = time.perf_counter()
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
        seconds = time.perf_counter() - start
    return (out.shape[1] - input_ids.shape[1]) * out.shape[0], seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / ".cache" / "models" / "smollm2-135m-instruct"))
    parser.add_argument("--sft", default=str(ROOT / "build" / "sft"))
    parser.add_argument("--contexts", default="64,256,1024")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--new-tokens-no-cache", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: stable numbers on a shared machine; 0 = all cores)")
    parser.add_argument("--vocab", type=int, default=0, help="prompt ids are drawn from [3, vocab); default: config")
    parser.add_argument("--batch-sizes", default="1,8", help="batched rows (empty: none)")
    parser.add_argument("--batch-prompt-len", type=int, default=32)
    parser.add_argument("--batch-new-tokens", type=int, default=32)
    parser.add_argument("--skip-contexts", action="store_true", help="only the batched rows")
    args = parser.parse_args()
    print(f"{cpu_model()}, {datetime.date.today().isoformat()}")
    import json
    vocab = args.vocab or json.loads((Path(args.model) / "config.json").read_text())["vocab_size"]
    rng = random.Random(0)
    rows = []
    for context in ([] if args.skip_contexts else map(int, args.contexts.split(","))):
        prompt = [rng.randrange(3, vocab) for _ in range(context)]
        cached_prefill, cached_ms = run(args.sft, args.model, prompt, args.new_tokens, True, args.threads)
        full_prefill, full_ms = run(args.sft, args.model, prompt, args.new_tokens_no_cache, False, args.threads)
        rows.append((context, cached_prefill, cached_ms, full_ms))
        print(f"context {context}: cache {cached_ms:.2f} ms/token, no cache {full_ms:.2f} ms/token", file=sys.stderr)
    print(f"model {args.model}, {args.threads} thread(s)")
    if rows:
        print(f"{args.new_tokens} new tokens with the cache, {args.new_tokens_no_cache} without")
        print(f"{'context':>8} {'prefill s':>10} {'cache ms/tok':>13} {'cache tok/s':>12} "
              f"{'no-cache ms/tok':>16} {'no-cache tok/s':>15} {'speedup':>8}")
    for context, prefill, cached_ms, full_ms in rows:
        print(f"{context:>8} {prefill:>10.3f} {cached_ms:>13.2f} {1000 / cached_ms:>12.1f} "
              f"{full_ms:>16.2f} {1000 / full_ms:>15.2f} {full_ms / cached_ms:>7.1f}x")
    if rows:
        first, last = rows[0], rows[-1]
        ratio = last[0] / first[0]
        print(f"context x{ratio:.0f}: cached ms/token x{last[2] / first[2]:.2f}, "
              f"no-cache ms/token x{last[3] / first[3]:.2f}")
    if args.batch_sizes:
        print(f"\nbatched decoding: prompts of {args.batch_prompt_len} tokens, {args.batch_new_tokens} new tokens each, "
              f"{args.threads} thread(s); generated tokens/s of the generate call (prefill included)")
        print(f"{'batch':>6} {'sft tok/s':>10} {'hf tok/s':>9} {'sft / hf':>9}")
        for batch in map(int, args.batch_sizes.split(",")):
            prompts = [[rng.randrange(3, vocab) for _ in range(args.batch_prompt_len)] for _ in range(batch)]
            ours_tokens, ours_s = run_batch_sft(args.sft, args.model, prompts, args.batch_new_tokens, args.threads)
            hf_tokens, hf_s = run_batch_hf(args.model, prompts, args.batch_new_tokens, args.threads)
            print(f"{batch:>6} {ours_tokens / ours_s:>10.1f} {hf_tokens / hf_s:>9.1f} "
                  f"{(ours_tokens / ours_s) / (hf_tokens / hf_s):>8.2f}x")


if __name__ == "__main__":
    main()
