// trainer/evaluate.h: held-out scoring, the one code path of `sft train` (periodic and final evaluation)
// and `sft eval`: mean loss over target tokens, perplexity, token accuracy and, with eval.generate,
// exact match of greedy decoding (batched: eval.generate_batch_size prompts of an eval batch at once);
// per-example scores are streamed to a callback.
#pragma once
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "data/loader.h"
#include "data/tokenizer.h"
#include "model/config.h"
#include "model/generate.h"
#include "model/llama.h"
#include "trainer/config.h"
#include "trainer/process_group.h"
#include "trainer/setup.h"

namespace sft {

// Greedy decoding from an example's prompt, scored against its reference answer.
struct GenerationScore {
  std::string output, reference;  // both trimmed of surrounding whitespace
  bool exact_match = false;
  bool exact_match_normalized = false;  // case and punctuation folded (normalize_answer)
};

struct ExampleScore {
  int64_t index = 0;      // position in the eval example list (file order)
  double loss_sum = 0;    // sum of target-token cross-entropies
  int64_t targets = 0;
  int64_t correct = 0;    // argmax == target
  std::optional<GenerationScore> generation;  // with eval.generate
};

struct EvalResult {
  double loss = 0, perplexity = 0, token_accuracy = 0;
  int64_t target_tokens = 0;
  int64_t examples = 0;
  std::optional<double> exact_match, exact_match_normalized;  // with generation
  // {examples, target_tokens, loss, perplexity, token_accuracy[, exact_match, exact_match_normalized]}:
  // the fields of an eval.jsonl line and of eval/summary.json.
  nlohmann::json to_json() const;
};

// Case and punctuation folded, whitespace collapsed: "Porto-Novo." == "porto novo".
std::string normalize_answer(const std::string& text);

// Everything an evaluation needs besides the model, built once from the run's config: the fixed-order
// eval batches (laid out as training lays out its rows) and, with eval.generate, the decoding settings
// (greedy, eval.max_new_tokens, the model's stop ids). `sft train` and `sft eval` both score through
// run(), so the same checkpoint gets the same numbers from either.
class Evaluator {
 public:
  // `examples` and `tokenizer` must outlive the Evaluator. eval.generate needs a tokenizer (text data):
  // without one it is an InputError.
  Evaluator(const Config& config, const Runtime& runtime, const model::ModelConfig& model_config,
            const data::Tokenizer* tokenizer, const std::vector<data::TokenizedExample>& examples);

  bool empty() const { return examples_.empty(); }
  bool generates() const { return generation_.has_value(); }

  // Scores every batch, then (with generation) decodes each example of the batch; calls on_example for
  // each example in order (streaming: nothing accumulates but the totals). Sums are in double on the
  // host in example order, so results do not depend on eval.batch_size. Runs under no_grad in eval mode
  // and restores training mode. Greedy decoding draws no random numbers, so evaluating inside a
  // training run leaves its RNG stream untouched.
  // With a multi-process `group`, evaluation is sharded: rank r scores (and decodes) the eval batches b
  // with b % world_size == r, on_example sees only those, and the totals are SUM-allreduced, so every
  // rank returns the single-process summary (the same loss up to double rounding, the same counts).
  EvalResult run(model::CausalLM& model, const std::function<void(const ExampleScore&)>& on_example = {},
                 Collectives* group = nullptr) const;

 private:
  // Greedy answers of the examples `indices` (positions in examples_), decoded together, in order.
  std::vector<GenerationScore> generate(model::CausalLM& model, const std::vector<int64_t>& indices) const;

  const std::vector<data::TokenizedExample>& examples_;
  const data::Tokenizer* tokenizer_;
  Runtime runtime_;
  std::vector<data::EvalBatch> batches_;
  std::optional<model::GenerationOptions> generation_;
  int64_t generate_batch_size_ = 1;  // eval.generate_batch_size
};

}  // namespace sft
