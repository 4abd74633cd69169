// kernels/dropout_linear.cu: the dropout-mask pass of the fused dropout + linear on CUDA (the math and
// layout: kernels/dropout_linear_params.h). As ATen's fused CUDA dropout does, each thread owns groups of
// four consecutive elements (grid-stride), computes their four Philox draws once (kernels/dropout_mask.h)
// and applies the mask to x and/or to the gradient in fp32, rounding once to the output type. The GEMMs
// around it are cuBLAS through at::mm in the binding (kernels/dropout_linear.cpp).
#include "kernels/dropout_linear_params.h"
#include "kernels/dropout_mask.h"
#include "kernels/fused_ops_common.cuh"

namespace sft::kernels {
namespace {

constexpr int kThreads = 256;

template <typename X, typename C>
__global__ void dropout_mask_kernel(DropoutMaskParams p) {
  const int64_t n = p.rows * p.cols;
  const int64_t groups = (n + 3) / 4;
  const X* x = static_cast<const X*>(p.x);
  C* x_dropped = static_cast<C*>(p.x_dropped);
  const C* grad = static_cast<const C*>(p.grad);
  X* grad_dropped = static_cast<X*>(p.grad_dropped);
  const float scale = static_cast<float>(p.scale);
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint32_t draws[4];
    dropout_draws(p.seed, p.offset, static_cast<uint64_t>(g), draws);
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) {
      const int64_t e = 4 * g + lane;
      if (e >= n) break;
      const float m = static_cast<uint64_t>(draws[lane]) < p.keep_below ? scale : 0.f;
      if (x) x_dropped[e] = dev::from_f32<C>(dev::to_f32(x[e]) * m);
      if (grad) grad_dropped[e] = dev::from_f32<X>(dev::to_f32(grad[e]) * m);
    }
  }
}

template <typename X>
void launch_for_x(const DropoutMaskParams& p, int grid, cudaStream_t stream) {
  SFT_DISPATCH_OP_DTYPE(p.compute_dtype, dropout_mask_kernel<X, Elem><<<grid, kThreads, 0, stream>>>(p));
}

}  // namespace

int dropout_mask_cuda(const DropoutMaskParams& p, cudaStream_t stream) {
  const int64_t n = p.rows * p.cols;
  if (n <= 0) return 0;
  const int64_t blocks = ((n + 3) / 4 + kThreads - 1) / kThreads;
  const int grid = static_cast<int>(blocks < 65535 * 8 ? blocks : 65535 * 8);
  SFT_DISPATCH_OP_DTYPE(p.x_dtype, launch_for_x<Elem>(p, grid, stream));
  return static_cast<int>(cudaGetLastError());
}

}  // namespace sft::kernels
