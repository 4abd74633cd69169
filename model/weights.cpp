// model/weights.cpp: the HF name table, checkpoint loading with full validation, and HF export.
#include "model/weights.h"

#include <torch/torch.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "common/errors.h"
#include "common/text_file.h"
#include "model/named_tensors.h"
#include "model/safetensors.h"

namespace sft::model {
namespace fs = std::filesystem;

std::vector<WeightEntry> weight_table(const ModelConfig& c) {
  const int64_t hidden = c.hidden_size, inner = c.intermediate_size;
  const int64_t q_out = c.num_attention_heads * c.head_dim, kv_out = c.num_key_value_heads * c.head_dim;
  const bool qkv_bias = c.attention_bias;
  const bool o_bias = c.o_proj_bias();
  std::vector<WeightEntry> table;
  table.push_back({"model.embed_tokens.weight", {c.vocab_size, hidden}});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    table.push_back({p + "self_attn.q_proj.weight", {q_out, hidden}});
    if (qkv_bias) table.push_back({p + "self_attn.q_proj.bias", {q_out}});
    table.push_back({p + "self_attn.k_proj.weight", {kv_out, hidden}});
    if (qkv_bias) table.push_back({p + "self_attn.k_proj.bias", {kv_out}});
    table.push_back({p + "self_attn.v_proj.weight", {kv_out, hidden}});
    if (qkv_bias) table.push_back({p + "self_attn.v_proj.bias", {kv_out}});
    table.push_back({p + "self_attn.o_proj.weight", {hidden, q_out}});
    if (o_bias) table.push_back({p + "self_attn.o_proj.bias", {hidden}});
    table.push_back({p + "mlp.gate_proj.weight", {inner, hidden}});
    table.push_back({p + "mlp.up_proj.weight", {inner, hidden}});
    table.push_back({p + "mlp.down_proj.weight", {hidden, inner}});
    if (c.mlp_bias) {
      table.push_back({p + "mlp.gate_proj.bias", {inner}});
      table.push_back({p + "mlp.up_proj.bias", {inner}});
      table.push_back({p + "mlp.down_proj.bias", {hidden}});
    }
    table.push_back({p + "input_layernorm.weight", {hidden}});
    table.push_back({p + "post_attention_layernorm.weight", {hidden}});
  }
  table.push_back({"model.norm.weight", {hidden}});
  if (!c.tie_word_embeddings) table.push_back({"lm_head.weight", {c.vocab_size, hidden}});
  return table;
}

bool is_ignorable_checkpoint_tensor(const std::string& name, const ModelConfig& config) {
  auto ends_with = [&](const std::string& suffix) {
    return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  if (ends_with("rotary_emb.inv_freq")) return true;
  // Some exporters write lm_head.weight even when it is tied to the embeddings.
  return config.tie_word_embeddings && name == "lm_head.weight";
}

namespace {

std::map<std::string, at::Tensor> parameters_by_name(torch::nn::Module& module) {
  std::map<std::string, at::Tensor> params;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) params[item.key()] = item.value();
  return params;
}

}  // namespace

void load_weights(CausalLM& model, const fs::path& dir) {
  const ModelConfig& config = model->config();
  const CheckpointFiles files = CheckpointFiles::open(dir);
  const NamedTensorSource source = NamedTensorSource::of(files, dir.string());
  std::map<std::string, at::Tensor> params = parameters_by_name(*model);
  const std::map<std::string, std::shared_ptr<Nf4ProjectionImpl>> quantized = nf4_projections(model);
  std::vector<TensorSlot> slots;
  for (const WeightEntry& entry : weight_table(config)) {
    auto it = params.find(entry.name);
    if (it == params.end()) throw std::logic_error("weight table names unknown parameter " + entry.name);
    auto q = quantized.find(entry.name);
    // An NF4 weight is checked against the dense [out, in] it is quantised from (a meta tensor: no memory).
    slots.push_back({entry.name, q == quantized.end() ? it->second
                                                      : at::empty({q->second->out_features(), q->second->in_features()},
                                                                  at::TensorOptions(at::kMeta).dtype(q->second->compute_dtype))});
  }
  TensorMatchRules rules;
  rules.heading = "checkpoint does not match config.json";
  rules.ignorable = [&](const std::string& name) { return is_ignorable_checkpoint_tensor(name, config); };
  require_named_tensors_match(source, slots, rules);
  torch::NoGradGuard no_grad;
  for (const TensorSlot& slot : slots) {
    auto q = quantized.find(slot.name);
    if (q == quantized.end()) {
      source.read_into(slot.name, slot.destination);
    } else {
      // One dense weight at a time: read in the compute dtype, quantised, freed.
      q->second->quantize_weight(source.read(slot.name, slot.destination.scalar_type()));
    }
  }
}

