// kernels/fused_ops.cpp: the binding layer of the fused RMSNorm, SwiGLU, rotary embedding and linear
// cross-entropy: one input checker, allocation with at::empty, launches of the torch-free launchers
// (kernels/fused_ops_params.h) on the current CUDA stream with an error check after each, the CPU twins
// (kernels/cpu/fused_ops_cpu.h) for CPU tensors, the torch::autograd::Functions, the composite versions,
// `model.fused_ops` parsing and the op table the model holds.
#include "kernels/fused_ops.h"

#include <torch/autograd.h>

#include <limits>
#include <optional>
#include <sstream>

#include "common/errors.h"
#include "kernels/cpu/fused_ops_cpu.h"
#include "kernels/cuda_plugin.h"
#include "kernels/fused_ops_params.h"

namespace sft::kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// ---- checks and dtype plumbing ----
void check_op_tensor(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.is_cpu() || t.is_cuda(), op, ": ", name, " on unsupported device ", t.device());
  const auto d = t.scalar_type();
  TORCH_CHECK(d == at::kFloat || d == at::kBFloat16 || d == at::kHalf || (t.is_cpu() && d == at::kDouble), op, ": ",
              name, " has unsupported dtype ", d, t.is_cuda() ? " on CUDA (float, bfloat16, float16)" : "");
}

// CPU twins compute in double for double, in float otherwise (bf16/fp16 are converted on the way).
at::ScalarType cpu_compute_dtype(const at::Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// ---- RMSNorm ----
// x2: [rows, cols] contiguous. Returns {y, rstd}; rstd fp32 (fp64 for fp64 CPU input).
std::pair<at::Tensor, at::Tensor> rmsnorm_forward_raw(const at::Tensor& x2, const at::Tensor& w, double eps) {
  const int64_t rows = x2.size(0), cols = x2.size(1);
  if (x2.is_cuda()) {
    at::Tensor y = at::empty_like(x2), rstd = at::empty({rows}, x2.options().dtype(at::kFloat));
    RmsNormFwdParams p;
    p.x = x2.data_ptr(); p.weight = w.data_ptr(); p.y = y.data_ptr(); p.rstd = rstd.data_ptr<float>();
    p.rows = rows; p.cols = cols; p.eps = static_cast<float>(eps); p.dtype = cuda_op_dtype(x2.scalar_type(), "fused op");
    launch_cuda(&CudaPlugin::rmsnorm_forward, p, "rmsnorm forward");
    return {y, rstd};
  }
  const auto ct = cpu_compute_dtype(x2);
  at::Tensor xc = x2.to(ct).contiguous(), wc = w.to(ct).contiguous();
  at::Tensor y = at::empty_like(xc), rstd = at::empty({rows}, xc.options());
  AT_DISPATCH_FLOATING_TYPES(ct, "rmsnorm_forward_cpu", [&] {
    cpu::rmsnorm_forward<scalar_t>(xc.data_ptr<scalar_t>(), wc.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                   rstd.data_ptr<scalar_t>(), rows, cols, eps);
  });
  return {y.to(x2.scalar_type()), rstd};
}

// Returns {dx, dweight (undefined unless want_dweight)}.
std::pair<at::Tensor, at::Tensor> rmsnorm_backward_raw(const at::Tensor& dy2, const at::Tensor& x2, const at::Tensor& w,
                                                       const at::Tensor& rstd, bool want_dweight) {
  const int64_t rows = x2.size(0), cols = x2.size(1);
  if (x2.is_cuda()) {
    at::Tensor dx = at::empty_like(x2);
    at::Tensor dw = want_dweight ? at::empty({cols}, x2.options()) : at::Tensor();
    const int blocks = rmsnorm_partial_blocks(rows);
    at::Tensor partial = at::empty({blocks, cols}, x2.options().dtype(at::kFloat));
    RmsNormBwdParams p;
    p.dy = dy2.data_ptr(); p.x = x2.data_ptr(); p.weight = w.data_ptr(); p.rstd = rstd.data_ptr<float>();
    p.dx = dx.data_ptr(); p.dweight_partial = partial.data_ptr<float>();
    p.dweight = want_dweight ? dw.data_ptr() : nullptr;
    p.rows = rows; p.cols = cols; p.partial_blocks = blocks; p.dtype = cuda_op_dtype(x2.scalar_type(), "fused op");
    launch_cuda(&CudaPlugin::rmsnorm_backward, p, "rmsnorm backward");
    return {dx, dw};
  }
  const auto ct = cpu_compute_dtype(x2);
  at::Tensor dyc = dy2.to(ct).contiguous(), xc = x2.to(ct).contiguous(), wc = w.to(ct).contiguous();
  at::Tensor dx = at::empty_like(xc);
  at::Tensor dw = want_dweight ? at::empty({cols}, xc.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(ct, "rmsnorm_backward_cpu", [&] {
    cpu::rmsnorm_backward<scalar_t>(dyc.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), wc.data_ptr<scalar_t>(),
                                    rstd.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(),
                                    want_dweight ? dw.data_ptr<scalar_t>() : nullptr, rows, cols);
  });
  return {dx.to(x2.scalar_type()), want_dweight ? dw.to(w.scalar_type()) : dw};
}

struct RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight, double eps) {
    at::Tensor x2 = x.reshape({-1, x.size(-1)}).contiguous();
    at::Tensor w = weight.contiguous();
    auto [y, rstd] = rmsnorm_forward_raw(x2, w, eps);
    ctx->save_for_backward({x2, w, rstd});
    return y.view(x.sizes());
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    at::Tensor dy2 = grads[0].reshape(saved[0].sizes()).contiguous();
    auto [dx, dw] = rmsnorm_backward_raw(dy2, saved[0], saved[1], saved[2], ctx->needs_input_grad(1));
    return {dx.view(grads[0].sizes()), dw, at::Tensor()};
  }
};

