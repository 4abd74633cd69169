// model/generate.h: autoregressive decoding of a CausalLM with a key/value cache: the prompt is run
// once (prefill), then one token per step attends over the cached keys/values of every earlier
// position, so a step costs O(current length) instead of a full recompute. Every step is the model's own
// CausalLM::forward with a KvCache (model/kv_cache.h): one decoder path for training and decoding, so
// LoRA adapters, the fused ops and any architecture change take part without a special case.
// Several prompts decode together (generate_batch): packed like training rows, each sequence with its
// own sampler. Greedy by default; temperature / top-k / top-p sampling draws from a seeded generator
// of its own (never the global one).
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

// One sequence decoded step by step over a KvCache: forward(ids) plans a cache step for them, runs
// CausalLM::forward with the cache and returns their final hidden states. For tests and callers that
// drive decoding themselves; generate() and generate_batch() use the same forward.
class IncrementalDecoder {
 public:
  IncrementalDecoder(CausalLM model, int64_t capacity);

  // Runs `ids` (int64 [n], n >= 1) at positions [length(), length() + n) and returns the final hidden
  // states [n, hidden] (after the final norm). With an empty cache the n tokens are a causal prefill
  // through kernels::varlen_attention, as in training; otherwise each new row attends over the cached
  // prefix and the earlier new rows (kernels::kv_cache_attention).
  at::Tensor forward(const at::Tensor& ids, kernels::AttentionImpl impl = kernels::AttentionImpl::Auto);

  int64_t length() const { return cache_.length(0); }
  int64_t capacity() const { return cache_.capacity(0); }
  void reset() { cache_.reset(); }

 private:
  CausalLM model_;
  KvCache cache_;
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
// Decodes every prompt (each non-empty) in one batch and returns each one's new tokens. Sequence i samples
// with its own generator seeded by seeds[i] (empty seeds: options.seed for all), so result i is what
// generate(model, prompts[i], options with seed = seeds[i]) returns: its tokens go through the same
// per-sequence math (prefill per document, attention per sequence, the same sampler), and only the
// row blocking of the shared projections differs (fp32 rounding, ~1e-6 relative; see README "Batched
// decoding"). A sequence stops at a stop id or max_new_tokens; the others go on without it. Prompts
// of different lengths are packed (varlen, no padding), as training packs its rows.
std::vector<std::vector<int32_t>> generate_batch(CausalLM& model, const std::vector<std::vector<int32_t>>& prompts,
                                                 const GenerationOptions& options,
                                                 const std::vector<uint64_t>& seeds = {});

// The text of generated ids with a final stop token removed (other special tokens are kept): the
// answer as `sft eval` scores it for exact match.
std::string answer_text(const data::Tokenizer& tokenizer, std::vector<int32_t> ids, const GenerationOptions& options);

std::string generate_text(CausalLM& model, const data::Tokenizer& tokenizer, const std::vector<int32_t>& prompt_ids,
                          const GenerationOptions& options);

// The ids that end generation by default: the tokenizer's eos_ids (tokenizer_config.json, config.json,
// generation_config.json) followed by config.json's eos_token_id list, without duplicates.
std::vector<int32_t> default_stop_ids(const ModelConfig& config, const data::Tokenizer* tokenizer);

}  // namespace sft::model
