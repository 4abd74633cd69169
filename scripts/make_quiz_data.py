#!/usr/bin/env python3
"""Builds a real SFT data set from the Debian bsdgames quiz files (/usr/share/games/bsdgames/quiz):
capitals of African, Asian, American and European countries, US state capitals and chemical elements,
as prompt/response JSONL. Quiz syntax is resolved to the first spelling: {optional} text is dropped,
[a|b] and a|b take a. A seeded split holds out a fixed share for evaluation.

Writes <out>/train.jsonl and <out>/eval.jsonl (default .cache/data/quiz). Deterministic and idempotent."""
import argparse
import json
import random
import re
from pathlib import Path

QUIZ = Path("/usr/share/games/bsdgames/quiz")


def first_spelling(text: str) -> str:
    text = re.sub(r"\{[^}]*\}", "", text)               # optional parts
    text = re.sub(r"\[([^|\]]*)(\|[^\]]*)?\]", r"\1", text)  # [a|b] -> a
    return text.split("|")[0].strip()


def rows(name):
    for line in (QUIZ / name).read_text(encoding="utf-8", errors="replace").splitlines():
        if line.strip() and not line.startswith("#"):
            yield [first_spelling(field) for field in line.split(":")]


def examples():
    out = []
    for region in ("africa", "asia", "america", "europe"):
        for fields in rows(region):
            if len(fields) >= 2 and fields[0] and fields[1]:
                out.append((f"What is the capital of {fields[0]}?", fields[1]))
    for fields in rows("state"):
        if len(fields) >= 2:
            out.append((f"What is the capital of the US state of {fields[0]}?", fields[1]))
    for fields in rows("elements"):
        if len(fields) >= 4:
            symbol, number, _, name = fields[:4]
            out.append((f"What is the chemical symbol of {name}?", symbol))
            out.append((f"Which element has atomic number {number}?", name))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / ".cache" / "data" / "quiz"))
    parser.add_argument("--eval", type=int, default=48, help="held-out examples")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    if not QUIZ.is_dir():
        raise SystemExit(f"make_quiz_data: {QUIZ} missing: install the Debian package bsdgames (scripts/setup.sh does)")
    data = examples()
    random.Random(args.seed).shuffle(data)
    held, train = data[: args.eval], data[args.eval:]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, split in (("train.jsonl", train), ("eval.jsonl", held)):
        with open(out / name, "w", encoding="utf-8") as f:
            for prompt, response in split:
                f.write(json.dumps({"prompt": prompt, "response": response}, ensure_ascii=False) + "\n")
    print(f"[quiz] {len(train)} train / {len(held)} eval examples in {out}")


if __name__ == "__main__":
    main()
