"""Adapter methods of issue 14 against PEFT, on the golden tiny Llama, through the real `sft` binary:
- DoRA: the adapter a `finetune.lora.dora: true` run writes has use_dora and PEFT's lora_magnitude_vector
  names; PEFT loads it; `sft merge` folds the magnitude in, and the merged model's logits equal PEFT's
  base+adapter logits (1e-5 relative to the largest logit), as does PEFT's own merge_and_unload.
- PiSSA/OLoRA: a run trains on the residual base, and writes the adapter converted as PEFT's
  path_initial_model_for_weight_conversion does (rank 2r, alpha 2*alpha, [A; A0] and [B, -B0]). Loaded by
  PEFT onto the ORIGINAL base model, it gives what was trained: the logits of PEFT's own pissa/olora init
  (the residual base) carrying the trained A and B (1e-5).
The forward of a PEFT DoRA adapter in sft is LoraDora.ForwardOnPeftAdapterMatchesPeftLogits (tests/test_adapters.cpp)."""
import copy
import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import run_sft
from test_export_reference import REL, assert_close_rel, hf_logits, run_training

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_base(golden_dir):
    return AutoModelForCausalLM.from_pretrained(golden_dir / "train" / "base", dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def dora_run(sft_binary, golden_dir, tmp_path_factory):
    return run_training(sft_binary, golden_dir, tmp_path_factory.mktemp("dora"),
                        "finetune: {method: lora, lora: {r: 4, alpha: 8, dropout: 0.0, dora: true}}\n")


def test_dora_adapter_loads_in_peft_and_merge_folds_the_magnitude(sft_binary, golden_dir, dora_run, tmp_path):
    adapter = dora_run / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["use_dora"] is True and config["r"] == 4
    with safe_open(adapter / "adapter_model.safetensors", "pt") as f:
        magnitudes = [k for k in f.keys() if k.endswith(".lora_magnitude_vector")]
        assert len(magnitudes) == 14, magnitudes
    base_logits = hf_logits(load_base(golden_dir))
    peft_model = PeftModel.from_pretrained(load_base(golden_dir), adapter).eval()
    peft_logits = hf_logits(peft_model)
    assert (peft_logits - base_logits).abs().max().item() > 100 * REL * base_logits.abs().max().item()
    # The magnitudes trained away from the row norms they start at (else DoRA would be plain LoRA here).
    state = load_file(adapter / "adapter_model.safetensors")
    base_state = load_base(golden_dir).state_dict()
    name = "base_model.model.model.layers.0.self_attn.q_proj."
    start = torch.linalg.norm(base_state["model.layers.0.self_attn.q_proj.weight"] + 2.0 * state[name + "lora_B.weight"]
                              @ state[name + "lora_A.weight"], dim=1)
    assert (state[name + "lora_magnitude_vector"] - start).abs().max().item() > 1e-4

    out = tmp_path / "merged"
    run_sft(sft_binary, "merge", "--model", golden_dir / "train" / "base", "--adapter", adapter, "--out", out)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert_close_rel(hf_logits(merged), peft_logits, what="sft merge (DoRA) vs PEFT base+adapter")
    peft_merged = peft_model.merge_and_unload().state_dict()
    ours = load_file(out / "model.safetensors")
    for key, tensor in ours.items():
        ref = peft_merged[key]
        assert (tensor - ref).abs().max().item() <= 1e-5 * max(ref.abs().max().item(), 1e-30), key


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_olora_adapter_is_converted_for_the_original_base(sft_binary, golden_dir, tmp_path, init):
    out = run_training(sft_binary, golden_dir, tmp_path,
                       f"finetune: {{method: lora, lora: {{r: 4, alpha: 8, dropout: 0.0, init: {init}}}}}\n")
    adapter = out / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16 and config["init_lora_weights"] is True
    converted = load_file(adapter / "adapter_model.safetensors")

    # What was trained: PEFT's own init of the residual base, carrying our trained A, B (the first r rows/cols).
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS, init_lora_weights=init)
    trained = get_peft_model(load_base(golden_dir), cfg).eval()
    initial = {n: p.detach().clone() for n, p in trained.named_parameters() if "lora_" in n}
    with torch.no_grad():
        for n, p in trained.named_parameters():
            key = n.replace(".default", "")
            if "lora_A" in n:
                assert torch.allclose(converted[key][4:], initial[n], atol=1e-5), key  # A0 is PEFT's init
                p.copy_(converted[key][:4])
            elif "lora_B" in n:
                assert torch.allclose(-converted[key][:, 4:], initial[n], atol=1e-5), key
                p.copy_(converted[key][:, :4])
    trained_logits = hf_logits(trained)

    on_original = PeftModel.from_pretrained(load_base(golden_dir), adapter).eval()
    original_logits = hf_logits(on_original)
    assert_close_rel(original_logits, trained_logits, what=f"{init} converted adapter on the original base")
    base_logits = hf_logits(load_base(golden_dir))
    assert (original_logits - base_logits).abs().max().item() > 100 * REL * base_logits.abs().max().item()
