#!/usr/bin/env python3
# scripts/gen_unicode_alignment.py: writes data/tokenizer/unicode_alignment.h, the code points where
# our libraries' Unicode (PCRE2 for \p{L} / \p{N}, utf8proc for normalization) differs from the
# reference's (HF `tokenizers`: Oniguruma classes, the unicode-normalization-alignments crate). It
# probes every code point on both sides: the reference through the pinned `tokenizers` in .venv, the
# libraries through ctypes on the installed libpcre2-8 and libutf8proc. Rerun after a library upgrade
# (a newer PCRE2 or utf8proc shortens the lists) or a `tokenizers` upgrade.
# Usage: .venv/bin/python scripts/gen_unicode_alignment.py  (rewrites data/tokenizer/unicode_alignment.h)
import ctypes
import ctypes.util
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "data" / "tokenizer" / "unicode_alignment.h"
CODE_POINTS = [cp for cp in range(1, 0x110000) if not 0xD800 <= cp <= 0xDFFF]

pcre2 = ctypes.CDLL(ctypes.util.find_library("pcre2-8") or "libpcre2-8.so.0")
utf8proc = ctypes.CDLL(ctypes.util.find_library("utf8proc") or "libutf8proc.so.2")
libc = ctypes.CDLL(ctypes.util.find_library("c"))
PCRE2_UTF, PCRE2_UCP = 0x00080000, 0x00020000
pcre2.pcre2_compile_8.restype = ctypes.c_void_p
pcre2.pcre2_compile_8.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint32, ctypes.POINTER(ctypes.c_int),
                                  ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p]
pcre2.pcre2_match_data_create_8.restype = ctypes.c_void_p
pcre2.pcre2_match_data_create_8.argtypes = [ctypes.c_uint32, ctypes.c_void_p]
pcre2.pcre2_match_8.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_uint32,
                                ctypes.c_void_p, ctypes.c_void_p]
pcre2.pcre2_get_ovector_pointer_8.restype = ctypes.POINTER(ctypes.c_size_t)
pcre2.pcre2_get_ovector_pointer_8.argtypes = [ctypes.c_void_p]
pcre2.pcre2_config_8.argtypes = [ctypes.c_uint32, ctypes.c_void_p]
for form in ("NFC", "NFD", "NFKC", "NFKD"):
    getattr(utf8proc, f"utf8proc_{form}").restype = ctypes.c_void_p
    getattr(utf8proc, f"utf8proc_{form}").argtypes = [ctypes.c_char_p]
utf8proc.utf8proc_unicode_version.restype = ctypes.c_char_p
libc.free.argtypes = [ctypes.c_void_p]


def members(runs_of):
    """Code points matched, given a function that yields the (start, end) code point index runs."""
    out = set()
    for a, b in runs_of():
        out.update(CODE_POINTS[a:b])
    return out


def pcre2_class(prop):
    """Code points PCRE2 puts in \\p{prop}."""
    err, off = ctypes.c_int(), ctypes.c_size_t()
    pattern = f"\\p{{{prop}}}+".encode()
    code = pcre2.pcre2_compile_8(pattern, len(pattern), PCRE2_UTF | PCRE2_UCP, ctypes.byref(err), ctypes.byref(off), None)
    data = pcre2.pcre2_match_data_create_8(1, None)
    text = "".join(map(chr, CODE_POINTS))
    subject = text.encode()
    # byte offset -> code point index
    index_of = {}
    pos = 0
    for i, ch in enumerate(text):
        index_of[pos] = i
        pos += len(ch.encode())
    index_of[pos] = len(text)

    def runs():
        start = 0
        while pcre2.pcre2_match_8(code, subject, len(subject), start, 0, data, None) > 0:
            ov = pcre2.pcre2_get_ovector_pointer_8(data)
            yield index_of[ov[0]], index_of[ov[1]]
            start = ov[1]
    return members(runs)


def reference_class(prop):
    """Code points the reference's Oniguruma puts in \\p{prop}."""
    from tokenizers import Regex, pre_tokenizers
    split = pre_tokenizers.Split(Regex(f"\\p{{{prop}}}"), behavior="removed")
    out = set()
    for start in range(0, len(CODE_POINTS), 8192):
        cps = CODE_POINTS[start:start + 8192]
        kept = bytearray(len(cps))
        for _, (a, b) in split.pre_tokenize_str("".join(map(chr, cps))):
            kept[a:b] = b"\x01" * (b - a)
        out.update(cps[i] for i in range(len(cps)) if not kept[i])
    return out


def utf8proc_normalize(form, s):
    p = getattr(utf8proc, f"utf8proc_{form}")(s.encode())
    out = ctypes.string_at(p).decode()
    libc.free(p)
    return out


