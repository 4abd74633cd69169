// synth/decode.h: the one place sft synth decodes. Every generation of every synth command goes
// through decode_batch, so batched decoding replaces one function.
#pragma once
#include <cstdint>
#include <vector>

#include "model/generate.h"

namespace sft::synth {

// Output i is model::generate(model, prompts[i], options with seed = seeds[i]): the new token ids, a
// final stop token included. seeds.size() == prompts.size().
std::vector<std::vector<int32_t>> decode_batch(model::CausalLM& model, const std::vector<std::vector<int32_t>>& prompts,
                                               const model::GenerationOptions& options,
                                               const std::vector<uint64_t>& seeds);

}  // namespace sft::synth
