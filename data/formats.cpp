// data/formats.cpp: data-file readers (JSON Lines and JSON arrays, plain or gzip) for prompt_response,
// alpaca, messages and sharegpt; per-file format detection, UTF-8 validation, conversation-shape checks.
#include "data/formats.h"

#include <algorithm>
#include <optional>
#include <stdexcept>
#include <nlohmann/json.hpp>

#include "common/errors.h"
#include "data/text_source.h"

namespace sft::data {
namespace {

using nlohmann::json;

// A rejected example; caught by ExampleReader::add, which either rethrows it as InputError or counts it.
struct LineError {
  std::string reason;
  std::string message;  // without the "file:line: " prefix
};

const char* json_type(const json& value) { return value.type_name(); }

// Required string field `key` of `object`; `where` names the field path for messages ("messages[2]").
std::string required_string(const json& object, const std::string& key, const std::string& where = "") {
  const std::string name = where.empty() ? key : where + "." + key;
  auto it = object.find(key);
  if (it == object.end()) throw LineError{invalid_reason::kMissingField, "missing field \"" + name + "\""};
  if (!it->is_string()) {
    throw LineError{invalid_reason::kWrongType,
                    "field \"" + name + "\" must be a string (got " + json_type(*it) + ")"};
  }
  return it->get<std::string>();
}

// Optional string field: absent or null gives "".
std::string optional_string(const json& object, const std::string& key) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return "";
  if (!it->is_string()) {
    throw LineError{invalid_reason::kWrongType,
                    "field \"" + key + "\" must be a string (got " + json_type(*it) + ")"};
  }
  return it->get<std::string>();
}

const json& required_array(const json& object, const std::string& key) {
  auto it = object.find(key);
  if (it == object.end()) throw LineError{invalid_reason::kMissingField, "missing field \"" + key + "\""};
  if (!it->is_array()) {
    throw LineError{invalid_reason::kWrongType,
                    "field \"" + key + "\" must be an array (got " + json_type(*it) + ")"};
  }
  return *it;
}

std::vector<Message> read_prompt_response(const json& object) {
  std::vector<Message> messages;
  std::string system = optional_string(object, "system");
  if (!system.empty()) messages.push_back({Role::kSystem, system});
  messages.push_back({Role::kUser, required_string(object, "prompt")});
  const char* response_key = object.contains("response") || !object.contains("completion") ? "response" : "completion";
  messages.push_back({Role::kAssistant, required_string(object, response_key)});
  return messages;
}

// Alpaca: the user turn is the instruction, followed by "\n" + input when input is non-empty
// (the LLaMA-Factory convention), so every template (not only `alpaca`) can render it.
std::vector<Message> read_alpaca(const json& object) {
  std::vector<Message> messages;
  std::string system = optional_string(object, "system");
  if (!system.empty()) messages.push_back({Role::kSystem, system});
  std::string user = required_string(object, "instruction");
  std::string input = optional_string(object, "input");
  if (!input.empty()) user += "\n" + input;
  messages.push_back({Role::kUser, user});
  messages.push_back({Role::kAssistant, required_string(object, "output")});
  return messages;
}

// messages (role/content) and sharegpt (from/value) differ only in key names and role spellings.
std::vector<Message> read_turns(const json& object, bool sharegpt) {
  const std::string list_key = sharegpt ? "conversations" : "messages";
  const std::string role_key = sharegpt ? "from" : "role";
  const std::string text_key = sharegpt ? "value" : "content";
  std::vector<Message> messages;
  if (sharegpt) {  // LLaMA-Factory's sharegpt allows a top-level system string
    std::string system = optional_string(object, "system");
    if (!system.empty()) messages.push_back({Role::kSystem, system});
  }
  const json& turns = required_array(object, list_key);
  for (size_t i = 0; i < turns.size(); ++i) {
    const std::string where = list_key + "[" + std::to_string(i) + "]";
    if (!turns[i].is_object()) {
      throw LineError{invalid_reason::kWrongType,
                      "\"" + where + "\" must be an object (got " + json_type(turns[i]) + ")"};
    }
    std::string role = required_string(turns[i], role_key, where);
    std::string text = required_string(turns[i], text_key, where);
    Role parsed;
    if (role == "system") {
      parsed = Role::kSystem;
    } else if (role == "user" || (sharegpt && role == "human")) {
      parsed = Role::kUser;
    } else if (role == "assistant" || (sharegpt && role == "gpt")) {
      parsed = Role::kAssistant;
    } else {
      throw LineError{invalid_reason::kUnknownRole,
                      "unknown role \"" + role + "\" in \"" + where + "." + role_key + "\" (expected " +
                          (sharegpt ? "system, human or gpt" : "system, user or assistant") + ")"};
    }
    messages.push_back({parsed, std::move(text)});
  }
  return messages;
}

Format detect_format(const json& object) {
  if (object.contains("messages")) return Format::kMessages;
  if (object.contains("conversations")) return Format::kShareGpt;
  if (object.contains("instruction")) return Format::kAlpaca;
  if (object.contains("prompt")) return Format::kPromptResponse;
  return Format::kAuto;
}

std::string key_list(const json& object) {
  std::string keys;
  for (auto it = object.begin(); it != object.end(); ++it) keys += (keys.empty() ? "" : ", ") + it.key();
  return keys.empty() ? "none" : keys;
}

// Turns parsed JSON objects into conversations, detecting the file's format from its first object.
// The source is "file:line" (JSON Lines) or "file[index]" (a JSON array, 0-based).
class ExampleReader {
 public:
  ExampleReader(FileReadResult& result, Format format, bool skip_invalid)
      : result_(result), auto_detect_(format == Format::kAuto), skip_invalid_(skip_invalid) {}
  const std::string& path() const { return result_.path; }

