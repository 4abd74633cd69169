// data/tokenizer/decoders.h: tokenizer.json's decoder stage (HF `tokenizers` decoders), one type per
// kind: Replace, ByteFallback, Fuse, Strip, ByteLevel and Metaspace. A Sequence is flattened into the
// list. Each turns the list of token strings into the next list; the result is their concatenation.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "data/tokenizer/byte_level.h"
#include "data/tokenizer/json_fields.h"

namespace sft::data::tokenizer {

struct ReplaceDecoder {
  std::string pattern;  // a literal (tokenizer.json {"String": ...})
  std::string content;
};

// Runs of <0xNN> tokens become their bytes (one U+FFFD per byte if they are not valid UTF-8).
struct ByteFallbackDecoder {};

// All tokens become one.
struct FuseDecoder {};

struct StripDecoder {
  uint32_t content = ' ';  // the character stripped
  size_t start = 0;        // at most this many from the start of each token
  size_t stop = 0;         // and from its end
};

// Tokens in GPT-2's byte alphabet become their bytes (lossy UTF-8 of the whole).
struct ByteLevelDecoder {
  ByteAlphabet alphabet;
};

struct MetaspaceDecoder {
  std::string replacement;  // becomes a space again
  // prepend_scheme is not "never": the first token's leading replacement was prepended, so it goes.
  bool drop_prepended_space = true;
};

using Decoder = std::variant<ReplaceDecoder, ByteFallbackDecoder, FuseDecoder, StripDecoder, ByteLevelDecoder,
                             MetaspaceDecoder>;

// Appends the decoder(s) `j` describes; InputError naming `file` for unknown kinds.
void load_decoders(const json& j, const std::string& file, std::vector<Decoder>& out);
// Runs the decoders over the token strings and concatenates what is left.
std::string decode_tokens(const std::vector<Decoder>& decoders, std::vector<std::string> tokens);

}  // namespace sft::data::tokenizer
