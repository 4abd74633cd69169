// synth/evol.h: `sft synth evol` (Evol-Instruct, WizardLM, Xu et al. 2023): make prompts harder (in
// depth) or new in the same domain (in breadth), round after round. Each step takes `batch` input
// prompts through every round: per prompt and round one of the six operations (chosen from the seed,
// the prompt's index and the round), the rewrite, a response to the rewrite, then the elimination rules
// (synth/filters.h). A kept evolution is written and becomes the prompt of the next round; a dropped one
// leaves the prompt as it was, so the next round evolves it again.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "synth/completer.h"
#include "synth/filters.h"
#include "synth/prompts.h"
#include "synth/run_output.h"

namespace sft::synth {

struct EvolInput {
  std::string prompt;
  std::string source;  // "file:line"
};

struct EvolOptions {
  std::vector<EvolInput> inputs;
  int64_t rounds = 4;  // WizardLM ran 4 rounds
  int64_t batch = 4;   // inputs per step
  uint64_t seed = 0;
  DecodeSettings rewrite_decoding{256, 0.7, 1.0, 0};
  DecodeSettings response_decoding{256, 0.0, 1.0, 0};
  EvolLimits limits;
  bool judge = false;  // rule 1 by the model's own yes/no judgement instead of ROUGE-L
  bool keep_truncated = false;
  int64_t commit_every = 1;
};

// The operation of input `index` in `round` (1-based): uniform over the six, from (seed, index, round).
EvolOperation choose_operation(uint64_t seed, uint64_t index, int64_t round);

// Runs (or resumes) over every input; writes {"prompt", "response", "operation", "round", "source"}.
void run_evol(Completer& model, const EvolOptions& options, RunOutput& output, const std::function<bool()>& should_stop,
              const std::function<void(const Progress&)>& on_step);

}  // namespace sft::synth
