// kernels/cpu/dropout_linear_cpu.h: the CPU twin of the dropout-mask pass (kernels/dropout_linear_params.h):
// at::parallel_for over rows; within a task, Philox draws for a chunk of element groups go to a small
// buffer and the mask is applied in a loop the compiler vectorises. Same draws as the CUDA kernel, so the
// two give the same mask bit for bit. Also used for fp64 (x_dtype / compute_dtype are then ignored).
#pragma once
#include "kernels/dropout_linear_params.h"

namespace sft::kernels::cpu {

// p.x / p.grad of the C++ types X (input side) and C (compute side): float, double, c10::BFloat16, c10::Half.
template <typename X, typename C>
void dropout_mask(const DropoutMaskParams& p);

}  // namespace sft::kernels::cpu
