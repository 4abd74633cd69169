// trainer/optimizer.h: AdamW with decoupled weight decay (torch.optim.AdamW's update: LibTorch's fused
// kernel for fp32 tensors, the single-tensor form step for step otherwise) and global-norm gradient clipping (torch.nn.utils.clip_grad_norm_). Parameters are
// named so the state can be saved as plain tensors (safetensors) and matched on load. Each parameter has an
// lr multiplier (LoRA+ groups: the schedule's lr times the group's ratio, as torch's LambdaLR scales each
// param group's initial lr).
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace sft {

struct NamedParameter {
  std::string name;
  at::Tensor tensor;
  bool decay = true;      // false for norms and biases
  double lr_scale = 1.0;  // this parameter's lr = the step's lr * lr_scale (LoRA+: ratio for B and magnitudes)
};

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
};

class AdamW {
 public:
  AdamW(std::vector<NamedParameter> params, const AdamWOptions& options);

  // One update with learning rate `lr` * lr_scale from each parameter's .grad().
  void step(double lr);
  // The same update one parameter at a time (train.optimizer_in_backward, trainer/step_in_backward.h):
  // begin_step(lr) counts the step, then step_parameter(i) updates parameter i from its .grad() (nothing
  // if it has none). Every element gets exactly the arithmetic step() gives it.
  void begin_step(double lr);
  void step_parameter(size_t index);
  void zero_grad();  // sets grads to undefined (memory is released, as set_to_none=True)
  int64_t steps_taken() const { return step_; }
  const std::vector<NamedParameter>& parameters() const { return params_; }

  // State as named tensors: "<param>.exp_avg", "<param>.exp_avg_sq", plus "step" (int64 scalar tensor).
  std::vector<std::pair<std::string, at::Tensor>> state_tensors() const;
  // Restores from state_tensors(); throws sft::InputError naming a missing or wrong-shaped entry.
  void load_state(const std::vector<std::pair<std::string, at::Tensor>>& tensors, const std::string& label);

 private:
  std::vector<NamedParameter> params_;
  std::vector<at::Tensor> exp_avg_, exp_avg_sq_;  // fp32-or-param-dtype moments, like torch
  AdamWOptions options_;
  int64_t step_ = 0;
  double lr_ = 0;           // the current step's lr (begin_step)
  at::Tensor step_count_;   // fp32 scalar on the parameters' device: _fused_adamw_ reads the step from it
  void update_unfused(size_t index, const at::Tensor& grad);
};

// Scales gradients so their global L2 norm is at most max_norm (if max_norm > 0). Returns the norm
// before clipping as a 0-dim fp32 tensor on the parameters' device (no host sync here).
at::Tensor clip_grad_norm(const std::vector<NamedParameter>& params, double max_norm);

// Splits trainable parameters: weight decay never applies to norms and biases (1-D tensors); DoRA magnitudes
// (1-D, but neither) decay, as in HF Trainer's and PEFT's LoRA+ groups. With lora_plus_ratio (LoRA+, PEFT's
// create_loraplus_optimizer): lora_B and lora_magnitude_vector parameters get lr_scale = ratio. (PEFT's
// embedding group, lr 1e-6, never occurs: adapters sit on block projections only.)
std::vector<NamedParameter> trainable_parameters(const std::vector<std::pair<std::string, at::Tensor>>& named,
                                                 std::optional<double> lora_plus_ratio = std::nullopt);

}  // namespace sft
