// tests/bench_ops_kernels.cpp: `bench_ops ops [REPS]`: each fused op against the composite ATen code it
// replaces, on the CPU, at SmolLM2-135M's shapes on a packed micro-batch of 4 x 512 tokens (hidden 576,
// MLP 1536, 9 q / 3 kv heads of 64; LoRA's dropout + A on one 512-token row, rank 16): median ms of the forward and of forward+backward, and the GB/s
// of the forward's and backward's compulsory memory traffic. Then the loss memory (peak RSS growth) of
// the fused linear cross-entropy against plain logits at V = 49,152 and 128,256. The LoRA group and the fused projections
// (q/k/v, gate/up as one GEMM) run at T = 512.
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "kernels/dropout_linear.h"
#include "kernels/fused_ops.h"

namespace {

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median_ms(int reps, const std::function<void()>& fn) {
  fn();  // warm-up
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const double t0 = now_ms();
    fn();
    t.push_back(now_ms() - t0);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Inputs that require grad, fresh per op.
at::Tensor leaf(at::IntArrayRef sizes) { return torch::randn(sizes).requires_grad_(true); }

struct OpCase {
  std::string name;
  double fwd_bytes, bwd_bytes;  // compulsory traffic: inputs read + outputs written, fp32
  std::function<at::Tensor(bool fused)> run;  // returns a tensor to back-propagate a ones-like grad from
};

void bench_op(const OpCase& c, int reps) {
  for (bool fused : {false, true}) {
    const double fwd = median_ms(reps, [&] { c.run(fused); });
    const double both = median_ms(reps, [&] {
      at::Tensor out = c.run(fused);
      out.backward(at::ones_like(out));
    });
    const double bwd = std::max(both - fwd, 1e-6);
    std::printf("| %s | %s | %.3f | %.1f | %.3f | %.1f |\n", c.name.c_str(), fused ? "fused" : "composite ATen",
                fwd, c.fwd_bytes / fwd / 1e6, bwd, c.bwd_bytes / bwd / 1e6);
  }
}

int64_t status_kib(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(key, 0) == 0) return std::stoll(line.substr(std::string(key).size()));
  }
  return -1;
}

// Peak RSS growth while fn runs, in MiB (resets the high-water mark through /proc/self/clear_refs).
double peak_rss_growth_mib(const std::function<void()>& fn) {
  { std::ofstream("/proc/self/clear_refs") << "5"; }
  const int64_t before = status_kib("VmRSS:");
  fn();
  const int64_t peak = status_kib("VmHWM:");
  return (peak - before) / 1024.0;
}

}  // namespace

