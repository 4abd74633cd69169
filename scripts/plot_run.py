#!/usr/bin/env python3
"""Draws a run report (one PNG) from `sft train` output directories: training loss per step with the
held-out loss overlaid, learning rate, gradient norm, tokens/s, and held-out token accuracy and exact
match. Several runs are overlaid in each panel, one colour per run, so a LoRA and a full run compare at a
glance.

    .venv/bin/python scripts/plot_run.py RUN_DIR [RUN_DIR ...] [--out report.png] [--label NAME ...]

Reads only RUN_DIR/metrics.jsonl and RUN_DIR/eval.jsonl (the files `sft train` writes). --out defaults
to RUN_DIR/report.png for one run and to report.png for several. The image is always
--width x --height pixels (default 1500 x 900)."""
import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

DPI = 100


def read_jsonl(path):
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):  # a run killed mid-write may leave a torn last line
                break
            raise SystemExit(f"{path}:{number}: malformed JSON: {error}")
    return rows


def load_run(run_dir):
    run_dir = Path(run_dir)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    if not metrics:
        raise SystemExit(f"{run_dir}: no metrics.jsonl lines (is this an `sft train` output_dir?)")
    return metrics, read_jsonl(run_dir / "eval.jsonl")


def series(rows, key):
    points = [(row["step"], row[key]) for row in rows if key in row]
    return [p[0] for p in points], [p[1] for p in points]


def draw(runs, labels, out, width, height, title):
    fig, axes = plt.subplots(2, 3, figsize=(width / DPI, height / DPI), dpi=DPI)
    (loss_ax, lr_ax, norm_ax), (speed_ax, acc_ax, match_ax) = axes
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    any_match = False
    for i, ((metrics, evals), label) in enumerate(zip(runs, labels)):
        colour = colours[i % len(colours)]
        loss_ax.plot(*series(metrics, "loss"), color=colour, label=f"{label} train")
        if evals:
            loss_ax.plot(*series(evals, "loss"), color=colour, linestyle="--", marker="o", label=f"{label} eval")
        lr_ax.plot(*series(metrics, "lr"), color=colour, label=label)
        norm_ax.plot(*series(metrics, "grad_norm"), color=colour, label=label)
        speed_ax.plot(*series(metrics, "tokens_per_s"), color=colour, label=label)
        acc_ax.plot(*series(evals, "token_accuracy"), color=colour, marker="o", label=label)
        steps, match = series(evals, "exact_match")
        if steps:
            any_match = True
            match_ax.plot(steps, match, color=colour, marker="o", label=f"{label} exact")
            match_ax.plot(*series(evals, "exact_match_normalized"), color=colour, marker="x", linestyle=":",
                          label=f"{label} normalized")
    panels = [(loss_ax, "loss (train; eval dashed)"), (lr_ax, "learning rate"), (norm_ax, "gradient norm (before clipping)"),
              (speed_ax, "tokens/s"), (acc_ax, "eval token accuracy"), (match_ax, "eval exact match")]
    for ax, name in panels:
        ax.set_title(name, fontsize=11)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if not any(acc_ax.lines):
        acc_ax.text(0.5, 0.5, "no evaluations (no held-out data)", ha="center", va="center", transform=acc_ax.transAxes)
    if not any_match:
        match_ax.text(0.5, 0.5, "no exact match\n(eval.generate: false)", ha="center", va="center",
                      transform=match_ax.transAxes)
    for ax in (acc_ax, match_ax):
        ax.set_ylim(-0.02, 1.02)
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)  # never bbox_inches="tight": the size stays width x height
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="sft train output directories")
    parser.add_argument("--out", help="PNG to write (default RUN_DIR/report.png, or report.png for several runs)")
    parser.add_argument("--label", action="append", help="one per run (default: the directory names)")
    parser.add_argument("--title", help="figure title (default: the run names)")
    parser.add_argument("--width", type=int, default=1500, help="pixels")
    parser.add_argument("--height", type=int, default=900, help="pixels")
    args = parser.parse_args(argv)
    labels = args.label or [Path(r).resolve().name for r in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"{len(args.runs)} runs but {len(labels)} --label values")
    runs = [load_run(r) for r in args.runs]
    out = Path(args.out) if args.out else (Path(args.runs[0]) / "report.png" if len(args.runs) == 1 else Path("report.png"))
    out.parent.mkdir(parents=True, exist_ok=True)
    draw(runs, labels, out, args.width, args.height, args.title or " vs ".join(labels))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
