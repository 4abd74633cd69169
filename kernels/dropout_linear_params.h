// kernels/dropout_linear_params.h: the torch-free launcher layer of the fused dropout + linear
// (kernels/dropout_linear.h): the plain parameter struct of the one elementwise pass that applies a
// regenerated dropout mask, and the CUDA launcher declaration (kernels/dropout_linear.cu); the CPU twin is
// kernels/cpu/dropout_linear_cpu.h. Includes neither torch nor the CUDA runtime.
// The mask (kernels/dropout_mask.h): element e of the row-major [rows, cols] input is kept iff the
// (e % 4)-th 32-bit output of Philox4x32-10 with key `seed`, subsequence e / 4 and offset `offset` is
// below keep_below; a kept element is multiplied by `scale` (1 / (1 - p)), a dropped one becomes 0.
#pragma once
#include <cstdint>

#include "kernels/fused_ops_params.h"  // OpDtype, cudaStream_t

namespace sft::kernels {

// One pass over the [rows, cols] elements doing up to two things with the same mask:
//   x_dropped    = x    * mask * scale  (x in x_dtype, x_dropped in compute_dtype)  when x is set;
//   grad_dropped = grad * mask * scale  (grad in compute_dtype, grad_dropped in x_dtype) when grad is set.
// Forward uses the first (the GEMM's input); backward both: the GEMM input again for d weight, and the
// mask applied to dy W for d x. grad_dropped may equal grad (in place) when the dtypes agree.
struct DropoutMaskParams {
  uint64_t seed = 0;        // Philox key (one 64-bit draw of the device's default generator per call)
  uint64_t offset = 0;      // Philox offset in 128-bit blocks (CUDA: the generator's philox offset / 4)
  uint64_t keep_below = 0;  // keep iff draw < keep_below: round((1 - p) * 2^32), in [0, 2^32]
  double scale = 1.0;       // 1 / (1 - p); 0 when p = 1 (the CUDA kernel and fp32 twins use it rounded to float)
  int64_t rows = 0, cols = 0;
  const void* x = nullptr;       // [rows, cols] x_dtype, or null
  void* x_dropped = nullptr;     // [rows, cols] compute_dtype (set iff x is)
  const void* grad = nullptr;    // [rows, cols] compute_dtype, or null
  void* grad_dropped = nullptr;  // [rows, cols] x_dtype (set iff grad is)
  OpDtype x_dtype = OpDtype::Float32, compute_dtype = OpDtype::Float32;
};

// CUDA launcher (defined only when the build has CUDA); returns cudaGetLastError() (0 = success).
int dropout_mask_cuda(const DropoutMaskParams& p, cudaStream_t stream);

}  // namespace sft::kernels
