// kernels/cpu/attention_cpu.cpp: the CPU twin of kernels/attention_fwd.cu and kernels/attention_bwd.cu.
// Each function mirrors one CUDA kernel: the same work decomposition (one work item per CTA), the same
// tiles and tile skipping, the same recurrences. Inner loops are written as axpy over contiguous rows
// (tiles are transposed once) so the compiler vectorises them without fast-math.
#include "kernels/cpu/attention_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/attention_index.h"

namespace sft::kernels::cpu {
namespace {

using attn::SeqSpan;

template <typename Scalar>
constexpr Scalar kNegInf = -std::numeric_limits<Scalar>::infinity();

// dst[r][c] (ld = ld_dst) = src row r of a [T, H, D] head slice, transposed: dst[d][r] = src[r][d].
// rows >= valid are zero.
template <typename Scalar>
void load_transposed(Scalar* dst, int ld_dst, const Scalar* src, long long row_stride, int rows, int valid, int D) {
  for (int r = 0; r < rows; ++r) {
    const Scalar* row = src + r * row_stride;
    for (int d = 0; d < D; ++d) dst[d * ld_dst + r] = r < valid ? row[d] : Scalar(0);
  }
}

// S[i][0..cols) = sum_d A[i][d] * BT[d][0..cols) for i < rows; A rows are `a_stride` apart.
template <typename Scalar>
void tile_matmul_nt(Scalar* S, int ld_s, const Scalar* A, long long a_stride, int rows, const Scalar* BT, int ld_b,
                    int cols, int D) {
  for (int i = 0; i < rows; ++i) {
    Scalar* __restrict s = S + i * ld_s;
    std::fill(s, s + cols, Scalar(0));
    const Scalar* a = A + i * a_stride;
    for (int d = 0; d < D; ++d) {
      const Scalar ad = a[d];
      const Scalar* __restrict b = BT + d * ld_b;
      for (int j = 0; j < cols; ++j) s[j] += ad * b[j];
    }
  }
}

// out[0..D) += w * row[0..D)
template <typename Scalar>
inline void axpy(Scalar* __restrict out, Scalar w, const Scalar* __restrict row, int D) {
  for (int d = 0; d < D; ++d) out[d] += w * row[d];
}

// Where a (query block, sequence, head) work item reads: the query rows [m0, m0 + rows) of the sequence, and
// its kv head's keys/values from the sequence start. rows == 0: the block lies past the sequence's end.
template <typename Scalar>
struct QueryBlock {
  SeqSpan span;
  int m0 = 0, rows = 0, kv_head = 0;
  long long q_stride = 0, kv_stride = 0;  // elements between tokens: Hq * D, Hkv * D
  const Scalar *q = nullptr, *k = nullptr, *v = nullptr;
};
template <typename Scalar>
QueryBlock<Scalar> query_block(const CpuAttentionArgs<Scalar>& a, int seq, int head, int m_block) {
  const int D = a.head_dim, Hq = a.num_heads, Hkv = a.num_kv_heads;
  QueryBlock<Scalar> b;
  b.span = attn::seq_span(a.cu_seqlens, seq);
  b.m0 = m_block * attn::kFwdBlockM;
  if (b.m0 >= b.span.len) return b;
  b.rows = std::min(attn::kFwdBlockM, b.span.len - b.m0);
  b.kv_head = attn::kv_head_of(head, Hq / Hkv);
  b.q_stride = static_cast<long long>(Hq) * D;
  b.kv_stride = static_cast<long long>(Hkv) * D;
  b.q = a.q + attn::token_offset(b.span.begin + b.m0, head, b.q_stride, D);
  b.k = a.k + attn::token_offset(b.span.begin, b.kv_head, b.kv_stride, D);
  b.v = a.v + attn::token_offset(b.span.begin, b.kv_head, b.kv_stride, D);
  return b;
}

// ---- forward: one work item per (query block, sequence, head), like one CTA of attention_fwd_kernel ----
template <typename Scalar>
void fwd_block(const CpuAttentionArgs<Scalar>& a, int seq, int head, int m_block) {
  constexpr int BM = attn::kFwdBlockM, BN = attn::kFwdBlockN;
  const int D = a.head_dim;
  const auto [span, m0, rows, kv_head, q_stride, kv_stride, q, k, v] = query_block(a, seq, head, m_block);
  if (rows == 0) return;

  std::vector<Scalar> acc(static_cast<size_t>(BM) * D, Scalar(0)), kt(static_cast<size_t>(D) * BN), s(BM * BN);
  std::vector<Scalar> row_max(BM, kNegInf<Scalar>), row_sum(BM, Scalar(0));
  const int n_end = attn::key_block_end(m_block, BM, BN, span.len, a.causal);
  for (int n_block = 0; n_block < n_end; ++n_block) {
    const int n0 = n_block * BN, cols = std::min(BN, span.len - n0);
    load_transposed(kt.data(), BN, k + n0 * kv_stride, kv_stride, cols, cols, D);
    tile_matmul_nt(s.data(), BN, q, q_stride, rows, kt.data(), BN, cols, D);  // S = Q K^T
    const bool need_mask = attn::tile_needs_mask(m_block, n_block, BM, BN, span.len, a.causal);
    for (int i = 0; i < rows; ++i) {
      Scalar* si = s.data() + i * BN;
      if (need_mask) {
        for (int j = 0; j < cols; ++j) {
          if (!attn::key_visible(m0 + i, n0 + j, span.len, a.causal)) si[j] = kNegInf<Scalar>;
        }
      }
      // Online softmax, the recurrence of attention_fwd_kernel (in natural-log units).
      Scalar mx = row_max[i];
      for (int j = 0; j < cols; ++j) mx = std::max(mx, si[j]);
      const Scalar m_scaled = mx == kNegInf<Scalar> ? Scalar(0) : mx * a.scale;
      const Scalar alpha = std::exp(row_max[i] * a.scale - m_scaled);
      row_max[i] = mx;
      Scalar sum = 0;
      for (int j = 0; j < cols; ++j) {
        si[j] = std::exp(si[j] * a.scale - m_scaled);
        sum += si[j];
      }
      row_sum[i] = row_sum[i] * alpha + sum;
      Scalar* oi = acc.data() + static_cast<size_t>(i) * D;
      for (int d = 0; d < D; ++d) oi[d] *= alpha;
      for (int j = 0; j < cols; ++j) {  // O += P V
        if (si[j] != Scalar(0)) axpy(oi, si[j], v + (n0 + j) * kv_stride, D);
      }
    }
  }
  for (int i = 0; i < rows; ++i) {
    const Scalar sum = row_sum[i], inv = sum > 0 ? Scalar(1) / sum : Scalar(0);
    Scalar* o = a.o + attn::token_offset(span.begin + m0 + i, head, q_stride, D);
    for (int d = 0; d < D; ++d) o[d] = acc[static_cast<size_t>(i) * D + d] * inv;
    a.lse[attn::row_stat_index(head, span.begin + m0 + i, a.total_tokens)] =
        sum > 0 ? row_max[i] * a.scale + std::log(sum) : std::numeric_limits<Scalar>::infinity();
  }
}

// ---- backward preprocessing: D = rowsum(dO * O) ----
template <typename Scalar>
void bwd_preprocess(const CpuAttentionArgs<Scalar>& a, Scalar* dsum) {
  const int D = a.head_dim, Hq = a.num_heads;
  at::parallel_for(0, static_cast<int64_t>(a.total_tokens), 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      for (int h = 0; h < Hq; ++h) {
        const long long off = attn::token_offset(static_cast<int>(t), h, static_cast<long long>(Hq) * D, D);
        Scalar acc = 0;
        for (int d = 0; d < D; ++d) acc += a.dout[off + d] * a.o[off + d];
        dsum[attn::row_stat_index(h, static_cast<int>(t), a.total_tokens)] = acc;
      }
    }
  });
}

