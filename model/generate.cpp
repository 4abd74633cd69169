// model/generate.cpp: the KV-cache incremental forward (IncrementalDecoder), token selection (greedy,
// temperature / top-k / top-p) and the decoding loop. The layer math mirrors model/llama.cpp
// (pre-norm residual blocks, rotary on q/k, grouped-query attention, SwiGLU) but reads keys and
// values of earlier positions from the cache instead of recomputing them.
#include "model/generate.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace sft::model {
namespace {

// [..., d] -> [..., d] with halves (x1, x2) -> (-x2, x1); as in model/llama.cpp.
at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
}

// x: [n, H, D]; cos/sin: [n, D]
at::Tensor apply_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  at::Tensor c = cos.unsqueeze(1), s = sin.unsqueeze(1);
  return x * c + rotate_half(x) * s;
}

// Attention of n new query rows over L = past + n cached positions; row i sees keys [0, past + i].
//   q: [n, Hq, D]; k, v: [L, Hkv, D] -> [n, Hq, D] in q's dtype. Math in fp32.
// Query head h uses kv head h / (Hq / Hkv), as transformers' repeat_kv.
at::Tensor cached_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t past,
                            double scale) {
  const int64_t n = q.size(0), hq = q.size(1), d = q.size(2);
  const int64_t length = k.size(0), hkv = k.size(1), group = hq / hkv;
  at::Tensor qf = q.to(at::kFloat).view({n, hkv, group, d}).permute({1, 2, 0, 3}).reshape({hkv, group * n, d});
  at::Tensor kf = k.to(at::kFloat).permute({1, 2, 0});  // [Hkv, D, L]
  at::Tensor vf = v.to(at::kFloat).permute({1, 0, 2});  // [Hkv, L, D]
  at::Tensor scores = at::bmm(qf, kf).mul_(scale);       // [Hkv, G*n, L]
  if (n > 1) {
    at::Tensor key_pos = at::arange(length, at::TensorOptions().dtype(at::kLong).device(q.device()));
    at::Tensor query_pos = at::arange(past, past + n, at::TensorOptions().dtype(at::kLong).device(q.device()));
    at::Tensor masked = key_pos.unsqueeze(0) > query_pos.unsqueeze(1);  // [n, L]
    scores = scores.view({hkv, group, n, length})
                 .masked_fill(masked, -std::numeric_limits<float>::infinity())
                 .view({hkv, group * n, length});
  }
  at::Tensor out = at::bmm(scores.softmax(-1), vf);  // [Hkv, G*n, D]
  return out.view({hkv, group, n, d}).permute({2, 0, 1, 3}).reshape({n, hq, d}).to(q.scalar_type());
}

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
    : model_(std::move(model)), rotary_(model_->config()), capacity_(capacity) {
  TORCH_CHECK(capacity > 0, "IncrementalDecoder: capacity must be positive");
  const ModelConfig& config = model_->config();
  const at::Tensor& embed = model_->model->embed_tokens->weight;
  for (const auto& module : *model_->model->layers) {
    auto layer = std::dynamic_pointer_cast<DecoderLayerImpl>(module);
    TORCH_CHECK(layer, "IncrementalDecoder: layer is not a DecoderLayer");
    layers_.push_back(layer);
    keys_.push_back(at::empty({capacity, config.num_key_value_heads, config.head_dim}, embed.options()));
    values_.push_back(at::empty({capacity, config.num_key_value_heads, config.head_dim}, embed.options()));
  }
}

