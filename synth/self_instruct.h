// synth/self_instruct.h: `sft synth self-instruct` (Wang et al. 2022): grow a set of seed instructions.
// Each step sends `batch` few-shot prompts (shots sampled from the seeds and, up to generated_shots, from
// instructions generated so far), parses the numbered lists the model writes, keeps the instructions
// that pass every filter (synth/filters.h: ROUGE-L against every kept instruction, seeds included), then
// answers each kept instruction with the same model and writes {"prompt", "response"} lines.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "synth/completer.h"
#include "synth/filters.h"
#include "synth/run_output.h"

namespace sft::synth {

struct SelfInstructOptions {
  std::vector<std::string> seeds;  // the seed instructions (non-empty)
  int64_t num = 100;               // instructions to write
  int64_t shots = 8;               // examples per prompt
  int64_t generated_shots = 2;     // of which at most this many are generated ones (the paper: 6 + 2)
  int64_t new_per_prompt = 8;      // new tasks each prompt asks for
  int64_t batch = 4;               // prompts per step
  int64_t max_prompts = 0;         // give up after this many prompts (0: 20 * num)
  uint64_t seed = 0;
  DecodeSettings instruction_decoding{256, 0.7, 0.5, 0};  // the paper's temperature 0.7, top_p 0.5
  DecodeSettings response_decoding{256, 0.0, 1.0, 0};
  InstructionLimits limits;
  double max_similarity = 0.7;
  bool keep_truncated = false;     // keep a list's last item and responses cut at max_new_tokens
  int64_t commit_every = 1;        // steps between fsync + cursor
};

// Runs (or resumes) until `num` lines are written, max_prompts are spent or should_stop() is true
// between steps. `on_step` is told after every step (the progress line).
void run_self_instruct(Completer& model, const SelfInstructOptions& options, RunOutput& output,
                       const std::function<bool()>& should_stop, const std::function<void(const Progress&)>& on_step);

// The shots of one prompt: min(generated_shots, |generated|) distinct generated instructions and the
// rest distinct seeds (all seeds when there are fewer), in a shuffled order; a function of `rng_seed`.
std::vector<std::string> sample_shots(const std::vector<std::string>& seeds, const std::vector<std::string>& generated,
                                      int64_t shots, int64_t generated_shots, uint64_t rng_seed);

}  // namespace sft::synth
