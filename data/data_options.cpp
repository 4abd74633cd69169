// data/data_options.cpp: the one check of the data options, shared by the config and the pipeline.
#include "data/data_options.h"

#include "common/errors.h"

namespace sft::data {

std::vector<std::string> data_option_problems(const DataOptions& o) {
  std::vector<std::string> problems;
  if (o.train.empty()) problems.push_back("data.train is required");
  if (!(o.eval_ratio >= 0.0 && o.eval_ratio < 1.0)) {
    problems.push_back("data.eval_ratio must be in [0, 1) (got " + std::to_string(o.eval_ratio) + ")");
  }
  if (o.max_seq_len < 2) problems.push_back("data.max_seq_len must be >= 2 (got " + std::to_string(o.max_seq_len) + ")");
  if (o.max_invalid < 0) problems.push_back("data.max_invalid must be >= 0 (got " + std::to_string(o.max_invalid) + ")");
  if (o.direction == Direction::kReverse && o.format == Format::kTokenized) {
    problems.push_back("data.direction reverse needs conversations: the tokenized format has no prompt and response to swap");
  }
  return problems;
}

void check_data_options(const DataOptions& o) {
  const std::vector<std::string> problems = data_option_problems(o);
  if (problems.empty()) return;
  std::string message = problems.front();
  for (size_t i = 1; i < problems.size(); ++i) message += "; " + problems[i];
  throw InputError(message);
}

}  // namespace sft::data
