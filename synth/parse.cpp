// synth/parse.cpp: parsers for model output (see parse.h).
#include "synth/parse.h"

#include <cctype>

namespace sft::synth {
namespace {

bool is_space(char c) { return std::isspace(static_cast<unsigned char>(c)); }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
char lower(char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); }

bool starts_with_word(std::string_view text, size_t at, std::string_view word) {
  if (text.size() < at + word.size()) return false;
  for (size_t i = 0; i < word.size(); ++i) {
    if (lower(text[at + i]) != word[i]) return false;
  }
  return true;
}

// If `line` opens a numbered item, the offset of its text; else npos.
size_t item_text_offset(std::string_view line) {
  size_t i = 0;
  auto skip = [&](const char* chars) {
    while (i < line.size() && (std::string_view(chars).find(line[i]) != std::string_view::npos)) ++i;
  };
  skip(" \t*#");
  for (std::string_view word : {"task", "instruction"}) {
    if (starts_with_word(line, i, word)) {
      i += word.size();
      skip(" \t");
      break;
    }
  }
  const size_t digits = i;
  while (i < line.size() && is_digit(line[i])) ++i;
  if (i == digits || i - digits > 3) return std::string_view::npos;
  skip("*");
  if (i >= line.size() || (line[i] != '.' && line[i] != ')' && line[i] != ':')) return std::string_view::npos;
  ++i;
  skip("*");
  if (i < line.size() && !is_space(line[i])) return std::string_view::npos;  // "3.5 million" is not item 3
  return i;
}

// Removes one pair of enclosing markers (quotes, **), then trims.
std::string unwrap(std::string text) {
  text = trim(text);
  for (std::string_view mark : {"**", "\"", "\u201C"}) {
    const std::string_view close = mark == "\u201C" ? std::string_view("\u201D") : mark;
    if (text.size() >= mark.size() + close.size() && text.compare(0, mark.size(), mark) == 0 &&
        text.compare(text.size() - close.size(), close.size(), close) == 0) {
      return trim(text.substr(mark.size(), text.size() - mark.size() - close.size()));
    }
  }
  return text;
}

}  // namespace

std::string trim(std::string_view text) {
  size_t begin = 0, end = text.size();
  while (begin < end && is_space(text[begin])) ++begin;
  while (end > begin && is_space(text[end - 1])) --end;
  return std::string(text.substr(begin, end - begin));
}

NumberedList parse_numbered_list(std::string_view text, bool complete) {
  NumberedList list;
  std::vector<std::string> raw;
  bool open = false;  // the last item may still take continuation lines
  size_t begin = 0;
  while (begin <= text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = text.substr(begin, end - begin);
    begin = end + 1;
    const size_t offset = item_text_offset(line);
    if (offset != std::string_view::npos) {
      raw.push_back(std::string(line.substr(offset)));
      open = true;
    } else if (trim(line).empty()) {
      open = false;
    } else if (open) {
      raw.back() += "\n" + std::string(line);
    }
  }
  if (!complete && !raw.empty()) {
    raw.pop_back();
    list.dropped_truncated = true;
  }
  for (std::string& item : raw) {
    std::string clean = unwrap(std::move(item));
    if (!clean.empty()) list.items.push_back(std::move(clean));
  }
  return list;
}

std::string parse_evolved_prompt(std::string_view text) {
  std::string out = trim(text);
  if (out.compare(0, 3, "```") == 0) {
    const size_t first_line = out.find('\n');
    out = first_line == std::string::npos ? "" : out.substr(first_line + 1);
    const size_t fence = out.rfind("```");
    if (fence != std::string::npos) out = out.substr(0, fence);
  }
  return unwrap(out);
}

std::optional<int> parse_score(std::string_view text) {
  for (size_t at = 0; at + 5 <= text.size(); ++at) {
    if (!starts_with_word(text, at, "score")) continue;
    size_t i = at + 5;
    while (i < text.size() && (text[i] == ':' || text[i] == '*' || text[i] == ' ' || text[i] == '=')) ++i;
    if (i < text.size() && text[i] >= '1' && text[i] <= '5' && (i + 1 >= text.size() || !is_digit(text[i + 1]))) {
      return text[i] - '0';
    }
  }
  for (size_t i = 0; i < text.size(); ++i) {
    const bool alone = (i == 0 || !std::isalnum(static_cast<unsigned char>(text[i - 1]))) &&
                       (i + 1 >= text.size() || !std::isalnum(static_cast<unsigned char>(text[i + 1])));
    if (text[i] >= '1' && text[i] <= '5' && alone) return text[i] - '0';
  }
  return std::nullopt;
}

std::optional<bool> parse_yes_no(std::string_view text) {
  size_t i = 0;
  while (i < text.size() && (is_space(text[i]) || text[i] == '"' || text[i] == '*' || text[i] == '\'')) ++i;
  auto word_ends = [&](size_t at) { return at >= text.size() || !std::isalpha(static_cast<unsigned char>(text[at])); };
  if (starts_with_word(text, i, "yes") && word_ends(i + 3)) return true;
  if (starts_with_word(text, i, "no") && word_ends(i + 2)) return false;
  return std::nullopt;
}

}  // namespace sft::synth
