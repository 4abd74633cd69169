// data/tokenizer_hf.cpp: native C++ implementation of HF `tokenizers` for tokenizer.json files with a
// BPE model: byte-level (GPT-2, Llama-3, Qwen2/3, SmolLM2) and SentencePiece-style with byte_fallback
// (Mistral, Llama-2-HF). Pipeline, as in `tokenizers`: added tokens are split out first (non-normalized
// ones on the raw text, normalized ones after the normalizer), then normalizer -> pre-tokenizer ->
// BPE per pre-token word (merge-rank hash map + priority queue, with a per-word cache). Every byte of
// normalized text keeps the input byte range it came from, so tokens carry input byte offsets.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <deque>
#include <fstream>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <unordered_map>

#include "common/errors.h"
#include "data/tokenizer_internal.h"
#include "data/tokenizer/regex.h"
#include "data/tokenizer/unicode.h"

namespace sft::data::detail {
namespace {

namespace u = sft::data::tokenizer;
using u::Regex;
using json = nlohmann::json;

// ---------------------------------------------------------------- aligned text
// Normalized text plus, per byte, the input byte range it stands for. Identity alignment (the common
// case: nothing was rewritten) is kept implicit as an offset `base`.
struct NormText {
  std::string s;
  size_t base = 0;
  std::vector<uint32_t> ob, oe;  // empty while the alignment is the identity

