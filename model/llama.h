// model/llama.h: the decoder architecture (Llama / Mistral / Qwen2 family) as LibTorch modules, and
// nothing else. Module and parameter names equal transformers' (model.layers.0.self_attn.q_proj.weight),
// so model/weights.cpp maps checkpoint names through one table and LoRA keeps the base names.
// Tokens travel in the packed layout: T tokens of every document of a micro-batch in one stream.
// Training, evaluation and KV-cache decoding run the same forward; decoding passes a KvCache
// (ForwardOptions::cache), with which each attention appends its new keys/values and attends over the
// cached ones (model/kv_cache.h, as gpt-fast passes input_pos and a cache through one Attention.forward).
// RMSNorm, rotary embedding, SwiGLU, the target loss and the q/k/v and gate/up projections go through one
// kernels::OpTable shared by every module (`model.fused_ops`): the fused kernels or the composite ATen
// math, chosen once, never per call.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>

#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "kernels/ops.h"
#include "model/config.h"
#include "model/kv_cache.h"

namespace sft::model {

// The op implementations every module of one model calls (kernels/ops.h); owned by CausalLM.
using SharedOpTable = std::shared_ptr<const kernels::OpTable>;

// y = x W^T + b. Subclassed by LoRA (model/lora.h), which overrides forward and keeps `weight`/`bias`.
class ProjectionImpl : public torch::nn::Module {
 public:
  ProjectionImpl(int64_t in_features, int64_t out_features, bool with_bias, const at::TensorOptions& options);
  // Shares the parameters of `base` (used by LoRA wrappers).
  explicit ProjectionImpl(const ProjectionImpl& base);
  virtual at::Tensor forward(const at::Tensor& x);  // x: [..., in] -> [..., out]

  // The hooks of the fused q/k/v and gate/up GEMMs (project_group below; model.fused_ops projections).
  // Whether the base part is x W^T + b over `weight`/`bias`, so it can share one GEMM with its siblings:
  // a plain projection, or LoRA over one; not an NF4 (QLoRA) base or any other subclass.
  virtual bool dense_base() const;
  // forward(x) given base_result = x W^T + b computed elsewhere; a plain projection returns it.
  virtual at::Tensor forward_from_base(const at::Tensor& x, const at::Tensor& base_result);
  // LoRA whose A matrix may share one GEMM with its siblings' (no dropout active, no DoRA): lora_A.weight
  // [r, in]; otherwise undefined. Then forward_from_lora_A(base_result, x A^T) == forward(x).
  virtual at::Tensor groupable_lora_A() { return {}; }
  // LoRA over a dense base whose whole projection may run in one kernels::lora_group_linear node (no
  // dropout active, no DoRA, not QLoRA; model.fused_ops lora): its A [r, in], B [out, r] and scale.
  struct GroupableLora {
    at::Tensor lora_A, lora_B;
    double scale = 1.0;
  };
  virtual std::optional<GroupableLora> groupable_lora() { return std::nullopt; }
  virtual at::Tensor forward_from_lora_A(const at::Tensor& base_result, const at::Tensor& a);
  int64_t in_features() const { return weight.size(1); }
  int64_t out_features() const { return weight.size(0); }

  at::Tensor weight;  // [out, in]
  at::Tensor bias;    // [out] or undefined
};
TORCH_MODULE(Projection);

// The outputs of projections of one input x (q/k/v of an attention, gate/up of an MLP), each [..., out_i].
// Equal to {p->forward(x)} for each p; with ops.group_projections (model.fused_ops projections) the dense base
// parts run as one GEMM (kernels/ops.h linear_group), and so do the A matrices of the groupable LoRA
// adapters among them; their weights are first made adjacent row blocks of one storage if a transform
// (loading, .to(), a dtype change) has separated them. With ops.group_lora (model.fused_ops lora), when
// every projection of the group is groupable LoRA (and kernels::lora_group_supported agrees), the whole
// group is one lora_group_linear node instead; that takes precedence. Otherwise one forward per
// projection, as before. A group of one is allowed (o_proj, down_proj).
std::vector<at::Tensor> project_group(const at::Tensor& x, const std::vector<ProjectionImpl*>& group,
                                      const kernels::OpTable& ops);

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t size, double eps, const at::TensorOptions& options, SharedOpTable ops);
  at::Tensor forward(const at::Tensor& x);  // [..., size]; statistics in fp32 as transformers does
  at::Tensor weight;                        // [size]
  double eps;

 private:
  SharedOpTable ops_;
};
TORCH_MODULE(RMSNorm);

