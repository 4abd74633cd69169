// kernels/nf4.cpp: the binding layer of NF4 weights (kernels/nf4.h): one checker of the quantised
// tensors, allocation with at::empty, the CUDA launcher on the current stream (error-checked) or the CPU
// twin, and the autograd function of x W^T that dequantises W per row tile in forward and backward.
#include "kernels/nf4.h"

#include <torch/autograd.h>

#include <algorithm>
#include <vector>

#include "kernels/cpu/nf4_cpu.h"
#include "kernels/cuda_plugin.h"
#include "kernels/nf4_params.h"


namespace sft::kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void check_nf4(const Nf4Tensors& w) {
  TORCH_CHECK(w.rows > 0 && w.cols > 0, "nf4: bad shape [", w.rows, ", ", w.cols, "]");
  TORCH_CHECK(w.blocksize > 0 && w.blocksize % 2 == 0, "nf4: blocksize ", w.blocksize, " must be even and > 0");
  const int64_t blocks = (w.numel() + w.blocksize - 1) / w.blocksize;
  TORCH_CHECK(w.codes.defined() && w.codes.scalar_type() == at::kByte && w.codes.is_contiguous() &&
                  w.codes.numel() == (w.numel() + 1) / 2,
              "nf4: codes must be contiguous uint8 with ", (w.numel() + 1) / 2, " bytes");
  TORCH_CHECK(w.codes.is_cpu() || w.codes.is_cuda(), "nf4: codes on unsupported device ", w.codes.device());
  TORCH_CHECK(w.absmax.defined() && w.absmax.is_contiguous() && w.absmax.numel() == blocks &&
                  w.absmax.device() == w.codes.device(),
              "nf4: absmax must be contiguous with ", blocks, " values on ", w.codes.device());
  if (w.double_quant()) {
    TORCH_CHECK(w.absmax.scalar_type() == at::kByte, "nf4: double-quantised absmax must be uint8");
    TORCH_CHECK(w.nested_absmax.scalar_type() == at::kFloat && w.nested_absmax.is_contiguous() &&
                    w.nested_absmax.numel() == (blocks + kNf4NestedBlockSize - 1) / kNf4NestedBlockSize &&
                    w.nested_absmax.device() == w.codes.device(),
                "nf4: nested_absmax must be contiguous fp32 [ceil(blocks / 256)] on ", w.codes.device());
    TORCH_CHECK(w.nested_code.defined() && w.nested_code.scalar_type() == at::kFloat &&
                    w.nested_code.is_contiguous() && w.nested_code.numel() == 256 &&
                    w.nested_code.device() == w.codes.device(),
                "nf4: nested_code must be contiguous fp32 [256] on ", w.codes.device());
  } else {
    TORCH_CHECK(w.absmax.scalar_type() == at::kFloat, "nf4: absmax must be fp32");
  }
}

// Rows per tile of nf4_linear: at most tile_elements dense elements, even when cols is odd so every
// tile starts on a byte boundary.
int64_t tile_rows_of(const Nf4Tensors& w, int64_t tile_elements) {
  int64_t tile_rows = std::max<int64_t>(1, std::min(w.rows, tile_elements / w.cols));
  if (w.cols % 2) tile_rows += tile_rows % 2;
  return std::min(tile_rows, w.rows);
}

// Rows [row_begin, row_begin + out.size(0)) of W into `out` (contiguous, on the codes' device).
void dequantize_rows_into(const Nf4Tensors& w, const at::Tensor& out, int64_t row_begin) {
  Nf4DequantParams p;
  p.codes = w.codes.data_ptr<uint8_t>();
  if (w.double_quant()) {
    p.absmax_codes = w.absmax.data_ptr<uint8_t>();
    p.nested_absmax = w.nested_absmax.data_ptr<float>();
    p.nested_code = w.nested_code.data_ptr<float>();
    p.nested_offset = w.nested_offset;
  } else {
    p.absmax = w.absmax.data_ptr<float>();
  }
  p.begin = row_begin * w.cols;
  p.count = out.size(0) * w.cols;
  p.blocksize = w.blocksize;
  p.out = out.data_ptr();
  p.dtype = cuda_op_dtype(out.scalar_type(), "nf4");
  if (w.codes.is_cuda()) {
    launch_cuda(&CudaPlugin::nf4_dequantize, p, "nf4 dequantize");
  } else {
    cpu::nf4_dequantize(p);
  }
}

// One tile for a matmul, used before the next is made: in w.workspace when it is there (CPU) and large
// enough, else a new tensor.
at::Tensor matmul_tile(const Nf4Tensors& w, at::ScalarType dtype, int64_t row_begin, int64_t row_count) {
  const int64_t bytes = row_count * w.cols * static_cast<int64_t>(c10::elementSize(dtype));
  if (!w.workspace.defined() || !w.codes.is_cpu() || !w.workspace.is_cpu() || w.workspace.numel() < bytes) {
    return nf4_dequantize(w, dtype, row_begin, row_count);
  }
  at::Tensor tile = w.workspace.narrow(0, 0, bytes).view(dtype).view({row_count, w.cols});
  dequantize_rows_into(w, tile, row_begin);
  return tile;
}