  bool identity() const { return ob.empty(); }
  size_t begin_of(size_t i) const {
    if (identity()) return base + i;
    return i < ob.size() ? ob[i] : (oe.empty() ? base : oe.back());
  }
  size_t end_of_last(size_t i) const { return identity() ? base + i + 1 : oe[i]; }
  void materialize() {
    if (!identity() || s.empty()) return;
    ob.resize(s.size());
    oe.resize(s.size());
    for (size_t i = 0; i < s.size(); ++i) ob[i] = static_cast<uint32_t>(base + i), oe[i] = static_cast<uint32_t>(base + i + 1);
  }
};

// A pre-token: bytes [a, b) of a NormText.
struct Piece {
  const NormText* t;
  size_t a, b;
  std::string_view view() const { return std::string_view(t->s).substr(a, b - a); }
};

// Replaces bytes [pos, pos+len) of t with `with`; the new bytes all stand for the replaced range.
// An insertion (len == 0: a prepended "▁" or " ") stands for the empty range where it happened, so a
// token made only of inserted text covers no input.
void splice(NormText& t, size_t pos, size_t len, std::string_view with) {
  t.materialize();
  uint32_t b, e;
  if (len > 0) {
    b = t.ob[pos];
    e = t.oe[pos + len - 1];
  } else {
    b = e = static_cast<uint32_t>(pos < t.ob.size() ? t.ob[pos] : (t.oe.empty() ? t.base : t.oe.back()));
  }
  t.s.replace(pos, len, with);
  t.ob.erase(t.ob.begin() + pos, t.ob.begin() + pos + len);
  t.oe.erase(t.oe.begin() + pos, t.oe.begin() + pos + len);
  t.ob.insert(t.ob.begin() + pos, with.size(), b);
  t.oe.insert(t.oe.begin() + pos, with.size(), e);
}

// Replaces every occurrence of `from` (literal) by `to`, in one pass.
void replace_all(NormText& t, std::string_view from, std::string_view to) {
  if (from.empty() || t.s.find(from) == std::string::npos) return;
  t.materialize();
  NormText r;
  r.base = t.base;
  r.s.reserve(t.s.size());
  for (size_t i = 0; i < t.s.size();) {
    if (t.s.compare(i, from.size(), from) == 0) {
      uint32_t b = t.ob[i], e = t.oe[i + from.size() - 1];
      r.s.append(to);
      r.ob.insert(r.ob.end(), to.size(), b);
      r.oe.insert(r.oe.end(), to.size(), e);
      i += from.size();
    } else {
      r.s.push_back(t.s[i]);
      r.ob.push_back(t.ob[i]);
      r.oe.push_back(t.oe[i]);
      ++i;
    }
  }
  t = std::move(r);
}

NormText slice(const NormText& t, size_t a, size_t b) {
  NormText r;
  r.s = t.s.substr(a, b - a);
  if (t.identity()) {
    r.base = t.base + a;
  } else {
    r.ob.assign(t.ob.begin() + a, t.ob.begin() + b);
    r.oe.assign(t.oe.begin() + a, t.oe.begin() + b);
  }
  return r;
}

// Code points of `s` and the byte offset of each, plus one past the end.
void code_points(std::string_view s, std::vector<uint32_t>& cps, std::vector<size_t>& byte_pos) {
  for (size_t i = 0; i < s.size();) {
    size_t len;
    cps.push_back(u::decode_utf8(s.data() + i, s.size() - i, &len));
    byte_pos.push_back(i);
    i += len;
  }
  byte_pos.push_back(s.size());
}

// ---------------------------------------------------------------- errors
[[noreturn]] void bad(const std::string& file, const std::string& what) {
  throw InputError(file + ": " + what);
}

const json& need(const json& j, const char* key, const std::string& file, const std::string& where) {
  if (!j.is_object() || !j.contains(key)) bad(file, where + ": missing key '" + key + "'");
  return j.at(key);
}

std::string get_string(const json& j, const char* key, const std::string& file, const std::string& where) {
  const json& v = need(j, key, file, where);
  if (!v.is_string()) bad(file, where + "." + key + " must be a string");
  return v.get<std::string>();
}

bool get_bool(const json& j, const char* key, bool fallback) {
  if (!j.is_object() || !j.contains(key) || j.at(key).is_null()) return fallback;
  return j.at(key).is_boolean() ? j.at(key).get<bool>() : fallback;
}

// ---------------------------------------------------------------- byte-level alphabet (GPT-2)
// Bytes that are printable map to themselves; the others to U+0100 + n, in byte order.
std::array<uint32_t, 256> byte_to_char_table() {
  std::array<uint32_t, 256> table{};
  uint32_t n = 0;
  for (uint32_t b = 0; b < 256; ++b) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    table[b] = printable ? b : 256 + n++;
  }
  return table;
}

// ---------------------------------------------------------------- normalizers
struct Normalizer {
  enum Kind { kPrepend, kReplace, kUnicode, kStrip } kind = kPrepend;
  std::string a, b;               // prepend: a; replace: a -> b (literal)
  std::optional<Regex> pattern;   // replace with a regex
  std::shared_ptr<const u::UnicodeNormalization> form;  // kUnicode
  bool strip_left = false, strip_right = false;
};

void apply(const Normalizer& n, NormText& t) {
  switch (n.kind) {
    case Normalizer::kPrepend:
      if (!t.s.empty()) splice(t, 0, 0, n.a);
      break;
    case Normalizer::kReplace:
      if (!n.pattern) {
        replace_all(t, n.a, n.b);
      } else {
        std::vector<u::ByteRange> m;
        n.pattern->find_all(t.s, m);
        for (size_t k = m.size(); k-- > 0;) {  // right to left keeps earlier positions valid
          splice(t, m[k].first, m[k].second - m[k].first, n.b);
        }
      }
      break;
    case Normalizer::kUnicode: {
      std::string out;
      std::vector<u::NormalizedRun> runs;
      if (!n.form->normalize(t.s, out, runs)) break;
      t.materialize();
      NormText r;
      r.s = std::move(out);
      r.ob.resize(r.s.size());
      r.oe.resize(r.s.size());
      size_t in = 0, o = 0;
      auto copy_until = [&](size_t in_end) {
        for (; in < in_end; ++in, ++o) r.ob[o] = t.ob[in], r.oe[o] = t.oe[in];
      };
      for (const auto& run : runs) {
        copy_until(run.in_begin);
        uint32_t b = t.ob[run.in_begin], e = t.oe[run.in_end - 1];
        for (o = run.out_begin; o < run.out_end; ++o) r.ob[o] = b, r.oe[o] = e;
        in = run.in_end;
      }
      copy_until(t.s.size());
      t = std::move(r);
      break;
    }
    case Normalizer::kStrip: {
      std::vector<uint32_t> cps;
      std::vector<size_t> byte_pos;
      code_points(t.s, cps, byte_pos);
      size_t lo = 0, hi = cps.size();
      if (n.strip_left) while (lo < hi && u::is_white_space(cps[lo])) ++lo;
      if (n.strip_right) while (hi > lo && u::is_white_space(cps[hi - 1])) --hi;
      size_t a = byte_pos[lo], b = byte_pos[hi];
      if (a != 0 || b != t.s.size()) t = slice(t, a, b);
      break;
    }
  }
}

// ---------------------------------------------------------------- pre-tokenizers
enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct PreTokenizer {
  enum Kind { kSplit, kDigits, kByteLevel, kMetaspace, kWhitespaceSplit } kind;
  std::optional<Regex> regex;  // kSplit (regex or escaped literal), kByteLevel with use_regex
  std::string literal;         // kSplit with a String pattern
  Behavior behavior = Behavior::kIsolated;
  bool invert = false;
  bool flag = false;           // kDigits: individual_digits; kByteLevel: add_prefix_space; kMetaspace: split
  std::string replacement;     // kMetaspace
  enum Prepend { kAlways, kFirst, kNever } prepend = kAlways;
};

// HF NormalizedString::split: turns (range, is_match) events into kept ranges per behavior.
void apply_behavior(const std::vector<std::pair<std::pair<size_t, size_t>, bool>>& events, Behavior behavior,
                    std::vector<std::pair<size_t, size_t>>& out) {
  out.clear();
  switch (behavior) {
    case Behavior::kIsolated:
      for (const auto& e : events) out.push_back(e.first);
      break;
    case Behavior::kRemoved:
      for (const auto& e : events) {
        if (!e.second) out.push_back(e.first);
      }
      break;
    case Behavior::kContiguous: {
      bool prev = false;
      for (const auto& e : events) {
        if (e.second == prev && !out.empty()) {
          out.back().second = e.first.second;
        } else {
          out.push_back(e.first);
        }
        prev = e.second;
      }
      break;
    }
    case Behavior::kMergedWithPrevious: {
      bool prev = false;
      for (const auto& e : events) {
        if (e.second && !prev && !out.empty()) {
          out.back().second = e.first.second;
        } else {
          out.push_back(e.first);
        }
        prev = e.second;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool prev = false;
      for (size_t k = events.size(); k-- > 0;) {
        const auto& e = events[k];
        if (e.second && !prev && !out.empty()) {
          out.back().first = e.first.first;
        } else {
          out.push_back(e.first);
        }
        prev = e.second;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
  }
}

// ---------------------------------------------------------------- decoders
struct Decoder {
  enum Kind { kReplace, kByteFallback, kFuse, kStrip, kByteLevel, kMetaspace } kind;
  std::string a, b;  // kReplace: a -> b; kMetaspace: a = replacement
  uint32_t strip_char = ' ';
  size_t start = 0, stop = 0;
  bool prepend = true;  // kMetaspace: prepend_scheme != never
};

// ---------------------------------------------------------------- the tokenizer
class HfTokenizer final : public TokenizerBase {
 public:
  HfTokenizer(const json& root, std::string file);

  Encoding encode(std::string_view text) const override;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(id_to_token_.size()); }
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  std::string id_to_token(int32_t id) const override;
  bool is_special(int32_t id) const override {
    return id >= 0 && static_cast<size_t>(id) < special_.size() && special_[id];
  }
  bool default_add_bos() const override { return add_bos_; }
  bool default_add_eos() const override { return add_eos_; }

 private:
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    uint32_t begin, end;  // bytes of the word
  };
  using WordTokens = std::vector<Symbol>;  // only id/begin/end are meaningful

  std::string file_;
  // model
  std::unordered_map<std::string, int32_t> vocab_;
  std::unordered_map<std::string, int32_t> raw_vocab_;  // byte-level: vocab keyed by raw bytes
  std::unordered_map<uint64_t, std::pair<uint32_t, int32_t>> merges_;  // (left, right) -> (rank, merged)
  bool byte_level_ = false;
  std::array<int32_t, 256> byte_symbol_{};    // byte-level: id of each byte's alphabet char
  std::array<int32_t, 256> fallback_byte_{};  // byte_fallback: id of <0xNN>
  bool byte_fallback_ = false, fuse_unk_ = false, ignore_merges_ = false;
  int32_t unk_id_ = -1;
  // pipeline
  std::vector<Normalizer> normalizers_;
  std::vector<PreTokenizer> pre_tokenizers_;
  std::vector<Decoder> decoders_;
  bool has_decoder_ = false;
  std::vector<AddedToken> added_;
  std::unordered_map<std::string, int32_t> added_by_content_;
  AddedTokenMatcher raw_matcher_, normalized_matcher_;
  // id -> token string and flags
  std::vector<std::string> id_to_token_;
  std::vector<bool> special_;
  std::vector<int32_t> added_index_;  // id -> index into added_, or -1
  std::unordered_map<int32_t, std::string> decode_form_;  // normalized added tokens whose form changed
  bool add_bos_ = false, add_eos_ = false;
  std::array<uint32_t, 256> byte_char_{};
  std::unordered_map<uint32_t, uint8_t> char_byte_;

  // per-word cache: words are short and repeat a lot (Zipf), so this skips most merging
  static constexpr size_t kCacheCapacity = 1 << 16;
  static constexpr size_t kCacheMaxWord = 256;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, WordTokens> cache_;

  void load_model(const json& model);
  void load_normalizer(const json& j, std::vector<Normalizer>& out);
  void load_pre_tokenizer(const json& j);
  void load_decoder(const json& j);
  void load_post_processor(const json& j);

  void normalize(NormText& t) const {
    for (const auto& n : normalizers_) apply(n, t);
  }
  void pre_tokenize(const Piece& whole, std::deque<NormText>& storage, std::vector<Piece>& out) const;
  void bpe_word(std::string_view word, WordTokens& out) const;
  void merge_word(std::string_view word, WordTokens& out) const;
  void emit_segment(const NormText& seg, Encoding& enc) const;
};

HfTokenizer::HfTokenizer(const json& root, std::string file) : file_(std::move(file)) {
  if (!root.is_object()) bad(file_, "top level must be an object");
  byte_char_ = byte_to_char_table();
  for (uint32_t b = 0; b < 256; ++b) char_byte_[byte_char_[b]] = static_cast<uint8_t>(b);
  try {
    // Pre-tokenizer first: it decides whether the BPE alphabet is byte-level.
    if (root.contains("pre_tokenizer") && !root["pre_tokenizer"].is_null()) load_pre_tokenizer(root["pre_tokenizer"]);
    if (root.contains("normalizer") && !root["normalizer"].is_null()) {
      load_normalizer(root["normalizer"], normalizers_);
    }
    load_model(need(root, "model", file_, "top level"));
    if (root.contains("decoder") && !root["decoder"].is_null()) {
      load_decoder(root["decoder"]);
      has_decoder_ = true;
    }
    // Added tokens: their ids override/extend the model vocabulary.
    if (root.contains("added_tokens") && !root["added_tokens"].is_null()) {
      const json& list = root["added_tokens"];
      if (!list.is_array()) bad(file_, "added_tokens must be a list");
      auto next_added_id = static_cast<int32_t>(vocab_.size());
      for (size_t i = 0; i < list.size(); ++i) {
        const json& t = list[i];
        std::string where = "added_tokens[" + std::to_string(i) + "]";
        AddedToken a;
        a.content = get_string(t, "content", file_, where);
        const json& id = need(t, "id", file_, where);
        if (!id.is_number_integer() || id.get<int64_t>() < 0) bad(file_, where + ".id must be a non-negative integer");
        a.id = id.get<int32_t>();
        a.special = get_bool(t, "special", false);
        a.lstrip = get_bool(t, "lstrip", false);
        a.rstrip = get_bool(t, "rstrip", false);
        a.single_word = get_bool(t, "single_word", false);
        a.normalized = get_bool(t, "normalized", !a.special);
        if (a.content.empty()) continue;
        // Ids are assigned as `tokenizers` does on load (the file's "id" is only checked there): the
        // model's id when the content is in the vocab, else the next id after the vocab. In real files
        // both agree.
        auto seen = added_by_content_.find(a.content);
        auto in_vocab = vocab_.find(a.content);
        if (seen != added_by_content_.end()) {
          a.id = seen->second;
          for (auto& old : added_) {
            if (old.content == a.content) old = a;  // same content again: the later flags win
          }
          continue;
        }
        a.id = in_vocab != vocab_.end() ? in_vocab->second : next_added_id++;
        added_by_content_[a.content] = a.id;
        added_.push_back(std::move(a));
      }
    }
    if (root.contains("post_processor") && !root["post_processor"].is_null()) {
      load_post_processor(root["post_processor"]);
    }
  } catch (const json::exception& e) {
    bad(file_, std::string("unexpected JSON structure: ") + e.what());
  } catch (const std::invalid_argument& e) {
    bad(file_, e.what());
  }

  // id tables
  size_t size = 0;
  for (const auto& kv : vocab_) size = std::max(size, static_cast<size_t>(kv.second) + 1);
  for (const auto& a : added_) size = std::max(size, static_cast<size_t>(a.id) + 1);
  id_to_token_.assign(size, std::string());
  special_.assign(size, false);
  added_index_.assign(size, -1);
  for (const auto& kv : vocab_) id_to_token_[kv.second] = kv.first;
  std::vector<AddedToken> non_normalized, normalized;
  std::vector<std::string> raw_patterns, norm_patterns;
  for (size_t i = 0; i < added_.size(); ++i) {
    const AddedToken& a = added_[i];
    id_to_token_[a.id] = a.content;
    special_[a.id] = a.special;
    added_index_[a.id] = static_cast<int32_t>(i);
    if (a.normalized && !normalizers_.empty()) {
      NormText t;
      t.s = a.content;
      normalize(t);
      normalized.push_back(a);
      norm_patterns.push_back(t.s);
      // Decoding sees the normalized form, so the decoder can undo the normalization (as in `tokenizers`).
      if (t.s != a.content) decode_form_[a.id] = t.s;
    } else if (a.normalized) {
      normalized.push_back(a);
      norm_patterns.push_back(a.content);
    } else {
      non_normalized.push_back(a);
      raw_patterns.push_back(a.content);
    }
  }
  raw_matcher_ = AddedTokenMatcher(non_normalized, raw_patterns);
  normalized_matcher_ = AddedTokenMatcher(normalized, norm_patterns);
}

void HfTokenizer::load_model(const json& model) {
  std::string type = model.contains("type") && model["type"].is_string() ? model["type"].get<std::string>()
                     : model.contains("merges")                           ? "BPE"
                                                                          : "unknown";
  if (type != "BPE") {
    bad(file_, "model.type '" + type + "' is not supported (only BPE tokenizers; WordPiece, Unigram and WordLevel "
               "models are not implemented)");
  }
  const json& vocab = need(model, "vocab", file_, "model");
  if (!vocab.is_object()) bad(file_, "model.vocab must be an object {token: id}");
  vocab_.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0) {
      bad(file_, "model.vocab['" + it.key() + "'] must be a non-negative integer");
    }
    vocab_[it.key()] = it.value().get<int32_t>();
  }
  byte_fallback_ = get_bool(model, "byte_fallback", false);
  fuse_unk_ = get_bool(model, "fuse_unk", false);
  ignore_merges_ = get_bool(model, "ignore_merges", false);
  if (model.contains("dropout") && model["dropout"].is_number() && model["dropout"].get<double>() > 0) {
    bad(file_, "model.dropout > 0 is not supported (training-time BPE dropout)");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty()) {
      bad(file_, std::string("model.") + key + " is not supported");
    }
  }
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    auto it = vocab_.find(model["unk_token"].get<std::string>());
    if (it == vocab_.end()) bad(file_, "model.unk_token is not in model.vocab");
    unk_id_ = it->second;
  }
  fallback_byte_.fill(-1);
  if (byte_fallback_) {
    static constexpr char kHex[] = "0123456789ABCDEF";
    for (int b = 0; b < 256; ++b) {
      std::string name = std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">";
      auto it = vocab_.find(name);
      if (it != vocab_.end()) fallback_byte_[b] = it->second;
    }
  }
  byte_symbol_.fill(-1);
  if (byte_level_) {
    for (int b = 0; b < 256; ++b) {
      std::string c;
      u::append_utf8(c, byte_char_[b]);
      auto it = vocab_.find(c);
      if (it != vocab_.end()) byte_symbol_[b] = it->second;
    }
    // The vocabulary keyed by raw bytes, so words never need the alphabet transform.
    raw_vocab_.reserve(vocab_.size());
    for (const auto& kv : vocab_) {
      std::string raw;
      bool ok = true;
      for (size_t i = 0; i < kv.first.size() && ok;) {
        size_t len;
        uint32_t cp = u::decode_utf8(kv.first.data() + i, kv.first.size() - i, &len);
        auto it = char_byte_.find(cp);
        if (it == char_byte_.end()) ok = false; else raw.push_back(static_cast<char>(it->second));
        i += len;
      }
      if (ok) raw_vocab_.emplace(std::move(raw), kv.second);
    }
  }
  const json& merges = need(model, "merges", file_, "model");
  if (!merges.is_array()) bad(file_, "model.merges must be a list");
  merges_.reserve(merges.size() * 2);
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const json& m = merges[rank];
    std::string left, right;
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      size_t space = s.find(' ', 1);
      if (space == std::string::npos) bad(file_, "model.merges[" + std::to_string(rank) + "] is not 'left right'");
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      bad(file_, "model.merges[" + std::to_string(rank) + "] must be 'left right' or [left, right]");
    }
    auto l = vocab_.find(left), r = vocab_.find(right), lr = vocab_.find(left + right);
    if (l == vocab_.end() || r == vocab_.end() || lr == vocab_.end()) {
      bad(file_, "model.merges[" + std::to_string(rank) + "] uses a token missing from the vocab");
    }
    uint64_t key = (static_cast<uint64_t>(l->second) << 32) | static_cast<uint32_t>(r->second);
    merges_[key] = {static_cast<uint32_t>(rank), lr->second};
  }
}