// ---- SwiGLU ----
struct SwigluFunction : public torch::autograd::Function<SwigluFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gate, const at::Tensor& up) {
    at::Tensor g = gate.contiguous(), u = up.contiguous();
    ctx->save_for_backward({g, u});
    if (g.is_cuda()) {
      at::Tensor out = at::empty_like(g);
      SwigluFwdParams p;
      p.gate = g.data_ptr(); p.up = u.data_ptr(); p.out = out.data_ptr(); p.n = g.numel();
      p.dtype = cuda_op_dtype(g.scalar_type(), "fused op");
      launch_cuda(&CudaPlugin::swiglu_forward, p, "swiglu forward");
      return out;
    }
    const auto ct = cpu_compute_dtype(g);
    at::Tensor gc = g.to(ct).contiguous(), uc = u.to(ct).contiguous(), out = at::empty_like(gc);
    AT_DISPATCH_FLOATING_TYPES(ct, "swiglu_forward_cpu", [&] {
      cpu::swiglu_forward<scalar_t>(gc.data_ptr<scalar_t>(), uc.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                    gc.numel());
    });
    return out.to(g.scalar_type());
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor& g = saved[0];
    const at::Tensor& u = saved[1];
    at::Tensor d = grads[0].contiguous();
    if (g.is_cuda()) {
      at::Tensor dg = at::empty_like(g), du = at::empty_like(u);
      SwigluBwdParams p;
      p.dout = d.data_ptr(); p.gate = g.data_ptr(); p.up = u.data_ptr(); p.dgate = dg.data_ptr();
      p.dup = du.data_ptr(); p.n = g.numel(); p.dtype = cuda_op_dtype(g.scalar_type(), "fused op");
      launch_cuda(&CudaPlugin::swiglu_backward, p, "swiglu backward");
      return {dg, du};
    }
    const auto ct = cpu_compute_dtype(g);
    at::Tensor dc = d.to(ct).contiguous(), gc = g.to(ct).contiguous(), uc = u.to(ct).contiguous();
    at::Tensor dg = at::empty_like(gc), du = at::empty_like(uc);
    AT_DISPATCH_FLOATING_TYPES(ct, "swiglu_backward_cpu", [&] {
      cpu::swiglu_backward<scalar_t>(dc.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(), uc.data_ptr<scalar_t>(),
                                     dg.data_ptr<scalar_t>(), du.data_ptr<scalar_t>(), gc.numel());
    });
    return {dg.to(g.scalar_type()), du.to(u.scalar_type())};
  }
};

