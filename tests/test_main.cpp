// tests/test_main.cpp: the sft_tests entry point: GoogleTest's main, after the CUDA plugin decision
// (kernels/cuda_plugin.h), which must come before any test asks LibTorch about CUDA.
#include <gtest/gtest.h>

#include <iostream>

#include "kernels/cuda_plugin.h"

int main(int argc, char** argv) {
  try {
    sft::kernels::load_cuda_plugin();
  } catch (const std::exception& e) {
    std::cerr << "sft_tests: " << e.what() << "\n";
    return 2;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
