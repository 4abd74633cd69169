// data/tokenizer/byte_level.cpp: the byte-level alphabet of data/tokenizer/byte_level.h.
#include "data/tokenizer/byte_level.h"

#include "data/tokenizer/unicode.h"

namespace sft::data::tokenizer {

ByteAlphabet::ByteAlphabet() {
  byte_of_char_.fill(-1);
  uint32_t next_unprintable = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    char_of_byte_[b] = printable ? b : next_unprintable++;
    byte_of_char_[char_of_byte_[b]] = static_cast<int16_t>(b);
  }
}

std::string ByteAlphabet::symbol_of(unsigned char byte) const {
  std::string s;
  append_utf8(s, char_of_byte_[byte]);
  return s;
}

bool ByteAlphabet::to_bytes(std::string_view token, std::string& bytes) const {
  bytes.clear();
  for (size_t i = 0; i < token.size();) {
    size_t length;
    uint32_t cp = decode_utf8(token.data() + i, token.size() - i, &length);
    if (cp > kLastChar || byte_of_char_[cp] < 0) return false;
    bytes.push_back(static_cast<char>(byte_of_char_[cp]));
    i += length;
  }
  return true;
}

}  // namespace sft::data::tokenizer
