// kernels/attention_bwd.cu: FlashAttention-2 style backward for packed variable-length sequences (sm_80+,
// bf16/fp16 in, fp32 accumulate): CUDA kernels, then their torch-free launchers.
//   1. preprocess: D = rowsum(dO * O), fp32 [Hq, T].
//   2. dK/dV pass: one CTA per (key block, sequence, kv head) (blockIdx.x folds sequence and block). K, V stay in shared memory; the CTA loops
//      over every query head of the GQA group and every visible query block, recomputes
//      P = exp(scale * Q K^T - lse) and accumulates dV += P^T dO and dK += dS^T Q in registers
//      (dS = P * (dP - D), dP = dO V^T), so dK/dV are summed over the group without atomics. In the
//      default mode it also adds dQ += scale * dS K into an fp32 buffer with atomics.
//   3. dQ pass: deterministic mode recomputes P and dS per (query block, sequence, q head) and
//      accumulates dQ in registers (no atomics, bitwise reproducible); otherwise dq = scale * dq_accum.
#include <cuda_runtime.h>

#include <type_traits>

#include "kernels/attention_index.h"
#include "kernels/attention_params.h"
#include "kernels/common.cuh"

namespace sft::kernels {
namespace {

using namespace dev;

// ============================== CUDA kernels ==============================

// D[h, t] = sum_d dO[t, h, d] * O[t, h, d]; one warp per (token, head).
template <typename Elem, int D>
__global__ void __launch_bounds__(attn::kThreads) attention_bwd_preprocess_kernel(const AttentionBwdParams p) {
  const long long row = static_cast<long long>(blockIdx.x) * attn::kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= static_cast<long long>(p.total_tokens) * p.num_heads) return;
  const int token = static_cast<int>(row / p.num_heads), head = static_cast<int>(row % p.num_heads);
  const Elem* o = static_cast<const Elem*>(p.o) + attn::token_offset(token, head, p.o_row_stride, p.o_head_stride);
  const Elem* d_o = static_cast<const Elem*>(p.dout) + attn::token_offset(token, head, p.do_row_stride, p.do_head_stride);
  float acc = 0.f;
#pragma unroll
  for (int i = lane * 2; i < D; i += 64) {
    const float2 a = ElemTraits<Elem>::unpack(*reinterpret_cast<const uint32_t*>(o + i));
    const float2 b = ElemTraits<Elem>::unpack(*reinterpret_cast<const uint32_t*>(d_o + i));
    acc += a.x * b.x + a.y * b.y;
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) p.dsum[attn::row_stat_index(head, token, p.total_tokens)] = acc;
}

template <typename Elem, int D, bool kAtomicDq>
__global__ void SFT_ATTN_HOT_KERNEL attention_bwd_dkdv_kernel(const AttentionBwdParams p) {
  constexpr int BN = attn::kBwdBlockN, BM = attn::bwd_block_m(D), LD = D + attn::kSmemPad;
  constexpr int LDS = BN + attn::kSmemPad;  // dS tile row stride
  constexpr int kMT = BM / 8;               // n8 tiles of S^T (query columns) per warp
  constexpr int kDT = D / 8;
  // dQ tile split: BM/16 row slabs, the remaining warps split head_dim.
  constexpr int kRowSlabs = BM / 16, kColSplit = attn::kWarps / kRowSlabs, kDqCols = D / kColSplit;
  static_assert(kRowSlabs * kColSplit == attn::kWarps, "dQ tiling must use every warp");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Elem* sK = reinterpret_cast<Elem*>(smem_raw);  // [BN][LD]
  Elem* sV = sK + BN * LD;                       // [BN][LD]
  Elem* sQ = sV + BN * LD;                       // [BM][LD]
  Elem* sdO = sQ + BM * LD;                      // [BM][LD]
  Elem* sdS = sdO + BM * LD;                     // [BM][LDS]  dS (query-major), for dQ
  float* sLse = reinterpret_cast<float*>(sdS + BM * LDS);  // [BM], log2 domain
  float* sDsum = sLse + BM;                                // [BM]

  const attn::BlockOfSeq cell = attn::unfold_block_seq(blockIdx.x, attn::num_blocks(p.max_seqlen, BN));
  const int n_block = cell.block, seq = cell.seq, kv_head = blockIdx.y;
  const attn::SeqSpan span = attn::seq_span(p.cu_seqlens, seq);
  const int n0 = n_block * BN;
  if (n0 >= span.len) return;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int group = p.num_heads / p.num_kv_heads;
  const float scale_log2 = p.scale * kLog2e;

  const Elem* k_base = static_cast<const Elem*>(p.k) + attn::token_offset(span.begin, kv_head, p.k_row_stride, p.k_head_stride);
  const Elem* v_base = static_cast<const Elem*>(p.v) + attn::token_offset(span.begin, kv_head, p.v_row_stride, p.v_head_stride);
  load_tile_async<Elem, BN, D, attn::kThreads>(sK, k_base, p.k_row_stride, n0, span.len, tid);
  load_tile_async<Elem, BN, D, attn::kThreads>(sV, v_base, p.v_row_stride, n0, span.len, tid);
  cp_async_commit();

  float acc_dk[kDT][4], acc_dv[kDT][4];  // this warp's 16 keys x D, fp32
#pragma unroll
  for (int j = 0; j < kDT; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_dk[j][e] = acc_dv[j][e] = 0.f;
  }

  const int m_begin = attn::query_block_begin(n_block, BM, BN, p.causal);
  const int m_end = attn::num_blocks(span.len, BM);
  for (int h = attn::first_q_head_of(kv_head, group); h < attn::first_q_head_of(kv_head + 1, group); ++h) {
    const Elem* q_base = static_cast<const Elem*>(p.q) + attn::token_offset(span.begin, h, p.q_row_stride, p.q_head_stride);
    const Elem* do_base = static_cast<const Elem*>(p.dout) + attn::token_offset(span.begin, h, p.do_row_stride, p.do_head_stride);
    for (int m_block = m_begin; m_block < m_end; ++m_block) {
      const int m0 = m_block * BM;
      load_tile_async<Elem, BM, D, attn::kThreads>(sQ, q_base, p.q_row_stride, m0, span.len, tid);
      load_tile_async<Elem, BM, D, attn::kThreads>(sdO, do_base, p.do_row_stride, m0, span.len, tid);
      cp_async_commit();
      for (int i = tid; i < BM; i += attn::kThreads) {
        const bool valid = m0 + i < span.len;  // rows past the end: lse = +inf makes P = 0
        const long long idx = attn::row_stat_index(h, span.begin + m0 + (valid ? i : 0), p.total_tokens);
        sLse[i] = valid ? p.lse[idx] * kLog2e : INFINITY;
        sDsum[i] = valid ? p.dsum[idx] : 0.f;
      }
      cp_async_wait<0>();
      __syncthreads();  // K, V (first time), Q, dO, lse, D are in shared memory

      // S^T = K Q^T: this warp's 16 keys x BM queries.
      float s[kMT][4];
#pragma unroll
      for (int j = 0; j < kMT; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
      warp_gemm_smem_abt<Elem, D>(s, sK, warp * 16, sQ, LD, lane);
      // P^T = exp(scale * S^T - lse); masked entries are 0.
      const bool need_mask = attn::tile_needs_mask(m_block, n_block, BM, BN, span.len, p.causal);
#pragma unroll
      for (int j = 0; j < kMT; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = n0 + warp * 16 + g + (e / 2) * 8, qcol = j * 8 + 2 * t + (e % 2);
          const bool visible = !need_mask || attn::key_visible(m0 + qcol, key, span.len, p.causal);
          s[j][e] = visible ? exp2f(s[j][e] * scale_log2 - sLse[qcol]) : 0.f;
        }
      }
      // dV += P^T dO
      warp_gemm_regs_b<Elem>(acc_dv, s, sdO, LD, lane);
      // dP^T = V dO^T, then dS^T = P^T * (dP^T - D) (in place in dp).
      float dp_t[kMT][4];
#pragma unroll
      for (int j = 0; j < kMT; ++j) dp_t[j][0] = dp_t[j][1] = dp_t[j][2] = dp_t[j][3] = 0.f;
      warp_gemm_smem_abt<Elem, D>(dp_t, sV, warp * 16, sdO, LD, lane);
#pragma unroll
      for (int j = 0; j < kMT; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) dp_t[j][e] = s[j][e] * (dp_t[j][e] - sDsum[j * 8 + 2 * t + (e % 2)]);
      }
      // dK += dS^T Q
      warp_gemm_regs_b<Elem>(acc_dk, dp_t, sQ, LD, lane);
      if constexpr (kAtomicDq) {
        // dS (query-major) to shared memory, then dQ[BM x D] += dS K split over the 4 warps.
#pragma unroll
        for (int j = 0; j < kMT; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int key = warp * 16 + g + (e / 2) * 8, qcol = j * 8 + 2 * t + (e % 2);
            sdS[qcol * LDS + key] = ElemTraits<Elem>::from_float(dp_t[j][e]);
          }
        }
        __syncthreads();  // the whole dS tile is in shared memory
        const int slab = warp % kRowSlabs;
        // This warp's kDqCols columns in chunks of 16 (not unrolled): only 8 dQ accumulators are live
        // beside dK/dV's 2 x kDT x 4 (hd128: 128). Register headroom under the ptxas check's margin
        // (scripts/check_cuda_build.py) without spilling; a chunk re-reads dS from shared memory.
#pragma unroll 1
        for (int c0 = (warp / kRowSlabs) * kDqCols; c0 < (warp / kRowSlabs + 1) * kDqCols; c0 += 16) {
          float acc_dq[2][4];
#pragma unroll
          for (int j = 0; j < 2; ++j) acc_dq[j][0] = acc_dq[j][1] = acc_dq[j][2] = acc_dq[j][3] = 0.f;
#pragma unroll
          for (int ks = 0; ks < BN / 16; ++ks) {
            uint32_t a[4], b[4];
            load_a_frag(a, sdS, LDS, slab * 16, ks * 16, lane);
            load_b_frag_kn(b, sK, LD, ks * 16, c0, lane);
            mma_16816<Elem>(acc_dq[0], a, b[0], b[1]);
            mma_16816<Elem>(acc_dq[1], a, b[2], b[3]);
          }
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const int row = m0 + slab * 16 + g + r * 8;
            if (row < span.len) {
              float* dq_row =
                  p.dq_accum + attn::token_offset(span.begin + row, h, static_cast<long long>(p.num_heads) * D, D);
#pragma unroll
              for (int j = 0; j < 2; ++j) {
                atomicAdd(dq_row + c0 + j * 8 + 2 * t, acc_dq[j][2 * r]);
                atomicAdd(dq_row + c0 + j * 8 + 2 * t + 1, acc_dq[j][2 * r + 1]);
              }
            }
          }
        }
      }
      __syncthreads();  // every warp is done with sQ, sdO, sdS, sLse before the next query block lands
    }
  }

  // Epilogue: dK = scale * sum dS^T Q, dV = sum P^T dO; rows past the sequence end are not written.
  Elem* dk_base = static_cast<Elem*>(p.dk) + attn::token_offset(span.begin, kv_head, p.dk_row_stride, p.dk_head_stride);
  Elem* dv_base = static_cast<Elem*>(p.dv) + attn::token_offset(span.begin, kv_head, p.dv_row_stride, p.dv_head_stride);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = n0 + warp * 16 + g + r * 8;
    if (key < span.len) {
      Elem* dk_row = dk_base + static_cast<long long>(key) * p.dk_row_stride;
      Elem* dv_row = dv_base + static_cast<long long>(key) * p.dv_row_stride;
#pragma unroll
      for (int j = 0; j < kDT; ++j) {
        *reinterpret_cast<uint32_t*>(dk_row + j * 8 + 2 * t) =
            ElemTraits<Elem>::pack(acc_dk[j][2 * r] * p.scale, acc_dk[j][2 * r + 1] * p.scale);
        *reinterpret_cast<uint32_t*>(dv_row + j * 8 + 2 * t) =
            ElemTraits<Elem>::pack(acc_dv[j][2 * r], acc_dv[j][2 * r + 1]);
      }
    }
  }
}

