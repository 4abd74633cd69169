// model/named_tensors.cpp: checking a set of named tensors against what a loader wants, and copying.
#include "model/named_tensors.h"

#include <torch/torch.h>

#include <algorithm>
#include <set>

#include "common/errors.h"

namespace sft::model {

NamedTensorSource::NamedTensorSource(std::string label, std::vector<Entry> entries, Reader read)
    : label_(std::move(label)), entries_(std::move(entries)), read_(std::move(read)) {
  std::sort(entries_.begin(), entries_.end(), [](const Entry& a, const Entry& b) { return a.name < b.name; });
}

NamedTensorSource NamedTensorSource::of(const CheckpointFiles& files, const std::string& dir_label) {
  std::vector<Entry> entries;
  for (const std::string& name : files.tensor_names()) entries.push_back({name, files.info(name).shape, files.file_of(name)});
  return NamedTensorSource(dir_label, std::move(entries), [&files](const std::string& name, const at::Tensor& destination) {
    files.read_into(name, destination);
  });
}

NamedTensorSource NamedTensorSource::of(const SafetensorsFile& file) {
  std::vector<Entry> entries;
  for (const StTensorInfo& info : file.header().tensors) entries.push_back({info.name, info.shape, file.path().string()});
  return NamedTensorSource(file.path().string(), std::move(entries), [&file](const std::string& name, const at::Tensor& destination) {
    file.read_into(name, destination);
  });
}

NamedTensorSource NamedTensorSource::of(const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                                        const std::string& file) {
  std::vector<Entry> entries;
  for (const auto& [name, tensor] : tensors) entries.push_back({name, tensor.sizes().vec(), file});
  return NamedTensorSource(file, std::move(entries), [&tensors](const std::string& name, const at::Tensor& destination) {
    for (const auto& [have, tensor] : tensors) {
      if (have == name) {
        destination.copy_(tensor);
        return;
      }
    }
    throw std::logic_error("NamedTensorSource: no tensor " + name);
  });
}

at::Tensor NamedTensorSource::read(const std::string& name, at::ScalarType dtype) const {
  const Entry* entry = find(name);
  if (!entry) throw std::logic_error("NamedTensorSource::read: " + label_ + " has no tensor " + name);
  at::Tensor out = at::empty(entry->shape, at::TensorOptions().dtype(dtype));
  read_into(name, out);
  return out;
}

const NamedTensorSource::Entry* NamedTensorSource::find(const std::string& name) const {
  auto it = std::lower_bound(entries_.begin(), entries_.end(), name,
                             [](const Entry& e, const std::string& n) { return e.name < n; });
  return it != entries_.end() && it->name == name ? &*it : nullptr;
}

namespace {

std::string shape_string(at::IntArrayRef shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

std::string with_hint(std::string line, const std::string& hint) { return hint.empty() ? line : line + " " + hint; }

// A model with hundreds of tensors against the wrong file would bury the message: list at most
// kMaxLinesPerKind of each kind, then count the rest.
constexpr size_t kMaxLinesPerKind = 20;

void append_capped(std::vector<std::string>& problems, const std::vector<std::string>& lines, const char* kind) {
  for (size_t i = 0; i < lines.size() && i < kMaxLinesPerKind; ++i) problems.push_back(lines[i]);
  if (lines.size() > kMaxLinesPerKind) {
    problems.push_back("... and " + std::to_string(lines.size() - kMaxLinesPerKind) + " more " + kind + " tensors");
  }
}

}  // namespace

std::vector<std::string> named_tensor_problems(const NamedTensorSource& source, const std::vector<TensorSlot>& slots,
                                               const TensorMatchRules& rules) {
  std::vector<std::string> missing, misshaped, unexpected;
  std::set<std::string> wanted;
  for (const TensorSlot& slot : slots) {
    wanted.insert(slot.name);
    const NamedTensorSource::Entry* entry = source.find(slot.name);
    if (!entry) {
      missing.push_back(with_hint("missing tensor '" + slot.name + "' (expected shape " +
                                      shape_string(slot.destination.sizes()) + ")", rules.missing_hint));
    } else if (at::IntArrayRef(entry->shape) != slot.destination.sizes()) {
      misshaped.push_back(with_hint("tensor '" + slot.name + "' in " + entry->file + " has shape " +
                                        shape_string(entry->shape) + ", expected " +
                                        shape_string(slot.destination.sizes()),
                                    rules.shape_hint));
    }
  }
  for (const NamedTensorSource::Entry& entry : source.entries()) {
    if (wanted.count(entry.name) || (rules.ignorable && rules.ignorable(entry.name))) continue;
    unexpected.push_back(with_hint("unexpected tensor '" + entry.name + "' in " + entry.file, rules.unexpected_hint));
  }
  std::vector<std::string> problems;
  append_capped(problems, missing, "missing");
  append_capped(problems, misshaped, "mis-shaped");
  append_capped(problems, unexpected, "unexpected");
  return problems;
}

void require_named_tensors_match(const NamedTensorSource& source, const std::vector<TensorSlot>& slots,
                                 const TensorMatchRules& rules) {
  const std::vector<std::string> problems = named_tensor_problems(source, slots, rules);
  if (problems.empty()) return;
  std::string message = source.label() + ": " + rules.heading + ":";
  for (const std::string& problem : problems) message += "\n  - " + problem;
  throw InputError(message);
}

void load_named_tensors(const NamedTensorSource& source, const std::vector<TensorSlot>& slots,
                        const TensorMatchRules& rules) {
  require_named_tensors_match(source, slots, rules);
  torch::NoGradGuard no_grad;
  for (const TensorSlot& slot : slots) source.read_into(slot.name, slot.destination);
}

}  // namespace sft::model
