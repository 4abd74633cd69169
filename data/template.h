// data/template.h: chat templates as C++ code instead of Jinja. A template renders a Conversation to
// the exact text HF transformers' apply_chat_template(tokenize=False) produces for the same model, and
// records which byte ranges of that text are BOS, prompt or response (assistant text + end-of-turn
// token). dataset.cpp tokenizes the whole text once and derives labels from those byte ranges.
#pragma once
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "data/formats.h"
#include "data/tokenizer.h"

namespace sft::data {

// TemplateKind (the data.template names) is in data/data_options.h.

struct ChatTemplate {
  TemplateKind kind = TemplateKind::kChatml;
  // Used when a conversation has no system message and data.system_prompt is unset (e.g. SmolLM2's
  // chatml template injects "You are a helpful AI assistant named SmolLM, ...").
  std::optional<std::string> default_system;
  // Meta's original Llama-3 template appends "<|start_header_id|>assistant<|end_header_id|>\n\n" even
  // without add_generation_prompt; set by `auto` when the tokenizer's template does, so our ids match.
  bool trailing_assistant_header = false;

  std::string name() const;  // "chatml", "qwen3", ... (enum_name of kind)
};

// Resolves data.template. "auto" recognises tokenizer_config.json's Jinja `chat_template` by its
// distinctive markers; `config_path` only names the file in errors. Throws sft::InputError for an
// unknown name, a missing chat_template or an unrecognised one.
ChatTemplate resolve_template(TemplateKind requested, const std::optional<std::string>& jinja,
                              const std::string& config_path, const std::string& key = "data.template");
// The same for a name (`sft generate --template`); an unknown name is an sft::InputError listing them all.
ChatTemplate resolve_template(const std::string& name, const std::optional<std::string>& jinja,
                              const std::string& config_path, const std::string& key = "data.template");

enum class SegmentKind { kBos, kPrompt, kResponse };

// A byte range [begin, end) of the rendered text. `turn` is the index of the assistant turn the range
// belongs to (prompt text belongs to the turn it asks for); mask_history keeps only the last turn.
struct Segment {
  size_t begin = 0, end = 0;
  SegmentKind kind = SegmentKind::kPrompt;
  int turn = 0;
};

struct RenderedConversation {
  std::string text;
  std::vector<Segment> segments;  // ordered, contiguous, covering the whole text
  bool renders_bos = false;       // the text already starts with the BOS token's text
  int num_turns = 0;              // assistant turns
};

// Renders `conversation` (already validated by check_conversation). `system_prompt` (data.system_prompt)
// applies when the conversation has no system message and overrides the template's default.
// Throws sft::InputError when the template needs a special token the tokenizer lacks.
RenderedConversation render_conversation(const ChatTemplate& chat_template, const Conversation& conversation,
                                         const SpecialTokens& specials,
                                         const std::optional<std::string>& system_prompt);

}  // namespace sft::data
