// synth/completer.h: what the synth pipelines ask of a model: a batch of chat prompts in, their
// answers' text out. Torch-free: synth/chat_model.h is the real one (a loaded model decoding through
// decode_batch); tests/test_synth_pipeline.cpp scripts one.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "synth/prompts.h"

namespace sft::synth {

struct DecodeSettings {
  int64_t max_new_tokens = 256;
  double temperature = 0.0;  // 0: greedy
  double top_p = 1.0;
  int64_t top_k = 0;
};

struct Completion {
  std::string text;       // the prompt's assistant_prefix + the decoded new tokens, without a final stop token
  bool complete = false;  // ended with a stop token (false: cut at max_new_tokens)
  int64_t new_tokens = 0;
};

class Completer {
 public:
  virtual ~Completer() = default;
  // One completion per prompt; seeds[i] seeds prompt i's sampler (ignored when greedy).
  virtual std::vector<Completion> complete(const std::vector<ChatPrompt>& prompts, const DecodeSettings& settings,
                                           const std::vector<uint64_t>& seeds) = 0;
};

// A 64-bit seed from a run seed and the coordinates of one decoding (stage, step, index), by
// SplitMix64 mixing: each decoding's randomness depends on where it is, never on what ran before, so a
// resumed run draws exactly what the uninterrupted run drew.
uint64_t derive_seed(uint64_t seed, uint64_t stage, uint64_t step, uint64_t index);

}  // namespace sft::synth
