// data/report.cpp: JSON form of the data report.
#include "data/report.h"

namespace sft::data {

nlohmann::json SplitStats::to_json() const {
  int64_t dropped_total = 0;
  for (const auto& [reason, n] : dropped) dropped_total += n;
  return {{"examples", examples}, {"kept", kept},   {"dropped", dropped_total},
          {"dropped_by_reason", dropped},           {"truncated", truncated},
          {"tokens", tokens},     {"target_tokens", target_tokens}, {"max_length", max_length}};
}

nlohmann::json DataReport::to_json() const {
  nlohmann::json file_list = nlohmann::json::array();
  for (const FileStats& f : files) {
    file_list.push_back({{"path", f.path}, {"split", f.split}, {"format", f.format}, {"lines", f.lines},
                         {"valid", f.valid}, {"invalid", f.invalid}});
  }
  return {{"files", file_list},
          {"invalid_lines", invalid_total},
          {"invalid_by_reason", invalid},
          {"template", chat_template},
          {"eval_source", eval_source},
          {"eval_ratio", eval_ratio},
          {"max_seq_len", max_seq_len},
          {"truncation", truncation},
          {"packing", packing},
          {"packing_efficiency", packing_efficiency},
          {"train", train.to_json()},
          {"eval", eval.to_json()},
          {"warnings", warnings}};
}

}  // namespace sft::data
