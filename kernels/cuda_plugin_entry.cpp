// kernels/cuda_plugin_entry.cpp: the one exported symbol of libsft_cuda.so (kernels/cuda_plugin.h): the
// table of our launchers plus the services that need LibTorch's CUDA library. Built only into the plugin.
#include "kernels/cuda_plugin.h"

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime_api.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <sstream>

namespace sft::kernels {
namespace {

// "80,90" (CMake's SFT_CUDA_ARCHITECTURES, compiled in as SFT_CUDA_ARCH_LIST) -> "sm_80, sm_90".
std::string architectures() {
  std::string text, item;
  std::istringstream in(SFT_CUDA_ARCH_LIST);
  while (std::getline(in, item, ',')) text += (text.empty() ? "sm_" : ", sm_") + item;
  return text;
}

cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream().stream(); }

int last_error() { return static_cast<int>(cudaGetLastError()); }

const char* error_name(int code) { return cudaGetErrorName(static_cast<cudaError_t>(code)); }

void philox_inputs(const at::Generator& generator, uint64_t increment, uint64_t& seed, uint64_t& offset) {
  // The caller holds generator.mutex(), as ATen's own CUDA kernels do around philox_engine_inputs.
  std::tie(seed, offset) = at::check_generator<at::CUDAGeneratorImpl>(generator)->philox_engine_inputs(increment);
}

std::string device_description(int index) {
  const cudaDeviceProp* p = at::cuda::getDeviceProperties(static_cast<c10::DeviceIndex>(index));
  return std::string(p->name) + " sm_" + std::to_string(p->major) + std::to_string(p->minor);
}

void set_device(int index) { c10::cuda::set_device(static_cast<c10::DeviceIndex>(index)); }

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                                    int world_size, std::chrono::milliseconds timeout) {
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world_size, options);
}

CudaPlugin make_table() {
  CudaPlugin t;
  t.architectures = architectures;
  t.rmsnorm_forward = rmsnorm_forward_cuda;
  t.rmsnorm_backward = rmsnorm_backward_cuda;
  t.swiglu_forward = swiglu_forward_cuda;
  t.swiglu_backward = swiglu_backward_cuda;
  t.rope = rope_cuda;
  t.ce_chunk_stats = ce_chunk_stats_cuda;
  t.ce_chunk_grad = ce_chunk_grad_cuda;
  t.dropout_mask = dropout_mask_cuda;
  t.nf4_dequantize = nf4_dequantize_cuda;
  t.attention_fwd = launch_attention_fwd;
  t.attention_bwd_preprocess = launch_attention_bwd_preprocess;
  t.attention_bwd_dkdv = launch_attention_bwd_dkdv;
  t.attention_bwd_dq = launch_attention_bwd_dq;
  t.current_stream = current_stream;
  t.last_error = last_error;
  t.error_name = error_name;
  t.philox_inputs = philox_inputs;
  t.device_description = device_description;
  t.set_device = set_device;
  t.make_nccl_backend = make_nccl_backend;
  return t;
}

}  // namespace
}  // namespace sft::kernels

extern "C" __attribute__((visibility("default"))) const sft::kernels::CudaPlugin* sft_cuda_plugin_v1() {
  static const sft::kernels::CudaPlugin table = sft::kernels::make_table();
  return &table;
}