// ---- rotary embedding ----
// q: [T, Hq, D], k: [T, Hkv, D] contiguous; cos/sin [T, D] contiguous. backward: apply the transpose.
std::pair<at::Tensor, at::Tensor> rope_raw(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                           const at::Tensor& sin, bool backward) {
  const int64_t tokens = q.size(0);
  const int q_heads = static_cast<int>(q.size(1)), k_heads = static_cast<int>(k.size(1));
  const int head_dim = static_cast<int>(q.size(2));
  if (q.is_cuda()) {
    at::Tensor qo = at::empty_like(q), ko = at::empty_like(k);
    RopeParams p;
    p.q = q.data_ptr(); p.k = k.data_ptr(); p.cos = cos.data_ptr(); p.sin = sin.data_ptr();
    p.q_out = qo.data_ptr(); p.k_out = ko.data_ptr(); p.tokens = tokens; p.q_heads = q_heads;
    p.k_heads = k_heads; p.head_dim = head_dim; p.backward = backward; p.dtype = cuda_op_dtype(q.scalar_type(), "fused op");
    launch_cuda(&CudaPlugin::rope, p, "rope");
    return {qo, ko};
  }
  const auto ct = cpu_compute_dtype(q);
  at::Tensor qc = q.to(ct).contiguous(), kc = k.to(ct).contiguous();
  at::Tensor cc = cos.to(ct).contiguous(), sc = sin.to(ct).contiguous();
  at::Tensor qo = at::empty_like(qc), ko = at::empty_like(kc);
  AT_DISPATCH_FLOATING_TYPES(ct, "rope_cpu", [&] {
    cpu::rope<scalar_t>(qc.data_ptr<scalar_t>(), kc.data_ptr<scalar_t>(), cc.data_ptr<scalar_t>(),
                        sc.data_ptr<scalar_t>(), qo.data_ptr<scalar_t>(), ko.data_ptr<scalar_t>(), tokens, q_heads,
                        k_heads, head_dim, backward);
  });
  return {qo.to(q.scalar_type()), ko.to(k.scalar_type())};
}