void HfTokenizer::load_normalizer(const json& j, std::vector<Normalizer>& out) {
  std::string type = get_string(j, "type", file_, "normalizer");
  if (type == "Sequence") {
    for (const json& n : need(j, "normalizers", file_, "normalizer")) load_normalizer(n, out);
  } else if (type == "Prepend") {
    Normalizer n;
    n.kind = Normalizer::kPrepend;
    n.a = get_string(j, "prepend", file_, "normalizer");
    out.push_back(std::move(n));
  } else if (type == "Replace") {
    Normalizer n;
    n.kind = Normalizer::kReplace;
    const json& pattern = need(j, "pattern", file_, "normalizer Replace");
    if (pattern.contains("String")) {
      n.a = pattern["String"].get<std::string>();
    } else if (pattern.contains("Regex")) {
      n.pattern.emplace(pattern["Regex"].get<std::string>());
    } else {
      bad(file_, "normalizer Replace pattern must be {String} or {Regex}");
    }
    n.b = get_string(j, "content", file_, "normalizer Replace");
    out.push_back(std::move(n));
  } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    Normalizer n;
    n.kind = Normalizer::kUnicode;
    n.form = std::make_shared<u::UnicodeNormalization>(type == "NFC" ? u::NormalForm::kNFC : type == "NFD" ? u::NormalForm::kNFD
             : type == "NFKC" ? u::NormalForm::kNFKC : u::NormalForm::kNFKD);
    out.push_back(std::move(n));
  } else if (type == "Strip") {
    Normalizer n;
    n.kind = Normalizer::kStrip;
    n.strip_left = get_bool(j, "strip_left", true);
    n.strip_right = get_bool(j, "strip_right", true);
    out.push_back(std::move(n));
  } else {
    bad(file_, "normalizer type '" + type + "' is not supported");
  }
}

