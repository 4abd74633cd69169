// kernels/fused_projection.cpp: linear maps of one input by several weights (q/k/v, gate/up, their LoRA A
// matrices) as ONE GEMM, when the weights are adjacent row blocks of one storage (then
// [out_0 + out_1 + ..., in] is a view, no copy), with a torch::autograd::Function that gives each weight
// its own gradient; the composite version (one at::linear per weight, the model's math before); and the
// re-layout that makes parameters adjacent. cuBLAS / MKL do the GEMMs (at::mm, at::addmm): no kernel of ours.
#include "kernels/fused_ops.h"

#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/strides.h>
#include <torch/autograd.h>

#include <numeric>
#include <optional>

namespace sft::kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The rows of `parts` (each [out_i, ...], same trailing sizes) as one [sum out_i, ...] view of their common
// storage, or nullopt when they are not back-to-back contiguous blocks of one storage in order.
std::optional<at::Tensor> adjacent_rows_view(at::TensorList parts) {
  if (parts.empty() || !parts[0].defined()) return std::nullopt;
  const at::Tensor& first = parts[0];
  int64_t rows = 0;
  const char* expected = static_cast<const char*>(first.data_ptr());
  for (const at::Tensor& p : parts) {
    if (!p.defined() || !p.is_contiguous() || p.dim() != first.dim() || p.scalar_type() != first.scalar_type() ||
        p.device() != first.device() || !p.storage().is_alias_of(first.storage()) ||
        p.sizes().slice(1) != first.sizes().slice(1) || static_cast<const char*>(p.data_ptr()) != expected) {
      return std::nullopt;
    }
    expected += p.nbytes();
    rows += p.size(0);
  }
  std::vector<int64_t> sizes = first.sizes().vec();
  sizes[0] = rows;
  // as_strided may reach past `first`'s own rows: they are the next parts, inside the same storage.
  at::NoGradGuard no_grad;
  return first.detach().as_strided(sizes, c10::contiguous_strides(sizes), first.storage_offset());
}

std::vector<int64_t> row_counts(at::TensorList weights) {
  std::vector<int64_t> rows;
  for (const at::Tensor& w : weights) rows.push_back(w.size(0));
  return rows;
}

// The dtype autocast would run a linear of these operands in (its lower-precision dtype for floating
// non-double tensors), or the operand's own dtype when autocast is off on its device.
at::ScalarType linear_compute_dtype(const at::Tensor& x) {
  const at::DeviceType device = x.device().type();
  if (at::autocast::is_autocast_enabled(device) && x.is_floating_point() && x.scalar_type() != at::kDouble) {
    return at::autocast::get_autocast_dtype(device);
  }
  return x.scalar_type();
}

// One GEMM over the adjacent weights: y = x W^T + b, W = [W_0; W_1; ...] ([sum out, in], a view), so the
// outputs are column blocks of y. Backward: one d x GEMM over W, and the weight gradient as one GEMM when
// every weight needs one (its row blocks are the weights' gradients), else one per weight that needs it:
// a frozen weight gets no gradient. Casts as autocast would (the casts' backward included), explicitly,
// with autocast excluded inside, so forward and backward do not depend on the thread's autocast state.
struct LinearGroupFunction : public torch::autograd::Function<LinearGroupFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList weights,
                            at::TensorList biases) {
    const at::ScalarType compute = linear_compute_dtype(x);
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    at::Tensor w = adjacent_rows_view(weights).value().to(compute);  // [sum out, in]
    at::Tensor x2 = x.reshape({-1, x.size(-1)}).to(compute);          // [N, in]
    at::Tensor y = biases.empty() ? at::mm(x2, w.t()) : at::addmm(adjacent_rows_view(biases).value().to(compute), x2, w.t());
    ctx->save_for_backward({x2});
    ctx->saved_data["w"] = w;  // a view of the parameters (or their compute-dtype copy); not an input
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["w_dtype"] = static_cast<int64_t>(weights[0].scalar_type());
    ctx->saved_data["rows"] = row_counts(weights);
    ctx->saved_data["n_biases"] = static_cast<int64_t>(biases.size());
    ctx->saved_data["x_sizes"] = x.sizes().vec();
    std::vector<int64_t> out_sizes = x.sizes().vec();
    out_sizes.back() = y.size(1);
    return y.view(out_sizes);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const at::Tensor x2 = ctx->get_saved_variables()[0];
    const at::Tensor w = ctx->saved_data["w"].toTensor();
    const auto x_dtype = static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt());
    const auto w_dtype = static_cast<at::ScalarType>(ctx->saved_data["w_dtype"].toInt());
    const std::vector<int64_t> rows = ctx->saved_data["rows"].toIntVector();
    const auto n_weights = static_cast<int64_t>(rows.size());
    const int64_t n_biases = ctx->saved_data["n_biases"].toInt();
    const at::Tensor dy = grads[0].reshape({-1, w.size(0)}).to(w.scalar_type());  // [N, sum out]

    variable_list out(static_cast<size_t>(1 + n_weights + n_biases));
    if (ctx->needs_input_grad(0)) out[0] = at::mm(dy, w).to(x_dtype).view(ctx->saved_data["x_sizes"].toIntVector());
    bool all_weights = true;
    for (int64_t i = 0; i < n_weights; ++i) all_weights = all_weights && ctx->needs_input_grad(1 + i);
    at::Tensor dw_all = all_weights ? at::mm(dy.t(), x2).to(w_dtype) : at::Tensor();  // [sum out, in]
    at::Tensor db_all;
    int64_t offset = 0;
    for (int64_t i = 0; i < n_weights; ++i) {
      const int64_t r = rows[static_cast<size_t>(i)];
      if (ctx->needs_input_grad(1 + i)) {
        out[static_cast<size_t>(1 + i)] = all_weights ? dw_all.narrow(0, offset, r)
                                                      : at::mm(dy.narrow(1, offset, r).t(), x2).to(w_dtype);
      }
      if (n_biases > 0 && ctx->needs_input_grad(1 + n_weights + i)) {
        if (!db_all.defined()) db_all = dy.sum(0);  // [sum out]
        out[static_cast<size_t>(1 + n_weights + i)] = db_all.narrow(0, offset, r).to(w_dtype);
      }
      offset += r;
    }
    return out;
  }
};

}  // namespace

