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
// Under autocast every operand is cast to autocast's dtype inside the node (as autocast casts each linear's
// operands in the composite) and the gradients return in the operands' own dtypes (fp32 adapters).
// Math, per projection i (PEFT's, with dropout inactive):
//   y_i = x W_i^T + b_i + s_i (x A_i^T) B_i^T                          h_i = x A_i^T: [N, r_i], saved
//   dB_i = s_i dy_i^T h_i      g_i = s_i dy_i B_i: [N, r_i]      dA_i = g_i^T x
//   dx = sum_i (dy_i W_i + g_i A_i)
// W_i and b_i are frozen: they get no gradient, and the node refuses (lora_group_supported) otherwise.
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>

#include "kernels/fused_ops.h"

namespace sft::kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct LoraGroupFunction : public torch::autograd::Function<LoraGroupFunction> {
  // x: [..., in]; weights[i]: [out_i, in]; biases: empty or [out_i] each; lora_A[i]: [r_i, in];
  // lora_B[i]: [out_i, r_i]. Returns y_i: [..., out_i].
  // `compute`: the dtype every GEMM runs in, x's own, or autocast's (then every operand is cast to it here,
  // as autocast casts each linear's operands in the composite, and the gradients go back in their dtypes).
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList weights, at::TensorList biases,
                               at::TensorList lora_A, at::TensorList lora_B, std::vector<double> scales,
                               at::ScalarType compute) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const int64_t in = x.size(-1);
    const at::Tensor x2 = x.reshape({-1, in}).to(compute).contiguous();  // [N, in]
    variable_list outputs, saved{x2};
    std::vector<at::Tensor> w_c, a_c, b_c;
    for (size_t i = 0; i < weights.size(); ++i) {
      w_c.push_back(weights[i].to(compute));
      a_c.push_back(lora_A[i].to(compute));
      b_c.push_back(lora_B[i].to(compute));
      at::Tensor y = biases.empty() ? at::mm(x2, w_c[i].t()) : at::addmm(biases[i].to(compute), x2, w_c[i].t());
      const at::Tensor h = at::mm(x2, a_c[i].t());     // [N, r_i]
      y.addmm_(h, b_c[i].t(), /*beta=*/1, /*alpha=*/scales[i]);  // in place: y is ours, not yet an output
      std::vector<int64_t> sizes = x.sizes().vec();
      sizes.back() = weights[i].size(0);
      outputs.push_back(y.view(sizes));
      saved.push_back(h);
    }
    for (const at::Tensor& w : w_c) saved.push_back(w);
    for (const at::Tensor& a : a_c) saved.push_back(a);
    for (const at::Tensor& b : b_c) saved.push_back(b);
    ctx->save_for_backward(saved);
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["a_dtype"] = static_cast<int64_t>(lora_A[0].scalar_type());
    ctx->saved_data["b_dtype"] = static_cast<int64_t>(lora_B[0].scalar_type());
    ctx->saved_data["scales"] = scales;
    ctx->saved_data["n_biases"] = static_cast<int64_t>(biases.size());
    ctx->saved_data["x_sizes"] = x.sizes().vec();
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const variable_list saved = ctx->get_saved_variables();
    const auto x_dtype = static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt());
    const auto a_dtype = static_cast<at::ScalarType>(ctx->saved_data["a_dtype"].toInt());
    const auto b_dtype = static_cast<at::ScalarType>(ctx->saved_data["b_dtype"].toInt());
    const std::vector<double> scales = ctx->saved_data["scales"].toDoubleVector();
    const size_t n = scales.size();
    const auto n_biases = static_cast<size_t>(ctx->saved_data["n_biases"].toInt());
    const at::Tensor& x2 = saved[0];
    auto h = [&](size_t i) -> const at::Tensor& { return saved[1 + i]; };
    auto weight = [&](size_t i) -> const at::Tensor& { return saved[1 + n + i]; };
    auto lora_A = [&](size_t i) -> const at::Tensor& { return saved[1 + 2 * n + i]; };
    auto lora_B = [&](size_t i) -> const at::Tensor& { return saved[1 + 3 * n + i]; };
    // Inputs, in order: x, weights (n), biases (n_biases), lora_A (n), lora_B (n), scales, compute (not tensors).
    variable_list out(1 + n + n_biases + 2 * n + 2);
    const size_t a_slot = 1 + n + n_biases, b_slot = a_slot + n;
    at::Tensor dx;  // [N, in], accumulated by the GEMMs
    for (size_t i = 0; i < n; ++i) {
      if (!grads[i].defined()) continue;  // an output nobody used: contributes nothing
      const at::Tensor dy = grads[i].reshape({-1, weight(i).size(0)}).to(x2.scalar_type());  // [N, out_i]
      const at::Tensor g = at::mm(dy, lora_B(i)).mul_(scales[i]);                             // [N, r_i]
      if (ctx->needs_input_grad(b_slot + i)) out[b_slot + i] = at::mm(dy.t(), h(i)).mul_(scales[i]).to(b_dtype);
      if (ctx->needs_input_grad(a_slot + i)) out[a_slot + i] = at::mm(g.t(), x2).to(a_dtype);
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
      out[0] = dx.defined() ? dx.to(x_dtype).view(x_sizes) : at::zeros(x_sizes, x2.options().dtype(x_dtype));
    }
    return out;
  }
};

}  // namespace

