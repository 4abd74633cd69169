// kernels/common.cuh: device building blocks of the attention kernels (sm_80+): the element-type traits
// (bf16/fp16), warp-level tensor-core MMA m16n8k16 with fp32 accumulation, ldmatrix fragment loads, the
// two warp-level GEMM loops (smem x smem^T, registers x smem), cp.async global->shared copies and quad
// reductions. Fragment layouts follow the PTX ISA
// ("Matrix Fragments for mma.m16n8k16"): lane = 4 * g + t, g = lane / 4 (row group), t = lane % 4.
//   A 16x16 (row-major): a0 (row g, cols 2t..2t+1), a1 (row g+8, ...), a2 (row g, cols 2t+8..), a3 (row g+8, cols 2t+8..)
//   B 16x8  (col-major): b0 (rows k 2t..2t+1, col g), b1 (rows k 2t+8..2t+9, col g)
//   C 16x8  (fp32):      c0,c1 (row g, cols 2t..2t+1), c2,c3 (row g+8, cols 2t..2t+1)
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/attention_index.h"

// ---- register budget of the hot kernels (forward, dK/dV, dQ) ----
// Normal builds: __launch_bounds__(kThreads[, 1]), so ptxas may use up to 255 registers.
// scripts/check_cuda_build.py also compiles with -DSFT_ATTN_REGISTER_PROBE=240, which caps every hot
// kernel at 240 registers (__maxnreg__) and fails on any spill: proof of at least 15 registers of
// headroom below the 255 at which an edit or an nvcc update would start spilling.
// SFT_ATTN_HOT_KERNEL gives the thread count only; SFT_ATTN_HOT_KERNEL_ONE_CTA also tells ptxas to plan
// for one resident CTA per SM (more registers; with the default ptxas spilled hd64 of the dQ kernel).
#if defined(SFT_ATTN_REGISTER_PROBE)
#define SFT_ATTN_HOT_KERNEL __maxnreg__(SFT_ATTN_REGISTER_PROBE)
#define SFT_ATTN_HOT_KERNEL_ONE_CTA __maxnreg__(SFT_ATTN_REGISTER_PROBE)
#else
#define SFT_ATTN_HOT_KERNEL __launch_bounds__(::sft::kernels::attn::kThreads)
#define SFT_ATTN_HOT_KERNEL_ONE_CTA __launch_bounds__(::sft::kernels::attn::kThreads, 1)
#endif

namespace sft::kernels::dev {

// ---- element types ----
template <typename Elem>
struct ElemTraits;
template <>
struct ElemTraits<__nv_bfloat16> {
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  __device__ __forceinline__ static float2 unpack(uint32_t bits) {
    __nv_bfloat162 v = *reinterpret_cast<__nv_bfloat162*>(&bits);
    return __bfloat1622float2(v);
  }
  __device__ __forceinline__ static __nv_bfloat16 from_float(float x) { return __float2bfloat16(x); }
  __device__ __forceinline__ static float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
};
template <>
struct ElemTraits<__half> {
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  __device__ __forceinline__ static float2 unpack(uint32_t bits) {
    __half2 v = *reinterpret_cast<__half2*>(&bits);
    return __half22float2(v);
  }
  __device__ __forceinline__ static __half from_float(float x) { return __float2half_rn(x); }
  __device__ __forceinline__ static float to_float(__half x) { return __half2float(x); }
};

// ---- tensor-core MMA: C[16x8] += A[16x16] * B[16x8], fp32 accumulate ----
template <typename Elem>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---- ldmatrix: four 8x8 b16 matrices; lane l supplies the row address of matrix l / 8 ----
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row_ptr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row_ptr)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row_ptr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row_ptr)));
}

// A fragment (16x16 at rows r0.., cols c0.. of a row-major smem tile with row stride ld elements).
template <typename Elem>
__device__ __forceinline__ void load_a_frag(uint32_t (&a)[4], const Elem* tile, int ld, int r0, int c0, int lane) {
  ldmatrix_x4(a, tile + (r0 + (lane & 15)) * ld + c0 + (lane >> 4) * 8);
}
// Two B fragments for X^T where X is a row-major smem tile [n][k] (e.g. K for S = Q K^T): covers
// n rows n0..n0+15 (two n8 tiles) and k cols k0..k0+15. b[0],b[1] -> n-tile n0, b[2],b[3] -> n-tile n0+8.
template <typename Elem>
__device__ __forceinline__ void load_b_frag_nk(uint32_t (&b)[4], const Elem* tile, int ld, int n0, int k0, int lane) {
  ldmatrix_x4(b, tile + (n0 + (lane & 7) + (lane >> 4) * 8) * ld + k0 + ((lane >> 3) & 1) * 8);
}
// Two B fragments for X where X is a row-major smem tile [k][n] (e.g. V for O = P V): k rows k0..k0+15,
// n cols n0..n0+15. b[0],b[1] -> n-tile n0, b[2],b[3] -> n-tile n0+8.
template <typename Elem>
__device__ __forceinline__ void load_b_frag_kn(uint32_t (&b)[4], const Elem* tile, int ld, int k0, int n0, int lane) {
  ldmatrix_x4_trans(b, tile + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + n0 + (lane >> 4) * 8);
}
// A fragment from two fp32 C fragments (n-tiles 2j and 2j+1 of a 16-row accumulator): the register
// re-use that lets P = softmax(S) feed the next MMA without a shared-memory round trip.
template <typename Elem>
__device__ __forceinline__ void c_to_a_frag(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = ElemTraits<Elem>::pack(c0[0], c0[1]);
  a[1] = ElemTraits<Elem>::pack(c0[2], c0[3]);
  a[2] = ElemTraits<Elem>::pack(c1[0], c1[1]);
  a[3] = ElemTraits<Elem>::pack(c1[2], c1[3]);
}