std::vector<at::Tensor> composite_linear_group(const at::Tensor& x, at::TensorList weights, at::TensorList biases) {
  std::vector<at::Tensor> outputs;
  for (size_t i = 0; i < weights.size(); ++i) {
    outputs.push_back(biases.empty() ? at::linear(x, weights[i]) : at::linear(x, weights[i], biases[i]));
  }
  return outputs;
}

std::vector<at::Tensor> fused_linear_group(const at::Tensor& x, at::TensorList weights, at::TensorList biases) {
  TORCH_CHECK(biases.empty() || biases.size() == weights.size(), "linear group: ", biases.size(), " biases for ",
              weights.size(), " weights");
  if (weights.size() < 2 || !rows_adjacent(weights) || (!biases.empty() && !rows_adjacent(biases)) ||
      weights[0].dim() != 2 || x.size(-1) != weights[0].size(1) || x.device() != weights[0].device() ||
      (!biases.empty() && biases[0].scalar_type() != weights[0].scalar_type()) ||
      (!at::autocast::is_autocast_enabled(x.device().type()) && x.scalar_type() != weights[0].scalar_type())) {
    return composite_linear_group(x, weights, biases);  // not one storage (or a dtype error to report as before)
  }
  const std::vector<int64_t> rows = row_counts(weights);
  bool needs_grad = x.requires_grad();
  for (const at::Tensor& t : weights) needs_grad = needs_grad || t.requires_grad();
  for (const at::Tensor& t : biases) needs_grad = needs_grad || t.requires_grad();
  at::Tensor y;  // [..., sum out]
  if (!at::GradMode::is_enabled() || !needs_grad) {
    // Decoding / evaluation: a plain linear over the view (autocast casts it as it casts any weight).
    at::Tensor w = *adjacent_rows_view(weights);
    y = biases.empty() ? at::linear(x, w) : at::linear(x, w, *adjacent_rows_view(biases));
  } else {
    y = LinearGroupFunction::apply(x, weights, biases);
  }
  // Column blocks: views; split's backward concatenates their gradients back into one [N, sum out].
  return at::split_with_sizes(y, rows, -1);
}

bool rows_adjacent(at::TensorList parts) { return adjacent_rows_view(parts).has_value(); }

bool make_rows_adjacent(at::TensorList parts) {
  if (parts.size() < 2 || rows_adjacent(parts)) return parts.size() >= 2;
  for (const at::Tensor& p : parts) {
    if (!p.defined() || p.dim() < 1 || p.scalar_type() != parts[0].scalar_type() || p.device() != parts[0].device() ||
        p.sizes().slice(1) != parts[0].sizes().slice(1)) {
      return false;
    }
  }
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> detached;
  for (const at::Tensor& p : parts) detached.push_back(p.detach());
  const at::Tensor joined = at::cat(detached, 0);  // one new storage; each part becomes a row block of it
  int64_t offset = 0;
  for (const at::Tensor& p : parts) {
    const int64_t r = p.size(0);
    // set_data keeps the tensor (its identity, requires_grad, .grad, hooks, optimizer state keyed by it).
    p.set_data(joined.narrow(0, offset, r));
    offset += r;
  }
  return true;
}

}  // namespace sft::kernels
