// kernels/fused_ops_params.h: the torch-free launcher layer of the fused elementwise ops and the fused
// linear cross-entropy (RMSNorm, SwiGLU, rotary embedding, chunked softmax statistics and gradient):
// plain parameter structs (pointers, sizes; every tensor contiguous, row-major) and the CUDA launcher
// declarations (kernels/rmsnorm.cu, swiglu.cu, rope.cu, linear_ce.cu). Includes neither torch nor the
// CUDA runtime. Each launcher returns the cudaGetLastError() code of its launches (0 = success).
#pragma once
#include <cstdint>

typedef struct CUstream_st* cudaStream_t;

namespace sft::kernels {

enum class OpDtype : int { Float32 = 0, BFloat16 = 1, Float16 = 2 };

// y = weight * (x * rstd) per row, rstd = 1 / sqrt(mean(x^2) + eps) in fp32.
struct RmsNormFwdParams {
  const void* x = nullptr;       // [rows, cols]
  const void* weight = nullptr;  // [cols], same dtype as x
  void* y = nullptr;             // [rows, cols]
  float* rstd = nullptr;         // [rows] fp32, saved for backward
  int64_t rows = 0, cols = 0;
  float eps = 1e-6f;
  OpDtype dtype = OpDtype::Float32;
};
// dx = rstd * (w*dy - xhat * mean(w*dy*xhat)), dweight = sum over rows of dy * xhat (xhat = x * rstd).
struct RmsNormBwdParams {
  const void* dy = nullptr;  // [rows, cols]
  const void* x = nullptr;
  const void* weight = nullptr;
  const float* rstd = nullptr;
  void* dx = nullptr;                // [rows, cols]
  float* dweight_partial = nullptr;  // [partial_blocks, cols] fp32 scratch (one row per block, no atomics)
  void* dweight = nullptr;           // [cols] in x's dtype; null: weight gradient not wanted
  int64_t rows = 0, cols = 0;
  int partial_blocks = 0;            // rmsnorm_partial_blocks(rows)
  OpDtype dtype = OpDtype::Float32;
};
inline int rmsnorm_partial_blocks(int64_t rows) { return rows < 256 ? static_cast<int>(rows < 1 ? 1 : rows) : 256; }

// out = silu(gate) * up; backward recomputes silu from gate (nothing else is stored).
struct SwigluFwdParams {
  const void* gate = nullptr;  // [n]
  const void* up = nullptr;    // [n]
  void* out = nullptr;         // [n]
  int64_t n = 0;
  OpDtype dtype = OpDtype::Float32;
};
struct SwigluBwdParams {
  const void* dout = nullptr;
  const void* gate = nullptr;
  const void* up = nullptr;
  void* dgate = nullptr;
  void* dup = nullptr;
  int64_t n = 0;
  OpDtype dtype = OpDtype::Float32;
};

// Rotary embedding of q and k in one launch: out = x * cos + rotate_half(x) * sin, per token t the tables'
// row t (positions restart per packed document in the tables). backward = true applies the transpose:
// dx = dy * cos + rotate_half^T(dy * sin).
struct RopeParams {
  const void* q = nullptr;    // [tokens, q_heads, head_dim]
  const void* k = nullptr;    // [tokens, k_heads, head_dim]
  const void* cos = nullptr;  // [tokens, head_dim]
  const void* sin = nullptr;  // [tokens, head_dim]
  void* q_out = nullptr;
  void* k_out = nullptr;
  int64_t tokens = 0;
  int q_heads = 0, k_heads = 0, head_dim = 0;
  bool backward = false;
  OpDtype dtype = OpDtype::Float32;
};

// One [rows, cols] fp32 chunk of logits (vocabulary ids vocab_offset .. vocab_offset + cols) against the
// rows' targets (int64 [rows]).
// Forward: online logsumexp: running max / sum of exp / the target's logit, per row (fp32 [rows] each;
// the caller starts them at -inf / 0 / 0).
struct CeChunkStatsParams {
  const float* logits = nullptr;
  const int64_t* targets = nullptr;
  float* row_max = nullptr;
  float* row_sum = nullptr;
  float* target_logit = nullptr;
  int64_t rows = 0, cols = 0, vocab_offset = 0;
};
// Backward, in place: logits <- (exp(logits - lse) - onehot(target)) * (*grad_scale).
struct CeChunkGradParams {
  float* logits = nullptr;
  const float* lse = nullptr;         // [rows]
  const int64_t* targets = nullptr;
  const float* grad_scale = nullptr;  // one fp32 on the device: d(loss sum)
  int64_t rows = 0, cols = 0, vocab_offset = 0;
};

// CUDA launchers (defined only when the build has CUDA).
int rmsnorm_forward_cuda(const RmsNormFwdParams& p, cudaStream_t stream);
int rmsnorm_backward_cuda(const RmsNormBwdParams& p, cudaStream_t stream);
int swiglu_forward_cuda(const SwigluFwdParams& p, cudaStream_t stream);
int swiglu_backward_cuda(const SwigluBwdParams& p, cudaStream_t stream);
int rope_cuda(const RopeParams& p, cudaStream_t stream);
int ce_chunk_stats_cuda(const CeChunkStatsParams& p, cudaStream_t stream);
int ce_chunk_grad_cuda(const CeChunkGradParams& p, cudaStream_t stream);

}  // namespace sft::kernels
