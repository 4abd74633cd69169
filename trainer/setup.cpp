// trainer/setup.cpp: runtime resolution, tokenizer/model loading and the fine-tuning transforms.
#include "trainer/setup.h"

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <cstdio>
#include <sstream>

#include "common/errors.h"
#include "data/tokenized.h"
#include "kernels/cuda_plugin.h"
#include "model/config.h"
#include "model/quantize.h"
#include "model/weights.h"
#include "trainer/export.h"

namespace sft {
namespace fs = std::filesystem;

namespace {
// What resolve_attention_impl needs of the run: the deterministic key, the attention dtype and, for the
// timing race of `auto` on CUDA only, the model's attention shape (config.json is read here for it).
kernels::AttentionResolveOptions attention_resolve_options(const Config& config, const Runtime& runtime) {
  kernels::AttentionResolveOptions options;
  options.deterministic = config.model.deterministic_attention;
  options.dtype = runtime.autocast_dtype.value_or(runtime.dtype);
  options.max_seqlen = config.data.max_seq_len;
  if (runtime.device.is_cuda() && config.model.attention == kernels::AttentionImpl::Auto) {
    const model::ModelConfig shape = model::load_model_config(config.model.path);
    options.num_heads = shape.num_attention_heads;
    options.num_kv_heads = shape.num_key_value_heads;
    options.head_dim = shape.head_dim;
  }
  return options;
}
}  // namespace

Runtime resolve_runtime(const Config& config, int64_t cuda_index) {
  Runtime runtime;
  const bool cuda_available = kernels::cuda_device_available();
  if (config.train.device == DeviceChoice::kCuda) {
    if (!cuda_available) {
      throw InputError("train.device: cuda was requested but no CUDA device is available (the CUDA plugin is " +
                       kernels::load_cuda_plugin().status + ")");
    }
    runtime.device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(cuda_index));
  } else if (config.train.device == DeviceChoice::kAuto && cuda_available) {
    runtime.device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(cuda_index));
  }
  runtime.autocast_dtype = resolve_mixed_precision(config, runtime.device);
  if (const std::optional<at::ScalarType> dtype = model::scalar_type_of(config.model.dtype)) {
    runtime.dtype = *dtype;
  } else if (runtime.autocast_dtype) {
    runtime.dtype = *runtime.autocast_dtype;
  } else {
    runtime.dtype = runtime.device.is_cuda() ? at::kBFloat16 : at::kFloat;
  }
  runtime.gradient_checkpointing = config.model.gradient_checkpointing;
  runtime.attention = kernels::resolve_attention_impl(config.model.attention,
                                                     runtime.device, attention_resolve_options(config, runtime));
  if (config.train.threads > 0) at::set_num_threads(static_cast<int>(config.train.threads));
  return runtime;
}

std::optional<at::ScalarType> resolve_mixed_precision(const Config& config, const at::Device& device) {
  const MixedPrecision mode = config.train.mixed_precision;
  if (mode == MixedPrecision::kBf16) return at::kBFloat16;
  // auto: bf16 on CUDA, where it is the norm, unless model.dtype asks for float32 or float16 compute.
  const bool bf16_model = config.model.dtype == model::DtypeChoice::kAuto || config.model.dtype == model::DtypeChoice::kBFloat16;
  if (mode == MixedPrecision::kAuto && device.is_cuda() && bf16_model) return at::kBFloat16;
  return std::nullopt;
}

fs::path tokenizer_dir(const Config& config) {
  return config.tokenizer.path ? fs::path(*config.tokenizer.path) : fs::path(config.model.path);
}

std::unique_ptr<data::Tokenizer> load_run_tokenizer(const Config& config) {
  return data::load_tokenizer(tokenizer_dir(config));
}

data::PreparedData load_run_data(const Config& config, const data::Tokenizer* tokenizer, int64_t model_vocab_size) {
  const uint64_t seed = static_cast<uint64_t>(config.train.seed);
  if (config.data.format == data::Format::kTokenized) return data::prepare_tokenized_data(config.data, seed, model_vocab_size);
  if (!tokenizer) throw std::logic_error("load_run_data: a tokenizer is required for text formats");
  return data::prepare_data(config.data, *tokenizer, seed, model_vocab_size, tokenizer_dir(config));
}

