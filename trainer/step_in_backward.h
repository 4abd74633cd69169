// trainer/step_in_backward.h: the optimizer step fused into the backward pass (train.optimizer_in_backward),
// torchtune's optimizer_in_bwd and PyTorch's "fuse the optimizer step into backward" recipe, in our code.
//
// Why: in full fine-tuning every parameter's gradient is alive at once between backward and step, one
// more copy of the weights (513 MiB for SmolLM2-135M in fp32). Here a post-accumulate-grad hook on each
// trainable parameter runs its AdamW update as soon as AccumulateGrad has its complete gradient for the
// step (a tied weight, used twice, fires once, after both uses), then frees the gradient: at most the
// gradients of the parameters still in flight exist together.
//
// The update is AdamW's own per-parameter form (AdamW::step_parameter), so weights and moments equal a
// normal run's exactly. What it gives up, checked by the config: gradient clipping (it needs every
// gradient before any update) and accumulation (grad_accum > 1 would update after each micro-batch).
// Parameters are updated while the backward still runs, which is safe because a trainable parameter's
// last use in the graph is the node that produces its gradient (it has run when the hook fires).
#pragma once
#include <ATen/ATen.h>

#include <memory>
#include <vector>

#include "trainer/optimizer.h"

namespace sft {

class StepInBackward {
 public:
  // Hooks every parameter of `optimizer` (which must outlive this object).
  explicit StepInBackward(AdamW& optimizer);
  ~StepInBackward();  // removes the hooks
  StepInBackward(const StepInBackward&) = delete;
  StepInBackward& operator=(const StepInBackward&) = delete;

  // The next backward is an optimizer step at `lr`: each parameter is updated as its gradient completes.
  void arm(double lr);
  // Ends the step (disarms). Returns the global L2 norm of the gradients the hooks saw, as a 0-dim fp32
  // tensor (clip_grad_norm's value, for the logs; no host sync here), or 0 when not armed.
  at::Tensor finish();

  // Called by the hooks (public for them; not part of the trainer's interface).
  void on_grad_ready(int64_t param_index);

 private:
  AdamW& optimizer_;
  std::vector<at::Tensor> grad_norms_;  // this step's, per parameter index, 0-dim (undefined: no gradient)
  bool armed_ = false;
};

// The named set-up step before the loop: hooks when train.optimizer_in_backward, else nothing.
std::unique_ptr<StepInBackward> set_up_step_in_backward(AdamW& optimizer, bool enabled);

}  // namespace sft
