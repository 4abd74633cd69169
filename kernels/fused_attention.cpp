// kernels/fused_attention.cpp: the binding layer of the fused attention, the only kernel file that sees
// tensors for it: one input checker, allocation with at::empty, launches of the torch-free launchers
// (kernels/attention_params.h) on the current CUDA stream with a launch-error check after each, the CPU
// twin (kernels/cpu/attention_cpu.h) for CPU tensors, the torch::autograd::Function, the fp64 reference,
// the 2x-error comparison and the start-up self-check.
#include "kernels/fused_attention.h"

#include <torch/autograd.h>
#include <ATen/Context.h>
#include <c10/core/DeviceGuard.h>

#include <cmath>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <vector>

#include "kernels/attention_index.h"
#include "kernels/attention_params.h"
#include "kernels/cpu/attention_cpu.h"
#include "kernels/cuda_plugin.h"

namespace sft::kernels {
namespace {

// ---- the one checker: device, dtype, contiguity, shapes, offsets, alignment ----
struct Dims {
  int total_tokens, num_heads, num_kv_heads, head_dim, num_seqs, max_seqlen;
};

// A [T, H, D] tensor the CUDA kernels read or write in 16-byte vectors (cp.async loads of q/k/v/dO,
// 4-byte packed stores of out/dq/dk/dv, vector loads of out/dO): unit stride on D, token and head strides
// multiples of 8 elements, and a 16-byte-aligned start. A contiguous view with an odd storage offset
// passes every shape check but would fault in the kernel.
struct VectorAccessed {
  const char* name;
  const at::Tensor* tensor;
};
void check_cuda_vector_access(const VectorAccessed& x) {
  const at::Tensor& t = *x.tensor;
  TORCH_CHECK(attn::vector_access_ok(t.stride(0), t.stride(1), t.stride(2), reinterpret_cast<uintptr_t>(t.data_ptr())),
              "fused attention (CUDA): ", x.name, " must have unit stride on head_dim, token and head strides that are "
              "multiples of 8 elements, and a 16-byte-aligned start (strides ", t.strides(), ", address ",
              t.data_ptr(), ")");
}

// q/k/v and the backward's cu_seqlens are checked fully; `vectors` are the other [T, H, D] tensors of the
// call (out; dout, dq, dk, dv), whose shapes the callers check, and get the CUDA alignment check here.
Dims check_fused_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens,
                        const at::Tensor& cu_seqlens_host, int64_t max_seqlen,
                        std::initializer_list<VectorAccessed> vectors) {
  TORCH_CHECK(q.defined() && k.defined() && v.defined(), "fused attention: q, k, v must be defined");
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "fused attention: q, k, v must be [T, H, D], got ",
              q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK(k.sizes() == v.sizes(), "fused attention: k ", k.sizes(), " and v ", v.sizes(), " differ");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(2) == k.size(2), "fused attention: q ", q.sizes(), " and k ",
              k.sizes(), " differ in tokens or head_dim");
  TORCH_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, "fused attention: kv heads (", k.size(1),
              ") must divide q heads (", q.size(1), ")");
  TORCH_CHECK(q.device() == k.device() && q.device() == v.device(), "fused attention: q, k, v on different devices");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "fused attention: q, k, v dtypes differ");
  TORCH_CHECK(q.stride(2) == 1 && k.stride(2) == 1 && v.stride(2) == 1, "fused attention: head_dim must be contiguous");
  const auto dtype = q.scalar_type();
  if (q.is_cuda()) {
    TORCH_CHECK(dtype == at::kBFloat16 || dtype == at::kHalf, "fused attention (CUDA): dtype must be bfloat16 or "
                "float16, got ", dtype);
    TORCH_CHECK(attn::head_dim_supported(static_cast<int>(q.size(2))), "fused attention (CUDA): head_dim ", q.size(2),
                " is not supported (64 or 128)");
    for (const VectorAccessed& x : {VectorAccessed{"q", &q}, VectorAccessed{"k", &k}, VectorAccessed{"v", &v}}) {
      check_cuda_vector_access(x);
    }
    for (const VectorAccessed& x : vectors) check_cuda_vector_access(x);
  } else {
    TORCH_CHECK(q.is_cpu(), "fused attention: unsupported device ", q.device());
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 || dtype == at::kHalf,
                "fused attention (CPU): unsupported dtype ", dtype);
  }
  TORCH_CHECK(cu_seqlens_host.defined() && cu_seqlens_host.is_cpu() && cu_seqlens_host.scalar_type() == at::kInt &&
                  cu_seqlens_host.dim() == 1 && cu_seqlens_host.numel() >= 2 && cu_seqlens_host.is_contiguous(),
              "fused attention: cu_seqlens_host must be a contiguous int32 CPU vector of >= 2 offsets");
  TORCH_CHECK(cu_seqlens.defined() && cu_seqlens.device() == q.device() && cu_seqlens.scalar_type() == at::kInt &&
                  cu_seqlens.is_contiguous() && cu_seqlens.numel() == cu_seqlens_host.numel(),
              "fused attention: cu_seqlens must be a contiguous int32 vector on q's device, the same length as "
              "cu_seqlens_host");
  const int32_t* off = cu_seqlens_host.data_ptr<int32_t>();  // host memory: no device sync
  const int64_t n = cu_seqlens_host.numel() - 1;
  int64_t longest = 0;
  TORCH_CHECK(off[0] == 0, "fused attention: cu_seqlens must start at 0");
  for (int64_t s = 0; s < n; ++s) {
    TORCH_CHECK(off[s + 1] >= off[s], "fused attention: cu_seqlens must be non-decreasing");
    longest = std::max<int64_t>(longest, off[s + 1] - off[s]);
  }
  TORCH_CHECK(off[n] == q.size(0), "fused attention: cu_seqlens ends at ", off[n], " but there are ", q.size(0),
              " tokens");
  TORCH_CHECK(max_seqlen >= longest, "fused attention: max_seqlen ", max_seqlen, " < longest sequence ", longest);
  TORCH_CHECK(q.size(0) < std::numeric_limits<int32_t>::max() && max_seqlen < std::numeric_limits<int32_t>::max(),
              "fused attention: too many tokens");
  TORCH_CHECK(!q.is_cuda() || attn::folded_grid_fits(static_cast<int>(max_seqlen), static_cast<int>(n)),
              "fused attention (CUDA): ", n, " sequences of up to ", max_seqlen, " tokens exceed the launch grid");
  return Dims{static_cast<int>(q.size(0)), static_cast<int>(q.size(1)), static_cast<int>(k.size(1)),
              static_cast<int>(q.size(2)), static_cast<int>(n), static_cast<int>(max_seqlen)};
}