std::unique_ptr<data::Tokenizer> load_tokenizer_if_needed(const Config& config) {
  if (config.data.format == data::Format::kTokenized) return nullptr;
  return load_run_tokenizer(config);
}

int32_t run_pad_id(const data::Tokenizer* tokenizer) {
  return tokenizer ? data::default_pad_id(*tokenizer) : 0;  // padding never carries targets
}

model::LoraSpec lora_spec_from(const Config& config) {
  const LoraOptions& o = config.finetune.lora;
  return model::LoraSpec{o.r, o.alpha, o.dropout, o.rslora, o.targets, o.dora, o.init};
}

model::FreezeSpec freeze_spec_from(const Config& config) {
  const FreezeOptions& o = config.finetune.freeze;
  return model::FreezeSpec{o.trainable_layers.count, o.trainable_layers.indices, o.trainable_modules, o.extra_modules};
}

std::string TrainableSummary::describe() const {
  char text[160];
  std::snprintf(text, sizeof(text), "trainable params: %lld / %lld (%.4f%%)", static_cast<long long>(trainable),
                static_cast<long long>(total), total ? 100.0 * trainable / total : 0.0);
  return text;
}

TrainableSummary count_parameters(model::CausalLM& lm) {
  TrainableSummary summary;
  for (const auto& p : lm->parameters()) {
    // An NF4 weight (model/quantize.h) is uint8 with two parameters per byte; counted as PEFT's
    // print_trainable_parameters counts bitsandbytes' Params4bit.
    summary.total += p.scalar_type() == at::kByte ? 2 * p.numel() : p.numel();
    if (p.requires_grad()) summary.trainable += p.numel();
  }
  return summary;
}

namespace {
// model.quantization nf4's spec; nullopt for none.
std::optional<model::QuantizationSpec> quantization_spec(const Config& config) {
  if (config.model.quantization == Quantization::kNone) return std::nullopt;
  if (config.finetune.method != FinetuneMethod::kLora) {  // parse_config refuses this too; setup is also reached from eval
    throw InputError("model.quantization " + std::string(enum_name(config.model.quantization)) +
                     " needs finetune.method lora (got " + enum_name(config.finetune.method) + ")");
  }
  return model::QuantizationSpec{config.model.double_quantization};
}
}  // namespace

model::LoadOptions model_load_options(const Config& config) {
  model::LoadOptions options;
  options.nf4 = quantization_spec(config);
  return options;
}

void apply_quantization(model::CausalLM& lm, const Config& config) {
  if (const std::optional<model::QuantizationSpec> spec = quantization_spec(config)) model::quantize_model_nf4(lm, *spec);
}

TrainableSummary apply_finetune_method(model::CausalLM& lm, const Config& config) {
  // model.fused_ops first: the op choice is part of the model the method transforms (auto depends on the device).
  lm->set_fused_ops(kernels::resolve_fused_ops(config.model.fused_ops, lm->output_weight().device().type()));
  const FinetuneMethod method = config.finetune.method;
  apply_quantization(lm, config);
  if (method == FinetuneMethod::kLora) {
    model::LoraSpec spec = lora_spec_from(config);
    model::apply_lora(lm, spec);
    if (config.finetune.lora.init_from) {
      model::LoraSpec loaded = load_peft_adapter(lm, *config.finetune.lora.init_from);
      if (loaded.rank != spec.rank) {
        throw InputError("finetune.lora.init_from: adapter rank " + std::to_string(loaded.rank) +
                         " differs from finetune.lora.r " + std::to_string(spec.rank));
      }
    }
  } else if (method == FinetuneMethod::kFreeze) {
    model::apply_freeze(lm, freeze_spec_from(config));
  } else {
    for (auto& p : lm->parameters()) p.set_requires_grad(true);
  }
  // fp32 master weights: LoRA adapters always, whatever the base dtype; with mixed precision every trainable
  // parameter (as LLaMA-Factory upcasts them). Frozen parameters keep the compute dtype.
  const at::Device device = lm->parameters().front().device();
  if (method == FinetuneMethod::kLora || resolve_mixed_precision(config, device)) {
    torch::NoGradGuard no_grad;
    for (auto& p : lm->parameters()) {
      if (p.requires_grad()) p.set_data(p.to(at::kFloat));
    }
  }
  return count_parameters(lm);
}

}  // namespace sft
