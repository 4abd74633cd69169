"""`sft generate` against transformers' generate(do_sample=False): greedy output ids must be equal token
for token on the tiny random golden models (raw --prompt-ids), on SmolLM2-135M-Instruct through the
chat template (--input JSONL and streamed --prompt), and with a PEFT LoRA adapter (PeftModel)."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import run_sft

GOLDEN_MODELS = ["llama_gqa", "mistral", "qwen2_bias", "llama_tied_rope3", "llama_sharded"]
TOKEN_PROMPTS = [[1, 17, 33, 101, 7, 250, 64, 9], [3, 200, 5]]
NEW_TOKENS = 24


def hf_greedy(model, prompt_ids, max_new_tokens, eos_token_id=None):
    """New token ids of transformers' greedy generate (a final EOS included, as generate returns it)."""
    input_ids = torch.tensor([prompt_ids])
    kwargs = {} if eos_token_id is None else {"eos_token_id": eos_token_id}
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=0, **kwargs)
    return out[0, len(prompt_ids):].tolist()


def sft_ids(sft_binary, model_dir, prompt_ids, max_new_tokens, *extra):
    result = run_sft(sft_binary, "generate", "--model", model_dir, "--prompt-ids", ",".join(map(str, prompt_ids)),
                     "--max-new-tokens", max_new_tokens, *extra)
    line = result.stdout.strip()
    return [int(x) for x in line.split(",")] if line else []


@pytest.mark.parametrize("name", GOLDEN_MODELS)
def test_tiny_greedy_matches_transformers(sft_binary, golden_dir, name):
    model_dir = golden_dir / "models" / name
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for prompt in TOKEN_PROMPTS:
        ref = hf_greedy(model, prompt, NEW_TOKENS)
        ours = sft_ids(sft_binary, model_dir, prompt, NEW_TOKENS)
        print(f"{name} {prompt}: {ours}")
        assert ours == ref
        assert len(set(ref)) > 3, "degenerate reference output makes the comparison weak"
        # The full-recompute path (no cache) gives the same tokens.
        assert sft_ids(sft_binary, model_dir, prompt, NEW_TOKENS, "--no-cache") == ref


def test_tiny_eos_stops_like_transformers(sft_binary, golden_dir):
    """Generation stops at config.json's eos_token_id (2) and returns it, as transformers does. The prompt
    was found by search: llama_gqa's greedy continuation of it emits EOS after 41 tokens."""
    model_dir = golden_dir / "models" / "llama_gqa"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompt = [1, 59, 157, 255]
    ref = hf_greedy(model, prompt, 64)
    assert len(ref) < 64 and ref[-1] == 2, f"the reference no longer stops early: {ref}"
    assert sft_ids(sft_binary, model_dir, prompt, 64) == ref


CHAT_LINES = [
    {"messages": [{"role": "user", "content": "What is the capital of France?"}]},
    {"prompt": "Write a haiku about the sea.", "response": "(reference answer, ignored)"},
    {"messages": [{"role": "system", "content": "You are a terse assistant. Answer in one word."},
                  {"role": "user", "content": "What colour is the sky on a clear day?"}]},
    {"messages": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"},
                  {"role": "user", "content": "List three fruits."}]},
    {"instruction": "Translate to French:", "input": "Good morning", "output": "Bonjour"},
]
CHAT_NEW_TOKENS = 40


def chat_messages(line):
    if "messages" in line:
        messages = list(line["messages"])
    elif "instruction" in line:
        messages = [{"role": "user", "content": line["instruction"] + "\n" + line["input"]}]
    else:
        messages = [{"role": "user", "content": line["prompt"]}]
    if messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    return messages


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    return tokenizer, model


def hf_chat_greedy(tokenizer, model, messages, max_new_tokens):
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(prompt, dict) or hasattr(prompt, "keys"):
        prompt = prompt["input_ids"]
    new = hf_greedy(model, list(prompt), max_new_tokens)
    text = tokenizer.decode(new[:-1] if new and new[-1] == tokenizer.eos_token_id else new)
    return new, text


def test_smollm2_chat_input_matches_transformers(sft_binary, smollm2_dir, smollm2, tmp_path):
    tokenizer, model = smollm2
    input_file = tmp_path / "prompts.jsonl"
    input_file.write_text("".join(json.dumps(line) + "\n" for line in CHAT_LINES))
    out_file = tmp_path / "out.jsonl"
    run_sft(sft_binary, "generate", "--model", smollm2_dir, "--input", input_file, "--out", out_file,
            "--max-new-tokens", CHAT_NEW_TOKENS)
    results = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(results) == len(CHAT_LINES)
    stopped = 0
    for line, result in zip(CHAT_LINES, results):
        ref_ids, ref_text = hf_chat_greedy(tokenizer, model, chat_messages(line), CHAT_NEW_TOKENS)
        print(f"{chat_messages(line)[-1]['content']!r} -> {result['output']!r}")
        assert result["output_ids"] == ref_ids
        assert result["output"] == ref_text
        assert result["prompt"] == chat_messages(line)[-1]["content"]
        stopped += ref_ids[-1] == tokenizer.eos_token_id
    assert results[1]["reference"] == "(reference answer, ignored)"
    assert results[4]["reference"] == "Bonjour"
    assert stopped >= 1, "no answer ended with <|im_end|>: the stop-token path went untested"


