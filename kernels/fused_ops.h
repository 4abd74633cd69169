// kernels/fused_ops.h: the fused ops one by one (autograd-wrapped; CUDA kernels on CUDA tensors, the CPU
// twins in kernels/cpu/fused_ops_cpu.cpp on CPU tensors), the composite ATen versions they replace, and
// the fp64 references the tests and benchmarks compare against. model/ reaches them only through
// kernels::op_table (kernels/ops.h).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "kernels/ops.h"

namespace sft::kernels {

// Fused: CPU float/double/bf16/fp16 (bf16/fp16 computed in float), CUDA float/bf16/fp16. Operands of
// different dtypes (e.g. an fp32 norm weight on bf16 activations under autocast) take the composite path,
// whose type promotion they need.
at::Tensor fused_rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
at::Tensor fused_swiglu(const at::Tensor& gate, const at::Tensor& up);
std::pair<at::Tensor, at::Tensor> fused_rotary(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                               const at::Tensor& sin);

// Chunk sizes of the fused linear cross-entropy: the only [rows, vocab] temporaries are one
// chunk_rows x chunk_vocab fp32 block of logits (and its gradient, in place).
struct LinearCeChunks {
  int64_t rows = 1024;
  int64_t vocab = 8192;
};
// Sum over the N rows of -log softmax(hidden W^T)[target]; never materialises [N, V]. Backward
// recomputes each chunk's logits from the saved per-row logsumexp and gives d hidden, and d weight
// when weight requires grad. Targets must lie in [0, V) (checked on CPU; on CUDA a bad id reads no
// logit and gives a wrong loss rather than a device-side sync).
at::Tensor fused_linear_cross_entropy_sum(const at::Tensor& hidden, const at::Tensor& weight,
                                          const at::Tensor& targets, LinearCeChunks chunks = {});

// OpTable::linear_group (kernels/ops.h): one GEMM over adjacent weights, or one at::linear per weight.
std::vector<at::Tensor> fused_linear_group(const at::Tensor& x, at::TensorList weights, at::TensorList biases);
std::vector<at::Tensor> composite_linear_group(const at::Tensor& x, at::TensorList weights, at::TensorList biases);
// lora_group_linear's composite twin (kernels/ops.h): per projection at::linear, at::linear by A and the
// B addmm, as LoraProjection's forward computes it; autograd does the rest.
std::vector<at::Tensor> composite_lora_group_linear(const at::Tensor& x, at::TensorList weights, at::TensorList biases,
                                                    at::TensorList lora_A, at::TensorList lora_B,
                                                    const std::vector<double>& scales);

// The composite ATen code each fused op replaces (model/llama.cpp's math before the fused ops).
at::Tensor composite_rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
at::Tensor composite_swiglu(const at::Tensor& gate, const at::Tensor& up);
std::pair<at::Tensor, at::Tensor> composite_rotary(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                                   const at::Tensor& sin);
at::Tensor composite_linear_cross_entropy_sum(const at::Tensor& hidden, const at::Tensor& weight,
                                              const at::Tensor& targets);

}  // namespace sft::kernels
