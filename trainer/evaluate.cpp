// trainer/evaluate.cpp: the evaluation loop: teacher-forced scores per batch, then greedy decoding of
// the batch's prompts (eval.generate_batch_size at a time, model::generate_batch) for exact match.
#include "trainer/evaluate.h"

#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <cmath>

#include "common/errors.h"

namespace sft {

namespace {

std::string trim(const std::string& text) {
  const size_t begin = text.find_first_not_of(" \t\r\n");
  if (begin == std::string::npos) return "";
  const size_t end = text.find_last_not_of(" \t\r\n");
  return text.substr(begin, end - begin + 1);
}

// The last supervised run of an example: [begin, end) token indices with labels != -100. The tokens
// before it are the prompt; the run itself is the reference answer.
std::pair<size_t, size_t> last_supervised_run(const data::TokenizedExample& example) {
  size_t end = example.labels.size();
  while (end > 0 && example.labels[end - 1] == data::kIgnoreIndex) --end;
  size_t begin = end;
  while (begin > 0 && example.labels[begin - 1] != data::kIgnoreIndex) --begin;
  return {begin, end};
}

}  // namespace

std::string normalize_answer(const std::string& text) {
  std::string out;
  bool space = false;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c >= 0x80) {
      if (space && !out.empty()) out += ' ';
      out += static_cast<char>(std::tolower(c));
      space = false;
    } else {
      space = true;
    }
  }
  return out;
}

nlohmann::json EvalResult::to_json() const {
  nlohmann::json j = {{"examples", examples},   {"target_tokens", target_tokens}, {"loss", loss},
                      {"perplexity", perplexity}, {"token_accuracy", token_accuracy}};
  if (exact_match) j["exact_match"] = *exact_match;
  if (exact_match_normalized) j["exact_match_normalized"] = *exact_match_normalized;
  return j;
}

Evaluator::Evaluator(const Config& config, const Runtime& runtime, const model::ModelConfig& model_config,
                     const data::Tokenizer* tokenizer, const std::vector<data::TokenizedExample>& examples)
    : examples_(examples), tokenizer_(tokenizer), runtime_(runtime) {
  if (config.eval.generate) {
    if (!tokenizer) throw InputError("eval.generate needs text data and a tokenizer (not data.format tokenized)");
    model::GenerationOptions options;
    options.max_new_tokens = config.eval.max_new_tokens;
    options.temperature = 0.0;  // greedy: exact match scores the argmax answer, and nothing draws random numbers
    options.attention = runtime.attention;
    options.stop_ids = model::default_stop_ids(model_config, tokenizer);
    generation_ = options;
    generate_batch_size_ = config.eval.generate_batch_size;
  }
  if (!examples.empty()) {
    batches_ = data::make_eval_batches(examples, config.eval.batch_size, run_pad_id(tokenizer),
                                       /*pad_rows=*/!config.data.packing);
  }
}

std::vector<GenerationScore> Evaluator::generate(model::CausalLM& lm, const std::vector<int64_t>& indices) const {
  std::vector<std::vector<int32_t>> prompts;
  std::vector<GenerationScore> scores(indices.size());
  for (size_t k = 0; k < indices.size(); ++k) {
    const data::TokenizedExample& example = examples_[indices[k]];
    auto [begin, end] = last_supervised_run(example);
    prompts.emplace_back(example.input_ids.begin(), example.input_ids.begin() + begin);
    std::vector<int32_t> answer;
    for (size_t i = begin; i < end; ++i) {
      if (!tokenizer_->is_special(example.input_ids[i])) answer.push_back(example.input_ids[i]);
    }
    scores[k].reference = trim(tokenizer_->decode(answer, /*skip_special_tokens=*/true));
  }
  // Greedy: each answer is what decoding its prompt alone gives (model/generate.h).
  const std::vector<std::vector<int32_t>> outputs = model::generate_batch(lm, prompts, *generation_);
  for (size_t k = 0; k < indices.size(); ++k) {
    GenerationScore& score = scores[k];
    score.output = trim(model::answer_text(*tokenizer_, outputs[k], *generation_));
    score.exact_match = score.output == score.reference;
    score.exact_match_normalized = normalize_answer(score.output) == normalize_answer(score.reference);
  }
  return scores;
}

