// data/tokenizer/normalizers.cpp: loading and applying the normalizers of data/tokenizer/normalizers.h.
#include "data/tokenizer/normalizers.h"

namespace sft::data::tokenizer {
namespace {

void apply(const PrependNormalizer& n, NormalizedText& t) {
  if (!t.text.empty()) splice(t, 0, 0, n.prefix);
}

void apply(const ReplaceNormalizer& n, NormalizedText& t) {
  if (const auto* literal = std::get_if<std::string>(&n.pattern)) {
    replace_all(t, *literal, n.content);
    return;
  }
  std::vector<ByteRange> matches;
  std::get<Regex>(n.pattern).find_all(t.text, matches);
  for (size_t k = matches.size(); k-- > 0;) {  // right to left keeps earlier positions valid
    splice(t, matches[k].first, matches[k].second - matches[k].first, n.content);
  }
}

void apply(const UnicodeNormalizer& n, NormalizedText& t) {
  std::string out;
  std::vector<NormalizedRun> runs;
  if (!n.normalization->normalize(t.text, out, runs)) return;
  t.materialize();
  // Bytes outside the runs keep their alignment; every byte of a run stands for the run's input.
  NormalizedText r;
  r.text = std::move(out);
  r.source_begin.resize(r.text.size());
  r.source_end.resize(r.text.size());
  size_t in = 0, o = 0;
  auto copy_until = [&](size_t in_end) {
    for (; in < in_end; ++in, ++o) r.source_begin[o] = t.source_begin[in], r.source_end[o] = t.source_end[in];
  };
  for (const NormalizedRun& run : runs) {
    copy_until(run.in_begin);
    uint32_t begin = t.source_begin[run.in_begin], end = t.source_end[run.in_end - 1];
    for (o = run.out_begin; o < run.out_end; ++o) r.source_begin[o] = begin, r.source_end[o] = end;
    in = run.in_end;
  }
  copy_until(t.text.size());
  t = std::move(r);
}

void apply(const StripNormalizer& n, NormalizedText& t) {
  std::vector<uint32_t> cps;
  std::vector<size_t> byte_pos;
  decode_all(t.text, cps, byte_pos);
  size_t lo = 0, hi = cps.size();
  if (n.left) while (lo < hi && is_white_space(cps[lo])) ++lo;
  if (n.right) while (hi > lo && is_white_space(cps[hi - 1])) --hi;
  size_t begin = byte_pos[lo], end = byte_pos[hi];
  if (begin != 0 || end != t.text.size()) t = slice(t, begin, end);
}

NormalForm normal_form(const std::string& type) {
  if (type == "NFC") return NormalForm::kNFC;
  if (type == "NFD") return NormalForm::kNFD;
  if (type == "NFKC") return NormalForm::kNFKC;
  return NormalForm::kNFKD;
}

}  // namespace

void load_normalizers(const json& j, const std::string& file, std::vector<Normalizer>& out) {
  std::string type = get_string(j, "type", file, "normalizer");
  if (type == "Sequence") {
    for (const json& n : need(j, "normalizers", file, "normalizer")) load_normalizers(n, file, out);
  } else if (type == "Prepend") {
    out.push_back(PrependNormalizer{get_string(j, "prepend", file, "normalizer")});
  } else if (type == "Replace") {
    const json& pattern = need(j, "pattern", file, "normalizer Replace");
    ReplaceNormalizer n;
    if (pattern.contains("String")) {
      n.pattern = pattern["String"].get<std::string>();
    } else if (pattern.contains("Regex")) {
      n.pattern = Regex(pattern["Regex"].get<std::string>());
    } else {
      bad_json(file, "normalizer Replace pattern must be {String} or {Regex}");
    }
    n.content = get_string(j, "content", file, "normalizer Replace");
    out.push_back(std::move(n));
  } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    out.push_back(UnicodeNormalizer{std::make_shared<const UnicodeNormalization>(normal_form(type))});
  } else if (type == "Strip") {
    out.push_back(StripNormalizer{get_bool(j, "strip_left", true), get_bool(j, "strip_right", true)});
  } else {
    bad_json(file, "normalizer type '" + type + "' is not supported");
  }
}

void normalize(const std::vector<Normalizer>& normalizers, NormalizedText& t) {
  for (const Normalizer& n : normalizers) std::visit([&t](const auto& kind) { apply(kind, t); }, n);
}

}  // namespace sft::data::tokenizer
