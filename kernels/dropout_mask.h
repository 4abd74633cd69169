// kernels/dropout_mask.h: the dropout mask of kernels/dropout_linear_params.h as one __host__ __device__
// function, shared by the CUDA kernel and the CPU twin: four 32-bit draws of LibTorch's own Philox4x32-10
// engine (at::Philox4_32, the generator curand and ATen's fused CUDA dropout use) per group of four
// consecutive elements, keyed by (seed, group index, offset). Counter-based: any element's draw is
// recomputed from its index alone, so backward regenerates the forward's mask and nothing is stored.
#pragma once
#include <c10/util/Exception.h>  // AT_ASSERT, which PhiloxRNGEngine.h uses without including it

#include <ATen/core/PhiloxRNGEngine.h>

#include <cstdint>

namespace sft::kernels {

// The 32-bit draws of elements 4 * group .. 4 * group + 3.
C10_HOST_DEVICE inline void dropout_draws(uint64_t seed, uint64_t offset, uint64_t group, uint32_t draws[4]) {
  at::Philox4_32 engine(seed, /*subsequence=*/group, offset);
  draws[0] = engine();
  draws[1] = engine();
  draws[2] = engine();
  draws[3] = engine();
}

}  // namespace sft::kernels
