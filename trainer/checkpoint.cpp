// trainer/checkpoint.cpp: atomic checkpoint writes (temp dir + fsync + rename, manifest last), discovery
// of complete checkpoints, manifest verification, pruning, the run fingerprint and RNG state capture.
// SHA-256 is implemented here (FIPS 180-4) so the build needs no crypto library for integrity hashes.
#include "trainer/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <torch/torch.h>
#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <regex>

#include <openssl/evp.h>

#include "common/errors.h"
#include "model/named_tensors.h"
#include "model/safetensors.h"
#include "trainer/setup.h"

namespace sft {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// ---- durable writes ------------------------------------------------------------------------------------

std::string errno_text() { return std::strerror(errno); }

void fsync_path(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw std::runtime_error(path.string() + ": cannot open for fsync: " + errno_text());
  const int rc = ::fsync(fd);
  const int saved = errno;
  ::close(fd);
  if (rc != 0) throw std::runtime_error(path.string() + ": fsync failed: " + std::strerror(saved));
}

void write_file_synced(const fs::path& path, const std::string& bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw std::runtime_error(path.string() + ": cannot create: " + errno_text());
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const std::string why = errno_text();
      ::close(fd);
      throw std::runtime_error(path.string() + ": write failed: " + why);
    }
    done += static_cast<size_t>(n);
  }
  const int rc = ::fsync(fd);
  const std::string why = rc != 0 ? errno_text() : "";
  ::close(fd);
  if (rc != 0) throw std::runtime_error(path.string() + ": fsync failed: " + why);
}

// The byte budget of CheckpointWriteOptions::fail_after_bytes: every file of a checkpoint is charged after
// it is written; the one that crosses the budget is cut to what still fitted and the save fails as ENOSPC.
class WriteBudget {
 public:
  explicit WriteBudget(const CheckpointWriteOptions& options) : remaining_(options.fail_after_bytes.value_or(-1)) {}
  void charge(const fs::path& file) {
    if (remaining_ < 0) return;
    const int64_t size = static_cast<int64_t>(fs::file_size(file));
    if (size > remaining_) {
      fs::resize_file(file, static_cast<uintmax_t>(remaining_));
      throw std::runtime_error(file.string() + ": write failed: " + std::strerror(ENOSPC) +
                               " (injected by the fail_after_bytes test option)");
    }
    remaining_ -= size;
  }

 private:
  int64_t remaining_ = -1;  // < 0: no injection
};

std::string step_dir_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%08lld", static_cast<long long>(step));
  return name;
}

std::optional<int64_t> parse_step_dir(const std::string& name) {
  static const std::regex pattern("step-([0-9]+)");
  std::smatch match;
  if (!std::regex_match(name, match, pattern)) return std::nullopt;
  return std::stoll(match[1].str());
}

json read_json_file(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw InputError(path.string() + ": cannot open");
  try {
    return json::parse(in);
  } catch (const json::parse_error& e) {
    throw InputError(path.string() + ": invalid JSON: " + e.what());
  }
}

bool manifest_parses(const fs::path& dir) {
  std::ifstream in(dir / kCheckpointManifest);
  if (!in) return false;
  json manifest = json::parse(in, nullptr, /*allow_exceptions=*/false);
  return manifest.is_object() && manifest.contains("files") && manifest["files"].is_object();
}

NamedTensors read_all_tensors(const fs::path& path) {
  auto file = model::SafetensorsFile::open(path);
  NamedTensors tensors;
  for (const model::StTensorInfo& info : file->header().tensors) {
    tensors.emplace_back(info.name, file->load(info.name, model::to_scalar_type(info.dtype)));
  }
  return tensors;
}

std::string to_hex(const uint8_t* data, size_t size) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  out.reserve(size * 2);
  for (size_t i = 0; i < size; ++i) {
    out.push_back(digits[data[i] >> 4]);
    out.push_back(digits[data[i] & 0xF]);
  }
  return out;
}

