// trainer/evaluate.cpp: the evaluation loop.
#include "trainer/evaluate.h"

#include <torch/torch.h>

#include <cmath>

namespace sft {

EvalResult evaluate(model::CausalLM& lm, const std::vector<data::EvalBatch>& batches, const Runtime& runtime,
                    const std::function<void(const ExampleScore&)>& on_example) {
  const bool was_training = lm->is_training();
  lm->eval();
  torch::NoGradGuard no_grad;
  double loss_sum = 0;
  int64_t targets = 0, correct = 0, examples = 0;
  for (const data::EvalBatch& eval_batch : batches) {
    const data::Batch batch = eval_batch.batch.to(runtime.device);
    kernels::PackedSequences seqs{batch.cu_seqlens, batch.cu_seqlens_host, batch.max_seqlen};
    at::Tensor hidden = lm->forward(batch.input_ids, batch.position_ids, seqs, runtime.forward_options());
    at::Tensor logits = lm->logits(hidden.index_select(0, batch.target_positions)).to(at::kFloat);  // [N, V]
    at::Tensor token_loss = at::cross_entropy_loss(logits, batch.target_ids, {}, at::Reduction::None);  // [N]
    at::Tensor hits = logits.argmax(-1).eq(batch.target_ids);                                           // [N]
    // Sync point (once per eval batch): per-example sums are made on the host in double.
    at::Tensor loss_host = token_loss.to(at::kCPU, at::kDouble).contiguous();
    at::Tensor hits_host = hits.to(at::kCPU, at::kLong).contiguous();
    const double* loss_ptr = loss_host.data_ptr<double>();
    const int64_t* hit_ptr = hits_host.data_ptr<int64_t>();
    for (size_t k = 0; k < eval_batch.example_index.size(); ++k) {
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
      if (on_example) on_example(score);
    }
  }
  if (was_training) lm->train();
  EvalResult result;
  result.target_tokens = targets;
  result.examples = examples;
  result.loss = targets ? loss_sum / targets : 0.0;
  result.perplexity = std::exp(result.loss);
  result.token_accuracy = targets ? static_cast<double>(correct) / targets : 0.0;
  return result;
}

}  // namespace sft
