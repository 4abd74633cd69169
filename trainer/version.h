// trainer/version.h: `sft --version`: our version, LibTorch's, what CUDA support is compiled in (and for
// which architectures), which GPUs are visible, and the NCCL that LibTorch loaded.
#pragma once
#include <string>

namespace sft {

std::string version_report();

}  // namespace sft
