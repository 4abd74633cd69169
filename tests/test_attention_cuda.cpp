// tests/test_attention_cuda.cpp: GPU tests of the fused attention kernels. FlashAttention's rule on the
// CPU twin's case matrix: the kernel's max error against the fp64 reference (out, dq, dk, dv) must be at
// most 2x the error of LibTorch's own same-dtype attention. Fresh random inputs every run; outputs are
// poisoned with NaN before each launch (check_fused_against_reference). Plus determinism, the autograd
// path, strided inputs, more than 65,535 sequences, alignment checks, the self-check and auto's race. The TFLOP/s benchmark is `bench_attention --cuda` (scripts/gpu_check.sh).
// Every test skips with a reason when the build has no CUDA kernels or no CUDA device is present.
#include <gtest/gtest.h>
#include <torch/autograd.h>
#include <torch/cuda.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda_plugin.h"
#include "kernels/attention_choice.h"
#include "kernels/fused_attention.h"
#include "kernels/ops.h"
#include "tests/test_util.h"

namespace sft::kernels {
namespace {

// Returns a reason to skip, or "" when the GPU tests can run.
std::string gpu_skip_reason() {
  return cuda_unavailable_reason();
}
#define SKIP_WITHOUT_GPU()                                       \
  do {                                                           \
    const std::string reason = gpu_skip_reason();                \
    if (!reason.empty()) GTEST_SKIP() << reason;                 \
  } while (0)

// fresh_seed, Packed and pack: tests/test_util.h.
using test::fresh_seed;
using test::pack;
using test::Packed;

const at::Device kCuda(at::kCUDA, 0);

at::Tensor randn_on_gpu(at::IntArrayRef sizes, at::ScalarType dtype) {
  return at::randn(sizes, at::kFloat).to(kCuda).to(dtype);
}

// The CPU twin's case matrix (tests/test_attention.cpp) plus long sequences, in bf16 and fp16.
TEST(AttentionCuda, WithinTwiceTorchErrorOverCaseMatrix) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  const std::vector<std::vector<int32_t>> batches{{1, 63, 2, 64, 65, 31, 33, 129, 200}, {2048, 1000, 1}};
  for (at::ScalarType dtype : {at::kBFloat16, at::kHalf}) {
    for (const auto& lens : batches) {
      for (int d : {64, 128}) {
        for (bool causal : {false, true}) {
          for (int group : {1, 2, 4, 8}) {
            for (bool deterministic : {false, true}) {
              const Packed p = pack(lens);
              const int hkv = group == 8 ? 1 : 2, hq = hkv * group;
              const at::Tensor q = randn_on_gpu({p.total, hq, d}, dtype), k = randn_on_gpu({p.total, hkv, d}, dtype),
                               v = randn_on_gpu({p.total, hkv, d}, dtype), dout = randn_on_gpu({p.total, hq, d}, dtype);
              const AttentionCheck r = check_fused_against_reference(q, k, v, dout, p.cu_host, p.max_len,
                                                                     1.0 / std::sqrt(d), causal, deterministic);
              const std::string what = std::string(c10::toString(dtype)) + " tokens " + std::to_string(p.total) +
                                       " d " + std::to_string(d) + " causal " + std::to_string(causal) + " group " +
                                       std::to_string(group) + " deterministic " + std::to_string(deterministic);
              std::printf("[cuda %s] %s\n", what.c_str(), r.describe().c_str());
              EXPECT_TRUE(r.passed) << what << ": " << r.describe() << " seed " << seed;
            }
          }
        }
      }
    }
  }
}

// Deterministic mode is bitwise reproducible; the atomic mode agrees with it to accumulation-order noise.
TEST(AttentionCuda, DeterministicModeIsBitwiseReproducible) {
  SKIP_WITHOUT_GPU();
  fresh_seed();
  const Packed p = pack({700, 300, 1});
  const at::Tensor cu = p.cu_host.to(kCuda);
  const at::Tensor q = randn_on_gpu({p.total, 8, 128}, at::kBFloat16), k = randn_on_gpu({p.total, 2, 128}, at::kBFloat16),
                   v = randn_on_gpu({p.total, 2, 128}, at::kBFloat16), dout = randn_on_gpu({p.total, 8, 128}, at::kBFloat16);
  at::Tensor out = at::empty_like(q), lse = at::empty({8, p.total}, q.options().dtype(at::kFloat));
  fused_attention_forward(q, k, v, cu, p.cu_host, p.max_len, 0.088, true, out, lse);
  auto run = [&](bool deterministic) {
    at::Tensor dq = at::full_like(q, NAN), dk = at::full_like(k, NAN), dv = at::full_like(v, NAN);
    fused_attention_backward(dout, q, k, v, out, lse, cu, p.cu_host, p.max_len, 0.088, true, deterministic, dq, dk, dv);
    return std::vector<at::Tensor>{dq, dk, dv};
  };
  const auto a = run(true), b = run(true), c = run(false);
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(at::equal(a[i], b[i])) << "gradient " << i;
    EXPECT_TRUE(a[i].isfinite().all().item<bool>());
    const double diff = (a[i].to(at::kFloat) - c[i].to(at::kFloat)).abs().max().item<double>();
    const double mag = a[i].to(at::kFloat).abs().max().item<double>();
    EXPECT_LT(diff, 2e-2 * mag) << "gradient " << i;
  }
}

