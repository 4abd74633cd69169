// kernels/lora_group.cpp: frozen projections of one input with their LoRA adapters (q/k/v, gate/up, or
// one projection alone) as ONE autograd node (`model.fused_ops: lora`). MKL / cuBLAS do the GEMMs (at::mm,
// addmm_); no kernel of ours.
//
// Why: composed from ATen, each adapted projection is three autograd nodes (x W^T, x A^T, the B addmm) plus
// transposes, and in backward the engine adds the gradients that flow into the shared input one by one:
// for q/k/v, five extra full [tokens, hidden] passes (three base and three adapter gradients summed), for
// gate/up three. Here d x is built inside the GEMMs instead (addmm_ with beta = 1 into one buffer), and the
// forward adds B's product into the base result in place (no copy of it).
//
// Math, per projection i (PEFT's, with dropout inactive):
//   y_i = x W_i^T + b_i + s_i (x A_i^T) B_i^T                          h_i = x A_i^T: [N, r_i], saved
//   dB_i = s_i dy_i^T h_i      g_i = s_i dy_i B_i: [N, r_i]      dA_i = g_i^T x
//   dx = sum_i (dy_i W_i + g_i A_i)
// W_i and b_i are frozen: they get no gradient, and the node refuses (lora_group_supported) otherwise.
#include <ATen/autocast_mode.h>
#include <torch/autograd.h>

#include "kernels/fused_ops.h"

namespace sft::kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct LoraGroupFunction : public torch::autograd::Function<LoraGroupFunction> {
  // x: [..., in]; weights[i]: [out_i, in]; biases: empty or [out_i] each; lora_A[i]: [r_i, in];
  // lora_B[i]: [out_i, r_i]. Returns y_i: [..., out_i].
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList weights, at::TensorList biases,
                               at::TensorList lora_A, at::TensorList lora_B, std::vector<double> scales) {
    const int64_t in = x.size(-1);
    const at::Tensor x2 = x.reshape({-1, in}).contiguous();  // [N, in]
    variable_list outputs, saved{x2};
    for (size_t i = 0; i < weights.size(); ++i) {
      at::Tensor y = biases.empty() ? at::mm(x2, weights[i].t()) : at::addmm(biases[i], x2, weights[i].t());
      const at::Tensor h = at::mm(x2, lora_A[i].t());     // [N, r_i]
      y.addmm_(h, lora_B[i].t(), /*beta=*/1, /*alpha=*/scales[i]);  // in place: y is ours, not yet an output
      std::vector<int64_t> sizes = x.sizes().vec();
      sizes.back() = weights[i].size(0);
      outputs.push_back(y.view(sizes));
      saved.push_back(h);
    }
    for (const at::Tensor& w : weights) saved.push_back(w);
    for (const at::Tensor& a : lora_A) saved.push_back(a);
    for (const at::Tensor& b : lora_B) saved.push_back(b);
    ctx->save_for_backward(saved);
    ctx->saved_data["scales"] = scales;
    ctx->saved_data["n_biases"] = static_cast<int64_t>(biases.size());
    ctx->saved_data["x_sizes"] = x.sizes().vec();
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const std::vector<double> scales = ctx->saved_data["scales"].toDoubleVector();
    const size_t n = scales.size();
    const auto n_biases = static_cast<size_t>(ctx->saved_data["n_biases"].toInt());
    const at::Tensor& x2 = saved[0];
    auto h = [&](size_t i) -> const at::Tensor& { return saved[1 + i]; };
    auto weight = [&](size_t i) -> const at::Tensor& { return saved[1 + n + i]; };
    auto lora_A = [&](size_t i) -> const at::Tensor& { return saved[1 + 2 * n + i]; };
    auto lora_B = [&](size_t i) -> const at::Tensor& { return saved[1 + 3 * n + i]; };
    // Inputs, in order: x, weights (n), biases (n_biases), lora_A (n), lora_B (n), scales (not a tensor).
    variable_list out(1 + n + n_biases + 2 * n + 1);
    const size_t a_slot = 1 + n + n_biases, b_slot = a_slot + n;
    at::Tensor dx;  // [N, in], accumulated by the GEMMs
    for (size_t i = 0; i < n; ++i) {
      if (!grads[i].defined()) continue;  // an output nobody used: contributes nothing
      const at::Tensor dy = grads[i].reshape({-1, weight(i).size(0)});  // [N, out_i]
      const at::Tensor g = at::mm(dy, lora_B(i)).mul_(scales[i]);         // [N, r_i]
      if (ctx->needs_input_grad(b_slot + i)) out[b_slot + i] = at::mm(dy.t(), h(i)).mul_(scales[i]);
      if (ctx->needs_input_grad(a_slot + i)) out[a_slot + i] = at::mm(g.t(), x2);
      if (!ctx->needs_input_grad(0)) continue;
      if (dx.defined()) {
        dx.addmm_(dy, weight(i));
      } else {
        dx = at::mm(dy, weight(i));
      }
      dx.addmm_(g, lora_A(i));
    }
    if (ctx->needs_input_grad(0)) {
      const std::vector<int64_t> x_sizes = ctx->saved_data["x_sizes"].toIntVector();
      out[0] = dx.defined() ? dx.view(x_sizes) : at::zeros(x_sizes, x2.options());
    }
    return out;
  }
};

}  // namespace

