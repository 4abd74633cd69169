// synth/evol.cpp: the Evol-Instruct loop (see evol.h).
#include "synth/evol.h"

#include <algorithm>

#include "synth/parse.h"

namespace sft::synth {
namespace {

constexpr uint64_t kOperationStage = 11, kRewriteStage = 12, kJudgeStage = 13, kResponseStage = 14;

// Decoding coordinates of (input index, round): one stream each, whatever the batch.
uint64_t coordinate(uint64_t index, int64_t round) { return index * 1024 + static_cast<uint64_t>(round); }

}  // namespace

EvolOperation choose_operation(uint64_t seed, uint64_t index, int64_t round) {
  const uint64_t draw = derive_seed(seed, kOperationStage, index, static_cast<uint64_t>(round));
  return evol_operation(static_cast<int>(draw % kEvolOperationCount));
}

void run_evol(Completer& model, const EvolOptions& o, RunOutput& output, const std::function<bool()>& should_stop,
              const std::function<void(const Progress&)>& on_step) {
  Progress& progress = output.progress();
  const int64_t total = static_cast<int64_t>(o.inputs.size());
  while (progress.step * o.batch < total && !should_stop()) {
    const int64_t first = progress.step * o.batch, last = std::min(total, first + o.batch);
    std::vector<std::string> current;
    for (int64_t i = first; i < last; ++i) current.push_back(o.inputs[static_cast<size_t>(i)].prompt);
    for (int64_t round = 1; round <= o.rounds; ++round) {
      // 1. Rewrite every prompt of the chunk with its operation.
      std::vector<ChatPrompt> rewrites;
      std::vector<uint64_t> seeds;
      std::vector<EvolOperation> operations;
      for (int64_t i = first; i < last; ++i) {
        const uint64_t index = static_cast<uint64_t>(i);
        operations.push_back(choose_operation(o.seed, index, round));
        rewrites.push_back(evol_prompt(operations.back(), current[static_cast<size_t>(i - first)]));
        seeds.push_back(derive_seed(o.seed, kRewriteStage, coordinate(index, round), 0));
      }
      std::vector<Completion> evolved = model.complete(rewrites, o.rewrite_decoding, seeds);
      progress.prompts += static_cast<int64_t>(rewrites.size());
      // 2. The candidates: non-empty rewrites that ended (a cut-off rewrite is half a prompt, kept only with
      //    keep_truncated).
      std::vector<size_t> candidates;
      std::vector<std::string> texts(evolved.size());
      for (size_t k = 0; k < evolved.size(); ++k) {
        progress.generated_tokens += evolved[k].new_tokens;
        ++progress.candidates;
        texts[k] = parse_evolved_prompt(evolved[k].text);
        if (texts[k].empty()) {
          progress.reject(reason::kEmptyPrompt);
        } else if (!evolved[k].complete && !o.keep_truncated) {
          progress.reject(reason::kTruncatedPrompt);
        } else {
          candidates.push_back(k);
        }
      }
      // 3. Rule 1 by the model's judgement (--judge), then a response to each candidate.
      std::vector<std::optional<bool>> judged(evolved.size());
      std::vector<ChatPrompt> asks;
      std::vector<uint64_t> ask_seeds;
      for (size_t k : candidates) {
        asks.push_back({texts[k], "", {}});
        ask_seeds.push_back(derive_seed(o.seed, kResponseStage, coordinate(static_cast<uint64_t>(first) + k, round), 0));
      }
      if (o.judge && !candidates.empty()) {
        std::vector<ChatPrompt> questions;
        std::vector<uint64_t> question_seeds;
        for (size_t k : candidates) {
          questions.push_back(judge_equal_prompt(current[k], texts[k]));
          question_seeds.push_back(derive_seed(o.seed, kJudgeStage, coordinate(static_cast<uint64_t>(first) + k, round), 0));
        }
        const std::vector<Completion> verdicts = model.complete(questions, {8, 0.0, 1.0, 0}, question_seeds);
        for (size_t c = 0; c < candidates.size(); ++c) {
          progress.generated_tokens += verdicts[c].new_tokens;
          // An answer that is neither yes nor no falls back to the ROUGE-L test.
          judged[candidates[c]] = parse_yes_no(verdicts[c].text);
        }
      }
      const std::vector<Completion> responses =
          asks.empty() ? std::vector<Completion>{} : model.complete(asks, o.response_decoding, ask_seeds);
      // 4. The elimination rules; a kept evolution is written and replaces its prompt.
      for (size_t c = 0; c < candidates.size(); ++c) {
        const size_t k = candidates[c];
        progress.generated_tokens += responses[c].new_tokens;
        const std::string response = trim(responses[c].text);
        std::optional<std::string> why = check_evolution(current[k], texts[k], response, o.limits, judged[k]);
        if (!why && !responses[c].complete && !o.keep_truncated) why = reason::kTruncatedResponse;
        if (why) {
          progress.reject(*why);
          continue;
        }
        output.write({{"prompt", texts[k]},
                      {"response", response},
                      {"operation", evol_operation_name(operations[k])},
                      {"round", round},
                      {"source", o.inputs[static_cast<size_t>(first) + k].source}});
        ++progress.accepted;
        current[k] = texts[k];
      }
    }
    ++progress.step;
    const bool done = progress.step * o.batch >= total;
    if (done || progress.step % o.commit_every == 0 || should_stop()) output.commit();
    on_step(progress);
  }
  progress.complete = progress.step * o.batch >= total;
}

}  // namespace sft::synth
