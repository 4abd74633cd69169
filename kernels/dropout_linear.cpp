// kernels/dropout_linear.cpp: the binding layer of the fused dropout + linear (kernels/dropout_linear.h):
// input checks, the Philox key drawn from the device's default generator, allocation with at::empty, the
// mask pass (CUDA launcher on the current stream, error-checked, or the CPU twin), the GEMMs through
// at::mm, and the autograd function that saves x and the key instead of a mask.
#include "kernels/dropout_linear.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <torch/autograd.h>

#include <algorithm>
#include <cmath>
#include <mutex>

#include "kernels/cpu/dropout_linear_cpu.h"
#include "kernels/cuda_plugin.h"
#include "kernels/dropout_linear_params.h"


namespace sft::kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void check_dtype(const at::Tensor& t, const char* name) {
  const auto d = t.scalar_type();
  TORCH_CHECK(d == at::kFloat || d == at::kBFloat16 || d == at::kHalf || (t.is_cpu() && d == at::kDouble),
              "dropout_linear: ", name, " has unsupported dtype ", d,
              t.is_cuda() ? " on CUDA (float, bfloat16, float16)" : " (float, double, bfloat16, float16)");
}

// Calls f(X{}) with X the C++ element type of a CPU tensor dtype (checked by check_dtype).
template <typename F>
void with_cpu_type(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: return f(float{});
    case at::kDouble: return f(double{});
    case at::kBFloat16: return f(c10::BFloat16{});
    case at::kHalf: return f(c10::Half{});
    default: TORCH_CHECK(false, "dropout_linear: unsupported dtype ", t);
  }
}

// The mask pass over [rows, cols]: x -> x_dropped and/or grad -> grad_dropped (either pair may be undefined).
void apply_dropout_mask(const DropoutSeed& key, double p, const at::Tensor& x, const at::Tensor& x_dropped,
                        const at::Tensor& grad, const at::Tensor& grad_dropped) {
  const at::Tensor& any = x.defined() ? x : grad;
  DropoutMaskParams params;
  params.seed = key.seed;
  params.offset = key.offset;
  params.keep_below = dropout_keep_below(p);
  params.scale = p < 1 ? 1.0 / (1.0 - p) : 0.0;
  params.rows = any.size(0);
  params.cols = any.size(1);
  const at::ScalarType x_type = x.defined() ? x.scalar_type() : grad_dropped.scalar_type();
  const at::ScalarType compute_type = x.defined() ? x_dropped.scalar_type() : grad.scalar_type();
  if (x.defined()) {
    params.x = x.data_ptr();
    params.x_dropped = x_dropped.data_ptr();
  }
  if (grad.defined()) {
    params.grad = grad.data_ptr();
    params.grad_dropped = grad_dropped.data_ptr();
  }
  if (any.is_cuda()) {
    params.x_dtype = cuda_op_dtype(x_type, "dropout_linear");
    params.compute_dtype = cuda_op_dtype(compute_type, "dropout_linear");
    launch_cuda(&CudaPlugin::dropout_mask, params, "dropout_linear");
    return;
  }
  with_cpu_type(x_type, [&](auto x_tag) {
    with_cpu_type(compute_type, [&](auto c_tag) { cpu::dropout_mask<decltype(x_tag), decltype(c_tag)>(params); });
  });
}

