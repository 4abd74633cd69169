// model/config.cpp: parsing and validation of HF config.json into ModelConfig.
#include "model/config.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/errors.h"

namespace sft::model {
namespace {

using nlohmann::json;

class ConfigReader {
 public:
  ConfigReader(const json& root, const std::string& label) : root_(root), label_(label) {}

  int64_t required_int(const char* key) const {
    const json* value = find(key);
    if (!value) fail(std::string("missing required key '") + key + "'");
    if (!value->is_number_integer()) fail(std::string("key '") + key + "' must be an integer");
    return value->get<int64_t>();
  }
  int64_t optional_int(const char* key, int64_t fallback) const {
    const json* value = find(key);
    if (!value || value->is_null()) return fallback;
    if (!value->is_number_integer()) fail(std::string("key '") + key + "' must be an integer");
    return value->get<int64_t>();
  }
  double optional_number(const char* key, double fallback) const {
    const json* value = find(key);
    if (!value || value->is_null()) return fallback;
    if (!value->is_number()) fail(std::string("key '") + key + "' must be a number");
    return value->get<double>();
  }
  bool optional_bool(const char* key, bool fallback) const {
    const json* value = find(key);
    if (!value || value->is_null()) return fallback;
    if (!value->is_boolean()) fail(std::string("key '") + key + "' must be true or false");
    return value->get<bool>();
  }
  std::string optional_string(const char* key, const std::string& fallback) const {
    const json* value = find(key);
    if (!value || value->is_null()) return fallback;
    if (!value->is_string()) fail(std::string("key '") + key + "' must be a string");
    return value->get<std::string>();
  }
  // bos/eos ids: an integer, a list of integers, or absent.
  std::vector<int64_t> optional_id_list(const char* key) const {
    const json* value = find(key);
    if (!value || value->is_null()) return {};
    if (value->is_number_integer()) return {value->get<int64_t>()};
    if (value->is_array()) {
      std::vector<int64_t> ids;
      for (const json& item : *value) {
        if (!item.is_number_integer()) fail(std::string("key '") + key + "' must hold integers");
        ids.push_back(item.get<int64_t>());
      }
      return ids;
    }
    fail(std::string("key '") + key + "' must be an integer or a list of integers");
  }
  const json* find(const char* key) const {
    auto it = root_.find(key);
    return it == root_.end() ? nullptr : &*it;
  }
  [[noreturn]] void fail(const std::string& what) const { throw InputError(label_ + ": " + what); }

 private:
  const json& root_;
  std::string label_;
};

// transformers < 5 writes `rope_scaling`; transformers 5 writes `rope_parameters` (which also holds
// rope_theta and rope_type "default" when unscaled). Both are read the same way.
void read_rope_scaling(const ConfigReader& reader, ModelConfig& config) {
  const char* key = "rope_scaling";
  const json* scaling = reader.find(key);
  if (!scaling || scaling->is_null()) {
    key = "rope_parameters";
    scaling = reader.find(key);
  }
  if (!scaling || scaling->is_null()) return;
  if (!scaling->is_object()) reader.fail(std::string("key '") + key + "' must be an object or null");
  std::string kind;
  for (const char* type_key : {"rope_type", "type"}) {
    auto it = scaling->find(type_key);
    if (it != scaling->end() && it->is_string()) {
      kind = it->get<std::string>();
      break;
    }
  }
  ConfigReader sub(*scaling, "");
  const std::string scaling_key = key;
  auto number = [&](const char* name, double fallback) {
    try {
      return sub.optional_number(name, fallback);
    } catch (const InputError&) {
      reader.fail(std::string("key '") + scaling_key + "." + name + "' must be a number");
    }
  };
  if (kind == "default" || kind.empty()) return;
  if (kind == "linear") {
    config.rope_scaling = RopeScaling::Linear;
    config.rope_factor = number("factor", 1.0);
  } else if (kind == "llama3") {
    config.rope_scaling = RopeScaling::Llama3;
    config.rope_factor = number("factor", 8.0);
    config.rope_low_freq_factor = number("low_freq_factor", 1.0);
    config.rope_high_freq_factor = number("high_freq_factor", 4.0);
    config.rope_original_max_position =
        static_cast<int64_t>(number("original_max_position_embeddings", 8192));
  } else {
    reader.fail(scaling_key + " type '" + kind + "' is not supported (supported: default, linear, llama3)");
  }
  if (config.rope_factor <= 0) reader.fail(scaling_key + ".factor must be > 0");
}

}  // namespace

ModelConfig parse_model_config(const std::string& json_text, const std::string& label) {
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::parse_error& e) {
    throw InputError(label + ": invalid JSON: " + e.what());
  }
  if (!root.is_object()) throw InputError(label + ": expected a JSON object");
  ConfigReader reader(root, label);

