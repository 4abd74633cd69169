// data/tokenizer/json_fields.h: typed reads of tokenizer.json fields for the component loaders; every
// error is an sft::InputError naming the file and where in it (e.g. "pre_tokenizer Split").
#pragma once
#include <nlohmann/json.hpp>

#include <string>

namespace sft::data::tokenizer {

using json = nlohmann::json;

[[noreturn]] void bad_json(const std::string& file, const std::string& what);
// j[key], which must exist.
const json& need(const json& j, const char* key, const std::string& file, const std::string& where);
std::string get_string(const json& j, const char* key, const std::string& file, const std::string& where);
// j[key] when it is a boolean, else `fallback` (absent and null keys take the HF default).
bool get_bool(const json& j, const char* key, bool fallback);
// j[key] when it is a string, else `fallback`.
std::string get_string_or(const json& j, const char* key, const std::string& fallback);
// Metaspace's prepend_scheme ("always", "first", "never"), with the legacy add_prefix_space: false.
std::string prepend_scheme(const json& j);

}  // namespace sft::data::tokenizer
