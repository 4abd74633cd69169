// model/choices.h: the model choices a config names (model.dtype, finetune.lora.init), torch-free so
// trainer/config.h can hold them as types; their names are listed once here (common/enum_names.h).
#pragma once
#include <array>
#include <utility>

#include "common/enum_names.h"

namespace sft::model {

// model.dtype: auto (the trainer resolves it per device) or a dtype the weights load in
// (model/weights.h: scalar_type_of, parse_dtype).
enum class DtypeChoice { kAuto, kFloat32, kBFloat16, kFloat16 };

// finetune.lora.init: PEFT init_lora_weights (model/lora_init.h).
enum class LoraInit { kDefault, kGaussian, kPissa, kOlora };

}  // namespace sft::model

namespace sft {
template <>
struct EnumNames<model::DtypeChoice> {
  static constexpr std::array<std::pair<model::DtypeChoice, const char*>, 4> entries{{
      {model::DtypeChoice::kAuto, "auto"},
      {model::DtypeChoice::kFloat32, "float32"},
      {model::DtypeChoice::kBFloat16, "bfloat16"},
      {model::DtypeChoice::kFloat16, "float16"},
  }};
};
template <>
struct EnumNames<model::LoraInit> {
  static constexpr std::array<std::pair<model::LoraInit, const char*>, 4> entries{{
      {model::LoraInit::kDefault, "default"},
      {model::LoraInit::kGaussian, "gaussian"},
      {model::LoraInit::kPissa, "pissa"},
      {model::LoraInit::kOlora, "olora"},
  }};
};
}  // namespace sft