at::Tensor IncrementalDecoder::forward(const at::Tensor& ids, kernels::AttentionImpl impl) {
  const int64_t n = ids.size(0);
  TORCH_CHECK(n >= 1, "IncrementalDecoder::forward: no tokens");
  TORCH_CHECK(length_ + n <= capacity_, "IncrementalDecoder: cache capacity ", capacity_, " exceeded (",
              length_ + n, " positions)");
  const int64_t past = length_;
  const at::Device device = keys_.empty() ? ids.device() : keys_[0].device();
  at::Tensor h = model_->model->embed_tokens->forward(ids.to(device));  // [n, hidden]
  at::Tensor positions = at::arange(past, past + n, at::TensorOptions().dtype(at::kLong).device(device));
  auto [cos, sin] = rotary_.tables(positions, h.scalar_type());  // [n, D] each
  kernels::PackedSequences prefill_seqs;
  if (past == 0) {
    at::Tensor cu_host = at::tensor(std::vector<int32_t>{0, static_cast<int32_t>(n)}, at::kInt);
    prefill_seqs = {cu_host.to(device), cu_host, n};
  }
  for (size_t l = 0; l < layers_.size(); ++l) {
    DecoderLayerImpl& layer = *layers_[l];
    AttentionImpl& attn = *layer.self_attn;
    at::Tensor x = layer.input_layernorm->forward(h);
    at::Tensor q = attn.q_proj->forward(x).view({n, attn.num_heads, attn.head_dim});     // [n, Hq, D]
    at::Tensor k = attn.k_proj->forward(x).view({n, attn.num_kv_heads, attn.head_dim});  // [n, Hkv, D]
    at::Tensor v = attn.v_proj->forward(x).view({n, attn.num_kv_heads, attn.head_dim});  // [n, Hkv, D]
    q = apply_rotary(q, cos, sin);
    k = apply_rotary(k, cos, sin);
    keys_[l].narrow(0, past, n).copy_(k);
    values_[l].narrow(0, past, n).copy_(v);
    const double scale = 1.0 / std::sqrt(static_cast<double>(attn.head_dim));
    at::Tensor attended;  // [n, Hq, D]
    if (past == 0) {
      attended = kernels::varlen_attention(q, k, v, prefill_seqs, scale, /*causal=*/true, impl);
    } else {
      attended = cached_attention(q, keys_[l].narrow(0, 0, past + n), values_[l].narrow(0, 0, past + n), past, scale);
    }
    h = h + attn.o_proj->forward(attended.reshape({n, attn.num_heads * attn.head_dim}));
    h = h + layer.mlp->forward(layer.post_attention_layernorm->forward(h));
  }
  length_ = past + n;
  return model_->model->norm->forward(h);
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
std::vector<int32_t> generate(CausalLM& model, const std::vector<int32_t>& prompt_ids,
                              const GenerationOptions& options, const TokenCallback& on_token) {
  TORCH_CHECK(!prompt_ids.empty(), "generate: the prompt has no tokens");
  TORCH_CHECK(options.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0");
  std::vector<int32_t> generated;
  if (options.max_new_tokens == 0) return generated;
  torch::NoGradGuard no_grad;
  EvalModeGuard eval_mode(model);
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  const at::Device device = model->model->embed_tokens->weight.device();
  auto is_stop = [&](int32_t id) {
    return std::find(options.stop_ids.begin(), options.stop_ids.end(), id) != options.stop_ids.end();
  };
  // Emits `token`; returns true when decoding goes on.
  auto emit = [&](int32_t token) {
    generated.push_back(token);
    if (on_token) on_token(token);
    return !is_stop(token) && static_cast<int64_t>(generated.size()) < options.max_new_tokens;
  };

  if (!options.use_cache) {
    std::vector<int32_t> sequence = prompt_ids;
    while (true) {
      at::Tensor hidden = full_forward_last(model, sequence, device, options.attention);  // [1, hidden]
      int32_t token = select_next_token(model->logits(hidden)[0], options, generator);
      sequence.push_back(token);
      if (!emit(token)) break;
    }
    return generated;
  }

  const int64_t prompt_len = static_cast<int64_t>(prompt_ids.size());
  IncrementalDecoder decoder(model, prompt_len + options.max_new_tokens);
  at::Tensor prompt = at::tensor(std::vector<int64_t>(prompt_ids.begin(), prompt_ids.end()), at::kLong);
  at::Tensor hidden = decoder.forward(prompt, options.attention);  // [P, hidden]
  int32_t token = select_next_token(model->logits(hidden.slice(0, prompt_len - 1, prompt_len))[0], options, generator);
  while (emit(token)) {
    hidden = decoder.forward(at::tensor(std::vector<int64_t>{token}, at::kLong));  // [1, hidden]
    token = select_next_token(model->logits(hidden)[0], options, generator);
  }
  return generated;
}

std::string generate_text(CausalLM& model, const data::Tokenizer& tokenizer, const std::vector<int32_t>& prompt_ids,
                          const GenerationOptions& options) {
  std::vector<int32_t> ids = generate(model, prompt_ids, options);
  if (!ids.empty() &&
      std::find(options.stop_ids.begin(), options.stop_ids.end(), ids.back()) != options.stop_ids.end()) {
    ids.pop_back();
  }
  return tokenizer.decode(ids, /*skip_special_tokens=*/false);
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
