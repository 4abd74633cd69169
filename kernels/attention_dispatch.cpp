// kernels/attention_dispatch.cpp: the single attention entry point (varlen_attention) and its reference
// paths. `eager` is explicit math per document, `sdpa` is LibTorch's CPU flash-attention kernel per
// document in one autograd node on CPU tensors (kernels/sdpa_cpu.h) and
// at::scaled_dot_product_attention per document on CUDA ones, `fused` is our FlashAttention-2 style
// kernel (CUDA) or its CPU twin, TorchFlashVarlen is
// LibTorch's FlashAttention-2 varlen kernel; resolve_attention_impl (kernels/attention_choice.cpp) turns
// `auto`/`fused` into a concrete choice once.
#include "kernels/ops.h"

#include <ATen/ATen.h>

#include <optional>
#include <stdexcept>
#include <vector>

#include "common/autocast.h"
#include "common/errors.h"
#include "kernels/attention_choice.h"
#include "kernels/sdpa_cpu.h"
#include "kernels/fused_attention.h"

namespace sft::kernels {

AttentionImpl parse_attention_impl(const std::string& name, const std::string& key) {
  return parse_enum<AttentionImpl>(name, key);
}

std::string to_string(AttentionImpl impl) {
  switch (impl) {
    case AttentionImpl::Auto:
    case AttentionImpl::Fused:
    case AttentionImpl::Sdpa:
    case AttentionImpl::Eager: return enum_name(impl);
    case AttentionImpl::FusedDeterministic: return "fused (deterministic backward)";
    case AttentionImpl::TorchFlashVarlen: return "LibTorch flash varlen";
  }
  return "?";
}

namespace {

// Expands kv heads so that query head h reads kv head h / group (the transformers repeat_kv layout).
// x: [Hkv, L, D] -> [Hkv * group, L, D]
at::Tensor repeat_kv_heads(const at::Tensor& x, int64_t group) {
  if (group == 1) return x;
  return x.repeat_interleave(group, /*dim=*/0);
}

// One document. q: [L, Hq, D], k/v: [L, Hkv, D] -> [L, Hq, D]
at::Tensor attend_one_document(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               double scale, bool causal, AttentionImpl impl) {
  const int64_t group = q.size(1) / k.size(1);
  at::Tensor qh = q.transpose(0, 1);                          // [Hq, L, D]
  at::Tensor kh = repeat_kv_heads(k.transpose(0, 1), group);  // [Hq, L, D]
  at::Tensor vh = repeat_kv_heads(v.transpose(0, 1), group);  // [Hq, L, D]
  if (impl == AttentionImpl::Sdpa) {
    at::Tensor out = at::scaled_dot_product_attention(qh, kh, vh, /*attn_mask=*/{}, /*dropout_p=*/0.0,
                                                      /*is_causal=*/causal, /*scale=*/scale);
    return out.transpose(0, 1);
  }
  // Eager: scores in the input dtype, softmax in fp32 (as transformers' eager attention does).
  at::Tensor scores = at::matmul(qh, kh.transpose(1, 2)) * scale;  // [Hq, L, L]
  if (causal) {
    const int64_t len = q.size(0);
    at::Tensor future = at::ones({len, len}, q.options().dtype(at::kBool)).triu(1);
    scores = scores.masked_fill(future, -std::numeric_limits<double>::infinity());
  }
  at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  return at::matmul(probs, vh).transpose(0, 1);
}

at::Tensor reference_varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const PackedSequences& seqs, double scale, bool causal,
                                      AttentionImpl impl) {
  at::Tensor offsets = seqs.cu_seqlens_host.to(at::kLong).contiguous();
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t n_seqs = offsets.numel() - 1;
  if (n_seqs == 1) return attend_one_document(q, k, v, scale, causal, impl);
  std::vector<at::Tensor> outputs;
  outputs.reserve(n_seqs);
  for (int64_t s = 0; s < n_seqs; ++s) {
    const int64_t begin = off[s], end = off[s + 1];
    if (end == begin) continue;
    outputs.push_back(attend_one_document(q.slice(0, begin, end), k.slice(0, begin, end),
                                          v.slice(0, begin, end), scale, causal, impl));
  }
  return at::cat(outputs, 0);
}

void check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const PackedSequences& seqs) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "varlen_attention: q, k, v must be [T, H, D]");
  TORCH_CHECK(k.sizes() == v.sizes(), "varlen_attention: k and v shapes differ");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(2) == k.size(2), "varlen_attention: q/k token or head_dim mismatch");
  TORCH_CHECK(q.size(1) % k.size(1) == 0, "varlen_attention: kv heads must divide q heads");
  TORCH_CHECK(seqs.cu_seqlens_host.defined() && seqs.cu_seqlens_host.device().is_cpu() &&
                  seqs.cu_seqlens_host.dim() == 1 && seqs.cu_seqlens_host.numel() >= 2,
              "varlen_attention: cu_seqlens_host must be a CPU vector of at least 2 offsets");
}