  // One example at `source`: `parse` returns its JSON object (or throws LineError).
  template <class Parse>
  void add(const std::string& source, Parse&& parse) {
    ++result_.lines;
    try {
      const json object = parse();
      check_format(object, source);
      Conversation conversation;
      conversation.source = source;
      switch (result_.format) {
        case Format::kPromptResponse: conversation.messages = read_prompt_response(object); break;
        case Format::kAlpaca: conversation.messages = read_alpaca(object); break;
        case Format::kMessages: conversation.messages = read_turns(object, false); break;
        case Format::kShareGpt: conversation.messages = read_turns(object, true); break;
        case Format::kAuto: break;
        case Format::kTokenized: break;  // never: read_data_file refuses it
      }
      std::string reason;
      std::string problem = check_conversation(conversation.messages, &reason);
      if (!problem.empty()) throw LineError{reason, problem};
      result_.conversations.push_back(std::move(conversation));
    } catch (const LineError& e) {
      std::string message = source + ": " + e.message + " (format " + format_name(result_.format) + ")";
      if (!skip_invalid_) throw InputError(message);
      result_.invalid.push_back({source, e.reason, message});
    }
  }

 private:
  // Per-file detection from the first example that is a JSON object; a file we cannot classify is a
  // configuration problem, not a bad example, so it is never skipped. Once detected, an example whose
  // keys name another format is a mixed file.
  void check_format(const json& object, const std::string& source) {
    const Format own = detect_format(object);
    if (result_.format == Format::kAuto) {
      if (own == Format::kAuto) {
        throw InputError(source + ": cannot detect the data format from keys {" + key_list(object) +
                         "}: expected \"messages\", \"conversations\", \"instruction\" or \"prompt\"; " +
                         "or set data.format");
      }
      result_.format = own;
      detected_at_ = source;
    } else if (auto_detect_ && own != Format::kAuto && own != result_.format) {
      throw LineError{invalid_reason::kMixedFormat,
                      std::string("keys {") + key_list(object) + "} are the " + format_name(own) +
                          " format, but this file is " + format_name(result_.format) + " (detected at " +
                          detected_at_ + "): one file holds one format"};
    }
  }