bool lora_group_supported(const at::Tensor& x, at::TensorList weights, at::TensorList biases, at::TensorList lora_A,
                          at::TensorList lora_B) {
  const size_t n = weights.size();
  if (n == 0 || lora_A.size() != n || lora_B.size() != n || (!biases.empty() && biases.size() != n)) return false;
  // Under autocast the composite path's casts decide the dtypes; this node would not see them.
  if (at::autocast::is_autocast_enabled(x.device().type())) return false;
  auto same = [&](const at::Tensor& t) {
    return t.defined() && t.scalar_type() == x.scalar_type() && t.device() == x.device();
  };
  for (size_t i = 0; i < n; ++i) {
    if (!same(weights[i]) || !same(lora_A[i]) || !same(lora_B[i]) || weights[i].requires_grad()) return false;
    if (weights[i].dim() != 2 || weights[i].size(1) != x.size(-1) || lora_A[i].size(1) != x.size(-1) ||
        lora_B[i].size(0) != weights[i].size(0) || lora_B[i].size(1) != lora_A[i].size(0)) {
      return false;
    }
    if (!biases.empty() && (!same(biases[i]) || biases[i].requires_grad())) return false;
  }
  return true;
}

std::vector<at::Tensor> lora_group_linear(const at::Tensor& x, at::TensorList weights, at::TensorList biases,
                                          at::TensorList lora_A, at::TensorList lora_B, const std::vector<double>& scales) {
  TORCH_CHECK(lora_group_supported(x, weights, biases, lora_A, lora_B) && scales.size() == weights.size(),
              "lora_group_linear: unsupported operands (check lora_group_supported first)");
  return LoraGroupFunction::apply(x, weights, biases, lora_A, lora_B, scales);
}

std::vector<at::Tensor> composite_lora_group_linear(const at::Tensor& x, at::TensorList weights, at::TensorList biases,
                                                    at::TensorList lora_A, at::TensorList lora_B,
                                                    const std::vector<double>& scales) {
  std::vector<at::Tensor> outputs;
  for (size_t i = 0; i < weights.size(); ++i) {
    const at::Tensor base = biases.empty() ? at::linear(x, weights[i]) : at::linear(x, weights[i], biases[i]);
    const at::Tensor h = at::linear(x, lora_A[i]);
    const int64_t out = base.size(-1);
    outputs.push_back(at::addmm(base.reshape({-1, out}), h.reshape({-1, h.size(-1)}), lora_B[i].t(), 1, scales[i])
                          .view(base.sizes()));
  }
  return outputs;
}

}  // namespace sft::kernels
