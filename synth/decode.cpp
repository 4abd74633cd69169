// synth/decode.cpp: decode_batch (see decode.h), on model::generate_batch: the --batch prompts of one
// pipeline step decode together through the KV cache (packed, ragged), each with its own seed.
#include "synth/decode.h"

#include <stdexcept>

namespace sft::synth {

std::vector<std::vector<int32_t>> decode_batch(model::CausalLM& model, const std::vector<std::vector<int32_t>>& prompts,
                                               const model::GenerationOptions& options,
                                               const std::vector<uint64_t>& seeds) {
  if (seeds.size() != prompts.size()) throw std::invalid_argument("decode_batch: one seed per prompt");
  if (prompts.empty()) return {};
  return model::generate_batch(model, prompts, options, seeds);
}

}  // namespace sft::synth
