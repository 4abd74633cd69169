// data/tokenizer/added_tokens.cpp: loading added tokens and the trie matcher of
// data/tokenizer/added_tokens.h.
#include "data/tokenizer/added_tokens.h"

#include <algorithm>

#include "data/tokenizer/unicode.h"

namespace sft::data::tokenizer {

std::vector<AddedToken> load_added_tokens(const json& list, const std::unordered_map<std::string, int32_t>& vocab,
                                          const std::string& file) {
  if (!list.is_array()) bad_json(file, "added_tokens must be a list");
  std::vector<AddedToken> added;
  std::unordered_map<std::string, int32_t> id_by_content;
  auto next_added_id = static_cast<int32_t>(vocab.size());
  for (size_t i = 0; i < list.size(); ++i) {
    const json& t = list[i];
    const std::string where = "added_tokens[" + std::to_string(i) + "]";
    AddedToken a;
    a.content = get_string(t, "content", file, where);
    const json& id = need(t, "id", file, where);
    if (!id.is_number_integer() || id.get<int64_t>() < 0) bad_json(file, where + ".id must be a non-negative integer");
    a.special = get_bool(t, "special", false);
    a.lstrip = get_bool(t, "lstrip", false);
    a.rstrip = get_bool(t, "rstrip", false);
    a.single_word = get_bool(t, "single_word", false);
    a.normalized = get_bool(t, "normalized", !a.special);
    if (a.content.empty()) continue;
    auto seen = id_by_content.find(a.content);
    if (seen != id_by_content.end()) {
      a.id = seen->second;
      for (AddedToken& old : added) {
        if (old.content == a.content) old = a;  // same content again: the later flags win
      }
      continue;
    }
    auto in_vocab = vocab.find(a.content);
    a.id = in_vocab != vocab.end() ? in_vocab->second : next_added_id++;
    id_by_content[a.content] = a.id;
    added.push_back(std::move(a));
  }
  return added;
}

AddedTokenMatcher::AddedTokenMatcher(const std::vector<AddedToken>& tokens, const std::vector<std::string>& patterns)
    : tokens_(tokens) {
  for (size_t t = 0; t < tokens.size(); ++t) {
    const std::string& p = patterns[t];
    if (p.empty()) continue;
    int32_t node = 0;
    for (unsigned char c : p) {
      auto& next = nodes_[node].next;
      auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(c, int32_t{-1}),
                                 [](const auto& a, const auto& b) { return a.first < b.first; });
      if (it != next.end() && it->first == c) {
        node = it->second;
      } else {
        int32_t fresh = static_cast<int32_t>(nodes_.size());
        next.insert(it, {c, fresh});
        nodes_.emplace_back();
        node = fresh;
      }
    }
    nodes_[node].token = t;
    first_byte_[static_cast<unsigned char>(p[0])] = true;
  }
}

namespace {
// Code point before byte `pos` / at byte `pos` (for the single_word and strip rules).
uint32_t cp_before(std::string_view s, size_t pos) {
  size_t b = pos;
  do {
    --b;
  } while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80 && pos - b < 4);
  size_t len;
  return decode_utf8(s.data() + b, pos - b, &len);
}
size_t cp_len_before(std::string_view s, size_t pos) {
  size_t b = pos;
  do {
    --b;
  } while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80 && pos - b < 4);
  return pos - b;
}
}  // namespace

void AddedTokenMatcher::split(std::string_view text, std::vector<AddedTokenSplit>& out) const {
  out.clear();
  if (text.empty()) return;
  if (empty()) {
    out.push_back({std::nullopt, 0, text.size()});
    return;
  }
  size_t start_offset = 0, pos = 0;
  while (pos < text.size()) {
    if (!first_byte_[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    // Longest pattern starting at pos.
    int32_t node = 0;
    std::optional<size_t> best;
    size_t best_end = 0;
    for (size_t i = pos; i < text.size(); ++i) {
      const auto& next = nodes_[node].next;
      unsigned char c = static_cast<unsigned char>(text[i]);
      auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(c, int32_t{-1}),
                                 [](const auto& a, const auto& b) { return a.first < b.first; });
      if (it == next.end() || it->first != c) break;
      node = it->second;
      if (nodes_[node].token) best = nodes_[node].token, best_end = i + 1;
    }
    if (!best) {
      ++pos;
      continue;
    }
    const AddedToken& tok = tokens_[*best];
    size_t start = pos, stop = best_end;
    if (tok.single_word) {
      bool start_ok = start == 0 || !is_word(cp_before(text, start));
      size_t len;
      bool stop_ok = stop == text.size() || !is_word(decode_utf8(text.data() + stop, text.size() - stop, &len));
      if (!start_ok || !stop_ok) {
        pos = stop;  // matches do not overlap: the search resumes after this one
        continue;
      }
    }
    if (tok.lstrip) {
      size_t s = start;
      while (s > 0 && is_white_space(cp_before(text, s))) s -= cp_len_before(text, s);
      start = std::max(s, start_offset);
    }
    if (tok.rstrip) {
      size_t len;
      while (stop < text.size() && is_white_space(decode_utf8(text.data() + stop, text.size() - stop, &len))) {
        stop += len;
      }
    }
    if (start_offset < start) out.push_back({std::nullopt, start_offset, start});
    out.push_back({tok.id, start, stop});
    start_offset = stop;
    pos = stop;
  }
  if (start_offset < text.size()) out.push_back({std::nullopt, start_offset, text.size()});
}

}  // namespace sft::data::tokenizer