at::Tensor from_hex(const std::string& hex, const std::string& label) {
  auto value = [&](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    throw InputError(label + ": RNG state is not lowercase hex");
  };
  if (hex.size() % 2) throw InputError(label + ": RNG state has an odd number of hex digits");
  at::Tensor out = at::empty({static_cast<int64_t>(hex.size() / 2)}, at::kByte);
  uint8_t* p = out.data_ptr<uint8_t>();
  for (size_t i = 0; i < hex.size() / 2; ++i) p[i] = static_cast<uint8_t>(value(hex[2 * i]) * 16 + value(hex[2 * i + 1]));
  return out;
}

std::string generator_state_hex(at::Generator gen) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  at::Tensor state = gen.get_state().contiguous();
  return to_hex(state.data_ptr<uint8_t>(), static_cast<size_t>(state.numel()));
}

}  // namespace

namespace {

// OpenSSL's libcrypto SHA-256 behind the EVP interface; the context is freed on every path.
class Sha256 {
 public:
  Sha256() : context_(EVP_MD_CTX_new()) {
    if (!context_ || EVP_DigestInit_ex(context_.get(), EVP_sha256(), nullptr) != 1) {
      throw std::runtime_error("sha256: OpenSSL EVP_DigestInit_ex failed");
    }
  }
  void update(const void* data, size_t size) {
    if (EVP_DigestUpdate(context_.get(), data, size) != 1) throw std::runtime_error("sha256: EVP_DigestUpdate failed");
  }
  std::string hex() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    if (EVP_DigestFinal_ex(context_.get(), digest, &length) != 1) throw std::runtime_error("sha256: EVP_DigestFinal_ex failed");
    return to_hex(digest, length);
  }

 private:
  struct Free {
    void operator()(EVP_MD_CTX* context) const { EVP_MD_CTX_free(context); }
  };
  std::unique_ptr<EVP_MD_CTX, Free> context_;
};

}  // namespace

std::string sha256_hex(const void* data, size_t size) {
  Sha256 hash;
  hash.update(data, size);
  return hash.hex();
}

std::string sha256_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path.string() + ": cannot open to hash");
  Sha256 hash;
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    hash.update(buffer.data(), static_cast<size_t>(in.gcount()));
  }
  return hash.hex();
}

std::string optimizer_shard_name(int64_t rank) {
  char name[64];
  std::snprintf(name, sizeof(name), "optimizer/rank-%05lld.safetensors", static_cast<long long>(rank));
  return name;
}

static std::string rank_state_name(int64_t rank) {
  char name[64];
  std::snprintf(name, sizeof(name), "ranks/rank-%05lld.json", static_cast<long long>(rank));
  return name;
}

