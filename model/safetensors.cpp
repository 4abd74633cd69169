// model/safetensors.cpp: the pread safetensors reader (SafetensorsFile), the writer (write_safetensors,
// temp file + fsync + rename) and CheckpointFiles (model.safetensors or an index of shards).
#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "common/errors.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; this reader assumes a little-endian host"
#endif

namespace sft::model {
namespace fs = std::filesystem;

at::ScalarType to_scalar_type(StDType dtype) {
  switch (dtype) {
    case StDType::F32: return at::kFloat;
    case StDType::F16: return at::kHalf;
    case StDType::BF16: return at::kBFloat16;
    case StDType::F64: return at::kDouble;
    case StDType::I64: return at::kLong;
    case StDType::I32: return at::kInt;
    case StDType::I16: return at::kShort;
    case StDType::I8: return at::kChar;
    case StDType::U8: return at::kByte;
    case StDType::BOOL: return at::kBool;
  }
  throw std::invalid_argument("to_scalar_type: bad StDType");
}

StDType to_st_dtype(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return StDType::F32;
    case at::kHalf: return StDType::F16;
    case at::kBFloat16: return StDType::BF16;
    case at::kDouble: return StDType::F64;
    case at::kLong: return StDType::I64;
    case at::kInt: return StDType::I32;
    case at::kShort: return StDType::I16;
    case at::kChar: return StDType::I8;
    case at::kByte: return StDType::U8;
    case at::kBool: return StDType::BOOL;
    default: break;
  }
  throw std::invalid_argument(std::string("safetensors has no dtype for ") + c10::toString(dtype));
}

// ---------------------------------------------------------------------------------------------------
// Reader

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const fs::path& path) {
  const std::string label = path.string();
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);  // closed by the destructor
  if (file->fd_ < 0) {
    throw InputError(label + ": cannot open safetensors file: " + std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(file->fd_, &st) != 0 || !S_ISREG(st.st_mode)) throw InputError(label + ": not a regular file");
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  // The 8-byte length, then as much of the header as the parser needs to judge it (never more than
  // its cap or the file).
  std::vector<uint8_t> head(static_cast<size_t>(std::min<uint64_t>(size, 8)));
  file->read_bytes(head.data(), head.size(), 0, "");
  if (head.size() == 8) {
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | head[i];  // little-endian
    const uint64_t wanted = std::min(size, 8 + std::min(header_len, kMaxSafetensorsHeaderBytes));
    head.resize(static_cast<size_t>(wanted));
    file->read_bytes(head.data() + 8, head.size() - 8, 8, "");
  }
  static const uint8_t kEmpty[1] = {0};
  file->header_ = parse_safetensors_header(head.empty() ? kEmpty : head.data(), head.size(), size, label);
  for (size_t i = 0; i < file->header_.tensors.size(); ++i) file->index_[file->header_.tensors[i].name] = i;
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (fd_ >= 0) ::close(fd_);
}

const StTensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