// Deterministic dQ: one CTA per (query block, sequence, q head), 16 query rows per warp, key blocks
// streamed like the forward. dQ = scale * sum_j dS_j K_j, accumulated in fp32 registers.
template <typename Elem, int D>
__global__ void SFT_ATTN_HOT_KERNEL_ONE_CTA attention_bwd_dq_kernel(const AttentionBwdParams p) {
  constexpr int BM = attn::kFwdBlockM, BN = attn::kFwdBlockN, LD = D + attn::kSmemPad;
  constexpr int kNT = BN / 8, kDT = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Elem* sQ = reinterpret_cast<Elem*>(smem_raw);  // [BM][LD]
  Elem* sdO = sQ + BM * LD;                      // [BM][LD]
  Elem* sK = sdO + BM * LD;                      // [BN][LD]
  Elem* sV = sK + BN * LD;                       // [BN][LD]

  const attn::BlockOfSeq cell = attn::unfold_block_seq(blockIdx.x, attn::num_blocks(p.max_seqlen, BM));
  const int m_block = cell.block, seq = cell.seq, head = blockIdx.y;
  const attn::SeqSpan span = attn::seq_span(p.cu_seqlens, seq);
  const int m0 = m_block * BM;
  if (m0 >= span.len) return;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int kv_head = attn::kv_head_of(head, p.num_heads / p.num_kv_heads);
  const float scale_log2 = p.scale * kLog2e;

  const Elem* q_base = static_cast<const Elem*>(p.q) + attn::token_offset(span.begin, head, p.q_row_stride, p.q_head_stride);
  const Elem* do_base = static_cast<const Elem*>(p.dout) + attn::token_offset(span.begin, head, p.do_row_stride, p.do_head_stride);
  const Elem* k_base = static_cast<const Elem*>(p.k) + attn::token_offset(span.begin, kv_head, p.k_row_stride, p.k_head_stride);
  const Elem* v_base = static_cast<const Elem*>(p.v) + attn::token_offset(span.begin, kv_head, p.v_row_stride, p.v_head_stride);
  load_tile_async<Elem, BM, D, attn::kThreads>(sQ, q_base, p.q_row_stride, m0, span.len, tid);
  load_tile_async<Elem, BM, D, attn::kThreads>(sdO, do_base, p.do_row_stride, m0, span.len, tid);
  cp_async_commit();

  float lse_log2[2], dsum[2];  // rows warp*16 + g and + 8
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = m0 + warp * 16 + g + r * 8;
    const bool valid = row < span.len;
    const long long idx = attn::row_stat_index(head, span.begin + (valid ? row : 0), p.total_tokens);
    lse_log2[r] = valid ? p.lse[idx] * kLog2e : INFINITY;
    dsum[r] = valid ? p.dsum[idx] : 0.f;
  }
  float acc_dq[kDT][4];
