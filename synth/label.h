// synth/label.h: the two commands that complete one side of a pair with a model.
// - `sft synth distill`: responses to given prompts from a teacher model (optionally told to reason
//   step by step, --cot). Prompt_response inputs give {"prompt", "response"} lines; multi-turn inputs
//   give {"messages": [... the turns, the teacher's answer]}.
// - `sft synth backtranslate` (instruction backtranslation, Li et al. 2023): prompts for unlabelled texts
//   from a backward model (one trained with data.direction: reverse, so it answers a response with its
//   prompt); optionally the forward model rates each pair 1..5 (self-curation) and pairs below
//   --min-score are dropped. Lines: {"prompt", "response"[, "score"]}.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "data/formats.h"
#include "synth/completer.h"
#include "synth/run_output.h"

namespace sft::synth {

struct DistillInput {
  std::vector<data::Message> messages;  // ends with the user turn to answer
  std::string source;                   // "file:line"
};

struct DistillOptions {
  std::vector<DistillInput> inputs;
  bool cot = false;
  int64_t batch = 4;
  uint64_t seed = 0;
  DecodeSettings decoding{512, 0.0, 1.0, 0};
  bool keep_truncated = false;
  int64_t commit_every = 1;
};

void run_distill(Completer& teacher, const DistillOptions& options, RunOutput& output,
                 const std::function<bool()>& should_stop, const std::function<void(const Progress&)>& on_step);

struct BacktranslateOptions {
  std::vector<std::string> texts;  // the unlabelled responses
  int64_t batch = 4;
  uint64_t seed = 0;
  DecodeSettings decoding{128, 0.0, 1.0, 0};
  int64_t min_score = 4;  // with a scorer: keep pairs rated at least this
  bool keep_truncated = false;
  int64_t commit_every = 1;
};

// `scorer` null: no self-curation.
void run_backtranslate(Completer& backward, Completer* scorer, const BacktranslateOptions& options, RunOutput& output,
                       const std::function<bool()>& should_stop, const std::function<void(const Progress&)>& on_step);

// The texts of a backtranslate --input: JSONL lines with a string field "text" (or "response",
// "output", "completion"). Throws sft::InputError naming file:line for a malformed line, a missing or
// empty field, and for a file without lines.
std::vector<std::string> read_texts(const std::filesystem::path& path);

}  // namespace sft::synth
