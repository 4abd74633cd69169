// kernels/attention_fwd.cu: FlashAttention-2 style forward for packed variable-length sequences (sm_80+,
// bf16/fp16 in, fp32 accumulate): the CUDA kernel, then its torch-free launcher (launch_attention_fwd).
// One CTA = one (query block, sequence, query head); blockIdx.x folds (sequence, query block), y = head. 4 warps x 16 query rows; K/V blocks stream through
// shared memory (cp.async) while the online softmax lives in fp32 registers. Writes O and lse [Hq, T].
#include <cuda_runtime.h>

#include "kernels/attention_index.h"
#include "kernels/attention_params.h"
#include "kernels/common.cuh"

namespace sft::kernels {
namespace {

using namespace dev;

// ============================== CUDA kernels ==============================

template <typename Elem, int D>
__global__ void SFT_ATTN_HOT_KERNEL attention_fwd_kernel(const AttentionFwdParams p) {
  constexpr int BM = attn::kFwdBlockM, BN = attn::kFwdBlockN, LD = D + attn::kSmemPad;
  constexpr int kNT = BN / 8;  // n8 tiles of S per warp
  constexpr int kDT = D / 8;   // n8 tiles of O per warp
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Elem* sQ = reinterpret_cast<Elem*>(smem_raw);  // [BM][LD]
  Elem* sK = sQ + BM * LD;                       // [BN][LD]
  Elem* sV = sK + BN * LD;                       // [BN][LD]

  const attn::BlockOfSeq cell = attn::unfold_block_seq(blockIdx.x, attn::num_blocks(p.max_seqlen, BM));
  const int m_block = cell.block, seq = cell.seq, head = blockIdx.y;
  const attn::SeqSpan span = attn::seq_span(p.cu_seqlens, seq);
  if (m_block * BM >= span.len) return;  // shorter than max_seqlen: nothing to do
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int kv_head = attn::kv_head_of(head, p.num_heads / p.num_kv_heads);
  const int m0 = m_block * BM;

  const Elem* q_base = static_cast<const Elem*>(p.q) + attn::token_offset(span.begin, head, p.q_row_stride, p.q_head_stride);
  const Elem* k_base = static_cast<const Elem*>(p.k) + attn::token_offset(span.begin, kv_head, p.k_row_stride, p.k_head_stride);
  const Elem* v_base = static_cast<const Elem*>(p.v) + attn::token_offset(span.begin, kv_head, p.v_row_stride, p.v_head_stride);

  const float scale_log2 = p.scale * kLog2e;
  float acc_o[kDT][4];  // O rows (warp*16 + g, +8) x D, fp32
#pragma unroll
  for (int j = 0; j < kDT; ++j) acc_o[j][0] = acc_o[j][1] = acc_o[j][2] = acc_o[j][3] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY};  // raw-score max of rows g and g+8
  float row_sum[2] = {0.f, 0.f};              // this thread's partial sum; quad-reduced at the end

