// trainer/metrics.h: run outputs that grow line by line (metrics.jsonl, eval.jsonl) and the progress
// display (a bar on a terminal, plain periodic lines otherwise).
#pragma once
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "common/text_file.h"

namespace sft {

// Appends one JSON object per line and flushes it, so a killed run keeps every line written.
class JsonlWriter {
 public:
  JsonlWriter() = default;
  explicit JsonlWriter(const std::filesystem::path& path, bool append = true);
  void write(const nlohmann::json& line);

 private:
  std::optional<TextFileWriter> out_;
};

class ProgressDisplay {
 public:
  ProgressDisplay(int64_t total_steps, bool enabled);
  // Called after every optimizer step.
  void update(int64_t step, double loss, double lr, double tokens_per_s);
  void message(const std::string& line);  // prints a line without breaking the bar
  void finish();

 private:
  int64_t total_steps_;
  bool bar_;  // true on a terminal with log.progress
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_plain_;
};

}  // namespace sft
