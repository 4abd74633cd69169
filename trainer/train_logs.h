// trainer/train_logs.h: where `sft train` sends its per-step metrics and its evaluations: metrics.jsonl
// and eval.jsonl always, and TensorBoard scalars (output_dir/tensorboard/) with log.tensorboard. One
// record goes to both, so the TensorBoard curves equal the JSONL lines.
#pragma once
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "trainer/metrics.h"
#include "trainer/tensorboard.h"

namespace sft {

class TrainLogs {
 public:
  // `tensorboard`: write event files too; pass false on every rank but 0 (one writer per run directory).
  // `start_step`: the optimizer step the run starts after (0 fresh, k on resume from checkpoint k): the
  // TensorBoard writer drops earlier attempts' records after it (train.cpp truncates the JSONL files).
  TrainLogs(const std::filesystem::path& out_dir, bool tensorboard, int64_t start_step);

  // A metrics.jsonl line ({"step", "loss", "lr", ...}): scalars train/loss, train/lr, train/grad_norm,
  // train/tokens_per_s, train/target_tokens at its step.
  void write_metrics(const nlohmann::json& line);
  // An eval.jsonl line: every metric (all numbers but step, examples and target_tokens) as eval/<key>.
  void write_eval(const nlohmann::json& line);

 private:
  JsonlWriter metrics_;
  JsonlWriter eval_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;  // null without log.tensorboard
};

}  // namespace sft
