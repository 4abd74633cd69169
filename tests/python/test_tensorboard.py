"""`log.tensorboard: true` writes event files that TensorBoard's own reader (the `tensorboard` PyPI
package: EventAccumulator, and its raw event-file loader, which checks every record's CRC32C) reads back
as exactly the metrics.jsonl / eval.jsonl values (float32, TensorBoard's scalar type) at every optimizer
step. A run that is stopped and resumed, and one resumed from an older checkpoint after it had gone
further, shows each (tag, step) once, with the values of the JSONL files the run ends with."""
import json

import numpy as np
from tensorboard.backend.event_processing import event_accumulator, event_file_loader

from conftest import run_sft
from test_eval_reference import chat_config, jsonl, tiny_chat  # noqa: F401 (tiny_chat is a fixture)

TRAIN_TAGS = ["loss", "lr", "grad_norm", "tokens_per_s", "target_tokens"]
EVAL_COUNTS = {"step", "examples", "target_tokens"}


def tensorboard_scalars(run):
    """{tag: [(step, value), ...]} as TensorBoard shows them."""
    acc = event_accumulator.EventAccumulator(str(run / "tensorboard"), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def raw_tag_steps(run):
    """Every (tag, step) in every event file, read record by record (CRC-checked)."""
    pairs = []
    files = sorted((run / "tensorboard").glob("events.out.tfevents.*"))
    for path in files:
        events = list(event_file_loader.LegacyEventFileLoader(str(path)).Load())
        assert events[0].file_version == "brain.Event:2", path
        pairs += [(v.tag, e.step) for e in events if e.HasField("summary") for v in e.summary.value]
    return pairs, files


def jsonl_scalars(run):
    """What the JSONL files say, as {tag: [(step, float32 value), ...]}."""
    expected = {}
    for line in jsonl(run / "metrics.jsonl"):
        for key in TRAIN_TAGS:
            expected.setdefault(f"train/{key}", []).append((line["step"], float(np.float32(line[key]))))
    for line in jsonl(run / "eval.jsonl"):
        for key, value in line.items():
            if key not in EVAL_COUNTS:
                expected.setdefault(f"eval/{key}", []).append((line["step"], float(np.float32(value))))
    return expected


def check_run(run):
    shown, expected = tensorboard_scalars(run), jsonl_scalars(run)
    assert sorted(shown) == sorted(expected)
    for tag in expected:
        assert shown[tag] == expected[tag], tag  # exact: both are the float32 of the same double
    pairs, files = raw_tag_steps(run)
    assert len(pairs) == len(set(pairs)), "a (tag, step) is written twice"
    return shown, files


def test_every_scalar_equals_the_jsonl_files(sft_binary, tiny_chat, tmp_path):
    run = tmp_path / "run"
    cfg = tmp_path / "train.yaml"
    cfg.write_text(chat_config(tiny_chat, run, "lora", every_steps=10))
    run_sft(sft_binary, "train", cfg, "log.tensorboard=true")
    shown, files = check_run(run)
    assert len(files) == 1
    assert sorted(shown) == sorted([f"train/{k}" for k in TRAIN_TAGS] + [
        "eval/loss", "eval/perplexity", "eval/token_accuracy", "eval/exact_match", "eval/exact_match_normalized"])
    assert [step for step, _ in shown["train/loss"]] == list(range(1, 31))
    assert [step for step, _ in shown["eval/loss"]] == [10, 20, 30]
    assert shown["train/loss"][-1][1] < shown["train/loss"][0][1]  # it trained
    assert "\n  tensorboard: true\n" in (run / "config.yaml").read_text()  # log.tensorboard, resolved


def test_off_by_default(sft_binary, tiny_chat, tmp_path):
    run = tmp_path / "run"
    cfg = tmp_path / "train.yaml"
    cfg.write_text(chat_config(tiny_chat, run, "lora", generate=False))
    run_sft(sft_binary, "train", cfg, "train.max_steps=3")
    assert (run / "metrics.jsonl").exists() and not (run / "tensorboard").exists()


def test_resumed_runs_append_without_repeating_a_step(sft_binary, tiny_chat, tmp_path):
    run = tmp_path / "run"
    cfg = tmp_path / "train.yaml"
    cfg.write_text(chat_config(tiny_chat, run, "lora", every_steps=5))
    flags = ("log.tensorboard=true", "checkpoint.every_steps=10", "checkpoint.keep_last=5")
    # 1. Stopped after step 7 (saved as on SIGTERM), then resumed to the end.
    run_sft(sft_binary, "train", cfg, *flags, "--stop-after-steps", "7")
    assert [s for s, _ in tensorboard_scalars(run)["train/loss"]] == list(range(1, 8))
    run_sft(sft_binary, "train", cfg, *flags)
    first, files = check_run(run)
    assert len(files) == 2
    assert [s for s, _ in first["train/loss"]] == list(range(1, 31))
    assert [s for s, _ in first["eval/loss"]] == [5, 10, 15, 20, 25, 30]
    # 2. Resumed again from step 20, after the run had reached step 30: steps 21..30 are rewritten, the
    #    earlier attempt's records after step 20 are gone from its file, and every step shows once.
    checkpoint = run / "checkpoints" / "step-00000020"
    assert checkpoint.is_dir()
    run_sft(sft_binary, "train", cfg, *flags, f"resume={checkpoint}")
    second, files = check_run(run)
    assert len(files) == 3
    assert [s for s, _ in second["train/loss"]] == list(range(1, 31))
    # Resume is bit-exact, so everything but the wall-clock rate equals the uninterrupted attempt.
    for tag in first:
        if tag != "train/tokens_per_s":
            assert second[tag] == first[tag], tag
    middle = sorted({step for tag, step in raw_tag_steps(run)[0]})
    assert middle == list(range(1, 31))
    steps_per_file = [sorted({e.step for e in event_file_loader.LegacyEventFileLoader(str(f)).Load()
                              if e.HasField("summary")}) for f in files]
    assert steps_per_file == [list(range(1, 8)), list(range(8, 21)), list(range(21, 31))]
    # --force starts afresh: no earlier event file survives.
    run_sft(sft_binary, "train", cfg, *flags, "train.max_steps=3", "--force")
    shown, files = check_run(run)
    assert len(files) == 1 and [s for s, _ in shown["train/loss"]] == [1, 2, 3]
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
