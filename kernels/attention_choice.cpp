// kernels/attention_choice.cpp: resolve_attention_impl (kernels/ops.h): the CPU rule, the CUDA self-check,
// the timing race of `auto` between our fused kernel and LibTorch's FlashAttention-2 varlen, and the
// pure decision taken from its evidence (choose_auto_attention).
#include "kernels/attention_choice.h"

#include <torch/autograd.h>
#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "kernels/fused_attention.h"

namespace sft::kernels {

namespace {
// What `auto` means for CPU training. scripts/bench_attention.sh (table in kernels/README.md): LibTorch's
// SDPA is 3.5-7.5x faster than the twin for fwd+bwd on every shape measured, packed or not.
constexpr AttentionImpl kCpuAutoImpl = AttentionImpl::Sdpa;

std::string ms_text(double ms) {
  if (!std::isfinite(ms)) return "not run";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3f ms", ms);
  return buf;
}
}  // namespace

AutoAttentionChoice choose_auto_attention(const AutoAttentionEvidence& e) {
  const bool fused_ok = e.fused_failure.empty() && std::isfinite(e.fused_ms);
  const bool flash_ok = std::isfinite(e.torch_flash_ms);
  AutoAttentionChoice choice;
  std::string why;
  if (fused_ok && (!flash_ok || e.fused_ms <= e.torch_flash_ms)) {
    choice.impl = AttentionImpl::Fused;
    why = flash_ok ? "ours is faster or equal" : "LibTorch flash varlen did not run: " + e.torch_flash_failure;
  } else if (flash_ok) {
    choice.impl = AttentionImpl::TorchFlashVarlen;
    why = fused_ok ? "LibTorch flash varlen is faster"
                   : "ours is unavailable: " + (e.fused_failure.empty() ? std::string("it did not run") : e.fused_failure);
  } else {
    choice.impl = AttentionImpl::Sdpa;
    why = "neither ran (ours: " + (e.fused_failure.empty() ? std::string("timing failed") : e.fused_failure) +
          "; LibTorch flash varlen: " + e.torch_flash_failure + ")";
  }
  std::ostringstream log;
  log << "model.attention=auto: " << to_string(choice.impl) << " (fwd+bwd on " << e.shape << ": fused "
      << ms_text(e.fused_ms) << ", LibTorch flash varlen " << ms_text(e.torch_flash_ms) << "; " << why << ")";
  choice.log = log.str();
  return choice;
}

namespace {

// Mean ms of `reps` calls after one warm-up; the device is synchronised around the timed calls.
double time_on_device_ms(const std::function<void()>& fn, int reps) {
  fn();
  torch::cuda::synchronize();  // sync point: start-up timing only
  const auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r) fn();
  torch::cuda::synchronize();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
}

}  // namespace

void time_auto_attention_candidates(AutoAttentionEvidence& e, const at::Device& device,
                                    const AttentionResolveOptions& o) {
  const int64_t len = std::clamp<int64_t>(o.max_seqlen > 0 ? o.max_seqlen : 1024, 256, 4096);
  const int64_t rows = std::max<int64_t>(1, 8192 / len), total = rows * len;
  std::ostringstream shape;
  shape << "Hq " << o.num_heads << " / Hkv " << o.num_kv_heads << ", head_dim " << o.head_dim << ", " << rows << " x "
        << len << " tokens, " << c10::toString(o.dtype);
  e.shape = shape.str();
  std::vector<int32_t> offsets{0};
  for (int64_t r = 0; r < rows; ++r) offsets.push_back(static_cast<int32_t>(offsets.back() + len));
  const at::Tensor cu_host = at::tensor(offsets, at::kInt);
  const PackedSequences seqs{cu_host.to(device), cu_host, len};
  auto randn = [&](int64_t heads) { return at::randn({total, heads, o.head_dim}, at::kFloat).to(device).to(o.dtype); };
  const at::Tensor q = randn(o.num_heads), k = randn(o.num_kv_heads), v = randn(o.num_kv_heads), dout = randn(o.num_heads);
  const double scale = 1.0 / std::sqrt(static_cast<double>(o.head_dim));
  auto fwd_bwd = [&](AttentionImpl impl) {
    return [&, impl] {
      at::Tensor qg = q.detach().requires_grad_(true), kg = k.detach().requires_grad_(true),
                 vg = v.detach().requires_grad_(true);
      at::Tensor out = varlen_attention(qg, kg, vg, seqs, scale, /*causal=*/true, impl);
      torch::autograd::grad({out}, {qg, kg, vg}, {dout});
    };
  };
  constexpr int kReps = 3;
  if (e.fused_failure.empty()) {
    try {
      e.fused_ms = time_on_device_ms(fwd_bwd(AttentionImpl::Fused), kReps);
    } catch (const std::exception& ex) {
      e.fused_failure = std::string("timing raised: ") + ex.what();
    }
  }
  try {
    e.torch_flash_ms = time_on_device_ms(fwd_bwd(AttentionImpl::TorchFlashVarlen), kReps);
  } catch (const std::exception& ex) {
    e.torch_flash_failure = ex.what();
    e.torch_flash_failure = e.torch_flash_failure.substr(0, e.torch_flash_failure.find('\n'));
  }
}

AttentionImpl resolve_attention_impl(AttentionImpl requested, const at::Device& device,
                                     const AttentionResolveOptions& options) {
  if (requested == AttentionImpl::Sdpa || requested == AttentionImpl::Eager) return requested;
  const AttentionImpl fused = options.deterministic ? AttentionImpl::FusedDeterministic : AttentionImpl::Fused;
  if (requested == AttentionImpl::FusedDeterministic || requested == AttentionImpl::TorchFlashVarlen) return requested;
  if (device.is_cpu()) return requested == AttentionImpl::Auto ? kCpuAutoImpl : fused;
  // CUDA: the fused kernel only after its start-up self-check passes (runs once, here).
  const bool low_precision = options.dtype == at::kBFloat16 || options.dtype == at::kHalf;
  if (requested == AttentionImpl::Auto && !low_precision) {
    std::cerr << "model.attention=auto: sdpa (attention runs in " << c10::toString(options.dtype)
              << "; the flash kernels take bfloat16/float16 only)\n";
    return AttentionImpl::Sdpa;
  }
  const std::string failure =
      device.is_cuda() ? fused_attention_self_check(device) : "the fused kernel supports CPU and CUDA only";
  if (requested == AttentionImpl::Fused) {
    if (!failure.empty()) throw std::runtime_error("model.attention=fused: " + failure);
    return fused;
  }
  // auto on CUDA.
  if (options.deterministic) {
    if (failure.empty()) {
      std::cerr << "model.attention=auto: " << to_string(fused) << " (model.deterministic_attention)\n";
      return fused;
    }
    std::cerr << "warning: model.attention=auto: using sdpa because " << failure << "\n";
    return AttentionImpl::Sdpa;
  }
  if (options.num_heads <= 0 || options.num_kv_heads <= 0 || options.head_dim <= 0) {
    // No shape to race on (a caller that does not know the model): ours after a passing self-check.
    if (failure.empty()) return fused;
    std::cerr << "warning: model.attention=auto: using sdpa because " << failure << "\n";
    return AttentionImpl::Sdpa;
  }
  AutoAttentionEvidence evidence;
  evidence.fused_failure = failure;
  time_auto_attention_candidates(evidence, device, options);
  const AutoAttentionChoice choice = choose_auto_attention(evidence);
  std::cerr << choice.log << "\n";
  return choice.impl;
}

}  // namespace sft::kernels