fs::path begin_checkpoint(const fs::path& checkpoints_dir, int64_t step) {
  fs::create_directories(checkpoints_dir);
  const fs::path tmp = checkpoints_dir / (step_dir_name(step) + ".tmp-" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  fs::create_directories(tmp / "optimizer");
  fs::create_directories(tmp / "ranks");
  return tmp;
}

void write_rank_state(const fs::path& tmp, int64_t rank, const json& state) {
  write_file_synced(tmp / rank_state_name(rank), state.dump(2) + "\n");
}

fs::path commit_checkpoint(const fs::path& checkpoints_dir, const fs::path& tmp, const CheckpointContents& contents,
                           const CheckpointWriteOptions& options) {
  const fs::path final_dir = checkpoints_dir / step_dir_name(contents.step);
  WriteBudget budget(options);
  try {
    json files = json::object();
    auto record = [&](const std::string& relative) {
      const fs::path path = tmp / relative;
      budget.charge(path);
      files[relative] = {{"size", fs::file_size(path)}, {"sha256", sha256_file(path)}};
    };
    model::write_safetensors(tmp / kCheckpointWeights, contents.weights, {{"format", "pt"}});
    record(kCheckpointWeights);
    model::write_safetensors(tmp / optimizer_shard_name(0), contents.optimizer);
    record(optimizer_shard_name(0));
    write_file_synced(tmp / kCheckpointState, contents.trainer_state.dump(2) + "\n");
    record(kCheckpointState);
    fsync_path(tmp / "optimizer");
    // What the other ranks wrote (multi-process runs): listed and hashed like every other file.
    std::vector<std::string> rank_files;
    for (const auto& entry : fs::directory_iterator(tmp / "ranks")) rank_files.push_back("ranks/" + entry.path().filename().string());
    std::sort(rank_files.begin(), rank_files.end());
    for (const std::string& relative : rank_files) record(relative);
    if (rank_files.empty()) {
      fs::remove(tmp / "ranks");
    } else {
      fsync_path(tmp / "ranks");
    }
    // The manifest last: its presence is what makes the directory a checkpoint.
    const json manifest = {{"format", "sft-checkpoint"}, {"version", 1}, {"step", contents.step}, {"files", files}};
    write_file_synced(tmp / kCheckpointManifest, manifest.dump(2) + "\n");
    budget.charge(tmp / kCheckpointManifest);
    fsync_path(tmp);
    if (fs::exists(final_dir)) fs::remove_all(final_dir);  // an incomplete leftover of the same step
    fs::rename(tmp, final_dir);
    fsync_path(checkpoints_dir);
  } catch (const std::exception& e) {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
    throw std::runtime_error("checkpoint " + final_dir.string() + " was not saved: " + e.what() +
                             " (earlier checkpoints are intact)");
  }
  return final_dir;
}

fs::path write_checkpoint(const fs::path& checkpoints_dir, const CheckpointContents& contents,
                          const CheckpointWriteOptions& options) {
  fs::path tmp;
  try {
    tmp = begin_checkpoint(checkpoints_dir, contents.step);
  } catch (const std::exception& e) {
    throw std::runtime_error("checkpoint of step " + std::to_string(contents.step) + " in " + checkpoints_dir.string() +
                             " was not saved: " + e.what() + " (earlier checkpoints are intact)");
  }
  return commit_checkpoint(checkpoints_dir, tmp, contents, options);
}

std::optional<json> read_rank_state(const fs::path& dir, int64_t rank) {
  const fs::path path = dir / rank_state_name(rank);
  if (!fs::exists(path)) return std::nullopt;
  return read_json_file(path);
}

std::vector<CheckpointEntry> list_complete_checkpoints(const fs::path& checkpoints_dir) {
  std::vector<CheckpointEntry> out;
  if (!fs::is_directory(checkpoints_dir)) return out;
  for (const auto& entry : fs::directory_iterator(checkpoints_dir)) {
    if (!entry.is_directory()) continue;
    const auto step = parse_step_dir(entry.path().filename().string());
    if (step && manifest_parses(entry.path())) out.push_back({*step, entry.path()});
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.step < b.step; });
  return out;
}

std::optional<CheckpointEntry> newest_complete_checkpoint(const fs::path& checkpoints_dir) {
  auto all = list_complete_checkpoints(checkpoints_dir);
  if (all.empty()) return std::nullopt;
  return all.back();
}

void prune_checkpoints(const fs::path& checkpoints_dir, int64_t keep_last) {
  if (!fs::is_directory(checkpoints_dir)) return;
  const auto complete = list_complete_checkpoints(checkpoints_dir);
  std::vector<fs::path> doomed;
  const size_t keep = keep_last <= 0 ? complete.size() : std::max<size_t>(1, static_cast<size_t>(keep_last));
  for (size_t i = 0; i + keep < complete.size(); ++i) doomed.push_back(complete[i].path);
  for (const auto& entry : fs::directory_iterator(checkpoints_dir)) {
    if (!entry.is_directory()) continue;
    const std::string name = entry.path().filename().string();
    const bool incomplete_step = parse_step_dir(name) && !manifest_parses(entry.path());
    const bool temp = name.rfind("step-", 0) == 0 && name.find(".tmp-") != std::string::npos;
    if (incomplete_step || temp) doomed.push_back(entry.path());
  }
  for (const fs::path& path : doomed) fs::remove_all(path);
}

