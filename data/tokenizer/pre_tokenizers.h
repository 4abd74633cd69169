// data/tokenizer/pre_tokenizers.h: tokenizer.json's pre-tokenizer stage (HF `tokenizers`
// pre_tokenizers), one type per kind: Split (regex or literal, with its SplitBehavior), Digits,
// ByteLevel, Metaspace and WhitespaceSplit; Whitespace is loaded as the Split it is. A Sequence is
// flattened into the list. Together they cut normalized text into the words the BPE model sees.
#pragma once
#include <deque>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "data/tokenizer/json_fields.h"
#include "data/tokenizer/normalized_text.h"
#include "data/tokenizer/regex.h"

namespace sft::data::tokenizer {

// What a split keeps of the matches (HF SplitDelimiterBehavior).
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct SplitPreTokenizer {
  std::variant<std::string, Regex> pattern;  // {"String": ...} or {"Regex": ...}
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;  // the pattern matches what to keep instead of the delimiters
};

struct DigitsPreTokenizer {
  bool individual_digits = false;  // every digit its own word, else runs of digits
};

struct ByteLevelPreTokenizer {
  bool add_prefix_space = true;     // a word not starting with ' ' gets one
  std::optional<Regex> gpt2_split;  // use_regex: GPT-2's word pattern
};

enum class PrependScheme { kAlways, kFirst, kNever };

struct MetaspacePreTokenizer {
  std::string replacement;  // what spaces become ("▁")
  bool split = true;        // split before each replacement
  PrependScheme prepend_scheme = PrependScheme::kAlways;  // kFirst: only at the start of the input
};

struct WhitespaceSplitPreTokenizer {};

using PreTokenizer = std::variant<SplitPreTokenizer, DigitsPreTokenizer, ByteLevelPreTokenizer, MetaspacePreTokenizer,
                                  WhitespaceSplitPreTokenizer>;

// Appends the pre-tokenizer(s) `j` describes; InputError naming `file` for unknown kinds and for
// anything after ByteLevel (its alphabet must come last).
void load_pre_tokenizers(const json& j, const std::string& file, std::vector<PreTokenizer>& out);
// Whether the list has a ByteLevel stage, which makes the BPE vocabulary byte-level.
bool is_byte_level(const std::vector<PreTokenizer>& pre_tokenizers);

// Cuts `whole` into words (appended to `words`). Words the pre-tokenizers rewrote (a prefix space,
// Metaspace's "▁") point into texts kept in `storage`, which must outlive them.
void pre_tokenize(const std::vector<PreTokenizer>& pre_tokenizers, const TextSpan& whole,
                  std::deque<NormalizedText>& storage, std::vector<TextSpan>& words);

}  // namespace sft::data::tokenizer
