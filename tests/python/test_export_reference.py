"""Export interchange against the HF reference implementations, on the golden tiny Llama:
- the adapter/ a LoRA run writes loads with PEFT (PeftModel.from_pretrained) onto the transformers base;
- `sft merge` writes an HF directory transformers loads (single file, sharded with an index, bfloat16) whose
  logits equal PEFT's base+adapter logits (1e-5 relative to the largest logit);
- full and freeze runs' model/ loads in transformers with logits equal to ours (`sft logits`).
The reverse direction, an adapter written by PEFT used by us (finetune.lora.init_from), is covered by
TrainParity.LoraMatchesPeft in tests/test_train.cpp."""
import json

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import run_sft

IDS = [1, 17, 33, 101, 7, 250, 64, 9, 3, 200, 5, 42]
REL = 1e-5


def train_config(golden_dir, out_dir, method_yaml):
    train = golden_dir / "train"
    return (f"model: {{path: {train / 'base'}, attention: sdpa}}\n"
            f"data: {{train: {train / 'data.jsonl'}, format: tokenized, packing: false, max_seq_len: 64}}\n"
            "train: {epochs: 3, micro_batch_size: 8, grad_accum: 1, lr: 5.0e-3, warmup_steps: 0, seed: 7, threads: 1}\n"
            "log: {every_steps: 1, progress: false}\n"
            f"output_dir: {out_dir}\n{method_yaml}")


def run_training(sft_binary, golden_dir, tmp_path, method_yaml):
    config = tmp_path / "config.yaml"
    config.write_text(train_config(golden_dir, tmp_path / "out", method_yaml))
    run_sft(sft_binary, "train", config)
    return tmp_path / "out"


def hf_logits(model):
    with torch.no_grad():
        return model(torch.tensor([IDS])).logits[0].float()


def assert_close_rel(ours, ref, rel=REL, what=""):
    scale = ref.abs().max().item()
    diff = (ours - ref).abs().max().item()
    assert diff <= rel * scale, f"{what}: max |diff| {diff} > {rel} * {scale}"


@pytest.fixture(scope="module")
def lora_run(sft_binary, golden_dir, tmp_path_factory):
    return run_training(sft_binary, golden_dir, tmp_path_factory.mktemp("lora"),
                        "finetune: {method: lora, lora: {r: 4, alpha: 8, dropout: 0.0}}\n")


@pytest.fixture(scope="module")
def peft_logits(golden_dir, lora_run):
    base = AutoModelForCausalLM.from_pretrained(golden_dir / "train" / "base", dtype=torch.float32).eval()
    base_logits = hf_logits(base)
    model = PeftModel.from_pretrained(base, lora_run / "adapter").eval()
    logits = hf_logits(model)
    # The adapter trained: it moves the logits well beyond the comparison tolerance.
    assert (logits - base_logits).abs().max().item() > 100 * REL * base_logits.abs().max().item()
    return logits


def test_peft_loads_our_adapter(lora_run, peft_logits):
    config = json.loads((lora_run / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    assert torch.isfinite(peft_logits).all()


def test_merge_matches_peft(sft_binary, golden_dir, lora_run, peft_logits, tmp_path):
    out = tmp_path / "merged"
    run_sft(sft_binary, "merge", "--model", golden_dir / "train" / "base", "--adapter", lora_run / "adapter",
            "--out", out)
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    assert not (out / "model.safetensors.index.json").exists()
    with safe_open(out / "model.safetensors", "pt") as f:
        assert not any("lora" in k for k in f.keys())
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert_close_rel(hf_logits(merged), peft_logits, what="sft merge vs PEFT")


def test_merge_sharded_has_index_and_matches_peft(sft_binary, golden_dir, lora_run, peft_logits, tmp_path):
    out = tmp_path / "merged_sharded"
    run_sft(sft_binary, "merge", "--model", golden_dir / "train" / "base", "--adapter", lora_run / "adapter",
            "--out", out, "--shard-size", 60000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 2, shards
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert_close_rel(hf_logits(merged), peft_logits, what="sharded sft merge vs PEFT")


def test_merge_bfloat16_matches_peft_merge_rounded(sft_binary, golden_dir, lora_run, tmp_path):
    out = tmp_path / "merged_bf16"
    run_sft(sft_binary, "merge", "--model", golden_dir / "train" / "base", "--adapter", lora_run / "adapter",
            "--out", out, "--dtype", "bfloat16")
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    ours = load_file(out / "model.safetensors")
    base = AutoModelForCausalLM.from_pretrained(golden_dir / "train" / "base", dtype=torch.float32)
    ref = PeftModel.from_pretrained(base, lora_run / "adapter").merge_and_unload().to(torch.bfloat16).state_dict()
    for name, tensor in ours.items():
        assert tensor.dtype == torch.bfloat16, name
        # PEFT merges in fp32 and rounds once, as we do: at most one bf16 rounding step apart.
        r = ref[name].float()
        assert ((tensor.float() - r).abs() <= 2 ** -7 * r.abs() + 1e-30).all(), name
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).eval()
    assert torch.isfinite(hf_logits(loaded)).all()


def test_merge_refuses_missing_adapter(sft_binary, golden_dir, tmp_path):
    result = run_sft(sft_binary, "merge", "--model", golden_dir / "train" / "base", "--adapter", tmp_path / "nope",
                     "--out", tmp_path / "m", check=False)
    assert result.returncode == 2
    assert "adapter_config.json" in result.stderr


@pytest.mark.parametrize("method_yaml", ["finetune: {method: full}\n",
                                         "finetune: {method: freeze, freeze: {trainable_layers: 1}}\n"])
def test_full_and_freeze_model_dir_loads_in_transformers(sft_binary, golden_dir, tmp_path, method_yaml):
    out = run_training(sft_binary, golden_dir, tmp_path, method_yaml)
    model = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32).eval()
    ref = hf_logits(model)
    run_sft(sft_binary, "logits", "--model", out / "model", "--ids", ",".join(map(str, IDS)),
            "--out", tmp_path / "logits.safetensors")
    ours = load_file(tmp_path / "logits.safetensors")["logits"]
    assert_close_rel(ours, ref, what="model/ in transformers vs sft logits")
    base = AutoModelForCausalLM.from_pretrained(golden_dir / "train" / "base", dtype=torch.float32).eval()
    assert (ref - hf_logits(base)).abs().max().item() > 100 * REL * ref.abs().max().item(), "nothing trained"
