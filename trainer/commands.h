// trainer/commands.h: the `sft` command table. Each command is one function taking its arguments and
// returning an exit code; errors are thrown (sft::InputError -> exit 2, anything else -> exit 1) and
// caught only in main.
#pragma once
#include <string>
#include <vector>

namespace sft {

int run_sft(const std::vector<std::string>& args);

// Commands (one per file where they are large).
int command_help(const std::vector<std::string>& args);
int command_inspect(const std::vector<std::string>& args);
int command_logits(const std::vector<std::string>& args);

}  // namespace sft
