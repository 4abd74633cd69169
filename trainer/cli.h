// trainer/cli.h: a small command-line argument reader shared by the commands: positional arguments,
// `--flag value` / `--flag=value` options and `key.sub=value` config overrides. Unknown flags are errors.
#pragma once
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace sft {

class CommandLine {
 public:
  // `value_flags` take a value, `switch_flags` do not. Everything else starting with "--" is an error.
  CommandLine(const std::string& command, const std::vector<std::string>& args,
              const std::set<std::string>& value_flags, const std::set<std::string>& switch_flags = {});

  const std::vector<std::string>& positional() const { return positional_; }
  const std::vector<std::string>& overrides() const { return overrides_; }  // key=value items
  std::optional<std::string> value(const std::string& flag) const;
  std::string required(const std::string& flag) const;
  bool has(const std::string& flag) const { return switches_.count(flag) || values_.count(flag); }
  int64_t integer(const std::string& flag, int64_t fallback) const;
  double number(const std::string& flag, double fallback) const;

 private:
  std::string command_;
  std::vector<std::string> positional_, overrides_;
  std::map<std::string, std::string> values_;
  std::set<std::string> switches_;
};

}  // namespace sft
