#!/usr/bin/env python3
"""scripts/make_synth_golden.py: ROUGE-L reference scores for tests/test_synth.cpp (sft synth's own ROUGE-L).

Scores every (reference, candidate) pair with Google's `rouge-score` package exactly as Self-Instruct
filters with it: RougeScorer(["rougeL"], use_stemmer=False). The pairs are hand-written cases (case,
punctuation, digits, empty and word-less text, repeated words, the two non-ASCII characters whose
lowercase is ASCII, accents and CJK, long shared subsequences) plus 400 seeded random pairs drawn
from a small vocabulary, so many of them share words in scrambled orders.
Output: <golden>/synth/rouge_l.jsonl, one {"reference", "candidate", "precision", "recall", "f1"} per line
(default <repo>/.cache/golden). Idempotent: the file is rewritten only when its content changes.
"""
import argparse
import json
import os
import random
from pathlib import Path

from make_data_golden import write_if_changed

ROOT = Path(__file__).resolve().parent.parent

CASES = [
    ("Write a poem about the sea.", "Write a poem about the sea."),
    ("Write a poem about the sea.", "write a POEM, about the sea!!!"),
    ("Give three tips for staying healthy.", "What are three tips for staying healthy?"),
    ("Translate the sentence into French.", "Summarize the paragraph in one sentence."),
    ("", "Anything at all"),
    ("Anything at all", ""),
    ("...!!! ???", "Some words here"),
    ("", ""),
    ("the the the cat", "the cat the the"),
    ("a b c d e f g", "g f e d c b a"),
    ("Compute 12 + 7 * 3.", "compute 12+7*3"),
    ("x1 y2 z3 w4", "x1y2 z3w4"),
    ("\u212aelvin scale", "kelvin scale"),
    ("\u0130stanbul is big", "i stanbul is big"),
    ("\u0130x", "i x"),
    ("Caf\u00e9 au lait, s'il vous pla\u00eet", "cafe au lait s il vous pla t"),
    ("\u4e2d\u6587 words and \u65e5\u672c\u8a9e", "words and"),
    ("na\u00efve r\u00e9sum\u00e9 na\u00efvely", "na ve r sum na vely"),
    ("Tabs\tand\nnewlines  and   spaces", "tabs and newlines and spaces"),
    ("under_score and hy-phen", "under score and hy phen"),
    ("Emoji \U0001F600 splits\U0001F600words", "emoji splits words"),
    ("Generate a list of 5 adjectives that describe a cat.",
     "Generate a list of 10 adjectives that describe a dog, and explain each one."),
    ("Explain why the sky is blue.", "Explain in simple terms why the sky appears blue during the day."),
]

VOCAB = ("write explain list the a an of to and in for describe give three five story poem about summarize "
         "sentence paragraph translate french english code python function sort numbers cat dog sky blue why "
         "how what make plan recipe email letter 1 2 10 2023").split()
PUNCT = [" ", " ", " ", ", ", ". ", "? ", "! ", " - ", ": ", "; ", "\n", " (", ") "]


def random_text(rng):
    n = rng.randint(0, 14)
    parts = []
    for _ in range(n):
        word = rng.choice(VOCAB)
        if rng.random() < 0.2:
            word = word.capitalize()
        if rng.random() < 0.05:
            word = word.upper()
        parts.append(word)
        parts.append(rng.choice(PUNCT))
    return "".join(parts).strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = Path(os.environ.get("SFT_GOLDEN_DIR", ROOT / ".cache" / "golden"))
    parser.add_argument("--out", type=Path, default=default_out, help="golden root (writes <out>/synth)")
    args = parser.parse_args()
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rng = random.Random(15)
    pairs = list(CASES)
    for _ in range(400):
        reference = random_text(rng)
        # Half the candidates are edits of the reference (shared words, some order kept).
        if rng.random() < 0.5:
            words = reference.split()
            if rng.random() < 0.3:
                rng.shuffle(words)
            keep = [w for w in words if rng.random() < 0.7]
            candidate = " ".join(keep + random_text(rng).split()[: rng.randint(0, 4)])
        else:
            candidate = random_text(rng)
        pairs.append((reference, candidate))
    lines = []
    for reference, candidate in pairs:
        score = scorer.score(reference, candidate)["rougeL"]  # score(target, prediction)
        lines.append(json.dumps({"reference": reference, "candidate": candidate, "precision": score.precision,
                                 "recall": score.recall, "f1": score.fmeasure}, ensure_ascii=False))
    out = args.out / "synth"
    out.mkdir(parents=True, exist_ok=True)
    changed = write_if_changed(out / "rouge_l.jsonl", "\n".join(lines) + "\n")
    print(f"[make_synth_golden] {len(lines)} ROUGE-L pairs {'written' if changed else 'unchanged'}")


if __name__ == "__main__":
    main()
