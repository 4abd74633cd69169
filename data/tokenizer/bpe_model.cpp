// data/tokenizer/bpe_model.cpp: loading and running the BPE model of data/tokenizer/bpe_model.h. The
// merge loop keeps the word as a linked list of symbols and a heap of candidate merges (lowest rank
// first, leftmost on ties); candidates made stale by an earlier merge are skipped when popped.
#include "data/tokenizer/bpe_model.h"

#include <algorithm>

#include "data/tokenizer/unicode.h"

namespace sft::data::tokenizer {
namespace {

constexpr int32_t kNoSymbol = -1;  // no neighbour in the symbol list

struct Symbol {
  BpeToken token;
  int32_t prev, next;          // neighbours in the list, kNoSymbol at the ends
  bool merged_away = false;    // merged into its left neighbour
};

struct Candidate {
  uint32_t rank;
  uint32_t left;  // index of the pair's left symbol
  int32_t merged_id;
  // std::push_heap keeps the largest on top: the largest is the lowest rank, then the leftmost.
  bool operator<(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
};

std::string byte_token_name(int byte) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  return std::string("<0x") + kHex[byte >> 4] + kHex[byte & 15] + ">";
}

}  // namespace

BpeModel::BpeModel(const json& model, bool byte_level, const std::string& file) : byte_level_(byte_level) {
  std::string type = model.contains("type") && model["type"].is_string() ? model["type"].get<std::string>()
                     : model.contains("merges")                           ? "BPE"
                                                                          : "unknown";
  if (type != "BPE") {
    bad_json(file, "model.type '" + type + "' is not supported (only BPE tokenizers; WordPiece, Unigram and WordLevel "
                   "models are not implemented)");
  }
  const json& vocab = need(model, "vocab", file, "model");
  if (!vocab.is_object()) bad_json(file, "model.vocab must be an object {token: id}");
  vocab_.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0) {
      bad_json(file, "model.vocab['" + it.key() + "'] must be a non-negative integer");
    }
    vocab_[it.key()] = it.value().get<int32_t>();
  }
  byte_fallback_ = get_bool(model, "byte_fallback", false);
  fuse_unk_ = get_bool(model, "fuse_unk", false);
  ignore_merges_ = get_bool(model, "ignore_merges", false);
  if (model.contains("dropout") && model["dropout"].is_number() && model["dropout"].get<double>() > 0) {
    bad_json(file, "model.dropout > 0 is not supported (training-time BPE dropout)");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (!get_string_or(model, key, "").empty()) bad_json(file, std::string("model.") + key + " is not supported");
  }
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    unk_id_ = token_to_id(model["unk_token"].get<std::string>());
    if (!unk_id_) bad_json(file, "model.unk_token is not in model.vocab");
  }
  if (byte_fallback_) {
    for (int b = 0; b < 256; ++b) fallback_byte_id_[b] = token_to_id(byte_token_name(b));
  }
  if (byte_level_) {
    for (int b = 0; b < 256; ++b) byte_symbol_id_[b] = token_to_id(alphabet_.symbol_of(static_cast<unsigned char>(b)));
    // The vocabulary keyed by raw bytes, so words never need the alphabet transform.
    vocab_by_bytes_.reserve(vocab_.size());
    std::string bytes;
    for (const auto& [token, id] : vocab_) {
      if (alphabet_.to_bytes(token, bytes)) vocab_by_bytes_.emplace(bytes, id);
    }
  }
  const json& merges = need(model, "merges", file, "model");
  if (!merges.is_array()) bad_json(file, "model.merges must be a list");
  merges_.reserve(merges.size() * 2);
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const json& m = merges[rank];
    const std::string where = "model.merges[" + std::to_string(rank) + "]";
    std::string left, right;
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      size_t space = s.find(' ', 1);
      if (space == std::string::npos) bad_json(file, where + " is not 'left right'");
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      bad_json(file, where + " must be 'left right' or [left, right]");
    }
    auto left_id = token_to_id(left), right_id = token_to_id(right), merged_id = token_to_id(left + right);
    if (!left_id || !right_id || !merged_id) bad_json(file, where + " uses a token missing from the vocab");
    merges_[pair_key(*left_id, *right_id)] = Merge{static_cast<uint32_t>(rank), *merged_id};
  }
}

