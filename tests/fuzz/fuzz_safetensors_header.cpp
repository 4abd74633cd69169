// tests/fuzz/fuzz_safetensors_header.cpp: libFuzzer target for parse_safetensors_header. The input is a
// whole "file"; any exception other than sft::InputError, any crash and any sanitizer report is a bug.
// Built and run by scripts/fuzz_safetensors.sh (torch-free: only model/safetensors_header.cpp).
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "common/errors.h"
#include "model/safetensors_header.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    sft::model::StHeader header = sft::model::parse_safetensors_header(data, size, size, "fuzz.safetensors");
    // Invariants of an accepted header: the tensors tile the data section in order, byte sizes match.
    uint64_t cursor = 0;
    for (const sft::model::StTensorInfo& info : header.tensors) {
      uint64_t numel = 1;
      for (int64_t dim : info.shape) numel *= static_cast<uint64_t>(dim);
      if (info.begin != cursor || info.end < info.begin ||
          info.end - info.begin != numel * sft::model::st_dtype_size(info.dtype)) {
        std::abort();
      }
      cursor = info.end;
    }
    if (header.data_offset + cursor != size) std::abort();
  } catch (const sft::InputError&) {
    // rejected input: the expected outcome for almost all fuzz inputs
  }
  return 0;
}
