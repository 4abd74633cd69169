// model/quantize.cpp: NF4 quantisation of a tensor (bitsandbytes' arithmetic, in ATen ops, on the
// tensor's device), the Nf4Projection module, and the model transform that swaps block projections for it.
#include "model/quantize.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <typeinfo>

#include "kernels/nf4_params.h"
#include "model/lora.h"

namespace sft::model {
namespace {

// Per-block absmax of a flat fp32 tensor and each element scaled into [-1, 1] (bitsandbytes:
// clamp(A * (1 / absmax.clamp(min=1e-38)), -1, 1); its `1.0 / t` is reciprocal(t) * 1.0). A last partial
// block is zero-padded, which changes neither its absmax nor its elements.
std::pair<at::Tensor, at::Tensor> blockwise_scale(const at::Tensor& flat, int64_t blocksize) {
  const int64_t n = flat.numel(), blocks = (n + blocksize - 1) / blocksize;
  at::Tensor padded = at::constant_pad_nd(flat, {0, blocks * blocksize - n}).view({blocks, blocksize});
  at::Tensor absmax = std::get<0>(padded.abs().max(/*dim=*/-1));  // fp32 [blocks]
  at::Tensor scaled = at::clamp(padded * at::reciprocal(absmax.clamp_min(1e-38)).mul(1.0).view({-1, 1}), -1, 1);
  return {absmax, scaled.view({-1}).narrow(0, 0, n)};
}

// Index of the nearest code (sorted fp32 `code`), ties to the lower one: bucketize over the midpoints.
at::Tensor nearest_code(const at::Tensor& scaled, const at::Tensor& code) {
  const int64_t k = code.numel();
  at::Tensor bounds = (code.narrow(0, 0, k - 1) + code.narrow(0, 1, k - 1)) / 2;
  return at::bucketize(scaled, bounds, /*out_int32=*/true).to(at::kByte);
}

// Elements quantised per pass (model/quantize.cpp quantize_nf4): 256 KiB of fp32 temporaries each.
constexpr int64_t kQuantizeChunkElements = int64_t{1} << 16;

}  // namespace

at::Tensor nf4_nested_code() {
  // bitsandbytes create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): for i in 0..6,
  // 2^i + 1 fp32 linspace(0.1, 1) boundaries, their fp32 midpoints times +-10^(i-6); then 0 and 1; sorted.
  std::vector<float> data;
  for (int i = 0; i < 7; ++i) {
    at::Tensor b = at::linspace(0.1, 1, (int64_t{1} << i) + 1, at::TensorOptions(at::kFloat));
    at::Tensor means = (b.narrow(0, 0, b.numel() - 1) + b.narrow(0, 1, b.numel() - 1)) / 2.0;
    const double scale = std::pow(10.0, -6 + i);  // Python's 10 ** (-(7 - 1) + i)
    for (const double sign : {1.0, -1.0}) {
      at::Tensor part = (means * (sign * scale)).contiguous();
      data.insert(data.end(), part.data_ptr<float>(), part.data_ptr<float>() + part.numel());
    }
  }
  data.push_back(0.f);
  data.push_back(1.f);
  std::sort(data.begin(), data.end());
  return at::tensor(data, at::TensorOptions(at::kFloat));
}

kernels::Nf4Tensors quantize_nf4(const at::Tensor& weight, bool double_quant, int64_t blocksize) {
  TORCH_CHECK(weight.dim() == 2, "quantize_nf4: expected a [rows, cols] weight, got ", weight.sizes());
  TORCH_CHECK(at::isFloatingType(weight.scalar_type()), "quantize_nf4: weight must be floating point");
  torch::NoGradGuard no_grad;
  kernels::Nf4Tensors q;
  q.rows = weight.size(0);
  q.cols = weight.size(1);
  q.blocksize = blocksize;
  const at::Tensor flat = weight.detach().reshape({-1});
  const int64_t n = flat.numel(), blocks = (n + blocksize - 1) / blocksize;
  const at::Tensor code = at::from_blob(const_cast<float*>(kernels::kNf4Code), {16}, at::kFloat).to(weight.device(), /*non_blocking=*/false, /*copy=*/true);
  at::Tensor absmax = at::empty({blocks}, flat.options().dtype(at::kFloat));
  q.codes = at::empty({(n + 1) / 2, 1}, flat.options().dtype(at::kByte));
  // Chunks of whole blocks (an even number: bytes never straddle two), so the fp32 temporaries stay
  // small whatever the weight: a weight-sized set of them per projection, allocated and freed while a
  // model loads, makes glibc's heap touch as much memory as the dense projections (README "QLoRA").
  // Every block is independent, so the result is the same as one pass over the whole weight.
  const int64_t chunk = std::max<int64_t>(1, kQuantizeChunkElements / (2 * blocksize)) * 2 * blocksize;
  at::Tensor packed = q.codes.view({-1});
  for (int64_t begin = 0; begin < n; begin += chunk) {
    const int64_t count = std::min(chunk, n - begin);
    auto [chunk_absmax, scaled] = blockwise_scale(flat.narrow(0, begin, count).to(at::kFloat), blocksize);
    absmax.narrow(0, begin / blocksize, chunk_absmax.numel()).copy_(chunk_absmax);
    at::Tensor codes = nearest_code(scaled, code);
    if (codes.numel() % 2) codes = at::cat({codes, nearest_code(at::zeros({1}, scaled.options()), code)});
    codes = codes.view({-1, 2});
    packed.narrow(0, begin / 2, codes.size(0)).copy_(codes.select(1, 0).bitwise_left_shift(4).bitwise_or(codes.select(1, 1)));
  }
  if (!double_quant) {
    q.absmax = absmax.contiguous();
    return q;
  }
  const at::Tensor offset = absmax.mean();
  q.nested_offset = offset.item<float>();
  auto [nested_absmax, nested_scaled] = blockwise_scale(absmax - offset, kernels::kNf4NestedBlockSize);
  q.nested_code = nf4_nested_code().to(weight.device());
  q.absmax = nearest_code(nested_scaled, q.nested_code).contiguous();
  q.nested_absmax = nested_absmax.contiguous();
  return q;
}

Nf4ProjectionImpl::Nf4ProjectionImpl(const ProjectionImpl& dense, bool double_quant)
    : ProjectionImpl(dense), compute_dtype(dense.weight.scalar_type()) {
  nf4.rows = dense.weight.size(0);
  nf4.cols = dense.weight.size(1);
  // `weight` (shared with `dense`, which the transform drops) becomes the packed codes, empty until
  // quantize_weight: the dense storage is freed once the old module is gone.
  const at::TensorOptions on = dense.weight.options();
  weight.set_requires_grad(false);
  weight.set_data(at::empty({0, 1}, on.dtype(at::kByte)));
  nf4.codes = weight;
  nf4.absmax = at::empty({0}, on.dtype(double_quant ? at::kByte : at::kFloat));
  if (double_quant) {
    nf4.nested_absmax = at::empty({0}, on.dtype(at::kFloat));
    nf4.nested_code = at::empty({0}, on.dtype(at::kFloat));
  }
  if (bias.defined()) bias.set_requires_grad(false);
  register_quant_buffers();
}

Nf4ProjectionImpl::Nf4ProjectionImpl(const Nf4ProjectionImpl& other)
    : ProjectionImpl(other), nf4(other.nf4), compute_dtype(other.compute_dtype) {
  register_quant_buffers();
}

void Nf4ProjectionImpl::register_quant_buffers() {
  register_buffer("weight_absmax", nf4.absmax);
  if (nf4.double_quant()) {
    register_buffer("weight_nested_absmax", nf4.nested_absmax);
    register_buffer("weight_nested_quant_map", nf4.nested_code);
  }
}

void Nf4ProjectionImpl::quantize_weight(const at::Tensor& dense) {
  TORCH_CHECK(dense.dim() == 2 && dense.size(0) == nf4.rows && dense.size(1) == nf4.cols,
              "Nf4Projection::quantize_weight: expected a [", nf4.rows, ", ", nf4.cols, "] weight, got ", dense.sizes());
  torch::NoGradGuard no_grad;
  const kernels::Nf4Tensors q =
      quantize_nf4(dense.to(nf4.codes.device(), compute_dtype), nf4.double_quant(), nf4.blocksize);
  // set_data keeps every handle (the parameter, the buffers, a LoRA wrapper's copies) on the new values.
  nf4.codes.set_data(q.codes);
  nf4.absmax.set_data(q.absmax);
  if (nf4.double_quant()) {
    nf4.nested_absmax.set_data(q.nested_absmax);
    nf4.nested_code.set_data(q.nested_code);
    nf4.nested_offset = q.nested_offset;
  }
}

at::Tensor Nf4ProjectionImpl::forward(const at::Tensor& x) {
  at::Tensor y = kernels::nf4_linear(x, nf4);
  return bias.defined() ? y + bias : y;
}

at::Tensor Nf4ProjectionImpl::dense_weight() const { return kernels::nf4_dequantize(nf4, compute_dtype); }

namespace {

// Swaps every plain block projection for an empty Nf4Projection; with `quantize`, fills it from the
// projection's own (dense) weight. The swapped projections on the CPU share one tile workspace
// (kernels/nf4.h), sized for the largest.
std::vector<std::string> swap_block_projections(CausalLM& model, const QuantizationSpec& spec, bool quantize) {
  std::vector<std::string> swapped;
  std::vector<std::shared_ptr<Nf4ProjectionImpl>> on_cpu;
  for_each_block_projection(model, [&](const std::string& parent_path, torch::nn::Module& parent,
                                       const std::string& name, Projection& holder) {
    if (std::dynamic_pointer_cast<Nf4ProjectionImpl>(holder.ptr())) return;
    TORCH_CHECK(typeid(*holder) == typeid(ProjectionImpl), "quantize_model_nf4: ", parent_path, ".", name,
                " is already transformed (quantise before applying LoRA)");
    const at::Tensor dense = holder->weight.detach();  // keeps the dense values while `weight` is swapped
    auto q = std::make_shared<Nf4ProjectionImpl>(*holder, spec.double_quant);
    if (quantize) q->quantize_weight(dense);
    parent.replace_module(name, q);
    holder = Projection(std::static_pointer_cast<ProjectionImpl>(q));
    swapped.push_back(parent_path + "." + name);
    if (q->nf4.codes.is_cpu()) on_cpu.push_back(q);
  });
  int64_t workspace_bytes = 0;
  for (const auto& q : on_cpu) workspace_bytes = std::max(workspace_bytes, kernels::nf4_workspace_bytes(q->nf4));
  const at::Tensor workspace = at::empty({workspace_bytes}, at::TensorOptions(at::kByte));
  for (const auto& q : on_cpu) q->nf4.workspace = workspace;
  return swapped;
}

}  // namespace

std::vector<std::string> quantize_model_nf4(CausalLM& model, const QuantizationSpec& spec) {
  return swap_block_projections(model, spec, /*quantize=*/true);
}

std::vector<std::string> swap_in_empty_nf4_projections(CausalLM& model, const QuantizationSpec& spec) {
  return swap_block_projections(model, spec, /*quantize=*/false);
}

std::map<std::string, std::shared_ptr<Nf4ProjectionImpl>> nf4_projections(CausalLM& model) {
  std::map<std::string, std::shared_ptr<Nf4ProjectionImpl>> found;
  for_each_block_projection(model, [&](const std::string& parent_path, torch::nn::Module&, const std::string& name,
                                       Projection& holder) {
    std::shared_ptr<Nf4ProjectionImpl> q = std::dynamic_pointer_cast<Nf4ProjectionImpl>(holder.ptr());
    if (auto lora = std::dynamic_pointer_cast<LoraProjectionImpl>(holder.ptr())) q = lora->quantized_base;
    if (q) found[parent_path + "." + name + ".weight"] = q;
  });
  return found;
}

QuantizationSummary quantization_summary(CausalLM& model) {
  QuantizationSummary s;
  for_each_block_projection(model, [&](const std::string&, torch::nn::Module&, const std::string&, Projection& holder) {
    const Nf4ProjectionImpl* q = dynamic_cast<const Nf4ProjectionImpl*>(holder.get());
    if (const auto* lora = dynamic_cast<const LoraProjectionImpl*>(holder.get())) q = lora->quantized_base.get();
    if (!q) return;
    ++s.modules;
    s.quantized_bytes += q->nf4.storage_bytes();
    s.dense_bytes += q->nf4.numel() * static_cast<int64_t>(c10::elementSize(q->compute_dtype));
  });
  return s;
}

}  // namespace sft::model
