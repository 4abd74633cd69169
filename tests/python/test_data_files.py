"""`sft train` reads the data files people have: the same examples as JSON Lines, as a JSON array
(.json, LLaMA-Factory's layout) and gzipped (.jsonl.gz, .json.gz) train to identical losses, and a
truncated gzip exits 2 naming the file before any training. (tests/test_data_files.cpp checks the
readers and every bad-input case.)"""
import gzip
import json

from conftest import run_sft
from test_eval_reference import QA_EVAL, QA_TRAIN, chat_config, jsonl, tiny_chat  # noqa: F401 (fixture)


def write_forms(root):
    rows = [{"instruction": q, "output": a} for q, a in QA_TRAIN]
    lines = "".join(json.dumps(r) + "\n" for r in rows)
    array = json.dumps(rows, indent=2)
    (root / "train.jsonl").write_text(lines)
    (root / "train.json").write_text(array)
    (root / "train.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    (root / "train.json.gz").write_bytes(gzip.compress(array.encode()))
    (root / "eval.json.gz").write_bytes(gzip.compress(json.dumps(
        [{"instruction": q, "output": a} for q, a in QA_EVAL]).encode()))
    return ["train.jsonl", "train.json", "train.jsonl.gz", "train.json.gz"]


def test_every_form_trains_identically(sft_binary, tiny_chat, tmp_path):
    runs = {}
    for name in write_forms(tmp_path):
        out = tmp_path / f"run_{name}"
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(chat_config(tiny_chat, out, "lora", generate=False, every_steps=5))
        run_sft(sft_binary, "train", cfg, f"data.train={tmp_path / name}", f"data.eval={tmp_path / 'eval.json.gz'}",
                "train.max_steps=10")
        report = json.loads((out / "data_report.json").read_text())
        train_files = [f for f in report["files"] if f["split"] == "train"]
        assert train_files[0]["format"] == "alpaca" and train_files[0]["lines"] == len(QA_TRAIN), report
        runs[name] = ([{k: v for k, v in l.items() if k not in ("tokens_per_s", "elapsed_s")}
                       for l in jsonl(out / "metrics.jsonl")], jsonl(out / "eval.jsonl"))
    reference = runs["train.jsonl"]
    assert len(reference[0]) == 10 and len(reference[1]) == 2
    for name, run in runs.items():
        assert run == reference, name


def test_truncated_gzip_exits_2_naming_the_file(sft_binary, tiny_chat, tmp_path):
    data = gzip.compress(("".join(json.dumps({"prompt": q, "response": a}) + "\n" for q, a in QA_TRAIN) * 200).encode())
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    cfg = tmp_path / "cut.yaml"
    cfg.write_text(chat_config(tiny_chat, tmp_path / "run", "lora", generate=False))
    result = run_sft(sft_binary, "train", cfg, f"data.train={cut}", check=False)
    assert result.returncode == 2, result.stderr
    assert f"{cut}: truncated gzip data" in result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
