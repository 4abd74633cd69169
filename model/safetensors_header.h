// model/safetensors_header.h: torch-free parsing and validation of a safetensors header, so the parser
// can be fuzzed on its own. model/safetensors.h builds the mmap reader and the writer on top of it.
//
// File layout (huggingface/safetensors): 8-byte little-endian header length N, then N bytes of JSON
// {"__metadata__": {str: str}, "<tensor>": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...}
// (padded with spaces), then the data section whose byte ranges the tensors tile exactly.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace sft::model {

enum class StDType { F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL };

// Same cap as the reference implementation (MAX_HEADER_SIZE).
constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

// "F32", "BF16", ... as spelled in the file.
const char* st_dtype_name(StDType dtype);
// Bytes per element.
size_t st_dtype_size(StDType dtype);
// Inverse of st_dtype_name; nullopt for a name we do not know or do not support.
std::optional<StDType> st_dtype_from_name(const std::string& name);

struct StTensorInfo {
  std::string name;
  StDType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the start of the data section
  uint64_t end = 0;
};

struct StHeader {
  std::vector<StTensorInfo> tensors;  // sorted by begin offset
  std::map<std::string, std::string> metadata;
  uint64_t data_offset = 0;           // 8 + header length
};

// Parses and validates a safetensors header from the first bytes of a file of `file_size` bytes.
// `label` names the file in error messages. Checks: header length cap (100 MB) and bounds, JSON
// validity (an object, no duplicate keys), known dtypes, shape*itemsize overflow, offsets
// contiguous/in order/no holes/no trailing bytes. Throws sft::InputError.
// `available` must cover the 8-byte length and the header itself whenever the file does (passing the
// whole file, available == file_size, always does); otherwise std::invalid_argument (a caller bug).
// Torch-free so it can be fuzzed.
StHeader parse_safetensors_header(const uint8_t* data, size_t available, uint64_t file_size,
                                  const std::string& label);

}  // namespace sft::model