// ---- warp-level GEMMs of one 16-row slab (the loops every attention kernel runs) ----
// acc[16 x 8*NT] += A[16 x K] * B^T: A is rows a_row0..a_row0+15 of a row-major smem tile [.][K] and B a
// row-major smem tile [8*NT][K], both with row stride ld (e.g. S = Q K^T, dP = dO V^T). fp32 accumulate.
template <typename Elem, int K, int NT>
__device__ __forceinline__ void warp_gemm_smem_abt(float (&acc)[NT][4], const Elem* a_tile, int a_row0,
                                                   const Elem* b_tile, int ld, int lane) {
  static_assert(K % 16 == 0 && NT % 2 == 0, "k steps of 16, n tiles in pairs");
#pragma unroll
  for (int ks = 0; ks < K / 16; ++ks) {
    uint32_t a[4];
    load_a_frag(a, a_tile, ld, a_row0, ks * 16, lane);
#pragma unroll
    for (int jp = 0; jp < NT / 2; ++jp) {
      uint32_t b[4];
      load_b_frag_nk(b, b_tile, ld, jp * 16, ks * 16, lane);
      mma_16816<Elem>(acc[2 * jp], a, b[0], b[1]);
      mma_16816<Elem>(acc[2 * jp + 1], a, b[2], b[3]);
    }
  }
}
// acc[16 x 8*NT] += P[16 x 8*KT] * B: P is held in registers as this warp's fp32 C fragments (softmax(S)
// or dS, rounded to Elem per k step by c_to_a_frag, never through shared memory) and B is a row-major smem
// tile [8*KT][8*NT] with row stride ld (e.g. O += P V, dV += P^T dO, dK += dS^T Q, dQ += dS K).
template <typename Elem, int KT, int NT>
__device__ __forceinline__ void warp_gemm_regs_b(float (&acc)[NT][4], const float (&p)[KT][4], const Elem* b_tile,
                                                 int ld, int lane) {
  static_assert(KT % 2 == 0 && NT % 2 == 0, "k steps of 16, n tiles in pairs");
#pragma unroll
  for (int ks = 0; ks < KT / 2; ++ks) {
    uint32_t a[4];
    c_to_a_frag<Elem>(a, p[2 * ks], p[2 * ks + 1]);
#pragma unroll
    for (int jp = 0; jp < NT / 2; ++jp) {
      uint32_t b[4];
      load_b_frag_kn(b, b_tile, ld, ks * 16, jp * 16, lane);
      mma_16816<Elem>(acc[2 * jp], a, b[0], b[1]);
      mma_16816<Elem>(acc[2 * jp + 1], a, b[2], b[3]);
    }
  }
}

// ---- cp.async (16 bytes, zero-filled when !valid; `src` must still be a mapped address) ----
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Copies rows [row0, row0 + ROWS) of a [T, H, D] tensor (one head) into a padded smem tile; rows at or past
// `valid_rows` are zero-filled. All kThreads threads participate; asynchronous until cp_async_wait.
template <typename Elem, int ROWS, int D, int THREADS>
__device__ __forceinline__ void load_tile_async(Elem* tile, const Elem* base, long long row_stride, int row0,
                                                int valid_rows, int tid) {
  constexpr int kChunksPerRow = D / 8;  // 16-byte chunks
  constexpr int kChunks = ROWS * kChunksPerRow;
  constexpr int kLd = D + 8;
  static_assert(kChunks % THREADS == 0, "tile copy must divide evenly over the CTA");
#pragma unroll
  for (int it = 0; it < kChunks / THREADS; ++it) {
    const int i = it * THREADS + tid;
    const int r = i / kChunksPerRow, c = (i % kChunksPerRow) * 8;
    const bool valid = row0 + r < valid_rows;
    const Elem* src = base + (valid ? static_cast<long long>(row0 + r) * row_stride : 0) + c;
    cp_async_16(tile + r * kLd + c, src, valid);
  }
}

// ---- reductions across the 4 lanes of a quad (the lanes sharing one accumulator row) ----
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

constexpr float kLog2e = 1.4426950408889634f;

// Host side: launches an attention kernel with `smem` bytes of dynamic shared memory over the folded grid
// (blocks of `block_rows` rows of every sequence, folded into x) times `grid_y` heads.
template <typename Params>
inline void launch_folded(void (*kernel)(Params), int smem, int block_rows, int grid_y, const Params& p,
                          cudaStream_t stream) {
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  const long long x = attn::folded_grid_x(attn::num_blocks(p.max_seqlen, block_rows), p.num_seqs);
  kernel<<<dim3(static_cast<unsigned>(x), grid_y), attn::kThreads, smem, stream>>>(p);
}

}  // namespace sft::kernels::dev