void check_output(const at::Tensor& x, const at::Tensor& like, at::IntArrayRef sizes, at::ScalarType dtype,
                  const char* name) {
  TORCH_CHECK(x.defined() && x.sizes() == sizes && x.scalar_type() == dtype && x.device() == like.device() &&
                  x.is_contiguous(),
              "fused attention: output ", name, " must be a contiguous ", dtype, " tensor of shape ", sizes,
              " on ", like.device());
}

at::ScalarType cpu_compute_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }
at::ScalarType lse_dtype(const at::Tensor& q) {
  return q.is_cpu() ? cpu_compute_dtype(q.scalar_type()) : at::kFloat;
}

// ---- CPU twin ----
template <typename Scalar>
cpu::CpuAttentionArgs<Scalar> cpu_args(const Dims& d, const at::Tensor& cu_host, double scale, bool causal) {
  cpu::CpuAttentionArgs<Scalar> a;
  a.cu_seqlens = cu_host.data_ptr<int32_t>();
  a.total_tokens = d.total_tokens;
  a.num_seqs = d.num_seqs;
  a.num_heads = d.num_heads;
  a.num_kv_heads = d.num_kv_heads;
  a.head_dim = d.head_dim;
  a.scale = static_cast<Scalar>(scale);
  a.causal = causal;
  return a;
}

