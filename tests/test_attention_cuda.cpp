// tests/test_attention_cuda.cpp: GPU tests of the fused attention kernels. FlashAttention's rule on the
// CPU twin's case matrix: the kernel's max error against the fp64 reference (out, dq, dk, dv) must be at
// most 2x the error of LibTorch's own same-dtype attention. Fresh random inputs every run; outputs are
// poisoned with NaN before each launch (check_fused_against_reference). Plus determinism, the autograd
// path and the start-up self-check. The TFLOP/s benchmark is `bench_attention --cuda` (scripts/gpu_check.sh).
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

#include "kernels/fused_attention.h"
#include "kernels/ops.h"

namespace sft::kernels {
namespace {

// Returns a reason to skip, or "" when the GPU tests can run.
std::string gpu_skip_reason() {
  if (!fused_attention_has_cuda()) return "this build has no CUDA kernels (nvcc was not found at configure time)";
  if (!torch::cuda::is_available()) return "no CUDA device is available";
  return "";
}
#define SKIP_WITHOUT_GPU()                                       \
  do {                                                           \
    const std::string reason = gpu_skip_reason();                \
    if (!reason.empty()) GTEST_SKIP() << reason;                 \
  } while (0)

uint64_t fresh_seed() {
  const char* env = std::getenv("SFT_TEST_SEED");
  const uint64_t seed = env && *env ? std::strtoull(env, nullptr, 10) : std::random_device{}();
  at::manual_seed(seed);
  return seed;
}

struct Packed {
  at::Tensor cu_host;
  int64_t total = 0, max_len = 0;
};
Packed pack(const std::vector<int32_t>& lens) {
  std::vector<int32_t> off{0};
  Packed p;
  for (int32_t len : lens) {
    off.push_back(off.back() + len);
    p.max_len = std::max<int64_t>(p.max_len, len);
  }
  p.total = off.back();
  p.cu_host = at::tensor(off, at::kInt);
  return p;
}

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
  EXPECT_LT((g[0].to(at::kFloat) - dq.to(at::kFloat)).abs().max().item<double>(), 2e-2);
  EXPECT_TRUE(at::equal(g[1], dk));  // dK/dV never use atomics
  EXPECT_TRUE(at::equal(g[2], dv));
}

TEST(AttentionCuda, SelfCheckPassesAndAutoResolvesToFused) {
  SKIP_WITHOUT_GPU();
  EXPECT_EQ(fused_attention_self_check(kCuda), "");
  EXPECT_EQ(resolve_attention_impl(AttentionImpl::Auto, kCuda), AttentionImpl::Fused);
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
