// data/tokenizer/json_fields.cpp: the field readers of data/tokenizer/json_fields.h.
#include "data/tokenizer/json_fields.h"

#include "common/errors.h"

namespace sft::data::tokenizer {

void bad_json(const std::string& file, const std::string& what) { throw InputError(file + ": " + what); }

const json& need(const json& j, const char* key, const std::string& file, const std::string& where) {
  if (!j.is_object() || !j.contains(key)) bad_json(file, where + ": missing key '" + key + "'");
  return j.at(key);
}

std::string get_string(const json& j, const char* key, const std::string& file, const std::string& where) {
  const json& v = need(j, key, file, where);
  if (!v.is_string()) bad_json(file, where + "." + key + " must be a string");
  return v.get<std::string>();
}

bool get_bool(const json& j, const char* key, bool fallback) {
  if (!j.is_object() || !j.contains(key) || j.at(key).is_null()) return fallback;
  return j.at(key).is_boolean() ? j.at(key).get<bool>() : fallback;
}

std::string get_string_or(const json& j, const char* key, const std::string& fallback) {
  return j.is_object() && j.contains(key) && j.at(key).is_string() ? j.at(key).get<std::string>() : fallback;
}

std::string prepend_scheme(const json& j) {
  if (j.contains("add_prefix_space") && j["add_prefix_space"].is_boolean() && !j["add_prefix_space"].get<bool>()) {
    return "never";
  }
  return get_string_or(j, "prepend_scheme", "always");
}

}  // namespace sft::data::tokenizer