template <typename Scalar>
void forward_cpu(const Dims& d, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const at::Tensor& cu_host, double scale, bool causal, at::Tensor& out, at::Tensor& lse) {
  const auto ct = c10::CppTypeToScalarType<Scalar>::value;
  at::Tensor qc = q.to(ct).contiguous(), kc = k.to(ct).contiguous(), vc = v.to(ct).contiguous();
  at::Tensor oc = out.scalar_type() == ct ? out : at::empty(out.sizes(), out.options().dtype(ct));
  auto a = cpu_args<Scalar>(d, cu_host, scale, causal);
  a.q = qc.data_ptr<Scalar>();
  a.k = kc.data_ptr<Scalar>();
  a.v = vc.data_ptr<Scalar>();
  a.o = oc.data_ptr<Scalar>();
  a.lse = lse.data_ptr<Scalar>();
  cpu::attention_fwd_cpu(a);
  if (!oc.is_same(out)) out.copy_(oc);
}

template <typename Scalar>
void backward_cpu(const Dims& d, const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& out, const at::Tensor& lse, const at::Tensor& cu_host, double scale, bool causal,
                  bool deterministic, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  const auto ct = c10::CppTypeToScalarType<Scalar>::value;
  at::Tensor qc = q.to(ct).contiguous(), kc = k.to(ct).contiguous(), vc = v.to(ct).contiguous();
  at::Tensor oc = out.to(ct).contiguous(), doc = dout.to(ct).contiguous(), lc = lse.to(ct).contiguous();
  auto like = [&](const at::Tensor& x) { return x.scalar_type() == ct ? x : at::empty(x.sizes(), x.options().dtype(ct)); };
  at::Tensor dqc = like(dq), dkc = like(dk), dvc = like(dv);
  auto a = cpu_args<Scalar>(d, cu_host, scale, causal);
  a.q = qc.data_ptr<Scalar>();
  a.k = kc.data_ptr<Scalar>();
  a.v = vc.data_ptr<Scalar>();
  a.o = oc.data_ptr<Scalar>();
  a.lse = lc.data_ptr<Scalar>();
  a.dout = doc.data_ptr<Scalar>();
  a.dq = dqc.data_ptr<Scalar>();
  a.dk = dkc.data_ptr<Scalar>();
  a.dv = dvc.data_ptr<Scalar>();
  a.deterministic = deterministic;
  cpu::attention_bwd_cpu(a);
  if (!dqc.is_same(dq)) dq.copy_(dqc);
  if (!dkc.is_same(dk)) dk.copy_(dkc);
  if (!dvc.is_same(dv)) dv.copy_(dvc);
}

// ---- CUDA ----
void fill_fwd_params(AttentionFwdParams& p, const Dims& d, const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& cu,
                     double scale, bool causal) {
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.o = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.cu_seqlens = cu.data_ptr<int32_t>();
  p.q_row_stride = q.stride(0);
  p.q_head_stride = q.stride(1);
  p.k_row_stride = k.stride(0);
  p.k_head_stride = k.stride(1);
  p.v_row_stride = v.stride(0);
  p.v_head_stride = v.stride(1);
  p.o_row_stride = out.stride(0);
  p.o_head_stride = out.stride(1);
  p.total_tokens = d.total_tokens;
  p.num_seqs = d.num_seqs;
  p.max_seqlen = d.max_seqlen;
  p.num_heads = d.num_heads;
  p.num_kv_heads = d.num_kv_heads;
  p.head_dim = d.head_dim;
  p.scale = static_cast<float>(scale);
  p.causal = causal;
  p.dtype = q.scalar_type() == at::kBFloat16 ? AttnDtype::BFloat16 : AttnDtype::Float16;
}

// TORCH_CHECK of an attention launcher's result, then of cudaGetLastError after its launch.
void check_attention_launch(const CudaPlugin& cuda, bool supported) {
  TORCH_CHECK(supported, "fused attention: unsupported config");
  const int code = cuda.last_error();
  TORCH_CHECK(code == 0, "fused attention: CUDA launch failed: ", cuda.error_name(code));
}

}  // namespace