// ---- dK/dV pass: one work item per (key block, sequence, kv head), like attention_bwd_dkdv_kernel ----
// dq_accum (non-deterministic mode only): [T, Hq, D], dQ / scale accumulated across key blocks.
template <typename Scalar>
void bwd_dkdv_block(const CpuAttentionArgs<Scalar>& a, const Scalar* dsum, Scalar* dq_accum, int seq, int kv_head,
                    int n_block) {
  constexpr int BN = attn::kBwdBlockN;
  const int D = a.head_dim, Hq = a.num_heads, Hkv = a.num_kv_heads;
  const int BM = attn::bwd_block_m(D);
  const SeqSpan span = attn::seq_span(a.cu_seqlens, seq);
  const int n0 = n_block * BN;
  if (n0 >= span.len) return;
  const int cols = std::min(BN, span.len - n0);  // keys of this block
  const int group = Hq / Hkv;
  const long long q_stride = static_cast<long long>(Hq) * D, kv_stride = static_cast<long long>(Hkv) * D;
  const Scalar* k = a.k + attn::token_offset(span.begin + n0, kv_head, kv_stride, D);
  const Scalar* v = a.v + attn::token_offset(span.begin + n0, kv_head, kv_stride, D);

  std::vector<Scalar> dk(static_cast<size_t>(BN) * D, Scalar(0)), dv(static_cast<size_t>(BN) * D, Scalar(0));
  std::vector<Scalar> qt(static_cast<size_t>(D) * BM), dot(static_cast<size_t>(D) * BM);
  std::vector<Scalar> p(BN * BM), ds(BN * BM);
  const int m_begin = attn::query_block_begin(n_block, BM, BN, a.causal);
  const int m_end = attn::num_blocks(span.len, BM);
  for (int h = attn::first_q_head_of(kv_head, group); h < attn::first_q_head_of(kv_head + 1, group); ++h) {
    for (int m_block = m_begin; m_block < m_end; ++m_block) {
      const int m0 = m_block * BM, rows = std::min(BM, span.len - m0);  // queries of this block
      const Scalar* q = a.q + attn::token_offset(span.begin + m0, h, q_stride, D);
      const Scalar* dout = a.dout + attn::token_offset(span.begin + m0, h, q_stride, D);
      load_transposed(qt.data(), BM, q, q_stride, rows, rows, D);
      load_transposed(dot.data(), BM, dout, q_stride, rows, rows, D);
      tile_matmul_nt(p.data(), BM, k, kv_stride, cols, qt.data(), BM, rows, D);     // S^T = K Q^T
      tile_matmul_nt(ds.data(), BM, v, kv_stride, cols, dot.data(), BM, rows, D);   // dP^T = V dO^T
      const bool need_mask = attn::tile_needs_mask(m_block, n_block, BM, BN, span.len, a.causal);
      const Scalar* lse = a.lse + attn::row_stat_index(h, span.begin + m0, a.total_tokens);
      const Scalar* dsum_row = dsum + attn::row_stat_index(h, span.begin + m0, a.total_tokens);
      for (int j = 0; j < cols; ++j) {
        Scalar* pj = p.data() + j * BM;
        Scalar* dsj = ds.data() + j * BM;
        for (int i = 0; i < rows; ++i) {
          const bool visible = !need_mask || attn::key_visible(m0 + i, n0 + j, span.len, a.causal);
          pj[i] = visible ? std::exp(pj[i] * a.scale - lse[i]) : Scalar(0);  // P^T
          dsj[i] = pj[i] * (dsj[i] - dsum_row[i]);                             // dS^T = P^T (dP^T - D)
        }
        Scalar* dvj = dv.data() + static_cast<size_t>(j) * D;
        Scalar* dkj = dk.data() + static_cast<size_t>(j) * D;
        for (int i = 0; i < rows; ++i) {
          if (pj[i] != Scalar(0)) axpy(dvj, pj[i], dout + i * q_stride, D);  // dV += P^T dO
          if (dsj[i] != Scalar(0)) axpy(dkj, dsj[i], q + i * q_stride, D);   // dK += dS^T Q
        }
      }
      if (dq_accum != nullptr) {  // dQ += dS K (the CUDA kernel's atomicAdd)
        for (int i = 0; i < rows; ++i) {
          Scalar* dqi = dq_accum + attn::token_offset(span.begin + m0 + i, h, q_stride, D);
          for (int j = 0; j < cols; ++j) {
            const Scalar w = ds[j * BM + i];
            if (w != Scalar(0)) axpy(dqi, w, k + j * kv_stride, D);
          }
        }
      }
    }
  }
  for (int j = 0; j < cols; ++j) {
    Scalar* dk_out = a.dk + attn::token_offset(span.begin + n0 + j, kv_head, kv_stride, D);
    Scalar* dv_out = a.dv + attn::token_offset(span.begin + n0 + j, kv_head, kv_stride, D);
    for (int d = 0; d < D; ++d) {
      dk_out[d] = dk[static_cast<size_t>(j) * D + d] * a.scale;
      dv_out[d] = dv[static_cast<size_t>(j) * D + d];
    }
  }
}

