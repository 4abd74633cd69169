// tests/bench_attention_main.cpp: the CPU attention benchmark behind scripts/bench_attention.sh. Times
// fp32 forward and forward+backward of the fused CPU twin against LibTorch's per-document SDPA on packed
// batches (1 to 4 documents per row), and prints a markdown table. `model.attention: auto` on the CPU
// picks the winner of this table (kernels/attention_dispatch.cpp, kCpuAutoImpl).
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <vector>

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

void run(int reps) {
  const Shape shapes[] = {{{1024}, 8, 8, 64, true},          {{1024}, 8, 2, 64, true},   {{1024}, 8, 2, 128, true},
                          {{512, 512}, 8, 2, 64, true},      {{256, 256, 256, 256}, 8, 2, 64, true},
                          {{1024}, 8, 2, 64, false},         {{2048}, 4, 1, 128, true},
                          {{300, 200, 150, 120, 100, 80, 50, 24}, 9, 3, 64, true}};
  std::printf("threads: %d, fp32, median of %d\n\n", at::get_num_threads(), reps);
  std::printf("| tokens | docs | Hq/Hkv | D | causal | twin fwd ms | sdpa fwd ms | twin fwd+bwd ms | sdpa fwd+bwd ms |"
              " fwd+bwd sdpa/twin |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  for (const Shape& s : shapes) {
    std::vector<int32_t> offsets{0};
    for (int32_t len : s.lens) offsets.push_back(offsets.back() + len);
    const int64_t total = offsets.back(), max_len = *std::max_element(s.lens.begin(), s.lens.end());
    const at::Tensor cu = at::tensor(offsets, at::kInt);
    const PackedSequences seqs{cu, cu, max_len};
    const at::Tensor q = at::randn({total, s.hq, s.d}), k = at::randn({total, s.hkv, s.d}),
                     v = at::randn({total, s.hkv, s.d}), dout = at::randn({total, s.hq, s.d});
    double ms[2][2];
    for (int which = 0; which < 2; ++which) {
      const AttentionImpl impl = which == 0 ? AttentionImpl::Fused : AttentionImpl::Sdpa;
      for (int with_bwd = 0; with_bwd < 2; ++with_bwd) {
        ms[which][with_bwd] = median_ms(
            [&] {
              at::Tensor qg = q.detach().requires_grad_(with_bwd == 1), kg = k.detach().requires_grad_(with_bwd == 1),
                         vg = v.detach().requires_grad_(with_bwd == 1);
              at::Tensor out = sft::kernels::varlen_attention(qg, kg, vg, seqs, 1.0 / std::sqrt(s.d), s.causal, impl);
              if (with_bwd) torch::autograd::grad({out}, {qg, kg, vg}, {dout});
            },
            reps);
      }
    }
    std::printf("| %lld | %zu | %d/%d | %d | %d | %.1f | %.1f | %.1f | %.1f | %.2f |\n", static_cast<long long>(total),
                s.lens.size(), s.hq, s.hkv, s.d, s.causal, ms[0][0], ms[1][0], ms[0][1], ms[1][1], ms[1][1] / ms[0][1]);
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const int reps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 5;
    at::manual_seed(0);
    run(reps);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_attention: %s\n", e.what());
    return 1;
  }
}
