// kernels/cpu/nf4_cpu.cpp: NF4 dequantisation on the CPU (see kernels/cpu/nf4_cpu.h). Work is split by
// quantisation block: each block's scale is computed once, the 16 codes are scaled into a table, and the
// block's bytes expand to two table entries each (the compiler turns the loop into gathers / shuffles).
#include "kernels/cpu/nf4_cpu.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>

namespace sft::kernels::cpu {
namespace {

float block_absmax(const Nf4DequantParams& p, int64_t block) {
  if (p.absmax) return p.absmax[block];
  // bitsandbytes: dequantize_blockwise(absmax_codes) then += offset, each in fp32 (no fused multiply-add:
  // this file is compiled with -ffp-contract=off).
  const float scaled = p.nested_code[p.absmax_codes[block]] * p.nested_absmax[block / kNf4NestedBlockSize];
  return scaled + p.nested_offset;
}

template <typename Out>
void dequantize_range(const Nf4DequantParams& p, int64_t first_block, int64_t last_block) {
  Out* out = static_cast<Out*>(p.out);
  const int64_t end = p.begin + p.count;
  for (int64_t block = first_block; block < last_block; ++block) {
    const float scale = block_absmax(p, block);
    float table[16];
    for (int k = 0; k < 16; ++k) table[k] = kNf4Code[k] * scale;
    const int64_t lo = std::max(block * p.blocksize, p.begin), hi = std::min((block + 1) * p.blocksize, end);
    // lo is even (begin and blocksize are); a block ends on a byte boundary except possibly at `end`.
    const int64_t pairs = (hi - lo) / 2;
    const uint8_t* bytes = p.codes + lo / 2;
    Out* dst = out + (lo - p.begin);
#pragma omp simd
    for (int64_t j = 0; j < pairs; ++j) {
      const uint8_t b = bytes[j];
      dst[2 * j] = static_cast<Out>(table[b >> 4]);
      dst[2 * j + 1] = static_cast<Out>(table[b & 15]);
    }
    if ((hi - lo) % 2) dst[2 * pairs] = static_cast<Out>(table[bytes[pairs] >> 4]);
  }
}

template <typename Out>
void dequantize(const Nf4DequantParams& p) {
  if (p.count <= 0) return;
  const int64_t first = p.begin / p.blocksize, last = (p.begin + p.count - 1) / p.blocksize + 1;
  // ~16 blocks (1024 elements) per task at the least, so small weights stay on one thread.
  at::parallel_for(first, last, 16, [&](int64_t b0, int64_t b1) { dequantize_range<Out>(p, b0, b1); });
}

}  // namespace

void nf4_dequantize(const Nf4DequantParams& p) {
  switch (p.dtype) {
    case OpDtype::Float32: return dequantize<float>(p);
    case OpDtype::BFloat16: return dequantize<c10::BFloat16>(p);
    case OpDtype::Float16: return dequantize<c10::Half>(p);
  }
}

}  // namespace sft::kernels::cpu
