// trainer/grad_ready_hook.h: the post-accumulate-grad hook shared by the gradient buckets
// (trainer/grad_sync.h) and the optimizer in backward (trainer/step_in_backward.h): it tells its owner
// that parameter `index` has its complete .grad for this backward (after AccumulateGrad ran).
#pragma once
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <cstdint>
#include <memory>

namespace sft {

template <class Owner>
struct GradReadyHook : torch::autograd::PostAccumulateGradHook {
  GradReadyHook(Owner* owner, int64_t index) : owner_(owner), index_(index) {}
  void operator()(const torch::autograd::Variable& /*param*/) override { owner_->on_grad_ready(index_); }
  Owner* owner_;
  int64_t index_;
};

// Puts the hook on `param` (replacing any earlier one: a tensor holds one post-accumulate-grad hook here).
template <class Owner>
void set_grad_ready_hook(const at::Tensor& param, Owner* owner, int64_t index) {
  torch::autograd::impl::set_post_acc_grad_hooks(param, std::make_unique<GradReadyHook<Owner>>(owner, index));
}

inline void remove_grad_ready_hook(const at::Tensor& param) {
  torch::autograd::impl::set_post_acc_grad_hooks(param, nullptr);
}

}  // namespace sft