  ModelConfig config;
  config.model_type = reader.optional_string("model_type", "");
  if (config.model_type.empty()) reader.fail("missing required key 'model_type'");
  if (config.model_type != "llama" && config.model_type != "mistral" && config.model_type != "qwen2") {
    reader.fail("model_type '" + config.model_type + "' is not supported (supported: llama, mistral, qwen2)");
  }
  config.vocab_size = reader.required_int("vocab_size");
  config.hidden_size = reader.required_int("hidden_size");
  config.intermediate_size = reader.required_int("intermediate_size");
  config.num_hidden_layers = reader.required_int("num_hidden_layers");
  config.num_attention_heads = reader.required_int("num_attention_heads");
  config.num_key_value_heads = reader.optional_int("num_key_value_heads", config.num_attention_heads);
  config.rms_norm_eps = reader.optional_number("rms_norm_eps", 1e-6);
  config.rope_theta = reader.optional_number("rope_theta", 10000.0);
  // transformers 5 may nest rope_theta inside rope_parameters.
  if (const json* params = reader.find("rope_parameters"); params && params->is_object()) {
    auto it = params->find("rope_theta");
    if (it != params->end() && it->is_number()) config.rope_theta = it->get<double>();
  }
  config.tie_word_embeddings = reader.optional_bool("tie_word_embeddings", false);
  config.attention_bias = config.model_type == "qwen2" ? true : reader.optional_bool("attention_bias", false);
  config.mlp_bias = reader.optional_bool("mlp_bias", false);
  config.max_position_embeddings = reader.optional_int("max_position_embeddings", 2048);
  config.torch_dtype = reader.optional_string("torch_dtype", reader.optional_string("dtype", "float32"));
  config.hidden_act = reader.optional_string("hidden_act", "silu");
  if (config.hidden_act != "silu") reader.fail("hidden_act '" + config.hidden_act + "' is not supported (silu only)");
  config.bos_token_ids = reader.optional_id_list("bos_token_id");
  config.eos_token_ids = reader.optional_id_list("eos_token_id");
  if (const json* window = reader.find("sliding_window"); window && window->is_number_integer()) {
    bool used = config.model_type == "mistral" || reader.optional_bool("use_sliding_window", false);
    if (used) config.sliding_window = window->get<int64_t>();
  }
  read_rope_scaling(reader, config);

  auto positive = [&](int64_t value, const char* key) {
    if (value <= 0) reader.fail(std::string("key '") + key + "' must be > 0");
  };
  positive(config.vocab_size, "vocab_size");
  positive(config.hidden_size, "hidden_size");
  positive(config.intermediate_size, "intermediate_size");
  positive(config.num_hidden_layers, "num_hidden_layers");
  positive(config.num_attention_heads, "num_attention_heads");
  positive(config.num_key_value_heads, "num_key_value_heads");
  if (config.num_attention_heads % config.num_key_value_heads != 0) {
    reader.fail("num_key_value_heads must divide num_attention_heads");
  }
  const int64_t derived_head_dim = config.hidden_size / config.num_attention_heads;
  config.head_dim = reader.optional_int("head_dim", derived_head_dim);
  positive(config.head_dim, "head_dim");
  if (reader.find("head_dim") == nullptr && config.hidden_size % config.num_attention_heads != 0) {
    reader.fail("hidden_size must be divisible by num_attention_heads when head_dim is absent");
  }
  if (config.head_dim % 2 != 0) reader.fail("head_dim must be even for rotary embeddings");
  return config;
}

ModelConfig load_model_config(const std::filesystem::path& dir) {
  const std::filesystem::path path = dir / "config.json";
  std::ifstream in(path);
  if (!in) throw InputError(path.string() + ": cannot open (is '" + dir.string() + "' an HF model directory?)");
  std::stringstream text;
  text << in.rdbuf();
  return parse_model_config(text.str(), path.string());
}

}  // namespace sft::model
