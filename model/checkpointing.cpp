// model/checkpointing.cpp: the autograd Function of checkpointed_layer_forward (model/checkpointing.h).
#include "model/checkpointing.h"

#include <torch/autograd.h>
#include <ATen/core/ivalue.h>

#include <optional>

#include "common/autocast.h"
#include "model/llama.h"

namespace sft::model {
namespace {

// The layer travels through saved_data as a capsule (an IValue can hold any CustomClassHolder): the
// node owns a shared_ptr to it, so recomputing in backward never reads a dangling layer.
struct LayerHandle : torch::CustomClassHolder {
  explicit LayerHandle(std::shared_ptr<DecoderLayerImpl> layer_) : layer(std::move(layer_)) {}
  std::shared_ptr<DecoderLayerImpl> layer;
};

struct LayerRecompute : public torch::autograd::Function<LayerRecompute> {
  // x: [T, hidden]. Non-tensor arguments (the layer, max_seqlen, the attention choice) are not inputs
  // of the graph; they go to saved_data.
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, at::Tensor x, at::Tensor cos, at::Tensor sin,
                            at::Tensor cu_seqlens, at::Tensor cu_seqlens_host, int64_t max_seqlen,
                            const std::shared_ptr<DecoderLayerImpl>& layer, kernels::AttentionImpl impl) {
    ctx->save_for_backward({x, cos, sin, cu_seqlens, cu_seqlens_host});
    ctx->saved_data["max_seqlen"] = max_seqlen;
    ctx->saved_data["layer"] = at::IValue::make_capsule(c10::make_intrusive<LayerHandle>(layer));
    ctx->saved_data["impl"] = static_cast<int64_t>(impl);
    // What the recompute must replay: the generator of x's device (LoRA dropout draws from it) and the
    // autocast state (mixed precision) the forward ran under.
    ctx->saved_data["rng"] = at::globalContext().defaultGenerator(x.device()).get_state();
    const std::optional<at::ScalarType> autocast = ScopedAutocast::current(x.device().type());
    ctx->saved_data["autocast_dtype"] = autocast ? static_cast<int64_t>(*autocast) : int64_t{-1};
    kernels::PackedSequences seqs{cu_seqlens, cu_seqlens_host, max_seqlen};
    return layer->forward(x, cos, sin, seqs, impl);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    const auto handle = c10::static_intrusive_pointer_cast<LayerHandle>(ctx->saved_data["layer"].toCapsule());
    kernels::PackedSequences seqs{saved[3], saved[4], ctx->saved_data["max_seqlen"].toInt()};
    auto impl = static_cast<kernels::AttentionImpl>(ctx->saved_data["impl"].toInt());
    at::Generator generator = at::globalContext().defaultGenerator(saved[0].device());
    at::Tensor rng_now = generator.get_state();
    generator.set_state(ctx->saved_data["rng"].toTensor());
    const int64_t code = ctx->saved_data["autocast_dtype"].toInt();
    std::optional<at::ScalarType> autocast_dtype;
    if (code >= 0) autocast_dtype = static_cast<at::ScalarType>(code);
    at::Tensor x = saved[0].detach().requires_grad_(true);
    {
      torch::AutoGradMode enable_grad(true);
      at::Tensor out;
      {  // the forward under the forward's autocast state; the backward outside it, as in training
        const ScopedAutocast autocast(x.device().type(), autocast_dtype);
        out = handle->layer->forward(x, saved[1], saved[2], seqs, impl);
      }
      torch::autograd::backward({out}, {grad_outputs[0]});
    }
    generator.set_state(rng_now);
    return {x.grad(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor checkpointed_layer_forward(const std::shared_ptr<DecoderLayerImpl>& layer, const at::Tensor& x,
                                      const at::Tensor& cos, const at::Tensor& sin,
                                      const kernels::PackedSequences& seqs, kernels::AttentionImpl impl) {
  return LayerRecompute::apply(x, cos, sin, seqs.cu_seqlens, seqs.cu_seqlens_host, seqs.max_seqlen, layer, impl);
}

}  // namespace sft::model
