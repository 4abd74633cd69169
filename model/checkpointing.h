// model/checkpointing.h: gradient checkpointing of one decoder layer (model.gradient_checkpointing):
// the layer runs without storing its activations, and backward recomputes it, replaying the forward's
// RNG state (LoRA dropout) and autocast state (mixed precision), then back-propagates through the
// recomputation. CausalLM::forward calls it per layer when checkpointing is on.
#pragma once
#include <ATen/ATen.h>

#include <memory>

#include "kernels/ops.h"

namespace sft::model {

class DecoderLayerImpl;

// layer->forward(x, cos, sin, seqs, impl) without saved activations; differentiable w.r.t. x and the
// layer's parameters. x: [T, hidden] -> [T, hidden].
// Ownership: the autograd node keeps a shared_ptr to the layer (the same one the CausalLM's ModuleList
// holds), so the layer outlives every graph that will recompute it, even if the model is dropped before
// backward runs. No raw pointer crosses the autograd boundary.
at::Tensor checkpointed_layer_forward(const std::shared_ptr<DecoderLayerImpl>& layer, const at::Tensor& x,
                                      const at::Tensor& cos, const at::Tensor& sin,
                                      const kernels::PackedSequences& seqs, kernels::AttentionImpl impl);

}  // namespace sft::model
