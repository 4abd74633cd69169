// kernels/swiglu.cu: SwiGLU silu(gate) * up forward and backward on CUDA, grid-stride elementwise loops
// in fp32 arithmetic. Backward recomputes sigmoid(gate) rather than storing silu(gate).
#include "kernels/fused_ops_common.cuh"

namespace sft::kernels {
namespace {

constexpr int kThreads = 256;

template <typename Elem>
__global__ void swiglu_fwd_kernel(SwigluFwdParams p) {
  const Elem* gate = static_cast<const Elem*>(p.gate);
  const Elem* up = static_cast<const Elem*>(p.up);
  Elem* out = static_cast<Elem*>(p.out);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = dev::to_f32(gate[i]);
    out[i] = dev::from_f32<Elem>(g / (1.f + expf(-g)) * dev::to_f32(up[i]));
  }
}

template <typename Elem>
__global__ void swiglu_bwd_kernel(SwigluBwdParams p) {
  const Elem* dout = static_cast<const Elem*>(p.dout);
  const Elem* gate = static_cast<const Elem*>(p.gate);
  const Elem* up = static_cast<const Elem*>(p.up);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = dev::to_f32(gate[i]), u = dev::to_f32(up[i]), d = dev::to_f32(dout[i]);
    const float sig = 1.f / (1.f + expf(-g));
    static_cast<Elem*>(p.dup)[i] = dev::from_f32<Elem>(d * g * sig);
    static_cast<Elem*>(p.dgate)[i] = dev::from_f32<Elem>(d * u * sig * (1.f + g * (1.f - sig)));
  }
}

int grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65535 * 8 ? blocks : 65535 * 8);
}

}  // namespace

int swiglu_forward_cuda(const SwigluFwdParams& p, cudaStream_t stream) {
  if (p.n == 0) return 0;
  SFT_DISPATCH_OP_DTYPE(p.dtype, swiglu_fwd_kernel<Elem><<<grid_for(p.n), kThreads, 0, stream>>>(p));
  return static_cast<int>(cudaGetLastError());
}

int swiglu_backward_cuda(const SwigluBwdParams& p, cudaStream_t stream) {
  if (p.n == 0) return 0;
  SFT_DISPATCH_OP_DTYPE(p.dtype, swiglu_bwd_kernel<Elem><<<grid_for(p.n), kThreads, 0, stream>>>(p));
  return static_cast<int>(cudaGetLastError());
}

}  // namespace sft::kernels
