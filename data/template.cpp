// data/template.cpp: the built-in chat templates, their byte-range bookkeeping, and `auto`
// recognition of tokenizer_config.json chat templates.
#include "data/template.h"

#include <stdexcept>

#include "common/errors.h"

namespace sft::data {
namespace {

constexpr const char* kAlpacaDefaultSystem =
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.";

bool contains(const std::string& haystack, const char* needle) { return haystack.find(needle) != std::string::npos; }

// Python's str.strip() / Jinja's `trim` on ASCII whitespace.
std::string strip_whitespace(const std::string& s) {
  const char* ws = " \t\n\r\v\f";
  size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}
std::string lstrip_newlines(const std::string& s) {
  size_t b = s.find_first_not_of('\n');
  return b == std::string::npos ? "" : s.substr(b);
}
std::string rstrip_newlines(const std::string& s) {
  size_t e = s.find_last_not_of('\n');
  return e == std::string::npos ? "" : s.substr(0, e + 1);
}
std::string strip_newlines(const std::string& s) { return lstrip_newlines(rstrip_newlines(s)); }

// Appends text pieces while recording their kind and turn.
class Builder {
 public:
  void add(const std::string& text, SegmentKind kind, int turn) {
    if (text.empty()) return;
    size_t begin = out_.text.size();
    out_.text += text;
    out_.segments.push_back({begin, out_.text.size(), kind, turn});
  }
  RenderedConversation finish(int num_turns) {
    out_.num_turns = num_turns;
    return std::move(out_);
  }
  void set_renders_bos() { out_.renders_bos = true; }

 private:
  RenderedConversation out_;
};

const std::string& require_special(const std::string& text, const char* what, const ChatTemplate& t) {
  if (text.empty()) {
    throw InputError("data.template: template \"" + t.name() + "\" needs the tokenizer's " + what +
                     " token, but the tokenizer defines none");
  }
  return text;
}

// Unescapes the body of a Jinja string literal ("\\n" -> newline, "\\'" -> "'").
std::string unescape_jinja(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      char c = s[++i];
      out += c == 'n' ? '\n' : c == 't' ? '\t' : c;
    } else {
      out += s[i];
    }
  }
  return out;
}

// A chatml template that injects a default system message writes it as one string literal:
// '<|im_start|>system\nYou are ...<|im_end|>\n' (the newline escaped or, as HF's saved JSON often has
// it, literal). Templates that only forward the user's system message continue the literal with a
// quote ('<|im_start|>system\n' + messages[0].content), so they yield none.
std::optional<std::string> chatml_default_system(const std::string& jinja) {
  const std::string marker = "<|im_start|>system";
  for (size_t pos = jinja.find(marker); pos != std::string::npos; pos = jinja.find(marker, pos + 1)) {
    size_t body = pos + marker.size();
    if (jinja.compare(body, 2, "\\n") == 0) {
      body += 2;
    } else if (jinja.compare(body, 1, "\n") == 0) {
      body += 1;
    } else {
      continue;
    }
    size_t end = jinja.find("<|im_end|>", body);
    size_t quote = jinja.find_first_of("'\"", body);
    if (end != std::string::npos && (quote == std::string::npos || end < quote) && end > body) {
      return unescape_jinja(jinja.substr(body, end - body));
    }
  }
  return std::nullopt;
}

// The messages as the template sees them: a system message is added from data.system_prompt or the
// template default when the conversation has none.
std::vector<Message> effective_messages(const ChatTemplate& t, const Conversation& conversation,
                                        const std::optional<std::string>& system_prompt) {
  std::vector<Message> messages = conversation.messages;
  bool has_system = !messages.empty() && messages[0].role == Role::kSystem;
  if (!has_system) {
    std::optional<std::string> system = system_prompt ? system_prompt : t.default_system;
    if (t.kind == TemplateKind::kAlpaca && !system) system = kAlpacaDefaultSystem;
    if (system) messages.insert(messages.begin(), Message{Role::kSystem, *system});
  }
  return messages;
}

// Qwen3: splits "<think>reasoning</think>answer" the way its Jinja template does.
void split_reasoning(const std::string& content, std::string* answer, std::string* reasoning) {
  *answer = content;
  reasoning->clear();
  size_t close = content.find("</think>");
  if (close == std::string::npos) return;
  *answer = lstrip_newlines(content.substr(content.rfind("</think>") + 8));
  std::string before = rstrip_newlines(content.substr(0, close));
  size_t open = before.rfind("<think>");
  *reasoning = lstrip_newlines(open == std::string::npos ? before : before.substr(open + 7));
}

