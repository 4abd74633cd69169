// data/tokenizer/regex.cpp: PCRE2 compile + match for data/tokenizer/regex.h, and the rewrite of
// Oniguruma-only meanings into PCRE2 syntax.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "data/tokenizer/regex.h"

#include <pcre2.h>

#include <cstdio>
#include <stdexcept>

#include "data/tokenizer/unicode.h"
#include "data/tokenizer/unicode_alignment.h"

namespace sft::data::tokenizer {
namespace {

// White_Space as a class body: PCRE2's \s also matches U+180E (a format character since Unicode 6.3),
// Oniguruma's does not.
constexpr const char* kWhiteSpaceItems = "\\t-\\r\\x{85}\\p{Z}";

template <size_t N>
std::string class_items(const alignment::CodePointRange (&ranges)[N]) {
  std::string out;
  char buf[40];
  for (const auto& r : ranges) {
    std::snprintf(buf, sizeof buf, "\\x{%X}-\\x{%X}", r.first, r.last);
    out += buf;
  }
  return out;
}

[[noreturn]] void unsupported(std::string_view pattern, const std::string& what) {
  throw std::invalid_argument("regex " + std::string(pattern) + ": " + what);
}

}  // namespace

std::string pcre2_pattern(std::string_view p) {
  std::string out;
  out.reserve(p.size() * 2);
  bool in_class = false;
  // Class items that stand for one escape; `negated` escapes need a class of their own.
  auto emit = [&](const std::string& items, bool negated, const char* escape) {
    if (!in_class) {
      out += negated ? "[^" : "[";
      out += items;
      out += "]";
    } else if (negated) {
      unsupported(p, std::string(escape) + " inside a character class is not supported");
    } else {
      out += items;
    }
  };
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char e = p[i + 1];
      if (e == 's' || e == 'S') {
        emit(kWhiteSpaceItems, e == 'S', e == 's' ? "\\s" : "\\S");
        ++i;
        continue;
      }
      if (e == 'p' || e == 'P') {
        // \pL or \p{Name}, \p{^Name} (negated)
        size_t end = i + 2;
        std::string name;
        if (end < p.size() && p[end] == '{') {
          size_t close = p.find('}', end);
          if (close == std::string_view::npos) unsupported(p, "unterminated \\p{");
          name = std::string(p.substr(end + 1, close - end - 1));
          end = close + 1;
        } else if (end < p.size()) {
          name = std::string(1, p[end]);
          end += 1;
        }
        bool negated = e == 'P';
        if (!name.empty() && name[0] == '^') {
          negated = !negated;
          name.erase(0, 1);
        }
        const bool letter = name == "L" || name == "Letter";
        const bool number = name == "N" || name == "Number";
        if (letter || number) {
          std::string items = letter ? "\\p{L}" + class_items(alignment::kExtraLetters)
                                     : "\\p{N}" + class_items(alignment::kExtraNumbers);
          emit(items, negated, negated ? "\\P{L}/\\P{N}" : "");
          i = end - 1;
          continue;
        }
        out += p.substr(i, end - i);  // other properties: PCRE2's meaning
        i = end - 1;
        continue;
      }
      out += c;
      out += e;
      ++i;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal.
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // POSIX [:name:]
      size_t close = p.find(":]", i + 2);
      if (close != std::string_view::npos) {
        out += p.substr(i, close + 2 - i);
        i = close + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

struct Regex::Compiled {
  pcre2_code* code = nullptr;
  ~Compiled() { pcre2_code_free(code); }
};

Regex::Regex(std::string_view pattern) : pattern_(pattern) {
  const std::string rewritten = pcre2_pattern(pattern);
  pcre2_compile_context* context = pcre2_compile_context_create(nullptr);
  pcre2_set_newline(context, PCRE2_NEWLINE_LF);
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  // MULTILINE: ^ and $ are line anchors, as in Oniguruma's Ruby syntax. MATCH_INVALID_UTF: text that
  // is not UTF-8 can be searched; the invalid bytes just never match.
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(rewritten.data()), rewritten.size(),
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE | PCRE2_MATCH_INVALID_UTF, &error,
                                   &error_offset, context);
  pcre2_compile_context_free(context);
  if (!code) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof message);
    unsupported(pattern, reinterpret_cast<const char*>(message) + std::string(" at offset ") +
                             std::to_string(error_offset) + " of " + rewritten);
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // without a JIT, pcre2_match interprets
  auto compiled = std::make_shared<Compiled>();
  compiled->code = code;
  compiled_ = std::move(compiled);
}

void Regex::find_all(std::string_view text, std::vector<ByteRange>& matches) const {
  matches.clear();
  std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data*)> data(pcre2_match_data_create(1, nullptr),
                                                                       pcre2_match_data_free);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0;
  while (pos < text.size()) {
    int rc = pcre2_match(compiled_->code, subject, text.size(), pos, 0, data.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof message);
      throw std::runtime_error("regex " + pattern_ + ": " + reinterpret_cast<const char*>(message));
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data.get());
    size_t begin = ovector[0], end = ovector[1];
    if (end > begin) {
      matches.emplace_back(begin, end);
      pos = end;
    } else {
      size_t length;
      decode_utf8(text.data() + begin, text.size() - begin, &length);
      pos = begin + length;
    }
  }
}

}  // namespace sft::data::tokenizer
