// trainer/step_in_backward.cpp: the per-parameter AdamW hooks of train.optimizer_in_backward.
#include "trainer/step_in_backward.h"

#include <ATen/core/grad_mode.h>

#include "trainer/grad_ready_hook.h"

namespace sft {

StepInBackward::StepInBackward(AdamW& optimizer) : optimizer_(optimizer) {
  const std::vector<NamedParameter>& params = optimizer_.parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    set_grad_ready_hook(params[i].tensor, this, static_cast<int64_t>(i));
  }
}

StepInBackward::~StepInBackward() {
  for (const NamedParameter& p : optimizer_.parameters()) remove_grad_ready_hook(p.tensor);
}

void StepInBackward::arm(double lr) {
  optimizer_.begin_step(lr);
  grad_norms_.assign(optimizer_.parameters().size(), at::Tensor());
  armed_ = true;
}

void StepInBackward::on_grad_ready(int64_t param_index) {
  const auto index = static_cast<size_t>(param_index);
  if (!armed_) return;  // e.g. a backward outside the training step: gradients stay, as without the hooks
  at::NoGradGuard no_grad;
  const NamedParameter& p = optimizer_.parameters()[index];
  grad_norms_[index] = at::linalg_vector_norm(p.tensor.grad(), 2);
  optimizer_.step_parameter(index);
  p.tensor.mutable_grad() = at::Tensor();  // the point of it all: this gradient's memory goes back now
}

at::Tensor StepInBackward::finish() {
  const bool was_armed = armed_;
  armed_ = false;
  std::vector<at::Tensor> norms;  // parameter order, as clip_grad_norm stacks them: the same value
  for (const at::Tensor& norm : grad_norms_) {
    if (norm.defined()) norms.push_back(norm);
  }
  grad_norms_.clear();
  if (!was_armed || norms.empty()) return at::zeros({}, at::kFloat);
  at::NoGradGuard no_grad;
  return at::linalg_vector_norm(at::stack(norms), 2).to(at::kFloat);
}

std::unique_ptr<StepInBackward> set_up_step_in_backward(AdamW& optimizer, bool enabled) {
  return enabled ? std::make_unique<StepInBackward>(optimizer) : nullptr;
}

}  // namespace sft