// ---- deterministic dQ pass: one work item per (query block, sequence, head), like attention_bwd_dq_kernel ----
template <typename Scalar>
void bwd_dq_block(const CpuAttentionArgs<Scalar>& a, const Scalar* dsum, int seq, int head, int m_block) {
  constexpr int BM = attn::kFwdBlockM, BN = attn::kFwdBlockN;
  const int D = a.head_dim;
  const auto [span, m0, rows, kv_head, q_stride, kv_stride, q, k, v] = query_block(a, seq, head, m_block);
  if (rows == 0) return;
  const Scalar* dout = a.dout + attn::token_offset(span.begin + m0, head, q_stride, D);
  const Scalar* lse = a.lse + attn::row_stat_index(head, span.begin + m0, a.total_tokens);
  const Scalar* dsum_row = dsum + attn::row_stat_index(head, span.begin + m0, a.total_tokens);

  std::vector<Scalar> acc(static_cast<size_t>(BM) * D, Scalar(0)), kt(static_cast<size_t>(D) * BN),
      vt(static_cast<size_t>(D) * BN), s(BM * BN), dp(BM * BN);
  const int n_end = attn::key_block_end(m_block, BM, BN, span.len, a.causal);
  for (int n_block = 0; n_block < n_end; ++n_block) {
    const int n0 = n_block * BN, cols = std::min(BN, span.len - n0);
    load_transposed(kt.data(), BN, k + n0 * kv_stride, kv_stride, cols, cols, D);
    load_transposed(vt.data(), BN, v + n0 * kv_stride, kv_stride, cols, cols, D);
    tile_matmul_nt(s.data(), BN, q, q_stride, rows, kt.data(), BN, cols, D);      // S = Q K^T
    tile_matmul_nt(dp.data(), BN, dout, q_stride, rows, vt.data(), BN, cols, D);  // dP = dO V^T
    const bool need_mask = attn::tile_needs_mask(m_block, n_block, BM, BN, span.len, a.causal);
    for (int i = 0; i < rows; ++i) {
      Scalar* acc_i = acc.data() + static_cast<size_t>(i) * D;
      for (int j = 0; j < cols; ++j) {
        const bool visible = !need_mask || attn::key_visible(m0 + i, n0 + j, span.len, a.causal);
        const Scalar prob = visible ? std::exp(s[i * BN + j] * a.scale - lse[i]) : Scalar(0);
        const Scalar dsij = prob * (dp[i * BN + j] - dsum_row[i]);
        if (dsij != Scalar(0)) axpy(acc_i, dsij, k + (n0 + j) * kv_stride, D);  // dQ += dS K
      }
    }
  }
  for (int i = 0; i < rows; ++i) {
    Scalar* dq = a.dq + attn::token_offset(span.begin + m0 + i, head, q_stride, D);
    for (int d = 0; d < D; ++d) dq[d] = acc[static_cast<size_t>(i) * D + d] * a.scale;
  }
}

