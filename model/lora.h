// model/lora.h: the two explicit transforms of a built model: LoRA (swap targeted projections for
// LoraProjection, keeping base names `weight`/`bias` and adding `lora_A.weight`/`lora_B.weight` as PEFT
// names them, and `lora_magnitude_vector` for DoRA) and freezing (choose which parameters train). Plus merging
// LoRA/DoRA into the base weights.
#pragma once
#include <torch/nn/modules/linear.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/choices.h"
#include "model/llama.h"

namespace sft::model {

class Nf4ProjectionImpl;  // model/quantize.h

// LoRA: base(x) + scale * B(A(dropout(x))). A: [r, in] (Kaiming-uniform, a = sqrt(5), as PEFT), B: [out, r] = 0,
// so the adapted model equals the base model at step 0.
// DoRA (PEFT use_dora): the weight is m * (W + scale*B@A) / ||W + scale*B@A||, the norm taken per output row
// (PEFT's get_weight_norm: linalg.norm(W + dW, dim=1)) and detached from the gradient, m: [out] trainable,
// initialised to that norm so step 0 equals the base model. The bias is not scaled.
// QLoRA: when `base` is an Nf4Projection (model/quantize.h) the base part runs through its NF4 weight
// (dequantised per call) and `weight` is its packed codes; base_weight() gives the dequantised W.
class LoraProjectionImpl : public ProjectionImpl {
 public:
  LoraProjectionImpl(const ProjectionImpl& base, int64_t rank, double scale, double dropout, bool dora = false);
  at::Tensor forward(const at::Tensor& x) override;  // forward_from_base(x, base_forward(x))
  // The fused q/k/v, gate/up GEMMs (model::project_group): the base part comes from the shared base GEMM
  // (not with an NF4 base), and with no dropout active and no DoRA the A part from the shared A GEMM:
  // forward_from_lora_A(base_result, x A^T) = base_result + scale * B (x A^T), as forward computes it.
  bool dense_base() const override { return !is_quantized(); }
  at::Tensor forward_from_base(const at::Tensor& x, const at::Tensor& result) override;
  at::Tensor groupable_lora_A() override;
  std::optional<GroupableLora> groupable_lora() override;  // when dense_base() and groupable_lora_A()
  at::Tensor forward_from_lora_A(const at::Tensor& base_result, const at::Tensor& a) override;
  // The frozen base: x W^T + b (QLoRA: through the NF4 weight), and W [out, in] in the base dtype.
  at::Tensor base_forward(const at::Tensor& x);
  at::Tensor base_weight() const;
  bool is_quantized() const { return quantized_base != nullptr; }
  // The dense update scale * B @ A: [out, in].
  at::Tensor delta_weight() const;
  // DoRA: ||W + scale * B @ A|| per output row, fp32 [out], computed without gradient.
  at::Tensor dora_weight_norm() const;
  // The effective weight the adapter gives, fp32 [out, in]: W + dW (LoRA) or m * (W + dW) / norm (DoRA).
  at::Tensor merged_weight() const;
  bool is_dora() const { return lora_magnitude_vector.defined(); }

  torch::nn::Linear lora_A{nullptr}, lora_B{nullptr};
  at::Tensor lora_magnitude_vector;  // DoRA only: [out] fp32; undefined for plain LoRA
  // PiSSA/OLoRA only (model/lora_init.h): the adapter as initialised, fp32 [r, in] / [out, r], not trained and
  // not registered; the export turns the trained adapter into one for the original base with them.
  at::Tensor initial_A, initial_B;
  std::shared_ptr<Nf4ProjectionImpl> quantized_base;  // QLoRA only; shares `weight`, `bias` and the buffers
  double scale;
  double dropout;
  bool fused_dropout = false;  // model.fused_ops dropout: A(dropout(x)) as one kernels::dropout_linear (not DoRA)
};
TORCH_MODULE(LoraProjection);

struct LoraSpec {
  int64_t rank = 8;
  double alpha = 16.0;
  double dropout = 0.05;
  bool rslora = false;
  std::vector<std::string> targets;  // projection names, or {"all"}
  bool dora = false;                 // weight-decomposed LoRA (PEFT use_dora)
  LoraInit init = LoraInit::kDefault;  // model/lora_init.h
};

double lora_scale(const LoraSpec& spec);  // alpha / r, or alpha / sqrt(r) with rslora

// Calls fn(parent module path, parent module, child name, projection holder) for every projection in the
// blocks (q, k, v, o, gate, up, down of every layer), in layer order.
template <class Fn>
void for_each_block_projection(CausalLM& model, Fn&& fn) {
  int64_t index = 0;
  for (const auto& module : *model->model->layers) {
    auto layer = std::dynamic_pointer_cast<DecoderLayerImpl>(module);
    const std::string prefix = "model.layers." + std::to_string(index++) + ".";
    AttentionImpl& attn = *layer->self_attn;
    MLPImpl& mlp = *layer->mlp;
    fn(prefix + "self_attn", attn, "q_proj", attn.q_proj);
    fn(prefix + "self_attn", attn, "k_proj", attn.k_proj);
    fn(prefix + "self_attn", attn, "v_proj", attn.v_proj);
    fn(prefix + "self_attn", attn, "o_proj", attn.o_proj);
    fn(prefix + "mlp", mlp, "gate_proj", mlp.gate_proj);
    fn(prefix + "mlp", mlp, "up_proj", mlp.up_proj);
    fn(prefix + "mlp", mlp, "down_proj", mlp.down_proj);
  }
}

// Replaces every targeted projection in every layer; freezes all base parameters. A is initialised from
// the current default generator (seed it first), then re-initialised per spec.init (PiSSA/OLoRA change the
// base weights too); DoRA magnitudes are set after that, from the initialised W + scale * B @ A. Returns the adapted module paths
// ("model.layers.0.self_attn.q_proj", ...).
std::vector<std::string> apply_lora(CausalLM& model, const LoraSpec& spec);

// Every LoraProjection in the model by module path.
std::map<std::string, std::shared_ptr<LoraProjectionImpl>> lora_modules(CausalLM& model);

// W += scale * B @ A for every adapter (DoRA: W = m * (W + scale * B @ A) / ||W + scale * B @ A||), then swaps plain projections back in (LoRA params disappear).
// Refuses a QLoRA model: merging into dequantised 4-bit weights is peft #2321's trap; `sft merge` loads
// the unquantised base from the model directory instead.
void merge_lora(CausalLM& model);

struct FreezeSpec {
  std::optional<int64_t> layer_count = 2;      // > 0: last N, < 0: first |N|
  std::vector<int64_t> layer_indices;          // used when layer_count is empty
  std::vector<std::string> trainable_modules;  // {"all"} or names matched as a path component
  std::vector<std::string> extra_modules;      // embed_tokens, norm (every *norm* parameter), lm_head
};

// LLaMA-Factory freeze semantics (_setup_freeze_tuning): the selected layers, narrowed to
// trainable_modules (a whole path component within the layer: self_attn, mlp, input_layernorm, ... and,
// beyond LLaMA-Factory, single projections such as q_proj), plus every parameter whose name contains an
// extra_modules entry. Throws InputError when a layer index is out of range.
// Returns the names of the trainable parameters.
std::vector<std::string> apply_freeze(CausalLM& model, const FreezeSpec& spec);

}  // namespace sft::model