struct RopeFunction : public torch::autograd::Function<RopeFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                               const at::Tensor& sin) {
    at::Tensor cc = cos.contiguous(), sc = sin.contiguous();
    ctx->save_for_backward({cc, sc});
    auto [qo, ko] = rope_raw(q.contiguous(), k.contiguous(), cc, sc, /*backward=*/false);
    return {qo, ko};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    // An unused output (e.g. only q's path reaches the loss) arrives undefined: its gradient is zero.
    at::Tensor dq = grads[0].defined() ? grads[0].contiguous() : at::Tensor();
    at::Tensor dk = grads[1].defined() ? grads[1].contiguous() : at::Tensor();
    if (!dq.defined()) dq = at::zeros({saved[0].size(0), 0, saved[0].size(1)}, saved[0].options());
    if (!dk.defined()) dk = at::zeros({saved[0].size(0), 0, saved[0].size(1)}, saved[0].options());
    auto [gq, gk] = rope_raw(dq, dk, saved[0], saved[1], /*backward=*/true);
    return {grads[0].defined() ? gq : at::Tensor(), grads[1].defined() ? gk : at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

// ---- linear cross-entropy ----
// Statistics dtype: fp64 for fp64 CPU input, fp32 otherwise.
at::ScalarType ce_stats_dtype(const at::Tensor& hidden) {
  return hidden.is_cpu() && hidden.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void ce_stats_chunk(const at::Tensor& logits, const at::Tensor& targets, at::Tensor& m, at::Tensor& s, at::Tensor& tl,
                    int64_t vocab_offset) {
  const int64_t rows = logits.size(0), cols = logits.size(1);
  if (logits.is_cuda()) {
    CeChunkStatsParams p;
    p.logits = logits.data_ptr<float>(); p.targets = targets.data_ptr<int64_t>(); p.row_max = m.data_ptr<float>();
    p.row_sum = s.data_ptr<float>(); p.target_logit = tl.data_ptr<float>(); p.rows = rows; p.cols = cols;
    p.vocab_offset = vocab_offset;
    launch_cuda(&CudaPlugin::ce_chunk_stats, p, "linear cross-entropy forward");
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "ce_chunk_stats_cpu", [&] {
    cpu::ce_chunk_stats<scalar_t>(logits.data_ptr<scalar_t>(), targets.data_ptr<int64_t>(), m.data_ptr<scalar_t>(),
                                  s.data_ptr<scalar_t>(), tl.data_ptr<scalar_t>(), rows, cols, vocab_offset);
  });
}

void ce_grad_chunk(at::Tensor& logits, const at::Tensor& lse, const at::Tensor& targets, const at::Tensor& grad_scale,
                   int64_t vocab_offset) {
  const int64_t rows = logits.size(0), cols = logits.size(1);
  if (logits.is_cuda()) {
    CeChunkGradParams p;
    p.logits = logits.data_ptr<float>(); p.lse = lse.data_ptr<float>(); p.targets = targets.data_ptr<int64_t>();
    p.grad_scale = grad_scale.data_ptr<float>(); p.rows = rows; p.cols = cols; p.vocab_offset = vocab_offset;
    launch_cuda(&CudaPlugin::ce_chunk_grad, p, "linear cross-entropy backward");
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "ce_chunk_grad_cpu", [&] {
    cpu::ce_chunk_grad<scalar_t>(logits.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(), targets.data_ptr<int64_t>(),
                                 grad_scale.data_ptr<scalar_t>()[0], rows, cols, vocab_offset);  // CPU scalar
  });
}

struct LinearCeFunction : public torch::autograd::Function<LinearCeFunction> {
  // hidden [N, H], weight [V, H], targets int64 [N] -> scalar loss sum (fp32; fp64 for fp64 CPU input).
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const at::Tensor& targets, int64_t chunk_rows, int64_t chunk_vocab) {
    const int64_t n = hidden.size(0), vocab = weight.size(0);
    const auto sdt = ce_stats_dtype(hidden);
    at::Tensor lse = at::empty({n}, hidden.options().dtype(sdt));
    at::Tensor row_loss = at::empty({n}, hidden.options().dtype(sdt));
    at::ScalarType mm_dtype = hidden.scalar_type();
    for (int64_t r0 = 0; r0 < n; r0 += chunk_rows) {
      const int64_t rows = std::min(chunk_rows, n - r0);
      at::Tensor h = hidden.narrow(0, r0, rows);
      at::Tensor t = targets.narrow(0, r0, rows);
      at::Tensor m = at::full({rows}, -std::numeric_limits<double>::infinity(), lse.options());
      at::Tensor s = at::zeros({rows}, lse.options()), tl = at::zeros({rows}, lse.options());
      for (int64_t v0 = 0; v0 < vocab; v0 += chunk_vocab) {
        const int64_t cols = std::min(chunk_vocab, vocab - v0);
        at::Tensor chunk = at::mm(h, weight.narrow(0, v0, cols).t());  // [rows, cols]; autocast applies here
        mm_dtype = chunk.scalar_type();
        at::Tensor logits = chunk.to(sdt).contiguous();
        ce_stats_chunk(logits, t, m, s, tl, v0);
      }
      at::Tensor l = m + s.log();
      lse.narrow(0, r0, rows).copy_(l);
      row_loss.narrow(0, r0, rows).copy_(l - tl);
    }
    ctx->save_for_backward({hidden, weight, targets, lse});
    ctx->saved_data["chunk_rows"] = chunk_rows;
    ctx->saved_data["chunk_vocab"] = chunk_vocab;
    ctx->saved_data["mm_dtype"] = static_cast<int64_t>(mm_dtype);
    return row_loss.sum();
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor& hidden = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& targets = saved[2];
    const at::Tensor& lse = saved[3];
    const int64_t chunk_rows = ctx->saved_data["chunk_rows"].toInt();
    const int64_t chunk_vocab = ctx->saved_data["chunk_vocab"].toInt();
    const auto mm_dtype = static_cast<at::ScalarType>(ctx->saved_data["mm_dtype"].toInt());
    const int64_t n = hidden.size(0), vocab = weight.size(0);
    const bool want_dh = ctx->needs_input_grad(0), want_dw = ctx->needs_input_grad(1);
    at::Tensor grad_scale = grads[0].to(lse.scalar_type()).reshape({1}).contiguous();  // stays on the device
    at::Tensor dh = want_dh ? at::empty_like(hidden) : at::Tensor();
    at::Tensor dw = want_dw ? at::zeros(weight.sizes(), weight.options().dtype(lse.scalar_type())) : at::Tensor();
    for (int64_t r0 = 0; r0 < n; r0 += chunk_rows) {
      const int64_t rows = std::min(chunk_rows, n - r0);
      at::Tensor h = hidden.narrow(0, r0, rows).to(mm_dtype);
      at::Tensor t = targets.narrow(0, r0, rows);
      at::Tensor l = lse.narrow(0, r0, rows).contiguous();
      at::Tensor dh_acc = want_dh ? at::zeros({rows, hidden.size(1)}, lse.options()) : at::Tensor();
      for (int64_t v0 = 0; v0 < vocab; v0 += chunk_vocab) {
        const int64_t cols = std::min(chunk_vocab, vocab - v0);
        at::Tensor w = weight.narrow(0, v0, cols).to(mm_dtype);
        at::Tensor g = at::mm(h, w.t()).to(lse.scalar_type()).contiguous();  // recomputed logits [rows, cols]
        ce_grad_chunk(g, l, t, grad_scale, v0);                               // -> d logits, in place
        at::Tensor gm = g.to(mm_dtype);
        if (want_dh) dh_acc.add_(at::mm(gm, w));
        if (want_dw) dw.narrow(0, v0, cols).add_(at::mm(gm.t(), h));
      }
      if (want_dh) dh.narrow(0, r0, rows).copy_(dh_acc);
    }
    return {dh, want_dw ? dw.to(weight.scalar_type()) : dw, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

// ---- public entry points ----
at::Tensor fused_rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_op_tensor(x, "rmsnorm", "x");
  check_op_tensor(weight, "rmsnorm", "weight");
  TORCH_CHECK(x.dim() >= 1 && weight.dim() == 1 && weight.size(0) == x.size(-1), "rmsnorm: weight ", weight.sizes(),
              " does not match x ", x.sizes());
  if (x.scalar_type() != weight.scalar_type() || x.device() != weight.device()) return composite_rms_norm(x, weight, eps);
  return RmsNormFunction::apply(x, weight, eps);
}

at::Tensor fused_swiglu(const at::Tensor& gate, const at::Tensor& up) {
  check_op_tensor(gate, "swiglu", "gate");
  check_op_tensor(up, "swiglu", "up");
  TORCH_CHECK(gate.sizes() == up.sizes(), "swiglu: gate ", gate.sizes(), " and up ", up.sizes(), " differ");
  if (gate.scalar_type() != up.scalar_type() || gate.device() != up.device()) return composite_swiglu(gate, up);
  return SwigluFunction::apply(gate, up);
}

std::pair<at::Tensor, at::Tensor> fused_rotary(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                               const at::Tensor& sin) {
  for (auto [t, name] : {std::pair{&q, "q"}, {&k, "k"}, {&cos, "cos"}, {&sin, "sin"}}) check_op_tensor(*t, "rope", name);
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && q.size(0) == k.size(0) && q.size(2) == k.size(2) && q.size(2) % 2 == 0,
              "rope: q ", q.sizes(), " and k ", k.sizes(), " must be [T, H, D] with equal T and even D");
  TORCH_CHECK(cos.dim() == 2 && cos.sizes() == sin.sizes() && cos.size(0) == q.size(0) && cos.size(1) == q.size(2),
              "rope: cos ", cos.sizes(), " / sin ", sin.sizes(), " must be [T, D] for q ", q.sizes());
  const bool same = q.scalar_type() == k.scalar_type() && q.scalar_type() == cos.scalar_type() &&
                    q.scalar_type() == sin.scalar_type() && q.device() == k.device() && q.device() == cos.device();
  if (!same) return composite_rotary(q, k, cos, sin);
  variable_list out = RopeFunction::apply(q, k, cos, sin);
  return {out[0], out[1]};
}

at::Tensor fused_linear_cross_entropy_sum(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                          LinearCeChunks chunks) {
  check_op_tensor(hidden, "linear cross-entropy", "hidden");
  check_op_tensor(weight, "linear cross-entropy", "weight");
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1),
              "linear cross-entropy: hidden ", hidden.sizes(), " and weight ", weight.sizes(),
              " must be [N, H] and [V, H]");
  TORCH_CHECK(targets.defined() && targets.scalar_type() == at::kLong && targets.dim() == 1 &&
                  targets.size(0) == hidden.size(0) && targets.device() == hidden.device(),
              "linear cross-entropy: targets must be int64 [", hidden.size(0), "] on ", hidden.device());
  TORCH_CHECK(hidden.device() == weight.device(), "linear cross-entropy: hidden and weight on different devices");
  TORCH_CHECK(chunks.rows > 0 && chunks.vocab > 0, "linear cross-entropy: chunk sizes must be > 0");
  if (targets.is_cpu() && targets.numel() > 0) {
    const int64_t lo = targets.min().item<int64_t>(), hi = targets.max().item<int64_t>();  // CPU: no device sync
    TORCH_CHECK(lo >= 0 && hi < weight.size(0), "linear cross-entropy: target ids must be in [0, ", weight.size(0),
                "), got [", lo, ", ", hi, "]");
  }
  return LinearCeFunction::apply(hidden, weight, targets.contiguous(), chunks.rows, chunks.vocab);
}

// ---- composite versions (the model's math before the fused ops) ----
at::Tensor composite_rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor x32 = x.to(at::kFloat);
  at::Tensor variance = x32.pow(2).mean(-1, /*keepdim=*/true);
  at::Tensor normed = (x32 * at::rsqrt(variance + eps)).to(x.scalar_type());
  return weight * normed;
}