void HfTokenizer::load_pre_tokenizer(const json& j) {
  std::string type = get_string(j, "type", file_, "pre_tokenizer");
  if (byte_level_) bad(file_, "pre_tokenizer " + type + " after ByteLevel is not supported");
  if (type == "Sequence") {
    for (const json& p : need(j, "pretokenizers", file_, "pre_tokenizer")) load_pre_tokenizer(p);
    return;
  }
  PreTokenizer p{};
  if (type == "Split") {
    p.kind = PreTokenizer::kSplit;
    const json& pattern = need(j, "pattern", file_, "pre_tokenizer Split");
    if (pattern.contains("Regex")) {
      p.regex.emplace(pattern["Regex"].get<std::string>());
    } else if (pattern.contains("String")) {
      p.literal = pattern["String"].get<std::string>();
    } else {
      bad(file_, "pre_tokenizer Split pattern must be {Regex} or {String}");
    }
    std::string behavior = get_string(j, "behavior", file_, "pre_tokenizer Split");
    if (behavior == "Removed") p.behavior = Behavior::kRemoved;
    else if (behavior == "Isolated") p.behavior = Behavior::kIsolated;
    else if (behavior == "MergedWithPrevious") p.behavior = Behavior::kMergedWithPrevious;
    else if (behavior == "MergedWithNext") p.behavior = Behavior::kMergedWithNext;
    else if (behavior == "Contiguous") p.behavior = Behavior::kContiguous;
    else bad(file_, "pre_tokenizer Split behavior '" + behavior + "' is unknown");
    p.invert = get_bool(j, "invert", false);
  } else if (type == "Digits") {
    p.kind = PreTokenizer::kDigits;
    p.flag = get_bool(j, "individual_digits", false);
  } else if (type == "ByteLevel") {
    p.kind = PreTokenizer::kByteLevel;
    p.flag = get_bool(j, "add_prefix_space", true);
    if (get_bool(j, "use_regex", true)) {
      p.regex.emplace("'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+");
    }
    byte_level_ = true;
  } else if (type == "Metaspace") {
    p.kind = PreTokenizer::kMetaspace;
    p.replacement = get_string(j, "replacement", file_, "pre_tokenizer Metaspace");
    p.flag = get_bool(j, "split", true);
    std::string scheme = j.contains("prepend_scheme") && j["prepend_scheme"].is_string()
                             ? j["prepend_scheme"].get<std::string>() : "always";
    p.prepend = scheme == "first" ? PreTokenizer::kFirst : scheme == "never" ? PreTokenizer::kNever
                                                                             : PreTokenizer::kAlways;
    if (j.contains("add_prefix_space") && j["add_prefix_space"].is_boolean() && !j["add_prefix_space"].get<bool>()) {
      p.prepend = PreTokenizer::kNever;
    }
  } else if (type == "Whitespace") {
    // \w+|[^\w\s]+ kept, the rest (whitespace) removed. \w spelled out as Unicode word characters
    // (letters, marks, Nd, Nl, connector punctuation): PCRE2's \w is letters, numbers and '_'.
    p.kind = PreTokenizer::kSplit;
    p.regex.emplace("[\\p{L}\\p{M}\\p{Nd}\\p{Nl}\\p{Pc}]+|[^\\p{L}\\p{M}\\p{Nd}\\p{Nl}\\p{Pc}\\s]+");
    p.behavior = Behavior::kRemoved;
    p.invert = true;
  } else if (type == "WhitespaceSplit") {
    p.kind = PreTokenizer::kWhitespaceSplit;
  } else {
    bad(file_, "pre_tokenizer type '" + type + "' is not supported");
  }
  pre_tokenizers_.push_back(std::move(p));
}

