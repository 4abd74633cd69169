// model/lora_init.h: the adapter initialisations of PEFT's init_lora_weights besides the default
// (Kaiming-uniform A, zero B, done by LoraProjectionImpl): gaussian, PiSSA and OLoRA. PiSSA and OLoRA move
// the top-r part of W into the adapter and leave the residual as the (frozen) base weight.
#pragma once
#include <string>

#include "model/lora.h"

namespace sft::model {

// Re-initialises one adapter (module `path`, for messages) as PEFT's LoraLayer does for `init`:
//   "default":  nothing (the constructor's Kaiming-uniform A, B = 0);
//   "gaussian": A ~ N(0, (1/r)^2), B = 0 (reset_lora_parameters);
//   "pissa":    W = V S U^T (exact SVD); A = sqrt(S_r/scale) U_r^T, B = V_r sqrt(S_r/scale), W -= scale B A;
//   "olora":    W = Q R; B = Q[:, :r], A = R[:r], W -= scale B A.
// The SVD/QR run in fp32 and the residual is cast back to W's dtype, as PEFT does. For pissa and olora the
// initial A and B are kept (initial_A/initial_B) for the conversion to an adapter on the original base.
// Throws InputError (naming finetune.lora.r and the module) when r > min(out, in) for pissa/olora.
void init_lora_weights(LoraProjectionImpl& lora, LoraInit init, const std::string& path);

// True for inits that change the base weight (the saved adapter then needs PEFT's conversion).
bool init_mutates_base(LoraInit init);

}  // namespace sft::model
