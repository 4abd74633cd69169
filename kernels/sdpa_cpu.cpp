// kernels/sdpa_cpu.cpp: sdpa_cpu_varlen_attention, the attention of packed documents on the CPU in one
// torch::autograd::Function, one document at a time: fp32/fp64 as exact math (bmm, softmax, bmm, with the
// query heads of a kv head stacked so GQA needs no repeated k/v; probabilities kept for backward),
// bf16/fp16 through LibTorch's CPU flash-attention kernel (at::_scaled_dot_product_flash_attention_for_cpu
// and its backward).
//
// Why not at::scaled_dot_product_attention per document, as before: on 3-D [H, L, D] views it takes the
// math backend as a dozen autograd nodes per document, and the slice / transpose / repeat_interleave / cat
// around it add a dozen more; the backward of each document's slice of q, k and v allocates and
// zero-fills a full [T, H, D] gradient, and the engine adds them up. Here the gradients are written
// straight into their rows (README "Training throughput", "The per-document attention graph").
#include "kernels/sdpa_cpu.h"

#include <torch/autograd.h>

#include <limits>
#include <vector>

namespace sft::kernels {
namespace {

struct Span {
  int64_t begin, len;
};

// The non-empty documents of cu_seqlens_host, checked to run from 0 to `total` without going back.
std::vector<Span> document_spans(const at::Tensor& cu_seqlens_host, int64_t total) {
  TORCH_CHECK(cu_seqlens_host.is_cpu() && cu_seqlens_host.dim() == 1 && cu_seqlens_host.numel() >= 2,
              "sdpa (CPU): cu_seqlens_host must be a CPU vector of at least 2 offsets");
  const at::Tensor off = cu_seqlens_host.to(at::kLong).contiguous();
  const int64_t* o = off.data_ptr<int64_t>();
  const int64_t n = off.numel() - 1;
  TORCH_CHECK(o[0] == 0 && o[n] == total, "sdpa (CPU): offsets run from ", o[0], " to ", o[n],
              ", not from 0 to the ", total, " tokens");
  std::vector<Span> spans;
  spans.reserve(static_cast<size_t>(n));
  for (int64_t s = 0; s < n; ++s) {
    TORCH_CHECK(o[s + 1] >= o[s], "sdpa (CPU): offset ", s + 1, " (", o[s + 1], ") is below offset ", s,
                " (", o[s], ")");
    if (o[s + 1] > o[s]) spans.push_back({o[s], o[s + 1] - o[s]});
  }
  return spans;
}

// fp32 and fp64 take exact math (LibTorch's bmm and softmax, as its SDPA math backend computes them): the
// flash kernel's exp is a fast approximation, and in fp32 training parity with transformers + PEFT it moved
// final LoRA weights by 1.2e-4 of their scale (TrainParity.*MatchesPeft allow 1e-4). bf16/fp16 take the
// flash kernel, whose approximation is far below their rounding.
bool uses_exact_math(const at::Tensor& q) { return q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble; }

// Rows [begin, begin + len) of a [T, H, D] tensor as the kernel's [1, H, L, D] (a view: the kernel reads
// strides, and its own outputs come back in this layout).
at::Tensor heads(const at::Tensor& x, const Span& s) { return x.narrow(0, s.begin, s.len).unsqueeze(0).transpose(1, 2); }

// ---- fp32 / fp64: exact math per document, grouped so GQA needs no repeated k/v ----
// A document's q rows [L, Hq, D] as [Hkv, G * L, D] (G = Hq / Hkv query heads per kv head, row g * L + i
// is query i of head kv * G + g): one bmm against k [Hkv, L, D] then serves every group, and the
// contraction over G * L rows in dK and dV sums the group's contributions.
at::Tensor grouped_rows(const at::Tensor& x, const Span& s, int64_t hkv) {
  const int64_t group = x.size(1) / hkv;
  return x.narrow(0, s.begin, s.len).view({s.len, hkv, group, x.size(2)}).permute({1, 2, 0, 3})
      .reshape({hkv, group * s.len, x.size(2)});
}
// The inverse: [Hkv, G * L, D] -> rows [L, Hq, D] written into `dst`.
void write_grouped_rows(at::Tensor& dst, const Span& s, const at::Tensor& grouped) {
  const int64_t hkv = grouped.size(0), group = dst.size(1) / hkv;
  dst.narrow(0, s.begin, s.len).copy_(grouped.view({hkv, group, s.len, dst.size(2)}).permute({2, 0, 1, 3})
                                          .reshape({s.len, dst.size(1), dst.size(2)}));
}
at::Tensor kv_heads(const at::Tensor& x, const Span& s) { return x.narrow(0, s.begin, s.len).transpose(0, 1); }

// Probabilities of one document: softmax(scale * q k^T) with the causal mask. [Hkv, G * L, L]
at::Tensor document_probs(const at::Tensor& qg, const at::Tensor& kh, int64_t len, double scale, bool causal) {
  at::Tensor scores = at::bmm(qg, kh.transpose(1, 2)).mul_(scale);  // [Hkv, G * L, L]
  if (causal) {
    const int64_t group = qg.size(1) / len;
    const at::Tensor future = at::ones({len, len}, qg.options().dtype(at::kBool)).triu_(1).repeat({group, 1});
    scores.masked_fill_(future, -std::numeric_limits<double>::infinity());
  }
  return at::softmax(scores, -1);
}

// Saved for backward: q, k, v, out, then per document in span order its probabilities [Hkv, G * L, L]
// (exact path: what the math backend's autograd kept before, sum of L^2 Hq values; recomputing them was
// up to 1.5x slower on documents of 1k tokens) or its logsumexp [1, Hq, L] (flash path: O(T)).
class SdpaCpuFunction : public torch::autograd::Function<SdpaCpuFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, const at::Tensor& cu_seqlens_host, double scale, bool causal) {
    const std::vector<Span> spans = document_spans(cu_seqlens_host, q.size(0));
    at::Tensor out = at::empty(q.sizes(), q.options());  // [T, Hq, D]
    torch::autograd::variable_list saved{q, k, v, out};
    saved.reserve(4 + spans.size());
    const bool exact = uses_exact_math(q);
    const int64_t hkv = k.size(1);
    for (const Span& s : spans) {
      if (exact) {
        const at::Tensor probs = document_probs(grouped_rows(q, s, hkv), kv_heads(k, s), s.len, scale, causal);
        write_grouped_rows(out, s, at::bmm(probs, kv_heads(v, s)));  // [Hkv, G * L, D]
        saved.push_back(probs);
        continue;
      }
      auto [o, lse] = at::_scaled_dot_product_flash_attention_for_cpu(heads(q, s), heads(k, s), heads(v, s),
                                                                     /*dropout_p=*/0.0, causal, /*attn_mask=*/{}, scale);
      heads(out, s).copy_(o);
      saved.push_back(lse);
    }
    ctx->save_for_backward(saved);
    ctx->saved_data["cu_seqlens_host"] = cu_seqlens_host;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["causal"] = causal;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[3];
    const std::vector<Span> spans = document_spans(ctx->saved_data["cu_seqlens_host"].toTensor(), q.size(0));
    const double scale = ctx->saved_data["scale"].toDouble();
    const bool causal = ctx->saved_data["causal"].toBool();
    const at::Tensor dout = grads[0].contiguous();
    at::Tensor dq = at::empty(q.sizes(), q.options());  // [T, Hq, D]: every row belongs to one document
    at::Tensor dk = at::empty(k.sizes(), k.options());  // [T, Hkv, D]
    at::Tensor dv = at::empty(v.sizes(), v.options());
    const bool exact = uses_exact_math(q);
    const int64_t hkv = k.size(1);
    for (size_t i = 0; i < spans.size(); ++i) {
      const Span& s = spans[i];
      if (exact) {
        const at::Tensor qg = grouped_rows(q, s, hkv), kh = kv_heads(k, s), vh = kv_heads(v, s);
        const at::Tensor dog = grouped_rows(dout, s, hkv);                             // [Hkv, G * L, D]
        const at::Tensor& probs = saved[4 + i];                                         // [Hkv, G * L, L]
        dv.narrow(0, s.begin, s.len).copy_(at::bmm(probs.transpose(1, 2), dog).transpose(0, 1));
        const at::Tensor dprobs = at::bmm(dog, vh.transpose(1, 2));                     // [Hkv, G * L, L]
        const at::Tensor dscores = at::_softmax_backward_data(dprobs, probs, -1, probs.scalar_type()).mul_(scale);
        write_grouped_rows(dq, s, at::bmm(dscores, kh));
        dk.narrow(0, s.begin, s.len).copy_(at::bmm(dscores.transpose(1, 2), qg).transpose(0, 1));
        continue;
      }
      auto [gq, gk, gv] = at::_scaled_dot_product_flash_attention_for_cpu_backward(
          heads(dout, s), heads(q, s), heads(k, s), heads(v, s), heads(out, s), saved[4 + i], /*dropout_p=*/0.0,
          causal, /*attn_mask=*/{}, scale);
      heads(dq, s).copy_(gq);
      heads(dk, s).copy_(gk);
      heads(dv, s).copy_(gv);
    }
    return {dq, dk, dv, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor sdpa_cpu_varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const at::Tensor& cu_seqlens_host, double softmax_scale, bool causal) {
  TORCH_CHECK(q.is_cpu() && k.is_cpu() && v.is_cpu(), "sdpa (CPU): q, k, v must be CPU tensors");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "sdpa (CPU): q, k, v dtypes differ (", q.scalar_type(), ", ", k.scalar_type(), ", ",
              v.scalar_type(), ")");
  return SdpaCpuFunction::apply(q, k, v, cu_seqlens_host, softmax_scale, causal);
}

}  // namespace sft::kernels