void HfTokenizer::load_decoder(const json& j) {
  std::string type = get_string(j, "type", file_, "decoder");
  if (type == "Sequence") {
    for (const json& d : need(j, "decoders", file_, "decoder")) load_decoder(d);
    return;
  }
  Decoder d{};
  if (type == "Replace") {
    d.kind = Decoder::kReplace;
    const json& pattern = need(j, "pattern", file_, "decoder Replace");
    if (!pattern.contains("String")) bad(file_, "decoder Replace supports only a String pattern");
    d.a = pattern["String"].get<std::string>();
    d.b = get_string(j, "content", file_, "decoder Replace");
  } else if (type == "ByteFallback") {
    d.kind = Decoder::kByteFallback;
  } else if (type == "Fuse") {
    d.kind = Decoder::kFuse;
  } else if (type == "Strip") {
    d.kind = Decoder::kStrip;
    std::string c = get_string(j, "content", file_, "decoder Strip");
    size_t len;
    d.strip_char = c.empty() ? ' ' : u::decode_utf8(c.data(), c.size(), &len);
    d.start = j.value("start", 0);
    d.stop = j.value("stop", 0);
  } else if (type == "ByteLevel") {
    d.kind = Decoder::kByteLevel;
  } else if (type == "Metaspace") {
    d.kind = Decoder::kMetaspace;
    d.a = get_string(j, "replacement", file_, "decoder Metaspace");
    std::string scheme = j.contains("prepend_scheme") && j["prepend_scheme"].is_string()
                             ? j["prepend_scheme"].get<std::string>() : "always";
    d.prepend = scheme != "never";
    if (j.contains("add_prefix_space") && j["add_prefix_space"].is_boolean() && !j["add_prefix_space"].get<bool>()) {
      d.prepend = false;
    }
  } else {
    bad(file_, "decoder type '" + type + "' is not supported");
  }
  decoders_.push_back(std::move(d));
}

