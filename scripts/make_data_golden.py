#!/usr/bin/env python3
"""scripts/make_data_golden.py: reference chat-template renderings for tests/test_data_template.cpp.

For every reference tokenizer (the shared assets plus SmolLM2 when scripts/get_model.sh has fetched it)
and every conversation in CASES, records what HF transformers' apply_chat_template produces:
the rendered text (tokenize=False) and the token ids (tokenize=True), both without a generation prompt,
and the text each assistant turn must supervise: what follows the generation prompt in the rendering,
up to and including the first special token after it (the end-of-turn token). The generation prompt is
transformers' own: the conversation before that turn rendered with add_generation_prompt=True, which
must be a prefix of the whole rendering.
Output: <golden>/data/chat_<name>.json and chat_<name>.targets.json (default <repo>/.cache/golden).
Idempotent: a file is rewritten only when its content changes.

mistral-bpe's tokenizer_config.json has no chat_template (transformers 5 then refuses apply_chat_template),
so for it we pass MISTRAL_V01_TEMPLATE: the chat_template of mistralai/Mistral-7B-Instruct-v0.1
(the revision that accepts a leading system message), which is what our `mistral` template implements.
The `llama2` set renders Meta's Llama-2-chat template with the same tokenizer (same <s>, </s>).
"""
import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "tests" / "assets" / "tokenizers"

MISTRAL_V01_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content'] %}\n"
    "    {%- set loop_messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set loop_messages = messages %}\n"
    "{%- endif %}\n\n"
    "{{- bos_token }}\n"
    "{%- for message in loop_messages %}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
    "        {{- raise_exception('After the optional system message, conversation roles must alternate "
    "user/assistant/user/assistant/...') }}\n"
    "    {%- endif %}\n"
    "    {%- if message['role'] == 'user' %}\n"
    "        {%- if loop.first and system_message is defined %}\n"
    "            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n"
    "        {%- else %}\n"
    "            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n"
    "        {%- endif %}\n"
    "    {%- elif message['role'] == 'assistant' %}\n"
    "        {{- ' ' + message['content'] + eos_token}}\n"
    "    {%- else %}\n"
    "        {{- raise_exception('Only user and assistant roles are supported, with the exception of an "
    "initial optional system message!') }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
)

# meta-llama/Llama-2-7b-chat-hf's chat_template: what our `llama2` template implements. Rendered with the
# mistral-bpe tokenizer, whose <s>/</s> are the same strings.
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)


def m(role, content):
    return {"role": role, "content": content}


# Each case: name, messages. Contents exercise whitespace, punctuation, digits and non-ASCII text.
CASES = [
    ("single_turn", [m("user", "What is the capital of France?"), m("assistant", "Paris.")]),
    ("with_system", [m("system", "You are a terse geography tutor."),
                     m("user", "Capital of Peru?"), m("assistant", "Lima, on the Pacific coast.")]),
    ("multi_turn", [m("user", "Hi! Can you count to 3?"), m("assistant", "1, 2, 3."),
                    m("user", "Now backwards, in French."), m("assistant", "Trois, deux, un. Voilà !"),
                    m("user", "Thanks"), m("assistant", "You're welcome\u2014anytime.")]),
    ("multi_turn_system", [m("system", "Answer in one word."), m("user", "Colour of the sky?"),
                           m("assistant", "Blue"), m("user", "And grass?"), m("assistant", "Green")]),
    ("whitespace", [m("user", "  spaced   prompt \n"), m("assistant", "\n  answer with\ttabs  \n")]),
    ("unicode", [m("user", "日本の首都は？ 🤔"), m("assistant", "東京です。 Ça va? naïve café")]),
]
# Qwen3 splits <think>...</think> out of assistant content; only the final turn keeps it.
QWEN3_EXTRA = [
    ("think", [m("user", "2+2?"), m("assistant", "<think>\nadd them\n</think>\n\n4"),
               m("user", "3+3?"), m("assistant", "<think>\nadd again\n</think>\n\n6")]),
]


def tokenizers():
    yield "qwen3", ASSETS / "qwen3-bpe", None
    yield "llama3", ASSETS / "llama3-bpe", None
    yield "mistral", ASSETS / "mistral-bpe", MISTRAL_V01_TEMPLATE
    yield "llama2", ASSETS / "mistral-bpe", LLAMA2_CHAT_TEMPLATE
    smol = ROOT / ".cache" / "models" / "smollm2-135m-instruct"
    if (smol / "tokenizer_config.json").exists():
        yield "smollm2", smol, None
    else:
        print(f"[make_data_golden] {smol} not found: skipping smollm2 (run scripts/get_model.sh)", file=sys.stderr)


def supervised_targets(tok, messages, text, kwargs):
    """Per assistant turn: the rendered text after its generation prompt, through the end-of-turn token."""
    # Every special added token (Llama-3's <|eot_id|> is one, though not in its special-tokens map).
    specials = [t.content for t in tok.added_tokens_decoder.values() if t.special and t.content]
    targets = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tok.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True, **kwargs)
        assert text.startswith(prompt), (messages, k)
        ends = [text.find(t, len(prompt)) + len(t) for t in specials if text.find(t, len(prompt)) >= 0]
        targets.append(text[len(prompt):min(ends)])
    return targets


def write_if_changed(path, text):
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = Path(os.environ.get("SFT_GOLDEN_DIR", ROOT / ".cache" / "golden"))
    parser.add_argument("--out", type=Path, default=default_out, help="golden root (writes <out>/data)")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    out = args.out / "data"
    out.mkdir(parents=True, exist_ok=True)
    for name, directory, template in tokenizers():
        tok = AutoTokenizer.from_pretrained(str(directory))
        cases = CASES + (QWEN3_EXTRA if name == "qwen3" else [])
        records, target_records = [], []
        for case, messages in cases:
            kwargs = {"chat_template": template} if template else {}
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False, **kwargs)
            enc = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=False, **kwargs)
            ids = enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "keys") else enc
            # Sanity: the reference tokenizes the whole rendered text once, as we do.
            assert list(ids) == tok(text, add_special_tokens=False)["input_ids"], (name, case)
            records.append({"name": case, "messages": messages, "text": text, "ids": list(map(int, ids))})
            target_records.append({"name": case, "targets": supervised_targets(tok, messages, text, kwargs)})
        # Relative to the repo, so the file does not depend on where the checkout lives.
        where = Path(directory)
        where = where.relative_to(ROOT) if where.is_relative_to(ROOT) else where
        doc = {"tokenizer": name, "tokenizer_dir": str(where),
               "chat_template_passed": template is not None, "cases": records}
        changed = write_if_changed(out / f"chat_{name}.json", json.dumps(doc, ensure_ascii=False, indent=1) + "\n")
        targets_doc = {"tokenizer": name, "cases": target_records}
        changed |= write_if_changed(out / f"chat_{name}.targets.json",
                                    json.dumps(targets_doc, ensure_ascii=False, indent=1) + "\n")
        print(f"[make_data_golden] {name}: {len(records)} cases {'written' if changed else 'unchanged'}")


if __name__ == "__main__":
    main()