#pragma unroll
  for (int j = 0; j < kDT; ++j) acc_dq[j][0] = acc_dq[j][1] = acc_dq[j][2] = acc_dq[j][3] = 0.f;

  const int n_end = attn::key_block_end(m_block, BM, BN, span.len, p.causal);
  for (int n_block = 0; n_block < n_end; ++n_block) {
    const int n0 = n_block * BN;
    load_tile_async<Elem, BN, D, attn::kThreads>(sK, k_base, p.k_row_stride, n0, span.len, tid);
    load_tile_async<Elem, BN, D, attn::kThreads>(sV, v_base, p.v_row_stride, n0, span.len, tid);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();  // Q, dO (first time), K, V are in shared memory

    float s[kNT][4], dp[kNT][4];
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] = dp[j][e] = 0.f;
    }
    warp_gemm_smem_abt<Elem, D>(s, sQ, warp * 16, sK, LD, lane);    // S = Q K^T
    warp_gemm_smem_abt<Elem, D>(dp, sdO, warp * 16, sV, LD, lane);  // dP = dO V^T
    const bool need_mask = attn::tile_needs_mask(m_block, n_block, BM, BN, span.len, p.causal);
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e / 2, row = m0 + warp * 16 + g + r * 8, col = n0 + j * 8 + 2 * t + (e % 2);
        const bool visible = !need_mask || attn::key_visible(row, col, span.len, p.causal);
        const float prob = visible ? exp2f(s[j][e] * scale_log2 - lse_log2[r]) : 0.f;
        dp[j][e] = prob * (dp[j][e] - dsum[r]);  // dS
      }
    }
    // dQ += dS K
    warp_gemm_regs_b<Elem>(acc_dq, dp, sK, LD, lane);
    __syncthreads();  // every warp is done with sK, sV before the next block lands
  }

  Elem* dq_base = static_cast<Elem*>(p.dq) + attn::token_offset(span.begin, head, p.dq_row_stride, p.dq_head_stride);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = m0 + warp * 16 + g + r * 8;
    if (row < span.len) {
      Elem* dq_row = dq_base + static_cast<long long>(row) * p.dq_row_stride;
#pragma unroll
      for (int j = 0; j < kDT; ++j) {
        *reinterpret_cast<uint32_t*>(dq_row + j * 8 + 2 * t) =
            ElemTraits<Elem>::pack(acc_dq[j][2 * r] * p.scale, acc_dq[j][2 * r + 1] * p.scale);
      }
    }
  }
}

