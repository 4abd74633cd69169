#!/usr/bin/env python3
# scripts/make_tokenizer_golden.py: reference token ids for the tokenizer tests (tests/test_tokenizer.cpp).
#
# Builds one deterministic corpus (>= 5,000 strings: English, CJK, emoji and ZWJ sequences, combining
# marks, code, whitespace runs, long numbers, special-token text inside prose, the bsdgames quiz lines,
# empty strings, random code points) and encodes it with the reference implementations:
#   * tokenizer.json dirs -> HF `tokenizers` (encode with add_special_tokens=False, decode with
#     skip_special_tokens=False);
#   * the same dirs, when they have a tokenizer_config.json -> also `transformers` AutoTokenizer (encode
#     with add_special_tokens=False, decode with skip_special_tokens=False). Its tokenizer class may
#     rebuild the tokenizer.json pipeline (LlamaTokenizer does: Metaspace instead of the file's Prepend
#     normalizer), and the trainer must match it, since apply_chat_template tokenizes with it;
#   * llama2-sp tokenizer.model -> `sentencepiece`. SentencePiece itself knows nothing of special-token
#     text, while our contract maps "<s>"/"</s>"/"<unk>" in text to their ids (as HF's Llama tokenizers
#     do). So the reference splits the text on those strings first and encodes each piece on its own;
#     decode joins sentencepiece's decode of each run of ordinary ids with the special-token texts.
# Output: <out>/<name>.jsonl, one line per string {"text", "ids", "decoded", "roundtrip"}, plus
# <name>.meta.json (special-token ids and add_bos as `transformers` reports them, vocab size) and, for
# the transformers reference, <name>.transformers.jsonl ({"text", "ids", "decoded"}, with the class name
# and how many strings it encodes differently from `tokenizers` in <name>.transformers.meta.json).
# Idempotent: skipped when a stamp (hash of this script, the tokenizer files and package versions) matches.
import argparse
import hashlib
import json
import os
import random
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "tests" / "assets" / "tokenizers"
SMOLLM2 = ROOT / ".cache" / "models" / "smollm2-135m-instruct"
QUIZ_DIR = Path("/usr/share/games/bsdgames/quiz")


# Variants of the real files exercising the parts of tokenizer.json the real ones do not use (Metaspace
# pre-tokenizer and decoder as in Llama-2-HF legacy=false, added tokens with lstrip/rstrip/single_word/
# normalized, Digits, ByteLevel add_prefix_space with its own regex, NFKC/NFKD, Replace with a regex).
# Written next to the goldens and referenced by HF `tokenizers` like the others.
def _mistral_metaspace(j):
    j["normalizer"] = None
    j["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
    j["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False},
        {"type": "ByteFallback"}, {"type": "Fuse"}]}
    flags = dict(single_word=False, lstrip=False, rstrip=False, normalized=False, special=False)
    j["added_tokens"] += [
        dict(flags, id=32000, content="<tool>", lstrip=True, rstrip=True, special=True),
        dict(flags, id=21558, content="hello", single_word=True, normalized=True),  # in the vocab
        dict(flags, id=32001, content="[SEP]", rstrip=True),
        dict(flags, id=3304, content="\u2581World", normalized=True),  # in the vocab
    ]


def _llama3_digits(j):
    j["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "NFKD"}, {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]}
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}]}
    j["model"]["ignore_merges"] = False


def _qwen3_nfkc(j):
    j["normalizer"] = {"type": "NFKC"}
    j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "MergedWithPrevious"


VARIANTS = {"mistral-metaspace": ("mistral-bpe", _mistral_metaspace),
            "llama3-digits": ("llama3-bpe", _llama3_digits),
            "qwen3-nfkc": ("qwen3-bpe", _qwen3_nfkc)}


def make_variants(out):
    dirs = {}
    for name, (base, edit) in VARIANTS.items():
        vdir = out / "variants" / name
        vdir.mkdir(parents=True, exist_ok=True)
        j = json.loads((ASSETS / base / "tokenizer.json").read_text(encoding="utf-8"))
        edit(j)
        text = json.dumps(j, ensure_ascii=False)
        if not (vdir / "tokenizer.json").is_file() or (vdir / "tokenizer.json").read_text(encoding="utf-8") != text:
            (vdir / "tokenizer.json").write_text(text, encoding="utf-8")
        (vdir / "tokenizer_config.json").write_bytes((ASSETS / base / "tokenizer_config.json").read_bytes())
        dirs[name] = vdir
    return dirs


