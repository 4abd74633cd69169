// model/llama.cpp: forward passes of the decoder modules, mirroring transformers' Llama/Mistral/Qwen2
// math (fp32 RMSNorm statistics, fp32 rotary tables, SwiGLU), in the packed [T, ...] layout.
#include "model/llama.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/nn/init.h>

#include <cmath>
#include <optional>
#include <stdexcept>
#include <typeinfo>
#include <tuple>
#include <utility>

#include "model/checkpointing.h"

namespace sft::model {

// ---------------------------------------------------------------------------------------------------
// Projection
ProjectionImpl::ProjectionImpl(int64_t in_features, int64_t out_features, bool with_bias,
                               const at::TensorOptions& options) {
  // Not initialised: the only builder (model/weights.cpp load_pretrained) reads the checkpoint into it,
  // and an init pass would make every page resident before that (README "QLoRA", load-time memory).
  weight = register_parameter("weight", at::empty({out_features, in_features}, options));
  if (with_bias) bias = register_parameter("bias", at::zeros({out_features}, options));
}

ProjectionImpl::ProjectionImpl(const ProjectionImpl& base) : torch::nn::Module() {
  weight = register_parameter("weight", base.weight, base.weight.requires_grad());
  if (base.bias.defined()) bias = register_parameter("bias", base.bias, base.bias.requires_grad());
}

at::Tensor ProjectionImpl::forward(const at::Tensor& x) {
  return at::linear(x, weight, bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt);
}

bool ProjectionImpl::dense_base() const { return typeid(*this) == typeid(ProjectionImpl); }

at::Tensor ProjectionImpl::forward_from_base(const at::Tensor&, const at::Tensor& base_result) { return base_result; }

at::Tensor ProjectionImpl::forward_from_lora_A(const at::Tensor&, const at::Tensor&) {
  throw std::logic_error("forward_from_lora_A: not a LoRA projection");
}

// Design: the separate q/k/v (gate/up) modules and their HF-named parameters stay as they are, so loading,
// checkpoints, export, PEFT adapters and freezing see no difference; only their storage is shared. The
// optimizer updates each leaf in place, which keeps the layout; what replaces a tensor's data (set_data in
// .to(), dtype upcasts, PiSSA) is undone here, at the next forward (a few pointer compares when nothing
// changed). A concatenated weight with split views at save time would instead touch every consumer of
// named_parameters. With LoRA dropout active each adapter draws its own mask (PEFT does), so their inputs
// differ and their A matrices stay separate GEMMs; the base GEMM is still shared.
namespace {

// The whole group as one kernels::lora_group_linear node, or nullopt where it does not apply.
std::optional<std::vector<at::Tensor>> lora_group(const at::Tensor& x, const std::vector<ProjectionImpl*>& group) {
  std::vector<at::Tensor> weights, biases, lora_A, lora_B;
  std::vector<double> scales;
  for (ProjectionImpl* p : group) {
    const std::optional<ProjectionImpl::GroupableLora> lora = p->groupable_lora();
    if (!lora || p->bias.defined() != group[0]->bias.defined()) return std::nullopt;
    weights.push_back(p->weight);
    if (p->bias.defined()) biases.push_back(p->bias);
    lora_A.push_back(lora->lora_A);
    lora_B.push_back(lora->lora_B);
    scales.push_back(lora->scale);
  }
  if (!kernels::lora_group_supported(x, weights, biases, lora_A, lora_B)) return std::nullopt;
  return kernels::lora_group_linear(x, weights, biases, lora_A, lora_B, scales);
}

}  // namespace

std::vector<at::Tensor> project_group(const at::Tensor& x, const std::vector<ProjectionImpl*>& group,
                                      const kernels::OpTable& ops) {
  if (ops.group_lora) {
    if (std::optional<std::vector<at::Tensor>> outputs = lora_group(x, group)) return *outputs;
  }
  std::vector<at::Tensor> outputs;
  bool fusable = ops.group_projections;
  std::vector<at::Tensor> weights, biases;
  for (ProjectionImpl* p : group) {
    fusable = fusable && p->dense_base() && p->bias.defined() == group[0]->bias.defined();
    weights.push_back(p->weight);
    if (p->bias.defined()) biases.push_back(p->bias);
  }
  if (!fusable) {
    for (ProjectionImpl* p : group) outputs.push_back(p->forward(x));
    return outputs;
  }
  kernels::make_rows_adjacent(weights);  // false (then linear_group runs them separately) if dtypes differ
  if (!biases.empty()) kernels::make_rows_adjacent(biases);
  const std::vector<at::Tensor> base = ops.linear_group(x, weights, biases);  // [..., out_i] each
  // The LoRA A matrices that can share one GEMM: x A_i^T for all of them at once, then B_i per module.
  std::vector<size_t> grouped;
  std::vector<at::Tensor> a_weights;
  for (size_t i = 0; i < group.size(); ++i) {
    at::Tensor a = group[i]->groupable_lora_A();
    if (a.defined() && (a_weights.empty() || a.scalar_type() == a_weights[0].scalar_type())) {
      grouped.push_back(i);
      a_weights.push_back(a);
    }
  }
  std::vector<at::Tensor> a_outputs(group.size());
  if (grouped.size() >= 2) {
    kernels::make_rows_adjacent(a_weights);
    const std::vector<at::Tensor> a = ops.linear_group(x.to(a_weights[0].scalar_type()), a_weights, {});  // [..., r_i]
    for (size_t j = 0; j < grouped.size(); ++j) a_outputs[grouped[j]] = a[j];
  }
  for (size_t i = 0; i < group.size(); ++i) {
    outputs.push_back(a_outputs[i].defined() ? group[i]->forward_from_lora_A(base[i], a_outputs[i])
                                             : group[i]->forward_from_base(x, base[i]));
  }
  return outputs;
}

// ---------------------------------------------------------------------------------------------------
// RMSNorm: weight * (x / sqrt(mean(x^2) + eps)), statistics in fp32, result cast back before the scale.
RMSNormImpl::RMSNormImpl(int64_t size, double eps_, const at::TensorOptions& options, SharedOpTable ops)
    : eps(eps_), ops_(std::move(ops)) {
  weight = register_parameter("weight", at::ones({size}, options));
}

at::Tensor RMSNormImpl::forward(const at::Tensor& x) { return ops_->rms_norm(x, weight, eps); }

// ---------------------------------------------------------------------------------------------------
// Rotary embedding
RotaryEmbedding::RotaryEmbedding(const ModelConfig& config) {
  const int64_t dim = config.head_dim;
  at::Tensor exponents = at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim);
  at::Tensor inv_freq = 1.0 / at::pow(config.rope_theta, exponents);  // fp32 [dim/2]
  if (config.rope_scaling == RopeScaling::Linear) {
    inv_freq = inv_freq / config.rope_factor;
  } else if (config.rope_scaling == RopeScaling::Llama3) {
    // Llama 3.1 frequency-dependent scaling: long wavelengths divided by factor, short ones kept,
    // a smooth blend in between.
    const double factor = config.rope_factor;
    const double low = config.rope_low_freq_factor, high = config.rope_high_freq_factor;
    const double old_context = static_cast<double>(config.rope_original_max_position);
    const double low_freq_wavelen = old_context / low;
    const double high_freq_wavelen = old_context / high;
    at::Tensor wavelen = 2 * M_PI / inv_freq;
    at::Tensor scaled = at::where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq);
    at::Tensor smooth = (old_context / wavelen - low) / (high - low);
    at::Tensor smoothed = (1 - smooth) * scaled / factor + smooth * scaled;
    at::Tensor medium = (wavelen >= high_freq_wavelen).logical_and(wavelen <= low_freq_wavelen);
    inv_freq = at::where(medium, smoothed, scaled);
  }
  inv_freq_ = inv_freq.contiguous();
}

