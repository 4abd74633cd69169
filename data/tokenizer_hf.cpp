// data/tokenizer_hf.cpp: the tokenizer.json backend, assembled from the pipeline components in
// data/tokenizer/ as HF `tokenizers` is: added tokens are split out first (non-normalized ones on the
// raw text, normalized ones after the normalizers), then normalizers -> pre-tokenizers -> BPE model per
// word; decoding runs the decoders. Every byte of normalized text keeps the input byte range it came
// from, so tokens carry input byte offsets. BPE models only: byte-level (GPT-2, Llama-3, Qwen2/3,
// SmolLM2) and SentencePiece-style with byte_fallback (Mistral, Llama-2-HF).
#include <nlohmann/json.hpp>

#include <algorithm>
#include <deque>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <unordered_map>

#include "common/errors.h"
#include "data/tokenizer/added_tokens.h"
#include "data/tokenizer/bpe_model.h"
#include "data/tokenizer/decoders.h"
#include "data/tokenizer/json_fields.h"
#include "data/tokenizer/normalizers.h"
#include "data/tokenizer/pre_tokenizers.h"
#include "data/tokenizer_internal.h"

namespace sft::data::detail {
namespace {

namespace tk = sft::data::tokenizer;
using json = nlohmann::json;

bool present(const json& root, const char* key) { return root.contains(key) && !root[key].is_null(); }

class HfTokenizer final : public TokenizerBase {
 public:
  HfTokenizer(const json& root, std::string file);

  Encoding encode(std::string_view text) const override;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(id_to_token_.size()); }
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  std::string id_to_token(int32_t id) const override;
  bool is_special(int32_t id) const override {
    return id >= 0 && static_cast<size_t>(id) < special_.size() && special_[id];
  }
  bool default_add_bos() const override { return add_bos_; }
  bool default_add_eos() const override { return add_eos_; }

 private:
  std::string file_;
  std::vector<tk::Normalizer> normalizers_;
  std::vector<tk::PreTokenizer> pre_tokenizers_;
  std::unique_ptr<tk::BpeModel> model_;
  std::optional<std::vector<tk::Decoder>> decoders_;  // none: decode joins the tokens with spaces
  std::vector<tk::AddedToken> added_;
  std::unordered_map<std::string, int32_t> added_by_content_;
  tk::AddedTokenMatcher raw_matcher_;         // added tokens matched in the input as it is
  tk::AddedTokenMatcher normalized_matcher_;  // added tokens matched after the normalizers
  // Per id: its token string, whether it is special, whether the vocab or added tokens define it.
  std::vector<std::string> id_to_token_;
  std::vector<bool> special_, defined_;
  std::unordered_map<int32_t, std::string> decode_form_;  // normalized added tokens whose text changed
  bool add_bos_ = false, add_eos_ = false;

  void load_post_processor(const json& j);
  void build_id_tables();
  void encode_segment(const tk::NormalizedText& segment, Encoding& enc) const;
};

HfTokenizer::HfTokenizer(const json& root, std::string file) : file_(std::move(file)) {
  if (!root.is_object()) tk::bad_json(file_, "top level must be an object");
  try {
    // Pre-tokenizers first: they decide whether the BPE alphabet is byte-level.
    if (present(root, "pre_tokenizer")) tk::load_pre_tokenizers(root["pre_tokenizer"], file_, pre_tokenizers_);
    if (present(root, "normalizer")) tk::load_normalizers(root["normalizer"], file_, normalizers_);
    model_ = std::make_unique<tk::BpeModel>(tk::need(root, "model", file_, "top level"),
                                            tk::is_byte_level(pre_tokenizers_), file_);
    if (present(root, "decoder")) tk::load_decoders(root["decoder"], file_, decoders_.emplace());
    // Added tokens: their ids override/extend the model vocabulary.
    if (present(root, "added_tokens")) added_ = tk::load_added_tokens(root["added_tokens"], model_->vocab(), file_);
    if (present(root, "post_processor")) load_post_processor(root["post_processor"]);
  } catch (const json::exception& e) {
    tk::bad_json(file_, std::string("unexpected JSON structure: ") + e.what());
  } catch (const std::invalid_argument& e) {
    tk::bad_json(file_, e.what());
  }
  build_id_tables();
}

void HfTokenizer::build_id_tables() {
  size_t size = 0;
  for (const auto& [token, id] : model_->vocab()) size = std::max(size, static_cast<size_t>(id) + 1);
  for (const tk::AddedToken& a : added_) size = std::max(size, static_cast<size_t>(a.id) + 1);
  id_to_token_.assign(size, std::string());
  special_.assign(size, false);
  defined_.assign(size, false);
  for (const auto& [token, id] : model_->vocab()) id_to_token_[id] = token, defined_[id] = true;
  std::vector<tk::AddedToken> raw, normalized;
  std::vector<std::string> raw_patterns, normalized_patterns;
  for (const tk::AddedToken& a : added_) {
    added_by_content_[a.content] = a.id;
    id_to_token_[a.id] = a.content;
    special_[a.id] = a.special;
    defined_[a.id] = true;
    if (!a.normalized) {
      raw.push_back(a);
      raw_patterns.push_back(a.content);
      continue;
    }
    // A normalized token is matched as the normalizers rewrite it, and decoding sees that form, so
    // the decoders can undo the normalization (as in `tokenizers`).
    tk::NormalizedText t;
    t.text = a.content;
    tk::normalize(normalizers_, t);
    if (t.text != a.content) decode_form_[a.id] = t.text;
    normalized.push_back(a);
    normalized_patterns.push_back(std::move(t.text));
  }
  raw_matcher_ = tk::AddedTokenMatcher(raw, raw_patterns);
  normalized_matcher_ = tk::AddedTokenMatcher(normalized, normalized_patterns);
}

void HfTokenizer::load_post_processor(const json& j) {
  std::string type = j.value("type", "");
  if (type == "Sequence" && j.contains("processors")) {
    for (const json& p : j["processors"]) load_post_processor(p);
  } else if (type == "TemplateProcessing" && j.contains("single") && j["single"].is_array()) {
    // A SpecialToken before the sequence means BOS is added, one after it means EOS is added.
    bool before_sequence = true;
    for (const json& item : j["single"]) {
      if (item.contains("Sequence")) {
        before_sequence = false;
      } else if (item.contains("SpecialToken")) {
        (before_sequence ? add_bos_ : add_eos_) = true;
      }
    }
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    add_bos_ = add_eos_ = true;
  }
}

std::optional<int32_t> HfTokenizer::token_to_id(std::string_view token) const {
  std::string key(token);
  auto a = added_by_content_.find(key);
  if (a != added_by_content_.end()) return a->second;
  return model_->token_to_id(key);
}

std::string HfTokenizer::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size()) {
    throw std::out_of_range("token id " + std::to_string(id) + " out of range for " + file_);
  }
  return id_to_token_[id];
}

