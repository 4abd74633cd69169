"""`sft eval` against transformers: mean target-token loss and token accuracy on the same tokenized,
masked examples (1e-5 relative), on the tiny golden Llama and on SmolLM2 with real quiz data, for every
model `sft eval` can score (base model; --checkpoint of a LoRA, full or freeze run; --adapter with our
adapter or one PEFT wrote); the result does not depend on eval.batch_size (1e-6). The evaluation inside
`sft train` (with eval.generate: exact match) is the same code path: its numbers equal `sft eval`'s on
the run's outputs exactly, and generating during training leaves the training run unchanged. Bad input
exits 2 naming the culprit."""
import json
import shutil

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from conftest import ROOT, run_sft


def load_reference(model_dir, adapter_dir=None):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    return model.eval()


def reference_scores(model, examples):
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


def check_against_reference(sft_binary, tmp_path, model_dir, tokens_file, reference=None, flags=()):
    """`sft eval CONFIG *flags` at eval.batch_size 1 and 8 against `reference` (default: model_dir in
    transformers). Returns the reference loss."""
    examples = [json.loads(l) for l in open(tokens_file)]
    ref_loss, ref_acc, ref_per_example = reference_scores(reference or load_reference(model_dir), examples)
    summaries = []
    for batch_size in (1, 8):
        cfg = tmp_path / f"eval_{batch_size}.yaml"
        write_config(cfg, model_dir, tokens_file, tokens_file, tmp_path / f"run_{batch_size}", "tokenized", batch_size)
        run_sft(sft_binary, "eval", cfg, *flags)
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
    print(f"{summaries[0]['model']}: loss {summaries[0]['loss']:.6f} (ref {ref_loss:.6f}), "
          f"acc {summaries[0]['token_accuracy']:.4f}")
    return ref_loss


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


# ---- every model `sft eval` scores, against transformers / PEFT (golden tiny Llama, tokenized data) ----

METHODS = {"lora": "finetune: {method: lora, lora: {r: 4, alpha: 8, dropout: 0.1}}\n",
           "full": "finetune: {method: full}\n",
           "freeze": "finetune: {method: freeze, freeze: {trainable_layers: 1}}\n"}


def final_checkpoint(run_dir):
    return sorted((run_dir / "checkpoints").glob("step-*"))[-1]


@pytest.fixture(scope="module")
def golden_runs(sft_binary, golden_dir, tmp_path_factory):
    """One short training run per method on the golden tiny Llama: {method: output_dir}."""
    root, train = tmp_path_factory.mktemp("runs"), golden_dir / "train"
    runs = {}
    for method, method_yaml in METHODS.items():
        cfg = root / f"{method}.yaml"
        cfg.write_text(f"model: {{path: {train / 'base'}, attention: sdpa}}\n"
                       f"data: {{train: {train / 'data.jsonl'}, format: tokenized, packing: false, max_seq_len: 64}}\n"
                       "train: {epochs: 2, micro_batch_size: 8, lr: 5.0e-3, warmup_steps: 0, seed: 7, threads: 1}\n"
                       "log: {every_steps: 1, progress: false}\n"
                       f"output_dir: {root / method}\n{method_yaml}")
        run_sft(sft_binary, "train", cfg)
        runs[method] = root / method
    return runs


@pytest.fixture(scope="module")
def peft_adapter(golden_dir, tmp_path_factory):
    """An adapter written by PEFT itself for the golden base, with non-zero (random) B."""
    torch.manual_seed(11)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(golden_dir / "train" / "base"),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                      task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    out = tmp_path_factory.mktemp("peft") / "adapter"
    model.save_pretrained(out)
    assert (out / "adapter_model.safetensors").exists()
    return out


def scored_variant(variant, runs, peft_adapter, base):
    """(sft eval flags, reference (model dir, adapter dir or None)) of one variant. The eval config is
    always the plain one (no finetune section): a checkpoint brings its own run's method."""
    method, kind = variant.split("_")
    if method == "peft":
        return ("--adapter", peft_adapter), (base, peft_adapter)
    run = runs[method]
    flags = ("--adapter", run / "adapter") if kind == "adapter" else ("--checkpoint", final_checkpoint(run))
    return flags, ((base, run / "adapter") if method == "lora" else (run / "model", None))


