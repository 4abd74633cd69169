// trainer/config.h: the one typed run configuration, with every default in code. A single field list
// (config.cpp) drives YAML parsing, dotted overrides, the resolved config.yaml we save, and `sft help`.
#pragma once
#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/enum_names.h"
#include "data/data_options.h"
#include "kernels/choices.h"
#include "model/choices.h"
#include "trainer/schedule.h"

namespace sft {

// The trainer's config choices; each has its one list of names (EnumNames, below).
enum class FinetuneMethod { kLora, kFreeze, kFull };
using model::LoraInit;  // finetune.lora.init (model/choices.h)
enum class DeviceChoice { kAuto, kCpu, kCuda };
enum class MixedPrecision { kAuto, kNone, kBf16 };  // auto: bf16 on CUDA, none on CPU
enum class DistBackend { kAuto, kGloo, kNccl };     // auto: NCCL on CUDA, Gloo on CPU
enum class Quantization { kNone, kNf4 };            // model.quantization: nf4 = QLoRA's 4-bit base

struct ModelOptions {
  std::string path;                    // HF model dir (required)
  model::DtypeChoice dtype = model::DtypeChoice::kAuto;
  kernels::AttentionImpl attention = kernels::AttentionImpl::Auto;  // a config name only (kernels/choices.h)
  kernels::FusedOpsChoice fused_ops;   // auto | none | list of rmsnorm, rope, swiglu, linear_ce, dropout
  bool gradient_checkpointing = false;
  bool deterministic_attention = false;  // fused attention's deterministic backward (kernels/README.md)
  Quantization quantization = Quantization::kNone;  // QLoRA's 4-bit base (model/quantize.h); LoRA only
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
  LoraInit init = LoraInit::kDefault;
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
  FinetuneMethod method = FinetuneMethod::kLora;
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
  Scheduler scheduler = Scheduler::kCosine;
  int64_t warmup_steps = 0;
  double warmup_ratio = 0.0;         // used when warmup_steps is 0
  double min_lr_ratio = 0.0;
  double weight_decay = 0.0;
  std::vector<double> adam_betas{0.9, 0.999};
  double adam_eps = 1.0e-8;
  double max_grad_norm = 1.0;        // <= 0 disables clipping
  // AdamW updates each parameter inside the backward as its gradient completes, then frees the gradient
  // (trainer/step_in_backward.h): less peak memory in full fine-tuning. Needs grad_accum 1, no clipping.
  bool optimizer_in_backward = false;
  DeviceChoice device = DeviceChoice::kAuto;
  MixedPrecision mixed_precision = MixedPrecision::kAuto;
  int64_t threads = 0;
};

struct EvalOptions {
  int64_t every_steps = 0;
  int64_t batch_size = 8;
  bool generate = false;
  int64_t max_new_tokens = 64;
  int64_t generate_batch_size = 8;  // eval.generate: prompts decoded together (model::generate_batch)
};

struct CheckpointOptions {
  int64_t every_steps = 0;
  int64_t keep_last = 2;
};

// Multi-process data parallelism (torchrun / sft launch; trainer/process_group.h).
struct DistOptions {
  DistBackend backend = DistBackend::kAuto;
  double timeout_s = 300;        // every collective and store wait; a dead or hung rank fails the job after this
  double bucket_mb = 25;         // gradient allreduce bucket size (trainer/grad_sync.h)
  // Build the c10d process group and run every collective even in a world of one (no torchrun, or
  // WORLD_SIZE=1): how one GPU proves NCCL works (scripts/gpu_run.sh). Costs a store and the allreduces.
  bool force_process_group = false;
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

template <>
struct EnumNames<FinetuneMethod> {
  static constexpr std::array<std::pair<FinetuneMethod, const char*>, 3> entries{
      {{FinetuneMethod::kLora, "lora"}, {FinetuneMethod::kFreeze, "freeze"}, {FinetuneMethod::kFull, "full"}}};
};
template <>
struct EnumNames<DeviceChoice> {
  static constexpr std::array<std::pair<DeviceChoice, const char*>, 3> entries{
      {{DeviceChoice::kAuto, "auto"}, {DeviceChoice::kCpu, "cpu"}, {DeviceChoice::kCuda, "cuda"}}};
};
template <>
struct EnumNames<MixedPrecision> {
  static constexpr std::array<std::pair<MixedPrecision, const char*>, 3> entries{
      {{MixedPrecision::kAuto, "auto"}, {MixedPrecision::kNone, "none"}, {MixedPrecision::kBf16, "bf16"}}};
};
template <>
struct EnumNames<Quantization> {
  static constexpr std::array<std::pair<Quantization, const char*>, 2> entries{
      {{Quantization::kNone, "none"}, {Quantization::kNf4, "nf4"}}};
};

template <>
struct EnumNames<DistBackend> {
  static constexpr std::array<std::pair<DistBackend, const char*>, 3> entries{
      {{DistBackend::kAuto, "auto"}, {DistBackend::kGloo, "gloo"}, {DistBackend::kNccl, "nccl"}}};
};

}  // namespace sft
