"""`sft synth` end to end through the real binary, on a tiny random Llama with SmolLM2's tokenizer and
chat template (test_eval_reference's tiny_chat): the mechanics, not the quality. A SIGKILLed or
SIGINTed run resumed with --resume gives byte for byte the file of an uninterrupted run; the same
--seed gives the same file; every bad input exits 2 naming the culprit; the output feeds `sft train`
unchanged; data.direction: reverse trains the backward model that backtranslate uses. The tiny model
never emits a stop token, so these runs pass --keep-truncated (every output hits --max-new-tokens).
The filters and the pipelines' bookkeeping are tested exactly in tests/test_synth*.cpp."""
import json
import signal
import subprocess
import time

import pytest

from conftest import run_sft
from test_eval_reference import jsonl, tiny_chat  # noqa: F401 (fixture)

SEEDS = ["Give three tips for staying healthy.", "Write a haiku about winter mornings.",
         "What is the capital of Australia?", "Sort the numbers 5, 2, 9 in ascending order.",
         "Explain what a prime number is to a child.", "Suggest a name for a bakery."]
TINY = ["--keep-truncated", "--threads", "1", "--max-new-tokens", "16", "--response-max-new-tokens", "8"]


@pytest.fixture(scope="module")
def seeds_file(tiny_chat):
    path = tiny_chat / "seeds.jsonl"
    path.write_text("".join(json.dumps({"instruction": s}) + "\n" for s in SEEDS))
    return path


def self_instruct(model, seeds, out, *extra):
    return ["synth", "self-instruct", "--model", model, "--seeds", seeds, "--num", "6", "--out", out,
            "--shots", "3", "--batch", "2", "--seed", "3", *TINY, *extra]


def report_without_time(path):
    report = json.loads(path.with_name(path.name + ".report.json").read_text())
    report.pop("seconds")
    return report


