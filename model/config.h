// model/config.h: ModelConfig, the architecture hyper-parameters read from an HF config.json
// (model_type llama, mistral, qwen2). Unsupported types or rope scalings are errors, not approximations.
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace sft::model {

enum class RopeScaling { None, Linear, Llama3 };

struct ModelConfig {
  std::string model_type;  // llama | mistral | qwen2
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;  // explicit in config.json, or hidden_size / num_attention_heads
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling = RopeScaling::None;
  double rope_factor = 1.0;                    // linear and llama3
  double rope_low_freq_factor = 1.0;           // llama3
  double rope_high_freq_factor = 4.0;          // llama3
  int64_t rope_original_max_position = 8192;   // llama3
  bool tie_word_embeddings = false;
  bool attention_bias = false;                 // q/k/v biases (qwen2 always; llama if attention_bias)
  bool mlp_bias = false;
  int64_t max_position_embeddings = 0;
  std::optional<int64_t> sliding_window;       // mistral; only accepted when >= every sequence we train on
  std::vector<int64_t> bos_token_ids;
  std::vector<int64_t> eos_token_ids;
  std::string torch_dtype = "float32";
  std::string hidden_act = "silu";

  // Whether o_proj has a bias: Llama's attention_bias covers q/k/v and o_proj; Qwen2 has biases on
  // q/k/v only. The one place this rule lives (the modules and the weight name table both ask).
  bool o_proj_bias() const { return attention_bias && model_type != "qwen2"; }
};

// Reads and validates `dir/config.json`. Throws sft::InputError naming the file and the key.
ModelConfig load_model_config(const std::filesystem::path& dir);
ModelConfig parse_model_config(const std::string& json_text, const std::string& label);

}  // namespace sft::model
