// data/tokenizer/added_tokens.h: added tokens (HF AddedVocabulary): the tokens tokenizer.json lists
// in "added_tokens" (special ones included), with their ids assigned as `tokenizers` does on load,
// and the matcher that finds them in text before anything else runs. Used by both backends.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "data/tokenizer/json_fields.h"

namespace sft::data::tokenizer {

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;
  bool lstrip = false;       // the match takes the whitespace before it
  bool rstrip = false;       // and after it
  bool single_word = false;  // only matches as a whole word
  bool normalized = false;   // matched in normalized text (else in the raw input)
};

// Reads tokenizer.json's "added_tokens". Ids are the model's id when the content is in `vocab`, else
// the next id after it, as `tokenizers` does (the file's own "id" is only checked); the same content
// listed twice is one token with the later flags.
std::vector<AddedToken> load_added_tokens(const json& list, const std::unordered_map<std::string, int32_t>& vocab,
                                          const std::string& file);

// One piece of a split text: an added token, or ordinary text between them; bytes [begin, end).
struct AddedTokenSplit {
  std::optional<int32_t> added_id;  // set for an added token
  size_t begin, end;
};

// Finds added tokens in text the way HF `tokenizers` does: leftmost-longest matching of the token
// strings, then the single_word / lstrip / rstrip rules. A byte trie, walked from each start position.
class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  // `patterns[i]` is matched for `tokens[i]` (the pattern is the normalized content for normalized tokens).
  AddedTokenMatcher(const std::vector<AddedToken>& tokens, const std::vector<std::string>& patterns);
  bool empty() const { return nodes_.size() <= 1; }
  // Splits covering all of `text`, in order; empty text gives no splits.
  void split(std::string_view text, std::vector<AddedTokenSplit>& out) const;

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> next;  // (byte, child node), sorted by byte
    std::optional<size_t> token;                          // index into tokens_ when a pattern ends here
  };
  std::vector<Node> nodes_{Node{}};
  std::vector<AddedToken> tokens_;
  bool first_byte_[256] = {};
};

}  // namespace sft::data::tokenizer