void render_chatml(const ChatTemplate& t, const std::vector<Message>& messages, Builder& b) {
  // Qwen3 only: the last user query (tool responses aside) decides which assistant turns keep <think>.
  int last_query = static_cast<int>(messages.size()) - 1;
  for (int i = static_cast<int>(messages.size()) - 1; i >= 0; --i) {
    const std::string& c = messages[i].content;
    bool tool_response = c.rfind("<tool_response>", 0) == 0 && c.size() >= 16 &&
                         c.compare(c.size() - 16, 16, "</tool_response>") == 0;
    if (messages[i].role == Role::kUser && !tool_response) {
      last_query = i;
      break;
    }
  }
  int turn = 0;
  for (size_t i = 0; i < messages.size(); ++i) {
    const Message& m = messages[i];
    if (m.role != Role::kAssistant) {
      b.add(std::string("<|im_start|>") + role_name(m.role) + "\n" + m.content + "<|im_end|>\n", SegmentKind::kPrompt, turn);
      continue;
    }
    b.add("<|im_start|>assistant\n", SegmentKind::kPrompt, turn);
    std::string response = m.content;
    if (t.kind == TemplateKind::kQwen3) {
      std::string answer, reasoning;
      split_reasoning(m.content, &answer, &reasoning);
      bool last = i + 1 == messages.size();
      if (static_cast<int>(i) > last_query && (last || !reasoning.empty())) {
        response = "<think>\n" + strip_newlines(reasoning) + "\n</think>\n\n" + lstrip_newlines(answer);
      } else {
        response = answer;
      }
    }
    // The end-of-turn token is supervised (the model must learn to stop); the newline after it is not.
    b.add(response + "<|im_end|>", SegmentKind::kResponse, turn);
    b.add("\n", SegmentKind::kPrompt, turn);
    ++turn;
  }
}

void render_llama3(const ChatTemplate& t, const std::vector<Message>& messages, const SpecialTokens& sp, Builder& b) {
  if (!sp.bos_text.empty()) {
    b.add(sp.bos_text, SegmentKind::kBos, 0);
    b.set_renders_bos();
  }
  int turn = 0;
  for (const Message& m : messages) {
    b.add(std::string("<|start_header_id|>") + role_name(m.role) + "<|end_header_id|>\n\n", SegmentKind::kPrompt, turn);
    std::string content = strip_whitespace(m.content);  // the template applies `| trim`
    if (m.role == Role::kAssistant) {
      b.add(content + "<|eot_id|>", SegmentKind::kResponse, turn++);
    } else {
      b.add(content + "<|eot_id|>", SegmentKind::kPrompt, turn);
    }
  }
  if (t.trailing_assistant_header) {
    b.add("<|start_header_id|>assistant<|end_header_id|>\n\n", SegmentKind::kPrompt, turn > 0 ? turn - 1 : 0);
  }
}

// A leading system message, which Llama-2 and Mistral fold into the first user turn instead of
// rendering as a turn of its own. `first_turn` is the index of the first message after it.
struct LeadingSystem {
  std::optional<std::string> system;
  size_t first_turn = 0;
};

LeadingSystem split_leading_system(const std::vector<Message>& messages) {
  if (messages.empty() || messages[0].role != Role::kSystem) return {};
  return {messages[0].content, 1};
}

// Llama-2-chat: every user turn starts with BOS; the system block is folded into the first user turn.
void render_llama2(const ChatTemplate& t, const std::vector<Message>& messages, const SpecialTokens& sp, Builder& b) {
  const std::string& eos = require_special(sp.eos_text, "EOS", t);
  const LeadingSystem lead = split_leading_system(messages);
  const size_t start = lead.first_turn;
  int turn = 0;
  for (size_t i = start; i < messages.size(); ++i) {
    std::string content = messages[i].content;
    if (i == start && lead.system) content = "<<SYS>>\n" + *lead.system + "\n<</SYS>>\n\n" + content;
    if (messages[i].role == Role::kUser) {
      if (!sp.bos_text.empty()) {
        b.add(sp.bos_text, i == start ? SegmentKind::kBos : SegmentKind::kPrompt, turn);
        if (i == start) b.set_renders_bos();
      }
      b.add("[INST] " + strip_whitespace(content) + " [/INST]", SegmentKind::kPrompt, turn);
    } else {
      b.add(" " + strip_whitespace(content) + " " + eos, SegmentKind::kResponse, turn++);
    }
  }
}

// Mistral-7B-Instruct-v0.1's template: "<s> [INST] (system\n\n)user [/INST] answer</s> [INST] ...".
void render_mistral(const ChatTemplate& t, const std::vector<Message>& messages, const SpecialTokens& sp, Builder& b) {
  const std::string& eos = require_special(sp.eos_text, "EOS", t);
  if (!sp.bos_text.empty()) {
    b.add(sp.bos_text, SegmentKind::kBos, 0);
    b.set_renders_bos();
  }
  const LeadingSystem lead = split_leading_system(messages);
  const size_t start = lead.first_turn;
  int turn = 0;
  for (size_t i = start; i < messages.size(); ++i) {
    const Message& m = messages[i];
    if (m.role == Role::kUser) {
      std::string prefix = (i == start && lead.system) ? *lead.system + "\n\n" : "";
      b.add(" [INST] " + prefix + m.content + " [/INST]", SegmentKind::kPrompt, turn);
    } else {
      b.add(" " + m.content + eos, SegmentKind::kResponse, turn++);
    }
  }
}

