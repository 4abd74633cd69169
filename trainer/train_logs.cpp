// trainer/train_logs.cpp: metrics and evaluations to JSONL and, optionally, TensorBoard.
#include "trainer/train_logs.h"

#include <algorithm>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

namespace sft {
namespace {

constexpr const char* kTrainScalars[] = {"loss", "lr", "grad_norm", "tokens_per_s", "target_tokens"};
constexpr const char* kEvalCounts[] = {"step", "examples", "target_tokens"};  // not metrics: no curve

}  // namespace

TrainLogs::TrainLogs(const std::filesystem::path& out_dir, bool tensorboard, int64_t start_step)
    : metrics_(out_dir / "metrics.jsonl"), eval_(out_dir / "eval.jsonl") {
  if (tensorboard) tensorboard_ = std::make_unique<TensorBoardWriter>(out_dir / "tensorboard", start_step);
}

void TrainLogs::write_metrics(const nlohmann::json& line) {
  metrics_.write(line);
  if (!tensorboard_) return;
  std::vector<std::pair<std::string, double>> scalars;
  for (const char* key : kTrainScalars) scalars.emplace_back(std::string("train/") + key, line.at(key).get<double>());
  tensorboard_->write_scalars(line.at("step").get<int64_t>(), scalars);
}

void TrainLogs::write_eval(const nlohmann::json& line) {
  eval_.write(line);
  if (!tensorboard_) return;
  std::vector<std::pair<std::string, double>> scalars;
  for (const auto& [key, value] : line.items()) {
    const bool count = std::find(std::begin(kEvalCounts), std::end(kEvalCounts), key) != std::end(kEvalCounts);
    if (!count && value.is_number()) scalars.emplace_back("eval/" + key, value.get<double>());
  }
  tensorboard_->write_scalars(line.at("step").get<int64_t>(), scalars);
}

}  // namespace sft
