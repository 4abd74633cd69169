// kernels/cuda_plugin.h: the CUDA half of sft as a plugin, and its loader.
//
// libsft_cuda.so holds our device code with its torch-free launchers, and the few services that need
// LibTorch's CUDA library (the current stream, device properties, the CUDA generator's Philox state, NCCL
// process groups). `sft` and the test binaries link only LibTorch's CPU library and load the plugin with
// dlopen at start-up when a GPU can be there, so a CPU run never maps libtorch_cuda, cuBLAS, cuDNN, NCCL...
// (229 MiB of resident memory per process, measured in README "QLoRA"). LibTorch's CUDA hooks register
// themselves when the plugin's libtorch_cuda loads, which must happen before anything asks for them
// (LibTorch caches the first answer): main() calls load_cuda_plugin() first.
//
// SFT_CUDA_PLUGIN (environment): auto (default) loads it when an NVIDIA driver is present
// (/proc/driver/nvidia/version or /dev/nvidiactl) and CUDA_VISIBLE_DEVICES does not hide every device;
// load always tries (a machine without a driver then sees 0 devices); off never loads it.
#pragma once

#include <ATen/core/Generator.h>
#include <c10/core/ScalarType.h>
#include <c10/util/intrusive_ptr.h>

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/attention_params.h"
#include "kernels/dropout_linear_params.h"
#include "kernels/fused_ops_params.h"
#include "kernels/nf4_params.h"

namespace c10d {
class Backend;
class Store;
}  // namespace c10d

namespace sft::kernels {

// Bumped whenever CudaPlugin changes; the loader refuses a plugin built for another version.
constexpr int kCudaPluginAbi = 1;

// The plugin's table, returned by its one exported symbol (kCudaPluginEntry). Launchers return
// cudaGetLastError() of their launches (0 = success); the attention launchers return false for an
// unsupported configuration. Both sides are built from one source tree with one compiler, so C++ types
// (std::string, at::Generator, intrusive_ptr) cross the boundary.
struct CudaPlugin {
  int abi = kCudaPluginAbi;
  std::string (*architectures)() = nullptr;  // "sm_80, sm_90": what its device code was compiled for

  // ---- launchers (kernels/*.cu) ----
  int (*rmsnorm_forward)(const RmsNormFwdParams&, cudaStream_t) = nullptr;
  int (*rmsnorm_backward)(const RmsNormBwdParams&, cudaStream_t) = nullptr;
  int (*swiglu_forward)(const SwigluFwdParams&, cudaStream_t) = nullptr;
  int (*swiglu_backward)(const SwigluBwdParams&, cudaStream_t) = nullptr;
  int (*rope)(const RopeParams&, cudaStream_t) = nullptr;
  int (*ce_chunk_stats)(const CeChunkStatsParams&, cudaStream_t) = nullptr;
  int (*ce_chunk_grad)(const CeChunkGradParams&, cudaStream_t) = nullptr;
  int (*dropout_mask)(const DropoutMaskParams&, cudaStream_t) = nullptr;
  int (*nf4_dequantize)(const Nf4DequantParams&, cudaStream_t) = nullptr;
  bool (*attention_fwd)(const AttentionFwdParams&, cudaStream_t) = nullptr;
  bool (*attention_bwd_preprocess)(const AttentionBwdParams&, cudaStream_t) = nullptr;
  bool (*attention_bwd_dkdv)(const AttentionBwdParams&, cudaStream_t) = nullptr;
  bool (*attention_bwd_dq)(const AttentionBwdParams&, cudaStream_t) = nullptr;

  // ---- services of LibTorch's CUDA library ----
  cudaStream_t (*current_stream)() = nullptr;  // the current device's current stream
  int (*last_error)() = nullptr;               // cudaGetLastError(): clears and returns the sticky error
  const char* (*error_name)(int code) = nullptr;
  // Reserves `increment` 32-bit draws of a CUDA generator: its (seed, offset) Philox inputs.
  void (*philox_inputs)(const at::Generator& generator, uint64_t increment, uint64_t& seed, uint64_t& offset) = nullptr;
  std::string (*device_description)(int index) = nullptr;  // "NVIDIA H200 sm_90"
  void (*set_device)(int index) = nullptr;
  // A ProcessGroupNCCL over `store` for (rank, world_size) on the current device.
  c10::intrusive_ptr<c10d::Backend> (*make_nccl_backend)(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                                         int world_size, std::chrono::milliseconds timeout) = nullptr;
};

// The plugin's exported C symbol: `const CudaPlugin* sft_cuda_plugin_v1()`.
inline constexpr const char* kCudaPluginEntry = "sft_cuda_plugin_v1";
inline constexpr const char* kCudaPluginFile = "libsft_cuda.so";

// What the loader did, once per process.
struct CudaPluginState {
  const CudaPlugin* plugin = nullptr;  // null unless loaded
  std::string path;                    // the file it was loaded from (or looked for)
  std::string status;                  // "loaded from PATH" or "not loaded: WHY"
};

// Decides by SFT_CUDA_PLUGIN and the machine, and loads the plugin (dlopen, RTLD_GLOBAL) beside the
// executable (DIR/libsft_cuda.so, else DIR/../lib/libsft_cuda.so). The first call decides; later calls
// return the same state, like the dynamic loader's own. An invalid SFT_CUDA_PLUGIN value throws InputError.
const CudaPluginState& load_cuda_plugin();

// The loaded plugin, or InputError naming `what` and why there is none.
const CudaPlugin& cuda_plugin(const std::string& what);

// The params structs' dtype code (also read by the NF4 CPU twin); c10::Error naming `what` unless float,
// bfloat16 or float16.
OpDtype cuda_op_dtype(at::ScalarType dtype, const char* what);

// Runs one launcher of the plugin on the current stream, e.g. launch_cuda(&CudaPlugin::rope, params,
// "rope"); throws naming `what` when there is no plugin or the launch failed.
template <typename Params>
void launch_cuda(int (*CudaPlugin::*launcher)(const Params&, cudaStream_t), const Params& params, const char* what) {
  const CudaPlugin& cuda = cuda_plugin(what);
  const int code = (cuda.*launcher)(params, cuda.current_stream());
  if (code != 0) throw std::runtime_error(std::string(what) + ": CUDA launch failed: " + cuda.error_name(code));
}

// True when the plugin is loaded and LibTorch sees at least one CUDA device.
bool cuda_device_available();

// "" when cuda_device_available(), else why not ("the CUDA plugin is not loaded: ...", "no CUDA device is
// visible"): the skip reason of the GPU-only tests.
std::string cuda_unavailable_reason();

// Whether this build made the plugin (nvcc was found at configure time).
bool cuda_plugin_built();

}  // namespace sft::kernels
