// trainer/setup.h: named setup helpers shared by `sft train` and `sft eval`: resolving device, dtype
// and attention from the config, loading the tokenizer and model, and applying the fine-tuning method
// (LoRA / freeze / full) as an explicit transform of the built model.
#pragma once
#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "data/pipeline.h"
#include "data/tokenizer.h"
#include "model/lora.h"
#include "trainer/config.h"

namespace sft {

struct Runtime {
  at::Device device{at::kCPU};
  at::ScalarType dtype = at::kFloat;  // compute dtype of the frozen base weights
  kernels::AttentionImpl attention = kernels::AttentionImpl::Auto;
  bool gradient_checkpointing = false;
  model::ForwardOptions forward_options() const { return {attention, gradient_checkpointing}; }
};

// device auto -> cuda when available; dtype auto -> float32 on CPU, bfloat16 on CUDA; sets threads.
Runtime resolve_runtime(const Config& config);

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

// Applies finetune.method to a loaded model (seeded: LoRA A init draws from the default generator).
// LoRA with finetune.lora.init_from loads that adapter instead of a fresh init.
TrainableSummary apply_finetune_method(model::CausalLM& model, const Config& config);
TrainableSummary count_parameters(model::CausalLM& model);

}  // namespace sft
