// tests/bench_attention_main.cpp: the attention benchmarks, printed as markdown tables.
//   bench_attention [REPS]   CPU (scripts/bench_attention.sh): fp32 forward and forward+backward of the
//                            fused CPU twin, `sdpa` (kernels/sdpa_cpu.cpp: one autograd node, exact math per
//                            document in fp32) and the per-document SDPA graph it replaced, on packed rows of 1 to 12
//                            documents. `model.attention: auto` on the CPU picks the winner
//                            (kernels/attention_dispatch.cpp, kCpuAutoImpl).
//   bench_attention --cuda   GPU (scripts/gpu_run.sh, scripts/gpu_check.sh): TFLOP/s of our CUDA kernel
//                            forward and forward+backward against SDPA's flash, cuDNN and memory-efficient
//                            backends and LibTorch's FlashAttention-2 varlen (cu_seqlens), bf16, 16k tokens
//                            per run, model dim 2048, seq 512-8k, head_dim 64/128, causal and not; then one
//                            packed mix of lengths (ours, varlen, per-document SDPA).
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <string>
#include <vector>

#include "kernels/cuda_plugin.h"
#include "kernels/fused_attention.h"
#include "kernels/ops.h"

namespace {

using sft::kernels::AttentionImpl;
using sft::kernels::PackedSequences;

struct Shape {
  std::vector<int32_t> lens;  // documents packed in one row
  int hq, hkv, d;
  bool causal;
};

// Median of `reps` timed calls after one warm-up, in milliseconds.
template <typename Fn>
double median_ms(Fn&& fn, int reps) {
  fn();
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// `sdpa` on the CPU before 2026-12-01: at::scaled_dot_product_attention on each document's 3-D views (kv
// heads repeated), concatenated; the autograd graph that kernels/sdpa_cpu.cpp replaced.
at::Tensor per_document_sdpa_graph(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const std::vector<int32_t>& offsets, double scale, bool causal) {
  const int64_t group = q.size(1) / k.size(1);
  std::vector<at::Tensor> outs;
  for (size_t s = 0; s + 1 < offsets.size(); ++s) {
    const int64_t begin = offsets[s], len = offsets[s + 1] - offsets[s];
    auto heads = [&](const at::Tensor& x, int64_t repeat) {  // [L, H, D] -> [H * repeat, L, D]
      return x.narrow(0, begin, len).transpose(0, 1).repeat_interleave(repeat, 0);
    };
    outs.push_back(at::scaled_dot_product_attention(heads(q, 1), heads(k, group), heads(v, group), {}, 0.0, causal,
                                                    scale)
                       .transpose(0, 1));
  }
  return at::cat(outs, 0);
}

void run(int reps) {
  const Shape shapes[] = {{{1024}, 8, 8, 64, true},          {{1024}, 8, 2, 64, true},   {{1024}, 8, 2, 128, true},
                          {{512, 512}, 8, 2, 64, true},      {{256, 256, 256, 256}, 8, 2, 64, true},
                          {{1024}, 8, 2, 64, false},         {{2048}, 4, 1, 128, true},
                          {{300, 200, 150, 120, 100, 80, 50, 24}, 9, 3, 64, true},
                          // SmolLM2 on a packed 512-token row of quiz examples (bench_train's packed case)
                          {{43, 43, 43, 43, 43, 43, 43, 43, 43, 43, 43, 39}, 9, 3, 64, true}};
  std::printf("threads: %d, fp32, median of %d; sdpa = one autograd node, exact math per document in fp32 "
              "(kernels/sdpa_cpu.cpp); old sdpa = at::scaled_dot_product_attention per document "
              "on 3-D views, the graph it replaced\n\n",
              at::get_num_threads(), reps);
  std::printf("| tokens | docs | Hq/Hkv | D | causal | twin fwd ms | sdpa fwd ms | old sdpa fwd ms | twin fwd+bwd ms |"
              " sdpa fwd+bwd ms | old sdpa fwd+bwd ms | fwd+bwd sdpa/twin | fwd+bwd sdpa/old |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const Shape& s : shapes) {
    std::vector<int32_t> offsets{0};
    for (int32_t len : s.lens) offsets.push_back(offsets.back() + len);
    const int64_t total = offsets.back(), max_len = *std::max_element(s.lens.begin(), s.lens.end());
    const at::Tensor cu = at::tensor(offsets, at::kInt);
    const PackedSequences seqs{cu, cu, max_len};
    const at::Tensor q = at::randn({total, s.hq, s.d}), k = at::randn({total, s.hkv, s.d}),
                     v = at::randn({total, s.hkv, s.d}), dout = at::randn({total, s.hq, s.d});
    const double scale = 1.0 / std::sqrt(s.d);
    double ms[3][2];
    for (int which = 0; which < 3; ++which) {
      for (int with_bwd = 0; with_bwd < 2; ++with_bwd) {
        ms[which][with_bwd] = median_ms(
            [&] {
              at::Tensor qg = q.detach().requires_grad_(with_bwd == 1), kg = k.detach().requires_grad_(with_bwd == 1),
                         vg = v.detach().requires_grad_(with_bwd == 1);
              at::Tensor out =
                  which == 2 ? per_document_sdpa_graph(qg, kg, vg, offsets, scale, s.causal)
                             : sft::kernels::varlen_attention(qg, kg, vg, seqs, scale, s.causal,
                                                              which == 0 ? AttentionImpl::Fused : AttentionImpl::Sdpa);
              if (with_bwd) torch::autograd::grad({out}, {qg, kg, vg}, {dout});
            },
            reps);
      }
    }
    std::printf("| %lld | %zu | %d/%d | %d | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.2f | %.2f |\n",
                static_cast<long long>(total), s.lens.size(), s.hq, s.hkv, s.d, s.causal, ms[0][0], ms[1][0], ms[2][0],
                ms[0][1], ms[1][1], ms[2][1], ms[1][1] / ms[0][1], ms[1][1] / ms[2][1]);
  }
}

// ---- GPU: TFLOP/s with FlashAttention's formula: fwd = 4 * B * L^2 * H * D (/2 causal), fwd+bwd = 3.5 x fwd.
double cuda_time_ms(const std::function<void()>& fn) {
  fn();  // warm-up
  torch::cuda::synchronize();
  const int reps = 10;
  const auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r) fn();
  torch::cuda::synchronize();  // sync point: timing only
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
}

enum class SdpaBackend { Flash, CuDNN, MemEfficient };
// Forces one SDPA backend for the duration of `fn` (LibTorch's global SDP flags, restored afterwards).
// A backend that rejects the shape or GPU is reported as nan.
double time_sdpa(SdpaBackend backend, const std::function<void()>& fn) {
  auto& ctx = at::globalContext();
  const bool flash = ctx.userEnabledFlashSDP(), cudnn = ctx.userEnabledCuDNNSDP(),
             mem = ctx.userEnabledMemEfficientSDP(), math = ctx.userEnabledMathSDP();
  ctx.setSDPUseFlash(backend == SdpaBackend::Flash);
  ctx.setSDPUseCuDNN(backend == SdpaBackend::CuDNN);
  ctx.setSDPUseMemEfficient(backend == SdpaBackend::MemEfficient);
  ctx.setSDPUseMath(false);
  double ms = std::nan("");
  try {
    ms = cuda_time_ms(fn);
  } catch (const std::exception&) {
  }
  ctx.setSDPUseFlash(flash);
  ctx.setSDPUseCuDNN(cudnn);
  ctx.setSDPUseMemEfficient(mem);
  ctx.setSDPUseMath(math);
  return ms;
}

double time_or_nan(const std::function<void()>& fn) {
  try {
    return cuda_time_ms(fn);
  } catch (const std::exception&) {
    return std::nan("");
  }
}

// fwd (+ bwd through autograd) of one packed-varlen implementation on [T, H, D] inputs.
std::function<void()> varlen_call(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& dout,
                                  const PackedSequences& seqs, double scale, bool causal, AttentionImpl impl, bool bwd) {
  return [=] {
    at::Tensor qg = q.detach().requires_grad_(bwd), kg = k.detach().requires_grad_(bwd), vg = v.detach().requires_grad_(bwd);
    at::Tensor out = sft::kernels::varlen_attention(qg, kg, vg, seqs, scale, causal, impl);
    if (bwd) torch::autograd::grad({out}, {qg, kg, vg}, {dout});
  };
}

PackedSequences packed(const std::vector<int32_t>& lens, const at::Device& device) {
  std::vector<int32_t> offsets{0};
  for (int32_t len : lens) offsets.push_back(offsets.back() + len);
  const at::Tensor cu_host = at::tensor(offsets, at::kInt);
  return PackedSequences{cu_host.to(device), cu_host, *std::max_element(lens.begin(), lens.end())};
}

void run_cuda() {
  if (const std::string why = sft::kernels::cuda_unavailable_reason(); !why.empty()) throw std::runtime_error(why);
  const at::Device cuda(at::kCUDA, 0);
  auto randn = [&](int64_t t, int64_t h, int64_t d) { return at::randn({t, h, d}, at::kFloat).to(cuda).to(at::kBFloat16); };
  auto tflops = [](double flops, double ms) { return flops / (ms * 1e-3) / 1e12; };
  std::printf("TFLOP/s (FlashAttention's formula: fwd 4 B L^2 H D, /2 causal; fwd+bwd 3.5 x fwd), bf16, 16k tokens per "
              "run, model dim 2048 (H = 2048 / D), mean of 10 after a warm-up. ours = fused; flash/cudnn/memeff = SDPA "
              "backends on [B, H, L, D]; varlen = LibTorch's FlashAttention-2 varlen (at::_flash_attention_forward and, "
              "through autograd, _flash_attention_backward) with cu_seqlens; nan = the backend refused the shape.\n\n");
  std::printf("| seqlen | D | causal | ours fwd | flash fwd | cudnn fwd | memeff fwd | varlen fwd | ours fwd+bwd |"
              " flash fwd+bwd | cudnn fwd+bwd | memeff fwd+bwd | varlen fwd+bwd |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (int d : {64, 128}) {
    for (bool causal : {false, true}) {
      for (int len : {512, 1024, 2048, 4096, 8192}) {
        const int batch = 16384 / len, heads = 2048 / d;
        const int64_t total = static_cast<int64_t>(batch) * len;
        const PackedSequences seqs = packed(std::vector<int32_t>(batch, len), cuda);
        const double scale = 1.0 / std::sqrt(d);
        const at::Tensor q = randn(total, heads, d), k = randn(total, heads, d), v = randn(total, heads, d),
                         dout = randn(total, heads, d);
        auto bhld = [&](const at::Tensor& x) { return x.view({batch, len, heads, d}).transpose(1, 2); };  // SDPA layout
        const double fwd_flops = 4.0 * batch * len * static_cast<double>(len) * heads * d / (causal ? 2 : 1);
        auto sdpa = [&](bool bwd) {
          return [&, bwd] {
            at::Tensor qg = bhld(q).detach().requires_grad_(bwd), kg = bhld(k).detach().requires_grad_(bwd),
                       vg = bhld(v).detach().requires_grad_(bwd);
            at::Tensor out = at::scaled_dot_product_attention(qg, kg, vg, {}, 0.0, causal, scale);
            if (bwd) torch::autograd::grad({out}, {qg, kg, vg}, {bhld(dout)});
          };
        };
        double r[10];
        for (int bwd = 0; bwd < 2; ++bwd) {
          const double flops = (bwd ? 3.5 : 1.0) * fwd_flops;
          r[5 * bwd + 0] = tflops(flops, time_or_nan(varlen_call(q, k, v, dout, seqs, scale, causal, AttentionImpl::Fused, bwd)));
          r[5 * bwd + 1] = tflops(flops, time_sdpa(SdpaBackend::Flash, sdpa(bwd)));
          r[5 * bwd + 2] = tflops(flops, time_sdpa(SdpaBackend::CuDNN, sdpa(bwd)));
          r[5 * bwd + 3] = tflops(flops, time_sdpa(SdpaBackend::MemEfficient, sdpa(bwd)));
          r[5 * bwd + 4] = tflops(
              flops, time_or_nan(varlen_call(q, k, v, dout, seqs, scale, causal, AttentionImpl::TorchFlashVarlen, bwd)));
        }
        std::printf("| %d | %d | %d |", len, d, causal);
        for (double x : r) std::printf(" %.1f |", x);
        std::printf("\n");
        std::fflush(stdout);
      }
    }
  }
  // A packed batch of mixed lengths (what training sees): only the varlen kernels take it as one call;
  // sdpa is `attention: sdpa`, SDPA once per document. FLOPs count each document's own L^2.
  const std::vector<int32_t> mix{4096, 2048, 2048, 1500, 1024, 1024, 900, 700, 600, 512, 512, 400, 300,
                                 256, 200, 128, 100, 64, 33, 17, 1};
  std::printf("\nPacked mix: %zu documents of 1 to 4096 tokens in one row (%d tokens), causal, bf16, GQA Hq 16 / Hkv 4; "
              "TFLOP/s over the documents' own L^2\n\n",
              mix.size(), [&] { int t = 0; for (int x : mix) t += x; return t; }());
  std::printf("| D | ours fwd | varlen fwd | sdpa per doc fwd | ours fwd+bwd | varlen fwd+bwd | sdpa per doc fwd+bwd |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (int d : {64, 128}) {
    const PackedSequences seqs = packed(mix, cuda);
    const int64_t total = seqs.cu_seqlens_host[-1].item<int64_t>();
    const int hq = 16, hkv = 4;
    const at::Tensor q = randn(total, hq, d), k = randn(total, hkv, d), v = randn(total, hkv, d), dout = randn(total, hq, d);
    double fwd_flops = 0;
    for (int32_t len : mix) fwd_flops += 4.0 * static_cast<double>(len) * len * hq * d / 2;
    const double scale = 1.0 / std::sqrt(d);
    std::printf("| %d |", d);
    for (int bwd = 0; bwd < 2; ++bwd) {
      for (AttentionImpl impl : {AttentionImpl::Fused, AttentionImpl::TorchFlashVarlen, AttentionImpl::Sdpa}) {
        std::printf(" %.1f |", tflops((bwd ? 3.5 : 1.0) * fwd_flops,
                                      time_or_nan(varlen_call(q, k, v, dout, seqs, scale, true, impl, bwd))));
      }
    }
    std::printf("\n");
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    sft::kernels::load_cuda_plugin();  // first: before anything asks LibTorch about CUDA (kernels/cuda_plugin.h)
    at::manual_seed(0);
    if (argc > 1 && std::string(argv[1]) == "--cuda") {
      run_cuda();
    } else {
      run(argc > 1 ? std::max(1, std::atoi(argv[1])) : 5);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_attention: %s\n", e.what());
    return 1;
  }
}