void fused_attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& cu_seqlens, const at::Tensor& cu_seqlens_host, int64_t max_seqlen,
                             double softmax_scale, bool causal, at::Tensor& out, at::Tensor& lse) {
  check_output(out, q, q.sizes(), q.scalar_type(), "out");
  check_output(lse, q, {q.size(1), q.size(0)}, lse_dtype(q), "lse");
  const Dims d = check_fused_inputs(q, k, v, cu_seqlens, cu_seqlens_host, max_seqlen, {{"out", &out}});
  if (d.total_tokens == 0) return;
  if (q.is_cpu()) {
    if (cpu_compute_dtype(q.scalar_type()) == at::kDouble) {
      forward_cpu<double>(d, q, k, v, cu_seqlens_host, softmax_scale, causal, out, lse);
    } else {
      forward_cpu<float>(d, q, k, v, cu_seqlens_host, softmax_scale, causal, out, lse);
    }
    return;
  }
  const CudaPlugin& cuda = cuda_plugin("fused attention");
  const c10::DeviceGuard guard(q.device());
  AttentionFwdParams p;
  fill_fwd_params(p, d, q, k, v, out, lse, cu_seqlens, softmax_scale, causal);
  check_attention_launch(cuda, cuda.attention_fwd(p, cuda.current_stream()));
}

void fused_attention_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& out, const at::Tensor& lse, const at::Tensor& cu_seqlens,
                              const at::Tensor& cu_seqlens_host, int64_t max_seqlen, double softmax_scale,
                              bool causal, bool deterministic, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  check_output(out, q, q.sizes(), q.scalar_type(), "out");
  check_output(lse, q, {q.size(1), q.size(0)}, lse_dtype(q), "lse");
  TORCH_CHECK(dout.defined() && dout.sizes() == q.sizes() && dout.scalar_type() == q.scalar_type() &&
                  dout.device() == q.device() && dout.is_contiguous(),
              "fused attention: dout must be contiguous and match q");
  check_output(dq, q, q.sizes(), q.scalar_type(), "dq");
  check_output(dk, q, k.sizes(), q.scalar_type(), "dk");
  check_output(dv, q, v.sizes(), q.scalar_type(), "dv");
  const Dims d = check_fused_inputs(q, k, v, cu_seqlens, cu_seqlens_host, max_seqlen,
                                    {{"dout", &dout}, {"out", &out}, {"dq", &dq}, {"dk", &dk}, {"dv", &dv}});
  if (d.total_tokens == 0) return;
  if (q.is_cpu()) {
    if (cpu_compute_dtype(q.scalar_type()) == at::kDouble) {
      backward_cpu<double>(d, dout, q, k, v, out, lse, cu_seqlens_host, softmax_scale, causal, deterministic, dq, dk, dv);
    } else {
      backward_cpu<float>(d, dout, q, k, v, out, lse, cu_seqlens_host, softmax_scale, causal, deterministic, dq, dk, dv);
    }
    return;
  }
  const CudaPlugin& cuda = cuda_plugin("fused attention");
  const c10::DeviceGuard guard(q.device());
  const cudaStream_t stream = cuda.current_stream();
  at::Tensor dsum = at::empty({d.num_heads, d.total_tokens}, q.options().dtype(at::kFloat));  // [Hq, T]
  at::Tensor dq_accum;  // [T, Hq, D] fp32, atomically accumulated
  if (!deterministic) dq_accum = at::zeros({d.total_tokens, d.num_heads, d.head_dim}, q.options().dtype(at::kFloat));
  AttentionBwdParams p;
  fill_fwd_params(p, d, q, k, v, out, lse, cu_seqlens, softmax_scale, causal);
  p.dout = dout.data_ptr();
  p.dq = dq.data_ptr();
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  p.dsum = dsum.data_ptr<float>();
  p.dq_accum = deterministic ? nullptr : dq_accum.data_ptr<float>();
  p.do_row_stride = dout.stride(0);
  p.do_head_stride = dout.stride(1);
  p.dq_row_stride = dq.stride(0);
  p.dq_head_stride = dq.stride(1);
  p.dk_row_stride = dk.stride(0);
  p.dk_head_stride = dk.stride(1);
  p.dv_row_stride = dv.stride(0);
  p.dv_head_stride = dv.stride(1);
  p.deterministic = deterministic;
  check_attention_launch(cuda, cuda.attention_bwd_preprocess(p, stream));
  check_attention_launch(cuda, cuda.attention_bwd_dkdv(p, stream));
  check_attention_launch(cuda, cuda.attention_bwd_dq(p, stream));
}

