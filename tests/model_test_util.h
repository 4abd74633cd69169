// tests/model_test_util.h: the small model and packed batch shared by the model-level fused-op tests
// (test_fused_projections.cpp, test_lora_group.cpp): odd sizes and GQA so no dimension lines up by luck.
#pragma once
#include <torch/torch.h>

#include "model/llama.h"

namespace sft::test_support {

// vocab 61, hidden 37, MLP 53, 2 layers, 3 query heads over 1 kv head of 10; `bias`: Qwen2's q/k/v biases.
inline model::ModelConfig odd_gqa_config(bool bias) {
  model::ModelConfig config;
  config.model_type = bias ? "qwen2" : "llama";
  config.vocab_size = 61;
  config.hidden_size = 37;
  config.intermediate_size = 53;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 3;
  config.num_key_value_heads = 1;  // GQA: Hq != Hkv
  config.head_dim = 10;
  config.attention_bias = bias;
  config.max_position_embeddings = 64;
  return config;
}

// Two packed documents (11 + 8 tokens, positions restarting) with five target rows.
struct PackedBatch {
  at::Tensor ids, positions, rows, targets;
  kernels::PackedSequences seqs;
};
inline PackedBatch odd_packed_batch(int64_t vocab) {
  torch::manual_seed(9);
  PackedBatch b;
  b.ids = torch::randint(vocab, {19}, at::kLong);
  b.positions = at::cat({at::arange(11, at::kLong), at::arange(8, at::kLong)});
  at::Tensor cu = at::tensor({0, 11, 19}, at::kInt);
  b.seqs = {cu, cu, 11};
  b.rows = at::tensor({0, 3, 9, 12, 17}, at::kLong);
  b.targets = b.ids.index_select(0, b.rows + 1);
  return b;
}

// Summed target cross-entropy of the batch, eager attention.
inline at::Tensor target_loss_of(model::CausalLM& lm, const PackedBatch& b) {
  at::Tensor hidden = lm->forward(b.ids, b.positions, b.seqs, {kernels::AttentionImpl::Eager, false});
  return lm->target_loss_sum(hidden.index_select(0, b.rows), b.targets);
}

}  // namespace sft::test_support
