"""scripts/plot_run.py renders a report from real tiny runs: a valid PNG (signature, IHDR, decodable) of
exactly the requested pixel size, with one colour per run (a LoRA and a full run overlaid), and it names
the directory when a run has no metrics."""
import struct
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import image as mpimg

from conftest import ROOT, run_sft
from test_eval_reference import chat_config, tiny_chat  # noqa: F401 (tiny_chat is a fixture)

PLOT = ROOT / "scripts" / "plot_run.py"
# matplotlib's first two default colours: run 1 and run 2.
RUN_COLOURS = [(0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)]


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", data[16:24])


def plot(*args):
    return subprocess.run([sys.executable, str(PLOT), *map(str, args)], capture_output=True, text=True)


def has_colour(pixels, rgb, tolerance=2):
    target = np.array(rgb) / 255.0
    return bool((np.abs(pixels[..., :3] - target) <= tolerance / 255.0).all(axis=-1).sum() > 50)


@pytest.fixture(scope="module")
def runs(sft_binary, tiny_chat, tmp_path_factory):
    root = tmp_path_factory.mktemp("plot_runs")
    out = {}
    for method in ("lora", "full"):
        cfg = root / f"{method}.yaml"
        cfg.write_text(chat_config(tiny_chat, root / method, method, every_steps=5))
        run_sft(sft_binary, "train", cfg, "train.max_steps=15")
        out[method] = root / method
    return out


def test_one_run_default_size(runs):
    result = plot(runs["lora"])
    assert result.returncode == 0, result.stderr
    report = runs["lora"] / "report.png"
    assert png_size(report) == (1500, 900)
    pixels = mpimg.imread(report)
    assert pixels.shape[:2] == (900, 1500)
    assert has_colour(pixels, RUN_COLOURS[0]) and not has_colour(pixels, RUN_COLOURS[1])


def test_two_runs_side_by_side_with_labels(runs, tmp_path):
    out = tmp_path / "compare.png"
    result = plot(runs["lora"], runs["full"], "--label", "LoRA", "--label", "full", "--out", out,
                  "--width", 1200, "--height", 700)
    assert result.returncode == 0, result.stderr
    assert png_size(out) == (1200, 700)
    pixels = mpimg.imread(out)
    assert all(has_colour(pixels, rgb) for rgb in RUN_COLOURS), "both runs are drawn"


def test_a_directory_without_metrics_is_named(tmp_path):
    result = plot(tmp_path)
    assert result.returncode != 0
    assert f"{tmp_path}: no metrics.jsonl lines" in result.stderr
