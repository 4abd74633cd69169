// data/report.h: data_report.json: every count the pipeline produces, so no example disappears
// silently (lines read, invalid lines by reason, examples kept/dropped by reason, tokens, targets,
// truncation, packing efficiency).
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace sft::data {

// Reasons an example is dropped after tokenization (keys of SplitStats::dropped).
namespace drop_reason {
constexpr const char* kTooLong = "too_long";                                  // truncation: drop
constexpr const char* kNoTarget = "no_target";                                // nothing supervised at all
constexpr const char* kNoTargetAfterTruncation = "no_target_after_truncation";  // truncation: right cut all targets
}  // namespace drop_reason

struct SplitStats {
  int64_t examples = 0;  // valid conversations that were tokenized
  int64_t kept = 0;
  std::map<std::string, int64_t> dropped;  // reason -> count
  int64_t truncated = 0;                   // kept, but cut at max_seq_len
  int64_t tokens = 0;                      // kept tokens (after truncation)
  int64_t target_tokens = 0;               // supervised tokens the loss sees
  int64_t max_length = 0;                  // longest kept example
  nlohmann::json to_json() const;
};

struct FileStats {
  std::string path;
  std::string split;   // "train" | "eval"
  std::string format;  // detected or configured
  int64_t lines = 0;   // non-blank lines
  int64_t valid = 0;   // conversations read
  std::map<std::string, int64_t> invalid;  // reason -> count (skip_invalid)
};

struct DataReport {
  std::vector<FileStats> files;
  std::map<std::string, int64_t> invalid;  // all files: reason -> count
  int64_t invalid_total = 0;
  std::string chat_template;
  std::string eval_source = "none";  // "file" | "eval_ratio" | "none"
  double eval_ratio = 0.0;
  int64_t max_seq_len = 0;
  std::string truncation;
  bool packing = false;
  double packing_efficiency = 0.0;  // train: real tokens / (packed rows * max_seq_len); 0 without packing
  SplitStats train, eval;
  std::vector<std::string> warnings;
  nlohmann::json to_json() const;
};

}  // namespace sft::data