def tokenizer_dirs(out=None):
    dirs = {
        "llama2-sp": ASSETS / "llama2-sp",
        "mistral-bpe": ASSETS / "mistral-bpe",
        "qwen3-bpe": ASSETS / "qwen3-bpe",
        "llama3-bpe": ASSETS / "llama3-bpe",
    }
    # SmolLM2 comes from scripts/get_model.sh; included once it has been downloaded.
    if (SMOLLM2 / "tokenizer.json").is_file():
        dirs["smollm2"] = SMOLLM2
    if out is not None:
        dirs.update(make_variants(out))
    return dirs


# ---------------------------------------------------------------- corpus
WORDS = ("the quick brown fox jumps over lazy dog I you we they it is was are were don't can't won't "
         "shouldn't it's he's she'll we've they'd I'm YOU'RE WE'LL THEY'VE SHE'D IT'S Hello World "
         "tokenizer training model learning rate gradient attention transformer batch sequence "
         "naïve café résumé coöperate Zürich São Paulo Kraków Ελληνικά русский язык العربية עברית "
         "हिन्दी ภาษาไทย 日本語 中文 한국어 Straße ﬁnance Ǆemal İstanbul ıı ß ẞ").split()

SENTENCES = [
    "Hello world, this is a test of TinyLlama.",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure you'll agree that it's what we've wanted; they'd said so.",
    "DON'T SHOUT! I'M LISTENING. WE'LL SEE, THEY'RE HERE, SHE'S GONE, IT'D WORK.",
    "Case tests: 'S 'T 'RE 'VE 'M 'LL 'D and 'ſ 'K 'Ｓ.",
    "Mr. O'Neil's dog—named \"Rex\"—ate 3.14159 pies at 12:45 p.m. on 2024-01-31.",
    "我爱自然语言处理。今天天气很好，我们去公园散步吧！",
    "日本語のテキストです。カタカナとひらがなと漢字が混ざっています。",
    "한국어 문장도 테스트합니다. 안녕하세요!",
    "Emoji: 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🧑🏿‍💻 ❤️‍🔥 🇫🇷🇯🇵 1️⃣ #️⃣",
    "Combining: e\u0301 a\u0300 o\u0308 n\u0303 A\u030a \u1100\u1161\u11a8 q\u0307\u0323 \u0344 \u0f73",
    "Precomposed: é à ö ñ Å 각 ḉ ǖ",
    "Tabs\tand\t\ttabs, newlines\n\nand\r\nCRLF\rCR, spaces     many      spaces   ",
    "Unicode spaces:\u00a0NBSP\u2003EM\u3000IDEO\u2028LS\u2029PS\u0085NEL\u200bZWSP\u180eMVS\u202fNNBSP",
    "Numbers: 1 12 123 1234 12345 123456 1234567 3.14159265358979323846 -42 +7 1e10 0x1F ١٢٣ ⅷ ½ ²",
    "<s> starts, </s> ends, <unk> unknown, <|im_start|>user\nhi<|im_end|> <|endoftext|>",
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe nice.<|eot_id|>",
    "Text<|im_start|>glued<|im_end|>text and <think>reasoning</think> and <tool_call>{}</tool_call>",
    "Partial specials: <|im_start <|im_end| </s <s >s< <<s>> <</s>> <|<|im_end|>|>",
    "def f(x):\n    return x ** 2  # square\n\nprint(f(3))\n",
    "int main() {\n\tstd::vector<int> v{1, 2, 3};\n\tfor (auto& x : v) x *= 2;\n\treturn 0;\n}\n",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name HAVING COUNT(*) > 1;",
    '{"key": "value", "list": [1, 2, 3], "nested": {"a": null, "b": true}}',
    "    indented    code\n        more indentation\n\t\tmixed\t \t whitespace\n",
    "Trailing spaces   \n  \n\n\n   leading",
    "Arabic: مرحبا بالعالم. Hebrew: שלום עולם. Hindi: नमस्ते दुनिया. Thai: สวัสดีชาวโลก",
    "Ελληνικά: Γειά σου Κόσμε. Русский: Привет, мир! Українська: Привіт, світе!",
    "Math: ∀x∈ℝ, x²≥0; ∑ᵢ₌₁ⁿ i = n(n+1)/2; ∫₀^∞ e^{-x} dx = 1; √2 ≈ 1.41421",
    "Symbols: ©®™ §¶ †‡ •◦ ←↑→↓ ♠♣♥♦ ☃☂ ✓✗ €£¥₹₿ °C ‰",
    "Controls: \x01\x02\x1b[31mred\x1b[0m \x7f \x00 end",
    "Private use \ue000\uf8ff and astral 𝐀𝐁𝐂 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𓀀 🀄 \U0010fffd",
    "Repeated: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!!!!!!!!!!!!!!!!!!??????",
    "URL: https://example.com/path?query=1&x=y#frag and email: someone@example.org",
    "Ligatures ﬁ ﬂ ﬀ, fullwidth ＡＢＣ１２３, halfwidth ｶﾀｶﾅ, superscript ¹²³, circled ①②③",
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "\n",
    " ",
    "\t",
    "▁already▁has▁metaspace ▁ ▁▁",
    "ĠGĊ byte-level look-alikes ĉ Ġ",
    "<0x41> looks like a byte token <0xFF>",
    "Tools: a <tool> b  <tool>\n c<tool>d [SEP]  x hello Hello xhello hellox hello_world (hello) «hello» hello",
    " World World  World\u2581World",
    # Mistral / Llama-2 chat shapes: special tokens followed by spaces, where transformers' LlamaTokenizer
    # and tokenizer.json's Prepend normalizer disagree.
    "<s> [INST] What is 2+2? [/INST] 4</s> [INST] And 3+3? [/INST] 6</s>",
    "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello </s><s>[INST] Bye [/INST]",
    "</s> after eos, <s>  two spaces after bos, <unk>\tTab, </s>\nnewline, </s>\u2581metaspace",
    "x</s>y<s>z</s> ",
]
# A small alphabet of characters the pre-tokenizer regexes treat differently; random strings over it
# probe every alternative boundary (space before newline, marks after letters, digits runs, ...).
FUZZ_ALPHABET = [" ", " ", "  ", "\n", "\r", "\t", "'", "s", "S", "LL", "a", "Z", "é", "e\u0301", "\u0301", "1", "23",
                 "4567", "٣", "½", "!", ".", "-", "_", "\u00a0", "\u3000", "中", "あ", "😀", "\u200d", "<", ">", "|",
                 "</s>", "<s>", "<|im_end|>", "▁", "Ġ", "ﬁ", "①", "Å"]