// alpaca and plain: no special markup tokens, so BOS comes from the tokenizer's add_bos behaviour.
void render_text(const ChatTemplate& t, const std::vector<Message>& messages, const SpecialTokens& sp, Builder& b) {
  const std::string& eos = require_special(sp.eos_text, "EOS", t);
  const bool alpaca = t.kind == TemplateKind::kAlpaca;
  int turn = 0;
  for (size_t i = 0; i < messages.size(); ++i) {
    const Message& m = messages[i];
    if (m.role == Role::kSystem) {
      b.add(m.content + "\n\n", SegmentKind::kPrompt, turn);
    } else if (m.role == Role::kUser) {
      b.add(alpaca ? "### Instruction:\n" + m.content + "\n\n### Response:\n" : m.content, SegmentKind::kPrompt, turn);
    } else {
      b.add(m.content + eos, SegmentKind::kResponse, turn++);
      if (alpaca && i + 1 < messages.size()) b.add("\n\n", SegmentKind::kPrompt, turn);
    }
  }
}

}  // namespace

std::string ChatTemplate::name() const { return enum_name(kind); }

ChatTemplate resolve_template(const std::string& name, const std::optional<std::string>& jinja,
                              const std::string& config_path, const std::string& key) {
  return resolve_template(parse_enum<TemplateKind>(name, key), jinja, config_path, key);
}

ChatTemplate resolve_template(TemplateKind requested, const std::optional<std::string>& jinja,
                              const std::string& config_path, const std::string& key) {
  ChatTemplate t;
  if (requested != TemplateKind::kAuto) {
    t.kind = requested;
    return t;
  }
  std::string named;  // every template name but auto
  for (const auto& [kind, name] : EnumNames<TemplateKind>::entries) {
    if (kind != TemplateKind::kAuto) named += (named.empty() ? "" : ", ") + std::string(name);
  }
  const std::string hint = "; set " + key + " to one of " + named;
  if (!jinja || jinja->empty()) {
    throw InputError(config_path + ": no chat_template to recognise for " + key + "=auto" + hint);
  }
  const std::string& j = *jinja;
  if (contains(j, "<|im_start|>")) {
    t.kind = contains(j, "</think>") ? TemplateKind::kQwen3 : TemplateKind::kChatml;
    t.default_system = chatml_default_system(j);
    if (t.kind == TemplateKind::kQwen3 && t.default_system) {
      throw InputError(config_path + ": unrecognised chat_template (Qwen3-style with a default system message)" + hint);
    }
    return t;
  }
  if (contains(j, "<|start_header_id|>")) {
    // Llama 3.1+ templates inject a dated system message; we only implement the plain Llama 3 layout.
    if (contains(j, "Cutting Knowledge Date")) {
      throw InputError(config_path + ": unrecognised chat_template (Llama 3.1-style, with a dated default system "
                       "message)" + hint);
    }
    t.kind = TemplateKind::kLlama3;
    t.trailing_assistant_header = !contains(j, "add_generation_prompt");
    return t;
  }
  if (contains(j, "[INST]")) {
    if (contains(j, "<<SYS>>")) {
      t.kind = TemplateKind::kLlama2;
      return t;
    }
    // Only the v0.1 whitespace layout (' [INST] ' ... ' [/INST]') is built in; later Mistral templates
    // differ in whitespace and would silently change the ids.
    if (contains(j, "' [INST] '") || contains(j, "\" [INST] \"")) {
      t.kind = TemplateKind::kMistral;
      return t;
    }
  }
  if (contains(j, "### Instruction:")) {
    t.kind = TemplateKind::kAlpaca;
    return t;
  }
  throw InputError(config_path + ": unrecognised chat_template" + hint);
}

RenderedConversation render_conversation(const ChatTemplate& t, const Conversation& conversation,
                                         const SpecialTokens& specials,
                                         const std::optional<std::string>& system_prompt) {
  std::vector<Message> messages = effective_messages(t, conversation, system_prompt);
  Builder b;
  switch (t.kind) {
    case TemplateKind::kChatml:
    case TemplateKind::kQwen3: render_chatml(t, messages, b); break;
    case TemplateKind::kLlama3: render_llama3(t, messages, specials, b); break;
    case TemplateKind::kLlama2: render_llama2(t, messages, specials, b); break;
    case TemplateKind::kMistral: render_mistral(t, messages, specials, b); break;
    case TemplateKind::kAlpaca:
    case TemplateKind::kPlain: render_text(t, messages, specials, b); break;
    case TemplateKind::kAuto: throw std::logic_error("render_conversation: data.template auto was never resolved");
  }
  int turns = 0;
  for (const Message& m : messages) turns += m.role == Role::kAssistant;
  return b.finish(turns);
}

}  // namespace sft::data