// The autograd path (varlen_attention with Fused) gives the raw kernels' results.
TEST(AttentionCuda, AutogradPathMatchesRawKernels) {
  SKIP_WITHOUT_GPU();
  fresh_seed();
  const Packed p = pack({129, 64});
  const at::Tensor cu = p.cu_host.to(kCuda);
  at::Tensor q = randn_on_gpu({p.total, 4, 64}, at::kBFloat16).requires_grad_(true);
  at::Tensor k = randn_on_gpu({p.total, 2, 64}, at::kBFloat16).requires_grad_(true);
  at::Tensor v = randn_on_gpu({p.total, 2, 64}, at::kBFloat16).requires_grad_(true);
  const at::Tensor dout = randn_on_gpu({p.total, 4, 64}, at::kBFloat16);
  PackedSequences seqs{cu, p.cu_host, p.max_len};
  const at::Tensor out = varlen_attention(q, k, v, seqs, 0.125, true, AttentionImpl::Fused);
  const auto g = torch::autograd::grad({out}, {q, k, v}, {dout});
  at::Tensor out_raw = at::empty_like(q), lse = at::empty({4, p.total}, q.options().dtype(at::kFloat));
  fused_attention_forward(q.detach(), k.detach(), v.detach(), cu, p.cu_host, p.max_len, 0.125, true, out_raw, lse);
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  fused_attention_backward(dout, q.detach(), k.detach(), v.detach(), out_raw, lse, cu, p.cu_host, p.max_len, 0.125,
                           true, /*deterministic=*/true, dq, dk, dv);
  EXPECT_TRUE(at::equal(out, out_raw));
  // Autograd ran the default backward (dkdv<..., atomic_dq>), the raw call the deterministic one
  // (dkdv<..., no_dq>): two template instantiations that ptxas may schedule differently, so dK/dV are
  // compared with a tolerance. Run-to-run bitwise equality of one instantiation is tested below.
  auto rel = [](const at::Tensor& a, const at::Tensor& b) {
    return (a.to(at::kFloat) - b.to(at::kFloat)).abs().max().item<double>() /
           std::max(1e-6, b.to(at::kFloat).abs().max().item<double>());
  };
  EXPECT_LT(rel(g[0], dq), 2e-2);
  EXPECT_LT(rel(g[1], dk), 1e-2);
  EXPECT_LT(rel(g[2], dv), 1e-2);
}

// model.deterministic_attention's resolved impl runs the deterministic kernels: through autograd its
// gradients are bitwise those of the raw deterministic backward, twice in a row.
TEST(AttentionCuda, DeterministicImplIsBitwiseTheRawKernel) {
  SKIP_WITHOUT_GPU();
  fresh_seed();
  const Packed p = pack({300, 129, 64});
  const at::Tensor cu = p.cu_host.to(kCuda);
  PackedSequences seqs{cu, p.cu_host, p.max_len};
  const at::Tensor q = randn_on_gpu({p.total, 8, 64}, at::kBFloat16), k = randn_on_gpu({p.total, 2, 64}, at::kBFloat16),
                   v = randn_on_gpu({p.total, 2, 64}, at::kBFloat16), dout = randn_on_gpu({p.total, 8, 64}, at::kBFloat16);
  at::Tensor out = at::empty_like(q), lse = at::empty({8, p.total}, q.options().dtype(at::kFloat));
  fused_attention_forward(q, k, v, cu, p.cu_host, p.max_len, 0.125, true, out, lse);
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  fused_attention_backward(dout, q, k, v, out, lse, cu, p.cu_host, p.max_len, 0.125, true, true, dq, dk, dv);
  for (int run = 0; run < 2; ++run) {
    at::Tensor qg = q.clone().requires_grad_(true), kg = k.clone().requires_grad_(true), vg = v.clone().requires_grad_(true);
    const at::Tensor o = varlen_attention(qg, kg, vg, seqs, 0.125, true, AttentionImpl::FusedDeterministic);
    const auto g = torch::autograd::grad({o}, {qg, kg, vg}, {dout});
    EXPECT_TRUE(at::equal(o, out)) << run;
    EXPECT_TRUE(at::equal(g[0], dq)) << run;
    EXPECT_TRUE(at::equal(g[1], dk)) << run;
    EXPECT_TRUE(at::equal(g[2], dv)) << run;
  }
}

