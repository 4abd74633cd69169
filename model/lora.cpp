// model/lora.cpp: LoRA module swap, freezing and merging.
#include "model/lora.h"

#include <torch/torch.h>

#include <cmath>
#include <set>

#include "common/errors.h"
#include "kernels/dropout_linear.h"
#include "model/lora_init.h"
#include "model/quantize.h"

namespace sft::model {

LoraProjectionImpl::LoraProjectionImpl(const ProjectionImpl& base, int64_t rank, double scale_, double dropout_,
                                       bool dora)
    : ProjectionImpl(base), scale(scale_), dropout(dropout_) {
  int64_t in = in_features(), out = out_features();
  at::TensorOptions options = weight.options();
  if (const auto* nf4 = dynamic_cast<const Nf4ProjectionImpl*>(&base)) {  // QLoRA: keep the quantised base
    quantized_base = std::make_shared<Nf4ProjectionImpl>(*nf4);
    in = nf4->in_features();
    out = nf4->out_features();
    options = options.dtype(nf4->compute_dtype);
    register_buffer("weight_absmax", nf4->nf4.absmax);  // the same tensors, so module->to() moves them too
    if (nf4->nf4.double_quant()) {
      register_buffer("weight_nested_absmax", nf4->nf4.nested_absmax);
      register_buffer("weight_nested_quant_map", nf4->nf4.nested_code);
    }
  }
  lora_A = register_module("lora_A", torch::nn::Linear(torch::nn::LinearOptions(in, rank).bias(false)));
  lora_B = register_module("lora_B", torch::nn::Linear(torch::nn::LinearOptions(rank, out).bias(false)));
  torch::NoGradGuard no_grad;
  lora_A->weight.set_data(lora_A->weight.to(options));
  lora_B->weight.set_data(lora_B->weight.to(options));
  torch::nn::init::kaiming_uniform_(lora_A->weight, std::sqrt(5.0));
  lora_B->weight.zero_();
  if (dora) {
    lora_magnitude_vector = register_parameter("lora_magnitude_vector", dora_weight_norm().to(lora_A->weight.options()));
  }
}

at::Tensor LoraProjectionImpl::base_forward(const at::Tensor& x) {
  return quantized_base ? quantized_base->forward(x) : ProjectionImpl::forward(x);
}

at::Tensor LoraProjectionImpl::base_weight() const { return quantized_base ? quantized_base->dense_weight() : weight; }

at::Tensor LoraProjectionImpl::forward(const at::Tensor& x) { return forward_from_base(x, base_forward(x)); }

at::Tensor LoraProjectionImpl::groupable_lora_A() {
  // With dropout each adapter draws its own mask (as PEFT's per-module nn.Dropout), so A x differs per module.
  return (dropout > 0 && is_training()) || is_dora() ? at::Tensor() : lora_A->weight;
}

std::optional<ProjectionImpl::GroupableLora> LoraProjectionImpl::groupable_lora() {
  if (!dense_base() || !groupable_lora_A().defined()) return std::nullopt;
  return GroupableLora{lora_A->weight, lora_B->weight, scale};
}

namespace {

// result + scale * (hidden B^T): one GEMM that accumulates into a copy of the base result (addmm's beta = 1,
// alpha = scale), where PEFT's `result + lora_B(h) * scaling` makes two more full [tokens, out] passes (the
// product, the scaled copy, then the sum) forward and one (grad * scale) backward. Its gradients are PEFT's:
// result gets grad itself, h gets scale * grad B, B gets scale * grad^T h (both scalings on [tokens, r] or
// [out, r] tensors). Falls back to PEFT's form when the dtypes differ (a bf16 base under fp32 adapters
// without autocast), which addmm does not mix. result: [..., out], hidden: [..., r], B: [out, r].
at::Tensor add_scaled_lora_B(const at::Tensor& result, const at::Tensor& hidden, torch::nn::Linear& lora_B,
                             double scale) {
  if (result.scalar_type() != hidden.scalar_type()) {
    return result + (lora_B->forward(hidden) * scale).to(result.scalar_type());
  }
  const int64_t out = result.size(-1);
  const at::Tensor sum = at::addmm(result.reshape({-1, out}), hidden.reshape({-1, hidden.size(-1)}),
                                   lora_B->weight.t(), /*beta=*/1, /*alpha=*/scale);
  return sum.view(result.sizes());
}

}  // namespace

at::Tensor LoraProjectionImpl::forward_from_lora_A(const at::Tensor& base_result, const at::Tensor& a) {
  return add_scaled_lora_B(base_result, a, lora_B, scale);
}

at::Tensor LoraProjectionImpl::forward_from_base(const at::Tensor& x, const at::Tensor& result) {
  at::Tensor lora_input = x.to(lora_A->weight.scalar_type());
  at::Tensor lora_hidden;  // A x': [..., r]
  if (fused_dropout && dropout > 0 && is_training() && !is_dora()) {
    lora_hidden = kernels::dropout_linear(lora_input, lora_A->weight, dropout);  // the mask is never stored
  } else {
    if (dropout > 0 && is_training()) lora_input = at::dropout(lora_input, dropout, /*train=*/true);
    lora_hidden = lora_A->forward(lora_input);
  }
  if (!is_dora()) return add_scaled_lora_B(result, lora_hidden, lora_B, scale);
  const at::Tensor lora_result = lora_B->forward(lora_hidden) * scale;
  // DoRA, as PEFT's DoraLinearLayer.forward: result + (m/n - 1) * base(x') + (m/n) * scale * B A x', with x'
  // the dropped-out input (then base(x') is recomputed) or x itself (then base(x) = result - bias).
  const at::Tensor mag_norm_scale = lora_magnitude_vector / dora_weight_norm();  // [out]; the norm is detached
  const bool dropped = dropout > 0 && is_training();
  at::Tensor base_result = dropped ? (quantized_base ? kernels::nf4_linear(lora_input, quantized_base->nf4)
                                                    : at::linear(lora_input, weight.to(lora_input.scalar_type())))
                                   : (bias.defined() ? result - bias : result).to(lora_input.scalar_type());
  at::Tensor dora_result = (mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result;
  return result + dora_result.to(result.scalar_type());
}

at::Tensor LoraProjectionImpl::delta_weight() const {
  return at::matmul(lora_B->weight, lora_A->weight) * scale;  // [out, r] @ [r, in]
}

at::Tensor LoraProjectionImpl::dora_weight_norm() const {
  at::NoGradGuard no_grad;
  const at::Tensor adapted = base_weight().to(at::kFloat) + delta_weight().to(at::kFloat);  // [out, in]
  return at::linalg_vector_norm(adapted, 2, /*dim=*/{1});
}

at::Tensor LoraProjectionImpl::merged_weight() const {
  at::NoGradGuard no_grad;
  at::Tensor adapted = base_weight().to(at::kFloat) + delta_weight().to(at::kFloat);  // [out, in]
  if (!is_dora()) return adapted;
  // PEFT's merge: dora_factor = m / ||W + dW|| per output row, W' = dora_factor * (W + dW).
  return (lora_magnitude_vector.to(at::kFloat) / at::linalg_vector_norm(adapted, 2, {1})).unsqueeze(1) * adapted;
}

double lora_scale(const LoraSpec& spec) {
  return spec.rslora ? spec.alpha / std::sqrt(static_cast<double>(spec.rank)) : spec.alpha / spec.rank;
}

std::vector<std::string> apply_lora(CausalLM& model, const LoraSpec& spec) {
  for (auto& param : model->parameters()) param.set_requires_grad(false);
  const bool all = std::find(spec.targets.begin(), spec.targets.end(), "all") != spec.targets.end();
  const std::set<std::string> targets(spec.targets.begin(), spec.targets.end());
  const double scale = lora_scale(spec);
  std::vector<std::string> adapted;
  for_each_block_projection(model, [&](const std::string& parent_path, torch::nn::Module& parent,
                                       const std::string& name, Projection& holder) {
    if (!all && !targets.count(name)) return;
    if (std::dynamic_pointer_cast<LoraProjectionImpl>(holder.ptr())) return;  // already adapted
    auto lora = std::make_shared<LoraProjectionImpl>(*holder, spec.rank, scale, spec.dropout, spec.dora);
    if (lora->is_quantized() && init_mutates_base(spec.init)) {
      throw InputError("finetune.lora.init " + std::string(enum_name(spec.init)) + " is not implemented with model.quantization nf4 (" +
                       parent_path + "." + name + ": the residual base would have to be re-quantised)");
    }
    lora->fused_dropout = model->fused_ops().dropout;
    init_lora_weights(*lora, spec.init, parent_path + "." + name);
    if (spec.dora && spec.init != LoraInit::kDefault) lora->lora_magnitude_vector.set_data(lora->dora_weight_norm().to(lora->lora_A->weight.options()));
    parent.replace_module(name, lora);
    holder = Projection(std::static_pointer_cast<ProjectionImpl>(lora));
    adapted.push_back(parent_path + "." + name);
  });
  return adapted;
}

std::map<std::string, std::shared_ptr<LoraProjectionImpl>> lora_modules(CausalLM& model) {
  std::map<std::string, std::shared_ptr<LoraProjectionImpl>> found;
  for_each_block_projection(model, [&](const std::string& parent_path, torch::nn::Module&, const std::string& name,
                                       Projection& holder) {
    if (auto lora = std::dynamic_pointer_cast<LoraProjectionImpl>(holder.ptr())) found[parent_path + "." + name] = lora;
  });
  return found;
}

void merge_lora(CausalLM& model) {
  torch::NoGradGuard no_grad;
  for_each_block_projection(model, [&](const std::string& parent_path, torch::nn::Module& parent,
                                       const std::string& name, Projection& holder) {
    auto lora = std::dynamic_pointer_cast<LoraProjectionImpl>(holder.ptr());
    if (!lora) return;
    if (lora->is_quantized()) {
      throw std::logic_error("merge_lora: " + parent_path + "." + name +
                             " has a 4-bit base; merge into the unquantised weights (sft merge --model DIR)");
    }
    // Add in fp32 then round once, so bf16 bases lose no more than one rounding.
    lora->weight.copy_(lora->merged_weight().to(lora->weight.scalar_type()));
    auto plain = std::make_shared<ProjectionImpl>(static_cast<const ProjectionImpl&>(*lora));
    parent.replace_module(name, plain);
    holder = Projection(plain);
  });
}

std::vector<std::string> apply_freeze(CausalLM& model, const FreezeSpec& spec) {
  const int64_t n_layers = model->config().num_hidden_layers;
  std::set<int64_t> layers;
  if (spec.layer_count) {
    const int64_t count = std::min<int64_t>(std::abs(*spec.layer_count), n_layers);
    for (int64_t i = 0; i < count; ++i) layers.insert(*spec.layer_count > 0 ? n_layers - 1 - i : i);
  } else {
    for (int64_t index : spec.layer_indices) {
      if (index < 0 || index >= n_layers) {
        throw InputError("finetune.freeze.trainable_layers: layer " + std::to_string(index) +
                         " does not exist (the model has " + std::to_string(n_layers) + " layers)");
      }
      layers.insert(index);
    }
  }
  const bool all_modules = spec.trainable_modules.empty() ||
                           std::find(spec.trainable_modules.begin(), spec.trainable_modules.end(), "all") !=
                               spec.trainable_modules.end();
  auto in_selected_layer = [&](const std::string& name) {
    for (int64_t layer : layers) {
      const std::string prefix = "model.layers." + std::to_string(layer) + ".";
      if (name.rfind(prefix, 0) != 0) continue;
      if (all_modules) return true;
      // Module names match a whole path component: "mlp" matches ".mlp.", "q_proj" matches ".q_proj.".
      for (const std::string& module : spec.trainable_modules) {
        if (("." + name.substr(prefix.size() - 1) + ".").find("." + module + ".") != std::string::npos) return true;
      }
    }
    return false;
  };
  // As LLaMA-Factory matches them: the module name is a substring of the parameter name, so `norm` trains
  // every norm (each layer's input/post-attention norms and the final norm), not only model.norm.
  auto is_extra = [&](const std::string& name) {
    for (const std::string& extra : spec.extra_modules) {
      if (name.find(extra) != std::string::npos) return true;
      // With tied embeddings lm_head *is* embed_tokens (LLaMA-Factory rejects lm_head then).
      if (extra == "lm_head" && model->config().tie_word_embeddings && name == "model.embed_tokens.weight") return true;
    }
    return false;
  };
  std::vector<std::string> trainable;
  for (auto& item : model->named_parameters()) {
    const bool train = in_selected_layer(item.key()) || is_extra(item.key());
    item.value().set_requires_grad(train);
    if (train) trainable.push_back(item.key());
  }
  return trainable;
}

}  // namespace sft::model