std::pair<at::Tensor, at::Tensor> RotaryEmbedding::tables(const at::Tensor& positions,
                                                          at::ScalarType dtype) const {
  at::Tensor inv_freq = inv_freq_.to(positions.device());
  at::Tensor freqs = positions.to(at::kFloat).unsqueeze(1) * inv_freq.unsqueeze(0);  // [T, dim/2]
  at::Tensor angles = at::cat({freqs, freqs}, -1);                                    // [T, dim]
  return {angles.cos().to(dtype), angles.sin().to(dtype)};
}

// ---------------------------------------------------------------------------------------------------
// Attention
AttentionImpl::AttentionImpl(const ModelConfig& config, const at::TensorOptions& options, SharedOpTable ops)
    : num_heads(config.num_attention_heads),
      num_kv_heads(config.num_key_value_heads),
      head_dim(config.head_dim),
      ops_(std::move(ops)) {
  const int64_t hidden = config.hidden_size;
  const bool qkv_bias = config.attention_bias;
  q_proj = register_module("q_proj", Projection(hidden, num_heads * head_dim, qkv_bias, options));
  k_proj = register_module("k_proj", Projection(hidden, num_kv_heads * head_dim, qkv_bias, options));
  v_proj = register_module("v_proj", Projection(hidden, num_kv_heads * head_dim, qkv_bias, options));
  o_proj = register_module("o_proj", Projection(num_heads * head_dim, hidden, config.o_proj_bias(), options));
}

