// kernels/cuda_plugin_loader.cpp: the decision to load libsft_cuda.so, the dlopen, and the state every
// CUDA path asks for (kernels/cuda_plugin.h).
#include "kernels/cuda_plugin.h"

#include <dlfcn.h>
#include <torch/cuda.h>

#include <cstdlib>
#include <filesystem>
#include <system_error>

#include "common/errors.h"

namespace sft::kernels {
namespace {

enum class PluginMode { kAuto, kLoad, kOff };

PluginMode plugin_mode() {
  const char* value = std::getenv("SFT_CUDA_PLUGIN");
  const std::string text = value ? value : "";
  if (text.empty() || text == "auto") return PluginMode::kAuto;
  if (text == "load") return PluginMode::kLoad;
  if (text == "off") return PluginMode::kOff;
  throw InputError("SFT_CUDA_PLUGIN=" + text + " is not one of auto, load, off");
}

// Why auto skips the plugin, or "" when a GPU can be there.
std::string reason_to_skip() {
  std::error_code ec;
  if (!std::filesystem::exists("/proc/driver/nvidia/version", ec) && !std::filesystem::exists("/dev/nvidiactl", ec)) {
    return "no NVIDIA driver (/proc/driver/nvidia/version and /dev/nvidiactl are absent)";
  }
  // CUDA's own convention: an empty list, or one that starts with an invalid index, hides every device.
  if (const char* visible = std::getenv("CUDA_VISIBLE_DEVICES")) {
    const std::string v = visible;
    if (v.empty() || v[0] == '-') return "CUDA_VISIBLE_DEVICES=\"" + v + "\" hides every device";
  }
  return "";
}

std::filesystem::path executable_dir() {
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::filesystem::path(".") : exe.parent_path();
}

// DIR/libsft_cuda.so (the build tree, the GPU bundle), else DIR/../lib/libsft_cuda.so (an install).
std::filesystem::path plugin_path() {
  const std::filesystem::path dir = executable_dir();
  std::error_code ec;
  const std::filesystem::path beside = dir / kCudaPluginFile;
  if (std::filesystem::exists(beside, ec)) return beside;
  const std::filesystem::path installed = dir.parent_path() / "lib" / kCudaPluginFile;
  if (std::filesystem::exists(installed, ec)) return installed;
  return beside;
}

CudaPluginState decide_and_load() {
  CudaPluginState state;
  if (!cuda_plugin_built()) {
    state.status = "not loaded: this sft was built without CUDA (nvcc was not found at configure time)";
    return state;
  }
  const PluginMode mode = plugin_mode();
  if (mode == PluginMode::kOff) {
    state.status = "not loaded: SFT_CUDA_PLUGIN=off";
    return state;
  }
  if (mode == PluginMode::kAuto) {
    if (const std::string why = reason_to_skip(); !why.empty()) {
      state.status = "not loaded: " + why + "; SFT_CUDA_PLUGIN=load loads it anyway";
      return state;
    }
  }
  state.path = plugin_path().string();
  // RTLD_GLOBAL: libtorch_cuda's registrations (CUDA hooks, allocator, guards) and type identities are
  // then shared with the LibTorch the executable already has, as python's torch loads its CUDA part.
  void* handle = dlopen(state.path.c_str(), RTLD_NOW | RTLD_GLOBAL);
  if (!handle) {
    const char* error = dlerror();
    state.status = "not loaded: dlopen failed: " + std::string(error ? error : "unknown error");
    return state;
  }
  using Entry = const CudaPlugin* (*)();
  auto entry = reinterpret_cast<Entry>(dlsym(handle, kCudaPluginEntry));
  const CudaPlugin* plugin = entry ? entry() : nullptr;
  if (!plugin) {
    state.status = "not loaded: " + state.path + " has no " + kCudaPluginEntry;
    return state;
  }
  if (plugin->abi != kCudaPluginAbi) {
    state.status = "not loaded: " + state.path + " has interface version " + std::to_string(plugin->abi) +
                   ", this sft needs " + std::to_string(kCudaPluginAbi) + " (rebuild both together)";
    return state;
  }
  state.plugin = plugin;
  state.status = "loaded from " + state.path;
  return state;
}

}  // namespace

bool cuda_plugin_built() {
#ifdef SFT_CUDA_PLUGIN_BUILT
  return true;
#else
  return false;
#endif
}

const CudaPluginState& load_cuda_plugin() {
  // Process state, as the dynamic loader's is: the library is mapped once and LibTorch's CUDA hooks
  // are registered once, so the decision is made once (thread-safe static initialisation).
  static const CudaPluginState state = decide_and_load();
  return state;
}

const CudaPlugin& cuda_plugin(const std::string& what) {
  const CudaPluginState& state = load_cuda_plugin();
  if (!state.plugin) throw InputError(what + " needs CUDA, but the CUDA plugin is " + state.status);
  return *state.plugin;
}

OpDtype cuda_op_dtype(at::ScalarType dtype, const char* what) {
  switch (dtype) {
    case at::kFloat: return OpDtype::Float32;
    case at::kBFloat16: return OpDtype::BFloat16;
    case at::kHalf: return OpDtype::Float16;
    default: TORCH_CHECK(false, what, ": unsupported dtype ", dtype, " (float, bfloat16, float16)");
  }
}

bool cuda_device_available() { return load_cuda_plugin().plugin && torch::cuda::is_available(); }

std::string cuda_unavailable_reason() {
  const CudaPluginState& state = load_cuda_plugin();
  if (!state.plugin) return "the CUDA plugin is " + state.status;
  return torch::cuda::is_available() ? "" : "no CUDA device is visible (the CUDA plugin is " + state.status + ")";
}

}  // namespace sft::kernels
