// data/tokenizer_sp.cpp: the SentencePiece backend (tokenizer.model through libsentencepiece).
// SentencePiece knows nothing of special-token text, but our contract maps "<s>", "</s>", "<unk>" in
// the input to their ids (as HF's Llama tokenizers do): the text is split on the surface strings of
// control and unknown pieces first, and each ordinary piece is encoded on its own.
#include <sentencepiece_processor.h>

#include <stdexcept>

#include "common/errors.h"
#include "data/tokenizer_internal.h"

namespace sft::data::detail {
namespace {

class SpTokenizer final : public TokenizerBase {
 public:
  explicit SpTokenizer(const std::filesystem::path& path) : file_(path.string()) {
    auto status = sp_.Load(file_);
    if (!status.ok()) throw InputError(file_ + ": cannot load SentencePiece model: " + status.ToString());
    std::vector<AddedToken> specials;
    std::vector<std::string> patterns;
    for (int id = 0; id < sp_.GetPieceSize(); ++id) {
      if (sp_.IsControl(id) || sp_.IsUnknown(id)) {
        AddedToken t;
        t.content = sp_.IdToPiece(id);
        t.id = id;
        t.special = true;
        if (t.content.empty()) continue;
        patterns.push_back(t.content);
        specials.push_back(std::move(t));
      }
    }
    matcher_ = AddedTokenMatcher(specials, patterns);
  }

  Encoding encode(std::string_view text) const override {
    Encoding enc;
    std::vector<AddedTokenSplit> splits;
    matcher_.split(text, splits);
    for (const AddedTokenSplit& s : splits) {
      if (s.added_id) {
        enc.ids.push_back(*s.added_id);
        enc.offsets.emplace_back(s.begin, s.end);
        continue;
      }
      std::string_view piece = text.substr(s.begin, s.end - s.begin);
      auto proto = sp_.EncodeAsImmutableProto(piece);
      for (const auto& p : proto.pieces()) {
        enc.ids.push_back(static_cast<int32_t>(p.id()));
        enc.offsets.emplace_back(s.begin + p.begin(), s.begin + std::max(p.begin(), p.end()));
      }
    }
    return enc;
  }

  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override {
    // Runs of ordinary ids go through SentencePiece; special ids become their text (or nothing).
    std::string out;
    std::vector<int> run;
    auto flush = [&]() {
      if (run.empty()) return;
      out += sp_.DecodeIds(run);
      run.clear();
    };
    for (int32_t id : ids) {
      if (id < 0 || id >= sp_.GetPieceSize()) continue;
      if (is_special(id)) {
        flush();
        if (!skip_special_tokens) out += sp_.IdToPiece(id);
      } else {
        run.push_back(id);
      }
    }
    flush();
    return out;
  }

  int64_t vocab_size() const override { return sp_.GetPieceSize(); }
  std::optional<int32_t> token_to_id(std::string_view token) const override {
    int id = sp_.PieceToId(token);
    // PieceToId answers unk for anything unknown; only the unk piece itself really is unk.
    if (id == sp_.unk_id() && sp_.IdToPiece(id) != token) return std::nullopt;
    return id;
  }
  std::string id_to_token(int32_t id) const override {
    if (id < 0 || id >= sp_.GetPieceSize()) {
      throw std::out_of_range("token id " + std::to_string(id) + " out of range for " + file_);
    }
    return sp_.IdToPiece(id);
  }
  bool is_special(int32_t id) const override {
    return id >= 0 && id < sp_.GetPieceSize() && (sp_.IsControl(id) || sp_.IsUnknown(id));
  }
  // Llama-family tokenizers prepend BOS by default (LlamaTokenizer add_bos_token=True).
  bool default_add_bos() const override { return sp_.bos_id() >= 0; }
  int32_t model_bos() const override { return sp_.bos_id(); }
  int32_t model_eos() const override { return sp_.eos_id(); }
  int32_t model_unk() const override { return sp_.unk_id(); }
  int32_t model_pad() const override { return sp_.pad_id(); }

 private:
  std::string file_;
  sentencepiece::SentencePieceProcessor sp_;
  AddedTokenMatcher matcher_;
};

}  // namespace

std::unique_ptr<TokenizerBase> load_sp_tokenizer(const std::filesystem::path& tokenizer_model) {
  return std::make_unique<SpTokenizer>(tokenizer_model);
}

}  // namespace sft::data::detail