def test_smollm2_streamed_prompt_matches_transformers(sft_binary, smollm2_dir, smollm2):
    tokenizer, model = smollm2
    prompt = "What is 2 + 2? Explain briefly."
    system = "You are a helpful math tutor."
    result = run_sft(sft_binary, "generate", "--model", smollm2_dir, "--prompt", prompt, "--system", system,
                     "--max-new-tokens", 32)
    _, ref_text = hf_chat_greedy(tokenizer, model, [{"role": "system", "content": system},
                                                    {"role": "user", "content": prompt}], 32)
    assert result.stdout == ref_text + "\n"
    assert "[generate] prompt" in result.stderr


def test_lora_adapter_greedy_matches_peft(sft_binary, golden_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    model_dir = golden_dir / "models" / "llama_gqa"
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    base_ids = hf_greedy(base, TOKEN_PROMPTS[0], NEW_TOKENS)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(base, config)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero: make the adapter matter
                param.copy_(0.3 * torch.randn(param.shape, generator=gen))
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)

    fresh = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    reference = PeftModel.from_pretrained(fresh, adapter_dir).eval()
    for prompt in TOKEN_PROMPTS:
        ref = hf_greedy(reference, prompt, NEW_TOKENS)
        ours = sft_ids(sft_binary, model_dir, prompt, NEW_TOKENS, "--adapter", adapter_dir)
        print(f"adapter {prompt}: {ours}")
        assert ours == ref
    assert ref != hf_greedy(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval(),
                            TOKEN_PROMPTS[1], NEW_TOKENS), "the adapter does not change the output"
    assert base_ids != hf_greedy(reference, TOKEN_PROMPTS[0], NEW_TOKENS)


def hf_batched_greedy(tokenizer, model, prompts, max_new_tokens):
    """transformers' batched greedy generate with left padding (its way to batch ragged prompts)."""
    longest = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad)
    results = []
    for row in out[:, longest:].tolist():  # cut after the first EOS; the rest is padding
        if tokenizer.eos_token_id in row:
            row = row[:row.index(tokenizer.eos_token_id) + 1]
        results.append(row)
    return results


def test_smollm2_batched_decoding_equals_alone_and_transformers(sft_binary, smollm2_dir, smollm2, tmp_path):
    """Batched decoding (model::generate_batch: ragged prompts packed, no padding) gives each prompt what
    decoding it alone gives, through both entry points (--prompt-ids a;b;c and --input --batch-size), and
    that equals transformers' greedy generate of each prompt alone; transformers' own left-padded batched
    generate is compared too, on the prompts where it equals its unbatched output."""
    tokenizer, model = smollm2
    input_file = tmp_path / "prompts.jsonl"
    input_file.write_text("".join(json.dumps(line) + "\n" for line in CHAT_LINES))
    out_file = tmp_path / "out.jsonl"
    run_sft(sft_binary, "generate", "--model", smollm2_dir, "--input", input_file, "--out", out_file,
            "--max-new-tokens", CHAT_NEW_TOKENS, "--batch-size", len(CHAT_LINES))
    batched = [json.loads(line)["output_ids"] for line in out_file.read_text().splitlines()]

    prompts = []
    for line in CHAT_LINES:
        prompt = tokenizer.apply_chat_template(chat_messages(line), add_generation_prompt=True, tokenize=True)
        prompts.append(list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt))
    assert len({len(p) for p in prompts}) > 2, "the prompts should be ragged"
    result = run_sft(sft_binary, "generate", "--model", smollm2_dir, "--max-new-tokens", CHAT_NEW_TOKENS,
                     "--prompt-ids", ";".join(",".join(map(str, p)) for p in prompts))
    by_ids = [[int(x) for x in row.split(",")] for row in result.stdout.strip().split("\n")]
    assert "[generate] batch of 5 prompts" in result.stderr

    alone = [hf_greedy(model, p, CHAT_NEW_TOKENS) for p in prompts]
    hf_batch = hf_batched_greedy(tokenizer, model, prompts, CHAT_NEW_TOKENS)
    lengths = {len(ids) for ids in alone}
    assert len(lengths) >= 2, "every answer had the same length: early stopping inside a batch went untested"
    same_as_alone = 0
    for i, ref in enumerate(alone):
        print(f"{i}: ours {batched[i]}\n   hf batched {hf_batch[i]}")
        assert batched[i] == ref
        assert by_ids[i] == ref
        if hf_batch[i] == ref:
            same_as_alone += 1
            assert batched[i] == hf_batch[i]
    print(f"transformers' left-padded batch equals its unbatched output on {same_as_alone} of {len(alone)} prompts")
    assert same_as_alone >= 1