EvalResult Evaluator::run(model::CausalLM& lm, const std::function<void(const ExampleScore&)>& on_example,
                          Collectives* group) const {
  const int64_t shard = group ? group->rank() : 0, shards = group ? group->world_size() : 1;
  const bool was_training = lm->is_training();
  lm->eval();
  torch::NoGradGuard no_grad;
  const AutocastScope autocast(runtime_);  // evaluate in the precision training computes in
  double loss_sum = 0;
  int64_t targets = 0, correct = 0, examples = 0, exact = 0, exact_normalized = 0;
  for (size_t b = 0; b < batches_.size(); ++b) {
    if (static_cast<int64_t>(b) % shards != shard) continue;  // another rank's batch
    const data::EvalBatch& eval_batch = batches_[b];
    const data::Batch batch = eval_batch.batch.to(runtime_.device);
    kernels::PackedSequences seqs{batch.cu_seqlens, batch.cu_seqlens_host, batch.max_seqlen};
    at::Tensor hidden = lm->forward(batch.input_ids, batch.position_ids, seqs, runtime_.forward_options());
    at::Tensor logits = lm->logits(hidden.index_select(0, batch.target_positions)).to(at::kFloat);  // [N, V]
    at::Tensor token_loss = at::cross_entropy_loss(logits, batch.target_ids, {}, at::Reduction::None);  // [N]
    at::Tensor hits = logits.argmax(-1).eq(batch.target_ids);                                           // [N]
    // Sync point (once per eval batch): per-example sums are made on the host in double.
    at::Tensor loss_host = token_loss.to(at::kCPU, at::kDouble).contiguous();
    at::Tensor hits_host = hits.to(at::kCPU, at::kLong).contiguous();
    const double* loss_ptr = loss_host.data_ptr<double>();
    const int64_t* hit_ptr = hits_host.data_ptr<int64_t>();
    const size_t batch_examples = eval_batch.example_index.size();
    std::vector<GenerationScore> answers;  // with generation: the batch's answers, decoded in chunks
    for (size_t first = 0; generation_ && first < batch_examples; first += generate_batch_size_) {
      const size_t last = std::min(batch_examples, first + static_cast<size_t>(generate_batch_size_));
      const std::vector<int64_t> chunk(eval_batch.example_index.begin() + first, eval_batch.example_index.begin() + last);
      for (GenerationScore& answer : generate(lm, chunk)) answers.push_back(std::move(answer));
    }
    for (size_t k = 0; k < batch_examples; ++k) {
      ExampleScore score;
      score.index = eval_batch.example_index[k];
      for (int64_t t = eval_batch.target_offsets[k]; t < eval_batch.target_offsets[k + 1]; ++t) {
        score.loss_sum += loss_ptr[t];
        score.correct += hit_ptr[t];
      }
      score.targets = eval_batch.target_offsets[k + 1] - eval_batch.target_offsets[k];
      loss_sum += score.loss_sum;
      targets += score.targets;
      correct += score.correct;
      ++examples;
      if (generation_) {
        score.generation = std::move(answers[k]);
        exact += score.generation->exact_match;
        exact_normalized += score.generation->exact_match_normalized;
      }
      if (on_example) on_example(score);
    }
  }
  if (was_training) lm->train();
  if (shards > 1) {
    // The ranks' partial sums, added in double (counts are exact in double far beyond any eval set).
    at::Tensor sums = at::tensor({loss_sum, double(targets), double(correct), double(examples), double(exact),
                                  double(exact_normalized)}, at::kDouble).to(group->device());
    group->allreduce_sum(sums);
    sums = sums.cpu();  // SYNC: once per evaluation
    const double* v = sums.data_ptr<double>();
    loss_sum = v[0];
    targets = static_cast<int64_t>(v[1]);
    correct = static_cast<int64_t>(v[2]);
    examples = static_cast<int64_t>(v[3]);
    exact = static_cast<int64_t>(v[4]);
    exact_normalized = static_cast<int64_t>(v[5]);
  }
  EvalResult result;
  result.target_tokens = targets;
  result.examples = examples;
  result.loss = targets ? loss_sum / targets : 0.0;
  result.perplexity = std::exp(result.loss);
  result.token_accuracy = targets ? static_cast<double>(correct) / targets : 0.0;
  if (generation_ && examples > 0) {
    result.exact_match = static_cast<double>(exact) / examples;
    result.exact_match_normalized = static_cast<double>(exact_normalized) / examples;
  }
  return result;
}

}  // namespace sft