void SafetensorsFile::read_bytes(void* out, size_t size, uint64_t offset, const std::string& tensor) const {
  auto* p = static_cast<uint8_t*>(out);
  while (size > 0) {
    const ssize_t n = ::pread(fd_, p, std::min<size_t>(size, size_t{1} << 30), static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    const std::string what = tensor.empty() ? "the header" : "tensor '" + tensor + "'";
    if (n < 0) throw InputError(path_.string() + ": reading " + what + " failed: " + std::strerror(errno));
    if (n == 0) {
      throw InputError(path_.string() + ": the file ends inside " + what + " (truncated since it was opened?)");
    }
    p += n;
    offset += static_cast<uint64_t>(n);
    size -= static_cast<size_t>(n);
  }
}

at::Tensor SafetensorsFile::load(const std::string& name, at::ScalarType dtype) const {
  const StTensorInfo* info = find(name);
  if (!info) throw InputError(path_.string() + ": no tensor named '" + name + "'");
  at::Tensor out = at::empty(info->shape, at::TensorOptions().dtype(dtype));
  read_into(name, out);
  return out;
}

void SafetensorsFile::read_into(const std::string& name, const at::Tensor& destination) const {
  const StTensorInfo* info = find(name);
  if (!info) throw InputError(path_.string() + ": no tensor named '" + name + "'");
  const at::ScalarType source = to_scalar_type(info->dtype), dtype = destination.scalar_type();
  if (source != dtype && !(at::isFloatingType(source) && at::isFloatingType(dtype))) {
    throw InputError(path_.string() + ": tensor '" + name + "' is " + st_dtype_name(info->dtype) +
                     " and cannot be loaded as " + c10::toString(dtype));
  }
  if (destination.sizes() != at::IntArrayRef(info->shape)) {
    throw std::logic_error("SafetensorsFile::read_into: " + name + " has another shape than its destination");
  }
  if (!destination.is_cpu() || !destination.is_contiguous()) {
    destination.copy_(load(name, dtype));
    return;
  }
  const uint64_t offset = header_.data_offset + info->begin;
  const size_t element = st_dtype_size(info->dtype);
  const int64_t numel = destination.numel();
  if (source == dtype) {
    if (numel > 0) read_bytes(destination.data_ptr(), info->end - info->begin, offset, name);
  } else {
    // Converted chunk by chunk (copy_ converts as at::Tensor::to does), so a whole source-dtype copy of a
    // large tensor (an embedding) never exists beside its destination.
    const int64_t chunk = std::max<int64_t>(1, static_cast<int64_t>(kConvertChunkBytes / element));
    at::Tensor buffer = at::empty({std::min(chunk, numel)}, at::TensorOptions().dtype(source));
    at::Tensor flat = destination.view({-1});
    for (int64_t begin = 0; begin < numel; begin += chunk) {
      const int64_t count = std::min(chunk, numel - begin);
      read_bytes(buffer.data_ptr(), static_cast<size_t>(count) * element, offset + static_cast<uint64_t>(begin) * element, name);
      flat.narrow(0, begin, count).copy_(buffer.narrow(0, 0, count));
    }
  }
  // The bytes went in behind autograd's back: count it as the in-place write it is.
  if (!destination.is_inference()) destination.unsafeGetTensorImpl()->bump_version();
}

// ---------------------------------------------------------------------------------------------------
// Writer

namespace {

// The temp file a write goes to; removed unless committed.
class PendingFile {
 public:
  explicit PendingFile(const fs::path& final_path)
      : final_(final_path), temp_(final_path.string() + ".tmp." + std::to_string(::getpid())) {
    fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("cannot create " + temp_.string());
  }
  ~PendingFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(temp_.c_str());
  }
  PendingFile(const PendingFile&) = delete;
  PendingFile& operator=(const PendingFile&) = delete;

  void write_all(const void* data, size_t size) {
    const char* p = static_cast<const char*>(data);
    while (size > 0) {
      ssize_t n = ::write(fd_, p, std::min<size_t>(size, size_t{1} << 30));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) fail("write");
      if (n == 0) {
        errno = ENOSPC;
        fail("write");
      }
      p += n;
      size -= static_cast<size_t>(n);
    }
  }

  // fsync + close the temp file, rename it over the final path, fsync the directory.
  void commit() {
    if (::fsync(fd_) != 0) fail("fsync");
    int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) fail("close");
    if (::rename(temp_.c_str(), final_.c_str()) != 0) fail("rename from " + temp_.string());
    committed_ = true;
    fs::path dir = final_.has_parent_path() ? final_.parent_path() : fs::path(".");
    int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd < 0) fail("open directory " + dir.string());
    int rc = ::fsync(dir_fd);
    int err = errno;
    ::close(dir_fd);
    errno = err;
    if (rc != 0) fail("fsync directory " + dir.string());
  }

  [[noreturn]] void fail(const std::string& step) const {
    throw std::runtime_error("writing safetensors file " + final_.string() + " failed: " + step + ": " +
                             std::strerror(errno));
  }

 private:
  fs::path final_;
  fs::path temp_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace

void write_safetensors(const fs::path& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string where = path.string();
  auto bad_argument = [&](const std::string& problem) {
    return std::runtime_error("cannot write safetensors file " + where + ": " + problem);
  };

  // Header first: it only needs shapes and dtypes, and every argument error surfaces before any I/O.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header["__metadata__"] = std::move(meta);
  }
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name == "__metadata__") throw bad_argument("'__metadata__' is reserved, not a tensor name");
    if (!seen.insert(name).second) throw bad_argument("duplicate tensor name '" + name + "'");
    if (!tensor.defined()) throw bad_argument("tensor '" + name + "' is undefined");
    StDType dtype;
    try {
      dtype = to_st_dtype(tensor.scalar_type());
    } catch (const std::invalid_argument& e) {
      throw bad_argument("tensor '" + name + "': " + e.what());
    }
    const uint64_t nbytes = static_cast<uint64_t>(tensor.numel()) * st_dtype_size(dtype);
    header[name] = {{"dtype", st_dtype_name(dtype)},
                    {"shape", tensor.sizes().vec()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    throw bad_argument(std::string("a tensor name or metadata entry is not valid UTF-8: ") + e.what());
  }
  text.resize((text.size() + 7) / 8 * 8, ' ');  // 8-byte alignment, padded with spaces like the reference

  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));

  PendingFile file(path);
  file.write_all(length, sizeof(length));
  file.write_all(text.data(), text.size());
  for (const auto& [name, tensor] : tensors) {
    at::Tensor host = tensor.contiguous().to(at::kCPU);
    const size_t nbytes = static_cast<size_t>(host.numel()) * host.element_size();
    if (nbytes > 0) file.write_all(host.data_ptr(), nbytes);
  }
  file.commit();
}

// ---------------------------------------------------------------------------------------------------
// Model directory

namespace {

// nlohmann keeps the last of duplicated keys silently; an index naming a tensor twice is an error.
nlohmann::json parse_index(const fs::path& index_path) {
  const std::string label = index_path.string();
  std::ifstream in(index_path, std::ios::binary);
  if (!in) throw InputError(label + ": cannot read");
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();

  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  auto callback = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    if ((event == Event::object_start || event == Event::array_start) && depth > 64) {
      throw InputError(label + ": JSON nests deeper than 64 levels");
    }
    if (event == Event::object_start) open_objects.emplace_back();
    if (event == Event::object_end && !open_objects.empty()) open_objects.pop_back();
    if (event == Event::key && !open_objects.empty() && parsed.is_string() && duplicate.empty() &&
        !open_objects.back().insert(parsed.get<std::string>()).second) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(text, callback);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(label + ": invalid JSON: " + e.what());
  }
  if (!duplicate.empty()) throw InputError(label + ": duplicate key '" + duplicate + "'");
  if (!root.is_object()) throw InputError(label + ": not a JSON object");
  auto map = root.find("weight_map");
  if (map == root.end() || !map->is_object()) {
    throw InputError(label + ": missing 'weight_map' object (tensor name -> shard file)");
  }
  if (map->empty()) throw InputError(label + ": 'weight_map' lists no tensors");
  for (const auto& [tensor, shard] : map->items()) {
    if (!shard.is_string()) {
      throw InputError(label + ": weight_map entry for tensor '" + tensor + "' is not a file name string");
    }
  }
  return *map;
}

// A shard must be a plain file name inside dir; returns its path.
fs::path checked_shard_path(const fs::path& dir, const std::string& shard, const std::string& tensor,
                            const fs::path& index_path) {
  auto reject = [&](const std::string& why) {
    return InputError(index_path.string() + ": shard '" + shard + "' (for tensor '" + tensor + "') " + why);
  };
  if (shard.empty()) throw reject("is an empty file name");
  if (shard.front() == '/') throw reject("is an absolute path; shards must be plain file names in " + dir.string());
  if (shard == "." || shard == "..") throw reject("is not a file name ('..' and '.' are not allowed)");
  if (shard.find('/') != std::string::npos || shard.find('\\') != std::string::npos) {
    throw reject("contains a path separator; shards must be plain file names in " + dir.string());
  }
  if (shard.find('\0') != std::string::npos) throw reject("contains a NUL byte");
  const fs::path path = dir / shard;
  std::error_code ec;
  if (!fs::exists(path, ec)) throw reject("is missing: " + path.string() + " does not exist");
  const fs::path real = fs::canonical(path, ec);
  const fs::path real_dir = fs::canonical(dir, ec);
  if (ec) throw reject("cannot be resolved: " + ec.message());
  if (real.parent_path() != real_dir) {
    throw reject("is a symlink leading outside " + dir.string() + " (to " + real.string() + ")");
  }
  return path;
}

}  // namespace

