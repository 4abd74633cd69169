// trainer/generate_command.h: `sft generate`: load a model (+ optional PEFT adapter), render prompts
// with the chat template, decode with model/generate.h, stream text (--prompt), print ids
// (--prompt-ids) or write JSONL (--input).
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "data/formats.h"
#include "data/template.h"
#include "data/tokenizer.h"

namespace sft {

int command_generate(const std::vector<std::string>& args);

// One prompt of a --input file: the conversation up to (not including) the answer to generate.
struct GenerationInput {
  std::vector<data::Message> messages;  // [system], user, assistant, ..., user
  std::optional<std::string> reference;  // the line's own answer, when it has one
  std::string source;                    // "file:line"
};

// Reads a --input JSONL file in any data format (prompt_response, alpaca, messages, sharegpt); the
// answer field / final assistant turn is optional and becomes `reference`. Throws sft::InputError
// naming file:line for malformed lines or conversations that do not end with a user turn.
std::vector<GenerationInput> read_generation_inputs(const std::filesystem::path& path);

// Token ids of the generation prompt: `messages` (ending with a user turn) rendered by the template
// followed by the opening of the assistant turn (transformers' add_generation_prompt=True), with BOS
// prepended when the tokenizer adds one and the template does not render it.
std::vector<int32_t> generation_prompt_ids(const data::ChatTemplate& chat_template, const data::Tokenizer& tokenizer,
                                           const std::vector<data::Message>& messages,
                                           const std::optional<std::string>& system_prompt);

}  // namespace sft
