// data/tokenizer/normalized_text.h: text as the pipeline rewrites it, with every byte still knowing the
// input bytes it came from (HF's NormalizedString and its alignments), and spans of it (pre-tokens).
// Tokens carry input byte offsets through this: chat-template masking needs them.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sft::data::tokenizer {

struct NormalizedText {
  std::string text;
  // While nothing was rewritten (the common case) the alignment stays implicit: byte i of `text` is
  // input byte source_offset + i, and the per-byte vectors are empty.
  size_t source_offset = 0;
  std::vector<uint32_t> source_begin, source_end;  // per byte of `text`: the input range [begin, end)

  bool identity() const { return source_begin.empty(); }
  // Input offset where byte i starts (i == text.size(): where the text ends).
  size_t source_begin_of(size_t i) const {
    if (identity()) return source_offset + i;
    return i < source_begin.size() ? source_begin[i] : source_end.back();
  }
  // Input offset where byte i ends.
  size_t source_end_of(size_t i) const { return identity() ? source_offset + i + 1 : source_end[i]; }
  // Makes the alignment explicit (before a rewrite).
  void materialize();
};

// A pre-token: bytes [begin, end) of a NormalizedText.
struct TextSpan {
  const NormalizedText* text;
  size_t begin, end;
  std::string_view view() const { return std::string_view(text->text).substr(begin, end - begin); }
};

// Replaces bytes [pos, pos + length) with `with`; the new bytes all stand for the replaced input. An
// insertion (length 0: a prepended "▁" or " ") stands for the empty input range where it happened, so
// a token made only of inserted text covers no input.
void splice(NormalizedText& t, size_t pos, size_t length, std::string_view with);
// Replaces every occurrence of the literal `from` by `to`, in one pass.
void replace_all(NormalizedText& t, std::string_view from, std::string_view to);
// Bytes [begin, end) as a text of their own, keeping the alignment.
NormalizedText slice(const NormalizedText& t, size_t begin, size_t end);

}  // namespace sft::data::tokenizer
