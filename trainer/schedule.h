// trainer/schedule.h: learning-rate schedules (cosine, linear, constant) with linear warmup and a floor
// (min_lr_ratio), as a pure function of the optimizer step. Same formulas as transformers'
// get_{cosine,linear,constant}_schedule_with_warmup (cosine floor as cosine_with_min_lr).
#pragma once
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>

#include "common/enum_names.h"

namespace sft {

enum class Scheduler { kCosine, kLinear, kConstant };  // train.scheduler

template <>
struct EnumNames<Scheduler> {
  static constexpr std::array<std::pair<Scheduler, const char*>, 3> entries{
      {{Scheduler::kCosine, "cosine"}, {Scheduler::kLinear, "linear"}, {Scheduler::kConstant, "constant"}}};
};

struct ScheduleSpec {
  Scheduler kind = Scheduler::kCosine;
  double peak_lr = 2e-4;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  double min_lr_ratio = 0.0;
};

// lr used by optimizer step `step` (0-based: the first update uses lr_at(0)).
inline double lr_at(int64_t step, const ScheduleSpec& s) {
  if (step < s.warmup_steps) {
    return s.peak_lr * static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, s.warmup_steps));
  }
  const double progress = static_cast<double>(step - s.warmup_steps) /
                          static_cast<double>(std::max<int64_t>(1, s.total_steps - s.warmup_steps));
  double factor = 1.0;
  if (s.kind == Scheduler::kCosine) {
    factor = 0.5 * (1.0 + std::cos(M_PI * progress));
    factor = s.min_lr_ratio + (1.0 - s.min_lr_ratio) * std::max(0.0, factor);
  } else if (s.kind == Scheduler::kLinear) {
    factor = std::max(0.0, 1.0 - progress);
    factor = s.min_lr_ratio + (1.0 - s.min_lr_ratio) * factor;
  }
  return s.peak_lr * factor;
}

}  // namespace sft
