// data/tokenizer/bpe_model.h: tokenizer.json's BPE model (HF `tokenizers` models::bpe): the vocabulary,
// the ranked merges, byte-level or SentencePiece-style (byte_fallback, unk, fuse_unk) alphabets, and a
// per-word cache. It turns one pre-token word into tokens that each know the word bytes they cover.
#pragma once
#include <array>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "data/tokenizer/byte_level.h"
#include "data/tokenizer/json_fields.h"

namespace sft::data::tokenizer {

struct BpeToken {
  int32_t id;
  uint32_t begin, end;  // bytes [begin, end) of the word
};

class BpeModel {
 public:
  // `model` is tokenizer.json's "model"; `byte_level` says whether the pre-tokenizer is ByteLevel,
  // which makes the alphabet GPT-2's bytes. InputError naming `file` on anything unsupported.
  BpeModel(const json& model, bool byte_level, const std::string& file);
  BpeModel(const BpeModel&) = delete;
  BpeModel& operator=(const BpeModel&) = delete;

  // The tokens of one word, left to right. Thread-safe.
  void tokenize(std::string_view word, std::vector<BpeToken>& out) const;

  const std::unordered_map<std::string, int32_t>& vocab() const { return vocab_; }
  std::optional<int32_t> token_to_id(const std::string& token) const;

 private:
  struct Merge {
    uint32_t rank;       // lower merges first
    int32_t merged_id;   // the token the pair becomes
  };
  // Merges keyed by (left id << 32 | right id).
  static uint64_t pair_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }
  const Merge* find_merge(int32_t left, int32_t right) const;
  // The word's characters as initial tokens (byte fallback and unk applied), then merged.
  void initial_tokens(std::string_view word, std::vector<BpeToken>& out) const;
  void merge(std::vector<BpeToken>& tokens) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::unordered_map<std::string, int32_t> vocab_by_bytes_;  // byte-level: keyed by the raw bytes
  std::unordered_map<uint64_t, Merge> merges_;
  bool byte_level_ = false;
  ByteAlphabet alphabet_;
  std::array<std::optional<int32_t>, 256> byte_symbol_id_{};    // byte-level: each byte's alphabet token
  std::array<std::optional<int32_t>, 256> fallback_byte_id_{};  // byte_fallback: each byte's <0xNN> token
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;       // consecutive unknown characters become one unk token
  bool ignore_merges_ = false;  // a word that is a vocabulary token is that token
  std::optional<int32_t> unk_id_;

  // Per-word cache: words are short and repeat a lot (Zipf), so this skips most merging.
  static constexpr size_t kCacheCapacity = 1 << 16;
  static constexpr size_t kCacheMaxWord = 256;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<BpeToken>> cache_;
};

}  // namespace sft::data::tokenizer
