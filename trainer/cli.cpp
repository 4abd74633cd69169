// trainer/cli.cpp: CommandLine implementation. Usage errors are sft::InputError (exit 2).
#include "trainer/cli.h"

#include "common/errors.h"

namespace sft {
namespace {

// `key.sub=value` where the key is made of [a-z0-9_.]: a path like ./a=b.yaml is not an override.
bool is_override(const std::string& arg) {
  const size_t eq = arg.find('=');
  if (eq == std::string::npos || eq == 0) return false;
  for (size_t i = 0; i < eq; ++i) {
    const char c = arg[i];
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.')) return false;
  }
  return true;
}

}  // namespace

CommandLine::CommandLine(const std::string& command, const std::vector<std::string>& args,
                         const std::set<std::string>& value_flags, const std::set<std::string>& switch_flags)
    : command_(command) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.rfind("--", 0) == 0) {
      std::string flag = arg, inline_value;
      const size_t eq = arg.find('=');
      const bool has_inline = eq != std::string::npos;
      if (has_inline) {
        flag = arg.substr(0, eq);
        inline_value = arg.substr(eq + 1);
      }
      if (switch_flags.count(flag) && !has_inline) {
        switches_.insert(flag);
      } else if (value_flags.count(flag)) {
        if (has_inline) {
          values_[flag] = inline_value;
        } else if (i + 1 < args.size()) {
          values_[flag] = args[++i];
        } else {
          throw InputError("sft " + command_ + ": " + flag + " needs a value");
        }
      } else {
        throw InputError("sft " + command_ + ": unknown option '" + flag + "' (see `sft help " + command_ + "`)");
      }
    } else if (is_override(arg)) {
      overrides_.push_back(arg);
    } else {
      positional_.push_back(arg);
    }
  }
}

std::optional<std::string> CommandLine::value(const std::string& flag) const {
  auto it = values_.find(flag);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

std::string CommandLine::required(const std::string& flag) const {
  auto v = value(flag);
  if (!v) throw InputError("sft " + command_ + ": " + flag + " is required (see `sft help " + command_ + "`)");
  return *v;
}

int64_t CommandLine::integer(const std::string& flag, int64_t fallback) const {
  auto v = value(flag);
  if (!v) return fallback;
  try {
    size_t used = 0;
    int64_t parsed = std::stoll(*v, &used);
    if (used == v->size()) return parsed;
  } catch (const std::exception&) {
  }
  throw InputError("sft " + command_ + ": " + flag + " must be an integer, got '" + *v + "'");
}

double CommandLine::number(const std::string& flag, double fallback) const {
  auto v = value(flag);
  if (!v) return fallback;
  try {
    size_t used = 0;
    double parsed = std::stod(*v, &used);
    if (used == v->size()) return parsed;
  } catch (const std::exception&) {
  }
  throw InputError("sft " + command_ + ": " + flag + " must be a number, got '" + *v + "'");
}

}  // namespace sft