void HfTokenizer::load_post_processor(const json& j) {
  std::string type = j.value("type", "");
  if (type == "Sequence" && j.contains("processors")) {
    for (const json& p : j["processors"]) load_post_processor(p);
  } else if (type == "TemplateProcessing" && j.contains("single") && j["single"].is_array()) {
    const json& single = j["single"];
    // A SpecialToken before the sequence means BOS is added, one after it means EOS is added.
    bool before = true;
    for (const json& item : single) {
      if (item.contains("Sequence")) {
        before = false;
      } else if (item.contains("SpecialToken")) {
        (before ? add_bos_ : add_eos_) = true;
      }
    }
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    add_bos_ = add_eos_ = true;
  }
}

std::optional<int32_t> HfTokenizer::token_to_id(std::string_view token) const {
  std::string key(token);
  auto a = added_by_content_.find(key);
  if (a != added_by_content_.end()) return a->second;
  auto v = vocab_.find(key);
  if (v != vocab_.end()) return v->second;
  return std::nullopt;
}

std::string HfTokenizer::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size()) {
    throw std::out_of_range("token id " + std::to_string(id) + " out of range for " + file_);
  }
  return id_to_token_[id];
}

// ---------------------------------------------------------------- encode
void HfTokenizer::pre_tokenize(const Piece& whole, std::deque<NormText>& storage, std::vector<Piece>& out) const {
  std::vector<Piece> cur{whole}, next;
  std::vector<std::pair<size_t, size_t>> matches, kept;
  std::vector<std::pair<std::pair<size_t, size_t>, bool>> events;

  // Splits each piece by the byte ranges `ranges_of(piece)` returns (relative to the piece).
  auto split_pieces = [&](auto&& events_of, Behavior behavior) {
    next.clear();
    for (const Piece& p : cur) {
      events.clear();
      events_of(p);
      apply_behavior(events, behavior, kept);
      for (const auto& k : kept) {
        if (k.second > k.first) next.push_back(Piece{p.t, p.a + k.first, p.a + k.second});
      }
    }
    cur.swap(next);
  };
  // Events from code point matches: alternating non-match / match ranges covering the piece.
  auto regex_events = [&](const Regex& re, bool invert) {
    return [&re, invert, &matches, &events](const Piece& p) {
      re.find_all(p.view(), matches);
      size_t prev = 0;
      for (const auto& m : matches) {
        size_t b = m.first, e = m.second;
        if (prev != b) events.push_back({{prev, b}, invert});
        events.push_back({{b, e}, !invert});
        prev = e;
      }
      if (prev != p.b - p.a) events.push_back({{prev, p.b - p.a}, invert});
    };
  };
  auto char_events = [&](auto&& pred) {
    return [pred, &events](const Piece& p) {
      std::string_view s = p.view();
      size_t last = 0;
      for (size_t i = 0; i < s.size();) {
        size_t len;
        uint32_t cp = u::decode_utf8(s.data() + i, s.size() - i, &len);
        if (pred(cp)) {
          if (last < i) events.push_back({{last, i}, false});
          events.push_back({{i, i + len}, true});
          last = i + len;
        }
        i += len;
      }
      if (last < s.size()) events.push_back({{last, s.size()}, false});
    };
  };

  for (const PreTokenizer& pt : pre_tokenizers_) {
    switch (pt.kind) {
      case PreTokenizer::kSplit:
        if (pt.regex) {
          split_pieces(regex_events(*pt.regex, pt.invert), pt.behavior);
        } else {
          const std::string& lit = pt.literal;
          bool invert = pt.invert;
          split_pieces([&lit, invert, &events](const Piece& p) {
            std::string_view s = p.view();
            size_t prev = 0;
            for (size_t f; !lit.empty() && (f = s.find(lit, prev)) != std::string_view::npos; prev = f + lit.size()) {
              if (prev != f) events.push_back({{prev, f}, invert});
              events.push_back({{f, f + lit.size()}, !invert});
            }
            if (prev != s.size()) events.push_back({{prev, s.size()}, invert});
          }, pt.behavior);
        }
        break;
      case PreTokenizer::kDigits:
        split_pieces(char_events([](uint32_t cp) { return u::is_number(cp); }),
                     pt.flag ? Behavior::kIsolated : Behavior::kContiguous);
        break;
      case PreTokenizer::kWhitespaceSplit:
        split_pieces(char_events([](uint32_t cp) { return u::is_white_space(cp); }), Behavior::kRemoved);
        break;
      case PreTokenizer::kByteLevel:
        if (pt.flag) {
          for (Piece& p : cur) {
            if (p.view().empty() || p.view()[0] != ' ') {
              storage.push_back(slice(*p.t, p.a, p.b));
              splice(storage.back(), 0, 0, " ");
              p = Piece{&storage.back(), 0, storage.back().s.size()};
            }
          }
        }
        if (pt.regex) split_pieces(regex_events(*pt.regex, false), Behavior::kIsolated);
        break;
      case PreTokenizer::kMetaspace: {
        for (Piece& p : cur) {
          NormText t = slice(*p.t, p.a, p.b);
          replace_all(t, " ", pt.replacement);
          bool starts = t.s.compare(0, pt.replacement.size(), pt.replacement) == 0;
          if (!starts && (pt.prepend == PreTokenizer::kAlways ||
                          (pt.prepend == PreTokenizer::kFirst && p.t->begin_of(p.a) == 0))) {
            splice(t, 0, 0, pt.replacement);
          }
          storage.push_back(std::move(t));
          p = Piece{&storage.back(), 0, storage.back().s.size()};
        }
        if (pt.flag) {
          const std::string& rep = pt.replacement;
          split_pieces([&rep, &events](const Piece& p) {
            std::string_view s = p.view();
            size_t prev = 0;
            for (size_t f; (f = s.find(rep, prev)) != std::string_view::npos; prev = f + rep.size()) {
              if (prev != f) events.push_back({{prev, f}, false});
              events.push_back({{f, f + rep.size()}, true});
            }
            if (prev != s.size()) events.push_back({{prev, s.size()}, false});
          }, Behavior::kMergedWithNext);
        }
        break;
      }
    }
  }
  out.insert(out.end(), cur.begin(), cur.end());
}