at::Tensor composite_swiglu(const at::Tensor& gate, const at::Tensor& up) { return at::silu(gate) * up; }

std::pair<at::Tensor, at::Tensor> composite_rotary(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                                   const at::Tensor& sin) {
  auto rotate_half = [](const at::Tensor& x) {  // halves (x1, x2) -> (-x2, x1)
    const int64_t half = x.size(-1) / 2;
    return at::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
  };
  at::Tensor c = cos.unsqueeze(1), s = sin.unsqueeze(1);
  return {q * c + rotate_half(q) * s, k * c + rotate_half(k) * s};
}

at::Tensor composite_linear_cross_entropy_sum(const at::Tensor& hidden, const at::Tensor& weight,
                                              const at::Tensor& targets) {
  at::Tensor logits = at::linear(hidden, weight);  // [N, V]
  return at::cross_entropy_loss(logits.to(at::kFloat), targets, {}, at::Reduction::Sum);
}

// ---- model.fused_ops and the op table ----
FusedOpsChoice parse_fused_ops_choice(const std::vector<std::string>& names) {
  FusedOpsChoice choice;
  if (names.size() == 1 && names[0] == "auto") return choice;
  if (names.size() == 1 && names[0] == "none") {
    choice.mode = FusedOpsChoice::Mode::None;
    return choice;
  }
  choice.mode = FusedOpsChoice::Mode::List;
  const std::vector<std::string> problems = fused_ops_choice_problems(names);
  if (!problems.empty()) {
    std::string message = problems.front();
    for (size_t i = 1; i < problems.size(); ++i) message += "; " + problems[i];
    throw InputError(message);
  }
  for (const std::string& n : names) choice.ops.push_back(*enum_from_name<FusedOp>(n));
  return choice;
}

