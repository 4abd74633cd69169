// kernels/ops.h: the only kernel header model/ includes. One attention entry point over packed
// variable-length sequences; the implementation (fused CUDA kernel, its CPU twin, SDPA or eager math)
// is chosen here, never in the model.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <string>

namespace sft::kernels {

enum class AttentionImpl { Auto, Fused, Sdpa, Eager };

// Parses the `model.attention` config value; throws sft::InputError on anything else.
AttentionImpl parse_attention_impl(const std::string& name);
std::string to_string(AttentionImpl impl);

// Resolves `auto` once per run (the caller stores the result): on CUDA it runs the fused kernel's
// start-up self-check and falls back to SDPA with a warning if it fails; `fused` throws if it fails.
// Defined in kernels/fused_attention.cpp.
AttentionImpl resolve_attention_impl(AttentionImpl requested, const at::Device& device);

// Document boundaries of a packed token stream of T tokens.
struct PackedSequences {
  at::Tensor cu_seqlens;       // int32 [n_seqs + 1] on the device of q (the fused kernel reads it there)
  at::Tensor cu_seqlens_host;  // int32 [n_seqs + 1] on the CPU (host-side loops never sync the device)
  int64_t max_seqlen = 0;
};

// Attention of every document with itself only.
//   q: [T, Hq, D], k and v: [T, Hkv, D] with Hq % Hkv == 0 (grouped-query attention)
//   returns [T, Hq, D] in q's dtype; differentiable w.r.t. q, k and v.
// `causal` masks keys after the query inside each document.
at::Tensor varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const PackedSequences& seqs, double softmax_scale, bool causal,
                            AttentionImpl impl);

}  // namespace sft::kernels