  FileReadResult& result_;
  const bool auto_detect_;
  const bool skip_invalid_;
  std::string detected_at_;
};

// "file:LINE:COLUMN" of byte offset `at` (0-based) in `text`.
std::string text_position(const std::string& path, const std::string& text, size_t at) {
  at = std::min(at, text.size());
  size_t line = 1, column = 1;
  for (size_t i = 0; i < at; ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return path + ":" + std::to_string(line) + ":" + std::to_string(column);
}

std::string first_nonblank_line(const std::string& text) {
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(begin, end - begin);
    if (line.find_first_not_of(" \t\r") != std::string::npos) return line;
    begin = end + 1;
  }
  return "";
}

// A .json file: one JSON document that must be an array of examples. Returns nullopt when the file is
// JSON Lines instead (it does not parse as one document, but its first line is an object: HF datasets
// reads such .json files as JSON Lines too). Whole-file problems are never skippable.
std::optional<json> parse_json_document(const std::string& text, const std::string& path) {
  const size_t bom = text.compare(0, 3, "\xEF\xBB\xBF") == 0 ? 3 : 0;
  json document;
  try {
    document = json::parse(text.begin() + static_cast<std::ptrdiff_t>(bom), text.end());
  } catch (const json::parse_error& e) {
    std::string first = first_nonblank_line(text.substr(bom));
    if (!first.empty() && first.back() == '\r') first.pop_back();
    const json head = json::parse(first, nullptr, /*allow_exceptions=*/false);
    if (head.is_object()) return std::nullopt;
    const size_t bad = find_invalid_utf8(text);
    if (bad != std::string::npos) throw InputError(text_position(path, text, bad) + ": not valid UTF-8");
    throw InputError(text_position(path, text, bom + (e.byte > 0 ? e.byte - 1 : 0)) + ": malformed JSON: " +
                     e.what() + " (a .json data file holds one JSON array of examples; JSON Lines go in .jsonl)");
  }
  if (!document.is_array()) {
    throw InputError(path + ": the top-level JSON value is " + (document.is_object() ? "an object" : document.type_name()) +
                     ", not an array of examples (a .json data file holds one JSON array; one example per line is .jsonl)");
  }
  return document;
}

void read_json_array(const json& array, ExampleReader& reader) {
  const std::string& path = reader.path();
  for (size_t i = 0; i < array.size(); ++i) {
    reader.add(path + "[" + std::to_string(i) + "]", [&] {
      if (!array[i].is_object()) {
        throw LineError{invalid_reason::kWrongType,
                        std::string("an array element must be an example object (got ") + json_type(array[i]) + ")"};
      }
      return array[i];
    });
  }
}

void read_json_lines(const std::string& text, ExampleReader& reader) {
  const std::string& path = reader.path();
  size_t begin = 0;
  int64_t line_no = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(begin, end - begin);
    begin = end + 1;
    ++line_no;
    if (line_no == 1 && line.compare(0, 3, "\xEF\xBB\xBF") == 0) line.erase(0, 3);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t\r\n") == std::string::npos) continue;
    reader.add(path + ":" + std::to_string(line_no), [&] {
      size_t bad = find_invalid_utf8(line);
      if (bad != std::string::npos) {
        throw LineError{invalid_reason::kNotUtf8, "not valid UTF-8 (byte " + std::to_string(bad + 1) + " of the line)"};
      }
      json object;
      try {
        object = json::parse(line);
      } catch (const json::parse_error& e) {
        throw LineError{invalid_reason::kMalformedJson, std::string("malformed JSON: ") + e.what()};
      }
      if (!object.is_object()) {
        throw LineError{invalid_reason::kMalformedJson,
                        std::string("a line must be a JSON object (got ") + json_type(object) + ")"};
      }
      return object;
    });
  }
}

}  // namespace

const char* role_name(Role role) {
  switch (role) {
    case Role::kSystem: return "system";
    case Role::kUser: return "user";
    case Role::kAssistant: return "assistant";
  }
  return "?";
}

const char* format_name(Format format) { return enum_name(format); }

Format parse_format(const std::string& name, const std::string& key) { return parse_enum<Format>(name, key); }

size_t find_invalid_utf8(const std::string& text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    unsigned char c = s[i];
    size_t len;
    uint32_t cp;
    if (c < 0x80) { ++i; continue; }
    if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
    else return i;
    if (i + len > n) return i;
    for (size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF are invalid UTF-8 too.
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) {
      return i;
    }
    i += len;
  }
  return std::string::npos;
}

std::string check_conversation(const std::vector<Message>& messages, std::string* reason) {
  size_t start = 0;
  if (!messages.empty() && messages[0].role == Role::kSystem) start = 1;
  if (messages.size() == start) {
    *reason = invalid_reason::kNoAssistantTurn;
    return "conversation has no user/assistant turns";
  }
  for (size_t i = start; i < messages.size(); ++i) {
    Role expected = (i - start) % 2 == 0 ? Role::kUser : Role::kAssistant;
    if (messages[i].role != expected) {
      *reason = invalid_reason::kBadTurnOrder;
      return "turn " + std::to_string(i) + " is \"" + role_name(messages[i].role) + "\" but \"" +
             role_name(expected) + "\" was expected (an optional system message, then user and assistant " +
             "turns alternating)";
    }
  }
  if (messages.back().role != Role::kAssistant) {
    *reason = invalid_reason::kNoAssistantTurn;
    return "conversation ends with a \"" + std::string(role_name(messages.back().role)) +
           "\" turn, not an assistant turn";
  }
  return "";
}

FileReadResult read_data_file(const std::filesystem::path& path, Format format, bool skip_invalid) {
  if (format == Format::kTokenized) {
    throw std::logic_error("read_data_file: data.format tokenized is read by data/tokenized.h");
  }
  FileReadResult result;
  result.path = path.string();
  result.format = format;
  const std::string text = read_text_source(path);
  ExampleReader reader(result, format, skip_invalid);
  if (uncompressed_name(path).extension() == ".json") {
    if (auto array = parse_json_document(text, result.path)) {
      read_json_array(*array, reader);
      if (result.lines == 0) throw InputError(result.path + ": the JSON array holds no examples");
      return result;
    }
  }
  read_json_lines(text, reader);
  if (result.lines == 0) throw InputError(result.path + ": data file is empty");
  return result;
}

}  // namespace sft::data
