// model/generate.h: autoregressive decoding of a CausalLM with a key/value cache: the prompt is run
// once (prefill), then one token per step attends over the cached keys/values of every earlier
// position, so a step costs O(current length) instead of a full recompute. Greedy by default;
// temperature / top-k / top-p sampling draws from a seeded generator of its own (never the global one).
// The incremental forward reuses the CausalLM's own submodules (projections, norms, MLP), so LoRA
// adapters (LoraProjection overrides forward) take part without any special case.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "kernels/ops.h"
#include "model/llama.h"

namespace sft::model {

struct GenerationOptions {
  int64_t max_new_tokens = 64;
  double temperature = 0.0;  // 0: greedy (argmax); > 0: sample from softmax(logits / temperature)
  int64_t top_k = 0;         // sampling only: keep the k most likely tokens (0: off)
  double top_p = 1.0;        // sampling only: keep the smallest set with probability >= top_p (1: off)
  uint64_t seed = 0;         // seeds the sampler's own at::Generator
  std::vector<int32_t> stop_ids;  // generation ends after emitting one of these (EOS, end-of-turn); empty: never
  bool use_cache = true;          // false: recompute the whole sequence every step (reference and benchmark)
  kernels::AttentionImpl attention = kernels::AttentionImpl::Auto;  // prefill / full-recompute attention
};

// Called with every new token as soon as it is chosen (streaming).
using TokenCallback = std::function<void(int32_t)>;

// The per-layer key/value cache plus the incremental forward over it. Keys and values are preallocated
// once for `capacity` positions: keys_[l], values_[l]: [capacity, Hkv, D] in the model's dtype/device.
class IncrementalDecoder {
 public:
  IncrementalDecoder(CausalLM model, int64_t capacity);

  // Runs `ids` (int64 [n], n >= 1) at positions [length(), length() + n), appends their keys/values to
  // the cache and returns the final hidden states [n, hidden] (after the final norm). With an empty
  // cache the n tokens are a causal prefill through kernels::varlen_attention; otherwise each new row
  // attends over the filled prefix [0, length() + n) with a causal offset.
  at::Tensor forward(const at::Tensor& ids, kernels::AttentionImpl impl = kernels::AttentionImpl::Auto);

  int64_t length() const { return length_; }
  int64_t capacity() const { return capacity_; }
  void reset() { length_ = 0; }

 private:
  CausalLM model_;
  RotaryEmbedding rotary_;
  std::vector<std::shared_ptr<DecoderLayerImpl>> layers_;
  std::vector<at::Tensor> keys_, values_;  // [layers] of [capacity, Hkv, D]
  int64_t capacity_ = 0;
  int64_t length_ = 0;
};

// Chooses the next token from fp32 logits [vocab]: argmax when temperature == 0, else
// temperature -> top-k -> top-p filtering (transformers' warper order) and a multinomial draw.
int32_t select_next_token(const at::Tensor& logits, const GenerationOptions& options, at::Generator& generator);

// Decodes up to max_new_tokens after `prompt_ids` (non-empty) and returns the new tokens only. As in
// transformers' generate, a stop token that ends generation IS included as the last element.
// Runs without autograd and in eval mode (the module's training flag is restored afterwards).
std::vector<int32_t> generate(CausalLM& model, const std::vector<int32_t>& prompt_ids,
                              const GenerationOptions& options, const TokenCallback& on_token = nullptr);

// generate(), then the text of the new tokens with a final stop token removed (other special tokens
// are kept): the answer as `sft eval` scores it for exact match.
std::string generate_text(CausalLM& model, const data::Tokenizer& tokenizer, const std::vector<int32_t>& prompt_ids,
                          const GenerationOptions& options);

// The ids that end generation by default: the tokenizer's eos_ids (tokenizer_config.json, config.json,
// generation_config.json) followed by config.json's eos_token_id list, without duplicates.
std::vector<int32_t> default_stop_ids(const ModelConfig& config, const data::Tokenizer* tokenizer);

}  // namespace sft::model
