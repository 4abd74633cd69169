// trainer/eval_command.h: `sft eval` (held-out scores: loss, perplexity, token accuracy and, with
// eval.generate, exact match from greedy decoding) and `sft data` (the data pipeline alone).
#pragma once
#include <string>
#include <vector>

namespace sft {

int command_eval(const std::vector<std::string>& args);
int command_data(const std::vector<std::string>& args);

}  // namespace sft
