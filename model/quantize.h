// model/quantize.h: QLoRA's base quantisation as an explicit transform of a built model: every block
// projection (q, k, v, o, gate, up, down in every layer) is swapped for an Nf4Projection that holds its
// weight as 4-bit NormalFloat (blocks of 64, optionally double-quantised absmax), as bitsandbytes'
// quantize_4bit(quant_type="nf4") stores it. Embeddings, norms and lm_head stay in model.dtype. The base
// names are kept: `weight` is the packed codes (uint8 [ceil(out * in / 2), 1], bitsandbytes' shape),
// `bias` is unchanged; the absmax constants are buffers beside it (weight_absmax, weight_nested_*).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/nf4.h"
#include "kernels/nf4_params.h"
#include "model/llama.h"

namespace sft::model {

// float [rows, cols] (any float dtype, any device) -> NF4, computed as bitsandbytes' reference backend does
// (fp32 absmax per block, x * (1 / absmax) clamped to [-1, 1], the nearest of the 16 codes by bucketize over
// the fp32 midpoints, ties to the lower code; two codes per byte, the first in the high nibble). With
// double_quant (bitsandbytes compress_statistics): offset = mean(absmax); absmax - offset quantised to
// 8 bits in blocks of 256 against nf4_nested_code(), each value to its nearest code.
kernels::Nf4Tensors quantize_nf4(const at::Tensor& weight, bool double_quant,
                                 int64_t blocksize = kernels::kNf4BlockSize);

// bitsandbytes' create_dynamic_map(signed=True): the 256 fp32 codes of its 8-bit blockwise quantisation.
at::Tensor nf4_nested_code();

// y = dequant(W) x^T + b; W dequantised per row tile at call time (kernels::nf4_linear).
class Nf4ProjectionImpl : public ProjectionImpl {
 public:
  // Takes `dense`'s shape, bias and compute dtype (its weight's dtype) but not its values: the NF4
  // tensors stay empty until quantize_weight fills them, and dense's weight storage (shared, so the
  // dense module must be dropped) is released unread. Quantising while loading (model/weights.h) thus
  // never needs the dense weight; quantize_model_nf4 passes the dense values to quantize_weight.
  Nf4ProjectionImpl(const ProjectionImpl& dense, bool double_quant);
  // Shares another Nf4Projection's tensors (used by LoRA wrappers).
  explicit Nf4ProjectionImpl(const Nf4ProjectionImpl& other);
  // Quantises a dense [out, in] weight (converted to compute_dtype, as the loaded weight was) into this
  // projection's NF4 tensors, on their device.
  void quantize_weight(const at::Tensor& dense);
  bool is_filled() const { return nf4.codes.numel() > 0; }
  at::Tensor forward(const at::Tensor& x) override;
  at::Tensor dense_weight() const;  // the dequantised weight [out, in] in compute_dtype (a temporary)
  int64_t in_features() const { return nf4.cols; }
  int64_t out_features() const { return nf4.rows; }

  kernels::Nf4Tensors nf4;
  at::ScalarType compute_dtype;

 private:
  void register_quant_buffers();
};
TORCH_MODULE(Nf4Projection);

struct QuantizationSpec {
  bool double_quant = true;  // model.double_quantization
};

// Swaps every block projection for an Nf4Projection (already quantised ones are skipped) and freezes it.
// Returns the module paths quantised.
std::vector<std::string> quantize_model_nf4(CausalLM& model, const QuantizationSpec& spec);

// The same swap with the NF4 tensors left empty (Nf4ProjectionImpl's constructor): the first half of
// quantising while loading; load_weights (model/weights.h) quantises each checkpoint weight as it reads
// it. Returns the module paths swapped.
std::vector<std::string> swap_in_empty_nf4_projections(CausalLM& model, const QuantizationSpec& spec);
// The Nf4Projections of `model` by their weight's name ("model.layers.0.self_attn.q_proj.weight"),
// those inside LoRA wrappers included.
std::map<std::string, std::shared_ptr<Nf4ProjectionImpl>> nf4_projections(CausalLM& model);

// Bytes the quantised projections hold, and the bytes their dense weights held (for the log line).
struct QuantizationSummary {
  int64_t modules = 0, quantized_bytes = 0, dense_bytes = 0;
};
QuantizationSummary quantization_summary(CausalLM& model);

}  // namespace sft::model