// One instantiation is bitwise reproducible run to run: dK/dV in both modes (they never use atomics),
// dQ too in deterministic mode.
TEST(AttentionCuda, DkDvAreBitwiseReproducibleInBothModes) {
  SKIP_WITHOUT_GPU();
  fresh_seed();
  const Packed p = pack({300, 129, 1});
  const at::Tensor cu = p.cu_host.to(kCuda);
  for (int d : {64, 128}) {
    const at::Tensor q = randn_on_gpu({p.total, 4, d}, at::kBFloat16), k = randn_on_gpu({p.total, 2, d}, at::kBFloat16),
                     v = randn_on_gpu({p.total, 2, d}, at::kBFloat16), dout = randn_on_gpu({p.total, 4, d}, at::kBFloat16);
    at::Tensor out = at::empty_like(q), lse = at::empty({4, p.total}, q.options().dtype(at::kFloat));
    fused_attention_forward(q, k, v, cu, p.cu_host, p.max_len, 0.1, true, out, lse);
    for (bool deterministic : {false, true}) {
      std::vector<at::Tensor> runs[2];
      for (auto& r : runs) {
        at::Tensor dq = at::full_like(q, NAN), dk = at::full_like(k, NAN), dv = at::full_like(v, NAN);
        fused_attention_backward(dout, q, k, v, out, lse, cu, p.cu_host, p.max_len, 0.1, true, deterministic, dq, dk, dv);
        r = {dq, dk, dv};
      }
      EXPECT_TRUE(at::equal(runs[0][1], runs[1][1])) << "dk, d " << d << " deterministic " << deterministic;
      EXPECT_TRUE(at::equal(runs[0][2], runs[1][2])) << "dv, d " << d << " deterministic " << deterministic;
      if (deterministic) {
        EXPECT_TRUE(at::equal(runs[0][0], runs[1][0])) << "dq, d " << d;
      }
    }
  }
}

// q/k/v with non-contiguous token and head strides (slices of one fused qkv projection, and head-padded
// rows) are read through their strides: the same results as contiguous copies, bitwise for the forward
// and the deterministic backward, and the 2x rule holds on them.
TEST(AttentionCuda, StridedInputsMatchContiguousCopies) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  const Packed p = pack({100, 64, 1, 130});
  const at::Tensor cu = p.cu_host.to(kCuda);
  for (int d : {64, 128}) {
    const int hq = 4, hkv = 2;
    // Token stride (hq + 2 hkv) * d: q, k, v are head ranges of one [T, hq + 2 hkv, d] tensor.
    const at::Tensor qkv = randn_on_gpu({p.total, hq + 2 * hkv, d}, at::kBFloat16);
    // Head stride d + 8: rows padded by 8 elements (still 16-byte aligned).
    const at::Tensor padded = randn_on_gpu({p.total, hkv, d + 8}, at::kBFloat16);
    const at::Tensor q = qkv.narrow(1, 0, hq), k = qkv.narrow(1, hq, hkv), v = padded.narrow(2, 0, d);
    ASSERT_FALSE(q.is_contiguous());
    ASSERT_FALSE(v.is_contiguous());
    const at::Tensor dout = randn_on_gpu({p.total, hq, d}, at::kBFloat16);
    auto run = [&](const at::Tensor& qq, const at::Tensor& kk, const at::Tensor& vv) {
      at::Tensor out = at::full(qq.sizes(), NAN, qq.options()), lse = at::empty({hq, p.total}, qq.options().dtype(at::kFloat));
      fused_attention_forward(qq, kk, vv, cu, p.cu_host, p.max_len, 0.1, true, out, lse);
      at::Tensor dq = at::full(qq.sizes(), NAN, qq.options()), dk = at::full(kk.sizes(), NAN, kk.options()),
                 dv = at::full(vv.sizes(), NAN, vv.options());
      fused_attention_backward(dout, qq, kk, vv, out, lse, cu, p.cu_host, p.max_len, 0.1, true, true, dq, dk, dv);
      return std::vector<at::Tensor>{out, dq, dk, dv};
    };
    const auto strided = run(q, k, v), contiguous = run(q.contiguous(), k.contiguous(), v.contiguous());
    for (int i = 0; i < 4; ++i) EXPECT_TRUE(at::equal(strided[i], contiguous[i])) << "tensor " << i << " d " << d;
    const AttentionCheck r = check_fused_against_reference(q, k, v, dout, p.cu_host, p.max_len, 0.1, true, false);
    EXPECT_TRUE(r.passed) << r.describe() << " seed " << seed;
  }
}

