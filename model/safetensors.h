// model/safetensors.h: our own safetensors reader (pread, fully validated header) and writer, plus
// opening a model directory's weights (single file or sharded through model.safetensors.index.json).
#pragma once
#include <ATen/ATen.h>

#include "model/safetensors_header.h"

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace sft::model {

// StDType <-> at::ScalarType. to_st_dtype throws std::invalid_argument for a dtype the format lacks.
at::ScalarType to_scalar_type(StDType dtype);
StDType to_st_dtype(at::ScalarType dtype);

// A validated safetensors file, kept open and read with pread: a tensor's bytes go straight into the
// tensor that receives them, so reading a checkpoint never holds its file pages in the process's RSS
// (a mapping would: README "QLoRA", load-time memory).
class SafetensorsFile {
 public:
  // Throws sft::InputError naming `path` when it cannot be opened or is not a valid safetensors file.
  static std::shared_ptr<SafetensorsFile> open(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const StHeader& header() const { return header_; }
  const StTensorInfo* find(const std::string& name) const;
  // Reads the tensor into a new tensor of `dtype`. Floating sources (F32/F16/BF16/F64) convert to any
  // floating dtype exactly as at::Tensor::to does; integer and bool tensors load only as their own
  // dtype. Throws sft::InputError (absent tensor, bad dtype, a file cut short since it was opened).
  at::Tensor load(const std::string& name, at::ScalarType dtype) const;
  // The same into `destination` (its shape must be the tensor's; converted to its dtype). A contiguous
  // CPU destination receives the bytes directly (a conversion goes through a buffer of at most
  // kConvertChunkBytes); any other is filled from a loaded CPU copy.
  void read_into(const std::string& name, const at::Tensor& destination) const;
  static constexpr size_t kConvertChunkBytes = size_t{8} << 20;

 private:
  SafetensorsFile() = default;
  void read_bytes(void* out, size_t size, uint64_t offset, const std::string& tensor) const;
  std::filesystem::path path_;
  StHeader header_;
  std::map<std::string, size_t> index_;
  int fd_ = -1;
};

// Writes tensors (any of F32/F16/BF16/F64/I64/I32/I16/I8/U8/BOOL on any device) to `path`, fsynced.
// Tensor order is kept, in the header and in the data section. Throws std::runtime_error naming the
// path on a bad argument (duplicate name, unsupported dtype) or any write failure; a partially
// written file is removed.
void write_safetensors(const std::filesystem::path& path,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// All weight files of an HF model directory: model.safetensors, or the shards listed by
// model.safetensors.index.json (names must be plain files inside `dir`: no absolute paths, no "..",
// no symlinks leading outside). Maps tensor name -> file. Throws sft::InputError.
class CheckpointFiles {
 public:
  static CheckpointFiles open(const std::filesystem::path& dir);
  std::vector<std::string> tensor_names() const;  // sorted
  const StTensorInfo& info(const std::string& name) const;  // throws InputError if absent
  bool contains(const std::string& name) const { return owner_.count(name) != 0; }
  at::Tensor load(const std::string& name, at::ScalarType dtype) const;  // throws InputError if absent
  void read_into(const std::string& name, const at::Tensor& destination) const;  // SafetensorsFile::read_into
  std::string file_of(const std::string& name) const;                    // throws InputError if absent

 private:
  size_t owner_of(const std::string& name) const;
  std::filesystem::path dir_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> owner_;  // tensor name -> index into files_
};

}  // namespace sft::model