def wait_for_step(cursor, step, process, timeout=120):
    """Waits until the run's cursor has committed `step` steps; fails if the run ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, "the run ended before it could be interrupted"
        if cursor.exists():
            try:
                if json.loads(cursor.read_text())["progress"]["step"] >= step:
                    return
            except json.JSONDecodeError:
                pass  # a rename is atomic, but be safe
        time.sleep(0.05)
    process.kill()
    raise AssertionError("the run made no progress")


def test_self_instruct_resume_after_sigkill_and_sigint_is_exact(sft_binary, tiny_chat, seeds_file, tmp_path):
    model = tiny_chat / "model"
    whole = tmp_path / "whole.jsonl"
    result = run_sft(sft_binary, *self_instruct(model, seeds_file, whole))
    lines = jsonl(whole)
    assert len(lines) == 6 and all(set(l) == {"prompt", "response"} for l in lines), lines
    report = json.loads(result.stdout)
    assert report["complete"] and report["accepted"] == 6
    assert report["rejected_total"] == sum(report["rejected"].values()) > 0, report
    assert "accepted 6/6" in result.stderr and "rejected" in result.stderr
    # Determinism: the same seed, the same file; another seed, another file.
    again = tmp_path / "again.jsonl"
    run_sft(sft_binary, *self_instruct(model, seeds_file, again))
    assert again.read_bytes() == whole.read_bytes()
    other = tmp_path / "other.jsonl"
    run_sft(sft_binary, *self_instruct(model, seeds_file, other)[:-len(TINY) - 2], "--seed", "4", *TINY)
    assert other.read_bytes() != whole.read_bytes()

    for sig in (signal.SIGKILL, signal.SIGINT):
        out = tmp_path / f"interrupted_{sig.name}.jsonl"
        cursor = out.with_name(out.name + ".cursor.json")
        # Commit every 2 steps so a SIGKILL can land after lines that were never committed.
        process = subprocess.Popen([str(sft_binary), *map(str, self_instruct(model, seeds_file, out, "--fsync-every", "2"))],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_step(cursor, 2, process)
        process.send_signal(sig)
        stdout, stderr = process.communicate(timeout=120)
        if sig == signal.SIGINT:
            assert process.returncode == 0, stderr
            assert "stopped by a signal" in stderr and "--resume" in stderr
            assert not json.loads(stdout)["complete"]
        else:
            assert process.returncode == -signal.SIGKILL
        assert len(out.read_bytes()) < len(whole.read_bytes())
        # Without --resume the partial output is refused; with it the run completes to the same file.
        refused = run_sft(sft_binary, *self_instruct(model, seeds_file, out), check=False)
        assert refused.returncode == 2 and "--resume" in refused.stderr
        resumed = run_sft(sft_binary, *self_instruct(model, seeds_file, out, "--resume", "--fsync-every", "3"))
        assert "resuming at step" in resumed.stderr
        assert out.read_bytes() == whole.read_bytes(), sig
        assert report_without_time(out)["rejected"] == report_without_time(whole)["rejected"]


def test_evol_resume_and_output_feeds_sft_train(sft_binary, tiny_chat, tmp_path):
    model = tiny_chat / "model"
    inputs = tmp_path / "prompts.jsonl"
    inputs.write_text("".join(json.dumps({"prompt": s}) + "\n" for s in SEEDS[:5]))
    args = lambda out, *extra: ["synth", "evol", "--model", model, "--input", inputs, "--rounds", "2", "--out", out,
                                "--batch", "2", "--seed", "1", *TINY, *extra]  # noqa: E731
    whole = tmp_path / "evol.jsonl"
    report = json.loads(run_sft(sft_binary, *args(whole)).stdout)
    assert report["complete"] and report["candidates"] == 10, report
    lines = jsonl(whole)
    assert report["accepted"] == len(lines) > 0
    ops = {"add_constraints", "deepen", "concretize", "add_reasoning", "complicate_input", "breadth"}
    for line in lines:
        assert line["operation"] in ops and line["round"] in (1, 2) and line["source"].startswith(str(inputs) + ":")
    out = tmp_path / "evol_killed.jsonl"
    process = subprocess.Popen([str(sft_binary), *map(str, args(out))], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_for_step(out.with_name(out.name + ".cursor.json"), 1, process)
    process.kill()
    process.communicate(timeout=60)
    run_sft(sft_binary, *args(out, "--resume"))
    assert out.read_bytes() == whole.read_bytes()

    # The synth output is training data as it is.
    config = tmp_path / "train.yaml"
    config.write_text(f"model: {{path: {model}, attention: sdpa}}\ndata: {{train: {whole}, max_seq_len: 128}}\n"
                      "finetune: {method: lora}\ntrain: {max_steps: 2, micro_batch_size: 2, threads: 1}\n"
                      f"log: {{every_steps: 1, progress: false}}\noutput_dir: {tmp_path / 'run'}\n")
    run_sft(sft_binary, "train", config)
    data_report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert data_report["files"][0]["format"] == "prompt_response"
    assert data_report["train"]["kept"] == len(lines)
    assert len(jsonl(tmp_path / "run" / "metrics.jsonl")) == 2


def test_backward_model_backtranslate_and_distill(sft_binary, tiny_chat, tmp_path):
    model = tiny_chat / "model"
    # The backward model: ordinary SFT data trained with data.direction: reverse.
    config = tmp_path / "backward.yaml"
    config.write_text(f"model: {{path: {model}, attention: sdpa}}\n"
                      f"data: {{train: {tiny_chat / 'train.jsonl'}, direction: reverse, max_seq_len: 64}}\n"
                      "finetune: {method: full}\ntrain: {max_steps: 2, micro_batch_size: 3, threads: 1}\n"
                      f"log: {{every_steps: 1, progress: false}}\noutput_dir: {tmp_path / 'backward'}\n")
    run_sft(sft_binary, "train", config)
    assert "direction: reverse" in (tmp_path / "backward" / "config.yaml").read_text()
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["Paris is in France.", "Gold is Au.", "Lima."]))
    out = tmp_path / "bt.jsonl"
    report = json.loads(run_sft(sft_binary, "synth", "backtranslate", "--model", tmp_path / "backward" / "model",
                                "--input", texts, "--out", out, "--score", model, "--min-score", "1",
                                *TINY[:5]).stdout)
    assert report["candidates"] == 3 and report["complete"]
    assert report["accepted"] + report["rejected_total"] == 3, report
    for line in jsonl(out):
        assert line["response"] in ("Paris is in France.", "Gold is Au.", "Lima.") and 1 <= line["score"] <= 5
    # Distill: every prompt answered by the teacher, the multi-turn one as messages.
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Capital of Peru?"}) + "\n" + json.dumps({"messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Capital of France?"}]}) + "\n")
    distilled = tmp_path / "distilled.jsonl"
    run_sft(sft_binary, "synth", "distill", "--teacher", model, "--input", prompts, "--out", distilled, "--cot",
            *TINY[:5])
    lines = jsonl(distilled)
    assert lines[0]["prompt"] == "Capital of Peru?" and lines[0]["response"]
    assert [m["role"] for m in lines[1]["messages"]] == ["user", "assistant", "user", "assistant"]


@pytest.mark.parametrize("case", ["no_model", "not_a_model", "empty_seeds", "missing_seeds", "malformed_line",
                                  "num_0", "no_num", "output_exists", "resume_other_args", "unknown_subcommand",
                                  "foreign_flag", "rounds_0", "bad_texts_line"])
def test_bad_input_exits_2(sft_binary, tiny_chat, seeds_file, tmp_path, case):
    model = tiny_chat / "model"
    out = tmp_path / "out.jsonl"
    base = lambda **kw: ["synth", "self-instruct", "--model", kw.get("model", model), "--seeds",  # noqa: E731
                         kw.get("seeds", seeds_file), "--num", kw.get("num", "2"), "--out", out, *TINY]
    expected = None
    if case == "no_model":
        args, expected = base(model=tmp_path / "nope"), f"--model: {tmp_path / 'nope'} is not a directory"
    elif case == "not_a_model":
        args, expected = base(model=tmp_path), "has no config.json"
    elif case == "empty_seeds":
        (tmp_path / "empty.jsonl").write_text("\n")
        args, expected = base(seeds=tmp_path / "empty.jsonl"), "empty.jsonl is empty"
    elif case == "missing_seeds":
        args, expected = base(seeds=tmp_path / "gone.jsonl"), "--seeds: " + str(tmp_path / "gone.jsonl")
    elif case == "malformed_line":
        (tmp_path / "bad.jsonl").write_text(json.dumps({"instruction": "ok here"}) + "\n{not json\n")
        args, expected = base(seeds=tmp_path / "bad.jsonl"), f"{tmp_path / 'bad.jsonl'}:2: malformed JSON"
    elif case == "num_0":
        args, expected = base(num="0"), "--num must be >= 1 (got 0)"
    elif case == "no_num":
        args, expected = [a for a in base() if a not in ("--num", "2")], "--num is required"
    elif case == "output_exists":
        out.write_text("{}\n")
        args, expected = base(), "the output exists; pass --resume to continue it or --force to start over"
    elif case == "resume_other_args":
        run_sft(sft_binary, *base(num="1"))
        args, expected = base(num="3") + ["--resume"], "--resume with other arguments than the run it continues (--num)"
    elif case == "unknown_subcommand":
        args, expected = ["synth", "self_instruct"], "unknown subcommand 'self_instruct'"
    elif case == "foreign_flag":
        args, expected = base() + ["--rounds", "2"], "--rounds is not an option of this subcommand"
    elif case == "rounds_0":
        args, expected = ["synth", "evol", "--model", model, "--input", seeds_file, "--rounds", "0", "--out", out], \
            "--rounds must be in 1..100 (got 0)"
    elif case == "bad_texts_line":
        (tmp_path / "t.jsonl").write_text(json.dumps({"title": "x"}) + "\n")
        args, expected = ["synth", "backtranslate", "--model", model, "--input", tmp_path / "t.jsonl", "--out", out], \
            f"{tmp_path / 't.jsonl'}:1: expected a \"text\""
    result = run_sft(sft_binary, *args, check=False)
    assert result.returncode == 2, (case, result.returncode, result.stderr)
    assert expected in result.stderr, (case, result.stderr)
    if case == "output_exists":
        assert out.read_text() == "{}\n", "a refused run must leave the existing output alone"
