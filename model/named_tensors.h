// model/named_tensors.h: the one way to load named tensors into a model's tensors. Every missing,
// unexpected and mis-shaped tensor is found before anything is copied and reported in one
// sft::InputError that names the file of each. Used for HF checkpoints (model/weights.cpp), training
// checkpoints (trainer/checkpoint.cpp, trainer/train.cpp) and PEFT adapters (trainer/export.cpp).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "model/safetensors.h"

namespace sft::model {

// One tensor a loader wants: its name in the file and the tensor it is copied into (which gives the
// expected shape; the file's values are converted to its dtype).
struct TensorSlot {
  std::string name;
  at::Tensor destination;
};

// The tensors on offer: every name with its shape and the file that holds it, and a reader.
class NamedTensorSource {
 public:
  struct Entry {
    std::string name;
    std::vector<int64_t> shape;
    std::string file;
  };
  // Fills `destination` (the entry's shape; any dtype it converts to, any device) with the named tensor.
  using Reader = std::function<void(const std::string& name, const at::Tensor& destination)>;

  // `label` names the source in the error's heading (a file or a model directory).
  NamedTensorSource(std::string label, std::vector<Entry> entries, Reader read);
  static NamedTensorSource of(const CheckpointFiles& files, const std::string& dir_label);
  static NamedTensorSource of(const SafetensorsFile& file);
  // Tensors already in memory, read from `file`.
  static NamedTensorSource of(const std::vector<std::pair<std::string, at::Tensor>>& tensors, const std::string& file);

  const std::string& label() const { return label_; }
  const std::vector<Entry>& entries() const { return entries_; }
  const Entry* find(const std::string& name) const;
  // A checkpoint's reader writes straight into the destination (model/safetensors.h read_into).
  void read_into(const std::string& name, const at::Tensor& destination) const { read_(name, destination); }
  at::Tensor read(const std::string& name, at::ScalarType dtype) const;  // a new CPU tensor; throws if absent

 private:
  std::string label_;
  std::vector<Entry> entries_;  // sorted by name
  Reader read_;
};

// What the source is checked against, and hints a reader of the error needs.
struct TensorMatchRules {
  std::string heading = "does not match the model";  // "<source label>: <heading>:"
  std::string missing_hint;     // appended to each line of that kind, e.g. "(another base model?)"
  std::string unexpected_hint;
  std::string shape_hint;
  std::function<bool(const std::string& name)> ignorable;  // source tensors accepted and skipped
};

// Every problem, one line each: missing, then mis-shaped, then unexpected tensors (at most 20 lines of
// each kind, then a count of the rest). Empty: they match.
std::vector<std::string> named_tensor_problems(const NamedTensorSource& source, const std::vector<TensorSlot>& slots,
                                               const TensorMatchRules& rules);

// Throws sft::InputError "<label>: <heading>:" listing every problem of named_tensor_problems.
void require_named_tensors_match(const NamedTensorSource& source, const std::vector<TensorSlot>& slots,
                                 const TensorMatchRules& rules);

// Checks (require_named_tensors_match) and then reads each slot's tensor into it, under NoGradGuard.
// Nothing is copied when anything is wrong.
void load_named_tensors(const NamedTensorSource& source, const std::vector<TensorSlot>& slots,
                        const TensorMatchRules& rules = {});

}  // namespace sft::model