// dq[t, h, :] = scale * dq_accum[t, h, :]; one thread per element pair.
template <typename Elem, int D>
__global__ void attention_bwd_convert_dq_kernel(const AttentionBwdParams p) {
  const long long pair = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long long n_pairs = static_cast<long long>(p.total_tokens) * p.num_heads * (D / 2);
  if (pair >= n_pairs) return;
  const long long elem = pair * 2;
  const int d = static_cast<int>(elem % D);
  const long long row = elem / D;
  const int token = static_cast<int>(row / p.num_heads), head = static_cast<int>(row % p.num_heads);
  const float2 x = *reinterpret_cast<const float2*>(p.dq_accum + elem);
  Elem* out = static_cast<Elem*>(p.dq) + attn::token_offset(token, head, p.dq_row_stride, p.dq_head_stride) + d;
  *reinterpret_cast<uint32_t*>(out) = ElemTraits<Elem>::pack(x.x * p.scale, x.y * p.scale);
}

// ============================== kernel launchers ==============================

template <int D, typename Fn>
bool dispatch(const AttentionBwdParams& p, Fn&& fn) {
  if (p.dtype == AttnDtype::BFloat16) {
    fn(__nv_bfloat16{}, std::integral_constant<int, D>{});
  } else {
    fn(__half{}, std::integral_constant<int, D>{});
  }
  return true;
}
template <typename Fn>
bool dispatch_head_dim(const AttentionBwdParams& p, Fn&& fn) {
  if (p.max_seqlen > 0 && p.num_seqs > 0 && !attn::folded_grid_fits(p.max_seqlen, p.num_seqs)) return false;
  if (p.head_dim == 64) return dispatch<64>(p, fn);
  if (p.head_dim == 128) return dispatch<128>(p, fn);
  return false;
}

}  // namespace

