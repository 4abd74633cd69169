// model/generate.cpp: IncrementalDecoder, token selection (greedy, temperature / top-k / top-p) and the
// decoding loop of generate() and generate_batch(). Every step is CausalLM::forward with a KvCache; the
// loop only packs the step's tokens, picks the next token of each sequence and retires finished ones.
#include "model/generate.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace sft::model {
namespace {

// Puts a module in eval mode for the lifetime of the guard and restores its training flag.
class EvalModeGuard {
 public:
  explicit EvalModeGuard(CausalLM& model) : model_(model), was_training_(model->is_training()) { model_->eval(); }
  ~EvalModeGuard() {
    if (was_training_) model_->train(true);
  }

 private:
  CausalLM& model_;
  bool was_training_;
};

// Final hidden state of the last position of `ids` by a full forward (no cache): [1, hidden].
at::Tensor full_forward_last(CausalLM& model, const std::vector<int32_t>& ids, const at::Device& device,
                             kernels::AttentionImpl impl) {
  const int64_t n = static_cast<int64_t>(ids.size());
  at::Tensor input = at::tensor(std::vector<int64_t>(ids.begin(), ids.end()), at::kLong).to(device);
  at::Tensor cu_host = at::tensor(std::vector<int32_t>{0, static_cast<int32_t>(n)}, at::kInt);
  kernels::PackedSequences seqs{cu_host.to(device), cu_host, n};
  at::Tensor hidden = model->forward(input, at::arange(n, at::TensorOptions().dtype(at::kLong).device(device)), seqs,
                                     ForwardOptions{impl, false});
  return hidden.slice(0, n - 1, n);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// IncrementalDecoder
IncrementalDecoder::IncrementalDecoder(CausalLM model, int64_t capacity)
    : model_(std::move(model)),
      cache_(model_->config(), {capacity}, model_->model->embed_tokens->weight.options()) {}

at::Tensor IncrementalDecoder::forward(const at::Tensor& ids, kernels::AttentionImpl impl) {
  const int64_t n = ids.size(0);
  TORCH_CHECK(n >= 1, "IncrementalDecoder::forward: no tokens");
  KvCache::Step step = cache_.plan({0}, {n});
  ForwardOptions options;
  options.attention = impl;
  options.cache = &cache_;
  return model_->forward(ids.to(step.positions.device()), step.positions, step.seqs, options);
}

// ---------------------------------------------------------------------------------------------------
// Token selection
int32_t select_next_token(const at::Tensor& logits, const GenerationOptions& options, at::Generator& generator) {
  at::Tensor scores = logits.to(at::kCPU, at::kFloat).reshape({-1});  // [vocab]
  if (options.temperature <= 0.0) return static_cast<int32_t>(scores.argmax().item<int64_t>());
  const float neg_inf = -std::numeric_limits<float>::infinity();
  scores = scores / options.temperature;
  const int64_t vocab = scores.size(0);
  if (options.top_k > 0 && options.top_k < vocab) {
    at::Tensor kth = std::get<0>(scores.topk(options.top_k)).select(0, options.top_k - 1);
    scores = scores.masked_fill(scores < kth, neg_inf);  // ties with the k-th score are kept, as transformers
  }
  if (options.top_p < 1.0) {
    // Ascending sort: drop the low tail whose cumulative probability is <= 1 - top_p; keep >= 1 token.
    auto [sorted, order] = scores.sort(/*dim=*/0, /*descending=*/false);
    at::Tensor cumulative = sorted.softmax(0).cumsum(0);
    at::Tensor remove = cumulative <= (1.0 - options.top_p);
    remove.index_put_({vocab - 1}, false);
    scores = scores.scatter(0, order, sorted.masked_fill(remove, neg_inf));
  }
  at::Tensor probs = scores.softmax(0);
  return static_cast<int32_t>(at::multinomial(probs, 1, /*replacement=*/false, generator).item<int64_t>());
}

// ---------------------------------------------------------------------------------------------------
// Decoding loop
namespace {

bool is_stop_id(const GenerationOptions& options, int32_t id) {
  return std::find(options.stop_ids.begin(), options.stop_ids.end(), id) != options.stop_ids.end();
}

// Decodes prompts[i] with generators[i]; on_token (with one prompt) sees every new token as it is chosen.
std::vector<std::vector<int32_t>> decode(CausalLM& model, const std::vector<std::vector<int32_t>>& prompts,
                                         const GenerationOptions& options, std::vector<at::Generator>& generators,
                                         const TokenCallback& on_token) {
  const size_t count = prompts.size();
  std::vector<std::vector<int32_t>> generated(count);
  if (options.max_new_tokens == 0 || count == 0) return generated;
  torch::NoGradGuard no_grad;
  EvalModeGuard eval_mode(model);
  const at::Device device = model->model->embed_tokens->weight.device();
  // Records `token` for sequence i; returns true when sequence i goes on.
  auto emit = [&](size_t i, int32_t token) {
    generated[i].push_back(token);
    if (on_token) on_token(token);
    return !is_stop_id(options, token) && static_cast<int64_t>(generated[i].size()) < options.max_new_tokens;
  };

  if (!options.use_cache) {  // the reference: rerun each whole sequence every step
    for (size_t i = 0; i < count; ++i) {
      std::vector<int32_t> sequence = prompts[i];
      while (true) {
        at::Tensor hidden = full_forward_last(model, sequence, device, options.attention);  // [1, hidden]
        int32_t token = select_next_token(model->logits(hidden)[0], options, generators[i]);
        sequence.push_back(token);
        if (!emit(i, token)) break;
      }
    }
    return generated;
  }

  std::vector<int64_t> capacities, active, counts;  // active: the sequences of this step, in packed order
  std::vector<int64_t> step_ids;                    // their tokens, packed
  for (size_t i = 0; i < count; ++i) {
    const std::vector<int32_t>& prompt = prompts[i];
    capacities.push_back(static_cast<int64_t>(prompt.size()) + options.max_new_tokens);
    active.push_back(static_cast<int64_t>(i));
    counts.push_back(static_cast<int64_t>(prompt.size()));
    step_ids.insert(step_ids.end(), prompt.begin(), prompt.end());
  }
  KvCache cache(model->config(), capacities, model->model->embed_tokens->weight.options());
  ForwardOptions forward_options;
  forward_options.attention = options.attention;
  forward_options.cache = &cache;
  while (!active.empty()) {  // the first step is the prefill of every prompt, then one token per sequence
    KvCache::Step step = cache.plan(active, counts);
    at::Tensor ids = at::tensor(step_ids, at::kLong).to(device);
    at::Tensor hidden = model->forward(ids, step.positions, step.seqs, forward_options);  // [T, hidden]
    if (hidden.size(0) != static_cast<int64_t>(active.size())) {  // each sequence's last row
      at::Tensor last = step.seqs.cu_seqlens_host.slice(0, 1).to(at::kLong) - 1;
      hidden = hidden.index_select(0, last.to(device));  // [active, hidden]
    }
    at::Tensor logits = model->logits(hidden).to(at::kCPU, at::kFloat);  // [active, vocab]; SYNC per step
    std::vector<int64_t> still_active;
    step_ids.clear();
    for (size_t d = 0; d < active.size(); ++d) {
      const size_t i = static_cast<size_t>(active[d]);
      const int32_t token = select_next_token(logits[static_cast<int64_t>(d)], options, generators[i]);
      if (emit(i, token)) {
        still_active.push_back(active[d]);
        step_ids.push_back(token);
      }
    }
    active = std::move(still_active);
    counts.assign(active.size(), 1);
  }
  return generated;
}

std::vector<at::Generator> sampler_generators(size_t count, const std::vector<uint64_t>& seeds, uint64_t seed) {
  std::vector<at::Generator> generators;
  for (size_t i = 0; i < count; ++i) generators.push_back(at::make_generator<at::CPUGeneratorImpl>(seeds.empty() ? seed : seeds[i]));
  return generators;
}

void check_request(const std::vector<std::vector<int32_t>>& prompts, const GenerationOptions& options,
                   const std::vector<uint64_t>& seeds) {
  for (size_t i = 0; i < prompts.size(); ++i) TORCH_CHECK(!prompts[i].empty(), "generate: prompt ", i, " has no tokens");
  TORCH_CHECK(options.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0");
  TORCH_CHECK(seeds.empty() || seeds.size() == prompts.size(), "generate_batch: ", seeds.size(), " seeds for ",
              prompts.size(), " prompts");
}

}  // namespace

std::vector<int32_t> generate(CausalLM& model, const std::vector<int32_t>& prompt_ids,
                              const GenerationOptions& options, const TokenCallback& on_token) {
  const std::vector<std::vector<int32_t>> prompts{prompt_ids};
  check_request(prompts, options, {});
  std::vector<at::Generator> generators = sampler_generators(1, {}, options.seed);
  return decode(model, prompts, options, generators, on_token)[0];
}

std::vector<std::vector<int32_t>> generate_batch(CausalLM& model, const std::vector<std::vector<int32_t>>& prompts,
                                                 const GenerationOptions& options, const std::vector<uint64_t>& seeds) {
  check_request(prompts, options, seeds);
  std::vector<at::Generator> generators = sampler_generators(prompts.size(), seeds, options.seed);
  return decode(model, prompts, options, generators, nullptr);
}

std::string answer_text(const data::Tokenizer& tokenizer, std::vector<int32_t> ids, const GenerationOptions& options) {
  if (!ids.empty() && is_stop_id(options, ids.back())) ids.pop_back();
  return tokenizer.decode(ids, /*skip_special_tokens=*/false);
}

std::string generate_text(CausalLM& model, const data::Tokenizer& tokenizer, const std::vector<int32_t>& prompt_ids,
                          const GenerationOptions& options) {
  return answer_text(tokenizer, generate(model, prompt_ids, options), options);
}

std::vector<int32_t> default_stop_ids(const ModelConfig& config, const data::Tokenizer* tokenizer) {
  std::vector<int32_t> ids;
  auto add = [&](int64_t id) {
    if (std::find(ids.begin(), ids.end(), static_cast<int32_t>(id)) == ids.end()) ids.push_back(static_cast<int32_t>(id));
  };
  if (tokenizer) {
    for (int32_t id : tokenizer->special_tokens().eos_ids) add(id);
  }
  for (int64_t id : config.eos_token_ids) add(id);
  return ids;
}

}  // namespace sft::model
