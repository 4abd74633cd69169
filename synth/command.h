// synth/command.h: `sft synth SUBCOMMAND ...`: self-instruct, evol, distill, backtranslate.
#pragma once
#include <string>
#include <vector>

namespace sft {

int command_synth(const std::vector<std::string>& args);
const char* synth_usage();
const char* synth_summary();

}  // namespace sft
