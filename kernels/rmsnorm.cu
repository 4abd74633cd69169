// kernels/rmsnorm.cu: RMSNorm forward and backward on CUDA, one block per row, fp32 statistics.
// Backward writes dx and a per-block partial of dweight ([blocks, cols] fp32, each block owning one row of
// it, so no atomics and a deterministic sum), then a second kernel sums the partials over blocks.
#include "kernels/fused_ops_common.cuh"

namespace sft::kernels {
namespace {

constexpr int kThreads = 256;

template <typename Elem>
__global__ void rmsnorm_fwd_kernel(RmsNormFwdParams p) {
  __shared__ float scratch[32];
  const Elem* x = static_cast<const Elem*>(p.x);
  const Elem* w = static_cast<const Elem*>(p.weight);
  Elem* y = static_cast<Elem*>(p.y);
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const Elem* xr = x + row * p.cols;
    float ss = 0.f;
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) {
      const float v = dev::to_f32(xr[c]);
      ss += v * v;
    }
    ss = dev::block_sum(ss, scratch);
    const float rstd = rsqrtf(ss / static_cast<float>(p.cols) + p.eps);
    if (threadIdx.x == 0) p.rstd[row] = rstd;
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) {
      // transformers' order: the normalised value is cast to the input dtype before the scale
      const Elem normed = dev::from_f32<Elem>(dev::to_f32(xr[c]) * rstd);
      y[row * p.cols + c] = dev::from_f32<Elem>(dev::to_f32(w[c]) * dev::to_f32(normed));
    }
  }
}

template <typename Elem>
__global__ void rmsnorm_bwd_kernel(RmsNormBwdParams p) {
  __shared__ float scratch[32];
  const Elem* dy = static_cast<const Elem*>(p.dy);
  const Elem* x = static_cast<const Elem*>(p.x);
  const Elem* w = static_cast<const Elem*>(p.weight);
  Elem* dx = static_cast<Elem*>(p.dx);
  float* partial = p.dweight_partial + static_cast<int64_t>(blockIdx.x) * p.cols;
  for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) partial[c] = 0.f;
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const int64_t base = row * p.cols;
    const float rstd = p.rstd[row];
    float dot = 0.f;  // sum(w * dy * xhat)
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) {
      const float xhat = dev::to_f32(x[base + c]) * rstd;
      const float g = dev::to_f32(dy[base + c]);
      dot += dev::to_f32(w[c]) * g * xhat;
      partial[c] += g * xhat;  // this thread owns column c of this block's partial row
    }
    dot = dev::block_sum(dot, scratch) / static_cast<float>(p.cols);
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) {
      const float xhat = dev::to_f32(x[base + c]) * rstd;
      const float wg = dev::to_f32(w[c]) * dev::to_f32(dy[base + c]);
      dx[base + c] = dev::from_f32<Elem>(rstd * (wg - xhat * dot));
    }
  }
}

template <typename Elem>
__global__ void rmsnorm_dweight_kernel(RmsNormBwdParams p) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= p.cols) return;
  float sum = 0.f;
  for (int b = 0; b < p.partial_blocks; ++b) sum += p.dweight_partial[static_cast<int64_t>(b) * p.cols + c];
  static_cast<Elem*>(p.dweight)[c] = dev::from_f32<Elem>(sum);
}

}  // namespace

int rmsnorm_forward_cuda(const RmsNormFwdParams& p, cudaStream_t stream) {
  if (p.rows == 0) return 0;
  const int blocks = static_cast<int>(p.rows < 65535 ? p.rows : 65535);
  SFT_DISPATCH_OP_DTYPE(p.dtype, rmsnorm_fwd_kernel<Elem><<<blocks, kThreads, 0, stream>>>(p));
  return static_cast<int>(cudaGetLastError());
}

int rmsnorm_backward_cuda(const RmsNormBwdParams& p, cudaStream_t stream) {
  if (p.rows == 0) return 0;
  SFT_DISPATCH_OP_DTYPE(p.dtype, rmsnorm_bwd_kernel<Elem><<<p.partial_blocks, kThreads, 0, stream>>>(p));
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return static_cast<int>(e);
  if (p.dweight != nullptr) {
    const int blocks = static_cast<int>((p.cols + kThreads - 1) / kThreads);
    SFT_DISPATCH_OP_DTYPE(p.dtype, rmsnorm_dweight_kernel<Elem><<<blocks, kThreads, 0, stream>>>(p));
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace sft::kernels
