// common/autocast.h: ScopedAutocast, a scoped LibTorch autocast state for one device type (CPU or CUDA),
// as `with torch.autocast(device_type, dtype, enabled)` sets it. Used by the trainer's forward passes and
// by the gradient-checkpointing recompute (model/llama.cpp), which must replay the forward's state.
#pragma once
#include <ATen/autocast_mode.h>

#include <optional>

namespace sft {

// While alive: autocast on `device_type` is enabled in `dtype`, or disabled when dtype is empty. Restores
// the previous state; the outermost enabled scope drops autocast's cached low-precision weight copies.
class ScopedAutocast {
 public:
  ScopedAutocast(at::DeviceType device_type, std::optional<at::ScalarType> dtype)
      : device_type_(device_type),
        previous_enabled_(at::autocast::is_autocast_enabled(device_type)),
        previous_dtype_(at::autocast::get_autocast_dtype(device_type)),
        previous_cache_(at::autocast::is_autocast_cache_enabled()),
        nested_(dtype.has_value()) {
    if (dtype) at::autocast::set_autocast_dtype(device_type_, *dtype);
    at::autocast::set_autocast_enabled(device_type_, dtype.has_value());
    if (nested_) {
      at::autocast::set_autocast_cache_enabled(true);
      at::autocast::increment_nesting();
    }
  }
  ~ScopedAutocast() {
    if (nested_ && at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(device_type_, previous_enabled_);
    at::autocast::set_autocast_dtype(device_type_, previous_dtype_);
    at::autocast::set_autocast_cache_enabled(previous_cache_);
  }
  ScopedAutocast(const ScopedAutocast&) = delete;
  ScopedAutocast& operator=(const ScopedAutocast&) = delete;

  // The autocast dtype in effect for `device_type` right now, or empty when autocast is off there.
  static std::optional<at::ScalarType> current(at::DeviceType device_type) {
    if (!at::autocast::is_autocast_enabled(device_type)) return std::nullopt;
    return at::autocast::get_autocast_dtype(device_type);
  }

 private:
  at::DeviceType device_type_;
  bool previous_enabled_;
  at::ScalarType previous_dtype_;
  bool previous_cache_;
  bool nested_;
};

}  // namespace sft