CJK_RANGES = [(0x4E00, 0x9FFF), (0x3040, 0x309F), (0x30A0, 0x30FF), (0xAC00, 0xD7A3), (0x3400, 0x4DBF)]
EMOJI = ["😀", "😂", "🥲", "👍", "👍🏻", "👍🏿", "👨‍👩‍👧‍👦", "👩‍❤️‍💋‍👨", "🏳️‍🌈", "🏴‍☠️", "🧑‍🚀", "🐈‍⬛",
         "❤️", "✨", "🔥", "🇺🇸", "🇩🇪", "🫠", "🦀", "🐍", "☕", "⚡", "🎉", "🙏🏽", "👀"]
COMBINING = [chr(c) for c in range(0x0300, 0x0370)] + ["\u0483", "\u0591", "\u05b0", "\u064b", "\u0e31",
                                                        "\u093c", "\u20d7", "\u302a", "\u3099", "\ufe0f"]
SPECIAL_TEXT = ["<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|begin_of_text|>",
                "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<think>", "</think>",
                "<|fim_prefix|>", "<tool_call>", "<|im_start|>assistant\n"]
WHITESPACE = [" ", "  ", "   ", "\t", "\n", "\r\n", "\n\n", " \n", "\t\t", "\u00a0", "\u3000", "    ", "\r"]
CODE_TOKENS = ["def", "class", "return", "if", "else:", "for", "in", "range(", ")", "(", "{", "}", "[", "]",
               "=>", "->", "::", "==", "!=", "<=", ">=", "+=", "&&", "||", "//", "/*", "*/", "#include",
               "<vector>", "std::", "self.", "__init__", "\"str\"", "'c'", "0xFF", "1_000", ";", ",", "."]


def random_codepoint(rng):
    while True:
        bucket = rng.random()
        if bucket < 0.5:
            cp = rng.randint(0x20, 0x7FF)
        elif bucket < 0.9:
            cp = rng.randint(0x800, 0xFFFF)
        else:
            cp = rng.randint(0x10000, 0x10FFFF)
        if 0xD800 <= cp <= 0xDFFF:
            continue
        return chr(cp)


def quiz_lines():
    lines = []
    for path in sorted(QUIZ_DIR.glob("*")):
        if path.is_file():
            for raw in path.read_bytes().decode("latin-1").splitlines():
                raw = raw.strip()
                if raw and not raw.startswith("#"):
                    lines.append(raw)
    return lines


