// kernels/nf4.cu: NF4 dequantisation on CUDA (layout and arithmetic: kernels/nf4_params.h). A grid-stride
// loop over the packed bytes of the requested range: each thread reads one byte, its block's absmax (from
// the double-quantised constants when there are any) and writes two elements. The 16 codes sit in
// constant memory (initialised at load). fp32 products rounded once to the output dtype, with explicit round-to-nearest
// intrinsics so nvcc cannot fuse them into an FMA: the result equals bitsandbytes' and the CPU twin's.
#include "kernels/fused_ops_common.cuh"
#include "kernels/nf4_params.h"

namespace sft::kernels {
namespace {

constexpr int kThreads = 256;
// Statically initialised from the host table (no copy per launch).
__constant__ float kNf4CodeDevice[16] = {kNf4Code[0],  kNf4Code[1],  kNf4Code[2],  kNf4Code[3],
                                         kNf4Code[4],  kNf4Code[5],  kNf4Code[6],  kNf4Code[7],
                                         kNf4Code[8],  kNf4Code[9],  kNf4Code[10], kNf4Code[11],
                                         kNf4Code[12], kNf4Code[13], kNf4Code[14], kNf4Code[15]};

__device__ __forceinline__ float block_absmax(const Nf4DequantParams& p, int64_t block) {
  if (p.absmax) return p.absmax[block];
  const float scaled = __fmul_rn(p.nested_code[p.absmax_codes[block]], p.nested_absmax[block / kNf4NestedBlockSize]);
  return __fadd_rn(scaled, p.nested_offset);
}

template <typename Elem>
__global__ void nf4_dequant_kernel(Nf4DequantParams p) {
  Elem* out = static_cast<Elem*>(p.out);
  const int64_t first_byte = p.begin / 2;
  const int64_t bytes = (p.count + 1) / 2;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < bytes;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t element = 2 * (first_byte + i);  // both nibbles lie in one block (blocksize is even)
    const float scale = block_absmax(p, element / p.blocksize);
    const unsigned b = p.codes[first_byte + i];
    out[2 * i] = dev::from_f32<Elem>(__fmul_rn(kNf4CodeDevice[b >> 4], scale));
    if (2 * i + 1 < p.count) out[2 * i + 1] = dev::from_f32<Elem>(__fmul_rn(kNf4CodeDevice[b & 15u], scale));
  }
}

}  // namespace

int nf4_dequantize_cuda(const Nf4DequantParams& p, cudaStream_t stream) {
  if (p.count <= 0) return 0;
  const int64_t bytes = (p.count + 1) / 2;
  const int64_t blocks = (bytes + kThreads - 1) / kThreads;
  const int grid = static_cast<int>(blocks < 65535 * 8 ? blocks : 65535 * 8);
  SFT_DISPATCH_OP_DTYPE(p.dtype, nf4_dequant_kernel<Elem><<<grid, kThreads, 0, stream>>>(p));
  return static_cast<int>(cudaGetLastError());
}

}  // namespace sft::kernels
