// kernels/cpu/fused_ops_cpu.cpp: CPU twins of RMSNorm, SwiGLU, rotary embedding and the linear
// cross-entropy chunk kernels. Inner loops are unit-stride `omp simd` loops (built with -O3
// -fopenmp, CMakeLists.txt), and the outer loop is at::parallel_for over rows or element ranges.
#include "kernels/cpu/fused_ops_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace sft::kernels::cpu {
namespace {
constexpr int64_t kElementGrain = 16384;  // elements per parallel task for the elementwise ops
}

template <typename Scalar>
void rmsnorm_forward(const Scalar* x, const Scalar* weight, Scalar* y, Scalar* rstd, int64_t rows, int64_t cols,
                     double eps) {
  at::parallel_for(0, rows, std::max<int64_t>(1, kElementGrain / std::max<int64_t>(cols, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const Scalar* xr = x + r * cols;
      Scalar* yr = y + r * cols;
      double ss = 0;  // fp64 sum of squares: the fp32 statistic is then correctly rounded, whatever the order
#pragma omp simd reduction(+ : ss)
      for (int64_t c = 0; c < cols; ++c) ss += static_cast<double>(xr[c]) * xr[c];
      const Scalar variance = static_cast<Scalar>(ss / static_cast<double>(cols));
      const Scalar inv = Scalar(1) / std::sqrt(variance + static_cast<Scalar>(eps));
      rstd[r] = inv;
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) yr[c] = weight[c] * (xr[c] * inv);
    }
  });
}

template <typename Scalar>
void rmsnorm_backward(const Scalar* dy, const Scalar* x, const Scalar* weight, const Scalar* rstd, Scalar* dx,
                      Scalar* dweight, int64_t rows, int64_t cols) {
  // Each task sums its rows' dy * xhat into its own partial row; the partials are added in task order.
  const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(rows, at::get_num_threads()));
  std::vector<Scalar> partial(dweight ? static_cast<size_t>(tasks * cols) : 0, Scalar(0));
  const int64_t rows_per_task = (rows + tasks - 1) / tasks;
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t task = t0; task < t1; ++task) {
      Scalar* acc = dweight ? partial.data() + task * cols : nullptr;
      for (int64_t r = task * rows_per_task; r < std::min(rows, (task + 1) * rows_per_task); ++r) {
        const Scalar* xr = x + r * cols;
        const Scalar* gr = dy + r * cols;
        Scalar* dxr = dx + r * cols;
        const Scalar inv = rstd[r];
        // The composite's autograd order (mul, rsqrt, mean, pow backward), so fp32 rounding follows it:
        //   dr = sum(w*dy * x); dm = (-0.5 * dr) * rstd^3 / cols; dx = w*dy * rstd + dm * (2 * x)
        double dr = 0;
#pragma omp simd reduction(+ : dr)
        for (int64_t c = 0; c < cols; ++c) dr += static_cast<double>((weight[c] * gr[c]) * xr[c]);
        const Scalar dm = (Scalar(-0.5) * static_cast<Scalar>(dr)) * (inv * inv * inv) / static_cast<Scalar>(cols);
#pragma omp simd
        for (int64_t c = 0; c < cols; ++c) dxr[c] = (weight[c] * gr[c]) * inv + dm * (Scalar(2) * xr[c]);
        if (acc) {
#pragma omp simd
          for (int64_t c = 0; c < cols; ++c) acc[c] += gr[c] * (xr[c] * inv);
        }
      }
    }
  });
  if (!dweight) return;
  std::fill(dweight, dweight + cols, Scalar(0));
  for (int64_t task = 0; task < tasks; ++task) {
    const Scalar* acc = partial.data() + task * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) dweight[c] += acc[c];
  }
}

namespace {
// e^x for SwiGLU's sigmoid in plain float arithmetic that `omp simd` vectorises (std::exp does not without
// -ffast-math): x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two so n ln2 is exact), e^r by its Taylor
// series to r^7 (truncation below 3e-9 relative), times 2^n built in the exponent bits. x is clamped to
// [-80, 44]: there 1 / (1 + e^x) is exactly 1 at the low end, and at the high end it is 7.8e-20 instead
// of e^-x, but never a denormal (a vectorised select computes both sides of the clamp, and g / (1 + e^88)
// was a denormal for every element: 10x slower). Within 2 ulp of std::exp on that range
// (CpuExp.WithinTwoUlpOfStdExp).
inline float exp_vectorisable(float x) {
  x = std::min(std::max(x, -80.0f), 44.0f);
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const float n = (x * 1.44269504088896341f + kRound) - kRound;
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
// fp64 keeps libm's exp (the fp64 paths are reference checks).
inline double exp_vectorisable(double x) { return std::exp(x); }

}  // namespace

float exp_for_tests(float x) { return exp_vectorisable(x); }

template <typename Scalar>
void swiglu_forward(const Scalar* gate, const Scalar* up, Scalar* out, int64_t n) {
  at::parallel_for(0, n, kElementGrain, [&](int64_t i0, int64_t i1) {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) out[i] = gate[i] / (Scalar(1) + exp_vectorisable(-gate[i])) * up[i];
  });
}

