// kernels/cached_attention.cpp: kv_cache_attention, the attention of a decoding step's new rows over a
// key/value cache (kernels/ops.h), and its fp64 reference (kernels/cached_attention.h). Decoding reads
// one row per sequence per step, so the math is a scores / softmax / weighted-sum pass per document in
// fp32 with ATen ops (one bmm each way over all kv heads), on whatever device the cache lives on.
#include "kernels/cached_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace sft::kernels {
namespace {

// Attention of n new query rows over L = past + n cached positions; row i sees keys [0, past + i].
//   q: [n, Hq, D]; k, v: [L, Hkv, D] -> [n, Hq, D] in q's dtype. Math in fp32.
// Query head h uses kv head h / (Hq / Hkv), as transformers' repeat_kv.
at::Tensor attend_cached_document(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  const int64_t n = q.size(0), hq = q.size(1), d = q.size(2);
  const int64_t length = k.size(0), hkv = k.size(1), group = hq / hkv, past = length - n;
  at::Tensor qf = q.to(at::kFloat).view({n, hkv, group, d}).permute({1, 2, 0, 3}).reshape({hkv, group * n, d});
  at::Tensor kf = k.to(at::kFloat).permute({1, 2, 0});  // [Hkv, D, L]
  at::Tensor vf = v.to(at::kFloat).permute({1, 0, 2});  // [Hkv, L, D]
  at::Tensor scores = at::bmm(qf, kf).mul_(scale);       // [Hkv, G*n, L]
  if (n > 1) {
    const at::TensorOptions positions = at::TensorOptions().dtype(at::kLong).device(q.device());
    at::Tensor key_pos = at::arange(length, positions);
    at::Tensor query_pos = at::arange(past, past + n, positions);
    at::Tensor masked = key_pos.unsqueeze(0) > query_pos.unsqueeze(1);  // [n, L]
    scores = scores.view({hkv, group, n, length})
                 .masked_fill(masked, -std::numeric_limits<float>::infinity())
                 .view({hkv, group * n, length});
  }
  at::Tensor out = at::bmm(scores.softmax(-1), vf);  // [Hkv, G*n, D]
  return out.view({hkv, group, n, d}).permute({2, 0, 1, 3}).reshape({n, hq, d}).to(q.scalar_type());
}

struct Documents {
  at::Tensor cu, starts, lengths;  // int64 CPU, contiguous
  int64_t count = 0;
};

Documents check_inputs(const at::Tensor& q, const KvCacheView& cache, const PackedSequences& seqs) {
  TORCH_CHECK(q.dim() == 3, "kv_cache_attention: q must be [T, Hq, D], got ", q.sizes());
  TORCH_CHECK(cache.keys.dim() == 3 && cache.keys.sizes() == cache.values.sizes(),
              "kv_cache_attention: cached keys ", cache.keys.sizes(), " and values ", cache.values.sizes(),
              " must both be [R, Hkv, D]");
  TORCH_CHECK(cache.keys.size(2) == q.size(2) && q.size(1) % cache.keys.size(1) == 0,
              "kv_cache_attention: q ", q.sizes(), " does not fit cached keys ", cache.keys.sizes());
  TORCH_CHECK(seqs.cu_seqlens_host.defined() && seqs.cu_seqlens_host.device().is_cpu() &&
                  seqs.cu_seqlens_host.dim() == 1 && seqs.cu_seqlens_host.numel() >= 2,
              "kv_cache_attention: cu_seqlens_host must be a CPU vector of at least 2 offsets");
  Documents docs;
  docs.cu = seqs.cu_seqlens_host.to(at::kLong).contiguous();
  docs.count = docs.cu.numel() - 1;
  docs.starts = cache.starts_host.to(at::kLong).contiguous();
  docs.lengths = cache.lengths_host.to(at::kLong).contiguous();
  TORCH_CHECK(docs.starts.device().is_cpu() && docs.lengths.device().is_cpu() && docs.starts.numel() == docs.count &&
                  docs.lengths.numel() == docs.count,
              "kv_cache_attention: starts_host and lengths_host must be CPU vectors of one entry per document (",
              docs.count, ")");
  TORCH_CHECK(docs.cu.data_ptr<int64_t>()[docs.count] == q.size(0), "kv_cache_attention: cu_seqlens ends at ",
              docs.cu.data_ptr<int64_t>()[docs.count], " but q has ", q.size(0), " rows");
  const int64_t *cu = docs.cu.data_ptr<int64_t>(), *start = docs.starts.data_ptr<int64_t>(),
                *length = docs.lengths.data_ptr<int64_t>();
  for (int64_t d = 0; d < docs.count; ++d) {
    const int64_t n = cu[d + 1] - cu[d];
    TORCH_CHECK(n >= 1 && length[d] >= n && start[d] >= 0 && start[d] + length[d] <= cache.keys.size(0),
                "kv_cache_attention: document ", d, " has ", n, " new rows and cached rows [", start[d], ", ",
                start[d] + length[d], ") of ", cache.keys.size(0));
  }
  return docs;
}

}  // namespace

