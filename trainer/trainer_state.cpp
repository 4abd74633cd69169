// trainer/trainer_state.cpp: trainer_state.json writer and parser.
#include "trainer/trainer_state.h"

#include "common/errors.h"

namespace sft {
using nlohmann::json;

std::optional<int64_t> TrainerState::global_batch_rows() const {
  if (!micro_batch_size || !grad_accum) return std::nullopt;
  return *micro_batch_size * *grad_accum * world_size;
}

json TrainerState::to_json() const {
  json j = {
      {"format_version", 1},
      {"global_step", global_step},
      {"micro_batches_done", micro_batches_done},
      {"epoch", epoch},
      {"total_steps", total_steps},
      {"world_size", world_size},
      {"sampler", sampler.to_json()},
      {"scheduler", {{"kind", enum_name(schedule.kind)}, {"peak_lr", schedule.peak_lr}, {"warmup_steps", schedule.warmup_steps},
                     {"total_steps", schedule.total_steps}, {"min_lr_ratio", schedule.min_lr_ratio},
                     {"next_step", global_step}}},
      {"rng", rng},
      {"log_window", {{"loss_sum", window_loss}, {"steps", window_steps}, {"tokens", window_tokens},
                      {"target_tokens", window_targets}}},
      {"elapsed_s", elapsed_s},
      {"finetune_method", finetune_method},
      {"config_yaml", config_yaml},
      {"fingerprint", fingerprint},
  };
  if (micro_batch_size) j["micro_batch_size"] = *micro_batch_size;
  if (grad_accum) j["grad_accum"] = *grad_accum;
  return j;
}

TrainerState TrainerState::from_json(const json& j, const std::string& label) {
  auto integer = [&](const char* key) {
    if (!j.contains(key) || !j[key].is_number_integer()) throw InputError(label + ": missing integer '" + key + "'");
    return j[key].get<int64_t>();
  };
  if (!j.is_object()) throw InputError(label + ": not a JSON object");
  TrainerState s;
  s.global_step = integer("global_step");
  s.micro_batches_done = integer("micro_batches_done");
  s.epoch = j.value("epoch", 0.0);
  s.total_steps = j.value("total_steps", int64_t{0});
  s.world_size = j.value("world_size", int64_t{1});
  if (s.world_size < 1) throw InputError(label + ": world_size must be >= 1");
  if (j.contains("micro_batch_size")) s.micro_batch_size = integer("micro_batch_size");
  if (j.contains("grad_accum")) s.grad_accum = integer("grad_accum");
  if (!j.contains("sampler")) throw InputError(label + ": missing 'sampler'");
  s.sampler = data::SamplerState::from_json(j["sampler"], label);
  const json sched = j.value("scheduler", json::object());
  if (sched.contains("kind")) {
    const std::string kind = sched["kind"].is_string() ? sched["kind"].get<std::string>() : sched["kind"].dump();
    s.schedule.kind = parse_enum<Scheduler>(kind, label + ": scheduler.kind");
  }
  s.schedule.peak_lr = sched.value("peak_lr", s.schedule.peak_lr);
  s.schedule.warmup_steps = sched.value("warmup_steps", s.schedule.warmup_steps);
  s.schedule.total_steps = sched.value("total_steps", s.schedule.total_steps);
  s.schedule.min_lr_ratio = sched.value("min_lr_ratio", s.schedule.min_lr_ratio);
  if (!j.contains("rng")) throw InputError(label + ": missing 'rng'");
  s.rng = j["rng"];
  const json window = j.value("log_window", json::object());
  s.window_loss = window.value("loss_sum", 0.0);
  s.window_steps = window.value("steps", int64_t{0});
  s.window_tokens = window.value("tokens", int64_t{0});
  s.window_targets = window.value("target_tokens", int64_t{0});
  s.elapsed_s = j.value("elapsed_s", 0.0);
  s.finetune_method = j.value("finetune_method", std::string());
  s.config_yaml = j.value("config_yaml", std::string());
  s.fingerprint = j.value("fingerprint", json::object());
  return s;
}

void check_global_batch(const TrainerState& state, int64_t micro_batch_size, int64_t grad_accum, int64_t world,
                        const std::string& label, bool allow_batch_change) {
  if (state.micro_batch_size && *state.micro_batch_size != micro_batch_size) {
    throw InputError(label + ": saved with train.micro_batch_size " + std::to_string(*state.micro_batch_size) +
                     ", but it is now " + std::to_string(micro_batch_size) +
                     ": the sample order is made of micro-batches of that many rows; keep train.micro_batch_size=" +
                     std::to_string(*state.micro_batch_size));
  }
  const auto saved_rows = state.global_batch_rows();
  const int64_t rows = micro_batch_size * grad_accum * world;
  if (!saved_rows || *saved_rows == rows || allow_batch_change) return;
  const int64_t saved_micro = *saved_rows / micro_batch_size;  // global micro-batches per step
  std::string how;
  if (saved_micro % world == 0) {
    how = "keep it with train.grad_accum=" + std::to_string(saved_micro / world) + " on " + std::to_string(world) +
          " process" + (world == 1 ? "" : "es");
  } else {
    how = "with " + std::to_string(world) + " processes it cannot be kept (" + std::to_string(saved_micro) +
          " micro-batches per step do not split evenly); use a world size that divides " + std::to_string(saved_micro);
  }
  throw InputError(label + ": the global batch would change from " + std::to_string(*saved_rows) + " rows (micro_batch_size " +
                   std::to_string(micro_batch_size) + " x grad_accum " + std::to_string(state.grad_accum.value_or(0)) +
                   " x world_size " + std::to_string(state.world_size) + ") to " + std::to_string(rows) + " (x grad_accum " +
                   std::to_string(grad_accum) + " x world_size " + std::to_string(world) + "); " + how +
                   ", or pass --allow-batch-change to continue with the new batch");
}

}  // namespace sft
