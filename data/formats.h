// data/formats.h: the data-file readers (JSON Lines and JSON arrays, plain or gzip). Every supported format (prompt_response, alpaca, messages,
// sharegpt) is normalised into one Conversation: an optional system message followed by strictly
// alternating user/assistant turns that ends with an assistant turn. Each example remembers its
// source ("file:line") so every later error and the mask audit can name it.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "data/data_options.h"

namespace sft::data {

enum class Role { kSystem, kUser, kAssistant };
const char* role_name(Role role);  // "system" | "user" | "assistant" (HF chat-template role names)

struct Message {
  Role role = Role::kUser;
  std::string content;
};

struct Conversation {
  std::vector<Message> messages;  // [system], user, assistant, user, assistant, ...
  std::string source;             // "file:line"
};

// Format (data/data_options.h) by name: format_name = enum_name; parse_format throws sft::InputError
// naming `key` and every allowed name.
const char* format_name(Format format);
Format parse_format(const std::string& name, const std::string& key = "data.format");

// Why a line was rejected. The report counts rejected lines under these names.
namespace invalid_reason {
constexpr const char* kNotUtf8 = "not_utf8";
constexpr const char* kMalformedJson = "malformed_json";
constexpr const char* kMissingField = "missing_field";
constexpr const char* kWrongType = "wrong_type";
constexpr const char* kUnknownRole = "unknown_role";
constexpr const char* kBadTurnOrder = "bad_turn_order";          // roles do not alternate
constexpr const char* kNoAssistantTurn = "no_assistant_turn";    // ends without an assistant turn
constexpr const char* kMixedFormat = "mixed_format";            // keys of another format than the file's
}  // namespace invalid_reason

struct InvalidLine {
  std::string source;   // "file:line"
  std::string reason;   // one of invalid_reason::*
  std::string message;  // human-readable, already prefixed with source
};

struct FileReadResult {
  std::string path;
  Format format = Format::kAuto;  // the detected (or configured) format
  int64_t lines = 0;              // non-blank lines (JSON Lines) or array elements (JSON array)
  std::vector<Conversation> conversations;
  std::vector<InvalidLine> invalid;  // only filled with skip_invalid; otherwise the first one throws
};

// Reads one data file: JSON Lines (one example per line), or for a name ending in .json a JSON array of
// examples (alpaca_data.json, LLaMA-Factory's data/*.json); either may be gzip-compressed (.jsonl.gz,
// .json.gz). A .json file that is JSON Lines inside (it does not parse as one document and its first
// line is an object) is read as JSON Lines, as HF datasets does. Each example's source is "file:line"
// (JSON Lines, 1-based) or "file[index]" (JSON array, 0-based). `format` kAuto detects the format from
// the first example; an example with another format's keys is then a mixed_format error.
// Throws sft::InputError naming the file (and line or index) for a missing/empty/undetectable file, a
// .json file whose top-level value is not an array, malformed JSON in a .json file, bad gzip data, and
// for the first bad example unless skip_invalid is set (then bad examples are collected in `invalid`).
// Blank lines are ignored; a UTF-8 BOM at the start and a trailing '\r' are stripped.
FileReadResult read_data_file(const std::filesystem::path& path, Format format, bool skip_invalid);

// Checks the role sequence; returns "" when valid, else sets `reason` and returns the message.
std::string check_conversation(const std::vector<Message>& messages, std::string* reason);

// Byte offset of the first invalid UTF-8 sequence, or npos when `text` is valid UTF-8.
size_t find_invalid_utf8(const std::string& text);

}  // namespace sft::data
