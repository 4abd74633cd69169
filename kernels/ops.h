// kernels/ops.h: the only kernel header model/ includes. One attention entry point over packed
// variable-length sequences; the implementation (fused CUDA kernel, its CPU twin, SDPA or eager math)
// is chosen here, never in the model. Also the table of fused elementwise / loss ops (see the end).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "kernels/choices.h"

namespace sft::kernels {

// Parses a `model.attention` name (or `--attention`); throws sft::InputError listing the allowed names.
AttentionImpl parse_attention_impl(const std::string& name, const std::string& key = "model.attention");
std::string to_string(AttentionImpl impl);

// What resolve_attention_impl knows of the run. Zero sizes: unknown (auto then skips the timing race).
struct AttentionResolveOptions {
  bool deterministic = false;                   // model.deterministic_attention
  at::ScalarType dtype = at::kBFloat16;         // dtype attention runs in (the autocast dtype, else model's)
  int64_t num_heads = 0, num_kv_heads = 0, head_dim = 0;  // the model's attention shape
  int64_t max_seqlen = 0;                       // data.max_seq_len
};

// Resolves `model.attention` once per run (the caller stores the result). Declared here only; defined in
// kernels/attention_choice.cpp:
//   sdpa, eager: unchanged, no check.
//   CPU:  auto -> sdpa (faster than the twin, kernels/README.md); fused -> the twin.
//   CUDA: fused -> ours after its start-up self-check passes, else throws std::runtime_error.
//         auto  -> after our self-check, our kernel and LibTorch's FlashAttention-2 varlen are timed on the
//                  run's heads and head_dim (a few ms of fwd+bwd) and the faster is used; the choice and
//                  both timings are logged on stderr. sdpa if neither runs or the dtype is not bf16/fp16.
//   deterministic: a resolved fused becomes FusedDeterministic; CUDA auto then skips the race and uses it
//                  (LibTorch's flash backward is not deterministic by default).
AttentionImpl resolve_attention_impl(AttentionImpl requested, const at::Device& device,
                                     const AttentionResolveOptions& options = {});

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

// ---- fused RMSNorm / SwiGLU / rotary / linear cross-entropy / projections (kernels/fused_ops.cpp,
//      kernels/fused_projection.cpp) ----
namespace sft::kernels {

// Which fused ops a model uses (`model.fused_ops`). Parsed from [auto] (on the CPU: the ones measured
// faster there, kernels/fused_ops.cpp; on CUDA: none until the GPU proof has run them), [none], or a list
// of rmsnorm, rope, swiglu, linear_ce, dropout, projections; throws sft::InputError naming any other entry.
// projections: q/k/v as one GEMM and gate/up as one GEMM (and their LoRA A matrices), see linear_group.
struct FusedOps {
  bool rmsnorm = false, rope = false, swiglu = false, linear_ce = false, projections = false;
  bool dropout = false;  // LoRA: lora_A(dropout(x)) as kernels::dropout_linear (Philox mask, never stored)
  bool lora = false;     // frozen projections of one input + their LoRA adapters as one node (lora_group_linear)
  static FusedOps all() { return {true, true, true, true, true, true, true}; }
};
FusedOps resolve_fused_ops(const FusedOpsChoice& choice, at::DeviceType device);
FusedOps parse_fused_ops(const std::vector<std::string>& names, at::DeviceType device = at::kCPU);  // parse + resolve
std::string to_string(const FusedOps& ops);

// The implementations a model calls, chosen once per model when the setup applies `model.fused_ops`
// (CausalLMImpl::set_fused_ops, before training), never per call: each entry is either the fused op or
// the composite ATen code it replaces (today's path, kept bit for bit).
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
  // x: [..., in], weights[i]: [out_i, in], biases: empty or one [out_i] per weight -> {x W_i^T + b_i}, each
  // [..., out_i]. Fused (kernels/fused_projection.cpp): one GEMM over [sum out_i, in] when the weights (and
  // biases) are adjacent row blocks of one storage (make_rows_adjacent), the outputs column-block views of
  // its result, every weight its own gradient; otherwise, and in the composite entry, one at::linear each.
  std::vector<at::Tensor> (*linear_group)(const at::Tensor& x, at::TensorList weights, at::TensorList biases);
  // linear_group is the fused one: the model then groups its projections through it (model::project_group).
  bool group_projections = false;
  // model.fused_ops lora: model::project_group runs LoRA-adapted frozen projections of one input through
  // lora_group_linear (below) where lora_group_supported says it applies.
  bool group_lora = false;
};
OpTable op_table(const FusedOps& ops);
// Frozen projections of one input with LoRA adapters, y_i = x W_i^T + b_i + s_i (x A_i^T) B_i^T, as ONE
// autograd node (kernels/lora_group.cpp): d x accumulates inside the GEMMs, B's product is added in place.
//   x: [..., in]; weights[i]: [out_i, in] (frozen); biases: empty or one frozen [out_i] per weight;
//   lora_A[i]: [r_i, in]; lora_B[i]: [out_i, r_i]; scales[i]: s_i. Returns y_i: [..., out_i].
// lora_group_supported: every operand defined on x's device, shapes consistent, base weights and biases
// without requires_grad, and one dtype for all (without autocast) or floating dtypes below fp64 (under
// autocast on x's device: the node then computes in autocast's dtype, as the composite's casts would, and
// returns gradients in the operands' dtypes). lora_group_linear throws otherwise.
bool lora_group_supported(const at::Tensor& x, at::TensorList weights, at::TensorList biases, at::TensorList lora_A,
                          at::TensorList lora_B);
std::vector<at::Tensor> lora_group_linear(const at::Tensor& x, at::TensorList weights, at::TensorList biases,
                                          at::TensorList lora_A, at::TensorList lora_B, const std::vector<double>& scales);

// Whether `parts` (each [rows_i, ...], same trailing sizes, dtype and device) are back-to-back contiguous
// row blocks of one storage, in order: then the fused linear_group runs them as one GEMM.
bool rows_adjacent(at::TensorList parts);
// Makes them so (copying them into one new storage and pointing each at its rows with set_data, under
// no_grad; values, identities, requires_grad and .grad unchanged). False, and nothing changed, when they
// cannot share one storage (fewer than 2, different dtypes, devices or trailing sizes).
bool make_rows_adjacent(at::TensorList parts);

}  // namespace sft::kernels

