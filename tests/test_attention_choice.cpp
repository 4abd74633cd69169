// tests/test_attention_choice.cpp: how `model.attention` is resolved (kernels/attention_choice.cpp): the
// pure decision of `auto` on CUDA from injected self-check results and timings, the unchanged CPU rule,
// and model.deterministic_attention from the config key to the kernel's deterministic backward. The race
// itself needs a GPU (AttentionCuda.AutoPicksACorrectKernelOnTheRunShape).
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/attention_choice.h"
#include "kernels/fused_attention.h"
#include "kernels/ops.h"
#include "trainer/config.h"
#include "trainer/setup.h"

namespace sft::kernels {
namespace {

// model.deterministic_attention reaches the kernel: the config key (parsed, saved, listed) resolves `fused`
// to FusedDeterministic, which selects the deterministic backward, and varlen_attention's gradients then
// equal the raw deterministic backward bitwise. (On the CPU the twin's two modes sum dQ in the same order
// and agree bitwise too; on CUDA they differ, and AttentionCuda.DeterministicImplIsBitwiseTheRawKernel
// checks the same chain there.)
TEST(AttentionFusedChecks, DeterministicKeyReachesTheKernel) {
  Config config;
  config.model.path = "unused";
  config.model.attention = AttentionImpl::Fused;
  config.train.device = DeviceChoice::kCpu;
  EXPECT_EQ(resolve_runtime(config).attention, AttentionImpl::Fused);
  config.model.deterministic_attention = true;
  EXPECT_EQ(resolve_runtime(config).attention, AttentionImpl::FusedDeterministic);
  config.model.attention = AttentionImpl::Auto;  // CPU auto stays sdpa
  EXPECT_EQ(resolve_runtime(config).attention, AttentionImpl::Sdpa);
  at::manual_seed(std::random_device{}());
  const at::Tensor cu = at::tensor(std::vector<int32_t>{0, 97, 130}, at::kInt);  // documents of 97 and 33 tokens
  const int64_t total = 130, max_len = 97;
  PackedSequences seqs{cu, cu, max_len};
  const at::Tensor q = at::randn({total, 4, 64}), k = at::randn({total, 2, 64}), v = at::randn({total, 2, 64}),
                   dout = at::randn({total, 4, 64});
  at::Tensor raw_out = at::empty(q.sizes()), lse = at::empty({4, total});
  fused_attention_forward(q, k, v, cu, cu, max_len, 0.125, true, raw_out, lse);
  at::Tensor raw[2][3];
  for (int mode = 0; mode < 2; ++mode) {
    raw[mode][0] = at::empty(q.sizes());
    raw[mode][1] = at::empty(k.sizes());
    raw[mode][2] = at::empty(v.sizes());
    fused_attention_backward(dout, q, k, v, raw_out, lse, cu, cu, max_len, 0.125, true, mode == 1, raw[mode][0],
                             raw[mode][1], raw[mode][2]);
  }
  EXPECT_FALSE(deterministic_backward(AttentionImpl::Fused));
  EXPECT_TRUE(deterministic_backward(AttentionImpl::FusedDeterministic));
  for (AttentionImpl impl : {AttentionImpl::Fused, AttentionImpl::FusedDeterministic}) {
    at::Tensor qg = q.clone().requires_grad_(true), kg = k.clone().requires_grad_(true), vg = v.clone().requires_grad_(true);
    const at::Tensor out = varlen_attention(qg, kg, vg, seqs, 0.125, true, impl);
    auto g = torch::autograd::grad({out}, {qg, kg, vg}, {dout});
    const int mode = impl == AttentionImpl::FusedDeterministic ? 1 : 0;
    EXPECT_TRUE(at::equal(out, raw_out));
    for (int i = 0; i < 3; ++i) EXPECT_TRUE(at::equal(g[i], raw[mode][i])) << to_string(impl) << " grad " << i;
  }
  EXPECT_NE(config_reference().find("model.deterministic_attention"), std::string::npos);
  const Config parsed = parse_config("model: {path: m, deterministic_attention: true}\ndata: {train: t.jsonl}\n", "test",
                                     {}, "x");
  EXPECT_TRUE(parsed.model.deterministic_attention);
  EXPECT_NE(config_to_yaml(parsed).find("deterministic_attention: true"), std::string::npos);
}

// `auto` on CUDA, the decision alone (choose_auto_attention), with injected self-check results and timings.
TEST(AttentionChoice, AutoPicksTheFasterCorrectKernel) {
  const double nan = std::nan("");
  auto pick = [](std::string fused_failure, double fused_ms, double flash_ms) {
    AutoAttentionEvidence e;
    e.fused_failure = std::move(fused_failure);
    e.fused_ms = fused_ms;
    e.torch_flash_ms = flash_ms;
    if (!std::isfinite(flash_ms)) e.torch_flash_failure = "not compiled for sm_90";
    e.shape = "Hq 9 / Hkv 3, head_dim 64, 8 x 1024 tokens, BFloat16";
    return choose_auto_attention(e);
  };
  EXPECT_EQ(pick("", 1.0, 2.0).impl, AttentionImpl::Fused);
  EXPECT_EQ(pick("", 2.0, 1.0).impl, AttentionImpl::TorchFlashVarlen);
  EXPECT_EQ(pick("", 1.5, 1.5).impl, AttentionImpl::Fused);  // a tie keeps ours
  EXPECT_EQ(pick("", 1.0, nan).impl, AttentionImpl::Fused);
  EXPECT_EQ(pick("self-check failed", 0.5, 2.0).impl, AttentionImpl::TorchFlashVarlen);  // never an incorrect kernel
  EXPECT_EQ(pick("self-check failed", 0.5, nan).impl, AttentionImpl::Sdpa);
  EXPECT_EQ(pick("", nan, nan).impl, AttentionImpl::Sdpa);  // ours passed the check but its timing run failed
  EXPECT_EQ(pick("", nan, 3.0).impl, AttentionImpl::TorchFlashVarlen);
  // The log names the choice and both timings.
  const std::string log = pick("", 1.25, 2.5).log;
  EXPECT_NE(log.find("fused 1.250 ms"), std::string::npos) << log;
  EXPECT_NE(log.find("LibTorch flash varlen 2.500 ms"), std::string::npos) << log;
  EXPECT_NE(log.find("head_dim 64"), std::string::npos) << log;
  EXPECT_EQ(log.rfind("model.attention=auto: fused", 0), 0u) << log;
  EXPECT_NE(pick("", 1.0, nan).log.find("not compiled for sm_90"), std::string::npos);
}

// On the CPU nothing is raced and nothing changes: auto is sdpa, fused the twin (deterministic on request).
TEST(AttentionChoice, CpuResolutionIsUnchanged) {
  const at::Device cpu(at::kCPU);
  AttentionResolveOptions o;
  o.num_heads = 9;
  o.num_kv_heads = 3;
  o.head_dim = 64;
  EXPECT_EQ(resolve_attention_impl(AttentionImpl::Auto, cpu, o), AttentionImpl::Sdpa);
  EXPECT_EQ(resolve_attention_impl(AttentionImpl::Fused, cpu, o), AttentionImpl::Fused);
  o.deterministic = true;
  EXPECT_EQ(resolve_attention_impl(AttentionImpl::Auto, cpu, o), AttentionImpl::Sdpa);
  EXPECT_EQ(resolve_attention_impl(AttentionImpl::Fused, cpu, o), AttentionImpl::FusedDeterministic);
  EXPECT_EQ(resolve_attention_impl(AttentionImpl::Sdpa, cpu, o), AttentionImpl::Sdpa);
}


}  // namespace
}  // namespace sft::kernels