at::Tensor AttentionImpl::forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                                  const kernels::PackedSequences& seqs, kernels::AttentionImpl impl,
                                  LayerKvCache cache) {
  const int64_t tokens = x.size(0);
  const std::vector<at::Tensor> qkv = project_group(x, {q_proj.get(), k_proj.get(), v_proj.get()}, *ops_);
  at::Tensor q = qkv[0].view({tokens, num_heads, head_dim});     // [T, Hq, D]
  at::Tensor k = qkv[1].view({tokens, num_kv_heads, head_dim});  // [T, Hkv, D]
  at::Tensor v = qkv[2].view({tokens, num_kv_heads, head_dim});  // [T, Hkv, D]
  std::tie(q, k) = ops_->rotary(q, k, cos, sin);  // x * cos + rotate_half(x) * sin
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  at::Tensor attended;  // [T, Hq, D]
  if (cache.cache) {
    const kernels::KvCacheView cached = cache.cache->append(cache.layer, k, v);
    attended = kernels::kv_cache_attention(q, k, v, cached, seqs, scale, impl);
  } else {
    attended = kernels::varlen_attention(q, k, v, seqs, scale, /*causal=*/true, impl);
  }
  const at::Tensor flat = attended.reshape({tokens, num_heads * head_dim});
  return ops_->group_lora ? project_group(flat, {o_proj.get()}, *ops_)[0] : o_proj->forward(flat);
}

// ---------------------------------------------------------------------------------------------------
// MLP
MLPImpl::MLPImpl(const ModelConfig& config, const at::TensorOptions& options, SharedOpTable ops)
    : ops_(std::move(ops)) {
  const int64_t hidden = config.hidden_size, inner = config.intermediate_size;
  gate_proj = register_module("gate_proj", Projection(hidden, inner, config.mlp_bias, options));
  up_proj = register_module("up_proj", Projection(hidden, inner, config.mlp_bias, options));
  down_proj = register_module("down_proj", Projection(inner, hidden, config.mlp_bias, options));
}

at::Tensor MLPImpl::forward(const at::Tensor& x) {
  // up before gate, in both paths: the order LoRA dropout draws its masks in (so the switch changes no
  // draw), and the order the expression swiglu(gate(x), up(x)) ran in before the fused projections (GCC
  // evaluates those arguments right to left), which keeps the unfused path bit for bit.
  if (!ops_->group_projections && !ops_->group_lora) {
    const at::Tensor up = up_proj->forward(x);
    const at::Tensor gate = gate_proj->forward(x);
    return down_proj->forward(ops_->swiglu(gate, up));
  }
  const std::vector<at::Tensor> up_gate = project_group(x, {up_proj.get(), gate_proj.get()}, *ops_);
  const at::Tensor hidden = ops_->swiglu(up_gate[1], up_gate[0]);
  return ops_->group_lora ? project_group(hidden, {down_proj.get()}, *ops_)[0] : down_proj->forward(hidden);
}

// ---------------------------------------------------------------------------------------------------
// Decoder layer: pre-norm residual blocks.
DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& config, const at::TensorOptions& options,
                                   const SharedOpTable& ops) {
  self_attn = register_module("self_attn", Attention(config, options, ops));
  mlp = register_module("mlp", MLP(config, options, ops));
  input_layernorm =
      register_module("input_layernorm", RMSNorm(config.hidden_size, config.rms_norm_eps, options, ops));
  post_attention_layernorm =
      register_module("post_attention_layernorm", RMSNorm(config.hidden_size, config.rms_norm_eps, options, ops));
}

