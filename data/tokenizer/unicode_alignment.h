// data/tokenizer/unicode_alignment.h: the few code points where the Unicode versions of our libraries
// (PCRE2 10.42: Unicode 14; utf8proc 2.8: Unicode 15) differ from what the reference, HF `tokenizers`,
// does. `tokenizers` matches \p{L} / \p{N} with Oniguruma (Unicode 16) and normalizes with the
// unicode-normalization-alignments crate (an older Unicode). Neither library can be told to use another
// version, so these lists keep our ids equal to the reference's. A newer PCRE2 or utf8proc only makes
// parts of them redundant (the letter and number lists are added to the library's classes).
// Derived by comparing every code point of the reference-probed tables that scripts/gen_unicode_tables.py
// made (git history: data/unicode_tables.inc) with PCRE2's classes and utf8proc's properties.
#pragma once
#include <algorithm>
#include <cstdint>
#include <iterator>

namespace sft::data::tokenizer::alignment {

struct CodePointRange {
  uint32_t first, last;  // inclusive
};

// Letters (\p{L}) Oniguruma knows and PCRE2 10.42 does not (Unicode 15 and 16 additions).
constexpr CodePointRange kExtraLetters[] = {
    {0x1C89, 0x1C8A}, {0xA7CB, 0xA7CD}, {0xA7DA, 0xA7DC}, {0x105C0, 0x105F3}, {0x10D4A, 0x10D65},
    {0x10D6F, 0x10D85}, {0x10EC2, 0x10EC4}, {0x1123F, 0x11240}, {0x11380, 0x11389}, {0x1138B, 0x1138B},
    {0x1138E, 0x1138E}, {0x11390, 0x113B5}, {0x113B7, 0x113B7}, {0x113D1, 0x113D1}, {0x113D3, 0x113D3},
    {0x11BC0, 0x11BE0}, {0x11F02, 0x11F02}, {0x11F04, 0x11F10}, {0x11F12, 0x11F33}, {0x1342F, 0x1342F},
    {0x13441, 0x13446}, {0x13460, 0x143FA}, {0x16100, 0x1611D}, {0x16D40, 0x16D6C}, {0x18CFF, 0x18CFF},
    {0x1B132, 0x1B132}, {0x1B155, 0x1B155}, {0x1DF25, 0x1DF2A}, {0x1E030, 0x1E06D}, {0x1E4D0, 0x1E4EB},
    {0x1E5D0, 0x1E5ED}, {0x1E5F0, 0x1E5F0}, {0x2B739, 0x2B739}, {0x2EBF0, 0x2EE5D}, {0x31350, 0x323AF},
};

// Numbers (\p{N}) Oniguruma knows and PCRE2 10.42 / utf8proc 2.8 do not.
constexpr CodePointRange kExtraNumbers[] = {
    {0x10D40, 0x10D49}, {0x116D0, 0x116E3}, {0x11BF0, 0x11BF9}, {0x11F50, 0x11F59}, {0x16130, 0x16139},
    {0x16D70, 0x16D79}, {0x1CCF0, 0x1CCF9}, {0x1D2C0, 0x1D2D3}, {0x1E4F0, 0x1E4F9}, {0x1E5F1, 0x1E5FA},
};

// Code points the reference's normalizer does not know (no decomposition, combining class 0, in no
// composition) but utf8proc does: marks added after the crate's Unicode version, new compatibility
// decompositions, and U+11930, which composes with U+11935 to U+11938 only in utf8proc. Normalization
// passes them through unchanged.
constexpr CodePointRange kNormalizationPassThrough[] = {
    {0x7FD, 0x7FD}, {0x898, 0x89F}, {0x8CA, 0x8D3}, {0x9FE, 0x9FE}, {0xC3C, 0xC3C}, {0xD3B, 0xD3C},
    {0xEBA, 0xEBA}, {0x1715, 0x1715}, {0x1ABF, 0x1ACE}, {0x1DF6, 0x1DFA}, {0x32FF, 0x32FF}, {0xA7F2, 0xA7F4},
    {0xA82C, 0xA82C}, {0xAB69, 0xAB69}, {0x10781, 0x10785}, {0x10787, 0x107B0}, {0x107B2, 0x107BA},
    {0x10D24, 0x10D27}, {0x10EAB, 0x10EAC}, {0x10EFD, 0x10EFF}, {0x10F46, 0x10F50}, {0x10F82, 0x10F85},
    {0x11070, 0x11070}, {0x1133B, 0x1133B}, {0x1145E, 0x1145E}, {0x11839, 0x1183A}, {0x11930, 0x11930},
    {0x11938, 0x11938}, {0x1193D, 0x1193E}, {0x11943, 0x11943}, {0x119E0, 0x119E0}, {0x11A34, 0x11A34},
    {0x11A47, 0x11A47}, {0x11A99, 0x11A99}, {0x11D42, 0x11D42}, {0x11D44, 0x11D45}, {0x11D97, 0x11D97},
    {0x11F41, 0x11F42}, {0x16FF0, 0x16FF1}, {0x1E030, 0x1E06D}, {0x1E08F, 0x1E08F}, {0x1E130, 0x1E136},
    {0x1E2AE, 0x1E2AE}, {0x1E2EC, 0x1E2EF}, {0x1E4EC, 0x1E4EF}, {0x1F16C, 0x1F16C}, {0x1FBF0, 0x1FBF9},
};

template <size_t N>
bool contains(const CodePointRange (&ranges)[N], uint32_t cp) {
  if (cp < ranges[0].first) return false;  // the common case: every list starts above Latin text
  auto it = std::upper_bound(std::begin(ranges), std::end(ranges), cp,
                             [](uint32_t v, const CodePointRange& r) { return v < r.first; });
  return it != std::begin(ranges) && cp <= std::prev(it)->last;
}

}  // namespace sft::data::tokenizer::alignment