template <typename Scalar>
void swiglu_backward(const Scalar* dout, const Scalar* gate, const Scalar* up, Scalar* dgate, Scalar* dup,
                     int64_t n) {
  at::parallel_for(0, n, kElementGrain, [&](int64_t i0, int64_t i1) {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) {
      const Scalar g = gate[i];
      const Scalar e = exp_vectorisable(-g);
      const Scalar sig = Scalar(1) / (Scalar(1) + e);
      dup[i] = dout[i] * (g / (Scalar(1) + e));  // silu(g) exactly as the forward rounds it
      dgate[i] = dout[i] * up[i] * sig * (Scalar(1) + g * (Scalar(1) - sig));
    }
  });
}

template <typename Scalar>
void rope(const Scalar* q, const Scalar* k, const Scalar* cos, const Scalar* sin, Scalar* q_out, Scalar* k_out,
          int64_t tokens, int q_heads, int k_heads, int head_dim, bool backward) {
  const int half = head_dim / 2;
  const int64_t per_token = static_cast<int64_t>(q_heads + k_heads) * head_dim;
  at::parallel_for(0, tokens, std::max<int64_t>(1, kElementGrain / std::max<int64_t>(per_token, 1)),
                   [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const Scalar* c = cos + t * head_dim;
      const Scalar* s = sin + t * head_dim;
      for (int h = 0; h < q_heads + k_heads; ++h) {
        const bool is_q = h < q_heads;
        const int64_t offset = (t * (is_q ? q_heads : k_heads) + (is_q ? h : h - q_heads)) * head_dim;
        const Scalar* in = (is_q ? q : k) + offset;
        Scalar* out = (is_q ? q_out : k_out) + offset;
        if (!backward) {
#pragma omp simd
          for (int j = 0; j < half; ++j) {
            out[j] = in[j] * c[j] - in[j + half] * s[j];
            out[j + half] = in[j + half] * c[j + half] + in[j] * s[j + half];
          }
        } else {
#pragma omp simd
          for (int j = 0; j < half; ++j) {
            out[j] = in[j] * c[j] + in[j + half] * s[j + half];
            out[j + half] = in[j + half] * c[j + half] - in[j] * s[j];
          }
        }
      }
    }
  });
}

template <typename Scalar>
void ce_chunk_stats(const Scalar* logits, const int64_t* targets, Scalar* row_max, Scalar* row_sum,
                    Scalar* target_logit, int64_t rows, int64_t cols, int64_t vocab_offset) {
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const Scalar* l = logits + r * cols;
      Scalar m = -std::numeric_limits<Scalar>::infinity();
#pragma omp simd reduction(max : m)
      for (int64_t c = 0; c < cols; ++c) m = std::max(m, l[c]);
      Scalar s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t c = 0; c < cols; ++c) s += std::exp(l[c] - m);
      const Scalar new_m = std::max(row_max[r], m);
      row_sum[r] = row_sum[r] * std::exp(row_max[r] - new_m) + s * std::exp(m - new_m);
      row_max[r] = new_m;
      const int64_t t = targets[r] - vocab_offset;
      if (t >= 0 && t < cols) target_logit[r] = l[t];
    }
  });
}

template <typename Scalar>
void ce_chunk_grad(Scalar* logits, const Scalar* lse, const int64_t* targets, Scalar grad_scale, int64_t rows,
                   int64_t cols, int64_t vocab_offset) {
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      Scalar* l = logits + r * cols;
      const Scalar lr = lse[r];
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) l[c] = std::exp(l[c] - lr) * grad_scale;
      const int64_t t = targets[r] - vocab_offset;
      if (t >= 0 && t < cols) l[t] -= grad_scale;
    }
  });
}

int parallel_for_threads_used(int64_t tasks) {
  std::vector<char> seen(static_cast<size_t>(std::max(at::get_num_threads(), 1)), 0);
  at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) { seen[static_cast<size_t>(at::get_thread_num())] = 1; });
  int used = 0;
  for (char s : seen) used += s;
  return used;
}

#define SFT_INSTANTIATE(Scalar)                                                                              \
  template void rmsnorm_forward<Scalar>(const Scalar*, const Scalar*, Scalar*, Scalar*, int64_t, int64_t,   \
                                        double);                                                            \
  template void rmsnorm_backward<Scalar>(const Scalar*, const Scalar*, const Scalar*, const Scalar*, Scalar*, \
                                         Scalar*, int64_t, int64_t);                                        \
  template void swiglu_forward<Scalar>(const Scalar*, const Scalar*, Scalar*, int64_t);                     \
  template void swiglu_backward<Scalar>(const Scalar*, const Scalar*, const Scalar*, Scalar*, Scalar*, int64_t); \
  template void rope<Scalar>(const Scalar*, const Scalar*, const Scalar*, const Scalar*, Scalar*, Scalar*,  \
                             int64_t, int, int, int, bool);                                                 \
  template void ce_chunk_stats<Scalar>(const Scalar*, const int64_t*, Scalar*, Scalar*, Scalar*, int64_t,   \
                                       int64_t, int64_t);                                                   \
  template void ce_chunk_grad<Scalar>(Scalar*, const Scalar*, const int64_t*, Scalar, int64_t, int64_t, int64_t);
SFT_INSTANTIATE(float)
SFT_INSTANTIATE(double)
#undef SFT_INSTANTIATE

}  // namespace sft::kernels::cpu