void verify_checkpoint(const fs::path& dir) {
  const fs::path manifest_path = dir / kCheckpointManifest;
  if (!fs::exists(manifest_path)) {
    throw InputError(manifest_path.string() + ": missing: '" + dir.string() +
                     "' is not a complete checkpoint (an interrupted save?)");
  }
  const json manifest = read_json_file(manifest_path);
  if (!manifest.contains("files") || !manifest["files"].is_object()) {
    throw InputError(manifest_path.string() + ": no 'files' object");
  }
  for (const char* required : {kCheckpointWeights, kCheckpointState}) {
    if (!manifest["files"].contains(required)) throw InputError(manifest_path.string() + ": does not list " + required);
  }
  for (const auto& [relative, expected] : manifest["files"].items()) {
    const fs::path path = dir / relative;
    if (relative.find("..") != std::string::npos || fs::path(relative).is_absolute()) {
      throw InputError(manifest_path.string() + ": file name '" + relative + "' leaves the checkpoint directory");
    }
    if (!fs::exists(path)) throw InputError(path.string() + ": missing (listed in " + manifest_path.string() + ")");
    const auto size = fs::file_size(path);
    if (size != expected.at("size").get<uintmax_t>()) {
      throw InputError(path.string() + ": " + std::to_string(size) + " bytes, but the manifest says " +
                       std::to_string(expected.at("size").get<uintmax_t>()) + " (truncated or corrupted checkpoint)");
    }
    if (sha256_file(path) != expected.at("sha256").get<std::string>()) {
      throw InputError(path.string() + ": sha256 differs from the manifest (corrupted checkpoint)");
    }
  }
}

CheckpointContents read_checkpoint(const fs::path& dir) {
  verify_checkpoint(dir);
  CheckpointContents contents;
  const fs::path state_path = dir / kCheckpointState;
  contents.trainer_state = read_json_file(state_path);
  if (!contents.trainer_state.contains("global_step") || !contents.trainer_state["global_step"].is_number_integer()) {
    throw InputError(state_path.string() + ": missing integer 'global_step'");
  }
  contents.step = contents.trainer_state["global_step"].get<int64_t>();
  contents.weights = read_all_tensors(dir / kCheckpointWeights);
  const fs::path shard = dir / optimizer_shard_name(0);  // replicated optimizer state: rank 0's shard
  if (!fs::exists(shard)) throw InputError(shard.string() + ": missing (optimizer state)");
  contents.optimizer = read_all_tensors(shard);
  return contents;
}

void load_checkpoint_weights(model::CausalLM& lm, const fs::path& dir) {
  verify_checkpoint(dir);
  // The checkpoint holds exactly the run's trainable parameters: those the finetune method left trainable.
  std::vector<model::TensorSlot> slots;
  for (const auto& item : lm->named_parameters()) {
    if (item.value().requires_grad()) slots.push_back({item.key(), item.value()});
  }
  auto file = model::SafetensorsFile::open(dir / kCheckpointWeights);
  model::TensorMatchRules rules;
  rules.heading = "does not match the model's trainable parameters (set up the run's finetune method first)";
  model::load_named_tensors(model::NamedTensorSource::of(*file), slots, rules);
}

json run_fingerprint(const Config& config) {
  json fp;
  const fs::path model_config = fs::path(config.model.path) / "config.json";
  fp["model_config"] = {{"path", model_config.string()}, {"sha256", sha256_file(model_config)}};
  json tokenizer = json::object();
  if (config.data.format != data::Format::kTokenized) {
    const fs::path dir = tokenizer_dir(config);
    for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                             "chat_template.jinja"}) {
      if (fs::exists(dir / name)) tokenizer[name] = sha256_file(dir / name);
    }
  }
  fp["tokenizer_files"] = tokenizer;
  fp["chat_template"] = enum_name(config.data.chat_template);
  fp["data_format"] = enum_name(config.data.format);
  fp["data_direction"] = enum_name(config.data.direction);
  fp["fused_ops"] = kernels::fused_ops_choice_names(config.model.fused_ops);  // e.g. dropout changes the masks
  json data = json::array();
  for (const std::string& file : config.data.train) data.push_back({{"path", file}, {"sha256", sha256_file(file)}});
  fp["data_train"] = data;
  fp["data_eval"] = config.data.eval ? json{{"path", *config.data.eval}, {"sha256", sha256_file(*config.data.eval)}}
                                     : json(nullptr);
  return fp;
}

