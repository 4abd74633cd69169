// kernels/linear_ce.cu: the two per-chunk kernels of the fused linear cross-entropy on CUDA (the chunk's
// logits come from a cuBLAS GEMM in the binding, kernels/fused_ops.cpp). One block per row of the chunk:
//   stats: online logsumexp update of the row's running max and sum of exp, and the target's logit when
//          it falls inside this vocabulary chunk;
//   grad:  in place, logits <- (softmax - onehot(target)) * d(loss sum), from the saved logsumexp.
#include "kernels/fused_ops_common.cuh"

namespace sft::kernels {
namespace {

constexpr int kThreads = 256;

__global__ void ce_chunk_stats_kernel(CeChunkStatsParams p) {
  __shared__ float scratch[32];
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const float* l = p.logits + row * p.cols;
    float m = -INFINITY;
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) m = fmaxf(m, l[c]);
    m = dev::block_max(m, scratch);
    float s = 0.f;
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) s += expf(l[c] - m);
    s = dev::block_sum(s, scratch);
    if (threadIdx.x == 0) {
      const float old_m = p.row_max[row];
      const float new_m = fmaxf(old_m, m);
      p.row_sum[row] = p.row_sum[row] * expf(old_m - new_m) + s * expf(m - new_m);
      p.row_max[row] = new_m;
      const int64_t t = p.targets[row] - p.vocab_offset;
      if (t >= 0 && t < p.cols) p.target_logit[row] = l[t];
    }
  }
}

__global__ void ce_chunk_grad_kernel(CeChunkGradParams p) {
  const float scale = *p.grad_scale;
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    float* l = p.logits + row * p.cols;
    const float lse = p.lse[row];
    const int64_t t = p.targets[row] - p.vocab_offset;
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) {
      l[c] = (expf(l[c] - lse) - (c == t ? 1.f : 0.f)) * scale;
    }
  }
}

int grid_for(int64_t rows) { return static_cast<int>(rows < 65535 ? rows : 65535); }

}  // namespace

int ce_chunk_stats_cuda(const CeChunkStatsParams& p, cudaStream_t stream) {
  if (p.rows == 0) return 0;
  ce_chunk_stats_kernel<<<grid_for(p.rows), kThreads, 0, stream>>>(p);
  return static_cast<int>(cudaGetLastError());
}

int ce_chunk_grad_cuda(const CeChunkGradParams& p, cudaStream_t stream) {
  if (p.rows == 0) return 0;
  ce_chunk_grad_kernel<<<grid_for(p.rows), kThreads, 0, stream>>>(p);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace sft::kernels
