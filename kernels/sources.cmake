# kernels/: attention entry point (dispatch), fused attention binding + CPU twin, CUDA device code.
set(SFT_KERNEL_SOURCES
  kernels/attention_choice.cpp
  kernels/attention_dispatch.cpp
  kernels/sdpa_cpu.cpp
  kernels/fused_attention.cpp
  kernels/cpu/attention_cpu.cpp
)
# Attention of decoding steps over a key/value cache (kv_cache_attention in kernels/ops.h) + its fp64 reference.
list(APPEND SFT_KERNEL_SOURCES kernels/cached_attention.cpp)
# Fused RMSNorm / SwiGLU / rotary / linear cross-entropy: binding + CPU twins (kernels/fused_ops.h).
list(APPEND SFT_KERNEL_SOURCES kernels/fused_ops.cpp kernels/cpu/fused_ops_cpu.cpp)
# Fused projections: q/k/v and gate/up as one GEMM over adjacent weights (kernels/fused_projection.cpp).
list(APPEND SFT_KERNEL_SOURCES kernels/fused_projection.cpp)
# LoRA-adapted frozen projections of one input as one autograd node (kernels/lora_group.cpp).
list(APPEND SFT_KERNEL_SOURCES kernels/lora_group.cpp)
# NF4 (QLoRA) dequantisation + x W^T: binding + CPU twin (kernels/nf4.h).
list(APPEND SFT_KERNEL_SOURCES kernels/nf4.cpp kernels/cpu/nf4_cpu.cpp)
# Dropout fused into the linear that consumes it (Philox mask, never stored): binding + CPU twin (kernels/dropout_linear.h).
list(APPEND SFT_KERNEL_SOURCES kernels/dropout_linear.cpp kernels/cpu/dropout_linear_cpu.cpp)
# The CUDA plugin's loader (kernels/cuda_plugin.h); its entry, kernels/cuda_plugin_entry.cpp, and the
# sources below make libsft_cuda.so (CMakeLists.txt), not sftcore.
list(APPEND SFT_KERNEL_SOURCES kernels/cuda_plugin_loader.cpp)
# Device code + torch-free launchers (compiled only when nvcc is found, into the plugin, with SFT_WITH_CUDA).
set(SFT_KERNEL_CUDA_SOURCES
  kernels/attention_fwd.cu
  kernels/attention_bwd.cu
)
list(APPEND SFT_KERNEL_CUDA_SOURCES kernels/rmsnorm.cu kernels/swiglu.cu kernels/rope.cu kernels/linear_ce.cu)
list(APPEND SFT_KERNEL_CUDA_SOURCES kernels/nf4.cu)
list(APPEND SFT_KERNEL_CUDA_SOURCES kernels/dropout_linear.cu)
# CUDA build checks (ptxas spills / stack frames / shared memory, tensor-core SASS), for CTest:
#   if(SFT_CUDA)
#     add_test(NAME ${SFT_KERNEL_CUDA_BUILD_TEST_NAME} COMMAND ${SFT_KERNEL_CUDA_BUILD_TEST_COMMAND})
#   endif()
set(SFT_KERNEL_CUDA_BUILD_TEST_NAME cuda.build_report)
set(SFT_KERNEL_CUDA_BUILD_TEST_COMMAND
  ${SFT_PYTHON} ${CMAKE_SOURCE_DIR}/scripts/check_cuda_build.py --source-dir ${CMAKE_SOURCE_DIR}
  --build-dir ${CMAKE_BINARY_DIR} --arch 80 --arch 90)
# The CPU twin's tile loops are written to auto-vectorise; -O3 turns that on at every build type.
set_source_files_properties(kernels/cpu/attention_cpu.cpp PROPERTIES COMPILE_OPTIONS "-O3")
# The fused-op CPU twins: `omp simd` loops (vectorised without -ffast-math; sftcore builds with -fopenmp).
# -fno-trapping-math lets GCC vectorise the branch-free exp (clamps, float -> int) of SwiGLU's sigmoid; it
# changes no result (it allows no reassociation), only whether FP exceptions could be raised.
set_source_files_properties(kernels/cpu/fused_ops_cpu.cpp PROPERTIES COMPILE_OPTIONS "-O3;-fno-trapping-math")
# NF4 dequantisation: vectorised table lookups; no FMA contraction, so it rounds as bitsandbytes does.
set_source_files_properties(kernels/cpu/nf4_cpu.cpp PROPERTIES COMPILE_OPTIONS "-O3;-ffp-contract=off")
# The dropout mask pass: `omp simd` mask loops.
set_source_files_properties(kernels/cpu/dropout_linear_cpu.cpp PROPERTIES COMPILE_OPTIONS "-O3")