int max_seqlen_of(const int32_t* cu, int n) {
  int mx = 0;
  for (int s = 0; s < n; ++s) mx = std::max(mx, cu[s + 1] - cu[s]);
  return mx;
}

// Work item `it` of a CUDA launch whose grid is (folded (sequence, block), head): which CTA it is.
struct GridCell {
  int block, seq, head;
};
GridCell grid_cell(int64_t it, int blocks_per_seq, int num_seqs) {
  const long long grid_x = attn::folded_grid_x(blocks_per_seq, num_seqs);
  const attn::BlockOfSeq c = attn::unfold_block_seq(static_cast<unsigned>(it % grid_x), blocks_per_seq);
  return GridCell{c.block, c.seq, static_cast<int>(it / grid_x)};
}

}  // namespace

template <typename Scalar>
void attention_fwd_cpu(const CpuAttentionArgs<Scalar>& a) {
  const int m_blocks = attn::num_blocks(max_seqlen_of(a.cu_seqlens, a.num_seqs), attn::kFwdBlockM);
  const int64_t items = attn::folded_grid_x(m_blocks, a.num_seqs) * a.num_heads;  // the CUDA grid
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    for (int64_t it = begin; it < end; ++it) {
      const GridCell c = grid_cell(it, m_blocks, a.num_seqs);
      fwd_block(a, c.seq, c.head, c.block);
    }
  });
}

