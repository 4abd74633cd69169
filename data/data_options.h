// data/data_options.h: the typed `data.*` and `tokenizer.*` config sections, with their defaults, the
// data choices as enums with their one list of names each (common/enum_names.h), and the one check of
// the data options (used by trainer/config.cpp and by data/pipeline.cpp for callers that skip the config).
// trainer/config.cpp fills these from YAML; the data pipeline only reads them.
#pragma once
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/enum_names.h"

namespace sft::data {

// data.format. kAuto detects per file; kTokenized lines are {input_ids, labels} (data/tokenized.h).
enum class Format { kAuto, kPromptResponse, kAlpaca, kMessages, kShareGpt, kTokenized };

// data.template: a chat template (data/template.h), or kAuto (recognised from tokenizer_config.json).
enum class TemplateKind {
  kAuto,     // resolved by resolve_template; never rendered
  kChatml,   // <|im_start|>role\ncontent<|im_end|>\n                       (SmolLM2, Qwen2.x, ...)
  kQwen3,    // chatml + Qwen3's <think> handling on the final assistant turn
  kLlama2,   // <s>[INST] <<SYS>>\nsys\n<</SYS>>\n\nuser [/INST] answer </s>  (Llama-2-chat)
  kLlama3,   // <|begin_of_text|><|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>
  kMistral,  // <s> [INST] user [/INST] answer</s>                          (Mistral-7B-Instruct-v0.1)
  kAlpaca,   // system\n\n### Instruction:\nuser\n\n### Response:\nanswer</s>
  kPlain,    // user + answer + </s>: no markup at all (the data carries its own separators)
};

// data.truncation: kRight cuts keeping >= 1 target token; kDrop drops over-long examples.
enum class Truncation { kRight, kDrop };
enum class Direction { kForward, kReverse };  // data.direction: reverse = each response becomes the prompt

struct TokenizerOptions {
  std::optional<std::string> path;  // default: model.path
};

struct DataOptions {
  std::vector<std::string> train;            // JSONL files (required)
  std::optional<std::string> eval;           // held-out file
  double eval_ratio = 0.0;                   // used when eval is absent: seeded split of train
  Format format = Format::kAuto;
  TemplateKind chat_template = TemplateKind::kAuto;  // YAML key `template`
  std::optional<std::string> system_prompt;
  int64_t max_seq_len = 1024;
  Truncation truncation = Truncation::kRight;
  bool packing = true;
  bool train_on_prompt = false;
  bool mask_history = false;
  bool skip_invalid = false;
  int64_t max_invalid = 0;
  Direction direction = Direction::kForward;  // reverse: train a backward model (response -> prompt)
};

// Every problem of the options, each naming its key ("data.max_seq_len must be >= 2 (got 1)").
std::vector<std::string> data_option_problems(const DataOptions& options);
// Throws sft::InputError listing every problem (for callers that did not come through the config).
void check_data_options(const DataOptions& options);

}  // namespace sft::data

namespace sft {

template <>
struct EnumNames<data::Format> {
  static constexpr std::array<std::pair<data::Format, const char*>, 6> entries{{
      {data::Format::kAuto, "auto"},
      {data::Format::kAlpaca, "alpaca"},
      {data::Format::kPromptResponse, "prompt_response"},
      {data::Format::kMessages, "messages"},
      {data::Format::kShareGpt, "sharegpt"},
      {data::Format::kTokenized, "tokenized"},
  }};
};

template <>
struct EnumNames<data::TemplateKind> {
  static constexpr std::array<std::pair<data::TemplateKind, const char*>, 8> entries{{
      {data::TemplateKind::kAuto, "auto"},
      {data::TemplateKind::kChatml, "chatml"},
      {data::TemplateKind::kQwen3, "qwen3"},
      {data::TemplateKind::kLlama2, "llama2"},
      {data::TemplateKind::kLlama3, "llama3"},
      {data::TemplateKind::kMistral, "mistral"},
      {data::TemplateKind::kAlpaca, "alpaca"},
      {data::TemplateKind::kPlain, "plain"},
  }};
};

template <>
struct EnumNames<data::Truncation> {
  static constexpr std::array<std::pair<data::Truncation, const char*>, 2> entries{{
      {data::Truncation::kRight, "right"},
      {data::Truncation::kDrop, "drop"},
  }};
};

template <>
struct EnumNames<data::Direction> {
  static constexpr std::array<std::pair<data::Direction, const char*>, 2> entries{{
      {data::Direction::kForward, "forward"},
      {data::Direction::kReverse, "reverse"},
  }};
};

}  // namespace sft