std::vector<std::string> fused_ops_choice_problems(const std::vector<std::string>& names) {
  std::vector<std::string> problems;
  if (names.size() == 1 && (names[0] == "auto" || names[0] == "none")) return problems;
  for (const std::string& n : names) {
    if (!enum_from_name<FusedOp>(n)) {
      problems.push_back("model.fused_ops: unknown op '" + n + "' (auto, none, or a list of " +
                         enum_names_joined<FusedOp>(", ") + ")");
    }
  }
  return problems;
}

std::vector<std::string> fused_ops_choice_names(const FusedOpsChoice& choice) {
  switch (choice.mode) {
    case FusedOpsChoice::Mode::Auto: return {"auto"};
    case FusedOpsChoice::Mode::None: return {"none"};
    case FusedOpsChoice::Mode::List: break;
  }
  std::vector<std::string> names;
  for (FusedOp op : choice.ops) names.emplace_back(enum_name(op));
  return names;
}

FusedOps resolve_fused_ops(const FusedOpsChoice& choice, at::DeviceType device) {
  FusedOps ops;
  switch (choice.mode) {
    case FusedOpsChoice::Mode::Auto:
      // The ops measured faster than the composite code (scripts/bench_ops.sh): RMSNorm, RoPE, LoRA's
      // dropout and the LoRA group on the CPU. SwiGLU and linear CE are slower on the CPU (linear CE saves the [N, V] logits:
      // opt in). On CUDA none yet: the CUDA kernels have not run on a GPU (the GPU proof,
      // scripts/gpu_run.sh, runs them).
      // projections (one GEMM for q/k/v, one for gate/up): opt-in on the CPU too; one SmolLM2 layer timed
      // faster or equal with it, but on a machine at load 12 the spread hid the gain (README "Fused projections").
      // lora (the adapted projections of one input as one node): faster or equal in 4 of 4 idle pairs and
      // 3-9% less peak RSS on SmolLM2 LoRA fp32 (README "LoRA projections as one node").
      if (device == at::kCPU) ops.rmsnorm = ops.rope = ops.dropout = ops.lora = true;
      return ops;
    case FusedOpsChoice::Mode::None: return ops;
    case FusedOpsChoice::Mode::List: break;
  }
  for (FusedOp op : choice.ops) {
    switch (op) {
      case FusedOp::RmsNorm: ops.rmsnorm = true; break;
      case FusedOp::Rope: ops.rope = true; break;
      case FusedOp::SwiGlu: ops.swiglu = true; break;
      case FusedOp::LinearCe: ops.linear_ce = true; break;
      case FusedOp::Dropout: ops.dropout = true; break;
      case FusedOp::Projections: ops.projections = true; break;
      case FusedOp::Lora: ops.lora = true; break;
    }
  }
  return ops;
}

