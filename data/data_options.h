// data/data_options.h: the typed `data.*` and `tokenizer.*` config sections, with their defaults.
// trainer/config.cpp fills these from YAML; the data pipeline only reads them.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace sft::data {

struct TokenizerOptions {
  std::optional<std::string> path;  // default: model.path
};

struct DataOptions {
  std::vector<std::string> train;            // JSONL files (required)
  std::optional<std::string> eval;           // held-out file
  double eval_ratio = 0.0;                   // used when eval is absent: seeded split of train
  std::string format = "auto";               // auto|alpaca|prompt_response|messages|sharegpt
  std::string chat_template = "auto";        // YAML key `template`: auto|chatml|llama2|llama3|mistral|alpaca|plain
  std::optional<std::string> system_prompt;
  int64_t max_seq_len = 1024;
  std::string truncation = "right";          // right|drop
  bool packing = true;
  bool train_on_prompt = false;
  bool mask_history = false;
  bool skip_invalid = false;
  int64_t max_invalid = 0;
  std::string direction = "forward";         // forward|reverse (reverse: each response becomes the prompt)
};

}  // namespace sft::data
