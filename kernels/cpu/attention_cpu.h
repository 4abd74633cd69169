// kernels/cpu/attention_cpu.h: the CPU twin of the fused attention kernels: the same blocked
// FlashAttention-2 algorithm (tile sizes, online-softmax recurrence, logsumexp, backward formulas, varlen
// offsets, causal tile skipping, GQA head mapping, all from kernels/attention_index.h) on contiguous
// float or double arrays. Torch-free: the binding (kernels/fused_attention.cpp) passes raw pointers.
#pragma once
#include <cstdint>

namespace sft::kernels::cpu {

// All tensors are contiguous. T tokens, Hq query heads, Hkv kv heads, head_dim D (64 or 128 share the
// CUDA tile sizes; any D >= 1 works here).
template <typename Scalar>
struct CpuAttentionArgs {
  const Scalar* q = nullptr;     // [T, Hq, D]
  const Scalar* k = nullptr;     // [T, Hkv, D]
  const Scalar* v = nullptr;     // [T, Hkv, D]
  Scalar* o = nullptr;           // [T, Hq, D]   forward output; backward input
  Scalar* lse = nullptr;         // [Hq, T]      forward output; backward input
  const Scalar* dout = nullptr;  // [T, Hq, D]   backward only
  Scalar* dq = nullptr;          // [T, Hq, D]
  Scalar* dk = nullptr;          // [T, Hkv, D]
  Scalar* dv = nullptr;          // [T, Hkv, D]
  const int32_t* cu_seqlens = nullptr;  // [num_seqs + 1], host memory
  int total_tokens = 0, num_seqs = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0;
  Scalar scale = 1;
  bool causal = false;
  // Backward: false mirrors the CUDA default (dQ accumulated inside the dK/dV pass; on the CPU each
  // (sequence, kv head) work item owns its dQ rows, so it is race-free); true runs the separate dQ pass
  // of the CUDA deterministic mode.
  bool deterministic = false;
};

// Writes o and lse. Parallel over (sequence, head, query block) with at::parallel_for.
template <typename Scalar>
void attention_fwd_cpu(const CpuAttentionArgs<Scalar>& args);
// Reads q, k, v, o, lse, dout; writes dq, dk, dv.
template <typename Scalar>
void attention_bwd_cpu(const CpuAttentionArgs<Scalar>& args);

}  // namespace sft::kernels::cpu