at::Tensor DecoderLayerImpl::forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                                     const kernels::PackedSequences& seqs, kernels::AttentionImpl impl,
                                     LayerKvCache cache) {
  at::Tensor h = x + self_attn->forward(input_layernorm->forward(x), cos, sin, seqs, impl, cache);
  return h + mlp->forward(post_attention_layernorm->forward(h));
}

DecoderImpl::DecoderImpl(const ModelConfig& config, const at::TensorOptions& options, const SharedOpTable& ops) {
  embed_tokens = register_module(
      "embed_tokens", torch::nn::Embedding(torch::nn::EmbeddingOptions(config.vocab_size, config.hidden_size)));
  embed_tokens->weight.set_data(embed_tokens->weight.to(options));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) layers->push_back(DecoderLayer(config, options, ops));
  norm = register_module("norm", RMSNorm(config.hidden_size, config.rms_norm_eps, options, ops));
}

// ---------------------------------------------------------------------------------------------------
CausalLMImpl::CausalLMImpl(const ModelConfig& config, const at::TensorOptions& options,
                           const kernels::FusedOps& fused)
    : config_(config),
      rotary_(config),
      fused_(fused),
      ops_(std::make_shared<kernels::OpTable>(kernels::op_table(fused))) {
  model = register_module("model", Decoder(config, options, ops_));
  if (!config.tie_word_embeddings) {
    lm_head = register_module("lm_head", Projection(config.hidden_size, config.vocab_size, false, options));
  }
}

at::Tensor CausalLMImpl::forward(const at::Tensor& input_ids, const at::Tensor& position_ids,
                                 const kernels::PackedSequences& seqs, const ForwardOptions& options) {
  at::Tensor h = model->embed_tokens->forward(input_ids);  // [T, hidden]
  auto [cos, sin] = rotary_.tables(position_ids, h.scalar_type());
  const bool checkpoint = options.gradient_checkpointing && at::GradMode::is_enabled() && is_training();
  if (options.cache) {
    TORCH_CHECK(!checkpoint, "CausalLM::forward: a KV cache is for decoding, not for checkpointed training");
    TORCH_CHECK(options.cache->planned_tokens() == input_ids.size(0), "CausalLM::forward: ", input_ids.size(0),
                " tokens for a cache step planned for ", options.cache->planned_tokens());
  }
  // A checkpointed layer reaches its parameters only through the recompute in backward, which autograd
  // runs only if the layer's input requires grad. With frozen embeddings (LoRA, freeze) it does not: make
  // it (as transformers' enable_input_require_grads does), or the trainable layers get no gradient.
  if (checkpoint && !h.requires_grad()) h = h.detach().requires_grad_(true);
  for (size_t l = 0; l < model->layers->size(); ++l) {
    auto layer = model->layers->ptr<DecoderLayerImpl>(l);
    if (checkpoint) {
      h = checkpointed_layer_forward(layer, h, cos, sin, seqs, options.attention);
    } else {
      h = layer->forward(h, cos, sin, seqs, options.attention, {options.cache, static_cast<int64_t>(l)});
    }
  }
  if (options.cache) options.cache->commit();
  return model->norm->forward(h);
}

const at::Tensor& CausalLMImpl::output_weight() {
  return lm_head ? lm_head->weight : model->embed_tokens->weight;
}

at::Tensor CausalLMImpl::logits(const at::Tensor& hidden) {
  if (lm_head) return lm_head->forward(hidden);
  return at::linear(hidden, model->embed_tokens->weight);
}

at::Tensor CausalLMImpl::target_loss_sum(const at::Tensor& hidden_at_targets, const at::Tensor& target_ids) {
  return ops_->linear_ce_sum(hidden_at_targets, output_weight(), target_ids);
}

void CausalLMImpl::set_fused_ops(const kernels::FusedOps& fused) {
  fused_ = fused;
  *ops_ = kernels::op_table(fused);  // the one table every module points at
}

}  // namespace sft::model
