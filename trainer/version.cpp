// trainer/version.cpp: the `sft --version` report. Everything is asked of the running process (LibTorch's
// hooks, the loaded NCCL), not of the build machine, so an installed binary reports what it will use.
#include "trainer/version.h"

#include "kernels/cuda_plugin.h"
#include "trainer/process_defaults.h"

#include <ATen/Context.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <dlfcn.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include <sstream>

namespace sft {
namespace {

// "13.0" from 13000 (CUDA's major * 1000 + minor * 10).
std::string cuda_version_text(long version) {
  return std::to_string(version / 1000) + "." + std::to_string((version % 1000) / 10);
}

// NCCL comes with LibTorch's CUDA library (the nvidia-nccl wheel); ask the loaded library itself, so
// no NCCL header is needed and a CPU-only LibTorch simply has none.
std::string nccl_version_text() {
  using GetVersion = int (*)(int*);
  auto get_version = reinterpret_cast<GetVersion>(dlsym(RTLD_DEFAULT, "ncclGetVersion"));
  int code = 0;
  if (!get_version || get_version(&code) != 0 || code <= 0) return "not loaded";
  // NCCL >= 2.9 encodes major * 10000 + minor * 100 + patch.
  return std::to_string(code / 10000) + "." + std::to_string((code / 100) % 100) + "." + std::to_string(code % 100);
}

// "CUDA 13.0" when LibTorch's CUDA library is loaded (by the CUDA plugin), else "CUDA library not loaded".
std::string libtorch_cuda_text() {
  try {
    const long version = at::detail::getCUDAHooks().versionCUDART();  // throws without ATen_cuda
    return "CUDA " + cuda_version_text(version);
  } catch (const c10::Error&) {
    return "CUDA library not loaded";
  }
}

std::string gpu_text() {
  const kernels::CudaPlugin* cuda = kernels::load_cuda_plugin().plugin;
  const size_t count = cuda ? torch::cuda::device_count() : 0;
  if (count == 0) return "none visible";
  std::string text = std::to_string(count) + " visible";
  for (size_t i = 0; i < count; ++i) text += (i ? ", " : " (") + cuda->device_description(static_cast<int>(i));
  return text + ")";
}

}  // namespace

std::string version_report() {
  std::ostringstream out;
  out << "sft " << SFT_VERSION << "\n";
  out << "LibTorch " << TORCH_VERSION << "\n";
  const kernels::CudaPluginState& plugin = kernels::load_cuda_plugin();  // before LibTorch's CUDA hooks are asked
  const std::string torch_cuda = libtorch_cuda_text();
  if (plugin.plugin) {
    out << "CUDA: plugin " << plugin.status << ", our kernels for " << plugin.plugin->architectures()
        << "; LibTorch " << torch_cuda << "\n";
  } else {
    out << "CUDA: plugin " << plugin.status << "; LibTorch " << torch_cuda << "\n";
  }
  out << "GPU: " << gpu_text() << "\n";
  out << "NCCL: " << nccl_version_text() << "\n";
  out << process_defaults_report();
  return out.str();
}

}  // namespace sft
