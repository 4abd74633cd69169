// model/safetensors_header.cpp: parse_safetensors_header, the dtype table and every structural check of
// a safetensors header (length, JSON, dtypes, shapes, offsets tiling the data section). Torch-free.
#include "model/safetensors_header.h"

#include <algorithm>
#include <limits>
#include <set>
#include <stdexcept>
#include <tuple>
#include <utility>

#include <nlohmann/json.hpp>

#include "common/errors.h"

namespace sft::model {
namespace {

using Json = nlohmann::json;

constexpr int kMaxJsonNesting = 16;

struct DTypeEntry {
  StDType dtype;
  const char* name;
  size_t size;
};
constexpr DTypeEntry kDTypes[] = {
    {StDType::F32, "F32", 4}, {StDType::F16, "F16", 2}, {StDType::BF16, "BF16", 2},
    {StDType::F64, "F64", 8}, {StDType::I64, "I64", 8}, {StDType::I32, "I32", 4},
    {StDType::I16, "I16", 2}, {StDType::I8, "I8", 1},   {StDType::U8, "U8", 1},
    {StDType::BOOL, "BOOL", 1},
};
// Valid in the format but not loadable by us: named as "unsupported" rather than "unknown".
constexpr const char* kUnsupportedDTypes[] = {"U16", "U32", "U64", "C64", "F4", "F6_E2M3", "F6_E3M2",
                                              "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ",
                                              "F8_E5M2FNUZ"};

std::string known_dtype_list() {
  std::string out;
  for (const DTypeEntry& entry : kDTypes) out += (out.empty() ? "" : ", ") + std::string(entry.name);
  return out;
}

// Checked a*b for sizes read from the file: false on overflow.
bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) {
  if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a) return false;
  *out = a * b;
  return true;
}

// JSON text of a value for error messages, shortened so a hostile header cannot flood the terminal.
// Nested containers are only named: dump() recurses, and a 100 MB header can nest millions deep.
std::string excerpt(const Json& value) {
  if (value.is_object()) return "an object";
  if (value.is_array()) {
    for (const Json& element : value) {
      if (element.is_structured()) return "a nested array";
    }
  }
  std::string text = value.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return text;
}

class HeaderErrors {
 public:
  explicit HeaderErrors(const std::string& label) : label_(label) {}
  [[noreturn]] void fail(const std::string& problem) const {
    throw InputError(label_ + ": invalid safetensors file: " + problem);
  }
  [[noreturn]] void fail_tensor(const std::string& tensor, const std::string& problem) const {
    fail("tensor '" + tensor + "': " + problem);
  }

 private:
  const std::string& label_;
};

// Parses the header JSON, remembering the first duplicated key (nlohmann keeps the last one silently).
struct DuplicateKey {
  bool found = false;
  std::string key;
  std::string tensor;  // the top-level entry the duplicate sits in; empty at top level
};

Json parse_json_rejecting_duplicates(const char* begin, const char* end, DuplicateKey* duplicate,
                                     const HeaderErrors& errors) {
  std::vector<std::set<std::string>> open_objects;
  std::string current_top_key;
  int nesting = 0;
  auto callback = [&](int /*depth*/, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
        open_objects.emplace_back();
        [[fallthrough]];
      case Json::parse_event_t::array_start:
        // A valid header nests 3 deep; stop a hostile one before it builds a huge tree.
        if (++nesting > kMaxJsonNesting) {
          errors.fail("header JSON nests deeper than " + std::to_string(kMaxJsonNesting) + " levels");
        }
        break;
      case Json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        [[fallthrough]];
      case Json::parse_event_t::array_end:
        --nesting;
        break;
      case Json::parse_event_t::key: {
        if (open_objects.empty() || !parsed.is_string()) break;
        const std::string& key = parsed.get_ref<const std::string&>();
        if (open_objects.size() == 1) current_top_key = key;
        if (!open_objects.back().insert(key).second && !duplicate->found) {
          duplicate->found = true;
          duplicate->key = key;
          duplicate->tensor = open_objects.size() == 1 ? std::string() : current_top_key;
        }
        break;
      }
      default:
        break;
    }
    return true;
  };
  try {
    return Json::parse(begin, end, callback);
  } catch (const Json::exception& e) {
    errors.fail(std::string("header is not valid JSON: ") + e.what());
  }
}