bool launch_attention_bwd_preprocess(const AttentionBwdParams& p, cudaStream_t stream) {
  return dispatch_head_dim(p, [&](auto elem, auto dim) {
    using Elem = decltype(elem);
    constexpr int D = decltype(dim)::value;
    const long long rows = static_cast<long long>(p.total_tokens) * p.num_heads;
    if (rows == 0) return;
    const unsigned blocks = static_cast<unsigned>((rows + attn::kWarps - 1) / attn::kWarps);
    attention_bwd_preprocess_kernel<Elem, D><<<blocks, attn::kThreads, 0, stream>>>(p);
  });
}

bool launch_attention_bwd_dkdv(const AttentionBwdParams& p, cudaStream_t stream) {
  return dispatch_head_dim(p, [&](auto elem, auto dim) {
    using Elem = decltype(elem);
    constexpr int D = decltype(dim)::value;
    if (p.max_seqlen <= 0 || p.num_seqs <= 0) return;
    auto kernel = p.deterministic ? attention_bwd_dkdv_kernel<Elem, D, false> : attention_bwd_dkdv_kernel<Elem, D, true>;
    dev::launch_folded(kernel, attention_bwd_dkdv_smem_bytes(D), attn::kBwdBlockN, p.num_kv_heads, p, stream);
  });
}

bool launch_attention_bwd_dq(const AttentionBwdParams& p, cudaStream_t stream) {
  return dispatch_head_dim(p, [&](auto elem, auto dim) {
    using Elem = decltype(elem);
    constexpr int D = decltype(dim)::value;
    if (p.deterministic) {
      if (p.max_seqlen <= 0 || p.num_seqs <= 0) return;
      dev::launch_folded(attention_bwd_dq_kernel<Elem, D>, attention_bwd_dq_smem_bytes(D), attn::kFwdBlockM, p.num_heads,
                         p, stream);
    } else {
      const long long pairs = static_cast<long long>(p.total_tokens) * p.num_heads * (D / 2);
      if (pairs == 0) return;
      constexpr int kBlock = 256;
      attention_bwd_convert_dq_kernel<Elem, D><<<static_cast<unsigned>((pairs + kBlock - 1) / kBlock), kBlock, 0, stream>>>(p);
    }
  });
}

}  // namespace sft::kernels
