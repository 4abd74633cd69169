// data/tokenizer/byte_level.h: GPT-2's byte-level alphabet, in which every byte is one printable
// character: printable bytes stand for themselves, the others for U+0100 + n in byte order. Byte-level
// vocabularies (GPT-2, Llama-3, Qwen, SmolLM2) are written in it; the ByteLevel decoder maps back.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace sft::data::tokenizer {

class ByteAlphabet {
 public:
  ByteAlphabet();
  uint32_t char_of(unsigned char byte) const { return char_of_byte_[byte]; }
  std::string symbol_of(unsigned char byte) const;  // the character as UTF-8
  // The bytes a token written in the alphabet stands for; false (bytes unspecified) when the token
  // has a character outside it.
  bool to_bytes(std::string_view token, std::string& bytes) const;

 private:
  static constexpr uint32_t kLastChar = 0x143;  // 256 + 67 non-printable bytes - 1
  std::array<uint32_t, 256> char_of_byte_{};
  std::array<int16_t, kLastChar + 1> byte_of_char_{};  // -1: not in the alphabet
};

}  // namespace sft::data::tokenizer
