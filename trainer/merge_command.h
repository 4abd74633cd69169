// trainer/merge_command.h: `sft merge`: fold a PEFT LoRA adapter into its base model and write a plain HF
// model directory (config.json, safetensors sharded with an index above --shard-size, tokenizer files).
#pragma once
#include <string>
#include <vector>

namespace sft {

int command_merge(const std::vector<std::string>& args);

}  // namespace sft
