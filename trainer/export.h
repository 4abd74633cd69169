// trainer/export.h: interchange with the HF ecosystem: PEFT LoRA adapters (adapter_config.json +
// adapter_model.safetensors, names base_model.model.<param>) written and read, and merged/full HF model
// directories with the tokenizer files copied alongside.
#pragma once
#include <filesystem>
#include <string>

#include "model/lora.h"

namespace sft {

// Writes the model's LoRA weights as a PEFT adapter loadable by PeftModel.from_pretrained.
void save_peft_adapter(model::CausalLM& model, const model::LoraSpec& spec, const std::string& base_model_path,
                       const std::filesystem::path& out_dir);

// Reads a PEFT LoRA adapter directory (ours or PEFT's). Applies LoRA with the adapter's settings if the
// model has none yet, then loads lora_A/lora_B. Errors (sft::InputError) name the file and tensor:
// missing files, non-LoRA adapters, shape mismatches, targets the model lacks.
model::LoraSpec load_peft_adapter(model::CausalLM& model, const std::filesystem::path& dir);

// Reads only adapter_config.json.
model::LoraSpec read_peft_adapter_config(const std::filesystem::path& dir);

// Copies tokenizer.json / tokenizer.model / tokenizer_config.json / special_tokens_map.json /
// chat_template.jinja / generation_config.json from `from` to `to` when present.
void copy_tokenizer_files(const std::filesystem::path& from, const std::filesystem::path& to);

}  // namespace sft