  const int n_end = attn::key_block_end(m_block, BM, BN, span.len, p.causal);
  // Pipeline: [Q + K(0)] then per block: V(n) in flight during S = Q K^T, K(n+1) during softmax + P V.
  load_tile_async<Elem, BM, D, attn::kThreads>(sQ, q_base, p.q_row_stride, m0, span.len, tid);
  load_tile_async<Elem, BN, D, attn::kThreads>(sK, k_base, p.k_row_stride, 0, span.len, tid);
  cp_async_commit();
  for (int n_block = 0; n_block < n_end; ++n_block) {
    const int n0 = n_block * BN;
    load_tile_async<Elem, BN, D, attn::kThreads>(sV, v_base, p.v_row_stride, n0, span.len, tid);
    cp_async_commit();
    cp_async_wait<1>();  // Q and K(n) have landed
    __syncthreads();

    // S = Q K^T for this warp's 16 rows x BN keys.
    float s[kNT][4];
#pragma unroll
    for (int j = 0; j < kNT; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
    warp_gemm_smem_abt<Elem, D>(s, sQ, warp * 16, sK, LD, lane);
    __syncthreads();  // every warp is done with sK: start K(n+1) while we do the softmax and P V
    if (n_block + 1 < n_end) {
      load_tile_async<Elem, BN, D, attn::kThreads>(sK, k_base, p.k_row_stride, n0 + BN, span.len, tid);
    }
    cp_async_commit();

    // Mask (only on tiles crossing the diagonal or the sequence end), then the online softmax.
    if (attn::tile_needs_mask(m_block, n_block, BM, BN, span.len, p.causal)) {
#pragma unroll
      for (int j = 0; j < kNT; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int row = m0 + warp * 16 + g + (e / 2) * 8, col = n0 + j * 8 + 2 * t + (e % 2);
          if (!attn::key_visible(row, col, span.len, p.causal)) s[j][e] = -INFINITY;
        }
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = row_max[r];
#pragma unroll
      for (int j = 0; j < kNT; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
      mx = quad_max(mx);
      // A row with no visible key so far keeps max -inf; use 0 so exp2 gives 0 instead of NaN.
      const float m_scaled = mx == -INFINITY ? 0.f : mx * scale_log2;
      const float alpha = exp2f(row_max[r] * scale_log2 - m_scaled);
      row_max[r] = mx;
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < kNT; ++j) {
        s[j][2 * r] = exp2f(s[j][2 * r] * scale_log2 - m_scaled);
        s[j][2 * r + 1] = exp2f(s[j][2 * r + 1] * scale_log2 - m_scaled);
        sum += s[j][2 * r] + s[j][2 * r + 1];
      }
      row_sum[r] = row_sum[r] * alpha + sum;
#pragma unroll
      for (int j = 0; j < kDT; ++j) {
        acc_o[j][2 * r] *= alpha;
        acc_o[j][2 * r + 1] *= alpha;
      }
    }

    if (n_block + 1 < n_end) {
      cp_async_wait<1>();  // V(n) has landed (K(n+1) may still be in flight)
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    // O += P V: P's C fragments become A fragments in registers.
    warp_gemm_regs_b<Elem>(acc_o, s, sV, LD, lane);
    __syncthreads();  // every warp is done with sV before V(n+1) overwrites it
  }

  // Epilogue: normalise, write O (valid rows only) and lse = max * scale + log(sum).
  Elem* o_base = static_cast<Elem*>(p.o) + attn::token_offset(span.begin, head, p.o_row_stride, p.o_head_stride);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float sum = quad_sum(row_sum[r]);
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    const int row = m0 + warp * 16 + g + r * 8;
    if (row < span.len) {
      Elem* o_row = o_base + static_cast<long long>(row) * p.o_row_stride;
#pragma unroll
      for (int j = 0; j < kDT; ++j) {
        *reinterpret_cast<uint32_t*>(o_row + j * 8 + 2 * t) =
            ElemTraits<Elem>::pack(acc_o[j][2 * r] * inv, acc_o[j][2 * r + 1] * inv);
      }
      if (t == 0) {
        p.lse[attn::row_stat_index(head, span.begin + row, p.total_tokens)] =
            sum > 0.f ? row_max[r] * p.scale + logf(sum) : INFINITY;
      }
    }
  }
}

// ============================== kernel launcher ==============================

template <typename Elem, int D>
void launch_fwd_typed(const AttentionFwdParams& p, cudaStream_t stream) {
  dev::launch_folded(attention_fwd_kernel<Elem, D>, attention_fwd_smem_bytes(D), attn::kFwdBlockM, p.num_heads, p,
                     stream);
}

}  // namespace

bool launch_attention_fwd(const AttentionFwdParams& p, cudaStream_t stream) {
  if (p.max_seqlen <= 0 || p.num_seqs <= 0) return true;
  if (!attn::folded_grid_fits(p.max_seqlen, p.num_seqs)) return false;
  const bool bf16 = p.dtype == AttnDtype::BFloat16;
  if (p.head_dim == 64) {
    bf16 ? launch_fwd_typed<__nv_bfloat16, 64>(p, stream) : launch_fwd_typed<__half, 64>(p, stream);
  } else if (p.head_dim == 128) {
    bf16 ? launch_fwd_typed<__nv_bfloat16, 128>(p, stream) : launch_fwd_typed<__half, 128>(p, stream);
  } else {
    return false;
  }
  return true;
}

}  // namespace sft::kernels
