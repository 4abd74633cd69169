// data/tokenizer/regex.h: the regular expressions of tokenizer.json (Split pre-tokenizer, Replace
// normalizer, the ByteLevel pattern) on PCRE2: 8-bit, UTF + UCP, JIT-compiled where PCRE2 has a JIT.
// HF `tokenizers` runs these with Oniguruma; both are backtracking engines with Perl's leftmost-first
// alternation, lazy/possessive quantifiers, lookahead and (?i:...), so patterns mean the same. Where
// the two differ the pattern is rewritten before compiling (see regex.cpp): \s is White_Space (PCRE2
// adds U+180E), and \p{L} / \p{N} include the letters and numbers of the reference's newer Unicode.
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sft::data::tokenizer {

using ByteRange = std::pair<size_t, size_t>;  // [begin, end) in bytes

class Regex {
 public:
  // Throws std::invalid_argument naming the pattern and PCRE2's message when it does not compile.
  explicit Regex(std::string_view pattern);

  // All non-overlapping matches, left to right, as byte ranges. Empty matches are skipped (they never
  // produce a split); the search then resumes one character later. Invalid UTF-8 never matches.
  void find_all(std::string_view text, std::vector<ByteRange>& matches) const;

  const std::string& pattern() const { return pattern_; }

 private:
  struct Compiled;
  std::string pattern_;                      // as written in tokenizer.json
  std::shared_ptr<const Compiled> compiled_;  // immutable once built; shared by copies and threads
};

// The pattern rewritten for PCRE2 (exposed for tests).
std::string pcre2_pattern(std::string_view oniguruma_pattern);

}  // namespace sft::data::tokenizer