namespace {

// Forward and backward wrapped for autograd. Saved for backward: q, k, v, out, lse, cu_seqlens (both).
class FusedAttentionFunction : public torch::autograd::Function<FusedAttentionFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, const at::Tensor& cu_seqlens, const at::Tensor& cu_seqlens_host,
                            int64_t max_seqlen, double scale, bool causal, bool deterministic) {
    at::Tensor out = at::empty(q.sizes(), q.options());  // [T, Hq, D]
    at::Tensor lse = at::empty({q.size(1), q.size(0)}, q.options().dtype(lse_dtype(q)));         // [Hq, T]
    fused_attention_forward(q, k, v, cu_seqlens, cu_seqlens_host, max_seqlen, scale, causal, out, lse);
    ctx->save_for_backward({q, k, v, out, lse, cu_seqlens, cu_seqlens_host});
    ctx->saved_data["max_seqlen"] = max_seqlen;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["causal"] = causal;
    ctx->saved_data["deterministic"] = deterministic;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[3], &lse = saved[4];
    const at::Tensor dout = grads[0].contiguous();
    at::Tensor dq = at::empty(q.sizes(), q.options());
    at::Tensor dk = at::empty(k.sizes(), k.options());
    at::Tensor dv = at::empty(v.sizes(), v.options());
    fused_attention_backward(dout, q, k, v, out, lse, saved[5], saved[6], ctx->saved_data["max_seqlen"].toInt(),
                             ctx->saved_data["scale"].toDouble(), ctx->saved_data["causal"].toBool(),
                             ctx->saved_data["deterministic"].toBool(), dq, dk, dv);
    return {dq, dk, dv, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor fused_varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& cu_seqlens, const at::Tensor& cu_seqlens_host,
                                  int64_t max_seqlen, double softmax_scale, bool causal, bool deterministic) {
  return FusedAttentionFunction::apply(q, k, v, cu_seqlens, cu_seqlens_host, max_seqlen, softmax_scale, causal,
                                       deterministic);
}

namespace {
// Runs attend(qh, kh, vh) -> [Hq, L, D] on every non-empty document, with heads [Hq, L, D] (kv heads
// repeated for GQA, the transformers repeat_kv layout), and concatenates the results as [T, Hq, D].
template <typename Attend>
at::Tensor per_document(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const at::Tensor& cu_seqlens_host, Attend&& attend) {
  const int64_t group = q.size(1) / k.size(1);
  const at::Tensor off = cu_seqlens_host.to(at::kLong).contiguous();
  const int64_t* o = off.data_ptr<int64_t>();
  std::vector<at::Tensor> outputs;
  for (int64_t s = 0; s + 1 < off.numel(); ++s) {
    const int64_t begin = o[s], len = o[s + 1] - o[s];
    if (len == 0) continue;
    auto heads = [&](const at::Tensor& x, int64_t repeat) {  // [L, H, D] -> [H * repeat, L, D]
      return x.narrow(0, begin, len).transpose(0, 1).repeat_interleave(repeat, 0);
    };
    outputs.push_back(attend(heads(q, 1), heads(k, group), heads(v, group)).transpose(0, 1));  // [L, Hq, D]
  }
  if (outputs.empty()) return at::zeros_like(q);
  return at::cat(outputs, 0);
}
}  // namespace

at::Tensor reference_varlen_attention_fp64(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const at::Tensor& cu_seqlens_host, double softmax_scale, bool causal) {
  auto fp64 = [](const at::Tensor& x) { return x.to(at::kCPU).to(at::kDouble); };
  return per_document(fp64(q), fp64(k), fp64(v), cu_seqlens_host, [&](const at::Tensor& qh, const at::Tensor& kh,
                                                                        const at::Tensor& vh) {
    at::Tensor scores = at::matmul(qh, kh.transpose(1, 2)) * softmax_scale;  // [Hq, L, L]
    if (causal) {
      const int64_t len = qh.size(1);
      at::Tensor future = at::ones({len, len}, scores.options().dtype(at::kBool)).triu(1);
      scores = scores.masked_fill(future, -std::numeric_limits<double>::infinity());
    }
    return at::matmul(at::softmax(scores, -1), vh);  // [Hq, L, D]
  });
}

std::string AttentionCheck::describe() const {
  static const char* names[4] = {"out", "dq", "dk", "dv"};
  std::ostringstream s;
  s << (passed ? "pass" : "FAIL") << ":";
  for (int i = 0; i < 4; ++i) s << " " << names[i] << " fused " << err_fused[i] << " vs torch " << err_torch[i] << ";";
  return s.str();
}

namespace {
// Lets LibTorch's math SDPA reduce in fp16/bf16 (no fp32 upcast) for low-precision inputs while it lives,
// and restores the previous setting when it ends. The setting is process-wide (at::Context has no
// per-thread form and SDPA takes no such argument), so the guard covers only the comparator's forward
// and backward in check_fused_against_reference, which runs in the start-up self-check (before training
// starts any other attention) and in tests.
class SamePrecisionMathSdp {
 public:
  explicit SamePrecisionMathSdp(at::ScalarType dtype) : saved_(at::globalContext().allowFP16BF16ReductionMathSDP()) {
    if (dtype == at::kHalf || dtype == at::kBFloat16) at::globalContext().setAllowFP16BF16ReductionMathSDP(true);
  }
  ~SamePrecisionMathSdp() { at::globalContext().setAllowFP16BF16ReductionMathSDP(saved_); }
  SamePrecisionMathSdp(const SamePrecisionMathSdp&) = delete;
  SamePrecisionMathSdp& operator=(const SamePrecisionMathSdp&) = delete;

 private:
  bool saved_;
};
// LibTorch's SDPA per document on 4-D [1, Hq, L, D] tensors (kv heads repeated for GQA) -> [T, Hq, D].
at::Tensor sdpa_4d_per_document(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& cu_seqlens_host, double scale, bool causal) {
  return per_document(q, k, v, cu_seqlens_host, [&](const at::Tensor& qh, const at::Tensor& kh, const at::Tensor& vh) {
    return at::scaled_dot_product_attention(qh.unsqueeze(0), kh.unsqueeze(0), vh.unsqueeze(0), {}, 0.0, causal, scale)
        .squeeze(0);
  });
}
}  // namespace

AttentionCheck check_fused_against_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                             const at::Tensor& dout, const at::Tensor& cu_seqlens_host,
                                             int64_t max_seqlen, double softmax_scale, bool causal,
                                             bool deterministic, double factor, double abs_slack) {
  AttentionCheck check;
  const at::Tensor cu = cu_seqlens_host.to(q.device());
  const double nan = std::numeric_limits<double>::quiet_NaN();
  // Fused, raw entry points, outputs poisoned with NaN before each launch (unwritten elements stay NaN).
  at::Tensor out = at::full(q.sizes(), nan, q.options());
  at::Tensor lse = at::full({q.size(1), q.size(0)}, nan, q.options().dtype(lse_dtype(q)));
  fused_attention_forward(q, k, v, cu, cu_seqlens_host, max_seqlen, softmax_scale, causal, out, lse);
  at::Tensor dq = at::full(q.sizes(), nan, q.options()), dk = at::full(k.sizes(), nan, k.options()),
             dv = at::full(v.sizes(), nan, v.options());
  fused_attention_backward(dout.contiguous(), q, k, v, out, lse, cu, cu_seqlens_host, max_seqlen, softmax_scale, causal,
                           deterministic, dq, dk, dv);
  // LibTorch's own attention in the same dtype on the same device (per-document SDPA), through autograd.
  // FlashAttention's rule compares against a same-precision implementation. LibTorch's math SDPA backend
  // (what the CPU picks for fp16/bf16) silently upcasts to fp32 unless fp16/bf16 reductions are allowed,
  // which would make the comparator correctly rounded; FA2's design (ours: D = rowsum(dO * O) from the
  // stored low-precision O) cannot be within 2x of that, see kernels/README.md "Numerics".
  at::Tensor qt = q.detach().clone().requires_grad_(true), kt = k.detach().clone().requires_grad_(true),
             vt = v.detach().clone().requires_grad_(true);
  PackedSequences seqs{cu, cu_seqlens_host, max_seqlen};
  at::Tensor out_t;
  std::vector<at::Tensor> grads_t;
  {
    const SamePrecisionMathSdp same_precision(q.scalar_type());  // only around LibTorch's comparator
    // CUDA: 4-D [1, H, L, D] per document, so SDPA's flash / cuDNN / memory-efficient backends can serve
    // (3-D inputs force its math backend). CPU: the 3-D math path with same-precision reductions, above.
    out_t = q.is_cuda() ? sdpa_4d_per_document(qt, kt, vt, cu_seqlens_host, softmax_scale, causal)
                        : varlen_attention(qt, kt, vt, seqs, softmax_scale, causal, AttentionImpl::Sdpa);
    grads_t = torch::autograd::grad({out_t}, {qt, kt, vt}, {dout});
  }
  // fp64 reference on the CPU.
  at::Tensor qr = q.detach().to(at::kCPU).to(at::kDouble).requires_grad_(true),
             kr = k.detach().to(at::kCPU).to(at::kDouble).requires_grad_(true),
             vr = v.detach().to(at::kCPU).to(at::kDouble).requires_grad_(true);
  at::Tensor out_r = reference_varlen_attention_fp64(qr, kr, vr, cu_seqlens_host, softmax_scale, causal);
  auto grads_r = torch::autograd::grad({out_r}, {qr, kr, vr}, {dout.to(at::kCPU).to(at::kDouble)});

  const at::Tensor fused[4] = {out, dq, dk, dv};
  const at::Tensor torch_[4] = {out_t, grads_t[0], grads_t[1], grads_t[2]};
  const at::Tensor ref[4] = {out_r, grads_r[0], grads_r[1], grads_r[2]};
  check.passed = true;
  for (int i = 0; i < 4; ++i) {  // one sync per tensor: this runs at start-up and in tests only
    const at::Tensor diff = (fused[i].detach().to(at::kCPU).to(at::kDouble) - ref[i]).abs();
    const bool finite = diff.isfinite().all().item<bool>();
    check.err_fused[i] = finite ? diff.max().item<double>() : std::numeric_limits<double>::infinity();
    check.err_torch[i] = (torch_[i].detach().to(at::kCPU).to(at::kDouble) - ref[i]).abs().max().item<double>();
    if (!(check.err_fused[i] <= factor * check.err_torch[i] + abs_slack)) check.passed = false;
  }
  return check;
}