// ---------------------------------------------------------------- encode
void HfTokenizer::encode_segment(const tk::NormalizedText& segment, Encoding& enc) const {
  std::deque<tk::NormalizedText> storage;
  std::vector<tk::TextSpan> words;
  tk::pre_tokenize(pre_tokenizers_, tk::TextSpan{&segment, 0, segment.text.size()}, storage, words);
  std::vector<tk::BpeToken> tokens;
  for (const tk::TextSpan& w : words) {
    model_->tokenize(w.view(), tokens);
    for (const tk::BpeToken& t : tokens) {
      enc.ids.push_back(t.id);
      size_t begin = w.text->source_begin_of(w.begin + t.begin);
      size_t end = t.end > t.begin ? w.text->source_end_of(w.begin + t.end - 1) : begin;
      enc.offsets.emplace_back(begin, std::max(begin, end));
    }
  }
}

Encoding HfTokenizer::encode(std::string_view text) const {
  Encoding enc;
  std::vector<tk::AddedTokenSplit> raw_splits, normalized_splits;
  raw_matcher_.split(text, raw_splits);
  for (const tk::AddedTokenSplit& raw : raw_splits) {
    if (raw.added_id) {
      enc.ids.push_back(*raw.added_id);
      enc.offsets.emplace_back(raw.begin, raw.end);
      continue;
    }
    tk::NormalizedText segment;
    segment.text.assign(text.data() + raw.begin, raw.end - raw.begin);
    segment.source_offset = raw.begin;
    tk::normalize(normalizers_, segment);
    if (segment.text.empty()) continue;
    if (normalized_matcher_.empty()) {
      encode_segment(segment, enc);
      continue;
    }
    normalized_matcher_.split(segment.text, normalized_splits);
    for (const tk::AddedTokenSplit& s : normalized_splits) {
      if (s.added_id) {
        enc.ids.push_back(*s.added_id);
        enc.offsets.emplace_back(segment.source_begin_of(s.begin), segment.source_end_of(s.end - 1));
      } else {
        encode_segment(tk::slice(segment, s.begin, s.end), enc);
      }
    }
  }
  return enc;
}

// ---------------------------------------------------------------- decode
std::string HfTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    // Unknown ids are dropped, as `tokenizers` does (models may have padded embedding rows).
    if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !defined_[id]) continue;
    if (skip_special_tokens && special_[id]) continue;
    auto form = decode_form_.find(id);
    tokens.push_back(form == decode_form_.end() ? id_to_token_[id] : form->second);
  }
  if (decoders_) return tk::decode_tokens(*decoders_, std::move(tokens));
  std::string out;
  for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
  return out;
}

}  // namespace

json read_tokenizer_json(const std::filesystem::path& tokenizer_json) {
  const std::string file = tokenizer_json.string();
  std::ifstream in(tokenizer_json, std::ios::binary);
  if (!in) tk::bad_json(file, "cannot open");
  json root;
  try {
    root = json::parse(in);
  } catch (const json::exception& e) {
    tk::bad_json(file, std::string("malformed JSON: ") + e.what());
  }
  if (!root.is_object()) tk::bad_json(file, "top level must be an object");
  return root;
}

std::unique_ptr<TokenizerBase> load_hf_tokenizer(const json& root, const std::string& file) {
  return std::make_unique<HfTokenizer>(root, file);
}

}  // namespace sft::data::detail