// ---- attention of new rows over a key/value cache (decoding; kernels/cached_attention.cpp) ----
namespace sft::kernels {

// The keys and values a decoding step attends over. One buffer per layer holds every cached sequence:
// packed document d of the step (see kv_cache_attention) reads rows [starts[d], starts[d] + lengths[d])
// of keys/values, the positions 0 .. lengths[d] - 1 of its sequence, this step's new rows included.
struct KvCacheView {
  at::Tensor keys, values;  // [R, Hkv, D]: R rows of all sequences together
  at::Tensor starts_host;   // int64 [n_docs] on the CPU: first row of document d's sequence
  at::Tensor lengths_host;  // int64 [n_docs] on the CPU: its cached positions, including the new rows
};

// Attention of the new rows of a decoding step (causal, as flash_attn_with_kvcache aligns it):
//   q: [T, Hq, D] new query rows of n_docs documents packed as `seqs` (cu_seqlens of the new rows);
//   k_new, v_new: [T, Hkv, D] their keys/values, already written into the cache;
//   row i of the n_d new rows of document d sees cached positions [0, lengths[d] - n_d + i].
// Returns [T, Hq, D] in q's dtype; no autograd (decoding runs under no_grad).
// A step where no document has earlier positions (a prefill) is varlen_attention(q, k_new, v_new, seqs,
// scale, causal, impl), so a prompt is processed exactly as training processes it. Otherwise each
// document is one fp32 scores / softmax / weighted-sum pass over its cached rows (any device).
at::Tensor kv_cache_attention(const at::Tensor& q, const at::Tensor& k_new, const at::Tensor& v_new,
                              const KvCacheView& cache, const PackedSequences& seqs, double softmax_scale,
                              AttentionImpl impl);

}  // namespace sft::kernels
