#!/usr/bin/env python3
"""Golden values for the model tests, made with HF transformers (the reference implementation).

Builds tiny random HF models with a fixed seed, saves them with save_pretrained, and dumps reference
logits for fixed inputs into <out>/models/<name>/reference.safetensors:
  (a) llama_gqa       Llama with grouped-query attention
  (b) mistral         Mistral
  (c) qwen2_bias      Qwen2 (q/k/v biases)
  (d) llama_tied_rope3  Llama with tied embeddings and llama3 rope_scaling
  (e) llama_sharded   a sharded checkpoint (model.safetensors.index.json)
Idempotent: skipped when <out>/models/STAMP matches this script's hash.
"""
import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

DOCS = [  # token ids of three documents; the C++ test runs them one by one and packed together
    [1, 17, 33, 101, 7, 250, 64, 9, 12, 200, 199, 3, 5],
    [1, 44, 45, 46, 47],
    [2, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99, 100, 120, 130, 140, 150, 160, 170, 180, 190, 210],
]


def base_kwargs():
    return dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                rms_norm_eps=1e-6, rope_theta=10000.0, bos_token_id=1, eos_token_id=2)


def make_models():
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                              Qwen2Config, Qwen2ForCausalLM)
    kw = base_kwargs()
    return {
        "llama_gqa": (LlamaForCausalLM, LlamaConfig(**kw), None),
        "mistral": (MistralForCausalLM, MistralConfig(**{**kw, "num_key_value_heads": 1, "sliding_window": 4096}), None),
        "qwen2_bias": (Qwen2ForCausalLM, Qwen2Config(**{**kw, "num_key_value_heads": 4}), None),
        "llama_tied_rope3": (LlamaForCausalLM, LlamaConfig(**{**kw, "tie_word_embeddings": True, "rope_scaling": {
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16}}), None),
        "llama_sharded": (LlamaForCausalLM, LlamaConfig(**{**kw, "head_dim": 32}), "60KB"),
    }


def randomize(model, seed):
    """Random weights with enough spread that logits are O(1): every mapping error shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.15 * noise)


def build(out: Path):
    torch.manual_seed(0)
    for index, (name, (cls, config, shard)) in enumerate(make_models().items()):
        model_dir = out / name
        config._attn_implementation = "sdpa"
        model = cls(config).eval().to(torch.float32)
        randomize(model, 1000 + index)
        if config.tie_word_embeddings:
            assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        kwargs = {"max_shard_size": shard} if shard else {}
        model.save_pretrained(model_dir, safe_serialization=True, **kwargs)
        tensors = {}
        with torch.no_grad():
            for d, ids in enumerate(DOCS):
                input_ids = torch.tensor([ids])
                logits = model(input_ids=input_ids).logits[0]
                tensors[f"input_ids_{d}"] = input_ids[0].to(torch.int64)
                tensors[f"logits_{d}"] = logits.contiguous()
        save_file(tensors, str(model_dir / "reference.safetensors"))
        files = sorted(p.name for p in model_dir.iterdir())
        print(f"[golden] {name}: {files}")
        if shard:
            assert (model_dir / "model.safetensors.index.json").exists(), "sharding did not happen"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / ".cache" / "golden"))
    args = parser.parse_args()
    out = Path(args.out) / "models"
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    stamp = out / "STAMP"
    if stamp.exists() and stamp.read_text() == digest:
        print(f"[golden] models up to date in {out}")
        return
    out.mkdir(parents=True, exist_ok=True)
    build(out)
    stamp.write_text(digest)


if __name__ == "__main__":
    sys.exit(main())