std::optional<int32_t> BpeModel::token_to_id(const std::string& token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const BpeModel::Merge* BpeModel::find_merge(int32_t left, int32_t right) const {
  auto it = merges_.find(pair_key(left, right));
  return it == merges_.end() ? nullptr : &it->second;
}

void BpeModel::initial_tokens(std::string_view word, std::vector<BpeToken>& out) const {
  out.clear();
  // Unknown characters not yet emitted (one token for the whole run with fuse_unk).
  std::optional<BpeToken> pending_unk;
  auto flush_unk = [&]() {
    if (pending_unk) out.push_back(*pending_unk);
    pending_unk.reset();
  };
  auto push = [&](int32_t id, size_t begin, size_t end) {
    flush_unk();
    out.push_back(BpeToken{id, static_cast<uint32_t>(begin), static_cast<uint32_t>(end)});
  };
  std::string key;
  for (size_t i = 0; i < word.size();) {
    size_t length = 1;
    std::optional<int32_t> id;
    if (byte_level_) {
      id = byte_symbol_id_[static_cast<unsigned char>(word[i])];
    } else {
      decode_utf8(word.data() + i, word.size() - i, &length);
      key.assign(word.data() + i, length);
      id = token_to_id(key);
    }
    if (id) {
      push(*id, i, i + length);
      i += length;
      continue;
    }
    if (byte_fallback_) {
      // The character's bytes as <0xNN> tokens, but only if every one exists.
      std::string bytes = byte_level_ ? alphabet_.symbol_of(static_cast<unsigned char>(word[i]))
                                      : std::string(word.substr(i, length));
      bool all = std::all_of(bytes.begin(), bytes.end(),
                             [&](char c) { return fallback_byte_id_[static_cast<unsigned char>(c)].has_value(); });
      if (all) {
        for (size_t k = 0; k < bytes.size(); ++k) {
          // Byte tokens of one character: each covers its own input byte when the character is unchanged.
          size_t begin = byte_level_ ? i : std::min(i + k, i + length - 1);
          size_t end = byte_level_ ? i + length : begin + 1;
          push(*fallback_byte_id_[static_cast<unsigned char>(bytes[k])], begin, end);
        }
        i += length;
        continue;
      }
    }
    if (unk_id_) {
      if (pending_unk && fuse_unk_) {
        pending_unk->end = static_cast<uint32_t>(i + length);
      } else {
        flush_unk();
        pending_unk = BpeToken{*unk_id_, static_cast<uint32_t>(i), static_cast<uint32_t>(i + length)};
      }
    }
    // Neither byte fallback nor unk: the character is dropped, as in `tokenizers`.
    i += length;
  }
  flush_unk();
}

void BpeModel::merge(std::vector<BpeToken>& tokens) const {
  if (tokens.size() < 2) return;
  const auto n = static_cast<int32_t>(tokens.size());
  std::vector<Symbol> symbols(tokens.size());
  for (int32_t k = 0; k < n; ++k) symbols[k] = Symbol{tokens[k], k - 1, k + 1 < n ? k + 1 : kNoSymbol};
  std::vector<Candidate> heap;
  heap.reserve(tokens.size());
  auto push_candidate = [&](int32_t left) {
    if (const Merge* m = find_merge(symbols[left].token.id, symbols[symbols[left].next].token.id)) {
      heap.push_back(Candidate{m->rank, static_cast<uint32_t>(left), m->merged_id});
      std::push_heap(heap.begin(), heap.end());
    }
  };
  for (int32_t k = 0; k + 1 < n; ++k) {
    if (const Merge* m = find_merge(symbols[k].token.id, symbols[k + 1].token.id)) {
      heap.push_back(Candidate{m->rank, static_cast<uint32_t>(k), m->merged_id});
    }
  }
  std::make_heap(heap.begin(), heap.end());
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = symbols[top.left];
    if (left.merged_away || left.next == kNoSymbol) continue;
    Symbol& right = symbols[left.next];
    const Merge* m = find_merge(left.token.id, right.token.id);
    if (!m || m->merged_id != top.merged_id) continue;  // stale: a neighbour changed since it was queued
    left.token.id = top.merged_id;
    left.token.end = right.token.end;
    right.merged_away = true;
    left.next = right.next;
    if (left.next != kNoSymbol) symbols[left.next].prev = static_cast<int32_t>(top.left);
    if (left.prev != kNoSymbol) push_candidate(left.prev);
    if (left.next != kNoSymbol) push_candidate(static_cast<int32_t>(top.left));
  }
  tokens.clear();
  for (int32_t k = 0; k != kNoSymbol; k = symbols[k].next) tokens.push_back(symbols[k].token);
}

void BpeModel::tokenize(std::string_view word, std::vector<BpeToken>& out) const {
  if (ignore_merges_) {
    const auto& table = byte_level_ ? vocab_by_bytes_ : vocab_;
    auto it = table.find(std::string(word));
    if (it != table.end()) {
      out.assign(1, BpeToken{it->second, 0, static_cast<uint32_t>(word.size())});
      return;
    }
  }
  const bool cacheable = word.size() < kCacheMaxWord;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto it = cache_.find(std::string(word));
    if (it != cache_.end()) {
      out = it->second;
      return;
    }
  }
  initial_tokens(word, out);
  merge(out);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() >= kCacheCapacity) cache_.clear();  // bounded memory; a fresh cache refills fast
    cache_.emplace(std::string(word), out);
  }
}

}  // namespace sft::data::tokenizer
