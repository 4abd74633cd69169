#!/usr/bin/env python3
"""A randomly initialised Llama of about 1.1B parameters (TinyLlama's shape: hidden 2048, MLP 5632, 22
layers, 32 query / 4 kv heads) with SmolLM2-135M-Instruct's tokenizer and vocabulary, for memory
benchmarks where the weights, not the runtime, dominate the process (scripts/bench_qlora.sh --model-dir).
Built with transformers' LlamaForCausalLM from a config, so names and layout are HF's; saved in bf16
(2.1 GiB; sft loads it in model.dtype). Not a test fixture: its weights are noise, only its size matters.
Usage: make_scaled_llama.py SMOLLM2_DIR OUT_DIR [--seed 0]. Idempotent: an OUT_DIR with .complete is kept."""
import argparse
import json
import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPE = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
         "num_key_value_heads": 4, "head_dim": 64}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("smollm2_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if (args.out_dir / ".complete").exists():
        print(f"[make_scaled_llama] {args.out_dir} is ready")
        return
    base = json.loads((args.smollm2_dir / "config.json").read_text())
    config = LlamaConfig(**{k: v for k, v in base.items() if not k.startswith("_")})
    for key, value in SHAPE.items():
        setattr(config, key, value)
    torch.manual_seed(args.seed)
    torch.set_default_dtype(torch.bfloat16)  # initialise in bf16: half the memory and time of fp32
    model = LlamaForCausalLM(config)
    tmp = args.out_dir.with_name(args.out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True, max_shard_size="100GB")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (args.smollm2_dir / name).exists():
            shutil.copy(args.smollm2_dir / name, tmp / name)
    params = sum(p.numel() for p in model.parameters())
    (tmp / ".complete").write_text(f"{params}\n")
    shutil.rmtree(args.out_dir, ignore_errors=True)
    tmp.rename(args.out_dir)
    print(f"[make_scaled_llama] {args.out_dir}: {params / 1e9:.2f}B parameters")


if __name__ == "__main__":
    main()
