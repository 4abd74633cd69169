// kernels/dropout_linear.h: y = dropout(x) W^T with the dropout mask generated inside the op from a
// counter-based Philox generator (kernels/dropout_mask.h), so no mask is ever stored: forward builds the
// dropped input as one transient freed after the GEMM and saves only x and the Philox key; backward
// regenerates the mask for d x = (dy W) * mask / (1 - p) and d W = dy^T (x * mask / (1 - p)).
// The CUDA kernel (kernels/dropout_linear.cu) on CUDA tensors, the CPU twin
// (kernels/cpu/dropout_linear_cpu.cpp) on CPU tensors; the GEMMs are at::mm (cuBLAS / MKL).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

namespace sft::kernels {

// The Philox key of one call: seed and offset (in 128-bit blocks).
struct DropoutSeed {
  uint64_t seed = 0;
  uint64_t offset = 0;
};

// One draw from the default generator of `device`, under its mutex as ATen's samplers do: CPU one
// random64(); CUDA the generator's (seed, philox offset) with the offset advanced by 4 (one 128-bit block
// per element group). The generator state therefore fixes every mask (checkpoint resume and the
// gradient-checkpointing recompute replay it).
DropoutSeed draw_dropout_seed(const at::Device& device);

// x: [..., in], weight: [out, in], 0 <= p <= 1 -> [..., out]. Differentiable w.r.t. x and weight (d weight
// only when weight requires grad). The product runs in weight's dtype, or in the autocast dtype when
// autocast is on for x's device (as at::linear would under autocast); x may have another dtype.
// p = 0 is at::linear(x, weight). seed: the Philox key; empty draws one with draw_dropout_seed.
// Devices: CPU (float, double, bfloat16, float16) and CUDA (float, bfloat16, float16).
at::Tensor dropout_linear(const at::Tensor& x, const at::Tensor& weight, double p,
                          std::optional<DropoutSeed> seed = std::nullopt);

// The composite ATen code it replaces (model/lora.cpp before the fused op): linear(dropout(x, p), weight),
// its mask drawn by ATen's bernoulli from the default generator and saved for backward.
at::Tensor composite_dropout_linear(const at::Tensor& x, const at::Tensor& weight, double p);

// The keep threshold of p: an element is kept iff its 32-bit Philox draw is below it (round((1-p) 2^32)).
uint64_t dropout_keep_below(double p);

}  // namespace sft::kernels
