// trainer/config.h: the one typed run configuration, with every default in code. A single field list
// (config.cpp) drives YAML parsing, dotted overrides, the resolved config.yaml we save, and `sft help`.
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "data/data_options.h"

namespace sft {

struct ModelOptions {
  std::string path;                    // HF model dir (required)
  std::string dtype = "auto";          // auto|float32|bfloat16|float16
  std::string attention = "auto";      // auto|fused|sdpa|eager
  std::vector<std::string> fused_ops{"auto"};  // auto | none | list of rmsnorm, rope, swiglu, linear_ce
  bool gradient_checkpointing = false;
  bool deterministic_attention = false;  // fused attention's deterministic backward (kernels/README.md)
  std::string quantization = "none";     // none|nf4: QLoRA's 4-bit base (model/quantize.h); LoRA only
  bool double_quantization = true;       // nf4: quantise the absmax constants again (bitsandbytes compress_statistics)
};

struct LoraOptions {
  int64_t r = 8;
  double alpha = 16.0;
  double dropout = 0.05;
  std::vector<std::string> targets{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  bool rslora = false;
  std::optional<std::string> init_from;  // an existing PEFT adapter directory to start from
  bool dora = false;                     // weight-decomposed LoRA (PEFT use_dora)
  std::optional<double> lr_ratio;        // LoRA+: lr of B (and DoRA magnitudes) = lr * ratio; none = off
  std::string init = "default";          // default|gaussian|pissa|olora (PEFT init_lora_weights)
};

// freeze.trainable_layers: N > 0 the last N layers, N < 0 the first |N|, or an explicit list of indices.
struct LayerSelection {
  std::optional<int64_t> count = 2;
  std::vector<int64_t> indices;  // used when count is empty
};

struct FreezeOptions {
  LayerSelection trainable_layers;
  std::vector<std::string> trainable_modules{"all"};  // all | self_attn, mlp, q_proj, ...
  std::vector<std::string> extra_modules;             // embed_tokens, norm, lm_head
};

struct FinetuneOptions {
  std::string method = "lora";  // lora|freeze|full
  LoraOptions lora;
  FreezeOptions freeze;
};

struct TrainOptions {
  int64_t seed = 42;
  int64_t epochs = 1;
  int64_t max_steps = -1;
  int64_t micro_batch_size = 4;
  int64_t grad_accum = 1;
  double lr = 2.0e-4;
  std::string scheduler = "cosine";  // cosine|linear|constant
  int64_t warmup_steps = 0;
  double warmup_ratio = 0.0;         // used when warmup_steps is 0
  double min_lr_ratio = 0.0;
  double weight_decay = 0.0;
  std::vector<double> adam_betas{0.9, 0.999};
  double adam_eps = 1.0e-8;
  double max_grad_norm = 1.0;        // <= 0 disables clipping
  std::string device = "auto";       // auto|cpu|cuda
  std::string mixed_precision = "auto";  // auto|none|bf16 (auto: bf16 on CUDA, none on CPU)
  int64_t threads = 0;
};

struct EvalOptions {
  int64_t every_steps = 0;
  int64_t batch_size = 8;
  bool generate = false;
  int64_t max_new_tokens = 64;
};

struct CheckpointOptions {
  int64_t every_steps = 0;
  int64_t keep_last = 2;
};

// Multi-process data parallelism (torchrun / sft launch; trainer/process_group.h).
struct DistOptions {
  std::string backend = "auto";  // auto|gloo|nccl (auto: NCCL on CUDA, Gloo on CPU)
  double timeout_s = 300;        // every collective and store wait; a dead or hung rank fails the job after this
  double bucket_mb = 25;         // gradient allreduce bucket size (trainer/grad_sync.h)
};

struct LogOptions {
  int64_t every_steps = 10;
  bool progress = true;
  bool tensorboard = false;  // also write TensorBoard event files to output_dir/tensorboard/
};

struct Config {
  ModelOptions model;
  data::TokenizerOptions tokenizer;
  data::DataOptions data;
  FinetuneOptions finetune;
  TrainOptions train;
  EvalOptions eval;
  CheckpointOptions checkpoint;
  std::string resume = "auto";  // auto|never|PATH
  std::string output_dir;       // default: runs/<config file stem>
  LogOptions log;
  DistOptions dist;
};

// Reads CONFIG.yaml, applies `key.sub=value` overrides, validates. Every problem found (unknown key,
// wrong type, out-of-range value, missing required key) is listed in one sft::InputError.
Config load_config(const std::filesystem::path& path, const std::vector<std::string>& overrides);
Config parse_config(const std::string& yaml_text, const std::string& label,
                    const std::vector<std::string>& overrides, const std::string& default_name);

// The resolved config as YAML: every key, in the documented order.
std::string config_to_yaml(const Config& config);

// `sft help config`: every key with its default and meaning.
std::string config_reference();

}  // namespace sft
