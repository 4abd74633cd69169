// model/lora_init.cpp: gaussian, PiSSA and OLoRA adapter initialisation (PEFT's LoraLayer.reset_lora_parameters,
// pissa_init, olora_init).
#include "model/lora_init.h"

#include <torch/torch.h>

#include "common/errors.h"

namespace sft::model {

bool init_mutates_base(LoraInit init) { return init == LoraInit::kPissa || init == LoraInit::kOlora; }

void init_lora_weights(LoraProjectionImpl& lora, LoraInit init, const std::string& path) {
  torch::NoGradGuard no_grad;
  const int64_t rank = lora.lora_A->weight.size(0);
  if (init == LoraInit::kDefault) return;
  if (init == LoraInit::kGaussian) {
    lora.lora_A->weight.normal_(0.0, 1.0 / static_cast<double>(rank));
    lora.lora_B->weight.zero_();
    return;
  }
  const int64_t out = lora.out_features(), in = lora.in_features();
  if (rank > std::min(out, in)) {
    throw InputError("finetune.lora.r " + std::to_string(rank) + " is larger than the smaller dimension of " + path +
                     " (weight [" + std::to_string(out) + ", " + std::to_string(in) + "]); finetune.lora.init " + enum_name(init) +
                     " needs r <= " + std::to_string(std::min(out, in)));
  }
  const at::Tensor weight = lora.weight.to(at::kFloat);  // [out, in]
  at::Tensor a, b;                                       // [r, in], [out, r]
  if (init == LoraInit::kPissa) {
    auto [u, s, vh] = at::linalg_svd(weight, /*full_matrices=*/false);  // PEFT names them V, S, Uh
    const at::Tensor sqrt_s = (s.slice(0, 0, rank) / lora.scale).sqrt();
    a = at::matmul(at::diag(sqrt_s), vh.slice(0, 0, rank));
    b = at::matmul(u.slice(1, 0, rank), at::diag(sqrt_s));
  } else {
    auto [q, r] = at::linalg_qr(weight);  // reduced: q [out, k], r [k, in]
    b = q.slice(1, 0, rank).contiguous();
    a = r.slice(0, 0, rank).contiguous();
  }
  const at::Tensor residual = weight - lora.scale * at::matmul(b, a);
  lora.weight.copy_(residual.to(lora.weight.scalar_type()));
  lora.lora_A->weight.set_data(a.to(lora.lora_A->weight.device()));
  lora.lora_B->weight.set_data(b.to(lora.lora_B->weight.device()));
  lora.initial_A = a.clone();
  lora.initial_B = b.clone();
}

}  // namespace sft::model