uint64_t read_unsigned(const Json& value, const std::string& tensor, const char* field,
                       const HeaderErrors& errors) {
  if (!value.is_number_unsigned()) {
    errors.fail_tensor(tensor, std::string("'") + field + "' must hold non-negative integers, got " +
                                   excerpt(value));
  }
  return value.get<uint64_t>();
}

StTensorInfo parse_tensor(const std::string& name, const Json& entry, uint64_t data_size,
                          const HeaderErrors& errors) {
  if (!entry.is_object()) errors.fail_tensor(name, "entry is not a JSON object: " + excerpt(entry));
  StTensorInfo info;
  info.name = name;

  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end()) errors.fail_tensor(name, "missing 'dtype'");
  if (!dtype_it->is_string()) errors.fail_tensor(name, "'dtype' is not a string: " + excerpt(*dtype_it));
  const std::string& dtype_name = dtype_it->get_ref<const std::string&>();
  std::optional<StDType> dtype = st_dtype_from_name(dtype_name);
  if (!dtype) {
    bool known_elsewhere = std::find_if(std::begin(kUnsupportedDTypes), std::end(kUnsupportedDTypes),
                                        [&](const char* n) { return dtype_name == n; }) !=
                           std::end(kUnsupportedDTypes);
    errors.fail_tensor(name, std::string(known_elsewhere ? "unsupported" : "unknown") + " dtype '" +
                                 dtype_name + "' (supported: " + known_dtype_list() + ")");
  }
  info.dtype = *dtype;

  auto shape_it = entry.find("shape");
  if (shape_it == entry.end()) errors.fail_tensor(name, "missing 'shape'");
  if (!shape_it->is_array()) errors.fail_tensor(name, "'shape' is not an array: " + excerpt(*shape_it));
  uint64_t numel = 1;
  for (const Json& dim_json : *shape_it) {
    uint64_t dim = read_unsigned(dim_json, name, "shape", errors);
    if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      errors.fail_tensor(name, "shape dimension " + std::to_string(dim) + " is too large");
    }
    // Fold left like the reference, so [2^40, 2^40, 0] overflows there and here alike.
    if (!checked_mul(numel, dim, &numel)) {
      errors.fail_tensor(name, "shape " + excerpt(*shape_it) + " overflows 64-bit element count");
    }
    info.shape.push_back(static_cast<int64_t>(dim));
  }
  uint64_t nbytes = 0;
  if (!checked_mul(numel, st_dtype_size(info.dtype), &nbytes)) {
    errors.fail_tensor(name, "shape " + excerpt(*shape_it) + " with dtype " + dtype_name +
                                 " overflows 64-bit byte count");
  }

  auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end()) errors.fail_tensor(name, "missing 'data_offsets'");
  if (!offsets_it->is_array() || offsets_it->size() != 2) {
    errors.fail_tensor(name, "'data_offsets' must be [begin, end], got " + excerpt(*offsets_it));
  }
  info.begin = read_unsigned((*offsets_it)[0], name, "data_offsets", errors);
  info.end = read_unsigned((*offsets_it)[1], name, "data_offsets", errors);
  std::string range = "data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) + "]";
  if (info.begin > info.end) errors.fail_tensor(name, range + " have begin > end");
  if (info.end > data_size) {
    errors.fail_tensor(name, range + " run past the end of the data section (" +
                                 std::to_string(data_size) + " bytes; file truncated?)");
  }
  if (info.end - info.begin != nbytes) {
    errors.fail_tensor(name, range + " span " + std::to_string(info.end - info.begin) +
                                 " bytes but shape " + excerpt(*shape_it) + " of " + dtype_name +
                                 " needs " + std::to_string(nbytes) + " bytes");
  }
  return info;
}

