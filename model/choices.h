// model/choices.h: the model choice a config names (model.dtype), torch-free so trainer/config.h can hold
// it as a type; its names are listed once here (common/enum_names.h).
#pragma once
#include <array>
#include <utility>

#include "common/enum_names.h"

namespace sft::model {

// model.dtype: auto (the trainer resolves it per device) or a dtype the weights load in
// (model/weights.h: scalar_type_of, parse_dtype).
enum class DtypeChoice { kAuto, kFloat32, kBFloat16, kFloat16 };

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
}  // namespace sft
