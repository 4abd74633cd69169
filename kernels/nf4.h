// kernels/nf4.h: the binding layer of NF4 (QLoRA's 4-bit NormalFloat) weights: the tensors of one
// quantised [rows, cols] weight, dequantisation (CUDA kernel kernels/nf4.cu on CUDA tensors, the CPU twin
// kernels/cpu/nf4_cpu.cpp on CPU tensors), and y = x W^T through an autograd function that dequantises
// W one row tile at a time in forward and again in backward, so no dense copy of W outlives the call.
// Quantisation itself (float -> NF4) is model/quantize.h.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

namespace sft::kernels {

// One NF4 weight in bitsandbytes' layout (kernels/nf4_params.h), on one device.
struct Nf4Tensors {
  at::Tensor codes;          // uint8 [ceil(rows * cols / 2), 1] (bitsandbytes' Params4bit shape)
  at::Tensor absmax;         // fp32 [blocks]; with double quantisation uint8 [blocks] (codes into nested_code)
  at::Tensor nested_absmax;  // double quantisation: fp32 [ceil(blocks / 256)]; else undefined
  at::Tensor nested_code;    // double quantisation: fp32 [256], bitsandbytes' signed dynamic map; else undefined
  float nested_offset = 0.f; // double quantisation: the mean subtracted before quantising absmax
  int64_t rows = 0, cols = 0;
  int64_t blocksize = 64;
  // Optional, CPU only: uint8 bytes that nf4_linear dequantises its row tiles into, reused by every call
  // instead of a tile allocated and freed per call (which glibc's dynamic mmap threshold turns into a
  // growing heap: README "QLoRA"). model/quantize.cpp gives every NF4 projection of a model the same
  // one, of nf4_workspace_bytes over them; calls sharing one must not run concurrently (a model's
  // forward and backward do not). Not part of the weight: storage_bytes leaves it out.
  at::Tensor workspace;
  bool double_quant() const { return nested_absmax.defined(); }
  int64_t numel() const { return rows * cols; }
  int64_t storage_bytes() const;  // bytes of the tensors above but the workspace
};

// Rows [row_begin, row_begin + row_count) of the dense weight in `dtype` (float, bfloat16, float16):
// [row_count, cols]. row_count < 0: to the last row. row_begin * cols must be even.
at::Tensor nf4_dequantize(const Nf4Tensors& w, at::ScalarType dtype, int64_t row_begin = 0, int64_t row_count = -1);

// x: [..., cols] -> x W^T: [..., rows] (autograd: gradient for x only; W is frozen). Row tiles of at
// most tile_elements dense elements are dequantised, used and freed one after another.
inline constexpr int64_t kNf4TileElements = int64_t{1} << 23;  // 8 Mi elements: 32 MiB in fp32
at::Tensor nf4_linear(const at::Tensor& x, const Nf4Tensors& w, int64_t tile_elements = kNf4TileElements);
// Bytes of nf4_linear's largest row tile of `w` in fp32 (the widest output dtype): a workspace this
// large serves every call on it.
int64_t nf4_workspace_bytes(const Nf4Tensors& w, int64_t tile_elements = kNf4TileElements);


}  // namespace sft::kernels
