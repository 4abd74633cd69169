// model/weights.h: the one table from HF checkpoint tensor names to our parameters, and loading /
// saving a CausalLM from / to an HF model directory (config.json + safetensors, sharded or not).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "common/enum_names.h"
#include "model/choices.h"
#include "model/config.h"
#include "model/llama.h"
#include "model/quantize.h"

namespace sft::model {

struct WeightEntry {
  std::string name;            // HF tensor name == our parameter name (kept equal by model/llama.h)
  std::vector<int64_t> shape;
};

// Every tensor an HF checkpoint of this architecture holds, in HF's order.
std::vector<WeightEntry> weight_table(const ModelConfig& config);

// Checkpoint names we accept and ignore (buffers older transformers versions saved).
bool is_ignorable_checkpoint_tensor(const std::string& name, const ModelConfig& config);

// How load_pretrained builds the model before reading the checkpoint.
struct LoadOptions {
  // model.quantization nf4: the block projections are swapped for empty Nf4Projections before anything
  // is read (swap_in_empty_nf4_projections), and each projection's checkpoint weight is quantised as it is
  // read, so the dense weights never exist for the whole model. The result equals load_pretrained then
  // quantize_model_nf4 bit for bit (the weight is read in `dtype` and quantised on `device` either way).
  std::optional<QuantizationSpec> nf4;
};

// Builds the model described by dir/config.json on `device` in `dtype` and loads its weights.
// Missing, unexpected or wrong-shaped tensors are sft::InputError naming the tensor (and both shapes).
// The process holds about one copy of the model in `dtype` (the parameters are not initialised before
// the checkpoint is read into them, model/llama.cpp; file pages are read, not mapped), plus one
// tensor's quantisation temporaries with nf4.
CausalLM load_pretrained(const std::filesystem::path& dir, at::ScalarType dtype, const at::Device& device,
                         const LoadOptions& options = {});
// Reads dir's checkpoint into a built model: plain tensors straight into the parameters, the weight of
// each Nf4Projection quantised as it is read (Nf4ProjectionImpl::quantize_weight).
void load_weights(CausalLM& model, const std::filesystem::path& dir);

// Writes `model` as an HF directory: config.json (copied from `source_config_dir`, dtype updated) and
// model.safetensors, or shards of at most `shard_bytes` plus model.safetensors.index.json.
// Parameters are saved under their HF names; LoRA tensors are never part of this table.
void save_pretrained(CausalLM& model, const std::filesystem::path& source_config_dir,
                     const std::filesystem::path& out_dir, at::ScalarType dtype, int64_t shard_bytes);

// DtypeChoice (model.dtype) is in model/choices.h.
std::optional<at::ScalarType> scalar_type_of(DtypeChoice choice);  // nullopt for kAuto

// Parses "float32" | "bfloat16" | "float16" (and "fp32"/"bf16"/"fp16"), the DtypeChoice names but auto;
// throws InputError naming `key`.
at::ScalarType parse_dtype(const std::string& name, const std::string& key);
std::string dtype_name(at::ScalarType dtype);

}  // namespace sft::model
