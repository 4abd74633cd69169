"""`sft eval` against transformers: mean target-token loss and token accuracy on the same tokenized,
masked examples (1e-5 relative), on the tiny golden Llama and on SmolLM2 with real quiz data; the
result does not depend on eval.batch_size (1e-6); bad input exits 2 naming the culprit."""
import json
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from conftest import ROOT, run_sft


def reference_scores(model_dir, examples):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    loss_sum, correct, count, per_example = 0.0, 0, 0, []
    with torch.no_grad():
        for ex in examples:
            ids = torch.tensor([ex["input_ids"]])
            labels = torch.tensor(ex["labels"][1:])
            logits = model(input_ids=ids).logits[0, :-1].double()
            mask = labels != -100
            losses = torch.nn.functional.cross_entropy(logits[mask], labels[mask], reduction="none")
            loss_sum += losses.sum().item()
            correct += (logits[mask].argmax(-1) == labels[mask]).sum().item()
            count += int(mask.sum())
            per_example.append(losses.mean().item())
    return loss_sum / count, correct / count, per_example


def write_config(path, model_dir, train, eval_file, out_dir, fmt, batch_size=8, extra=""):
    path.write_text(
        f"model: {{path: {model_dir}, attention: sdpa}}\n"
        f"data: {{train: {train}, eval: {eval_file}, format: {fmt}, max_seq_len: 256}}\n"
        f"eval: {{batch_size: {batch_size}}}\n"
        f"train: {{threads: 2}}\n"
        f"output_dir: {out_dir}\n{extra}")


def check_against_reference(sft_binary, tmp_path, model_dir, tokens_file):
    examples = [json.loads(l) for l in open(tokens_file)]
    ref_loss, ref_acc, ref_per_example = reference_scores(model_dir, examples)
    summaries = []
    for batch_size in (1, 8):
        cfg = tmp_path / f"eval_{batch_size}.yaml"
        write_config(cfg, model_dir, tokens_file, tokens_file, tmp_path / f"run_{batch_size}", "tokenized", batch_size)
        run_sft(sft_binary, "eval", cfg)
        out = tmp_path / f"run_{batch_size}" / "eval"
        summary = json.loads((out / "summary.json").read_text())
        lines = [json.loads(l) for l in open(out / "examples.jsonl")]
        assert summary["examples"] == len(examples) == len(lines)
        assert abs(summary["loss"] - ref_loss) <= 1e-5 * ref_loss, (summary["loss"], ref_loss)
        assert abs(summary["token_accuracy"] - ref_acc) <= 1e-5 * max(ref_acc, 1e-3), (summary["token_accuracy"], ref_acc)
        for ours, ref in zip(lines, ref_per_example):
            assert abs(ours["loss"] - ref) <= 1e-5 * ref
        summaries.append(summary)
    # Independent of eval.batch_size.
    for key in ("loss", "token_accuracy", "perplexity"):
        assert abs(summaries[0][key] - summaries[1][key]) <= 1e-6 * abs(summaries[0][key]), key
    print(f"{model_dir.name}: loss {summaries[0]['loss']:.6f} (ref {ref_loss:.6f}), acc {summaries[0]['token_accuracy']:.4f}")


def test_tiny_model_matches_transformers(sft_binary, golden_dir, tmp_path):
    check_against_reference(sft_binary, tmp_path, golden_dir / "train" / "base", golden_dir / "train" / "data.jsonl")


def test_smollm2_on_quiz_data_matches_transformers(sft_binary, smollm2_dir, tmp_path):
    quiz = ROOT / ".cache" / "data" / "quiz" / "eval.jsonl"
    assert quiz.exists(), "run scripts/make_quiz_data.py"
    # The exact ids and labels the trainer sees, from the chat-template pipeline.
    cfg = tmp_path / "data.yaml"
    write_config(cfg, smollm2_dir, quiz, quiz, tmp_path / "data_run", "auto")
    run_sft(sft_binary, "data", cfg, "--out", tmp_path / "tokens.jsonl")
    lines = (tmp_path / "tokens.jsonl").read_text().splitlines()[:16]
    (tmp_path / "tokens16.jsonl").write_text("\n".join(lines) + "\n")
    check_against_reference(sft_binary, tmp_path, smollm2_dir, tmp_path / "tokens16.jsonl")


def test_bad_input_exits_2(sft_binary, golden_dir, tmp_path):
    base, data = golden_dir / "train" / "base", golden_dir / "train" / "data.jsonl"
    cfg = tmp_path / "c.yaml"
    write_config(cfg, base, data, data, tmp_path / "run", "tokenized")
    missing = run_sft(sft_binary, "eval", cfg, "--checkpoint", tmp_path / "nope", check=False)
    assert missing.returncode == 2 and "nope" in missing.stderr
    # An adapter made for another base model (different shapes).
    other = golden_dir / "models" / "llama_sharded"
    adapter = tmp_path / "adapter"
    from peft import LoraConfig, get_peft_model
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(other),
                                LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    peft_model.save_pretrained(adapter)
    mismatch = run_sft(sft_binary, "eval", cfg, "--adapter", adapter, check=False)
    assert mismatch.returncode == 2 and "adapter" in mismatch.stderr, mismatch.stderr
    # An empty eval set.
    cfg_empty = tmp_path / "empty.yaml"
    cfg_empty.write_text(f"model: {{path: {base}}}\ndata: {{train: {data}, format: tokenized}}\noutput_dir: {tmp_path}/r\n")
    empty = run_sft(sft_binary, "eval", cfg_empty, check=False)
    assert empty.returncode == 2 and "held-out set is empty" in empty.stderr, empty.stderr
