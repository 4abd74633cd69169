// data/dataset.h: one conversation -> token ids + labels. The rendered text is tokenized ONCE as a
// whole (exactly like apply_chat_template(tokenize=True)), then each token is labelled from the byte
// ranges the template marked: a token is supervised when any of its bytes lies in a selected range.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "data/formats.h"
#include "data/template.h"
#include "data/tokenizer.h"

namespace sft::data {

// Label of unsupervised tokens. Same value as kIgnoreIndex in data/batch.h (checked by a static_assert in
// loader.cpp); repeated here so tokenization stays free of ATen.
constexpr int32_t kIgnoreLabel = -100;

// labels[i] is input_ids[i] when token i is supervised, else kIgnoreLabel (-100). Labels are NOT
// shifted: the batch builder pairs token p with label p+1 inside one document.
struct TokenizedExample {
  std::vector<int32_t> input_ids;
  std::vector<int32_t> labels;
  std::string source;  // "file:line"
};

struct MaskOptions {
  bool train_on_prompt = false;  // every token is a target except BOS (nothing predicts the first token anyway)
  bool mask_history = false;     // only the last assistant turn (with train_on_prompt: the last exchange)
  std::optional<std::string> system_prompt;
};

// Renders, tokenizes and labels one conversation. BOS: if the template renders BOS text it is never
// added again; otherwise the tokenizer's add_bos decides (HF's default for plain text).
TokenizedExample tokenize_conversation(const Conversation& conversation, const ChatTemplate& chat_template,
                                       const Tokenizer& tokenizer, const MaskOptions& options);

// Targets the loss will see: labels at positions >= 1 (position 0 has no predecessor).
int64_t count_targets(const std::vector<int32_t>& labels);

}  // namespace sft::data