FusedOps parse_fused_ops(const std::vector<std::string>& names, at::DeviceType device) {
  return resolve_fused_ops(parse_fused_ops_choice(names), device);
}

std::string to_string(const FusedOps& ops) {
  std::string s;
  for (auto [on, op] : {std::pair{ops.rmsnorm, FusedOp::RmsNorm}, {ops.rope, FusedOp::Rope}, {ops.swiglu, FusedOp::SwiGlu},
                        {ops.linear_ce, FusedOp::LinearCe}, {ops.dropout, FusedOp::Dropout},
                        {ops.projections, FusedOp::Projections}, {ops.lora, FusedOp::Lora}}) {
    if (on) s += (s.empty() ? "" : ", ") + std::string(enum_name(op));
  }
  return s.empty() ? "none" : "[" + s + "]";
}

namespace {
at::Tensor fused_linear_ce_default(const at::Tensor& h, const at::Tensor& w, const at::Tensor& t) {
  return fused_linear_cross_entropy_sum(h, w, t);
}
}  // namespace

OpTable op_table(const FusedOps& ops) {
  OpTable table;
  table.rms_norm = ops.rmsnorm ? &fused_rms_norm : &composite_rms_norm;
  table.swiglu = ops.swiglu ? &fused_swiglu : &composite_swiglu;
  table.rotary = ops.rope ? &fused_rotary : &composite_rotary;
  table.linear_ce_sum = ops.linear_ce ? &fused_linear_ce_default : &composite_linear_cross_entropy_sum;
  table.linear_group = ops.projections ? &fused_linear_group : &composite_linear_group;
  table.group_projections = ops.projections;
  table.group_lora = ops.lora;
  return table;
}

}  // namespace sft::kernels
