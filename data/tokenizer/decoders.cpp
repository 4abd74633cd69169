// data/tokenizer/decoders.cpp: loading and running the decoders of data/tokenizer/decoders.h.
#include "data/tokenizer/decoders.h"

#include <cctype>

#include "data/tokenizer/unicode.h"

namespace sft::data::tokenizer {
namespace {

using Tokens = std::vector<std::string>;

void run(const ReplaceDecoder& d, Tokens& tokens) {
  if (d.pattern.empty()) return;
  for (std::string& t : tokens) {
    std::string r;
    for (size_t i = 0; i < t.size();) {
      if (t.compare(i, d.pattern.size(), d.pattern) == 0) {
        r += d.content;
        i += d.pattern.size();
      } else {
        r.push_back(t[i++]);
      }
    }
    t.swap(r);
  }
}

bool is_byte_token(const std::string& t) {
  return t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && std::isxdigit(static_cast<unsigned char>(t[3])) &&
         std::isxdigit(static_cast<unsigned char>(t[4]));
}

void run(const ByteFallbackDecoder&, Tokens& tokens) {
  Tokens out;
  std::string bytes;
  auto flush = [&]() {
    if (bytes.empty()) return;
    if (is_valid_utf8(bytes)) {
      out.push_back(bytes);
    } else {
      for (size_t k = 0; k < bytes.size(); ++k) out.push_back("\xEF\xBF\xBD");
    }
    bytes.clear();
  };
  for (std::string& t : tokens) {
    if (is_byte_token(t)) {
      bytes.push_back(static_cast<char>(std::stoi(t.substr(3, 2), nullptr, 16)));
    } else {
      flush();
      out.push_back(std::move(t));
    }
  }
  flush();
  tokens.swap(out);
}

void run(const FuseDecoder&, Tokens& tokens) {
  std::string all;
  for (const std::string& t : tokens) all += t;
  tokens.assign(1, std::move(all));
}

void run(const StripDecoder& d, Tokens& tokens) {
  for (std::string& t : tokens) {
    std::vector<uint32_t> cps;
    std::vector<size_t> byte_pos;
    decode_all(t, cps, byte_pos);
    size_t n = cps.size(), lo = 0, hi = n;
    for (size_t k = 0; k < d.start && lo < n && cps[lo] == d.content; ++k) ++lo;
    for (size_t k = 0; k < d.stop && hi > lo && cps[hi - 1] == d.content; ++k) --hi;
    t = t.substr(byte_pos[lo], byte_pos[hi] - byte_pos[lo]);
  }
}

void run(const ByteLevelDecoder& d, Tokens& tokens) {
  // A token with a character outside the alphabet keeps its own bytes.
  std::string all, bytes;
  for (const std::string& t : tokens) all += d.alphabet.to_bytes(t, bytes) ? bytes : t;
  tokens.assign(1, utf8_lossy(all));
}

void run(const MetaspaceDecoder& d, Tokens& tokens) {
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::string& t = tokens[i];
    std::string r;
    for (size_t k = 0; k < t.size();) {
      if (t.compare(k, d.replacement.size(), d.replacement) == 0) {
        if (!(i == 0 && d.drop_prepended_space)) r.push_back(' ');
        k += d.replacement.size();
      } else {
        r.push_back(t[k++]);
      }
    }
    tokens[i].swap(r);
  }
}

}  // namespace

void load_decoders(const json& j, const std::string& file, std::vector<Decoder>& out) {
  std::string type = get_string(j, "type", file, "decoder");
  if (type == "Sequence") {
    for (const json& d : need(j, "decoders", file, "decoder")) load_decoders(d, file, out);
  } else if (type == "Replace") {
    const json& pattern = need(j, "pattern", file, "decoder Replace");
    if (!pattern.contains("String")) bad_json(file, "decoder Replace supports only a String pattern");
    out.push_back(ReplaceDecoder{pattern["String"].get<std::string>(), get_string(j, "content", file, "decoder Replace")});
  } else if (type == "ByteFallback") {
    out.push_back(ByteFallbackDecoder{});
  } else if (type == "Fuse") {
    out.push_back(FuseDecoder{});
  } else if (type == "Strip") {
    StripDecoder d;
    std::string content = get_string(j, "content", file, "decoder Strip");
    size_t length;
    if (!content.empty()) d.content = decode_utf8(content.data(), content.size(), &length);
    d.start = j.value("start", 0);
    d.stop = j.value("stop", 0);
    out.push_back(d);
  } else if (type == "ByteLevel") {
    out.push_back(ByteLevelDecoder{});
  } else if (type == "Metaspace") {
    out.push_back(MetaspaceDecoder{get_string(j, "replacement", file, "decoder Metaspace"), prepend_scheme(j) != "never"});
  } else {
    bad_json(file, "decoder type '" + type + "' is not supported");
  }
}

std::string decode_tokens(const std::vector<Decoder>& decoders, std::vector<std::string> tokens) {
  for (const Decoder& d : decoders) std::visit([&tokens](const auto& kind) { run(kind, tokens); }, d);
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

}  // namespace sft::data::tokenizer
