// trainer/setup.h: named setup helpers shared by `sft train` and `sft eval`: resolving device, dtype
// and attention from the config, loading the tokenizer and model, and applying the fine-tuning method
// (LoRA / freeze / full) as an explicit transform of the built model.
#pragma once
#include <ATen/ATen.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/autocast.h"
#include "data/pipeline.h"
#include "data/tokenizer.h"
#include "model/lora.h"
#include "model/weights.h"
#include "trainer/config.h"

namespace sft {

struct Runtime {
  at::Device device{at::kCPU};
  at::ScalarType dtype = at::kFloat;  // compute dtype: the model loads in it and frozen weights stay in it
  // Mixed precision (train.mixed_precision): the forward runs under LibTorch autocast in this dtype and
  // trainable parameters are fp32 master weights. Empty: no autocast; ops run in the parameters' dtypes.
  std::optional<at::ScalarType> autocast_dtype;
  kernels::AttentionImpl attention = kernels::AttentionImpl::Auto;
  bool gradient_checkpointing = false;
  model::ForwardOptions forward_options() const { return {attention, gradient_checkpointing}; }
};

// device auto -> cuda when available; mixed_precision auto -> bf16 on CUDA (unless model.dtype is float32
// or float16), none on CPU; dtype auto -> the autocast dtype with mixed precision, else float32 on CPU and
// bfloat16 on CUDA; sets threads. cuda_index: the CUDA device (LOCAL_RANK in a multi-process run).
Runtime resolve_runtime(const Config& config, int64_t cuda_index = 0);

// train.mixed_precision resolved for a device: the autocast dtype, or empty for none.
std::optional<at::ScalarType> resolve_mixed_precision(const Config& config, const at::Device& device);

// While alive, ops on the runtime's device type run under autocast in runtime.autocast_dtype (matmuls
// in bf16, precision-sensitive ops in fp32), as `with torch.autocast(device_type, dtype)` does; CPU and
// CUDA alike. A no-op without mixed precision. Restores the previous autocast state. Wrap forwards only:
// backward runs outside (autograd replays the casts the forward recorded).
class AutocastScope : public ScopedAutocast {
 public:
  explicit AutocastScope(const Runtime& runtime) : ScopedAutocast(runtime.device.type(), runtime.autocast_dtype) {}
};

std::filesystem::path tokenizer_dir(const Config& config);
std::unique_ptr<data::Tokenizer> load_run_tokenizer(const Config& config);

// data.format `tokenized` reads ids directly; every other format goes through the chat-template pipeline.
// The tokenizer may be null for `tokenized` data (a model directory without tokenizer files is fine then).
data::PreparedData load_run_data(const Config& config, const data::Tokenizer* tokenizer, int64_t model_vocab_size);
// Loads the tokenizer unless the data is pre-tokenized (then null).
std::unique_ptr<data::Tokenizer> load_tokenizer_if_needed(const Config& config);
int32_t run_pad_id(const data::Tokenizer* tokenizer);

model::LoraSpec lora_spec_from(const Config& config);
model::FreezeSpec freeze_spec_from(const Config& config);

struct TrainableSummary {
  int64_t trainable = 0;
  int64_t total = 0;
  std::string describe() const;  // "trainable params: 1,234 / 56,789 (2.17%)"
};

// How load_pretrained builds the run's model: with model.quantization nf4 it quantises the block
// projections while loading (model/weights.h LoadOptions), so the dense base never exists whole.
model::LoadOptions model_load_options(const Config& config);
// model.quantization nf4: quantises every block projection to NF4 (model/quantize.h) that is not already
// (a model loaded with model_load_options is); none: nothing.
void apply_quantization(model::CausalLM& model, const Config& config);

// Applies model.fused_ops, then model.quantization, then finetune.method, to a loaded model (seeded: LoRA A init draws from the default generator).
// LoRA with finetune.lora.init_from loads that adapter instead of a fresh init. Trainable parameters
// become fp32 master weights (LoRA adapters always; every trainable parameter with mixed precision);
// frozen ones keep the compute dtype.
TrainableSummary apply_finetune_method(model::CausalLM& model, const Config& config);
TrainableSummary count_parameters(model::CausalLM& model);

}  // namespace sft
