// kernels/attention_choice.h: how `model.attention` is resolved once per run (resolve_attention_impl in
// kernels/ops.h): the pure decision of `auto` on CUDA from our self-check and the measured timings
// (choose_auto_attention, unit-tested on the CPU with injected timings), the timing race itself, and
// LibTorch's FlashAttention-2 varlen path that `auto` races against ours.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <string>

#include "kernels/ops.h"

namespace sft::kernels {

// What `auto` knows on CUDA when it decides. Times are ms per forward+backward call on the run's shape;
// NaN when that kernel was not timed or failed (then *_failure says why).
struct AutoAttentionEvidence {
  std::string fused_failure;        // our start-up self-check; "" when it passed
  double fused_ms = std::nan("");
  double torch_flash_ms = std::nan("");
  std::string torch_flash_failure;  // why LibTorch's flash varlen did not run, if it did not
  std::string shape;                // e.g. "Hq 9 / Hkv 3, head_dim 64, 8 x 1024 tokens, bf16"
};

struct AutoAttentionChoice {
  AttentionImpl impl = AttentionImpl::Sdpa;
  std::string log;  // one line for stderr: the choice, both timings and why
};

// The decision, a pure function: the faster of ours (only if its self-check passed and it ran) and
// LibTorch's flash varlen (only if it ran); ours on a tie; sdpa when neither ran.
AutoAttentionChoice choose_auto_attention(const AutoAttentionEvidence& evidence);

// Times ours and LibTorch's flash varlen, forward+backward, causal, on `device` (CUDA) with the run's
// head counts and head_dim: packed rows of max_seqlen tokens (clamped to [256, 4096]), about 8k tokens,
// a warm-up call then the mean of a few. Fills fused_ms / torch_flash_ms (and their failures); leaves
// fused_failure as given. A few milliseconds of GPU time; synchronises the device (start-up only).
void time_auto_attention_candidates(AutoAttentionEvidence& evidence, const at::Device& device,
                                    const AttentionResolveOptions& options);

// LibTorch's FlashAttention-2 varlen kernel: q [T, Hq, D], k/v [T, Hkv, D], bf16/fp16 on CUDA, the same
// cu_seqlens for queries and keys. Differentiable (LibTorch's autograd runs _flash_attention_backward).
// Defined in kernels/attention_dispatch.cpp.
at::Tensor torch_flash_varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        const PackedSequences& seqs, double softmax_scale, bool causal);

}  // namespace sft::kernels
