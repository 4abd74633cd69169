// data/tokenizer/pre_tokenizers.cpp: loading and running the pre-tokenizers of
// data/tokenizer/pre_tokenizers.h. Every kind finds matches in each word, then HF's
// NormalizedString::split rules turn matches and the gaps between them into the next words.
#include "data/tokenizer/pre_tokenizers.h"

#include <algorithm>

#include "data/tokenizer/unicode.h"

namespace sft::data::tokenizer {
namespace {

// GPT-2's word pattern, which ByteLevel's use_regex applies.
constexpr const char* kGpt2Pattern = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
// Whitespace's \w+|[^\w\s]+, with \w spelled out as Unicode word characters (letters, marks, Nd, Nl,
// connector punctuation): PCRE2's \w is letters, numbers and '_'.
constexpr const char* kWhitespacePattern =
    "[\\p{L}\\p{M}\\p{Nd}\\p{Nl}\\p{Pc}]+|[^\\p{L}\\p{M}\\p{Nd}\\p{Nl}\\p{Pc}\\s]+";

// A piece of a word: a match of the pattern or the text between two matches.
struct SplitEvent {
  ByteRange range;
  bool is_match;
};

// The matches (in order) and the gaps between them as events covering [0, size). With `invert` the
// matches are the text to keep, so the gaps are the delimiters.
void events_from_matches(const std::vector<ByteRange>& matches, size_t size, bool invert,
                         std::vector<SplitEvent>& events) {
  events.clear();
  size_t prev = 0;
  for (const ByteRange& m : matches) {
    if (prev != m.first) events.push_back({{prev, m.first}, invert});
    events.push_back({m, !invert});
    prev = m.second;
  }
  if (prev != size) events.push_back({{prev, size}, invert});
}

// HF NormalizedString::split: what each behavior keeps of the delimiters (is_match) and the rest.
void apply_behavior(const std::vector<SplitEvent>& events, SplitBehavior behavior, std::vector<ByteRange>& kept) {
  kept.clear();
  bool prev_match = false;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const SplitEvent& e : events) kept.push_back(e.range);
      break;
    case SplitBehavior::kRemoved:
      for (const SplitEvent& e : events) {
        if (!e.is_match) kept.push_back(e.range);
      }
      break;
    case SplitBehavior::kContiguous:
      for (const SplitEvent& e : events) {
        if (e.is_match == prev_match && !kept.empty()) {
          kept.back().second = e.range.second;
        } else {
          kept.push_back(e.range);
        }
        prev_match = e.is_match;
      }
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const SplitEvent& e : events) {
        if (e.is_match && !prev_match && !kept.empty()) {
          kept.back().second = e.range.second;
        } else {
          kept.push_back(e.range);
        }
        prev_match = e.is_match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (size_t k = events.size(); k-- > 0;) {
        const SplitEvent& e = events[k];
        if (e.is_match && !prev_match && !kept.empty()) {
          kept.back().first = e.range.first;
        } else {
          kept.push_back(e.range);
        }
        prev_match = e.is_match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
  }
}

void find_literal(std::string_view literal, std::string_view s, std::vector<ByteRange>& matches) {
  matches.clear();
  if (literal.empty()) return;
  for (size_t f = s.find(literal); f != std::string_view::npos; f = s.find(literal, f + literal.size())) {
    matches.emplace_back(f, f + literal.size());
  }
}

// Every character for which `pred` holds is a match of its own.
template <typename Pred>
void find_chars(Pred pred, std::string_view s, std::vector<ByteRange>& matches) {
  matches.clear();
  for (size_t i = 0; i < s.size();) {
    size_t length;
    if (pred(decode_utf8(s.data() + i, s.size() - i, &length))) matches.emplace_back(i, i + length);
    i += length;
  }
}

// Splits every word by the matches `find(word_text, matches)` reports, keeping what `behavior` keeps.
template <typename Find>
void split_words(std::vector<TextSpan>& words, SplitBehavior behavior, bool invert, Find find) {
  std::vector<TextSpan> next;
  std::vector<ByteRange> matches, kept;
  std::vector<SplitEvent> events;
  for (const TextSpan& w : words) {
    find(w.view(), matches);
    events_from_matches(matches, w.end - w.begin, invert, events);
    apply_behavior(events, behavior, kept);
    for (const ByteRange& k : kept) {
      if (k.second > k.first) next.push_back(TextSpan{w.text, w.begin + k.first, w.begin + k.second});
    }
  }
  words.swap(next);
}

using Storage = std::deque<NormalizedText>;

void run(const SplitPreTokenizer& p, Storage&, std::vector<TextSpan>& words) {
  if (const auto* literal = std::get_if<std::string>(&p.pattern)) {
    split_words(words, p.behavior, p.invert,
                [literal](std::string_view s, std::vector<ByteRange>& m) { find_literal(*literal, s, m); });
  } else {
    const Regex& re = std::get<Regex>(p.pattern);
    split_words(words, p.behavior, p.invert, [&re](std::string_view s, std::vector<ByteRange>& m) { re.find_all(s, m); });
  }
}

void run(const DigitsPreTokenizer& p, Storage&, std::vector<TextSpan>& words) {
  split_words(words, p.individual_digits ? SplitBehavior::kIsolated : SplitBehavior::kContiguous, false,
              [](std::string_view s, std::vector<ByteRange>& m) { find_chars(is_number, s, m); });
}

void run(const WhitespaceSplitPreTokenizer&, Storage&, std::vector<TextSpan>& words) {
  split_words(words, SplitBehavior::kRemoved, false,
              [](std::string_view s, std::vector<ByteRange>& m) { find_chars(is_white_space, s, m); });
}

void run(const ByteLevelPreTokenizer& p, Storage& storage, std::vector<TextSpan>& words) {
  if (p.add_prefix_space) {
    for (TextSpan& w : words) {
      if (!w.view().empty() && w.view()[0] == ' ') continue;
      storage.push_back(slice(*w.text, w.begin, w.end));
      splice(storage.back(), 0, 0, " ");
      w = TextSpan{&storage.back(), 0, storage.back().text.size()};
    }
  }
  if (p.gpt2_split) {
    const Regex& re = *p.gpt2_split;
    split_words(words, SplitBehavior::kIsolated, false, [&re](std::string_view s, std::vector<ByteRange>& m) {
      re.find_all(s, m);
    });
  }
}

void run(const MetaspacePreTokenizer& p, Storage& storage, std::vector<TextSpan>& words) {
  for (TextSpan& w : words) {
    NormalizedText t = slice(*w.text, w.begin, w.end);
    replace_all(t, " ", p.replacement);
    bool starts_with_replacement = t.text.compare(0, p.replacement.size(), p.replacement) == 0;
    bool at_input_start = w.text->source_begin_of(w.begin) == 0;
    if (!starts_with_replacement && (p.prepend_scheme == PrependScheme::kAlways ||
                                     (p.prepend_scheme == PrependScheme::kFirst && at_input_start))) {
      splice(t, 0, 0, p.replacement);
    }
    storage.push_back(std::move(t));
    w = TextSpan{&storage.back(), 0, storage.back().text.size()};
  }
  if (p.split) {
    const std::string& replacement = p.replacement;
    split_words(words, SplitBehavior::kMergedWithNext, false, [&replacement](std::string_view s, std::vector<ByteRange>& m) {
      find_literal(replacement, s, m);
    });
  }
}

SplitBehavior split_behavior(const std::string& name, const std::string& file) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  bad_json(file, "pre_tokenizer Split behavior '" + name + "' is unknown");
}

}  // namespace

