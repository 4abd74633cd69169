// kernels/nf4_params.h: the torch-free launcher layer of NF4 (4-bit NormalFloat) dequantisation: the
// paper's 16-value code table, the bitsandbytes storage layout, one plain parameter struct and the CUDA
// launcher declaration (kernels/nf4.cu); the CPU twin is kernels/cpu/nf4_cpu.h. Includes neither torch nor
// the CUDA runtime. Layout (bitsandbytes quantize_4bit, quant_type "nf4"): the weight is flattened
// row-major; element e belongs to block e / blocksize; byte i holds element 2i in its high nibble and
// element 2i + 1 in its low nibble. value(e) = kNf4Code[nibble(e)] * absmax(block(e)), in fp32, rounded
// once to the output dtype. With double quantisation (bitsandbytes compress_statistics) the per-block
// absmax is itself stored as 8-bit codes into a 256-value table in blocks of 256, plus one fp32 offset:
// absmax(b) = (nested_code[absmax_codes[b]] * nested_absmax[b / 256]) + nested_offset, each op in fp32.
#pragma once
#include <cstdint>

#include "kernels/fused_ops_params.h"  // OpDtype

namespace sft::kernels {

// QLoRA paper (Dettmers et al. 2023), Appendix E, as bitsandbytes ships it (fp32 values, ascending).
inline constexpr float kNf4Code[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
    -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
    0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
    0.7229568362236023f, 1.0f};
inline constexpr int64_t kNf4BlockSize = 64;          // QLoRA's block size (bitsandbytes default)
inline constexpr int64_t kNf4NestedBlockSize = 256;   // double quantisation's block size

// Dequantise elements [begin, begin + count) of one NF4 tensor into out[0 .. count) (a row tile of a
// weight is begin = row0 * cols, count = rows * cols). begin must be even (a byte boundary).
struct Nf4DequantParams {
  const uint8_t* codes = nullptr;         // [ceil(n / 2)] packed nibbles
  const float* absmax = nullptr;          // [blocks] fp32; null with double quantisation
  const uint8_t* absmax_codes = nullptr;  // double quantisation: [blocks] 8-bit codes into nested_code
  const float* nested_code = nullptr;     // [256] bitsandbytes' signed dynamic map
  const float* nested_absmax = nullptr;   // [ceil(blocks / 256)] fp32
  float nested_offset = 0.f;              // mean of the absmax values before their quantisation
  int64_t begin = 0, count = 0;
  int64_t blocksize = kNf4BlockSize;      // even
  void* out = nullptr;                    // [count] in dtype
  OpDtype dtype = OpDtype::Float32;
};

// CUDA launcher (defined only when the build has CUDA); returns cudaGetLastError() (0 = success).
int nf4_dequantize_cuda(const Nf4DequantParams& p, cudaStream_t stream);

}  // namespace sft::kernels