// Autograd: forward(x) = x W^T by row tiles; backward: dx = dy W by the same tiles. Nothing but the
// quantised tensors (and the workspace the tiles go to) is kept for backward.
class Nf4LinearFunction : public torch::autograd::Function<Nf4LinearFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const Nf4Tensors& w, int64_t tile_rows) {
    std::vector<at::Tensor> parts;
    for (int64_t r0 = 0; r0 < w.rows; r0 += tile_rows) {
      const int64_t n = std::min(tile_rows, w.rows - r0);
      parts.push_back(at::linear(x, matmul_tile(w, x.scalar_type(), r0, n)));  // [..., n]
    }
    ctx->saved_data["codes"] = w.codes;
    ctx->saved_data["absmax"] = w.absmax;
    ctx->saved_data["double_quant"] = w.double_quant();
    if (w.double_quant()) {
      ctx->saved_data["nested_absmax"] = w.nested_absmax;
      ctx->saved_data["nested_code"] = w.nested_code;
    }
    ctx->saved_data["workspace"] = w.workspace;
    ctx->saved_data["nested_offset"] = static_cast<double>(w.nested_offset);
    ctx->saved_data["rows"] = w.rows;
    ctx->saved_data["cols"] = w.cols;
    ctx->saved_data["blocksize"] = w.blocksize;
    ctx->saved_data["tile_rows"] = tile_rows;
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    return parts.size() == 1 ? parts[0] : at::cat(parts, -1);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    Nf4Tensors w;
    w.codes = ctx->saved_data["codes"].toTensor();
    w.absmax = ctx->saved_data["absmax"].toTensor();
    if (ctx->saved_data["double_quant"].toBool()) {
      w.nested_absmax = ctx->saved_data["nested_absmax"].toTensor();
      w.nested_code = ctx->saved_data["nested_code"].toTensor();
    }
    w.workspace = ctx->saved_data["workspace"].toTensor();
    w.nested_offset = static_cast<float>(ctx->saved_data["nested_offset"].toDouble());
    w.rows = ctx->saved_data["rows"].toInt();
    w.cols = ctx->saved_data["cols"].toInt();
    w.blocksize = ctx->saved_data["blocksize"].toInt();
    const int64_t tile_rows = ctx->saved_data["tile_rows"].toInt();
    const auto x_dtype = static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt());
    const at::Tensor& dy = grads[0];  // [..., rows]
    // One tile: dy W exactly as a dense matmul. Several: the partial products are summed in fp32, so a
    // bf16 gradient is rounded once, not once per tile.
    at::Tensor dx;
    for (int64_t r0 = 0; r0 < w.rows; r0 += tile_rows) {
      const int64_t n = std::min(tile_rows, w.rows - r0);
      at::Tensor part = at::matmul(dy.narrow(-1, r0, n), matmul_tile(w, dy.scalar_type(), r0, n));  // [..., cols]
      if (!dx.defined()) dx = n == w.rows ? part : part.to(at::kFloat);
      else dx.add_(part);
    }
    return {dx.to(x_dtype), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

int64_t Nf4Tensors::storage_bytes() const {
  int64_t bytes = 0;
  for (const at::Tensor* t : {&codes, &absmax, &nested_absmax, &nested_code}) {
    if (t->defined()) bytes += t->numel() * static_cast<int64_t>(t->element_size());
  }
  return bytes;
}

at::Tensor nf4_dequantize(const Nf4Tensors& w, at::ScalarType dtype, int64_t row_begin, int64_t row_count) {
  check_nf4(w);
  if (row_count < 0) row_count = w.rows - row_begin;
  TORCH_CHECK(row_begin >= 0 && row_count >= 0 && row_begin + row_count <= w.rows, "nf4: rows [", row_begin, ", ",
              row_begin + row_count, ") outside [0, ", w.rows, ")");
  TORCH_CHECK((row_begin * w.cols) % 2 == 0, "nf4: a tile must start on a byte boundary (row ", row_begin,
              " x cols ", w.cols, " is odd)");
  at::Tensor out = at::empty({row_count, w.cols}, w.codes.options().dtype(dtype));
  dequantize_rows_into(w, out, row_begin);
  return out;
}

at::Tensor nf4_linear(const at::Tensor& x, const Nf4Tensors& w, int64_t tile_elements) {
  check_nf4(w);
  TORCH_CHECK(x.size(-1) == w.cols, "nf4 linear: x has ", x.size(-1), " features but the weight has ", w.cols);
  TORCH_CHECK(x.device() == w.codes.device(), "nf4 linear: x on ", x.device(), " but the weight on ",
              w.codes.device());
  return Nf4LinearFunction::apply(x, w, tile_rows_of(w, tile_elements));
}

int64_t nf4_workspace_bytes(const Nf4Tensors& w, int64_t tile_elements) {
  return tile_rows_of(w, tile_elements) * w.cols * static_cast<int64_t>(sizeof(float));
}

}  // namespace sft::kernels