template <typename Scalar>
void attention_bwd_cpu(const CpuAttentionArgs<Scalar>& a) {
  std::vector<Scalar> dsum(static_cast<size_t>(a.num_heads) * a.total_tokens);
  bwd_preprocess(a, dsum.data());
  const int max_len = max_seqlen_of(a.cu_seqlens, a.num_seqs);
  const int n_blocks = attn::num_blocks(max_len, attn::kBwdBlockN);
  const long long q_elems = static_cast<long long>(a.total_tokens) * a.num_heads * a.head_dim;
  if (a.deterministic) {
    const int64_t items = attn::folded_grid_x(n_blocks, a.num_seqs) * a.num_kv_heads;
    at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
      for (int64_t it = begin; it < end; ++it) {
        const GridCell c = grid_cell(it, n_blocks, a.num_seqs);  // head = kv head
        bwd_dkdv_block<Scalar>(a, dsum.data(), nullptr, c.seq, c.head, c.block);
      }
    });
    const int m_blocks = attn::num_blocks(max_len, attn::kFwdBlockM);
    const int64_t q_items = attn::folded_grid_x(m_blocks, a.num_seqs) * a.num_heads;
    at::parallel_for(0, q_items, 1, [&](int64_t begin, int64_t end) {
      for (int64_t it = begin; it < end; ++it) {
        const GridCell c = grid_cell(it, m_blocks, a.num_seqs);
        bwd_dq_block(a, dsum.data(), c.seq, c.head, c.block);
      }
    });
    return;
  }
  // dQ accumulated inside the dK/dV pass. A (sequence, kv head) work item walks its key blocks in order
  // and owns the dQ rows of its query heads, so the accumulation needs no atomics on the CPU.
  std::vector<Scalar> dq_accum(static_cast<size_t>(q_elems), Scalar(0));
  const int64_t items = static_cast<int64_t>(a.num_seqs) * a.num_kv_heads;
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    for (int64_t it = begin; it < end; ++it) {
      const int seq = static_cast<int>(it % a.num_seqs), kv_head = static_cast<int>(it / a.num_seqs);
      for (int n_block = 0; n_block < n_blocks; ++n_block) {
        bwd_dkdv_block<Scalar>(a, dsum.data(), dq_accum.data(), seq, kv_head, n_block);
      }
    }
  });
  // dq = scale * dq_accum (the CUDA conversion pass).
  at::parallel_for(0, q_elems, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) a.dq[i] = dq_accum[i] * a.scale;
  });
}

template void attention_fwd_cpu<float>(const CpuAttentionArgs<float>&);
template void attention_fwd_cpu<double>(const CpuAttentionArgs<double>&);
template void attention_bwd_cpu<float>(const CpuAttentionArgs<float>&);
template void attention_bwd_cpu<double>(const CpuAttentionArgs<double>&);

}  // namespace sft::kernels::cpu
