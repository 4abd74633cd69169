// data/tokenizer/normalizers.h: tokenizer.json's normalizer stage (HF `tokenizers` normalizers), one
// type per kind: Prepend, Replace (literal or regex), NFC/NFD/NFKC/NFKD and Strip. A Sequence is
// flattened into the list. Each rewrites a NormalizedText, keeping its alignment to the input.
#pragma once
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "data/tokenizer/json_fields.h"
#include "data/tokenizer/normalized_text.h"
#include "data/tokenizer/regex.h"
#include "data/tokenizer/unicode.h"

namespace sft::data::tokenizer {

struct PrependNormalizer {
  std::string prefix;  // added before non-empty text
};

struct ReplaceNormalizer {
  std::variant<std::string, Regex> pattern;  // tokenizer.json {"String": ...} or {"Regex": ...}
  std::string content;                       // what each match becomes
};

struct UnicodeNormalizer {
  std::shared_ptr<const UnicodeNormalization> normalization;  // shared: its tables are built once
};

struct StripNormalizer {
  bool left = true, right = true;  // strip White_Space from that end
};

using Normalizer = std::variant<PrependNormalizer, ReplaceNormalizer, UnicodeNormalizer, StripNormalizer>;

// Appends the normalizer(s) `j` describes; InputError naming `file` for unknown kinds.
void load_normalizers(const json& j, const std::string& file, std::vector<Normalizer>& out);
// Runs the normalizers in order.
void normalize(const std::vector<Normalizer>& normalizers, NormalizedText& t);

}  // namespace sft::data::tokenizer
