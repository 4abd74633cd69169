// trainer/export.cpp: PEFT adapter save/load and tokenizer file copying.
#include "trainer/export.h"

#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "common/errors.h"
#include "common/text_file.h"
#include "model/lora_init.h"
#include "model/named_tensors.h"
#include "model/safetensors.h"

namespace sft {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {
constexpr const char* kPeftPrefix = "base_model.model.";

std::string module_leaf(const std::string& path) { return path.substr(path.rfind('.') + 1); }
}  // namespace

void save_peft_adapter(model::CausalLM& lm, const model::LoraSpec& spec, const std::string& base_model_path,
                       const fs::path& out_dir) {
  auto modules = model::lora_modules(lm);
  if (modules.empty()) throw std::logic_error("save_peft_adapter: the model has no LoRA modules");
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::set<std::string> targets;
  // PiSSA/OLoRA trained on a residual base W_res = W - scale B0 A0. Written as PEFT's
  // path_initial_model_for_weight_conversion does, for the original W: W_res + s B A = W + s [B | -B0] [A ; A0],
  // so rank 2r and alpha 2*alpha (rslora: sqrt(2)*alpha) keep the scale.
  const bool convert = model::init_mutates_base(spec.init);
  for (const auto& [path, lora] : modules) {
    at::Tensor a = lora->lora_A->weight.detach(), b = lora->lora_B->weight.detach();
    if (convert) {
      a = at::cat({a, lora->initial_A.to(a.options())}, 0);   // [2r, in]
      b = at::cat({b, -lora->initial_B.to(b.options())}, 1);  // [out, 2r]
    }
    tensors.emplace_back(kPeftPrefix + path + ".lora_A.weight", a.to(at::kCPU).contiguous());
    tensors.emplace_back(kPeftPrefix + path + ".lora_B.weight", b.to(at::kCPU).contiguous());
    if (lora->is_dora()) {  // PEFT's saved name: no ".weight" suffix (get_peft_model_state_dict renames it)
      tensors.emplace_back(kPeftPrefix + path + ".lora_magnitude_vector",
                           lora->lora_magnitude_vector.detach().to(at::kCPU).contiguous());
    }
    targets.insert(module_leaf(path));
  }
  json config = {
      {"peft_type", "LORA"},
      {"task_type", "CAUSAL_LM"},
      {"base_model_name_or_path", base_model_path},
      {"r", convert ? 2 * spec.rank : spec.rank},
      {"lora_alpha", convert ? (spec.rslora ? std::sqrt(2.0) : 2.0) * spec.alpha : spec.alpha},
      {"lora_dropout", spec.dropout},
      {"target_modules", std::vector<std::string>(targets.begin(), targets.end())},
      {"use_rslora", spec.rslora},
      {"bias", "none"},
      {"fan_in_fan_out", false},
      {"inference_mode", true},
      {"init_lora_weights", true},
      {"modules_to_save", nullptr},
      {"use_dora", spec.dora},
  };
  const fs::path tmp = out_dir.string() + ".tmp";
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  model::write_safetensors(tmp / "adapter_model.safetensors", tensors, {{"format", "pt"}});
  write_text_file(tmp / "adapter_config.json", config.dump(2) + "\n");
  fs::remove_all(out_dir);
  fs::rename(tmp, out_dir);
}

model::LoraSpec read_peft_adapter_config(const fs::path& dir) {
  const fs::path path = dir / "adapter_config.json";
  std::ifstream in(path);
  if (!in) throw InputError(path.string() + ": cannot open (is '" + dir.string() + "' a PEFT adapter directory?)");
  json config;
  try {
    config = json::parse(in);
  } catch (const json::parse_error& e) {
    throw InputError(path.string() + ": invalid JSON: " + e.what());
  }
  auto fail = [&](const std::string& what) -> void { throw InputError(path.string() + ": " + what); };
  if (config.value("peft_type", "") != "LORA") fail("peft_type must be LORA");
  if (!config.contains("r") || !config["r"].is_number_integer()) fail("key 'r' must be an integer");
  model::LoraSpec spec;
  spec.rank = config["r"].get<int64_t>();
  spec.alpha = config.contains("lora_alpha") && config["lora_alpha"].is_number() ? config["lora_alpha"].get<double>() : 8.0;
  spec.dropout = config.contains("lora_dropout") && config["lora_dropout"].is_number() ? config["lora_dropout"].get<double>() : 0.0;
  spec.rslora = config.value("use_rslora", false);
  spec.dora = config.value("use_dora", false);
  const json& targets = config["target_modules"];
  if (targets.is_array()) {
    for (const json& t : targets) spec.targets.push_back(t.get<std::string>());
  } else if (targets.is_string() && targets.get<std::string>() == "all-linear") {
    spec.targets = {"all"};
  } else {
    fail("target_modules must be a list of module names");
  }
  if (spec.rank <= 0) fail("r must be > 0");
  return spec;
}

model::LoraSpec load_peft_adapter(model::CausalLM& lm, const fs::path& dir) {
  model::LoraSpec spec = read_peft_adapter_config(dir);
  if (model::lora_modules(lm).empty()) model::apply_lora(lm, spec);
  const fs::path file_path = dir / "adapter_model.safetensors";
  if (!fs::exists(file_path)) throw InputError(file_path.string() + ": missing (adapter weights)");
  auto file = model::SafetensorsFile::open(file_path);
  std::vector<model::TensorSlot> slots;
  for (const auto& [path, lora] : model::lora_modules(lm)) {
    if (lora->is_dora() != spec.dora) {
      throw InputError((dir / "adapter_config.json").string() + ": use_dora is " + (spec.dora ? "true" : "false") +
                       " but the model's adapters are " + (lora->is_dora() ? "DoRA" : "plain LoRA") +
                       " (set finetune.lora.dora to match)");
    }
    std::vector<std::pair<std::string, at::Tensor>> wanted = {{".lora_A.weight", lora->lora_A->weight},
                                                              {".lora_B.weight", lora->lora_B->weight}};
    if (lora->is_dora()) wanted.emplace_back(".lora_magnitude_vector", lora->lora_magnitude_vector);
    for (const auto& [suffix, param] : wanted) {
      // PEFT writes base_model.model.<path>; some tools keep the adapter name (".default").
      std::string name = kPeftPrefix + path + suffix;
      if (!file->find(name)) {
        // ".lora_A.default.weight"; the magnitude: ".lora_magnitude_vector.default.weight".
        const bool magnitude = suffix == ".lora_magnitude_vector";
        std::string with_default =
            kPeftPrefix + path + (magnitude ? suffix + ".default.weight" : std::string(suffix).insert(suffix.rfind('.'), ".default"));
        if (file->find(with_default)) name = with_default;
      }
      slots.push_back({name, param});
    }
  }
  model::TensorMatchRules rules;
  rules.heading = "does not match the model's adapters";
  rules.shape_hint = "(adapter made for another base model?)";
  rules.unexpected_hint = "(matches no adapted module of this model: different target modules or layers?)";
  model::load_named_tensors(model::NamedTensorSource::of(*file), slots, rules);
  return spec;
}

void copy_tokenizer_files(const fs::path& from, const fs::path& to) {
  for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                           "chat_template.jinja", "generation_config.json"}) {
    if (fs::exists(from / name)) fs::copy_file(from / name, to / name, fs::copy_options::overwrite_existing);
  }
}

}  // namespace sft