VARIANTS = ["lora_checkpoint", "lora_adapter", "full_checkpoint", "freeze_checkpoint", "peft_adapter"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_scored_model_matches_reference(sft_binary, golden_dir, golden_runs, peft_adapter, tmp_path, variant):
    """The base model alone is test_tiny_model_matches_transformers."""
    base, data = golden_dir / "train" / "base", golden_dir / "train" / "data.jsonl"
    flags, (ref_model, ref_adapter) = scored_variant(variant, golden_runs, peft_adapter, base)
    ref_loss = check_against_reference(sft_binary, tmp_path, base, data, load_reference(ref_model, ref_adapter), flags)
    base_loss, _, _ = reference_scores(load_reference(base), [json.loads(l) for l in open(data)])
    assert abs(ref_loss - base_loss) > 1e-3 * base_loss, "the scored model equals the base model: nothing loaded"


# ---- exact match inside `sft train` equals `sft eval` on the run's outputs ----------------------------

QA_TRAIN = [("Capital of France?", "Paris"), ("Symbol of gold?", "Au"), ("Capital of Peru?", "Lima")]
# The held-out references: the third differs from the trained answer only in case and punctuation, so
# exact match and its normalised variant differ.
QA_EVAL = [("Capital of France?", "Paris"), ("Symbol of gold?", "Au"), ("Capital of Peru?", "lima.")]


@pytest.fixture(scope="module")
def tiny_chat(smollm2_dir, tmp_path_factory):
    """A tiny random Llama with SmolLM2's tokenizer and chat template (so greedy answers are text), and
    the Q/A files. Initialised with a large std so a few LoRA steps memorise the answers."""
    root = tmp_path_factory.mktemp("tiny_chat")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=True, initializer_range=0.2)
    LlamaForCausalLM(config).save_pretrained(root / "model")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(smollm2_dir / name, root / "model" / name)
    for name, rows in (("train.jsonl", QA_TRAIN), ("eval.jsonl", QA_EVAL)):
        (root / name).write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in rows))
    return root


def chat_config(tiny_chat, out_dir, method, generate=True, dropout=0.0, every_steps=10):
    return (f"model: {{path: {tiny_chat / 'model'}, attention: sdpa}}\n"
            f"data: {{train: {tiny_chat / 'train.jsonl'}, eval: {tiny_chat / 'eval.jsonl'}, max_seq_len: 64}}\n"
            f"finetune: {{method: {method}, lora: {{r: 8, alpha: 16, dropout: {dropout}}}}}\n"
            "train: {max_steps: 30, micro_batch_size: 3, lr: 1.0e-2, warmup_steps: 0, scheduler: constant,\n"
            "        seed: 3, threads: 1}\n"
            f"eval: {{every_steps: {every_steps}, batch_size: 2, generate: {str(generate).lower()},\n"
            "       max_new_tokens: 8}\n"
            "log: {every_steps: 1, progress: false}\n"
            f"output_dir: {out_dir}\n")


def jsonl(path):
    return [json.loads(l) for l in open(path)]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_train_exact_match_equals_sft_eval(sft_binary, tiny_chat, tmp_path, method):
    run = tmp_path / "run"
    cfg = tmp_path / "train.yaml"
    cfg.write_text(chat_config(tiny_chat, run, method))
    trained = run_sft(sft_binary, "train", cfg)
    lines = jsonl(run / "eval.jsonl")
    assert [l["step"] for l in lines] == [10, 20, 30]
    assert all("exact_match" in l and "exact_match_normalized" in l for l in lines), lines
    eval_lines = [l for l in trained.stderr.splitlines() if l.startswith("eval step")]
    assert len(eval_lines) == 3 and all(" exact_match " in l for l in eval_lines), trained.stderr
    final = lines[-1]
    assert 0 < final["exact_match"] < final["exact_match_normalized"], final
    # The run's outputs scored by `sft eval` (same config): the same numbers, exactly.
    scored = [("--checkpoint", final_checkpoint(run))]
    if method == "lora":
        scored += [("--adapter", run / "adapter"), ("--adapter", run)]
    else:
        scored += [("--checkpoint", run / "model")]
    for i, flags in enumerate(scored):
        out = tmp_path / f"eval{i}"
        run_sft(sft_binary, "eval", cfg, *flags, "--out", out)
        summary = json.loads((out / "summary.json").read_text())
        for key in ("examples", "target_tokens", "loss", "perplexity", "token_accuracy", "exact_match",
                    "exact_match_normalized"):
            assert summary[key] == final[key], (flags, key, summary[key], final[key])
        examples = jsonl(out / "examples.jsonl")
        assert [e["reference"] for e in examples] == [answer for _, answer in QA_EVAL]
        assert sum(e["exact_match"] for e in examples) == round(final["exact_match"] * len(QA_EVAL))


def test_generating_during_training_leaves_the_run_unchanged(sft_binary, tiny_chat, tmp_path):
    """LoRA dropout draws from the training RNG between evaluations; exact-match decoding must not."""
    runs = {}
    for generate in (False, True):
        out = tmp_path / f"generate_{generate}"
        cfg = tmp_path / f"generate_{generate}.yaml"
        cfg.write_text(chat_config(tiny_chat, out, "lora", generate=generate, dropout=0.1, every_steps=4))
        run_sft(sft_binary, "train", cfg)
        metrics = [{k: v for k, v in l.items() if k not in ("tokens_per_s", "elapsed_s")}
                   for l in jsonl(out / "metrics.jsonl")]
        runs[generate] = (metrics, jsonl(out / "eval.jsonl"), load_file(out / "adapter" / "adapter_model.safetensors"))
    (metrics_off, eval_off, adapter_off), (metrics_on, eval_on, adapter_on) = runs[False], runs[True]
    assert len(metrics_on) == 30 and metrics_on == metrics_off
    assert len(eval_on) == len(eval_off) == 8
    for off, on in zip(eval_off, eval_on):
        assert "exact_match" in on and "exact_match" not in off
        assert {k: on[k] for k in off} == off
    assert adapter_on.keys() == adapter_off.keys()
    assert all(torch.equal(adapter_on[k], adapter_off[k]) for k in adapter_off)