// The attention dtype: under autocast (mixed precision) the autocast dtype, as LibTorch's SDPA does there
// (fp32 rotary tables leave q/k in fp32 while v comes out of a bf16 matmul).
struct InAttentionDtype {
  at::Tensor q, k, v;
};
InAttentionDtype to_autocast_dtype(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const std::optional<at::ScalarType> autocast = ScopedAutocast::current(q.device().type());
  if (!autocast) return {q, k, v};
  return {q.to(*autocast), k.to(*autocast), v.to(*autocast)};
}

}  // namespace

at::Tensor torch_flash_varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        const PackedSequences& seqs, double softmax_scale, bool causal) {
  // [T, Hq, D] with cu_seqlens (int32, on the device) for queries and keys; GQA is native (Hkv | Hq).
  // Differentiable: LibTorch's autograd runs _flash_attention_backward.
  auto result = at::_flash_attention_forward(q, k, v, seqs.cu_seqlens, seqs.cu_seqlens, seqs.max_seqlen,
                                             seqs.max_seqlen, /*dropout_p=*/0.0, causal,
                                             /*return_debug_mask=*/false, softmax_scale);
  return std::get<0>(result);
}

at::Tensor varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const PackedSequences& seqs, double softmax_scale, bool causal,
                            AttentionImpl impl) {
  check_attention_inputs(q, k, v, seqs);
  switch (impl) {
    case AttentionImpl::Eager:
      return reference_varlen_attention(q, k, v, seqs, softmax_scale, causal, impl);
    case AttentionImpl::Sdpa: {
      if (!q.is_cpu()) return reference_varlen_attention(q, k, v, seqs, softmax_scale, causal, impl);
      // Autocast: LibTorch's SDPA is on CPU autocast's lower-precision list; the kernel underneath is not.
      const InAttentionDtype x = to_autocast_dtype(q, k, v);
      return sdpa_cpu_varlen_attention(x.q, x.k, x.v, seqs.cu_seqlens_host, softmax_scale, causal);
    }
    case AttentionImpl::Fused:
    case AttentionImpl::FusedDeterministic: {
      const InAttentionDtype x = to_autocast_dtype(q, k, v);
      return fused_varlen_attention(x.q, x.k, x.v, seqs.cu_seqlens, seqs.cu_seqlens_host, seqs.max_seqlen,
                                    softmax_scale, causal, deterministic_backward(impl));
    }
    case AttentionImpl::TorchFlashVarlen: {
      const InAttentionDtype x = to_autocast_dtype(q, k, v);
      return torch_flash_varlen_attention(x.q, x.k, x.v, seqs, softmax_scale, causal);
    }
    case AttentionImpl::Auto:
      // Unresolved auto (the model should resolve it once with resolve_attention_impl): sdpa, which is
      // also what auto resolves to on the CPU; on CUDA the fused kernel is used only after a self-check
      // whose result the caller owns.
      return varlen_attention(q, k, v, seqs, softmax_scale, causal, AttentionImpl::Sdpa);
  }
  return {};
}

}  // namespace sft::kernels