// More sequences than gridDim.y/z allow (65,535): the (sequence, block) index is folded into gridDim.x.
TEST(AttentionCuda, MoreThan65535Sequences) {
  SKIP_WITHOUT_GPU();
  fresh_seed();
  std::vector<int32_t> lens(70000, 1);
  lens.push_back(130);  // sequence index 70,000
  const Packed p = pack(lens);
  const at::Tensor cu = p.cu_host.to(kCuda);
  const at::Tensor q = randn_on_gpu({p.total, 2, 64}, at::kBFloat16), k = randn_on_gpu({p.total, 2, 64}, at::kBFloat16),
                   v = randn_on_gpu({p.total, 2, 64}, at::kBFloat16), dout = randn_on_gpu({p.total, 2, 64}, at::kBFloat16);
  at::Tensor out = at::full_like(q, NAN), lse = at::empty({2, p.total}, q.options().dtype(at::kFloat));
  fused_attention_forward(q, k, v, cu, p.cu_host, p.max_len, 0.125, true, out, lse);
  // A one-token document attends to itself only: out = v exactly.
  EXPECT_TRUE(at::equal(out.narrow(0, 0, 70000), v.narrow(0, 0, 70000)));
  const at::Tensor last = reference_varlen_attention_fp64(q.narrow(0, 70000, 130), k.narrow(0, 70000, 130),
                                                          v.narrow(0, 70000, 130), pack({130}).cu_host, 0.125, true);
  EXPECT_LT((out.narrow(0, 70000, 130).cpu().to(at::kDouble) - last).abs().max().item<double>(), 3e-2);
  for (bool deterministic : {false, true}) {
    at::Tensor dq = at::full_like(q, NAN), dk = at::full_like(k, NAN), dv = at::full_like(v, NAN);
    fused_attention_backward(dout, q, k, v, out, lse, cu, p.cu_host, p.max_len, 0.125, true, deterministic, dq, dk, dv);
    EXPECT_TRUE(at::equal(dv.narrow(0, 0, 70000), dout.narrow(0, 0, 70000))) << deterministic;  // P = 1
    // dS = P (dP - D) = 0 up to the two dot products' summation orders (dP by MMA, D by the preprocess pass).
    EXPECT_LT(dq.narrow(0, 0, 70000).abs().max().item<double>(), 1e-3) << deterministic;
    EXPECT_TRUE(dq.isfinite().all().item<bool>() && dk.isfinite().all().item<bool>()) << deterministic;
  }
}

// Every [T, H, D] tensor the kernels touch in vectors is checked for 16-byte alignment: a contiguous view
// with an odd storage offset is rejected for out, dout, dq, dk and dv as for q/k/v.
TEST(AttentionCuda, RejectsMisalignedOutputsAndGradients) {
  SKIP_WITHOUT_GPU();
  const Packed p = pack({8});
  const at::Tensor cu = p.cu_host.to(kCuda);
  auto misaligned = [&](int64_t heads) {  // contiguous, shifted by one element (2 bytes)
    return at::empty({8 * heads * 64 + 1}, at::TensorOptions().dtype(at::kBFloat16).device(kCuda))
        .narrow(0, 1, 8 * heads * 64)
        .view({8, heads, 64});
  };
  const at::Tensor q = randn_on_gpu({8, 2, 64}, at::kBFloat16), k = randn_on_gpu({8, 2, 64}, at::kBFloat16),
                   v = randn_on_gpu({8, 2, 64}, at::kBFloat16), dout = randn_on_gpu({8, 2, 64}, at::kBFloat16);
  at::Tensor out = at::empty_like(q), lse = at::empty({2, 8}, q.options().dtype(at::kFloat));
  at::Tensor bad_out = misaligned(2);
  ASSERT_TRUE(bad_out.is_contiguous());
  EXPECT_THROW(fused_attention_forward(q, k, v, cu, p.cu_host, 8, 0.1, false, bad_out, lse), c10::Error);
  EXPECT_THROW(fused_attention_forward(misaligned(2), k, v, cu, p.cu_host, 8, 0.1, false, out, lse), c10::Error);
  fused_attention_forward(q, k, v, cu, p.cu_host, 8, 0.1, false, out, lse);
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  EXPECT_NO_THROW(fused_attention_backward(dout, q, k, v, out, lse, cu, p.cu_host, 8, 0.1, false, false, dq, dk, dv));
  for (int which = 0; which < 5; ++which) {
    at::Tensor t[5] = {dout, out, dq, dk, dv};
    t[which] = misaligned(2);
    if (which == 1) t[1].copy_(out);
    EXPECT_THROW(fused_attention_backward(t[0], q, k, v, t[1], lse, cu, p.cu_host, 8, 0.1, false, false, t[2], t[3], t[4]),
                 c10::Error)
        << "tensor " << which;
  }
}

