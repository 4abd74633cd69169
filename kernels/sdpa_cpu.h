// kernels/sdpa_cpu.h: attention of packed documents on the CPU in one autograd node, one document at a
// time (`model.attention: sdpa` on CPU tensors): exact math in fp32/fp64, LibTorch's CPU flash kernel in
// bf16/fp16.
#pragma once
#include <ATen/ATen.h>

namespace sft::kernels {

// q: [T, Hq, D], k and v: [T, Hkv, D] CPU tensors of one dtype (Hkv divides Hq: grouped-query attention,
// with no repeated k/v); cu_seqlens_host: int32 or int64 [n_docs + 1] offsets from 0 to T.
// Returns [T, Hq, D]; differentiable w.r.t. q, k and v. Documents of length 0 are skipped.
at::Tensor sdpa_cpu_varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const at::Tensor& cu_seqlens_host, double softmax_scale, bool causal);

}  // namespace sft::kernels