std::vector<std::string> fingerprint_differences(const json& saved, const json& current) {
  std::vector<std::string> out;
  auto sha = [](const json& j) { return j.is_object() ? j.value("sha256", std::string()) : std::string(); };
  if (sha(saved.value("model_config", json())) != sha(current["model_config"])) {
    out.push_back("model config.json (" + current["model_config"]["path"].get<std::string>() + ") changed");
  }
  if (saved.value("tokenizer_files", json::object()) != current["tokenizer_files"]) out.push_back("tokenizer files changed");
  if (saved.value("chat_template", std::string()) != current["chat_template"].get<std::string>()) {
    out.push_back("data.template changed from '" + saved.value("chat_template", std::string()) + "' to '" +
                  current["chat_template"].get<std::string>() + "'");
  }
  if (saved.value("data_format", std::string()) != current["data_format"].get<std::string>()) {
    out.push_back("data.format changed");
  }
  // A checkpoint from before data.direction existed was trained forward.
  if (const std::string was = saved.value("data_direction", std::string("forward")); was != current["data_direction"]) {
    out.push_back("data.direction changed from '" + was + "' to '" + current["data_direction"].get<std::string>() + "'");
  }
  // A checkpoint from before model.fused_ops was fingerprinted: not compared.
  if (saved.contains("fused_ops") && saved["fused_ops"] != current["fused_ops"]) {
    out.push_back("model.fused_ops changed from " + saved["fused_ops"].dump() + " to " + current["fused_ops"].dump());
  }
  const json saved_train = saved.value("data_train", json::array());
  const json& now_train = current["data_train"];
  if (saved_train.size() != now_train.size()) {
    out.push_back("the number of data.train files changed (" + std::to_string(saved_train.size()) + " -> " +
                  std::to_string(now_train.size()) + ")");
  } else {
    for (size_t i = 0; i < now_train.size(); ++i) {
      if (sha(saved_train[i]) != sha(now_train[i])) {
        out.push_back("data file " + now_train[i]["path"].get<std::string>() + " changed (content differs from " +
                      saved_train[i].value("path", std::string("?")) + " at checkpoint time)");
      }
    }
  }
  if (sha(saved.value("data_eval", json())) != sha(current["data_eval"])) out.push_back("data.eval file changed");
  return out;
}

json capture_rng_state() {
  json state = {{"cpu", generator_state_hex(at::detail::getDefaultCPUGenerator())}, {"cuda", json::array()}};
  if (at::hasCUDA()) {
    const int64_t devices = at::getNumGPUs();
    for (int64_t i = 0; i < devices; ++i) {
      const at::Generator& gen = at::globalContext().defaultGenerator(at::Device(at::kCUDA, static_cast<int8_t>(i)));
      state["cuda"].push_back(generator_state_hex(gen));
    }
  }
  return state;
}

void restore_rng_state(const json& state, const std::string& label) {
  if (!state.contains("cpu") || !state["cpu"].is_string()) throw InputError(label + ": rng.cpu missing");
  {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(from_hex(state["cpu"].get<std::string>(), label));
  }
  const json cuda = state.value("cuda", json::array());
  if (!cuda.empty() && at::hasCUDA()) {
    const int64_t devices = std::min<int64_t>(at::getNumGPUs(), static_cast<int64_t>(cuda.size()));
    for (int64_t i = 0; i < devices; ++i) {
      at::Generator gen = at::globalContext().defaultGenerator(at::Device(at::kCUDA, static_cast<int8_t>(i)));
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(from_hex(cuda[i].get<std::string>(), label));
    }
  }
}

}  // namespace sft
