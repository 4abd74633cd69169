#!/usr/bin/env python3
# scripts/bench_tokenizer.py: throughput of our tokenizer against the reference (HF `tokenizers`, or
# `sentencepiece` for a tokenizer.model) on the golden corpus, printed as a table. A benchmark, not a
# test. Both sides encode the same strings one at a time on one thread, best of --repeat passes (the
# first pass warms both word caches); HF's multi-threaded encode_batch is shown as an extra row.
# Ours runs through the `bench_tokenizer` executable (tests/bench_tokenizer_main.cpp).
# Usage: .venv/bin/python scripts/bench_tokenizer.py [--bin build/bench_tokenizer] [--repeat 3]
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from make_tokenizer_golden import tokenizer_dirs  # noqa: E402  (same tokenizer list as the goldens)

GOLDEN = ROOT / ".cache" / "golden" / "tokenizers"


def find_bin(explicit):
    if explicit:
        return Path(explicit)
    for cand in sorted(ROOT.glob("build*/bench_tokenizer")):
        if os.access(cand, os.X_OK):
            return cand
    sys.exit("bench_tokenizer executable not found: build it (cmake --build build --target bench_tokenizer) "
             "or pass --bin")


def bench_reference(name, path, texts, repeat):
    t0 = time.perf_counter()
    rows = []
    if name != "llama2-sp" and (path / "tokenizer.json").is_file():
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        load = time.perf_counter() - t0
        encode_one = lambda t: tok.encode(t, add_special_tokens=False).ids  # noqa: E731
        best, tokens = 1e30, 0
        for _ in range(repeat):
            start = time.perf_counter()
            tokens = sum(len(encode_one(t)) for t in texts)
            best = min(best, time.perf_counter() - start)
        rows.append(("tokenizers (1 thread loop)", len(texts), tokens, best, load))
        best_b = 1e30
        for _ in range(repeat):
            start = time.perf_counter()
            tok.encode_batch(texts, add_special_tokens=False)
            best_b = min(best_b, time.perf_counter() - start)
        rows.append((f"tokenizers encode_batch ({os.cpu_count()} cores)", len(texts), tokens, best_b, load))
    else:
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
        load = time.perf_counter() - t0
        best, tokens = 1e30, 0
        for _ in range(repeat):
            start = time.perf_counter()
            tokens = sum(len(sp.encode(t)) for t in texts)
            best = min(best, time.perf_counter() - start)
        rows.append(("sentencepiece (1 thread loop)", len(texts), tokens, best, load))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bin", default=None, help="bench_tokenizer executable")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    binary = find_bin(args.bin)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tokenizer_golden.py")], check=True,
                   stdout=subprocess.DEVNULL)
    rows = []
    for name, path in tokenizer_dirs().items():
        corpus = GOLDEN / f"{name}.jsonl"
        texts = [json.loads(line)["text"] for line in corpus.open(encoding="utf-8")]
        for impl, n, tokens, secs, load in bench_reference(name, path, texts, args.repeat):
            rows.append((name, impl, n, tokens, secs, load))
        out = subprocess.run([str(binary), str(path), str(corpus), "--repeat", str(args.repeat)],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rows.append((name, "sft.cpp (1 thread loop)", r["examples"], r["tokens"], r["seconds"], r["load_seconds"]))

    header = f"{'tokenizer':<12} {'implementation':<34} {'examples/s':>11} {'tokens/s':>12} {'load s':>7}"
    print(header)
    print("-" * len(header))
    for name, impl, n, tokens, secs, load in rows:
        print(f"{name:<12} {impl:<34} {n / secs:>11,.0f} {tokens / secs:>12,.0f} {load:>7.2f}")
    print(f"\ncorpus: {GOLDEN}/<name>.jsonl ({len(texts)} strings each); machine: {os.cpu_count()} cores")


if __name__ == "__main__":
    sys.exit(main())
