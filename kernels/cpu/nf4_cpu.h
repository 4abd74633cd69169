// kernels/cpu/nf4_cpu.h: the CPU twin of NF4 dequantisation (kernels/nf4_params.h describes the layout):
// per block one fp32 scale, a 16-entry table of code * scale, then a table lookup per nibble, in loops the
// compiler vectorises; at::parallel_for over blocks. Same fp32 arithmetic as bitsandbytes and the CUDA
// kernel, so the three agree bit for bit.
#pragma once
#include "kernels/nf4_params.h"

namespace sft::kernels::cpu {

void nf4_dequantize(const Nf4DequantParams& p);  // p.dtype: Float32, BFloat16 or Float16

}  // namespace sft::kernels::cpu
