// data/tokenizer_internal.h: what the two tokenizer backends (data/tokenizer_hf.cpp for
// tokenizer.json, data/tokenizer_sp.cpp for tokenizer.model) share with the loader in
// data/tokenizer.cpp: the base class with setters for the config files and the backend factories.
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
#include "data/tokenizer/added_tokens.h"

namespace sft::data::detail {

using tokenizer::AddedToken;
using tokenizer::AddedTokenMatcher;
using tokenizer::AddedTokenSplit;

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