CausalLM load_pretrained(const fs::path& dir, at::ScalarType dtype, const at::Device& device,
                         const LoadOptions& options) {
  ModelConfig config = load_model_config(dir);
  // Built on the CPU with uninitialised parameters, so no page of a weight is touched before the
  // checkpoint is read into it (glibc maps large allocations lazily).
  CausalLM model(config, at::TensorOptions().dtype(dtype).device(at::kCPU));
  if (options.nf4) {
    swap_in_empty_nf4_projections(model, *options.nf4);
    // Quantised on the run's device, as quantize_model_nf4 after the move would: the empty model moves
    // first (its remaining parameters are then read through a CPU copy, one tensor at a time).
    if (!device.is_cpu()) model->to(device);
  }
  load_weights(model, dir);
  if (!device.is_cpu()) model->to(device);
  return model;
}

std::optional<at::ScalarType> scalar_type_of(DtypeChoice choice) {
  switch (choice) {
    case DtypeChoice::kAuto: return std::nullopt;
    case DtypeChoice::kFloat32: return at::kFloat;
    case DtypeChoice::kBFloat16: return at::kBFloat16;
    case DtypeChoice::kFloat16: return at::kHalf;
  }
  return std::nullopt;
}

at::ScalarType parse_dtype(const std::string& name, const std::string& key) {
  const std::string full = name == "fp32" ? "float32" : name == "bf16" ? "bfloat16" : name == "fp16" ? "float16" : name;
  const std::optional<DtypeChoice> choice = enum_from_name<DtypeChoice>(full);
  if (choice && *choice != DtypeChoice::kAuto) return *scalar_type_of(*choice);
  std::string names;  // every dtype name but auto
  for (const auto& [entry, entry_name] : EnumNames<DtypeChoice>::entries) {
    if (entry != DtypeChoice::kAuto) names += (names.empty() ? "" : "|") + std::string(entry_name);
  }
  throw InputError(key + ": '" + name + "' is not one of " + names);
}

std::string dtype_name(at::ScalarType dtype) {
  for (const auto& [entry, name] : EnumNames<DtypeChoice>::entries) {
    if (scalar_type_of(entry) == dtype) return name;
  }
  return c10::toString(dtype);
}

void save_pretrained(CausalLM& model, const fs::path& source_config_dir, const fs::path& out_dir,
                     at::ScalarType dtype, int64_t shard_bytes) {
  fs::create_directories(out_dir);
  std::map<std::string, at::Tensor> params = parameters_by_name(*model);
  std::vector<std::vector<std::pair<std::string, at::Tensor>>> shards(1);
  int64_t shard_size = 0, total_size = 0;
  for (const WeightEntry& entry : weight_table(model->config())) {
    at::Tensor tensor = params.at(entry.name).detach().to(at::kCPU, dtype).contiguous();
    const int64_t bytes = tensor.numel() * static_cast<int64_t>(tensor.element_size());
    if (shard_size > 0 && shard_size + bytes > shard_bytes) {
      shards.emplace_back();
      shard_size = 0;
    }
    shards.back().emplace_back(entry.name, tensor);
    shard_size += bytes;
    total_size += bytes;
  }
  const std::map<std::string, std::string> metadata{{"format", "pt"}};
  if (shards.size() == 1) {
    write_safetensors(out_dir / "model.safetensors", shards[0], metadata);
  } else {
    nlohmann::json index;
    index["metadata"] = {{"total_size", total_size}};
    index["weight_map"] = nlohmann::json::object();
    const size_t count = shards.size();
    for (size_t s = 0; s < count; ++s) {
      char name[64];
      std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", s + 1, count);
      write_safetensors(out_dir / name, shards[s], metadata);
      for (const auto& [tensor_name, tensor] : shards[s]) index["weight_map"][tensor_name] = name;
    }
    write_text_file(out_dir / "model.safetensors.index.json", index.dump(2) + "\n");
  }
  // config.json: the source config with the saved dtype.
  std::ifstream in(source_config_dir / "config.json");
  nlohmann::json config = nlohmann::json::parse(in);
  config["torch_dtype"] = dtype_name(dtype);
  if (config.contains("dtype")) config["dtype"] = dtype_name(dtype);
  write_text_file(out_dir / "config.json", config.dump(2) + "\n");
}

}  // namespace sft::model
