#!/usr/bin/env python3
"""Decoding speed of `sft generate` with the KV cache vs. full recompute (--no-cache) at several prompt
lengths. Each run decodes a fixed number of tokens after a random prompt (--ignore-eos) and reads the
timing line `sft generate` prints on stderr: time to the first token (prefill) and ms per later token.

With the cache a step costs O(current length) (projections are constant, attention reads the cached
prefix), so ms/token should be nearly flat; full recompute reruns the whole sequence every step, so
its ms/token grows at least linearly with the context (and its total cost quadratically).

usage: scripts/bench_generate.py [--model DIR] [--contexts 64,256,1024] [--new-tokens 32]
                                 [--new-tokens-no-cache 4] [--threads 1] [--sft build/sft]
"""
import argparse
import random
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
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
    args = parser.parse_args()
    import json
    vocab = args.vocab or json.loads((Path(args.model) / "config.json").read_text())["vocab_size"]
    rng = random.Random(0)
    rows = []
    for context in map(int, args.contexts.split(",")):
        prompt = [rng.randrange(3, vocab) for _ in range(context)]
        cached_prefill, cached_ms = run(args.sft, args.model, prompt, args.new_tokens, True, args.threads)
        full_prefill, full_ms = run(args.sft, args.model, prompt, args.new_tokens_no_cache, False, args.threads)
        rows.append((context, cached_prefill, cached_ms, full_ms))
        print(f"context {context}: cache {cached_ms:.2f} ms/token, no cache {full_ms:.2f} ms/token", file=sys.stderr)
    print(f"model {args.model}, {args.threads} thread(s), {args.new_tokens} new tokens with the cache, "
          f"{args.new_tokens_no_cache} without")
    print(f"{'context':>8} {'prefill s':>10} {'cache ms/tok':>13} {'cache tok/s':>12} "
          f"{'no-cache ms/tok':>16} {'no-cache tok/s':>15} {'speedup':>8}")
    for context, prefill, cached_ms, full_ms in rows:
        print(f"{context:>8} {prefill:>10.3f} {cached_ms:>13.2f} {1000 / cached_ms:>12.1f} "
              f"{full_ms:>16.2f} {1000 / full_ms:>15.2f} {full_ms / cached_ms:>7.1f}x")
    first, last = rows[0], rows[-1]
    ratio = last[0] / first[0]
    print(f"context x{ratio:.0f}: cached ms/token x{last[2] / first[2]:.2f}, "
          f"no-cache ms/token x{last[3] / first[3]:.2f}")


if __name__ == "__main__":
    main()