def build_corpus():
    rng = random.Random(20240531)
    corpus = ["", "", " ", "a", "I"]
    corpus += SENTENCES
    corpus += [unicodedata.normalize(form, s) for s in SENTENCES[:14] for form in ("NFD", "NFKC")]
    corpus += quiz_lines()
    # Quiz lines with their {alternatives} and field separators turned into dialogue-like text.
    for line in quiz_lines()[::7]:
        corpus.append(line.replace(":", "? ").replace("{", "(").replace("}", ")") + "\n")

    def piece():
        kind = rng.randrange(12)
        if kind == 0:
            return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
        if kind == 1:
            lo, hi = rng.choice(CJK_RANGES)
            return "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 20)))
        if kind == 2:
            return "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 6)))
        if kind == 3:
            base = rng.choice("aeiouAEIOUnczsyαωиж가")
            return base + "".join(rng.choice(COMBINING) for _ in range(rng.randint(1, 4)))
        if kind == 4:
            return "".join(rng.choice(WHITESPACE) for _ in range(rng.randint(1, 6)))
        if kind == 5:
            return str(rng.randint(0, 10 ** rng.randint(1, 40)))
        if kind == 6:
            return rng.choice(SPECIAL_TEXT)
        if kind == 7:
            return " ".join(rng.choice(CODE_TOKENS) for _ in range(rng.randint(1, 10)))
        if kind == 8:
            return "".join(random_codepoint(rng) for _ in range(rng.randint(1, 8)))
        if kind == 9:
            return rng.choice(SENTENCES)
        if kind == 10:
            return rng.choice(["'s", "'S", "'t", "'T", "'re", "'RE", "'Ve", "'m", "'LL", "'d", "'D", "'ſ"])
        return rng.choice(WORDS).upper() if rng.random() < 0.3 else rng.choice(WORDS)

    for _ in range(2000):
        corpus.append("".join(rng.choice(FUZZ_ALPHABET) for _ in range(rng.randint(1, 12))))
    target = 8000
    while len(corpus) < target:
        n = rng.randint(1, 8)
        seps = ["", " ", "\n", "", " "]
        corpus.append("".join(piece() + rng.choice(seps) for _ in range(n)))
    # A few long documents (multi-paragraph) to exercise long BPE words and the cache.
    for _ in range(20):
        corpus.append("\n\n".join(" ".join(piece() for _ in range(30)) for _ in range(5)))
    return corpus


# ---------------------------------------------------------------- references
def reference_hf(tok_json):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tok_json))

    def encode(text):
        return tok.encode(text, add_special_tokens=False).ids

    def decode(ids):
        return tok.decode(ids, skip_special_tokens=False)

    return encode, decode


def reference_sp(model_path):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    specials = {}
    for i in range(sp.get_piece_size()):
        if sp.is_control(i) or sp.is_unknown(i):
            specials[sp.id_to_piece(i)] = i
    # Longest first so that a longer special wins at the same position.
    names = sorted(specials, key=len, reverse=True)

    def encode(text):
        ids, pos, start = [], 0, 0
        while pos < len(text):
            hit = next((n for n in names if text.startswith(n, pos)), None)
            if hit is None:
                pos += 1
                continue
            if start < pos:
                ids += sp.encode(text[start:pos])
            ids.append(specials[hit])
            pos += len(hit)
            start = pos
        if start < len(text):
            ids += sp.encode(text[start:])
        return ids

    special_ids = {v: k for k, v in specials.items()}

    def decode(ids):
        out, run = [], []
        for i in ids + [None]:
            if i is None or i in special_ids:
                if run:
                    out.append(sp.decode(run))
                    run = []
                if i is not None:
                    out.append(special_ids[i])
            else:
                run.append(i)
        return "".join(out)

    return encode, decode


def meta_from_transformers(name, path):
    """What `transformers` says about special tokens, for the loader test."""
    if not (path / "tokenizer.json").is_file():
        # transformers 5 has no SentencePiece-only loader; for a bare tokenizer.model the contract is
        # the model's own ids, and add_bos as the Llama tokenizers default it (add_bos_token=True).
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
        opt = lambda i: None if i < 0 else i
        return {"bos_id": opt(sp.bos_id()), "eos_id": opt(sp.eos_id()), "pad_id": opt(sp.pad_id()),
                "unk_id": opt(sp.unk_id()), "add_bos": sp.bos_id() >= 0, "add_eos": False,
                "vocab_size": sp.get_piece_size(), "has_chat_template": False}
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(path))
    probe = tok("hello").input_ids
    plain = tok("hello", add_special_tokens=False).input_ids
    return {
        "bos_id": tok.bos_token_id, "eos_id": tok.eos_token_id, "pad_id": tok.pad_token_id,
        "unk_id": tok.unk_token_id,
        "add_bos": tok.bos_token_id is not None and len(probe) > len(plain) and probe[0] == tok.bos_token_id,
        "add_eos": tok.eos_token_id is not None and len(probe) > len(plain) and probe[-1] == tok.eos_token_id,
        "vocab_size": len(tok),
        "has_chat_template": bool(getattr(tok, "chat_template", None)),
    }


