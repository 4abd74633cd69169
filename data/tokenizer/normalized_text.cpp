// data/tokenizer/normalized_text.cpp: the aligned rewrites of data/tokenizer/normalized_text.h.
#include "data/tokenizer/normalized_text.h"

namespace sft::data::tokenizer {

void NormalizedText::materialize() {
  if (!identity() || text.empty()) return;
  source_begin.resize(text.size());
  source_end.resize(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    source_begin[i] = static_cast<uint32_t>(source_offset + i);
    source_end[i] = static_cast<uint32_t>(source_offset + i + 1);
  }
}

void splice(NormalizedText& t, size_t pos, size_t length, std::string_view with) {
  t.materialize();
  uint32_t begin, end;
  if (length > 0) {
    begin = t.source_begin[pos];
    end = t.source_end[pos + length - 1];
  } else {
    begin = end = static_cast<uint32_t>(pos < t.source_begin.size() ? t.source_begin[pos]
                                        : t.source_end.empty()      ? t.source_offset
                                                                    : t.source_end.back());
  }
  t.text.replace(pos, length, with);
  t.source_begin.erase(t.source_begin.begin() + pos, t.source_begin.begin() + pos + length);
  t.source_end.erase(t.source_end.begin() + pos, t.source_end.begin() + pos + length);
  t.source_begin.insert(t.source_begin.begin() + pos, with.size(), begin);
  t.source_end.insert(t.source_end.begin() + pos, with.size(), end);
}

void replace_all(NormalizedText& t, std::string_view from, std::string_view to) {
  if (from.empty() || t.text.find(from) == std::string::npos) return;
  t.materialize();
  NormalizedText r;
  r.source_offset = t.source_offset;
  r.text.reserve(t.text.size());
  for (size_t i = 0; i < t.text.size();) {
    if (t.text.compare(i, from.size(), from) == 0) {
      uint32_t begin = t.source_begin[i], end = t.source_end[i + from.size() - 1];
      r.text.append(to);
      r.source_begin.insert(r.source_begin.end(), to.size(), begin);
      r.source_end.insert(r.source_end.end(), to.size(), end);
      i += from.size();
    } else {
      r.text.push_back(t.text[i]);
      r.source_begin.push_back(t.source_begin[i]);
      r.source_end.push_back(t.source_end[i]);
      ++i;
    }
  }
  t = std::move(r);
}

NormalizedText slice(const NormalizedText& t, size_t begin, size_t end) {
  NormalizedText r;
  r.text = t.text.substr(begin, end - begin);
  if (t.identity()) {
    r.source_offset = t.source_offset + begin;
  } else {
    r.source_begin.assign(t.source_begin.begin() + begin, t.source_begin.begin() + end);
    r.source_end.assign(t.source_end.begin() + begin, t.source_end.begin() + end);
  }
  return r;
}

}  // namespace sft::data::tokenizer