int ops_command(int argc, char** argv) {
  const int reps = argc > 2 ? std::stoi(argv[2]) : 20;
  torch::manual_seed(0);
  const int64_t tokens = 2048, hidden = 576, inner = 1536, hq = 9, hkv = 3, d = 64;
  std::printf("CPU, fp32, %d threads, %d reps (median); T = %lld tokens (projections: 512)\n\n", at::get_num_threads(), reps,
              static_cast<long long>(tokens));
  std::printf("| op | implementation | forward ms | forward GB/s | backward ms | backward GB/s |\n");
  std::printf("|---|---|---:|---:|---:|---:|\n");
  const double f = 4.0;
  {
    at::Tensor x = leaf({tokens, hidden}), w = leaf({hidden});
    const double n = static_cast<double>(tokens * hidden);
    bench_op({"RMSNorm [2048, 576]", 2 * n * f, 3 * n * f,
              [&](bool fused) {
                return fused ? sft::kernels::fused_rms_norm(x, w, 1e-5) : sft::kernels::composite_rms_norm(x, w, 1e-5);
              }},
             reps);
  }
  {
    at::Tensor g = leaf({tokens, inner}), u = leaf({tokens, inner});
    const double n = static_cast<double>(tokens * inner);
    bench_op({"SwiGLU [2048, 1536]", 3 * n * f, 5 * n * f,
              [&](bool fused) { return fused ? sft::kernels::fused_swiglu(g, u) : sft::kernels::composite_swiglu(g, u); }},
             reps);
  }
  {
    at::Tensor q = leaf({tokens, hq, d}), k = leaf({tokens, hkv, d});
    at::Tensor cos = torch::randn({tokens, d}), sin = torch::randn({tokens, d});
    const double n = static_cast<double>(tokens * (hq + hkv) * d);
    const double tables = 2.0 * tokens * d;
    bench_op({"RoPE q [2048, 9, 64] + k [2048, 3, 64]", (2 * n + tables) * f, (2 * n + tables) * f,
              [&](bool fused) {
                auto [qo, ko] = fused ? sft::kernels::fused_rotary(q, k, cos, sin)
                                      : sft::kernels::composite_rotary(q, k, cos, sin);
                return at::cat({qo.flatten(), ko.flatten()});
              }},
             reps);
  }
  // LoRA's A with dropout 0.05, rank 16, on one 512-token row: fused Philox mask vs ATen dropout + linear.
  for (int64_t in : {hidden, inner}) {
    const int64_t t = 512, r = 16;
    at::Tensor x = leaf({t, in}), a = leaf({r, in});
    const double n = static_cast<double>(t * in);
    bench_op({"dropout 0.05 + linear [512, " + std::to_string(in) + "] -> 16", (n + r * in + t * r) * f,
              (2 * n + 2 * r * in + t * r) * f,
              [&](bool fused) {
                return fused ? sft::kernels::dropout_linear(x, a, 0.05) : sft::kernels::composite_dropout_linear(x, a, 0.05);
              }},
             reps);
  }
  // Fused projections at T = 512 (one packed row): q/k/v [576 -> 576 + 192 + 192] and gate/up
  // [576 -> 2 x 1536], one GEMM over adjacent weights against one at::linear per weight; trained weights
  // (full fine-tuning: d x and d W) and frozen ones (LoRA's base: d x only).
  for (bool trained : {true, false}) {
    const int64_t rows = 512;
    for (const std::vector<int64_t>& outs : {std::vector<int64_t>{hq * d, hkv * d, hkv * d}, std::vector<int64_t>{inner, inner}}) {
      std::vector<at::Tensor> weights;
      int64_t total = 0;
      for (int64_t o : outs) {
        weights.push_back((torch::randn({o, hidden}) * 0.02).requires_grad_(trained));
        total += o;
      }
      sft::kernels::make_rows_adjacent(weights);
      at::Tensor x = leaf({rows, hidden});
      const double w_bytes = static_cast<double>(total * hidden) * f;
      const double io = static_cast<double>(rows) * (hidden + total) * f;
      const std::string name = std::string(outs.size() == 3 ? "q/k/v" : "gate/up") + " [512, 576] -> " +
                               std::to_string(total) + (trained ? ", weights trained" : ", weights frozen");
      bench_op({name, w_bytes + io, (trained ? 2 : 1) * w_bytes + 2 * io,
                [&](bool fused) {
                  std::vector<at::Tensor> out = fused ? sft::kernels::fused_linear_group(x, weights, {})
                                                      : sft::kernels::composite_linear_group(x, weights, {});
                  for (at::Tensor& o : out) o = o.flatten();
                  return at::cat(out);  // the same copy on both sides
                }},
               reps);
    }
  }
  // LoRA r=8 over frozen q/k/v and gate/up at T = 512: the group as one node (kernels/lora_group.cpp)
  // against the composite (x W^T, x A^T, the B addmm per projection; autograd adds the d x parts).
  for (const std::vector<int64_t>& outs : {std::vector<int64_t>{hq * d, hkv * d, hkv * d}, std::vector<int64_t>{inner, inner}}) {
    const int64_t rows = 512, r = 8;
    std::vector<at::Tensor> weights, lora_A, lora_B;
    std::vector<double> scales;
    int64_t total = 0;
    for (int64_t o : outs) {
      weights.push_back(torch::randn({o, hidden}) * 0.02);
      lora_A.push_back(leaf({r, hidden}));
      lora_B.push_back(leaf({o, r}));
      scales.push_back(2.0);
      total += o;
    }
    at::Tensor x = leaf({rows, hidden});
    const double w_bytes = static_cast<double>(total * hidden) * f;
    const double io = static_cast<double>(rows) * (hidden + total) * f;
    const std::string name = std::string("LoRA r=8 ") + (outs.size() == 3 ? "q/k/v" : "gate/up") + " [512, 576] -> " +
                             std::to_string(total) + ", base frozen";
    bench_op({name, w_bytes + io, w_bytes + 2 * io,
              [&](bool fused) {
                std::vector<at::Tensor> out =
                    fused ? sft::kernels::lora_group_linear(x, weights, {}, lora_A, lora_B, scales)
                          : sft::kernels::composite_lora_group_linear(x, weights, {}, lora_A, lora_B, scales);
                for (at::Tensor& o : out) o = o.flatten();
                return at::cat(out);  // the same copy on both sides
              }},
             reps);
  }
  {
    const int64_t n = 1024, vocab = 49152;
    at::Tensor h = leaf({n, hidden});
    at::Tensor w = torch::randn({vocab, hidden}) * 0.02;
    at::Tensor t = torch::randint(vocab, {n}, at::kLong);
    const double bytes = (static_cast<double>(n) * hidden + static_cast<double>(vocab) * hidden) * f;
    bench_op({"linear CE N=1024, V=49152", bytes, 2 * bytes,
              [&](bool fused) {
                return fused ? sft::kernels::fused_linear_cross_entropy_sum(h, w, t)
                             : sft::kernels::composite_linear_cross_entropy_sum(h, w, t);
              }},
             std::max(3, reps / 5));
  }
  std::printf("\nLoss memory, forward + backward of N = 2048 target rows, hidden 576, fp32 (peak RSS growth):\n\n");
  std::printf("| vocab | plain logits MiB | fused linear CE MiB | fused chunk (rows x vocab) |\n|---:|---:|---:|---|\n");
  for (int64_t vocab : {int64_t{49152}, int64_t{128256}}) {
    const int64_t n = 2048;
    at::Tensor w = torch::randn({vocab, hidden}) * 0.02;
    at::Tensor t = torch::randint(vocab, {n}, at::kLong);
    auto run = [&](bool fused) {
      at::Tensor h = leaf({n, hidden});
      at::Tensor loss = fused ? sft::kernels::fused_linear_cross_entropy_sum(h, w, t)
                              : sft::kernels::composite_linear_cross_entropy_sum(h, w, t);
      loss.backward();
    };
    const double fused_mib = peak_rss_growth_mib([&] { run(true); });
    const double plain_mib = peak_rss_growth_mib([&] { run(false); });
    const sft::kernels::LinearCeChunks chunks;
    std::printf("| %lld | %.0f | %.0f | %lld x %lld |\n", static_cast<long long>(vocab), plain_mib, fused_mib,
                static_cast<long long>(chunks.rows), static_cast<long long>(chunks.vocab));
  }
  return 0;
}
