// kernels/fused_attention.h: the autograd-wrapped fused (FlashAttention-2 style) varlen attention, its
// raw forward/backward entry points (outputs supplied by the caller, so tests can poison them), the fp64
// reference and the "2x torch error" comparison used by the start-up self-check and the GPU tests.
// On CUDA tensors it launches our kernels; on CPU tensors it runs the CPU twin (same blocked algorithm).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <string>

#include "kernels/ops.h"

namespace sft::kernels {

// q: [T, Hq, D], k/v: [T, Hkv, D]; cu_seqlens int32 [n+1] on q's device, cu_seqlens_host on the CPU.
// Returns [T, Hq, D]. Backward computes dq, dk, dv (dk/dv summed over each GQA group).
// CUDA: bf16/fp16, head_dim 64 or 128. CPU: float/double (bf16/fp16 are computed in float), any head_dim.
at::Tensor fused_varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& cu_seqlens, const at::Tensor& cu_seqlens_host,
                                  int64_t max_seqlen, double softmax_scale, bool causal,
                                  bool deterministic = false);

// Raw forward: writes out [T, Hq, D] (q's dtype/device) and lse [Hq, T] (fp32; fp64 for fp64 CPU inputs).
// Every element of both is overwritten. No autograd.
void fused_attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& cu_seqlens, const at::Tensor& cu_seqlens_host, int64_t max_seqlen,
                             double softmax_scale, bool causal, at::Tensor& out, at::Tensor& lse);
// Raw backward: writes dq [T, Hq, D], dk, dv [T, Hkv, D] (q's dtype/device), every element.
void fused_attention_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& out, const at::Tensor& lse, const at::Tensor& cu_seqlens,
                              const at::Tensor& cu_seqlens_host, int64_t max_seqlen, double softmax_scale,
                              bool causal, bool deterministic, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv);

// Naive reference on the CPU in fp64 (explicit softmax per document, GQA by repeating kv heads).
// Differentiable through autograd. Inputs may be on any device and dtype; the result is fp64 on the CPU.
at::Tensor reference_varlen_attention_fp64(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const at::Tensor& cu_seqlens_host, double softmax_scale, bool causal);

// FlashAttention's test rule on one input set: fused (raw entry points, outputs poisoned with NaN before
// each launch) and LibTorch's own attention (per-document SDPA in the same dtype and device; 4-D
// [1, H, L, D] on CUDA so its flash/cuDNN/memory-efficient backends can serve, 3-D math on the CPU) are both
// compared with the fp64 reference, for out, dq, dk and dv (max abs error). Passes when every fused error
// is finite and <= factor * torch error + abs_slack.
struct AttentionCheck {
  double err_fused[4] = {0, 0, 0, 0};  // out, dq, dk, dv
  double err_torch[4] = {0, 0, 0, 0};
  bool passed = false;
  std::string describe() const;
};
AttentionCheck check_fused_against_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                             const at::Tensor& dout, const at::Tensor& cu_seqlens_host,
                                             int64_t max_seqlen, double softmax_scale, bool causal,
                                             bool deterministic, double factor = 2.0, double abs_slack = 1e-5);

// One-time start-up check of the fused kernel on `device` against the reference on small random inputs
// (check_fused_against_reference over a few shapes). Returns an empty string when it passes, otherwise a
// description of the failure.
std::string fused_attention_self_check(const at::Device& device);

// resolve_attention_impl (kernels/ops.h, kernels/attention_choice.cpp) runs fused_attention_self_check.

}  // namespace sft::kernels
