#!/usr/bin/env python3
"""Turns a GGUF file into an HF model directory (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json) with transformers + gguf: tensors are dequantized to float32.

transformers marks GGUF-loaded models as not serializable, so the dequantized weights are copied
into a freshly built model of the same config before save_pretrained."""
import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("gguf", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    src_dir, name = str(args.gguf.parent), args.gguf.name
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(src_dir, gguf_file=name)
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(loaded.state_dict(), strict=False)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        sys.exit(f"convert_gguf: state dict mismatch: missing={missing} unexpected={unexpected}")
    if config.tie_word_embeddings:
        clean.tie_weights()
    args.out.mkdir(parents=True, exist_ok=True)
    clean.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    # transformers 5 writes the template to chat_template.jinja; the original hub repository keeps it
    # inline in tokenizer_config.json. Write both so either layout is exercised.
    tok_config_path = args.out / "tokenizer_config.json"
    tok_config = json.loads(tok_config_path.read_text())
    if tokenizer.chat_template and "chat_template" not in tok_config:
        tok_config["chat_template"] = tokenizer.chat_template
        tok_config_path.write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")
    print(f"[convert_gguf] wrote {args.out}: {sorted(p.name for p in args.out.iterdir())}")


if __name__ == "__main__":
    main()