void HfTokenizer::merge_word(std::string_view word, WordTokens& out) const {
  std::vector<Symbol>& sym = out;
  sym.clear();
  // Pending unknown run (fused when fuse_unk): begin/end bytes.
  int64_t unk_begin = -1, unk_end = -1;
  auto push = [&sym](int32_t id, size_t b, size_t e) {
    int32_t n = static_cast<int32_t>(sym.size());
    sym.push_back(Symbol{id, n - 1, n + 1, static_cast<uint32_t>(b), static_cast<uint32_t>(e)});
  };
  auto flush_unk = [&]() {
    if (unk_begin >= 0) push(unk_id_, unk_begin, unk_end);
    unk_begin = -1;
  };
  std::string key;
  for (size_t i = 0; i < word.size();) {
    size_t len;
    int32_t id = -1;
    if (byte_level_) {
      len = 1;
      id = byte_symbol_[static_cast<unsigned char>(word[i])];
    } else {
      u::decode_utf8(word.data() + i, word.size() - i, &len);
      key.assign(word.data() + i, len);
      auto it = vocab_.find(key);
      if (it != vocab_.end()) id = it->second;
    }
    if (id >= 0) {
      flush_unk();
      push(id, i, i + len);
    } else {
      bool done = false;
      if (byte_fallback_) {
        // The char's bytes as <0xNN> tokens, but only if every one exists.
        std::string bytes;
        if (byte_level_) u::append_utf8(bytes, byte_char_[static_cast<unsigned char>(word[i])]);
        else bytes.assign(word.data() + i, len);
        bool all = std::all_of(bytes.begin(), bytes.end(),
                               [&](char c) { return fallback_byte_[static_cast<unsigned char>(c)] >= 0; });
        if (all) {
          flush_unk();
          for (size_t k = 0; k < bytes.size(); ++k) {
            // Byte tokens of one char: each covers its own input byte when the char is unchanged.
            size_t b = byte_level_ ? i : std::min(i + k, i + len - 1);
            size_t e = byte_level_ ? i + len : b + 1;
            push(fallback_byte_[static_cast<unsigned char>(bytes[k])], b, e);
          }
          done = true;
        }
      }
      if (!done && unk_id_ >= 0) {
        if (unk_begin >= 0 && fuse_unk_) {
          unk_end = static_cast<int64_t>(i + len);
        } else {
          flush_unk();
          unk_begin = static_cast<int64_t>(i);
          unk_end = static_cast<int64_t>(i + len);
        }
      }
      // Neither byte fallback nor unk: the character is dropped, as in `tokenizers`.
    }
    i += len;
  }
  flush_unk();
  if (sym.empty()) return;
  sym.back().next = -1;

  // Merge loop: lowest rank first, leftmost on ties; stale queue entries are skipped.
  struct Merge {
    uint32_t rank;
    uint32_t pos;
    int32_t new_id;
    bool operator<(const Merge& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  auto lookup = [this](int32_t a, int32_t b) -> const std::pair<uint32_t, int32_t>* {
    auto it = merges_.find((static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b));
    return it == merges_.end() ? nullptr : &it->second;
  };
  std::vector<Merge> heap;
  heap.reserve(sym.size());
  for (size_t k = 0; k + 1 < sym.size(); ++k) {
    if (auto m = lookup(sym[k].id, sym[k + 1].id)) heap.push_back({m->first, static_cast<uint32_t>(k), m->second});
  }
  std::make_heap(heap.begin(), heap.end());
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    Merge top = heap.back();
    heap.pop_back();
    Symbol& left = sym[top.pos];
    if (left.end == left.begin && left.id == -2) continue;  // removed
    if (left.next < 0) continue;
    Symbol& right = sym[left.next];
    auto m = lookup(left.id, right.id);
    if (!m || m->second != top.new_id) continue;
    left.id = top.new_id;
    left.end = right.end;
    int32_t right_next = right.next;
    right.id = -2;
    right.end = right.begin;
    left.next = right_next;
    if (right_next >= 0) sym[right_next].prev = static_cast<int32_t>(top.pos);
    if (left.prev >= 0) {
      if (auto pm = lookup(sym[left.prev].id, left.id)) {
        heap.push_back({pm->first, static_cast<uint32_t>(left.prev), pm->second});
        std::push_heap(heap.begin(), heap.end());
      }
    }
    if (left.next >= 0) {
      if (auto nm = lookup(left.id, sym[left.next].id)) {
        heap.push_back({nm->first, top.pos, nm->second});
        std::push_heap(heap.begin(), heap.end());
      }
    }
  }
  // Compact the surviving symbols in order.
  size_t w = 0;
  for (int32_t k = 0; k >= 0 && static_cast<size_t>(k) < sym.size(); k = sym[k].next) sym[w++] = sym[k];
  sym.resize(w);
}

void HfTokenizer::bpe_word(std::string_view word, WordTokens& out) const {
  if (ignore_merges_) {
    const auto& table = byte_level_ ? raw_vocab_ : vocab_;
    auto it = table.find(std::string(word));
    if (it != table.end()) {
      out.assign(1, Symbol{it->second, -1, -1, 0, static_cast<uint32_t>(word.size())});
      return;
    }
  }
  bool cacheable = word.size() < kCacheMaxWord;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto it = cache_.find(std::string(word));
    if (it != cache_.end()) {
      out = it->second;
      return;
    }
  }
  merge_word(word, out);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() >= kCacheCapacity) cache_.clear();  // bounded memory; a fresh cache refills fast
    cache_.emplace(std::string(word), out);
  }
}