at::Tensor kv_cache_attention(const at::Tensor& q, const at::Tensor& k_new, const at::Tensor& v_new,
                              const KvCacheView& cache, const PackedSequences& seqs, double softmax_scale,
                              AttentionImpl impl) {
  const Documents docs = check_inputs(q, cache, seqs);
  const int64_t *cu = docs.cu.data_ptr<int64_t>(), *start = docs.starts.data_ptr<int64_t>(),
                *length = docs.lengths.data_ptr<int64_t>();
  bool prefill = true;  // no document has positions before this step's rows
  for (int64_t d = 0; d < docs.count; ++d) prefill = prefill && length[d] == cu[d + 1] - cu[d];
  if (prefill) return varlen_attention(q, k_new, v_new, seqs, softmax_scale, /*causal=*/true, impl);
  if (docs.count == 1) {
    return attend_cached_document(q, cache.keys.narrow(0, start[0], length[0]),
                                  cache.values.narrow(0, start[0], length[0]), softmax_scale);
  }
  std::vector<at::Tensor> outputs;
  outputs.reserve(docs.count);
  for (int64_t d = 0; d < docs.count; ++d) {
    outputs.push_back(attend_cached_document(q.slice(0, cu[d], cu[d + 1]), cache.keys.narrow(0, start[d], length[d]),
                                             cache.values.narrow(0, start[d], length[d]), softmax_scale));
  }
  return at::cat(outputs, 0);
}

at::Tensor reference_kv_cache_attention(const at::Tensor& q, const KvCacheView& cache, const PackedSequences& seqs,
                                        double softmax_scale) {
  const Documents docs = check_inputs(q, cache, seqs);
  const int64_t *cu = docs.cu.data_ptr<int64_t>(), *start = docs.starts.data_ptr<int64_t>(),
                *length = docs.lengths.data_ptr<int64_t>();
  at::Tensor qd = q.to(at::kCPU, at::kDouble).contiguous();
  at::Tensor kd = cache.keys.to(at::kCPU, at::kDouble).contiguous();
  at::Tensor vd = cache.values.to(at::kCPU, at::kDouble).contiguous();
  const int64_t hq = q.size(1), dim = q.size(2), hkv = kd.size(1), group = hq / hkv;
  at::Tensor out = at::zeros(q.sizes(), qd.options());
  auto qa = qd.accessor<double, 3>(), ka = kd.accessor<double, 3>(), va = vd.accessor<double, 3>();
  auto oa = out.accessor<double, 3>();
  for (int64_t d = 0; d < docs.count; ++d) {
    const int64_t n = cu[d + 1] - cu[d];
    for (int64_t i = 0; i < n; ++i) {
      const int64_t row = cu[d] + i, visible = length[d] - n + i + 1;  // positions [0, visible)
      for (int64_t h = 0; h < hq; ++h) {
        const int64_t kv_head = h / group;
        std::vector<double> scores(visible);
        double best = -std::numeric_limits<double>::infinity(), total = 0;
        for (int64_t j = 0; j < visible; ++j) {
          double dot = 0;
          for (int64_t c = 0; c < dim; ++c) dot += qa[row][h][c] * ka[start[d] + j][kv_head][c];
          scores[j] = dot * softmax_scale;
          best = std::max(best, scores[j]);
        }
        for (int64_t j = 0; j < visible; ++j) total += (scores[j] = std::exp(scores[j] - best));
        for (int64_t j = 0; j < visible; ++j) {
          for (int64_t c = 0; c < dim; ++c) oa[row][h][c] += scores[j] / total * va[start[d] + j][kv_head][c];
        }
      }
    }
  }
  return out;
}

}  // namespace sft::kernels
