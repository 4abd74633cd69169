// synth/decode.cpp: decode_batch (see decode.h).
#include "synth/decode.h"

#include <stdexcept>

namespace sft::synth {

std::vector<std::vector<int32_t>> decode_batch(model::CausalLM& model, const std::vector<std::vector<int32_t>>& prompts,
                                               const model::GenerationOptions& options,
                                               const std::vector<uint64_t>& seeds) {
  if (seeds.size() != prompts.size()) throw std::invalid_argument("decode_batch: one seed per prompt");
  // TODO(lead): switch to model::generate_batch at merge
  std::vector<std::vector<int32_t>> outputs;
  outputs.reserve(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    model::GenerationOptions one = options;
    one.seed = seeds[i];
    outputs.push_back(model::generate(model, prompts[i], one));
  }
  return outputs;
}

}  // namespace sft::synth