CheckpointFiles CheckpointFiles::open(const fs::path& dir) {
  CheckpointFiles result;
  result.dir_ = dir;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    throw InputError(dir.string() + ": not a directory (expected an HF model directory with " +
                     "model.safetensors or model.safetensors.index.json)");
  }
  const fs::path single = dir / "model.safetensors";
  const fs::path index_path = dir / "model.safetensors.index.json";

  auto add_file = [&](std::shared_ptr<SafetensorsFile> file) {
    const size_t id = result.files_.size();
    for (const StTensorInfo& info : file->header().tensors) {
      auto [it, inserted] = result.owner_.emplace(info.name, id);
      if (!inserted) {
        throw InputError(index_path.string() + ": tensor '" + info.name + "' is present in two shards: " +
                         result.files_[it->second]->path().string() + " and " + file->path().string());
      }
    }
    result.files_.push_back(std::move(file));
  };

  if (fs::exists(single, ec)) {
    add_file(SafetensorsFile::open(single));
    return result;
  }
  if (!fs::exists(index_path, ec)) {
    throw InputError(dir.string() + ": no model weights: neither model.safetensors nor " +
                     "model.safetensors.index.json exists");
  }
  const nlohmann::json weight_map = parse_index(index_path);
  std::map<std::string, fs::path> shard_paths;  // shard name -> validated path, in name order
  for (const auto& [tensor, shard_json] : weight_map.items()) {
    const std::string& shard = shard_json.get_ref<const std::string&>();
    if (!shard_paths.count(shard)) shard_paths[shard] = checked_shard_path(dir, shard, tensor, index_path);
  }
  std::map<std::string, size_t> shard_ids;
  for (const auto& [shard, path] : shard_paths) {
    shard_ids[shard] = result.files_.size();
    add_file(SafetensorsFile::open(path));
  }
  for (const auto& [tensor, shard_json] : weight_map.items()) {
    const std::string& shard = shard_json.get_ref<const std::string&>();
    const SafetensorsFile& file = *result.files_[shard_ids.at(shard)];
    if (!file.find(tensor)) {
      throw InputError(index_path.string() + ": tensor '" + tensor + "' is listed in shard '" + shard +
                       "' but absent from " + file.path().string());
    }
  }
  return result;
}

size_t CheckpointFiles::owner_of(const std::string& name) const {
  auto it = owner_.find(name);
  if (it == owner_.end()) {
    throw InputError(dir_.string() + ": no tensor named '" + name + "' in the model weights");
  }
  return it->second;
}

std::vector<std::string> CheckpointFiles::tensor_names() const {
  std::vector<std::string> names;
  names.reserve(owner_.size());
  for (const auto& entry : owner_) names.push_back(entry.first);
  return names;  // std::map order is sorted
}

const StTensorInfo& CheckpointFiles::info(const std::string& name) const {
  return *files_[owner_of(name)]->find(name);
}

at::Tensor CheckpointFiles::load(const std::string& name, at::ScalarType dtype) const {
  return files_[owner_of(name)]->load(name, dtype);
}

void CheckpointFiles::read_into(const std::string& name, const at::Tensor& destination) const {
  files_[owner_of(name)]->read_into(name, destination);
}

std::string CheckpointFiles::file_of(const std::string& name) const {
  return files_[owner_of(name)]->path().string();
}

}  // namespace sft::model
