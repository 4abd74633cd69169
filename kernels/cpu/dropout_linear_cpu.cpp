// kernels/cpu/dropout_linear_cpu.cpp: the CPU twin of the dropout-mask pass (see
// kernels/cpu/dropout_linear_cpu.h). Arithmetic in float (double when either side is double):
// out = in * (draw < keep_below ? scale : 0), rounded once to the output type.
#include "kernels/cpu/dropout_linear_cpu.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <type_traits>

#include "kernels/dropout_mask.h"

namespace sft::kernels::cpu {
namespace {

constexpr int64_t kChunkGroups = 256;  // 1024 draws (4 KiB) per buffer fill: stays in L1

template <typename In, typename Out, typename Acc>
void apply_mask(const In* in, Out* out, const uint32_t* draws, int64_t n, uint64_t keep_below, Acc scale) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const Acc m = static_cast<uint64_t>(draws[i]) < keep_below ? scale : Acc(0);
    out[i] = static_cast<Out>(static_cast<Acc>(in[i]) * m);
  }
}

// Elements [e0, e1) of the flattened input.
template <typename X, typename C>
void mask_range(const DropoutMaskParams& p, int64_t e0, int64_t e1) {
  using Acc = std::conditional_t<std::is_same_v<X, double> || std::is_same_v<C, double>, double, float>;
  const Acc scale = static_cast<Acc>(p.scale);
  uint32_t draws[4 * kChunkGroups];
  for (int64_t g0 = e0 / 4; 4 * g0 < e1; g0 += kChunkGroups) {
    const int64_t groups = std::min(kChunkGroups, (e1 + 3) / 4 - g0);
    for (int64_t g = 0; g < groups; ++g) dropout_draws(p.seed, p.offset, static_cast<uint64_t>(g0 + g), draws + 4 * g);
    const int64_t lo = std::max(e0, 4 * g0), hi = std::min(e1, 4 * (g0 + groups));
    const uint32_t* d = draws + (lo - 4 * g0);
    if (p.x) {
      apply_mask(static_cast<const X*>(p.x) + lo, static_cast<C*>(p.x_dropped) + lo, d, hi - lo, p.keep_below, scale);
    }
    if (p.grad) {
      apply_mask(static_cast<const C*>(p.grad) + lo, static_cast<X*>(p.grad_dropped) + lo, d, hi - lo, p.keep_below,
                 scale);
    }
  }
}

}  // namespace

template <typename X, typename C>
void dropout_mask(const DropoutMaskParams& p) {
  if (p.rows <= 0 || p.cols <= 0) return;
  // At least ~16k elements per task, so a small LoRA input stays on one thread.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / p.cols);
  at::parallel_for(0, p.rows, grain, [&](int64_t r0, int64_t r1) { mask_range<X, C>(p, r0 * p.cols, r1 * p.cols); });
}

#define SFT_DROPOUT_MASK_INSTANCE(X, C) template void dropout_mask<X, C>(const DropoutMaskParams&);
#define SFT_DROPOUT_MASK_INSTANCES(X)        \
  SFT_DROPOUT_MASK_INSTANCE(X, float)        \
  SFT_DROPOUT_MASK_INSTANCE(X, double)       \
  SFT_DROPOUT_MASK_INSTANCE(X, c10::BFloat16) \
  SFT_DROPOUT_MASK_INSTANCE(X, c10::Half)
SFT_DROPOUT_MASK_INSTANCES(float)
SFT_DROPOUT_MASK_INSTANCES(double)
SFT_DROPOUT_MASK_INSTANCES(c10::BFloat16)
SFT_DROPOUT_MASK_INSTANCES(c10::Half)
#undef SFT_DROPOUT_MASK_INSTANCES
#undef SFT_DROPOUT_MASK_INSTANCE

}  // namespace sft::kernels::cpu
