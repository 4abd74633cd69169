// tests/test_cuda_plugin.cpp: the CUDA plugin (kernels/cuda_plugin.h): a process without a usable GPU maps
// none of LibTorch's CUDA libraries; the plugin itself loads and answers where asked to (SFT_CUDA_PLUGIN=load,
// no GPU needed); SFT_CUDA_PLUGIN's values; train.device: cuda names why there is no CUDA.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/errors.h"
#include "kernels/cuda_plugin.h"
#include "tests/test_util.h"
#include "trainer/config.h"
#include "trainer/setup.h"

namespace sft {
namespace {

// The CUDA libraries libtorch_cuda brings in (its NEEDED list), by file name.
const std::vector<std::string> kCudaLibraries = {"libtorch_cuda.so", "libc10_cuda.so", "libcublas", "libcudnn",
                                                  "libnccl", "libcufft", "libcusparse", "libnvJitLink"};

std::vector<std::string> mapped_cuda_libraries(const std::string& maps) {
  std::vector<std::string> found;
  for (const std::string& name : kCudaLibraries) {
    if (maps.find(name) != std::string::npos) found.push_back(name);
  }
  return found;
}

TEST(CudaPlugin, AProcessWithoutThePluginMapsNoCudaLibrary) {
  const std::vector<std::string> mapped = mapped_cuda_libraries(test::read_text("/proc/self/maps"));
  if (kernels::load_cuda_plugin().plugin) {
    // A GPU machine (the bundle): the plugin brought LibTorch's CUDA library with it.
    EXPECT_FALSE(mapped.empty()) << "the plugin is loaded but libtorch_cuda is not mapped";
  } else {
    EXPECT_TRUE(mapped.empty()) << "not loaded (" << kernels::load_cuda_plugin().status << "), yet mapped: "
                                << mapped.front();
    EXPECT_FALSE(kernels::cuda_device_available());
    EXPECT_NE(kernels::cuda_unavailable_reason().find("the CUDA plugin is not loaded: "), std::string::npos)
        << kernels::cuda_unavailable_reason();
  }
}

TEST(CudaPlugin, LoadsAndAnswersWithoutAGpuWhenAskedTo) {
  const test::RunResult r = test::run_command("SFT_CUDA_PLUGIN=load '" + test::sft_binary().string() + "' --version");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  if (!kernels::cuda_plugin_built()) {
    EXPECT_NE(r.output.find("CUDA: plugin not loaded: this sft was built without CUDA"), std::string::npos) << r.output;
    return;
  }
  const std::string plugin = (test::sft_binary().parent_path() / kernels::kCudaPluginFile).string();
  EXPECT_NE(r.output.find("CUDA: plugin loaded from " + plugin + ", our kernels for sm_80, sm_90; LibTorch CUDA 13."),
            std::string::npos)
      << r.output;
  // NCCL came with it (libtorch_cuda needs libnccl), and the device list is answered, GPU or not.
  EXPECT_EQ(r.output.find("NCCL: not loaded"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("GPU: "), std::string::npos) << r.output;
}

TEST(CudaPlugin, OffIsObeyedAndABadValueExitsTwoNamingTheVariable) {
  const std::string sft = "'" + test::sft_binary().string() + "'";
  const test::RunResult off = test::run_command("SFT_CUDA_PLUGIN=off " + sft + " --version");
  ASSERT_EQ(off.exit_code, 0) << off.output;
  const std::string expected = kernels::cuda_plugin_built() ? "CUDA: plugin not loaded: SFT_CUDA_PLUGIN=off;"
                                                            : "CUDA: plugin not loaded: this sft was built without CUDA";
  EXPECT_NE(off.output.find(expected), std::string::npos) << off.output;
  EXPECT_NE(off.output.find("GPU: none visible"), std::string::npos) << off.output;

  const test::RunResult bad = test::run_command("SFT_CUDA_PLUGIN=maybe " + sft + " --version");
  EXPECT_EQ(bad.exit_code, kernels::cuda_plugin_built() ? 2 : 0) << bad.output;
  if (kernels::cuda_plugin_built()) {
    EXPECT_NE(bad.output.find("error: SFT_CUDA_PLUGIN=maybe is not one of auto, load, off"), std::string::npos)
        << bad.output;
  }
}

TEST(CudaPlugin, CudaRequestedWithoutADeviceNamesTheKeyAndThePluginState) {
  Config config;
  config.train.device = DeviceChoice::kCuda;
  if (kernels::cuda_device_available()) {
    EXPECT_TRUE(resolve_runtime(config).device.is_cuda());
    return;
  }
  try {
    resolve_runtime(config);
    FAIL() << "train.device: cuda resolved without a CUDA device";
  } catch (const InputError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("train.device: cuda was requested but no CUDA device is available (the CUDA plugin is "),
              std::string::npos)
        << what;
  }
}

}  // namespace
}  // namespace sft
