// tests/test_qlora_nf4.cpp: NF4 quantisation and the NF4 kernels against their references.
// scripts/make_nf4_golden.py wrote, for six weights (odd sizes, a partial last block, an odd element
// count, outliers, exact ties, bf16, a SmolLM2 MLP shape), bitsandbytes' quantize_4bit/dequantize_4bit
// output (plain and double-quantised) and an fp64 reference of the paper's definition. Checked here:
//   - codes and absmax equal bitsandbytes' bit for bit; dequantised weights equal bitsandbytes' bit for bit;
//   - double quantisation: offset, nested absmax and 8-bit absmax codes equal the fp64 nearest-code
//     reference; against bitsandbytes' approximate C search only one-step differences where ours is nearer;
//   - the round trip against the fp64 reference;
//   - row tiles, bf16/fp16 outputs and x W^T (forward and backward, several tiles) against dense ATen;
//   - the CUDA kernel against the CPU twin (Nf4Cuda.*, skipped without a device).
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <map>

#include "kernels/cuda_plugin.h"
#include "kernels/nf4.h"
#include "kernels/ops.h"
#include "kernels/nf4_params.h"
#include "model/quantize.h"
#include "model/safetensors.h"
#include "tests/test_util.h"

namespace sft {
namespace {

const char* const kWeights[] = {"gauss", "odd", "outliers", "ties", "bf16", "mlp"};

std::shared_ptr<model::SafetensorsFile> golden() {
  static auto file = model::SafetensorsFile::open(test::golden_dir() / "nf4" / "nf4.safetensors");
  return file;
}

at::Tensor load(const std::string& name) {
  const model::StTensorInfo* info = golden()->find(name);
  EXPECT_NE(info, nullptr) << name;
  static const std::map<model::StDType, at::ScalarType> types = {
      {model::StDType::F32, at::kFloat}, {model::StDType::BF16, at::kBFloat16}, {model::StDType::F64, at::kDouble},
      {model::StDType::U8, at::kByte}, {model::StDType::I64, at::kLong}};
  return golden()->load(name, types.at(info->dtype));
}

// Unpacked 4-bit codes [n] (int64) of packed bytes.
at::Tensor unpack(const at::Tensor& packed, int64_t n) {
  at::Tensor b = packed.reshape({-1}).to(at::kLong);
  return at::stack({b.bitwise_right_shift(4), b.bitwise_and(15)}, 1).reshape({-1}).narrow(0, 0, n);
}

TEST(Nf4, CodeTableIsThePapers) {
  // QLoRA Appendix E: 8 positive values from the N(0,1) quantiles with 0 exact, 7 negative.
  EXPECT_EQ(kernels::kNf4Code[0], -1.0f);
  EXPECT_EQ(kernels::kNf4Code[7], 0.0f);
  EXPECT_EQ(kernels::kNf4Code[15], 1.0f);
  for (int k = 1; k < 16; ++k) EXPECT_LT(kernels::kNf4Code[k - 1], kernels::kNf4Code[k]);
  EXPECT_FLOAT_EQ(kernels::kNf4Code[1], -0.6961928009986877f);
  EXPECT_FLOAT_EQ(kernels::kNf4Code[14], 0.7229568362236023f);
  // The 8-bit map of double quantisation is bitsandbytes' create_dynamic_map(signed=True).
  EXPECT_TRUE(at::equal(model::nf4_nested_code(), load("gauss.bnb_dq.nested_code")));
}

TEST(Nf4, CodesAbsmaxAndDequantEqualBitsandbytes) {
  for (const char* name : kWeights) {
    SCOPED_TRACE(name);
    const at::Tensor w = load(name);
    const kernels::Nf4Tensors q = model::quantize_nf4(w, /*double_quant=*/false);
    EXPECT_TRUE(at::equal(q.codes, load(std::string(name) + ".bnb.codes")));
    EXPECT_TRUE(at::equal(q.absmax, load(std::string(name) + ".bnb.absmax")));
    const at::Tensor ours = kernels::nf4_dequantize(q, w.scalar_type());
    EXPECT_TRUE(at::equal(ours, load(std::string(name) + ".bnb.dequant")));  // bit for bit
    EXPECT_EQ(ours.sizes(), w.sizes());
  }
}

TEST(Nf4, DoubleQuantisationMatchesFp64ReferenceAndBitsandbytes) {
  const int threads = at::get_num_threads();
  at::set_num_threads(1);  // the offset is one sequential mean, as in the golden script
  for (const char* name : kWeights) {
    SCOPED_TRACE(name);
    const std::string n = name;
    const at::Tensor w = load(n);
    const kernels::Nf4Tensors q = model::quantize_nf4(w, /*double_quant=*/true);
    EXPECT_TRUE(at::equal(q.codes, load(n + ".bnb_dq.codes")));
    EXPECT_EQ(q.nested_offset, load(n + ".bnb_dq.offset").item<float>());
    EXPECT_TRUE(at::equal(q.nested_absmax, load(n + ".bnb_dq.nested_absmax")));
    // fp64 reference of the nested step: offset and nested absmax within fp32 rounding, codes equal.
    EXPECT_NEAR(q.nested_offset, load(n + ".ref_dq.offset").item<double>(), 1e-6 * std::abs(q.nested_offset));
    EXPECT_LE((q.nested_absmax.to(at::kDouble) - load(n + ".ref_dq.nested_absmax")).abs().max().item<double>(),
              1e-6 * q.nested_absmax.abs().max().item<double>());
    EXPECT_TRUE(at::equal(q.absmax.to(at::kLong), load(n + ".ref_dq.absmax_codes")));
    // bitsandbytes' CPU C kernel searches the 256 codes approximately: where it differs, by one step,
    // ours is at least as near to the value. A 256-block whose absmax values are all equal ("ties": every
    // absmax is 1) has nested absmax 0: any code dequantises to the offset there, and bitsandbytes divides
    // by that zero; such blocks are left out of the code comparison (their dequantised values are checked).
    const at::Tensor bnb = load(n + ".bnb_dq.absmax").to(at::kLong), ours = q.absmax.to(at::kLong);
    const at::Tensor live = (q.nested_absmax > 0).repeat_interleave(kernels::kNf4NestedBlockSize).narrow(0, 0, bnb.numel());
    const at::Tensor differ = ((bnb != ours) & live).nonzero().reshape({-1});
    EXPECT_LE(differ.numel(), std::max<int64_t>(1, bnb.numel() / 100)) << "more than 1% differ";
    const at::Tensor code = q.nested_code.to(at::kDouble);
    const at::Tensor absmax = load(n + ".ref.absmax");
    for (int64_t i : std::vector<int64_t>(differ.data_ptr<int64_t>(), differ.data_ptr<int64_t>() + differ.numel())) {
      EXPECT_EQ(std::abs(bnb[i].item<int64_t>() - ours[i].item<int64_t>()), 1) << "absmax code " << i;
      const double scaled = (absmax[i].item<double>() - q.nested_offset) /
                            q.nested_absmax[i / kernels::kNf4NestedBlockSize].item<double>();
      EXPECT_LE(std::abs(scaled - code[ours[i]].item<double>()), std::abs(scaled - code[bnb[i]].item<double>()));
    }
    // Where the absmax codes agree, the dequantised weight equals bitsandbytes' bit for bit.
    const at::Tensor deq = kernels::nf4_dequantize(q, w.scalar_type()).reshape({-1});
    const at::Tensor ref = load(n + ".bnb_dq.dequant").reshape({-1});
    const at::Tensor block_ok = ((bnb == ours) | ~live).repeat_interleave(kernels::kNf4BlockSize).narrow(0, 0, deq.numel());
    EXPECT_TRUE(at::equal(deq.masked_select(block_ok), ref.masked_select(block_ok)));
    // The whole dequantised weight against the fp64 double-quantised reference: fp32 rounding only.
    const at::Tensor ref64 = load(n + ".ref_dq.dequant");
    EXPECT_LE((deq.to(at::kDouble) - ref64).abs().max().item<double>(),
              (w.scalar_type() == at::kBFloat16 ? 4e-3 : 1e-6) * ref64.abs().max().item<double>() + 1e-12);
  }
  at::set_num_threads(threads);
}

TEST(Nf4, RoundTripMatchesFp64Reference) {
  for (const char* name : kWeights) {
    SCOPED_TRACE(name);
    const std::string n = name;
    const at::Tensor w = load(n);
    const kernels::Nf4Tensors q = model::quantize_nf4(w, false);
    const int64_t numel = w.numel();
    const at::Tensor ref_codes = load(n + ".ref.codes"), ref_absmax = load(n + ".ref.absmax");
    const at::Tensor codes = unpack(q.codes, numel);
    // Codes equal the fp64 nearest code except where x / absmax lies within fp32 rounding of a midpoint.
    const at::Tensor differ = (codes != ref_codes).nonzero().reshape({-1});
    EXPECT_LE(differ.numel(), 2);
    const at::Tensor x = w.to(at::kDouble).reshape({-1});
    const at::Tensor block = at::arange(numel, at::kLong).div(kernels::kNf4BlockSize, "floor");
    for (int64_t i : std::vector<int64_t>(differ.data_ptr<int64_t>(), differ.data_ptr<int64_t>() + differ.numel())) {
      const double s = x[i].item<double>() / ref_absmax[block[i]].item<double>();
      const double a = kernels::kNf4Code[codes[i].item<int64_t>()], b = kernels::kNf4Code[ref_codes[i].item<int64_t>()];
      EXPECT_NEAR(std::abs(s - a), std::abs(s - b), 1e-6) << "element " << i << " is no tie";
    }
    EXPECT_LE((q.absmax.to(at::kDouble) - ref_absmax).abs().max().item<double>(), 0.0);  // a max is exact
    // Round-trip error equals the reference's (within fp32 rounding of the products), and is bounded by
    // half the widest code gap times the block's absmax: (1 - 0.6961928) / 2 (between -1 and the next code).
    const at::Tensor deq = kernels::nf4_dequantize(q, at::kFloat).to(at::kDouble).reshape({-1});
    const at::Tensor ref = load(n + ".ref.dequant");
    const at::Tensor agree = codes == ref_codes;
    EXPECT_LE((deq - ref).masked_select(agree).abs().max().item<double>(), 1e-6 * ref_absmax.max().item<double>());
    const at::Tensor err = (deq - x).abs(), ref_err = (ref - x).abs();
    EXPECT_NEAR(err.max().item<double>(), ref_err.max().item<double>(), 1e-6 * ref_absmax.max().item<double>());
    EXPECT_LE((err - 0.1519036 * ref_absmax.index_select(0, block)).max().item<double>(), 1e-7);
  }
}

TEST(Nf4, RowTilesAndOutputDtypesEqualTheWholeDequantisation) {
  const at::Tensor w = load("gauss");  // [96, 200]
  for (bool dq : {false, true}) {
    const kernels::Nf4Tensors q = model::quantize_nf4(w, dq);
    const at::Tensor whole = kernels::nf4_dequantize(q, at::kFloat);
    for (auto [r0, n] : {std::pair<int64_t, int64_t>{0, 1}, {5, 17}, {33, 63}, {95, 1}}) {
      EXPECT_TRUE(at::equal(kernels::nf4_dequantize(q, at::kFloat, r0, n), whole.narrow(0, r0, n)));
    }
    EXPECT_TRUE(at::equal(kernels::nf4_dequantize(q, at::kBFloat16), whole.to(at::kBFloat16)));
    EXPECT_TRUE(at::equal(kernels::nf4_dequantize(q, at::kHalf), whole.to(at::kHalf)));
  }
  const kernels::Nf4Tensors odd = model::quantize_nf4(load("odd"), false);  // [7, 37]: tiles need even rows
  EXPECT_THROW(kernels::nf4_dequantize(odd, at::kFloat, 1, 2), c10::Error);
  EXPECT_TRUE(at::equal(kernels::nf4_dequantize(odd, at::kFloat, 2, 4),
                        kernels::nf4_dequantize(odd, at::kFloat).narrow(0, 2, 4)));
}

TEST(Nf4, BadTensorsAreRefused) {
  kernels::Nf4Tensors q = model::quantize_nf4(load("gauss"), false);
  kernels::Nf4Tensors short_codes = q;
  short_codes.codes = q.codes.narrow(0, 0, 10);
  EXPECT_THROW(kernels::nf4_dequantize(short_codes, at::kFloat), c10::Error);
  kernels::Nf4Tensors wrong_absmax = q;
  wrong_absmax.absmax = q.absmax.to(at::kDouble);
  EXPECT_THROW(kernels::nf4_dequantize(wrong_absmax, at::kFloat), c10::Error);
  EXPECT_THROW(kernels::nf4_dequantize(q, at::kLong), c10::Error);
  EXPECT_THROW(kernels::nf4_linear(at::randn({3, 199}), q), c10::Error);
}

// x W^T through nf4_linear (several row tiles) equals at::linear with the dequantised weight, forward and
// backward, in fp32 and bf16.
TEST(Nf4, LinearForwardAndBackwardEqualDenseMatmul) {
  const at::Tensor w = load("outliers");  // [64, 320]
  for (bool dq : {false, true}) {
    const kernels::Nf4Tensors q = model::quantize_nf4(w, dq);
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      SCOPED_TRACE(std::string(dq ? "double quant " : "") + c10::toString(dtype));
      const at::Tensor dense = kernels::nf4_dequantize(q, dtype);
      at::Tensor x = at::randn({2, 5, 320}).to(dtype).requires_grad_(true);
      at::Tensor x_ref = x.detach().clone().requires_grad_(true);
      const at::Tensor dy = at::randn({2, 5, 64}).to(dtype);
      for (int64_t tile : {int64_t{320 * 64}, int64_t{320 * 20}, int64_t{1}}) {  // 1, 4 and 64 tiles
        if (x.grad().defined()) x.mutable_grad().zero_();
        at::Tensor y = kernels::nf4_linear(x, q, tile);
        at::Tensor y_ref = at::linear(x_ref, dense);
        const double tol = dtype == at::kFloat ? 1e-5 : 1e-2;
        EXPECT_LE((y - y_ref).abs().max().item<double>(), tol * y_ref.abs().max().item<double>()) << tile;
        y.backward(dy);
        if (!x_ref.grad().defined()) y_ref.backward(dy);
        EXPECT_EQ(x.grad().scalar_type(), dtype);
        EXPECT_LE((x.grad() - x_ref.grad()).abs().max().item<double>(), tol * x_ref.grad().abs().max().item<double>())
            << tile;
      }
    }
  }
}

bool nf4_cuda_ready(std::string& why) {
  why = kernels::cuda_unavailable_reason();
  return why.empty();
}

// The CUDA kernel equals the CPU twin bit for bit (same fp32 products, no FMA), for every dtype, plain and
// double-quantised, whole and tiled; quantisation on the device gives the same codes; x W^T and its
// gradient on the device match the dense matmul. Random weights (no golden data: the GPU bundle has none).
TEST(Nf4Cuda, DequantEqualsCpuTwinAndLinearMatchesDense) {
  std::string why;
  if (!nf4_cuda_ready(why)) GTEST_SKIP() << why;
  const at::Device cuda(at::kCUDA, 0);
  at::manual_seed(14);
  std::vector<at::Tensor> weights = {at::randn({96, 200}) * 0.02, at::randn({7, 37}), at::randn({1536, 576}) * 0.04,
                                     (at::randn({128, 192}) * 0.03).to(at::kBFloat16)};
  weights[0].view({-1}).index_put_({at::randint(0, 96 * 200, {40}, at::kLong)}, 3.0);  // outliers
  for (const at::Tensor& w : weights) {
    SCOPED_TRACE(c10::str(w.sizes()));
    for (bool dq : {false, true}) {
      const kernels::Nf4Tensors cpu = model::quantize_nf4(w, dq);
      const kernels::Nf4Tensors dev = model::quantize_nf4(w.to(cuda), dq);
      EXPECT_TRUE(at::equal(dev.codes.cpu(), cpu.codes));
      if (!dq) {
        EXPECT_TRUE(at::equal(dev.absmax.cpu(), cpu.absmax));
      }
      kernels::Nf4Tensors moved = cpu;  // the CPU quantisation on the device (a CUDA mean may round differently)
      for (at::Tensor* t : {&moved.codes, &moved.absmax, &moved.nested_absmax, &moved.nested_code}) {
        if (t->defined()) *t = t->to(cuda);
      }
      for (at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
        EXPECT_TRUE(at::equal(kernels::nf4_dequantize(moved, dtype).cpu(), kernels::nf4_dequantize(cpu, dtype)));
      }
      const int64_t rows = w.size(0), r0 = rows / 2 - (rows / 2) % 2;
      EXPECT_TRUE(at::equal(kernels::nf4_dequantize(moved, at::kFloat, r0, rows - r0).cpu(),
                            kernels::nf4_dequantize(cpu, at::kFloat, r0, rows - r0)));
    }
  }
  const kernels::Nf4Tensors q = model::quantize_nf4(weights[2].to(cuda), true);  // [1536, 576]
  const at::Tensor dense = kernels::nf4_dequantize(q, at::kBFloat16);
  at::Tensor x = at::randn({64, 576}, at::TensorOptions(cuda).dtype(at::kBFloat16)).requires_grad_(true);
  at::Tensor x_ref = x.detach().clone().requires_grad_(true);
  at::Tensor y = kernels::nf4_linear(x, q, 576 * 512), y_ref = at::linear(x_ref, dense);  // 3 tiles
  EXPECT_LE((y - y_ref).abs().max().item<double>(), 1e-2 * y_ref.abs().max().item<double>());
  const at::Tensor dy = at::randn_like(y);
  y.backward(dy);
  y_ref.backward(dy);
  EXPECT_LE((x.grad() - x_ref.grad()).abs().max().item<double>(), 1e-2 * x_ref.grad().abs().max().item<double>());
}

}  // namespace
}  // namespace sft