# ---- bad input ----------------------------------------------------------------------------------------

def exits_2_naming(result, *culprits):
    assert result.returncode == 2, (result.returncode, result.stderr)
    for culprit in culprits:
        assert str(culprit) in result.stderr, (culprit, result.stderr)


def test_bad_input_exits_2(sft_binary, golden_dir, tmp_path):
    base, data = golden_dir / "train" / "base", golden_dir / "train" / "data.jsonl"
    cfg = tmp_path / "c.yaml"
    write_config(cfg, base, data, data, tmp_path / "run", "tokenized")
    exits_2_naming(run_sft(sft_binary, "eval", cfg, "--checkpoint", tmp_path / "nope", check=False),
                   tmp_path / "nope", "is not a directory")
    # A directory that is no checkpoint, adapter or model.
    (tmp_path / "empty_dir").mkdir()
    exits_2_naming(run_sft(sft_binary, "eval", cfg, "--checkpoint", tmp_path / "empty_dir", check=False),
                   tmp_path / "empty_dir", "holds no manifest.json")
    # An adapter made for another base model (different shapes).
    adapter = tmp_path / "adapter"
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(golden_dir / "models" / "llama_sharded"),
                                LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    peft_model.save_pretrained(adapter)
    exits_2_naming(run_sft(sft_binary, "eval", cfg, "--adapter", adapter, check=False),
                   adapter / "adapter_model.safetensors", "has shape", "another base model")
    # An empty eval set: none configured, or an empty file.
    cfg_empty = tmp_path / "empty.yaml"
    cfg_empty.write_text(f"model: {{path: {base}}}\ndata: {{train: {data}, format: tokenized}}\noutput_dir: {tmp_path}/r\n")
    exits_2_naming(run_sft(sft_binary, "eval", cfg_empty, check=False), "held-out set is empty")
    (tmp_path / "none.jsonl").write_text("")
    write_config(cfg_empty, base, data, tmp_path / "none.jsonl", tmp_path / "run", "tokenized")
    exits_2_naming(run_sft(sft_binary, "eval", cfg_empty, check=False), "none.jsonl")


def test_incomplete_checkpoint_exits_2(sft_binary, golden_dir, golden_runs, tmp_path):
    base, data = golden_dir / "train" / "base", golden_dir / "train" / "data.jsonl"
    cfg = tmp_path / "c.yaml"
    write_config(cfg, base, data, data, tmp_path / "run", "tokenized")
    checkpoint = tmp_path / "step-00000004"
    shutil.copytree(final_checkpoint(golden_runs["lora"]), checkpoint)
    (checkpoint / "manifest.json").unlink()
    exits_2_naming(run_sft(sft_binary, "eval", cfg, "--checkpoint", checkpoint, check=False),
                   checkpoint / "manifest.json", "not a complete checkpoint")


def test_adapter_for_modules_the_model_lacks_exits_2(sft_binary, golden_dir, peft_adapter, tmp_path):
    """A GPT-2 style adapter (target module c_attn) on a Llama."""
    base, data = golden_dir / "train" / "base", golden_dir / "train" / "data.jsonl"
    cfg = tmp_path / "c.yaml"
    write_config(cfg, base, data, data, tmp_path / "run", "tokenized")
    adapter = tmp_path / "gpt2_adapter"
    adapter.mkdir()
    config = json.loads((peft_adapter / "adapter_config.json").read_text())
    config["target_modules"] = ["c_attn"]
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    tensors = load_file(peft_adapter / "adapter_model.safetensors")
    save_file({k.replace("q_proj", "c_attn"): v for k, v in tensors.items() if "q_proj" in k},
              adapter / "adapter_model.safetensors")
    exits_2_naming(run_sft(sft_binary, "eval", cfg, "--adapter", adapter, check=False),
                   adapter / "adapter_model.safetensors", "c_attn", "matches no adapted module")


def test_train_generate_without_tokenizer_exits_2_before_training(sft_binary, golden_dir, tmp_path):
    base, data = golden_dir / "train" / "base", golden_dir / "train" / "data.jsonl"
    cfg = tmp_path / "c.yaml"
    write_config(cfg, base, data, data, tmp_path / "run", "tokenized")
    exits_2_naming(run_sft(sft_binary, "train", cfg, "eval.generate=true", check=False),
                   "eval.generate needs text data")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