// auto races ours against LibTorch's flash varlen on the run's shape; whichever it picks computes the
// same attention, and LibTorch's path (used when it wins) passes the 2x rule's fused-side bound too.
TEST(AttentionCuda, AutoPicksACorrectKernelOnTheRunShape) {
  SKIP_WITHOUT_GPU();
  fresh_seed();
  AttentionResolveOptions options;
  options.num_heads = 9;
  options.num_kv_heads = 3;
  options.head_dim = 64;
  options.max_seqlen = 1024;
  const AttentionImpl chosen = resolve_attention_impl(AttentionImpl::Auto, kCuda, options);
  EXPECT_TRUE(chosen == AttentionImpl::Fused || chosen == AttentionImpl::TorchFlashVarlen) << to_string(chosen);
  options.deterministic = true;
  EXPECT_EQ(resolve_attention_impl(AttentionImpl::Auto, kCuda, options), AttentionImpl::FusedDeterministic);
  EXPECT_EQ(resolve_attention_impl(AttentionImpl::Fused, kCuda, options), AttentionImpl::FusedDeterministic);
  const Packed p = pack({300, 17, 64});
  PackedSequences seqs{p.cu_host.to(kCuda), p.cu_host, p.max_len};
  const at::Tensor q = randn_on_gpu({p.total, 9, 64}, at::kBFloat16), k = randn_on_gpu({p.total, 3, 64}, at::kBFloat16),
                   v = randn_on_gpu({p.total, 3, 64}, at::kBFloat16);
  const at::Tensor ref = reference_varlen_attention_fp64(q, k, v, p.cu_host, 0.125, true);
  for (AttentionImpl impl : {AttentionImpl::Fused, AttentionImpl::TorchFlashVarlen, AttentionImpl::FusedDeterministic}) {
    const at::Tensor out = varlen_attention(q, k, v, seqs, 0.125, true, impl);
    EXPECT_LT((out.cpu().to(at::kDouble) - ref).abs().max().item<double>(), 3e-2) << to_string(impl);
  }
}

TEST(AttentionCuda, SelfCheckPassesAndAutoResolvesToFused) {
  SKIP_WITHOUT_GPU();
  EXPECT_EQ(fused_attention_self_check(kCuda), "");
  EXPECT_EQ(resolve_attention_impl(AttentionImpl::Auto, kCuda), AttentionImpl::Fused);  // no shape: no race
  EXPECT_EQ(resolve_attention_impl(AttentionImpl::Fused, kCuda), AttentionImpl::Fused);
  EXPECT_EQ(resolve_attention_impl(AttentionImpl::Sdpa, kCuda), AttentionImpl::Sdpa);
}

TEST(AttentionCuda, RejectsUnsupportedInputs) {
  SKIP_WITHOUT_GPU();
  const Packed p = pack({8});
  const at::Tensor cu = p.cu_host.to(kCuda);
  auto run = [&](int d, at::ScalarType dtype) {
    const at::Tensor q = randn_on_gpu({8, 2, d}, dtype), k = randn_on_gpu({8, 2, d}, dtype);
    return fused_varlen_attention(q, k, k, cu, p.cu_host, 8, 0.1, false);
  };
  EXPECT_THROW(run(96, at::kBFloat16), c10::Error);  // head_dim
  EXPECT_THROW(run(64, at::kFloat), c10::Error);     // fp32 is CPU-only
  EXPECT_NO_THROW(run(64, at::kHalf));
  EXPECT_THROW(fused_varlen_attention(randn_on_gpu({8, 2, 64}, at::kBFloat16), randn_on_gpu({8, 2, 64}, at::kBFloat16),
                                      randn_on_gpu({8, 2, 64}, at::kBFloat16), p.cu_host, p.cu_host, 8, 0.1, false),
               c10::Error);  // device cu_seqlens on the CPU
}

}  // namespace
}  // namespace sft::kernels
