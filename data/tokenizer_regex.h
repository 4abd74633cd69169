// data/tokenizer_regex.h: a small backtracking regex engine for the pre-tokenizer patterns found in HF
// tokenizer.json files (GPT-2, Llama-3, Qwen2 style). It follows Oniguruma's semantics, which HF
// `tokenizers` uses: leftmost-first alternation, greedy/lazy/possessive quantifiers, (?i:...) groups
// with simple case folding, (?=..)/(?!..) lookahead, \p{..} general categories, \s = White_Space.
// Unsupported syntax (backreferences, lookbehind, scripts) is rejected when the pattern is compiled.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sft::data {

// Text prepared for matching: code points plus their categories (looked up once per text).
struct RegexText {
  std::vector<uint32_t> cps;
  std::vector<uint8_t> cats;      // unicode::Category, bit 7 set for White_Space
  std::vector<size_t> byte_pos;   // byte offset of each code point, plus one past the end
  void assign(std::string_view utf8);
};

class Regex {
 public:
  // Throws std::invalid_argument naming the problem when the pattern uses unsupported syntax.
  explicit Regex(std::string_view pattern);
  Regex(const Regex&) = default;
  Regex& operator=(const Regex&) = default;

  // All non-overlapping matches, left to right, as code point index ranges [begin, end).
  // Empty matches are skipped (they never produce a split).
  void find_all(const RegexText& text, std::vector<std::pair<size_t, size_t>>& matches) const;

  struct Node;
  struct CharClass;

 private:
  std::vector<Node> nodes_;
  std::vector<CharClass> classes_;
  std::vector<int> root_;  // the top-level sequence (an alternation node)
  friend class RegexParser;
  friend class RegexMatcher;
};

// Node and class definitions live here so Regex is copyable by value.
struct Regex::CharClass {
  struct Item {
    enum Kind : uint8_t { kRange, kCategories, kSpace, kWord, kClass } kind;
    bool negated;
    uint32_t lo, hi;  // kRange; kCategories: lo = category mask; kClass: lo = nested class index
  };
  std::vector<Item> items;
  bool negated = false;
  bool icase = false;
};

struct Regex::Node {
  enum Kind : uint8_t { kChar, kClass, kAny, kAlt, kRepeat, kLookahead, kLineStart, kLineEnd, kTextStart, kTextEnd };
  Kind kind = kChar;
  bool icase = false;      // kChar
  bool negative = false;   // kLookahead
  bool greedy = true;      // kRepeat
  bool possessive = false;  // kRepeat
  uint32_t ch = 0;         // kChar (folded when icase)
  int index = 0;           // kClass: class index; kRepeat: child node
  int min = 0, max = 0;    // kRepeat (max -1 = unbounded)
  std::vector<std::vector<int>> alts;  // kAlt, kLookahead (one alternative)
};

}  // namespace sft::data