// Sorted by begin, the tensors must tile [0, data_size) exactly.
void check_tiling(const std::vector<StTensorInfo>& tensors, uint64_t data_size,
                  const HeaderErrors& errors) {
  uint64_t cursor = 0;
  const StTensorInfo* previous = nullptr;
  for (const StTensorInfo& info : tensors) {
    if (info.begin != cursor) {
      std::string after = previous ? "tensor '" + previous->name + "' which ends at " +
                                         std::to_string(cursor)
                                   : "the start of the data section";
      std::string range = "data_offsets [" + std::to_string(info.begin) + ", " +
                          std::to_string(info.end) + "]";
      if (info.begin > cursor) {
        errors.fail_tensor(info.name, range + " leave a hole of " + std::to_string(info.begin - cursor) +
                                          " bytes after " + after);
      }
      errors.fail_tensor(info.name, range + " overlap " + after);
    }
    cursor = info.end;
    previous = &info;
  }
  if (cursor != data_size) {
    errors.fail(std::to_string(data_size - cursor) + " trailing bytes after the last tensor" +
                (previous ? " '" + previous->name + "'" : std::string()) + " (data section is " +
                std::to_string(data_size) + " bytes, tensors end at " + std::to_string(cursor) + ")");
  }
}

}  // namespace

const char* st_dtype_name(StDType dtype) {
  for (const DTypeEntry& entry : kDTypes) {
    if (entry.dtype == dtype) return entry.name;
  }
  throw std::invalid_argument("st_dtype_name: bad StDType");
}

size_t st_dtype_size(StDType dtype) {
  for (const DTypeEntry& entry : kDTypes) {
    if (entry.dtype == dtype) return entry.size;
  }
  throw std::invalid_argument("st_dtype_size: bad StDType");
}

std::optional<StDType> st_dtype_from_name(const std::string& name) {
  for (const DTypeEntry& entry : kDTypes) {
    if (name == entry.name) return entry.dtype;
  }
  return std::nullopt;
}

StHeader parse_safetensors_header(const uint8_t* data, size_t available, uint64_t file_size,
                                  const std::string& label) {
  HeaderErrors errors(label);
  if (file_size < 8) {
    errors.fail("file is " + std::to_string(file_size) +
                " bytes, too short for the 8-byte header length (truncated?)");
  }
  if (available < 8) throw std::invalid_argument(label + ": parse_safetensors_header needs 8 bytes");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | data[i];  // little-endian
  if (header_len > kMaxSafetensorsHeaderBytes) {
    errors.fail("header length " + std::to_string(header_len) + " exceeds the limit of " +
                std::to_string(kMaxSafetensorsHeaderBytes) + " bytes");
  }
  if (8 + header_len > file_size) {
    errors.fail("header length " + std::to_string(header_len) + " runs past the end of the file (" +
                std::to_string(file_size) + " bytes; truncated?)");
  }
  if (8 + header_len > available) {
    throw std::invalid_argument(label + ": parse_safetensors_header was given too few header bytes");
  }

  StHeader header;
  header.data_offset = 8 + header_len;
  const uint64_t data_size = file_size - header.data_offset;
  const char* json_begin = reinterpret_cast<const char*>(data + 8);
  DuplicateKey duplicate;
  Json root = parse_json_rejecting_duplicates(json_begin, json_begin + header_len, &duplicate, errors);
  if (!root.is_object()) errors.fail("header is not a JSON object: " + excerpt(root));
  if (duplicate.found) {
    if (duplicate.tensor.empty()) errors.fail("duplicate tensor name '" + duplicate.key + "'");
    errors.fail("entry '" + duplicate.tensor + "' has duplicate key '" + duplicate.key + "'");
  }

  for (const auto& [name, entry] : root.items()) {
    if (name == "__metadata__") {
      if (entry.is_null()) continue;
      if (!entry.is_object()) errors.fail("__metadata__ is not a JSON object: " + excerpt(entry));
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          errors.fail("__metadata__ value of '" + key + "' is not a string: " + excerpt(value));
        }
        header.metadata[key] = value.get<std::string>();
      }
      continue;
    }
    header.tensors.push_back(parse_tensor(name, entry, data_size, errors));
  }
  std::stable_sort(header.tensors.begin(), header.tensors.end(),
                   [](const StTensorInfo& a, const StTensorInfo& b) {
                     return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
                   });
  check_tiling(header.tensors, data_size, errors);
  return header;
}

}  // namespace sft::model
