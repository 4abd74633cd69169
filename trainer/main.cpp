// trainer/main.cpp: the `sft` entry point. The only place errors become exit codes:
// sft::InputError -> 2 (bad usage, config or input), any other exception -> 1.
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "common/errors.h"
#include "kernels/cuda_plugin.h"
#include "trainer/commands.h"
#include "trainer/process_defaults.h"

int main(int argc, char** argv) {
  sft::apply_process_defaults(argv);  // first: may re-execute the binary once (OpenMP wait policy)
  std::vector<std::string> args(argv + 1, argv + argc);
  try {
    sft::kernels::load_cuda_plugin();  // before anything asks LibTorch about CUDA (kernels/cuda_plugin.h)
    return sft::run_sft(args);
  } catch (const sft::InputError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "internal error: " << e.what() << "\n";
    return 1;
  }
}
