// trainer/evaluate.h: held-out scoring shared by `sft train` (periodic and final evaluation) and
// `sft eval`: mean loss over target tokens, perplexity, token accuracy, and per-example scores.
#pragma once
#include <functional>
#include <optional>
#include <vector>

#include "data/loader.h"
#include "model/llama.h"
#include "trainer/setup.h"

namespace sft {

struct ExampleScore {
  int64_t index = 0;      // position in the eval example list (file order)
  double loss_sum = 0;    // sum of target-token cross-entropies
  int64_t targets = 0;
  int64_t correct = 0;    // argmax == target
};

struct EvalResult {
  double loss = 0, perplexity = 0, token_accuracy = 0;
  int64_t target_tokens = 0;
  int64_t examples = 0;
  std::optional<double> exact_match, exact_match_normalized;  // with generation
};

// Scores every batch; calls on_example for each example in order (streaming: nothing accumulates but
// the totals). Sums are in double on the host in example order, so results do not depend on the
// batch size. Runs under no_grad with the model in eval mode, then restores training mode.
EvalResult evaluate(model::CausalLM& model, const std::vector<data::EvalBatch>& batches, const Runtime& runtime,
                    const std::function<void(const ExampleScore&)>& on_example = {});

}  // namespace sft
