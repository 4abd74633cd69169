// trainer/trainer_state.h: trainer_state.json of a checkpoint, its layout and its parser side by side.
//
// {"format_version": 1, "global_step", "micro_batches_done" (GLOBAL micro-batches of the whole run),
//  "epoch", "total_steps", "world_size", "micro_batch_size", "grad_accum",
//  "sampler": {"seed", "epoch", "position" (global micro-batches taken in that epoch)},
//  "scheduler": {"kind", "peak_lr", "warmup_steps", "total_steps", "min_lr_ratio", "next_step"},
//  "rng": rank 0's generator states, "log_window": {"loss_sum", "steps", "tokens", "target_tokens"},
//  "elapsed_s", "finetune_method", "config_yaml", "fingerprint"}
// Positions are global, never per rank, so a checkpoint resumes on any world size. micro_batch_size and
// grad_accum are absent in checkpoints from before multi-process training (then they are not checked).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "data/packing.h"
#include "trainer/schedule.h"

namespace sft {

struct TrainerState {
  int64_t global_step = 0;
  int64_t micro_batches_done = 0;  // global
  double epoch = 0;
  int64_t total_steps = 0;
  int64_t world_size = 1;
  std::optional<int64_t> micro_batch_size, grad_accum;
  data::SamplerState sampler;
  ScheduleSpec schedule;
  nlohmann::json rng = nlohmann::json::object();
  double window_loss = 0;
  int64_t window_steps = 0, window_tokens = 0, window_targets = 0;
  double elapsed_s = 0;
  std::string finetune_method;
  std::string config_yaml;
  nlohmann::json fingerprint = nlohmann::json::object();

  // Rows of one optimizer step across all ranks (micro_batch_size x grad_accum x world_size), if known.
  std::optional<int64_t> global_batch_rows() const;

  nlohmann::json to_json() const;
  // Throws sft::InputError naming `label` (the file) and the missing or mistyped key.
  static TrainerState from_json(const nlohmann::json& j, const std::string& label);
};

// A checkpoint resumes on any world size (positions are global), but the global batch
// (micro_batch_size x grad_accum x world_size rows) must stay unless allow_batch_change, and
// micro_batch_size must stay (the sample plan is made of micro-batches of that many rows). Throws
// sft::InputError naming `label`, saying which train.grad_accum keeps the batch (or why none can), and
// --allow-batch-change.
void check_global_batch(const TrainerState& saved, int64_t micro_batch_size, int64_t grad_accum, int64_t world_size,
                        const std::string& label, bool allow_batch_change);

}  // namespace sft
