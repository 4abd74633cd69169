// synth/chat_model.cpp: ChatModel (a loaded model + tokenizer + chat template).
#include "synth/chat_model.h"

#include <torch/torch.h>

#include <algorithm>

#include "common/errors.h"
#include "model/generate.h"
#include "model/weights.h"
#include "synth/decode.h"
#include "trainer/generate_command.h"

namespace sft::synth {
namespace fs = std::filesystem;

void check_model_dir(const fs::path& dir, const std::string& flag) {
  if (!fs::is_directory(dir)) throw InputError(flag + ": " + dir.string() + " is not a directory");
  if (!fs::exists(dir / "config.json")) {
    throw InputError(flag + ": " + dir.string() + " has no config.json (not an HF model directory)");
  }
  if (!fs::exists(dir / "tokenizer.json") && !fs::exists(dir / "tokenizer.model")) {
    throw InputError(flag + ": " + dir.string() + " has no tokenizer.json or tokenizer.model");
  }
}

ChatModel::ChatModel(const ChatModelOptions& options, const std::string& flag) : options_(options) {
  const fs::path& dir = options.model_dir;
  check_model_dir(dir, flag);
  tokenizer_ = data::load_tokenizer(dir);
  chat_template_ = data::resolve_template(options.template_name, tokenizer_->chat_template(),
                                          (dir / "tokenizer_config.json").string(), "--template");
  model_ = model::load_pretrained(dir, model::parse_dtype(options.dtype, "--dtype"), at::kCPU);
  model_->eval();
  stop_ids_ = model::default_stop_ids(model_->config(), tokenizer_.get());
}

std::vector<int32_t> ChatModel::prompt_ids(const ChatPrompt& prompt) const {
  std::vector<data::Message> messages = prompt.context;
  messages.push_back({data::Role::kUser, prompt.user});
  std::vector<int32_t> ids = generation_prompt_ids(chat_template_, *tokenizer_, messages, options_.system_prompt);
  if (!prompt.assistant_prefix.empty()) {
    const std::vector<int32_t> prefix = tokenizer_->encode_ids(prompt.assistant_prefix);
    ids.insert(ids.end(), prefix.begin(), prefix.end());
  }
  return ids;
}

std::vector<Completion> ChatModel::complete(const std::vector<ChatPrompt>& prompts, const DecodeSettings& settings,
                                            const std::vector<uint64_t>& seeds) {
  model::GenerationOptions options;
  options.max_new_tokens = settings.max_new_tokens;
  options.temperature = settings.temperature;
  options.top_p = settings.top_p;
  options.top_k = settings.top_k;
  options.stop_ids = stop_ids_;
  std::vector<std::vector<int32_t>> batch;
  batch.reserve(prompts.size());
  for (const ChatPrompt& prompt : prompts) batch.push_back(prompt_ids(prompt));
  const std::vector<std::vector<int32_t>> outputs = decode_batch(model_, batch, options, seeds);
  std::vector<Completion> completions;
  for (size_t i = 0; i < outputs.size(); ++i) {
    std::vector<int32_t> ids = outputs[i];
    Completion completion;
    completion.new_tokens = static_cast<int64_t>(ids.size());
    completion.complete = !ids.empty() && std::find(stop_ids_.begin(), stop_ids_.end(), ids.back()) != stop_ids_.end();
    if (completion.complete) ids.pop_back();
    completion.text = prompts[i].assistant_prefix + tokenizer_->decode(ids, /*skip_special_tokens=*/true);
    completions.push_back(std::move(completion));
  }
  return completions;
}

}  // namespace sft::synth
