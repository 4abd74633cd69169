// data/tokenizer.h: one tokenizer interface with two backends, SentencePiece `tokenizer.model` and a
// native C++ implementation of HF `tokenizer.json` (BPE: byte-level and SentencePiece-style), plus the
// special tokens and chat template read from tokenizer_config.json / config.json.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sft::data {

// Token ids plus, for each token, the byte span [begin, end) of the input text it came from.
// Chat-template masking uses the spans to find which tokens belong to assistant text.
struct Encoding {
  std::vector<int32_t> ids;
  std::vector<std::pair<size_t, size_t>> offsets;
};

struct SpecialTokens {
  std::optional<int32_t> bos;
  std::optional<int32_t> eos;
  std::optional<int32_t> pad;
  std::optional<int32_t> unk;
  std::string bos_text, eos_text, pad_text;  // their surface strings ("<s>", "<|im_end|>", ...)
  bool add_bos = false;  // tokenizer_config.json add_bos_token / post-processor (what HF does by default)
  bool add_eos = false;
  // Every id that ends generation: eos first, then config.json / generation_config.json eos_token_id
  // lists (Llama-3 instruct stops on several end-of-turn ids).
  std::vector<int32_t> eos_ids;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Encodes text without adding BOS/EOS. Text of added/special tokens (e.g. "<|im_start|>") maps to
  // their ids, as HF `tokenizers` does with add_special_tokens=False.
  virtual Encoding encode(std::string_view text) const = 0;
  std::vector<int32_t> encode_ids(std::string_view text) const { return encode(text).ids; }

  virtual std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const = 0;

  // Number of ids the tokenizer can produce (base vocabulary + added tokens).
  virtual int64_t vocab_size() const = 0;
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
  virtual std::string id_to_token(int32_t id) const = 0;
  virtual bool is_special(int32_t id) const = 0;

  const SpecialTokens& special_tokens() const { return specials_; }
  // The raw Jinja chat template from tokenizer_config.json, if any (used by template `auto`).
  const std::optional<std::string>& chat_template() const { return chat_template_; }

 protected:
  SpecialTokens specials_;
  std::optional<std::string> chat_template_;
};

// How a tokenizer.json is run. The two differ only where transformers' tokenizer class rebuilds the
// pipeline around the file's vocabulary (see data/tokenizer.cpp); for tokenizer.model they are the same.
enum class TokenizerPipeline {
  // What transformers 5's AutoTokenizer.from_pretrained(dir) builds. The default, and what the trainer
  // uses: training ids must equal apply_chat_template's.
  kTransformers,
  // tokenizer.json exactly as written, as HF `tokenizers` (Tokenizer.from_file) runs it.
  kTokenizerJson,
};

// Loads from a directory: tokenizer.json preferred, else tokenizer.model; tokenizer_config.json and
// config.json (if present) supply special tokens and the chat template. Throws sft::InputError naming
// the file on anything malformed or missing.
std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& dir,
                                          TokenizerPipeline pipeline = TokenizerPipeline::kTransformers);

}  // namespace sft::data
