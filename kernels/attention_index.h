// kernels/attention_index.h: the index arithmetic shared by the CUDA attention kernels and their CPU twin:
// tile sizes, sequence offsets from cu_seqlens, causal tile limits, element visibility and the GQA head
// mapping. Every function is __host__ __device__ so the logic that most often breaks is exercised on the
// CPU by tests/test_attention.cpp. No torch, no CUDA runtime includes.
#pragma once

#if defined(__CUDACC__)
#define SFT_HD __host__ __device__ __forceinline__
#else
#define SFT_HD inline
#endif

namespace sft::kernels::attn {

// ---- tile sizes (the CPU twin uses the same ones) ----
// Forward and the deterministic dQ pass: a CTA of 4 warps owns kFwdBlockM query rows (16 per warp,
// one m16n8k16 row slab) and streams kFwdBlockN keys per step.
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kFwdBlockM = 64;
constexpr int kFwdBlockN = 64;
// Backward dK/dV pass: a CTA owns kBwdBlockN keys (16 per warp) and streams query blocks of
// bwd_block_m(head_dim) rows. hd128 uses 32 query rows so dK + dV (2 x 64 fp32 per thread) plus the
// S^T and dP^T tiles stay in registers without spilling.
constexpr int kBwdBlockN = 64;
SFT_HD constexpr int bwd_block_m(int head_dim) { return head_dim <= 64 ? 64 : 32; }
// Shared-memory rows are padded by 8 elements (16 bytes) so ldmatrix row addresses hit distinct banks.
constexpr int kSmemPad = 8;

SFT_HD constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }
SFT_HD constexpr bool head_dim_supported(int head_dim) { return head_dim == 64 || head_dim == 128; }

// ---- packed sequences ----
// Sequence s of a packed batch spans tokens [cu_seqlens[s], cu_seqlens[s+1]).
struct SeqSpan {
  int begin;
  int len;
};
SFT_HD SeqSpan seq_span(const int* cu_seqlens, int s) {
  return SeqSpan{cu_seqlens[s], cu_seqlens[s + 1] - cu_seqlens[s]};
}

// ---- grid: (block, sequence) pairs folded into blockIdx.x ----
// gridDim.y/z are limited to 65,535 but a packed batch may hold more sequences, so every kernel's
// blockIdx.x enumerates (sequence, block) pairs, x = seq * blocks_per_seq + block (gridDim.x allows
// 2^31 - 1), and blockIdx.y is the head. The CPU twin walks its work items through the same unfold.
constexpr long long kMaxGridX = 2147483647LL;
struct BlockOfSeq {
  int block;  // query block (forward, dQ pass) or key block (dK/dV pass) within the sequence
  int seq;
};
SFT_HD long long folded_grid_x(int blocks_per_seq, int num_seqs) {
  return static_cast<long long>(blocks_per_seq) * num_seqs;
}
SFT_HD BlockOfSeq unfold_block_seq(unsigned x, int blocks_per_seq) {
  return BlockOfSeq{static_cast<int>(x % static_cast<unsigned>(blocks_per_seq)),
                    static_cast<int>(x / static_cast<unsigned>(blocks_per_seq))};
}
// Whether a launch over num_seqs sequences of at most max_seqlen tokens fits the grid (blocks of 32 rows,
// the smallest tile any kernel uses, give the largest grid).
SFT_HD bool folded_grid_fits(int max_seqlen, int num_seqs) {
  return folded_grid_x(ceil_div(max_seqlen, 32), num_seqs) <= kMaxGridX;
}

// ---- grouped-query attention ----
// Query head h reads kv head h / group (the transformers repeat_kv layout); kv head g serves query heads
// [g * group, (g + 1) * group).
SFT_HD int kv_head_of(int q_head, int group) { return q_head / group; }
SFT_HD int first_q_head_of(int kv_head, int group) { return kv_head * group; }

// ---- causal tile limits (positions are relative to the sequence start) ----
// Exclusive end of the key blocks that query block m_block sees: causal stops after the diagonal, so fully
// masked tiles are never visited.
SFT_HD int key_block_end(int m_block, int block_m, int block_n, int seqlen, bool causal) {
  int n_end = seqlen;
  if (causal) {
    const int last_query = (m_block + 1) * block_m;  // exclusive
    n_end = last_query < seqlen ? last_query : seqlen;
  }
  return ceil_div(n_end, block_n);
}
// First query block that key block n_block is visible to (causal: queries before the block's first key
// see none of it).
SFT_HD int query_block_begin(int n_block, int block_m, int block_n, bool causal) {
  return causal ? (n_block * block_n) / block_m : 0;
}
SFT_HD int num_blocks(int seqlen, int block) { return ceil_div(seqlen, block); }

// Whether tile (m_block, n_block) needs per-element masking: it crosses the sequence end or the diagonal.
// Tiles for which this is false are computed without any mask.
SFT_HD bool tile_needs_mask(int m_block, int n_block, int block_m, int block_n, int seqlen, bool causal) {
  const int last_key = (n_block + 1) * block_n - 1;
  if (last_key >= seqlen) return true;
  if ((m_block + 1) * block_m > seqlen) return true;
  return causal && last_key > m_block * block_m;
}
// Whether query position q sees key position k (both relative to the sequence start).
SFT_HD bool key_visible(int q, int k, int seqlen, bool causal) {
  return k < seqlen && q < seqlen && (!causal || k <= q);
}

// ---- memory layout ----
// q/k/v/o/grads: [T, H, D] with row (token) stride and head stride in elements, unit stride on D.
SFT_HD long long token_offset(int token, int head, long long row_stride, long long head_stride) {
  return static_cast<long long>(token) * row_stride + static_cast<long long>(head) * head_stride;
}
// What the CUDA kernels need of every [T, H, D] tensor they read or write in vectors (16-byte cp.async
// rows, 4-byte packed stores): unit stride on D, token and head strides that are multiples of 8 elements
// (16 bytes of bf16/fp16), and a 16-byte-aligned start address.
SFT_HD bool vector_access_ok(long long token_stride, long long head_stride, long long dim_stride,
                             unsigned long long address) {
  return dim_stride == 1 && token_stride % 8 == 0 && head_stride % 8 == 0 && address % 16 == 0;
}
// logsumexp and D = rowsum(dO * O): fp32 [Hq, T].
SFT_HD long long row_stat_index(int head, int token, int total_tokens) {
  return static_cast<long long>(head) * total_tokens + token;
}

}  // namespace sft::kernels::attn
