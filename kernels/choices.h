// kernels/choices.h: the kernel choices a config names (model.attention, model.fused_ops), torch-free so
// trainer/config.h can hold them as types. Their names are listed once here (common/enum_names.h) and
// serve parsing, validation, the saved YAML and `sft help config`.
#pragma once
#include <array>
#include <string>
#include <utility>
#include <vector>

#include "common/enum_names.h"

namespace sft::kernels {

// Auto, Fused, Sdpa and Eager are the `model.attention` values. The last two are resolved choices only:
//   FusedDeterministic: the fused kernel with its deterministic backward (model.deterministic_attention);
//   TorchFlashVarlen:   LibTorch's built-in FlashAttention-2 varlen kernels (at::_flash_attention_forward
//                       and its autograd backward, with cu_seqlens), which `auto` picks on CUDA when they
//                       are faster than ours.
enum class AttentionImpl { Auto, Fused, Sdpa, Eager, FusedDeterministic, TorchFlashVarlen };

// Whether `impl` runs the fused kernel's deterministic backward (no atomics; kernels/README.md).
constexpr bool deterministic_backward(AttentionImpl impl) { return impl == AttentionImpl::FusedDeterministic; }

// One of the fused ops `model.fused_ops` lists.
enum class FusedOp { RmsNorm, Rope, SwiGlu, LinearCe, Dropout, Projections, Lora };

// `model.fused_ops` as written: [auto] (the ops measured faster on the run's device), [none], or a list.
struct FusedOpsChoice {
  enum class Mode { Auto, None, List };
  Mode mode = Mode::Auto;
  std::vector<FusedOp> ops;  // Mode::List

  bool operator==(const FusedOpsChoice& other) const { return mode == other.mode && ops == other.ops; }
};

// Parses the names of `model.fused_ops`; throws sft::InputError naming every unknown entry and the allowed ones.
FusedOpsChoice parse_fused_ops_choice(const std::vector<std::string>& names);
// One message per unknown entry ("model.fused_ops: unknown op 'x' (auto, none, or a list of ...)"); empty: valid.
std::vector<std::string> fused_ops_choice_problems(const std::vector<std::string>& names);
// The names that parse back to `choice` ([auto], [none] or the ops in order).
std::vector<std::string> fused_ops_choice_names(const FusedOpsChoice& choice);

}  // namespace sft::kernels

namespace sft {

// The `model.attention` names; the resolved-only values have none (kernels::to_string describes them).
template <>
struct EnumNames<kernels::AttentionImpl> {
  static constexpr std::array<std::pair<kernels::AttentionImpl, const char*>, 4> entries{{
      {kernels::AttentionImpl::Auto, "auto"},
      {kernels::AttentionImpl::Fused, "fused"},
      {kernels::AttentionImpl::Sdpa, "sdpa"},
      {kernels::AttentionImpl::Eager, "eager"},
  }};
};

template <>
struct EnumNames<kernels::FusedOp> {
  static constexpr std::array<std::pair<kernels::FusedOp, const char*>, 7> entries{{
      {kernels::FusedOp::RmsNorm, "rmsnorm"},
      {kernels::FusedOp::Rope, "rope"},
      {kernels::FusedOp::SwiGlu, "swiglu"},
      {kernels::FusedOp::LinearCe, "linear_ce"},
      {kernels::FusedOp::Dropout, "dropout"},  // LoRA's dropout + lora_A (kernels/dropout_linear.h)
      {kernels::FusedOp::Projections, "projections"},
      {kernels::FusedOp::Lora, "lora"},  // LoRA projections of one input as one node (kernels/lora_group.cpp)
  }};
};

}  // namespace sft
