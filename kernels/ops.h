// kernels/ops.h: the only kernel header model/ includes. One attention entry point over packed
// variable-length sequences; the implementation (fused CUDA kernel, its CPU twin, SDPA or eager math)
// is chosen here, never in the model. Also the table of fused elementwise / loss ops (see the end).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

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

// ---- fused RMSNorm / SwiGLU / rotary / linear cross-entropy (kernels/fused_ops.cpp) ----
namespace sft::kernels {

// Which fused ops a model uses (`model.fused_ops`). Parsed from [auto] (all), [none], or a list of
// rmsnorm, rope, swiglu, linear_ce; throws sft::InputError naming any other entry.
struct FusedOps {
  bool rmsnorm = false, rope = false, swiglu = false, linear_ce = false;
  static FusedOps all() { return {true, true, true, true}; }
};
FusedOps parse_fused_ops(const std::vector<std::string>& names);
std::string to_string(const FusedOps& ops);

// The implementations a model calls, chosen once at construction: each entry is either the fused op
// or the composite ATen code it replaces (today's path, kept bit for bit).
struct OpTable {
  // x: [..., H], weight: [H] -> [..., H]; statistics in fp32 (fp64 for fp64 input)
  at::Tensor (*rms_norm)(const at::Tensor& x, const at::Tensor& weight, double eps);
  // gate, up: same shape -> silu(gate) * up
  at::Tensor (*swiglu)(const at::Tensor& gate, const at::Tensor& up);
  // q: [T, Hq, D], k: [T, Hkv, D], cos/sin: [T, D] -> rotated {q, k}
  std::pair<at::Tensor, at::Tensor> (*rotary)(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                              const at::Tensor& sin);
  // hidden: [N, H], weight: [V, H], targets: int64 [N] -> fp32 scalar sum of the token cross-entropies
  at::Tensor (*linear_ce_sum)(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets);
};
OpTable op_table(const FusedOps& ops);

}  // namespace sft::kernels
