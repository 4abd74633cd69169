// data/tokenizer_internal.h: pieces shared by the two tokenizer backends (data/tokenizer_hf.cpp for
// tokenizer.json, data/tokenizer_sp.cpp for tokenizer.model) and the loader in data/tokenizer.cpp:
// the added-token matcher (HF's AddedVocabulary split rules) and the backend factory functions.
// Not part of the public interface.
#pragma once
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "data/tokenizer.h"

namespace sft::data::detail {

// An added token as tokenizer.json declares it (special tokens included).
struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

// One piece of a split: either an added token (id >= 0) or ordinary text, as byte range [begin, end).
struct Split {
  int32_t id;
  size_t begin, end;
};

// Finds added tokens in text the way HF `tokenizers` does: leftmost-longest matching of the token
// strings, then single_word / lstrip / rstrip rules. A byte trie, walked from each start position.
class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  // `patterns[i]` is matched for `tokens[i]` (the pattern is the normalized content for normalized tokens).
  AddedTokenMatcher(const std::vector<AddedToken>& tokens, const std::vector<std::string>& patterns);
  bool empty() const { return nodes_.size() <= 1; }
  // Splits covering all of `text`, in order; empty text gives no splits.
  void split(std::string_view text, std::vector<Split>& out) const;

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> next;  // sorted by byte
    int32_t token = -1;                                    // index into tokens_ when a pattern ends here
  };
  std::vector<Node> nodes_{Node{}};
  std::vector<AddedToken> tokens_;
  bool first_byte_[256] = {};
};

// Tokenizer with setters for what the loader reads from tokenizer_config.json / config.json.
class TokenizerBase : public Tokenizer {
 public:
  SpecialTokens& mutable_specials() { return specials_; }
  void set_chat_template(std::optional<std::string> t) { chat_template_ = std::move(t); }
  // Whether the backend's own files say to prepend BOS (HF post_processor; SentencePiece: bos exists).
  virtual bool default_add_bos() const = 0;
  virtual bool default_add_eos() const { return false; }
  // The backend's own idea of the special tokens (SentencePiece model ids); -1 when unknown.
  virtual int32_t model_bos() const { return -1; }
  virtual int32_t model_eos() const { return -1; }
  virtual int32_t model_unk() const { return -1; }
  virtual int32_t model_pad() const { return -1; }
};

// Parses tokenizer.json; InputError naming the file when it cannot be read or is not a JSON object.
nlohmann::json read_tokenizer_json(const std::filesystem::path& tokenizer_json);
// Builds the tokenizer.json backend from the parsed file, which the loader may have edited first (to
// rebuild it as transformers does); `file` names it in error messages.
std::unique_ptr<TokenizerBase> load_hf_tokenizer(const nlohmann::json& root, const std::string& file);
std::unique_ptr<TokenizerBase> load_sp_tokenizer(const std::filesystem::path& tokenizer_model);

}  // namespace sft::data::detail