std::string fused_attention_self_check(const at::Device& device) {
  try {
    if (device.is_cuda() && !load_cuda_plugin().plugin) return "the CUDA plugin is " + load_cuda_plugin().status;
    struct Case {
      std::vector<int32_t> lens;
      int hq, hkv, d;
      bool causal;
    };
    // Small, but crossing block boundaries (1, 63/65 around a 64 block, a 2-block sequence) with GQA.
    const Case cases[] = {{{1, 65, 130}, 4, 2, 64, true}, {{63, 2, 70}, 4, 1, 128, false},
                          {{129}, 2, 2, 128, true}};
    const at::ScalarType dtype = device.is_cuda() ? at::kBFloat16 : at::kFloat;
    for (const Case& c : cases) {
      std::vector<int32_t> off{0};
      int max_len = 0;
      for (int32_t len : c.lens) {
        off.push_back(off.back() + len);
        max_len = std::max(max_len, len);
      }
      const at::Tensor cu_host = at::tensor(off, at::kInt);
      const int64_t T = off.back();
      auto randn = [&](int64_t h) { return at::randn({T, h, c.d}, at::kFloat).to(device).to(dtype); };
      const at::Tensor q = randn(c.hq), k = randn(c.hkv), v = randn(c.hkv), dout = randn(c.hq);
      const AttentionCheck r = check_fused_against_reference(q, k, v, dout, cu_host, max_len, 1.0 / std::sqrt(c.d),
                                                             c.causal, /*deterministic=*/false);
      if (!r.passed) {
        std::ostringstream s;
        s << "fused attention self-check failed on " << device << " (head_dim " << c.d << ", causal " << c.causal
          << "): " << r.describe();
        return s.str();
      }
    }
    return "";
  } catch (const std::exception& e) {
    return std::string("fused attention self-check raised: ") + e.what();
  }
}

}  // namespace sft::kernels