// Autograd: saves x ([rows, in], a view of the caller's x when it is contiguous), the weight and the key.
class DropoutLinearFunction : public torch::autograd::Function<DropoutLinearFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight, double p,
                            int64_t seed, int64_t offset) {
    const DropoutSeed key{static_cast<uint64_t>(seed), static_cast<uint64_t>(offset)};
    const at::Tensor x2 = x.reshape({-1, x.size(-1)}).contiguous();
    at::Tensor y;
    {  // the dropped input lives only for the GEMM
      const at::Tensor dropped = at::empty(x2.sizes(), x2.options().dtype(weight.scalar_type()));
      apply_dropout_mask(key, p, x2, dropped, at::Tensor(), at::Tensor());
      y = at::mm(dropped, weight.t());  // [rows, out]
    }
    ctx->save_for_backward({x2, weight});
    ctx->saved_data["p"] = p;
    ctx->saved_data["seed"] = seed;
    ctx->saved_data["offset"] = offset;
    std::vector<int64_t> sizes = x.sizes().vec();
    sizes.back() = weight.size(0);
    return y.view(sizes);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x2 = saved[0];
    const at::Tensor& weight = saved[1];
    const double p = ctx->saved_data["p"].toDouble();
    const DropoutSeed key{static_cast<uint64_t>(ctx->saved_data["seed"].toInt()),
                          static_cast<uint64_t>(ctx->saved_data["offset"].toInt())};
    const bool want_dx = ctx->needs_input_grad(0), want_dw = ctx->needs_input_grad(1);
    const at::Tensor dy = grads[0].reshape({-1, weight.size(0)}).to(weight.scalar_type()).contiguous();  // [rows, out]
    at::Tensor dyw, dx, dropped, dw;
    if (want_dx) {
      dyw = at::mm(dy, weight);  // [rows, in]: the gradient of the dropped input
      dx = dyw.scalar_type() == x2.scalar_type() ? dyw : at::empty_like(x2);  // masked in place when it can be
    }
    if (want_dw) dropped = at::empty(x2.sizes(), x2.options().dtype(weight.scalar_type()));
    // One pass regenerates the mask for both gradients.
    apply_dropout_mask(key, p, want_dw ? x2 : at::Tensor(), dropped, dyw, dx);
    if (want_dw) dw = at::mm(dy.t(), dropped);  // [out, in]
    if (want_dx) {
      std::vector<int64_t> sizes = grads[0].sizes().vec();
      sizes.back() = x2.size(1);
      dx = dx.view(sizes);
    }
    return {dx, dw, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

uint64_t dropout_keep_below(double p) {
  return static_cast<uint64_t>(std::clamp(std::round((1.0 - p) * 4294967296.0), 0.0, 4294967296.0));
}

DropoutSeed draw_dropout_seed(const at::Device& device) {
  at::Generator gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  if (device.is_cuda()) {
    uint64_t seed = 0, offset = 0;
    cuda_plugin("dropout_linear").philox_inputs(gen, 4, seed, offset);
    return {seed, offset / 4};  // the generator counts 32-bit draws, at::Philox4_32 128-bit blocks
  }
  return {at::check_generator<at::CPUGeneratorImpl>(gen)->random64(), 0};
}

at::Tensor dropout_linear(const at::Tensor& x, const at::Tensor& weight, double p, std::optional<DropoutSeed> seed) {
  TORCH_CHECK(x.defined() && weight.defined(), "dropout_linear: x or weight is undefined");
  TORCH_CHECK(p >= 0 && p <= 1, "dropout_linear: p = ", p, " outside [0, 1]");
  TORCH_CHECK(weight.dim() == 2, "dropout_linear: weight must be [out, in], got ", weight.sizes());
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), "dropout_linear: x ", x.sizes(), " does not end in the ",
              weight.size(1), " input features of weight ", weight.sizes());
  TORCH_CHECK(x.device() == weight.device(), "dropout_linear: x on ", x.device(), " but weight on ", weight.device());
  TORCH_CHECK(x.is_cpu() || x.is_cuda(), "dropout_linear: unsupported device ", x.device());
  if (p == 0) return at::linear(x, weight);
  // Under autocast at::linear would multiply in the autocast dtype: cast the weight (its gradient flows back
  // through the cast) and let the mask pass write the dropped input in that dtype.
  const at::DeviceType device_type = x.device().type();
  at::Tensor w = weight;
  if (at::autocast::is_autocast_enabled(device_type) && x.scalar_type() != at::kDouble) {
    w = weight.to(at::autocast::get_autocast_dtype(device_type));
  }
  check_dtype(x, "x");
  check_dtype(w, "weight");
  const DropoutSeed key = seed ? *seed : draw_dropout_seed(x.device());
  return DropoutLinearFunction::apply(x, w, p, static_cast<int64_t>(key.seed), static_cast<int64_t>(key.offset));
}

at::Tensor composite_dropout_linear(const at::Tensor& x, const at::Tensor& weight, double p) {
  return at::linear(at::dropout(x, p, /*train=*/true), weight);
}

}  // namespace sft::kernels