void HfTokenizer::emit_segment(const NormText& seg, Encoding& enc) const {
  std::deque<NormText> storage;
  std::vector<Piece> pieces;
  pre_tokenize(Piece{&seg, 0, seg.s.size()}, storage, pieces);
  WordTokens word;
  for (const Piece& p : pieces) {
    bpe_word(p.view(), word);
    for (const Symbol& s : word) {
      enc.ids.push_back(s.id);
      size_t b = p.t->begin_of(p.a + s.begin);
      size_t e = s.end > s.begin ? p.t->end_of_last(p.a + s.end - 1) : b;
      enc.offsets.emplace_back(b, std::max(b, e));
    }
  }
}

Encoding HfTokenizer::encode(std::string_view text) const {
  Encoding enc;
  std::vector<Split> raw_splits, norm_splits;
  raw_matcher_.split(text, raw_splits);
  for (const Split& rs : raw_splits) {
    if (rs.id >= 0) {
      enc.ids.push_back(rs.id);
      enc.offsets.emplace_back(rs.begin, rs.end);
      continue;
    }
    NormText seg;
    seg.s.assign(text.data() + rs.begin, rs.end - rs.begin);
    seg.base = rs.begin;
    normalize(seg);
    if (seg.s.empty()) continue;
    if (normalized_matcher_.empty()) {
      emit_segment(seg, enc);
      continue;
    }
    normalized_matcher_.split(seg.s, norm_splits);
    for (const Split& ns : norm_splits) {
      if (ns.id >= 0) {
        enc.ids.push_back(ns.id);
        enc.offsets.emplace_back(seg.begin_of(ns.begin), seg.end_of_last(ns.end - 1));
      } else {
        emit_segment(slice(seg, ns.begin, ns.end), enc);
      }
    }
  }
  return enc;
}

// ---------------------------------------------------------------- decode
std::string HfTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    // Unknown ids are dropped, as `tokenizers` does (models may have padded embedding rows).
    if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size()) continue;
    if (skip_special_tokens && special_[id]) continue;
    if (id_to_token_[id].empty() && added_index_[id] < 0 && !vocab_.count("")) continue;
    auto form = decode_form_.find(id);
    tokens.push_back(form == decode_form_.end() ? id_to_token_[id] : form->second);
  }
  if (!has_decoder_) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  for (const Decoder& d : decoders_) {
    switch (d.kind) {
      case Decoder::kReplace:
        for (auto& t : tokens) {
          if (d.a.empty()) continue;
          std::string r;
          for (size_t i = 0; i < t.size();) {
            if (t.compare(i, d.a.size(), d.a) == 0) r += d.b, i += d.a.size();
            else r.push_back(t[i++]);
          }
          t.swap(r);
        }
        break;
      case Decoder::kByteFallback: {
        std::vector<std::string> out;
        std::string bytes;
        auto flush = [&]() {
          if (bytes.empty()) return;
          if (u::is_valid_utf8(bytes)) {
            out.push_back(bytes);
          } else {
            for (size_t k = 0; k < bytes.size(); ++k) out.push_back("\xEF\xBF\xBD");
          }
          bytes.clear();
        };
        for (auto& t : tokens) {
          if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && isxdigit(static_cast<unsigned char>(t[3])) &&
              isxdigit(static_cast<unsigned char>(t[4]))) {
            bytes.push_back(static_cast<char>(std::stoi(t.substr(3, 2), nullptr, 16)));
          } else {
            flush();
            out.push_back(std::move(t));
          }
        }
        flush();
        tokens.swap(out);
        break;
      }
      case Decoder::kFuse: {
        std::string all;
        for (auto& t : tokens) all += t;
        tokens.assign(1, std::move(all));
        break;
      }
      case Decoder::kStrip:
        for (auto& t : tokens) {
          std::vector<uint32_t> cps;
          std::vector<size_t> byte_pos;
          code_points(t, cps, byte_pos);
          size_t n = cps.size(), lo = 0, hi = n;
          for (size_t k = 0; k < d.start && lo < n && cps[lo] == d.strip_char; ++k) ++lo;
          for (size_t k = 0; k < d.stop && hi > lo && cps[hi - 1] == d.strip_char; ++k) --hi;
          t = t.substr(byte_pos[lo], byte_pos[hi] - byte_pos[lo]);
        }
        break;
      case Decoder::kByteLevel: {
        // Each token maps char -> byte through the alphabet; a token with any other char keeps its bytes.
        std::string bytes;
        for (const auto& t : tokens) {
          std::string mapped;
          bool ok = true;
          for (size_t i = 0; i < t.size() && ok;) {
            size_t len;
            uint32_t cp = u::decode_utf8(t.data() + i, t.size() - i, &len);
            auto it = char_byte_.find(cp);
            if (it == char_byte_.end()) ok = false; else mapped.push_back(static_cast<char>(it->second));
            i += len;
          }
          bytes += ok ? mapped : t;
        }
        tokens.assign(1, u::utf8_lossy(bytes));
        break;
      }
      case Decoder::kMetaspace:
        for (size_t i = 0; i < tokens.size(); ++i) {
          std::string r;
          const std::string& t = tokens[i];
          for (size_t k = 0; k < t.size();) {
            if (t.compare(k, d.a.size(), d.a) == 0) {
              if (!(i == 0 && d.prepend)) r.push_back(' ');
              k += d.a.size();
            } else {
              r.push_back(t[k++]);
            }
          }
          tokens[i].swap(r);
        }
        break;
    }
  }
  std::string out;
  for (auto& t : tokens) out += t;
  return out;
}

}  // namespace

json read_tokenizer_json(const std::filesystem::path& tokenizer_json) {
  const std::string file = tokenizer_json.string();
  std::ifstream in(tokenizer_json, std::ios::binary);
  if (!in) bad(file, "cannot open");
  json root;
  try {
    root = json::parse(in);
  } catch (const json::exception& e) {
    bad(file, std::string("malformed JSON: ") + e.what());
  }
  if (!root.is_object()) bad(file, "top level must be an object");
  return root;
}

std::unique_ptr<TokenizerBase> load_hf_tokenizer(const json& root, const std::string& file) {
  return std::make_unique<HfTokenizer>(root, file);
}

}  // namespace sft::data::detail
