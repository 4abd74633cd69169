// common/enum_names.h: one list of names per config choice. Each enum that a config key takes declares
// its names once, next to the enum, as a specialisation of EnumNames:
//
//   enum class Scheduler { Cosine, Linear, Constant };
//   template <> struct EnumNames<Scheduler> {
//     static constexpr std::array<std::pair<Scheduler, const char*>, 3> entries{
//         {{Scheduler::Cosine, "cosine"}, {Scheduler::Linear, "linear"}, {Scheduler::Constant, "constant"}}};
//   };
//
// Parsing (parse_enum), validation messages (enum_names_joined), the saved YAML and `sft help config`
// (enum_name) all read that one list, so a name can never be accepted in one place and missing in another.
#pragma once
#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "common/errors.h"

namespace sft {

template <class E>
struct EnumNames;  // specialised per enum: static constexpr std::array<std::pair<E, const char*>, N> entries

// The name of `value`; a value without a name (a resolved-only state) is a bug, shown as "?".
template <class E>
const char* enum_name(E value) {
  for (const auto& [entry, name] : EnumNames<E>::entries) {
    if (entry == value) return name;
  }
  return "?";
}

template <class E>
std::optional<E> enum_from_name(std::string_view name) {
  for (const auto& [entry, entry_name] : EnumNames<E>::entries) {
    if (name == entry_name) return entry;
  }
  return std::nullopt;
}

// "a|b|c" (or with another separator): every allowed name, in declaration order.
template <class E>
std::string enum_names_joined(std::string_view separator = "|") {
  std::string out;
  for (const auto& [entry, name] : EnumNames<E>::entries) {
    if (!out.empty()) out += separator;
    out += name;
  }
  return out;
}

// "KEY 'NAME' is not one of a|b|c": the message for a name not in the list.
template <class E>
std::string enum_name_problem(const std::string& key, const std::string& name) {
  return key + " '" + name + "' is not one of " + enum_names_joined<E>();
}

// Parses `name`; throws sft::InputError "KEY: 'NAME' is not one of a|b|c" for any other text.
template <class E>
E parse_enum(const std::string& name, const std::string& key) {
  if (std::optional<E> value = enum_from_name<E>(name)) return *value;
  throw InputError(key + ": '" + name + "' is not one of " + enum_names_joined<E>());
}

}  // namespace sft