// Rotary position embedding tables computed from position ids (restarting at 0 per document).
class RotaryEmbedding {
 public:
  explicit RotaryEmbedding(const ModelConfig& config);
  // positions: int64 [T] -> {cos, sin}, each [T, head_dim] in `dtype`
  std::pair<at::Tensor, at::Tensor> tables(const at::Tensor& positions, at::ScalarType dtype) const;
  const at::Tensor& inv_freq() const { return inv_freq_; }

 private:
  at::Tensor inv_freq_;  // fp32 [head_dim / 2], CPU; moved to the positions' device on use
};

class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(const ModelConfig& config, const at::TensorOptions& options, SharedOpTable ops);
  // x: [T, hidden]; cos/sin: [T, head_dim] -> [T, hidden]. With a cache, seqs packs the new tokens of
  // the planned step (KvCache::plan) and their keys/values are appended before attending.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                     const kernels::PackedSequences& seqs, kernels::AttentionImpl impl, LayerKvCache cache = {});
  Projection q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  int64_t num_heads, num_kv_heads, head_dim;

 private:
  SharedOpTable ops_;
};
TORCH_MODULE(Attention);

class MLPImpl : public torch::nn::Module {
 public:
  MLPImpl(const ModelConfig& config, const at::TensorOptions& options, SharedOpTable ops);
  at::Tensor forward(const at::Tensor& x);  // down(silu(gate(x)) * up(x)); [T, hidden] -> [T, hidden]
  Projection gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};

 private:
  SharedOpTable ops_;
};
TORCH_MODULE(MLP);

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const ModelConfig& config, const at::TensorOptions& options, const SharedOpTable& ops);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                     const kernels::PackedSequences& seqs, kernels::AttentionImpl impl, LayerKvCache cache = {});
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  Attention self_attn{nullptr};
  MLP mlp{nullptr};
};
TORCH_MODULE(DecoderLayer);

// HF's `model.` prefix: embeddings, the layer stack and the final norm.
class DecoderImpl : public torch::nn::Module {
 public:
  DecoderImpl(const ModelConfig& config, const at::TensorOptions& options, const SharedOpTable& ops);
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
};
TORCH_MODULE(Decoder);

struct ForwardOptions {
  kernels::AttentionImpl attention = kernels::AttentionImpl::Auto;
  bool gradient_checkpointing = false;  // recompute each layer in backward instead of storing activations
  // Decoding: the cache whose planned step (KvCache::plan gave the positions and seqs) this forward
  // runs; committed at the end of the forward. Null: no cache (training, evaluation, full recompute).
  KvCache* cache = nullptr;
};

class CausalLMImpl : public torch::nn::Module {
 public:
  // fused: which ops use the fused kernels (`model.fused_ops`, default auto = all).
  CausalLMImpl(const ModelConfig& config, const at::TensorOptions& options,
               const kernels::FusedOps& fused = kernels::FusedOps::all());

  // input_ids, position_ids: int64 [T] -> final hidden states [T, hidden] (after the final norm).
  // Rotary tables come from position_ids, so with a cache they continue each cached sequence.
  at::Tensor forward(const at::Tensor& input_ids, const at::Tensor& position_ids,
                     const kernels::PackedSequences& seqs, const ForwardOptions& options);
  // Vocabulary projection of selected rows only: hidden [N, hidden] -> logits [N, vocab].
  at::Tensor logits(const at::Tensor& hidden);
  const at::Tensor& output_weight();  // lm_head.weight, or embed_tokens.weight when tied
  // Sum over the N target rows of the token cross-entropy of their next-token logits, fp32 scalar:
  //   hidden_at_targets [N, hidden], target_ids int64 [N]. With fused linear_ce it never builds the
  //   [N, vocab] logits (kernels/fused_ops.h); otherwise cross_entropy(logits(hidden).float(), sum).
  at::Tensor target_loss_sum(const at::Tensor& hidden_at_targets, const at::Tensor& target_ids);

  // Switches every module to `fused` (the setup step applies `model.fused_ops` once, before training).
  void set_fused_ops(const kernels::FusedOps& fused);
  const kernels::FusedOps& fused_ops() const { return fused_; }

  const ModelConfig& config() const { return config_; }
  Decoder model{nullptr};
  Projection lm_head{nullptr};  // null when tie_word_embeddings

 private:
  ModelConfig config_;
  RotaryEmbedding rotary_;
  kernels::FusedOps fused_;
  std::shared_ptr<kernels::OpTable> ops_;  // shared (read-only) by every module
};
TORCH_MODULE(CausalLM);

}  // namespace sft::model
