// data/pipeline.h: the data pipeline's entry points for the trainer and `sft data`:
// JSONL files -> validated conversations -> chat template -> token ids + labels -> length policy,
// with a held-out split and a DataReport that accounts for every line. Torch-free; batching is in
// data/loader.h.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "data/data_options.h"
#include "data/dataset.h"
#include "data/report.h"
#include "data/template.h"
#include "data/tokenizer.h"

namespace sft::data {

struct PreparedData {
  std::vector<TokenizedExample> train;  // kept training examples, in file order
  std::vector<TokenizedExample> eval;   // kept held-out examples, in file order
  ChatTemplate chat_template;           // the resolved template
  DataReport report;
};

// Reads, validates, renders, tokenizes and filters data.train (and data.eval, or a seeded eval_ratio
// split of train that never overlaps it). `seed` drives the split; `model_vocab_size` is the model's
// embedding rows (may exceed the tokenizer's vocabulary; a token id >= it is an error).
// `tokenizer_dir` only names tokenizer_config.json in template errors.
// Throws sft::InputError naming file:line or the config key for any bad input.
PreparedData prepare_data(const DataOptions& options, const Tokenizer& tokenizer, uint64_t seed,
                          int64_t model_vocab_size, const std::filesystem::path& tokenizer_dir = {});

// data.direction: reverse: every user turn and the assistant turn after it swap contents (the system
// message stays), so the model learns to answer a response with its prompt.
void reverse_direction(Conversation& conversation);

// Applies data.truncation to one example; returns "" when kept (possibly truncated, *truncated set),
// else the drop reason (drop_reason::*).
std::string apply_length_policy(TokenizedExample& example, int64_t max_seq_len, Truncation truncation,
                                bool* truncated);

// `sft data --out`: one {"input_ids":[...],"labels":[...]} per line, in the given order.
void write_examples_jsonl(const std::filesystem::path& path, const std::vector<TokenizedExample>& examples);

// The text of each maximal run of supervised tokens, decoded in context (so SentencePiece spaces and
// multi-byte characters come out as in the full decode).
std::vector<std::string> supervised_texts(const TokenizedExample& example, const Tokenizer& tokenizer);

// `sft data --show N`: the decoded example with supervised runs wrapped in ⟦ ⟧, plus counts.
std::string format_mask_audit(const TokenizedExample& example, const Tokenizer& tokenizer);

// pad id for batches: the tokenizer's pad, else EOS, else 0 (padding never carries targets).
int32_t default_pad_id(const Tokenizer& tokenizer);

}  // namespace sft::data