def differing(ref_normalizer, form, pieces):
    """Indices of `pieces` that the reference and utf8proc normalize differently (one call per side)."""
    sep = "\x01"  # a control character: no decomposition makes it, so it keeps the pieces apart
    text = sep.join(pieces)
    ours, theirs = utf8proc_normalize(form, text).split(sep), ref_normalizer.normalize_str(text).split(sep)
    assert len(ours) == len(theirs) == len(pieces)
    return [i for i in range(len(pieces)) if ours[i] != theirs[i]]


def normalization_pass_through():
    """Code points whose normalization differs: decompositions, combining classes, compositions."""
    from tokenizers import normalizers
    cps = [cp for cp in CODE_POINTS if cp != 1]
    out = set()
    # Probes around each code point: alone, after a starter, and next to marks of class 1 and 230, which
    # reorder around it exactly when the two sides give it different combining classes.
    for probe in ["{}", "a{}", "a{}\u0334", "a\u0334{}", "a{}\u0301", "a\u0301{}"]:
        pieces = [probe.format(chr(cp)) for cp in cps]
        for form in ("NFD", "NFKD"):
            out.update(cps[i] for i in differing(getattr(normalizers, form)(), form, pieces))
    # A composition only one side makes: utf8proc's decompositions, recomposed on both sides.
    decomposed = [utf8proc_normalize("NFD", chr(cp)) for cp in cps]
    for i in differing(normalizers.NFC(), "NFC", decomposed):
        out.add(ord(decomposed[i][-1]))
    return out


def ranges(cps):
    out = []
    for cp in sorted(cps):
        if out and out[-1][1] == cp - 1:
            out[-1][1] = cp
        else:
            out.append([cp, cp])
    return out


def table(rs):
    items = [f"{{0x{a:X}, 0x{b:X}}}," for a, b in rs]
    lines, line = [], "   "
    for item in items:
        if len(line) + len(item) + 1 > 112:
            lines.append(line)
            line = "   "
        line += " " + item
    lines.append(line)
    return "\n".join(lines)


def main():
    import tokenizers
    version = ctypes.create_string_buffer(64)
    pcre2.pcre2_config_8(10, version)  # PCRE2_CONFIG_UNICODE_VERSION
    pcre2_unicode, utf8proc_unicode = version.value.decode(), utf8proc.utf8proc_unicode_version().decode()
    letters = reference_class("L") - pcre2_class("L")
    numbers = reference_class("N") - pcre2_class("N")
    pass_through = normalization_pass_through()
    text = f"""// data/tokenizer/unicode_alignment.h: GENERATED by scripts/gen_unicode_alignment.py (tokenizers
// {tokenizers.__version__}; PCRE2 with Unicode {pcre2_unicode}; utf8proc with Unicode {utf8proc_unicode}). Do not edit.
// The few code points where our libraries' Unicode differs from what the reference, HF `tokenizers`,
// does: it matches \\p{{L}} / \\p{{N}} with Oniguruma (a newer Unicode) and normalizes with the
// unicode-normalization-alignments crate (an older one). Neither library can be told to use another
// version, so these lists keep our ids equal to the reference's. A newer PCRE2 or utf8proc only makes
// parts of them redundant (the letter and number lists are added to the library's classes).
#pragma once
#include <algorithm>
#include <cstdint>
#include <iterator>

namespace sft::data::tokenizer::alignment {{

struct CodePointRange {{
  uint32_t first, last;  // inclusive
}};

// Letters (\\p{{L}}) Oniguruma knows and PCRE2 does not ({len(letters)} code points).
constexpr CodePointRange kExtraLetters[] = {{
{table(ranges(letters))}
}};

// Numbers (\\p{{N}}) Oniguruma knows and PCRE2 does not ({len(numbers)} code points); utf8proc lacks a
// few of them too, so the Digits stage adds them as well.
constexpr CodePointRange kExtraNumbers[] = {{
{table(ranges(numbers))}
}};

// Code points the reference's normalizer treats otherwise than utf8proc ({len(pass_through)}): marks added
// after the crate's Unicode version (class 0 there), newer decompositions, and the second character of
// compositions only utf8proc makes (U+11930: U+11935 U+11930 -> U+11938). Normalization passes them
// through unchanged, which is what the crate does with characters it does not know.
constexpr CodePointRange kNormalizationPassThrough[] = {{
{table(ranges(pass_through))}
}};

template <size_t N>
bool contains(const CodePointRange (&ranges)[N], uint32_t cp) {{
  if (cp < ranges[0].first) return false;  // the common case: every list starts above Latin text
  auto it = std::upper_bound(std::begin(ranges), std::end(ranges), cp,
                             [](uint32_t v, const CodePointRange& r) {{ return v < r.first; }});
  return it != std::begin(ranges) && cp <= std::prev(it)->last;
}}

}}  // namespace sft::data::tokenizer::alignment
"""
    OUT.write_text(text)
    print(f"wrote {OUT}: {len(letters)} letters, {len(numbers)} numbers, {len(pass_through)} pass-through")


if __name__ == "__main__":
    main()
