// kernels/rope.cu: rotary embedding of q and k in one launch on CUDA. One thread per (token, head, pair
// j < head_dim/2); q heads come first in the flat index, then k heads. Forward:
//   o1 = x1 c1 - x2 s1,  o2 = x2 c2 + x1 s2   (x1 = x[j], x2 = x[j + half], c/s the tables' row t)
// Backward (the transpose): dx1 = g1 c1 + g2 s2,  dx2 = g2 c2 - g1 s1.
#include "kernels/fused_ops_common.cuh"

namespace sft::kernels {
namespace {

constexpr int kThreads = 256;

template <typename Elem>
__global__ void rope_kernel(RopeParams p) {
  const int half = p.head_dim / 2;
  const int heads = p.q_heads + p.k_heads;
  const int64_t total = p.tokens * heads * half;
  const Elem* cos = static_cast<const Elem*>(p.cos);
  const Elem* sin = static_cast<const Elem*>(p.sin);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int j = static_cast<int>(i % half);
    const int64_t th = i / half;
    const int h = static_cast<int>(th % heads);
    const int64_t t = th / heads;
    const bool is_q = h < p.q_heads;
    const int hh = is_q ? h : h - p.q_heads;
    const int nh = is_q ? p.q_heads : p.k_heads;
    const Elem* in = static_cast<const Elem*>(is_q ? p.q : p.k) + (t * nh + hh) * p.head_dim;
    Elem* out = static_cast<Elem*>(is_q ? p.q_out : p.k_out) + (t * nh + hh) * p.head_dim;
    const float x1 = dev::to_f32(in[j]), x2 = dev::to_f32(in[j + half]);
    const float c1 = dev::to_f32(cos[t * p.head_dim + j]), c2 = dev::to_f32(cos[t * p.head_dim + j + half]);
    const float s1 = dev::to_f32(sin[t * p.head_dim + j]), s2 = dev::to_f32(sin[t * p.head_dim + j + half]);
    if (!p.backward) {
      out[j] = dev::from_f32<Elem>(x1 * c1 - x2 * s1);
      out[j + half] = dev::from_f32<Elem>(x2 * c2 + x1 * s2);
    } else {
      out[j] = dev::from_f32<Elem>(x1 * c1 + x2 * s2);
      out[j + half] = dev::from_f32<Elem>(x2 * c2 - x1 * s1);
    }
  }
}

}  // namespace

int rope_cuda(const RopeParams& p, cudaStream_t stream) {
  const int64_t total = p.tokens * (p.q_heads + p.k_heads) * (p.head_dim / 2);
  if (total == 0) return 0;
  const int64_t blocks64 = (total + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(blocks64 < 65535 * 8 ? blocks64 : 65535 * 8);
  SFT_DISPATCH_OP_DTYPE(p.dtype, rope_kernel<Elem><<<blocks, kThreads, 0, stream>>>(p));
  return static_cast<int>(cudaGetLastError());
}

}  // namespace sft::kernels
