// kernels/fused_ops_common.cuh: device helpers of the fused elementwise ops: fp32 load/store of the three
// element types (fp32, bf16, fp16), warp and block sum/max reductions, and the dtype switch that turns an
// OpDtype into a kernel template instantiation.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/fused_ops_params.h"

namespace sft::kernels::dev {

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
template <typename Elem>
__device__ __forceinline__ Elem from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }

// Reductions over a warp and over a block; `Op` is SumOp or MaxOp (its identity pads the idle lanes).
struct SumOp {
  static constexpr float kIdentity = 0.f;
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
struct MaxOp {
  static constexpr float kIdentity = -INFINITY;
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
template <typename Op>
__device__ __forceinline__ float warp_reduce(float v, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Block-wide (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` holds 32 floats of shared memory; the trailing barrier lets it be reused at once.
template <typename Op>
__device__ __forceinline__ float block_reduce(float v, float* scratch, Op op) {
  v = warp_reduce(v, op);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : Op::kIdentity;
  v = warp_reduce(v, op);
  __syncthreads();
  return v;
}
__device__ __forceinline__ float block_sum(float v, float* scratch) { return block_reduce(v, scratch, SumOp{}); }
__device__ __forceinline__ float block_max(float v, float* scratch) { return block_reduce(v, scratch, MaxOp{}); }

}  // namespace sft::kernels::dev

// Runs BODY with `Elem` bound to the element type of DTYPE.
#define SFT_DISPATCH_OP_DTYPE(DTYPE, ...)                                        \
  switch (DTYPE) {                                                               \
    case ::sft::kernels::OpDtype::Float32: { using Elem = float; __VA_ARGS__; break; }          \
    case ::sft::kernels::OpDtype::BFloat16: { using Elem = __nv_bfloat16; __VA_ARGS__; break; } \
    case ::sft::kernels::OpDtype::Float16: { using Elem = __half; __VA_ARGS__; break; }         \
  }