bool lora_group_supported(const at::Tensor& x, at::TensorList weights, at::TensorList biases, at::TensorList lora_A,
                          at::TensorList lora_B) {
  const size_t n = weights.size();
  if (n == 0 || lora_A.size() != n || lora_B.size() != n || (!biases.empty() && biases.size() != n)) return false;
  // Without autocast: one dtype (the composite's GEMMs would refuse mixed ones). Under autocast: floating
  // operands below fp64, which autocast would cast to its dtype, and this node casts the same way.
  const bool autocast = at::autocast::is_autocast_enabled(x.device().type());
  auto castable = [](const at::Tensor& t) {
    return at::isFloatingType(t.scalar_type()) && t.scalar_type() != at::kDouble;
  };
  auto same = [&](const at::Tensor& t) {
    if (!t.defined() || t.device() != x.device()) return false;
    return autocast ? castable(t) && castable(x) : t.scalar_type() == x.scalar_type();
  };
  for (size_t i = 0; i < n; ++i) {
    if (!same(weights[i]) || !same(lora_A[i]) || !same(lora_B[i]) || weights[i].requires_grad()) return false;
    if (weights[i].dim() != 2 || weights[i].size(1) != x.size(-1) || lora_A[i].size(1) != x.size(-1) ||
        lora_B[i].size(0) != weights[i].size(0) || lora_B[i].size(1) != lora_A[i].size(0)) {
      return false;
    }
    if (!biases.empty() && (!same(biases[i]) || biases[i].requires_grad())) return false;
    // One dtype per kind: backward casts every dA (dB) to lora_A[0]'s (lora_B[0]'s).
    if (lora_A[i].scalar_type() != lora_A[0].scalar_type() || lora_B[i].scalar_type() != lora_B[0].scalar_type()) {
      return false;
    }
  }
  return true;
}

std::vector<at::Tensor> lora_group_linear(const at::Tensor& x, at::TensorList weights, at::TensorList biases,
                                          at::TensorList lora_A, at::TensorList lora_B, const std::vector<double>& scales) {
  TORCH_CHECK(lora_group_supported(x, weights, biases, lora_A, lora_B) && scales.size() == weights.size(),
              "lora_group_linear: unsupported operands (check lora_group_supported first)");
  const at::DeviceType device = x.device().type();
  const at::ScalarType compute =
      at::autocast::is_autocast_enabled(device) ? at::autocast::get_autocast_dtype(device) : x.scalar_type();
  return LoraGroupFunction::apply(x, weights, biases, lora_A, lora_B, scales, compute);
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