bool is_byte_level(const std::vector<PreTokenizer>& pre_tokenizers) {
  return std::any_of(pre_tokenizers.begin(), pre_tokenizers.end(),
                     [](const PreTokenizer& p) { return std::holds_alternative<ByteLevelPreTokenizer>(p); });
}

void load_pre_tokenizers(const json& j, const std::string& file, std::vector<PreTokenizer>& out) {
  std::string type = get_string(j, "type", file, "pre_tokenizer");
  if (is_byte_level(out)) bad_json(file, "pre_tokenizer " + type + " after ByteLevel is not supported");
  if (type == "Sequence") {
    for (const json& p : need(j, "pretokenizers", file, "pre_tokenizer")) load_pre_tokenizers(p, file, out);
  } else if (type == "Split") {
    const json& pattern = need(j, "pattern", file, "pre_tokenizer Split");
    SplitPreTokenizer p;
    if (pattern.contains("Regex")) {
      p.pattern = Regex(pattern["Regex"].get<std::string>());
    } else if (pattern.contains("String")) {
      p.pattern = pattern["String"].get<std::string>();
    } else {
      bad_json(file, "pre_tokenizer Split pattern must be {Regex} or {String}");
    }
    p.behavior = split_behavior(get_string(j, "behavior", file, "pre_tokenizer Split"), file);
    p.invert = get_bool(j, "invert", false);
    out.push_back(std::move(p));
  } else if (type == "Digits") {
    out.push_back(DigitsPreTokenizer{get_bool(j, "individual_digits", false)});
  } else if (type == "ByteLevel") {
    ByteLevelPreTokenizer p;
    p.add_prefix_space = get_bool(j, "add_prefix_space", true);
    if (get_bool(j, "use_regex", true)) p.gpt2_split.emplace(kGpt2Pattern);
    out.push_back(std::move(p));
  } else if (type == "Metaspace") {
    MetaspacePreTokenizer p;
    p.replacement = get_string(j, "replacement", file, "pre_tokenizer Metaspace");
    p.split = get_bool(j, "split", true);
    std::string scheme = prepend_scheme(j);
    p.prepend_scheme = scheme == "first" ? PrependScheme::kFirst
                       : scheme == "never" ? PrependScheme::kNever
                                           : PrependScheme::kAlways;
    out.push_back(std::move(p));
  } else if (type == "Whitespace") {
    // Words and runs of other non-space characters kept, whitespace removed.
    out.push_back(SplitPreTokenizer{Regex(kWhitespacePattern), SplitBehavior::kRemoved, /*invert=*/true});
  } else if (type == "WhitespaceSplit") {
    out.push_back(WhitespaceSplitPreTokenizer{});
  } else {
    bad_json(file, "pre_tokenizer type '" + type + "' is not supported");
  }
}

void pre_tokenize(const std::vector<PreTokenizer>& pre_tokenizers, const TextSpan& whole,
                  std::deque<NormalizedText>& storage, std::vector<TextSpan>& words) {
  std::vector<TextSpan> current{whole};
  for (const PreTokenizer& p : pre_tokenizers) {
    std::visit([&](const auto& kind) { run(kind, storage, current); }, p);
  }
  words.insert(words.end(), current.begin(), current.end());
}

}  // namespace sft::data::tokenizer
