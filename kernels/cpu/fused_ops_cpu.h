// kernels/cpu/fused_ops_cpu.h: the CPU twins of the fused ops (kernels/fused_ops_params.h describes the
// math and layouts): plain loops the compiler vectorises, at::parallel_for over rows / element ranges.
// Scalar is float or double (the binding computes bf16/fp16 inputs in float); Acc is the statistics type.
#pragma once
#include <cstdint>

namespace sft::kernels::cpu {

template <typename Scalar>
void rmsnorm_forward(const Scalar* x, const Scalar* weight, Scalar* y, Scalar* rstd, int64_t rows, int64_t cols,
                     double eps);
// dweight may be null (weight gradient not wanted).
template <typename Scalar>
void rmsnorm_backward(const Scalar* dy, const Scalar* x, const Scalar* weight, const Scalar* rstd, Scalar* dx,
                      Scalar* dweight, int64_t rows, int64_t cols);

template <typename Scalar>
void swiglu_forward(const Scalar* gate, const Scalar* up, Scalar* out, int64_t n);
template <typename Scalar>
void swiglu_backward(const Scalar* dout, const Scalar* gate, const Scalar* up, Scalar* dgate, Scalar* dup, int64_t n);

// q: [tokens, q_heads, head_dim], k: [tokens, k_heads, head_dim], cos/sin: [tokens, head_dim].
template <typename Scalar>
void rope(const Scalar* q, const Scalar* k, const Scalar* cos, const Scalar* sin, Scalar* q_out, Scalar* k_out,
          int64_t tokens, int q_heads, int k_heads, int head_dim, bool backward);

// One [rows, cols] chunk of logits at vocabulary offset `vocab_offset` (see CeChunkStatsParams).
template <typename Scalar>
void ce_chunk_stats(const Scalar* logits, const int64_t* targets, Scalar* row_max, Scalar* row_sum,
                    Scalar* target_logit, int64_t rows, int64_t cols, int64_t vocab_offset);
template <typename Scalar>
void ce_chunk_grad(Scalar* logits, const Scalar* lse, const int64_t* targets, Scalar grad_scale, int64_t rows,
                   int64_t cols, int64_t vocab_offset);

// The twins' vectorisable float exp (SwiGLU's sigmoid), exposed for its accuracy test.
float exp_for_tests(float x);

// How many threads an at::parallel_for over `tasks` items ran on, from a file built as the twins are: 1
// where at::parallel_for compiled to a serial loop (a file built without -fopenmp). Test-only probe.
int parallel_for_threads_used(int64_t tasks);

}  // namespace sft::kernels::cpu
