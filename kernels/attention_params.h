// kernels/attention_params.h: the torch-free launcher layer of the fused attention: plain parameter structs
// (pointers, sizes, strides), shared-memory sizes of every kernel, and the launcher declarations.
// Includes neither torch nor the CUDA runtime: it compiles with a plain C++ compiler, which is how
// scripts/check_cuda_build.py and the CPU tests read the shared-memory budget.
#pragma once
#include <cstdint>

#include "kernels/attention_index.h"

// Same declaration as in <driver_types.h>; repeating an identical typedef is legal.
typedef struct CUstream_st* cudaStream_t;

namespace sft::kernels {

enum class AttnDtype : int { BFloat16 = 0, Float16 = 1 };

// Forward: O = softmax(scale * Q K^T) V per sequence and head, plus the fp32 logsumexp.
struct AttentionFwdParams {
  const void* q = nullptr;  // [T, Hq, D]  (bf16 or fp16)
  const void* k = nullptr;  // [T, Hkv, D]
  const void* v = nullptr;  // [T, Hkv, D]
  void* o = nullptr;        // [T, Hq, D]
  float* lse = nullptr;     // [Hq, T] natural-log logsumexp of the scaled scores
  const int* cu_seqlens = nullptr;  // int32 [num_seqs + 1] on the device
  int64_t q_row_stride = 0, q_head_stride = 0;  // element strides; D is unit-stride
  int64_t k_row_stride = 0, k_head_stride = 0;
  int64_t v_row_stride = 0, v_head_stride = 0;
  int64_t o_row_stride = 0, o_head_stride = 0;
  int total_tokens = 0, num_seqs = 0, max_seqlen = 0;
  int num_heads = 0, num_kv_heads = 0, head_dim = 0;
  float scale = 1.f;
  bool causal = false;
  AttnDtype dtype = AttnDtype::BFloat16;
};

// Backward: given dO, the forward's O and lse, produce dQ, dK, dV (dK/dV summed over each GQA group).
struct AttentionBwdParams : AttentionFwdParams {
  const void* dout = nullptr;  // [T, Hq, D]
  void* dq = nullptr;          // [T, Hq, D]
  void* dk = nullptr;          // [T, Hkv, D]
  void* dv = nullptr;          // [T, Hkv, D]
  float* dsum = nullptr;       // [Hq, T] D = rowsum(dO * O), written by the preprocessing pass
  float* dq_accum = nullptr;   // [T, Hq, D] fp32, zeroed by the caller; used when !deterministic
  int64_t do_row_stride = 0, do_head_stride = 0;
  int64_t dq_row_stride = 0, dq_head_stride = 0;
  int64_t dk_row_stride = 0, dk_head_stride = 0;
  int64_t dv_row_stride = 0, dv_head_stride = 0;
  // deterministic: dQ comes from its own pass over key blocks (no atomics). Otherwise the dK/dV pass
  // atomically adds dQ into dq_accum (fp32) and a conversion pass writes dq.
  bool deterministic = false;
};

// ---- shared memory per CTA (bytes); all tiles are [rows][head_dim + kSmemPad] elements of 2 bytes ----
constexpr int attn_smem_row(int head_dim) { return head_dim + attn::kSmemPad; }
constexpr int attention_fwd_smem_bytes(int head_dim) {  // Q tile + K tile + V tile
  return 2 * attn_smem_row(head_dim) * (attn::kFwdBlockM + 2 * attn::kFwdBlockN);
}
constexpr int attention_bwd_dkdv_smem_bytes(int head_dim) {
  // K, V tiles (kBwdBlockN rows), Q, dO tiles (block_m rows), dS tile [block_m][kBwdBlockN + pad], lse/D.
  return 2 * attn_smem_row(head_dim) * (2 * attn::kBwdBlockN + 2 * attn::bwd_block_m(head_dim)) +
         2 * attn::bwd_block_m(head_dim) * (attn::kBwdBlockN + attn::kSmemPad) +
         2 * 4 * attn::bwd_block_m(head_dim);
}
constexpr int attention_bwd_dq_smem_bytes(int head_dim) {  // Q, dO tiles + K, V tiles
  return 2 * attn_smem_row(head_dim) * (2 * attn::kFwdBlockM + 2 * attn::kFwdBlockN);
}
// Opt-in per-block shared-memory limits (CUDA programming guide, compute capabilities table).
constexpr int kSmemLimitSm80 = 166912;  // 163 KiB (A100)
constexpr int kSmemLimitSm90 = 232448;  // 227 KiB (H100)

// Launchers (in the CUDA plugin, kernels/cuda_plugin.h): each enqueues exactly one kernel on `stream` and returns without synchronising; the caller
// checks cudaGetLastError() after each (the binding does). Return false only when the configuration is
// unsupported (head_dim not 64/128); the binding checks that first.
bool launch_attention_fwd(const AttentionFwdParams& params, cudaStream_t stream);
// D = rowsum(dO * O) in fp32, one warp per (token, head).
bool launch_attention_bwd_preprocess(const AttentionBwdParams& params, cudaStream_t stream);
// dK, dV (and, when !deterministic, atomic dQ into dq_accum): one CTA per (key block, seq, kv head).
bool launch_attention_bwd_dkdv(const AttentionBwdParams& params, cudaStream_t stream);
// deterministic: dQ directly, one CTA per (query block, seq, q head). Otherwise: dq = dq_accum * scale.
bool launch_attention_bwd_dq(const AttentionBwdParams& params, cudaStream_t stream);

}  // namespace sft::kernels