def reference_transformers(path):
    """AutoTokenizer on the directory: what apply_chat_template tokenizes with."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(path))

    def encode_all(texts):
        return tok(texts, add_special_tokens=False)["input_ids"]

    def decode(ids):
        return tok.decode(ids, skip_special_tokens=False)

    return type(tok).__name__, encode_all, decode


def stamp_for(name, path, *extra):
    h = hashlib.sha256()
    h.update(" ".join(extra).encode())
    h.update(Path(__file__).read_bytes())
    for f in sorted(path.glob("*")):
        if f.is_file() and f.name.startswith(("tokenizer", "special_tokens", "config")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    import tokenizers
    import sentencepiece
    h.update(f"{tokenizers.__version__} {sentencepiece.__version__}".encode())
    return h.hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(ROOT / ".cache" / "golden" / "tokenizers"))
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = None
    for name, path in tokenizer_dirs(out).items():
        stamp = stamp_for(name, path)
        stamp_file = out / f"{name}.stamp"
        if not args.force and stamp_file.is_file() and stamp_file.read_text() == stamp \
                and (out / f"{name}.jsonl").is_file() and (out / f"{name}.meta.json").is_file():
            print(f"[golden] {name}: up to date")
            continue
        if corpus is None:
            corpus = build_corpus()
        if (path / "tokenizer.json").is_file() and name != "llama2-sp":
            encode, decode = reference_hf(path / "tokenizer.json")
        else:
            encode, decode = reference_sp(path / "tokenizer.model")
        tmp = out / f"{name}.jsonl.tmp"
        roundtrips = 0
        with open(tmp, "w", encoding="utf-8") as f:
            for text in corpus:
                ids = encode(text)
                decoded = decode(ids)
                roundtrips += decoded == text
                f.write(json.dumps({"text": text, "ids": ids, "decoded": decoded,
                                    "roundtrip": decoded == text}, ensure_ascii=False) + "\n")
        os.replace(tmp, out / f"{name}.jsonl")
        meta = meta_from_transformers(name, path)
        meta["strings"] = len(corpus)
        meta["roundtrips"] = roundtrips
        (out / f"{name}.meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        stamp_file.write_text(stamp)
        print(f"[golden] {name}: {len(corpus)} strings, {roundtrips} round-trip, meta {meta}")

    # The transformers reference, for the real tokenizer.json dirs (the variants have no meaning there).
    for name, path in tokenizer_dirs().items():
        if not (path / "tokenizer.json").is_file() or not (path / "tokenizer_config.json").is_file():
            continue
        import transformers
        stamp = stamp_for(name, path, "transformers", transformers.__version__)
        stamp_file = out / f"{name}.transformers.stamp"
        jsonl, meta_file = out / f"{name}.transformers.jsonl", out / f"{name}.transformers.meta.json"
        if not args.force and stamp_file.is_file() and stamp_file.read_text() == stamp \
                and jsonl.is_file() and meta_file.is_file():
            print(f"[golden] {name} (transformers): up to date")
            continue
        if corpus is None:
            corpus = build_corpus()
        cls, encode_all, decode = reference_transformers(path)
        raw_encode, _ = reference_hf(path / "tokenizer.json")
        all_ids = encode_all(corpus)
        differ = 0
        tmp = out / f"{name}.transformers.jsonl.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for text, ids in zip(corpus, all_ids):
                differ += ids != raw_encode(text)
                f.write(json.dumps({"text": text, "ids": ids, "decoded": decode(ids)}, ensure_ascii=False) + "\n")
        os.replace(tmp, jsonl)
        meta = {"class": cls, "strings": len(corpus), "ids_differ_from_tokenizers": differ}
        meta_file.write_text(json.dumps(meta, indent=1) + "\n")
        stamp_file.write_text(stamp)
        print(f"[golden] {name} (transformers {cls}): {len(corpus)} strings, "
              f"{differ} with ids other than tokenizers'")


if __name__ == "__main__":
    sys.exit(main())
