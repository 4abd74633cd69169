// synth/chat_model.h: the real Completer of sft synth: a loaded HF model, its tokenizer and chat
// template, decoding through decode_batch (synth/decode.h).
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "data/template.h"
#include "data/tokenizer.h"
#include "model/llama.h"
#include "synth/completer.h"

namespace sft::synth {

struct ChatModelOptions {
  std::filesystem::path model_dir;
  std::string template_name = "auto";      // data.template names
  std::string dtype = "float32";
  std::optional<std::string> system_prompt;  // else the template's default
};

class ChatModel : public Completer {
 public:
  // Throws sft::InputError naming the flag for a missing directory or an unreadable model/tokenizer.
  ChatModel(const ChatModelOptions& options, const std::string& flag);
  std::vector<Completion> complete(const std::vector<ChatPrompt>& prompts, const DecodeSettings& settings,
                                   const std::vector<uint64_t>& seeds) override;
  // The token ids of a prompt as decoding sees them: the chat rendering up to the assistant's answer,
  // then the assistant_prefix.
  std::vector<int32_t> prompt_ids(const ChatPrompt& prompt) const;

 private:
  ChatModelOptions options_;
  std::unique_ptr<data::Tokenizer> tokenizer_;
  data::ChatTemplate chat_template_;
  model::CausalLM model_{nullptr};
  std::vector<int32_t> stop_ids_;
};

// Throws sft::InputError naming `flag` unless `dir` is an HF model directory with a tokenizer.
void check_model_dir(const std::filesystem::path& dir, const std::string& flag);


}  // namespace sft::synth
