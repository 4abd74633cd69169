// data/tokenizer/unicode.h: the Unicode support the tokenizer needs, on utf8proc: UTF-8 decoding and
// encoding (with Rust's lossy rules, which utf8proc does not offer), White_Space and Number (the
// Strip and Digits stages), and NFC/NFD/NFKC/NFKD normalization that reports which input bytes each
// rewritten output run came from (HF's NormalizedString alignments).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sft::data::tokenizer {

constexpr uint32_t kReplacementChar = 0xFFFD;

// Decodes one code point at s[0..n). Invalid or truncated sequences decode as U+FFFD of length 1,
// so every byte of any input belongs to exactly one "character".
uint32_t decode_utf8(const char* s, size_t n, size_t* length);
void append_utf8(std::string& out, uint32_t cp);
// Rust's String::from_utf8_lossy: each maximal invalid subsequence becomes one U+FFFD.
std::string utf8_lossy(std::string_view bytes);
bool is_valid_utf8(std::string_view bytes);
// The code points of `s` and the byte offset of each, plus one past the end (appended to both).
void decode_all(std::string_view s, std::vector<uint32_t>& cps, std::vector<size_t>& byte_pos);

bool is_white_space(uint32_t cp);  // the White_Space property (Rust char::is_whitespace, regex \s)
bool is_number(uint32_t cp);       // general category N (Nd, Nl, No), as the reference's \p{N}
bool is_word(uint32_t cp);         // regex \w: letters, marks, Nd, Nl, connector punctuation

enum class NormalForm { kNFC, kNFD, kNFKC, kNFKD };

// A run of the input that normalization rewrote: input bytes [in_begin, in_end) became output bytes
// [out_begin, out_end). Bytes outside every run are copied unchanged.
struct NormalizedRun {
  size_t in_begin, in_end, out_begin, out_end;
};

// One normalization form. The text is cut into chunks at code points normalization can never reach
// across (starters that nothing composes onto); each chunk is normalized by utf8proc on its own, and
// a chunk that changes becomes one NormalizedRun, so a token of it points at the whole input chunk.
class UnicodeNormalization {
 public:
  explicit UnicodeNormalization(NormalForm form);
  NormalForm form() const { return form_; }
  // Normalizes `in` into `out` (replacing its content). Returns false (and leaves `out` equal to `in`)
  // when nothing changed, the common case, so callers can keep an identity alignment.
  bool normalize(std::string_view in, std::string& out, std::vector<NormalizedRun>& runs) const;

 private:
  NormalForm form_;
  int options_;  // utf8proc_option_t
  // Sorted code points that compose onto a preceding character (the second of a composition pair).
  std::vector<uint32_t> composes_backward_;

  bool is_boundary_before(uint32_t cp) const;
  bool composes_backward(uint32_t cp) const;
  bool unchanged_alone(uint32_t cp) const;  // a chunk of just cp normalizes to itself
  void normalize_chunk(std::string_view chunk, std::string& out) const;
};

}  // namespace sft::data::tokenizer
