// tests/test_attention_cuda.cpp: GPU tests of the fused attention kernels. FlashAttention's rule on the
// CPU twin's case matrix: the kernel's max error against the fp64 reference (out, dq, dk, dv) must be at
// most 2x the error of LibTorch's own same-dtype attention. Fresh random inputs every run; outputs are
// poisoned with NaN before each launch (check_fused_against_reference). Plus determinism, the autograd
// path, the start-up self-check, and an opt-in TFLOP/s benchmark (SFT_BENCH=1, run by scripts/gpu_check.sh).
// Every test skips with a reason when the build has no CUDA kernels or no CUDA device is present.
#include <gtest/gtest.h>
#include <torch/autograd.h>
#include <torch/cuda.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
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

// ---------------------------------------------------------------------------------------------------------
// Benchmark (opt-in: SFT_BENCH=1). TFLOP/s with FlashAttention's formula: fwd = 4 * B * L^2 * H * D
// (/2 causal), bwd = 2.5 x fwd. 16k tokens per run (B = 16384 / L), model dim 2048 (H = 2048 / D), bf16.
double time_ms(const std::function<void()>& fn) {
  fn();  // warm-up
  torch::cuda::synchronize();
  const int reps = 10;
  const auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r) fn();
  torch::cuda::synchronize();  // sync point: timing only
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
}

enum class SdpaBackend { Flash, CuDNN };
// Forces one SDPA backend for the duration of `fn` (LibTorch's global SDP flags, restored afterwards).
double time_sdpa(SdpaBackend backend, const std::function<void()>& fn) {
  auto& ctx = at::globalContext();
  const bool flash = ctx.userEnabledFlashSDP(), cudnn = ctx.userEnabledCuDNNSDP(), mem = ctx.userEnabledMemEfficientSDP(),
             math = ctx.userEnabledMathSDP();
  ctx.setSDPUseFlash(backend == SdpaBackend::Flash);
  ctx.setSDPUseCuDNN(backend == SdpaBackend::CuDNN);
  ctx.setSDPUseMemEfficient(false);
  ctx.setSDPUseMath(false);
  double ms = std::nan("");
  try {
    ms = time_ms(fn);
  } catch (const std::exception&) {  // backend unavailable for this shape/GPU: reported as n/a
  }
  ctx.setSDPUseFlash(flash);
  ctx.setSDPUseCuDNN(cudnn);
  ctx.setSDPUseMemEfficient(mem);
  ctx.setSDPUseMath(math);
  return ms;
}

TEST(AttentionBench, CudaTflops) {
  SKIP_WITHOUT_GPU();
  if (std::getenv("SFT_BENCH") == nullptr) GTEST_SKIP() << "set SFT_BENCH=1 to run the CUDA attention benchmark";
  fresh_seed();
  std::printf("| seqlen | D | causal | ours fwd | flash fwd | cudnn fwd | ours fwd+bwd | flash fwd+bwd | cudnn fwd+bwd |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  for (int d : {64, 128}) {
    for (bool causal : {false, true}) {
      for (int len : {512, 1024, 2048, 4096, 8192}) {
        const int batch = 16384 / len, heads = 2048 / d;
        const int64_t total = static_cast<int64_t>(batch) * len;
        const Packed p = pack(std::vector<int32_t>(batch, len));
        PackedSequences seqs{p.cu_host.to(kCuda), p.cu_host, p.max_len};
        const double scale = 1.0 / std::sqrt(d);
        const at::Tensor q = randn_on_gpu({total, heads, d}, at::kBFloat16), k = randn_on_gpu({total, heads, d}, at::kBFloat16),
                         v = randn_on_gpu({total, heads, d}, at::kBFloat16), dout = randn_on_gpu({total, heads, d}, at::kBFloat16);
        // SDPA layout [B, H, L, D]
        auto bhld = [&](const at::Tensor& x) { return x.view({batch, len, heads, d}).transpose(1, 2); };
        const double fwd_flops = 4.0 * batch * len * static_cast<double>(len) * heads * d / (causal ? 2 : 1);
        auto tflops = [](double flops, double ms) { return flops / (ms * 1e-3) / 1e12; };
        auto ours = [&](bool bwd) {
          return [&, bwd] {
            at::Tensor qg = q.detach().requires_grad_(bwd), kg = k.detach().requires_grad_(bwd),
                       vg = v.detach().requires_grad_(bwd);
            at::Tensor out = varlen_attention(qg, kg, vg, seqs, scale, causal, AttentionImpl::Fused);
            if (bwd) torch::autograd::grad({out}, {qg, kg, vg}, {dout});
          };
        };
        auto sdpa = [&](bool bwd) {
          return [&, bwd] {
            at::Tensor qg = bhld(q).detach().requires_grad_(bwd), kg = bhld(k).detach().requires_grad_(bwd),
                       vg = bhld(v).detach().requires_grad_(bwd);
            at::Tensor out = at::scaled_dot_product_attention(qg, kg, vg, {}, 0.0, causal, scale);
            if (bwd) torch::autograd::grad({out}, {qg, kg, vg}, {bhld(dout)});
          };
        };
        const double r[6] = {tflops(fwd_flops, time_ms(ours(false))),
                             tflops(fwd_flops, time_sdpa(SdpaBackend::Flash, sdpa(false))),
                             tflops(fwd_flops, time_sdpa(SdpaBackend::CuDNN, sdpa(false))),
                             tflops(3.5 * fwd_flops, time_ms(ours(true))),
                             tflops(3.5 * fwd_flops, time_sdpa(SdpaBackend::Flash, sdpa(true))),
                             tflops(3.5 * fwd_flops, time_sdpa(SdpaBackend::CuDNN, sdpa(true)))};
        std::printf("| %d | %d | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n", len, d, causal, r[0], r[1], r[2],
                    r[3], r[4], r[5]);
      }
    }
  }
}

}  // namespace
}  // namespace sft::kernels
