// tests/test_sdpa_cpu.cpp: `model.attention: sdpa` on the CPU (kernels/sdpa_cpu.h: one autograd node,
// exact math in fp32/fp64, LibTorch's CPU flash kernel in bf16) against an exact fp64 reference
// (forward and every gradient) over packed batches with empty, 1-token, odd and long documents, GQA 1/3/4,
// head dims 64/48, causal or not, in fp32, fp64 and bf16 autocast; that it is one autograd node whose
// edges lead straight to q, k and v; and that bad offsets are named.
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include <cmath>
#include <string>
#include <vector>

#include "common/autocast.h"
#include "kernels/sdpa_cpu.h"
#include "kernels/ops.h"
#include "tests/test_util.h"

namespace sft::kernels {
namespace {

using test::fresh_seed;
using test::pack;
using test::Packed;

struct Errors {
  double out, dq, dk, dv, scale;  // max abs errors against reference_fp64; scale = max |reference|
};

struct Case {
  std::vector<int32_t> lens;
  int hkv, group, d;
  bool causal;
};

// Exact fp64 attention per document (scores, mask and softmax all in fp64), differentiable. [T, Hq, D]
at::Tensor reference_fp64(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const Packed& p,
                          double scale, bool causal) {
  const int64_t group = q.size(1) / k.size(1);
  const at::Tensor cu = p.cu_host.to(at::kLong);
  std::vector<at::Tensor> outs;
  for (int64_t s = 0; s + 1 < cu.numel(); ++s) {
    const int64_t begin = cu[s].item<int64_t>(), len = cu[s + 1].item<int64_t>() - begin;
    if (len == 0) continue;
    auto heads = [&](const at::Tensor& x, int64_t repeat) {  // [L, H, D] -> [H * repeat, L, D]
      return x.narrow(0, begin, len).transpose(0, 1).repeat_interleave(repeat, 0);
    };
    at::Tensor scores = at::matmul(heads(q, 1), heads(k, group).transpose(1, 2)) * scale;  // [Hq, L, L]
    if (causal) scores = scores.masked_fill(at::ones({len, len}, at::kBool).triu(1), -INFINITY);
    outs.push_back(at::matmul(at::softmax(scores, -1), heads(v, group)).transpose(0, 1));  // [L, Hq, D]
  }
  return at::cat(outs, 0);
}

Errors run_case(const Case& c, at::ScalarType dtype, bool bf16_autocast = false) {
  const Packed p = pack(c.lens);
  const PackedSequences seqs{p.cu_host, p.cu_host, p.max_len};
  const auto [q, k, v, dout] = test::random_attention_inputs(p.total, c.hkv * c.group, c.hkv, c.d, dtype);
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
  at::Tensor out;
  {
    ScopedAutocast autocast(at::kCPU, bf16_autocast ? std::optional<at::ScalarType>(at::kBFloat16) : std::nullopt);
    out = varlen_attention(q, k, v, seqs, scale, c.causal, AttentionImpl::Sdpa);
  }
  auto g = torch::autograd::grad({out}, {q, k, v}, {dout.to(out.scalar_type())});

  auto fp64 = [](const at::Tensor& x) { return x.detach().to(at::kDouble).requires_grad_(true); };
  at::Tensor qr = fp64(q), kr = fp64(k), vr = fp64(v);
  at::Tensor out_r = reference_fp64(qr, kr, vr, p, scale, c.causal);
  auto gr = torch::autograd::grad({out_r}, {qr, kr, vr}, {dout.to(at::kDouble)});
  auto err = [](const at::Tensor& a, const at::Tensor& b) {
    return (a.detach().to(at::kDouble) - b).abs().max().item<double>();
  };
  Errors e{err(out, out_r), err(g[0], gr[0]), err(g[1], gr[1]), err(g[2], gr[2]), 0};
  for (const at::Tensor& r : {out_r, gr[0], gr[1], gr[2]}) e.scale = std::max(e.scale, r.abs().max().item<double>());
  return e;
}

std::vector<Case> cases() {
  // Empty documents (0), 1 and 2 tokens, the kernel's 32/64 query and key blocks +-1, and a long one.
  const std::vector<int32_t> mixed{1, 0, 63, 2, 64, 65, 31, 33, 129, 300, 0};
  std::vector<Case> out;
  for (int d : {64, 48}) {
    for (bool causal : {true, false}) {
      out.push_back({mixed, 3, 3, d, causal});  // SmolLM2's 9 / 3 heads
      out.push_back({mixed, 2, 1, d, causal});
      out.push_back({mixed, 1, 4, d, causal});
    }
  }
  return out;
}

std::string describe(const Case& c) {
  return "hkv " + std::to_string(c.hkv) + " group " + std::to_string(c.group) + " d " + std::to_string(c.d) +
         " causal " + std::to_string(c.causal);
}

TEST(SdpaCpu, Fp32MatchesFp64EagerOverCaseMatrix) {
  fresh_seed();
  for (const Case& c : cases()) {
    const Errors e = run_case(c, at::kFloat);
    EXPECT_LT(e.out, 1e-5 * e.scale) << describe(c);
    EXPECT_GT(std::max({e.out, e.dq, e.dk, e.dv}), 1e-9 * e.scale) << "fp32 should not be exact: " << describe(c);
    EXPECT_LT(e.dq, 2e-5 * e.scale) << describe(c);
    EXPECT_LT(e.dk, 2e-5 * e.scale) << describe(c);
    EXPECT_LT(e.dv, 2e-5 * e.scale) << describe(c);
  }
}

TEST(SdpaCpu, Fp64MatchesToRounding) {
  fresh_seed();
  for (const Case& c : cases()) {
    const Errors e = run_case(c, at::kDouble);
    EXPECT_LT(std::max({e.out, e.dq, e.dk, e.dv}), 1e-12 * e.scale) << describe(c);
  }
}

TEST(SdpaCpu, Bf16AutocastRunsInBf16WithinItsRounding) {
  fresh_seed();
  const Case c{{5, 40, 0, 97}, 3, 3, 64, true};
  const Errors e = run_case(c, at::kFloat, /*bf16_autocast=*/true);
  // bf16 keeps 8 bits: a few ulps of the largest value (2^-8 = 0.0039) on outputs and gradients.
  EXPECT_LT(e.out, 0.02 * e.scale);
  EXPECT_LT(std::max({e.dq, e.dk, e.dv}), 0.03 * e.scale);
  EXPECT_GT(e.out, 1e-6 * e.scale) << "bf16 autocast should have run the attention in bf16";
}

// One autograd node for the whole packed batch, with its edges straight to q, k and v (no per-document
// slice, transpose, repeat or cat nodes in between).
TEST(SdpaCpu, IsOneAutogradNode) {
  fresh_seed();
  const Packed p = pack({7, 12, 30});
  at::Tensor q = at::randn({p.total, 6, 32}).requires_grad_(true);
  at::Tensor k = at::randn({p.total, 2, 32}).requires_grad_(true);
  at::Tensor v = at::randn({p.total, 2, 32}).requires_grad_(true);
  at::Tensor out = varlen_attention(q, k, v, {p.cu_host, p.cu_host, p.max_len}, 0.2, true, AttentionImpl::Sdpa);
  ASSERT_TRUE(out.grad_fn());
  EXPECT_NE(out.grad_fn()->name().find("SdpaCpuFunction"), std::string::npos) << out.grad_fn()->name();
  const auto& edges = out.grad_fn()->next_edges();
  ASSERT_GE(edges.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    ASSERT_TRUE(edges[i].function) << "input " << i;
    EXPECT_NE(edges[i].function->name().find("AccumulateGrad"), std::string::npos) << edges[i].function->name();
  }
}

TEST(SdpaCpu, BadOffsetsAreNamed) {
  at::Tensor q = at::randn({10, 2, 16}), k = at::randn({10, 1, 16}), v = at::randn({10, 1, 16});
  auto expect_error = [&](std::vector<int32_t> offsets, const std::string& needle) {
    const at::Tensor cu = at::tensor(offsets, at::kInt);
    try {
      sdpa_cpu_varlen_attention(q, k, v, cu, 0.25, true);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error({0, 4, 8}, "not from 0 to the 10 tokens");
  expect_error({0, 6, 4, 10}, "offset 2 (4) is below offset 1 (6)");
  expect_error({0}, "at least 2 offsets");
}

}  // namespace
}  // namespace sft::kernels
