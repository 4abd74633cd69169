// trainer/tensorboard.cpp: TFRecord framing (CRC32C from ISA-L), the event-file writer, and the pruning
// of earlier attempts' records on resume.
#include "trainer/tensorboard.h"

#include <isa-l/crc.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "trainer/tensorboard_event.pb.h"

namespace sft {
namespace fs = std::filesystem;

namespace {

constexpr const char* kFileVersion = "brain.Event:2";  // TensorBoard's current event-file version
constexpr const char* kEventFilePrefix = "events.out.tfevents.";

double unix_time_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

void put_le(std::string& out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xFF));
}

uint64_t get_le(const char* in, int bytes) {
  uint64_t value = 0;
  for (int i = 0; i < bytes; ++i) value |= static_cast<uint64_t>(static_cast<unsigned char>(in[i])) << (8 * i);
  return value;
}

bool is_event_file(const fs::path& path) {
  return path.filename().string().rfind(kEventFilePrefix, 0) == 0 && path.extension() != ".tmp";
}

// The files earlier attempts wrote, in the order TensorBoard reads them (by name).
std::vector<fs::path> event_files(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.is_regular_file() && is_event_file(entry.path())) files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

void write_file_atomically(const fs::path& path, const std::string& bytes) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out.flush()) throw std::runtime_error("cannot write " + tmp.string());
  }
  fs::rename(tmp, path);
}

// Drops the records of `path` after `start_step` (and a torn tail), deleting the file when no scalar is
// left. Records the newest step per tag of what is kept in `last_step`.
void prune_event_file(const fs::path& path, int64_t start_step, std::map<std::string, int64_t>& last_step) {
  const TfRecords file = read_tfrecords(path);
  std::string kept;
  bool dropped = !file.complete, has_scalars = false;
  for (const std::string& record : file.records) {
    tensorboard::Event event;
    if (!event.ParseFromString(record)) {  // CRC-valid but not an Event: not ours to keep
      dropped = true;
      continue;
    }
    if (event.has_summary()) {
      if (event.step() > start_step) {
        dropped = true;
        continue;
      }
      has_scalars = true;
      for (const auto& value : event.summary().value()) {
        int64_t& newest = last_step.try_emplace(value.tag(), event.step()).first->second;
        newest = std::max(newest, event.step());
      }
    }
    kept += frame_tfrecord(record);
  }
  if (!has_scalars) {
    fs::remove(path);
  } else if (dropped) {
    write_file_atomically(path, kept);
  }
}

std::string host_name() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

}  // namespace

uint32_t crc32c(const void* data, size_t size) {
  // ISA-L's crc32_iscsi applies no pre/post inversion; CRC32C as TFRecord (and iSCSI) define it does.
  uint32_t crc = 0xFFFFFFFFu;
  const auto* bytes = static_cast<const unsigned char*>(data);
  while (size > 0) {  // crc32_iscsi takes an int length
    const int chunk = static_cast<int>(std::min<size_t>(size, 1u << 30));
    crc = crc32_iscsi(const_cast<unsigned char*>(bytes), chunk, crc);
    bytes += chunk;
    size -= static_cast<size_t>(chunk);
  }
  return crc ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(const void* data, size_t size) {
  const uint32_t crc = crc32c(data, size);
  return ((crc >> 15) | (crc << 17)) + 0xA282EAD8u;
}

std::string frame_tfrecord(const std::string& data) {
  std::string header;
  put_le(header, data.size(), 8);
  std::string out = header;
  put_le(out, masked_crc32c(header.data(), header.size()), 4);
  out += data;
  put_le(out, masked_crc32c(data.data(), data.size()), 4);
  return out;
}

TfRecords read_tfrecords(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path.string());
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  TfRecords result;
  size_t at = 0;
  while (at < bytes.size()) {
    if (bytes.size() - at < 12) break;
    const uint64_t length = get_le(&bytes[at], 8);
    if (get_le(&bytes[at + 8], 4) != masked_crc32c(&bytes[at], 8)) break;
    if (bytes.size() - at - 12 < length || bytes.size() - at - 12 - length < 4) break;
    const char* data = &bytes[at + 12];
    if (get_le(data + length, 4) != masked_crc32c(data, length)) break;
    result.records.emplace_back(data, length);
    at += 12 + length + 4;
  }
  result.complete = at == bytes.size();
  return result;
}

std::vector<ScalarEvent> read_event_file(const fs::path& path, bool* complete) {
  const TfRecords file = read_tfrecords(path);
  if (complete) *complete = file.complete;
  std::vector<ScalarEvent> events;
  for (const std::string& record : file.records) {
    tensorboard::Event event;
    if (!event.ParseFromString(record)) break;
    ScalarEvent& out = events.emplace_back();
    out.wall_time = event.wall_time();
    out.step = event.step();
    out.file_version = event.file_version();
    out.has_summary = event.has_summary();
    for (const auto& value : event.summary().value()) out.values.emplace_back(value.tag(), value.simple_value());
  }
  return events;
}

TensorBoardWriter::TensorBoardWriter(const fs::path& dir, int64_t start_step) {
  fs::create_directories(dir);
  for (const fs::path& old : event_files(dir)) prune_event_file(old, start_step, last_step_);
  // TensorBoard reads a directory's files in name order and draws the points in that order: the start
  // time leads, then the start step (two attempts within one second), so a resumed attempt's file sorts
  // after the files it continues.
  char stamp[64];
  std::snprintf(stamp, sizeof(stamp), "%010lld.", static_cast<long long>(unix_time_s()));
  char step[32];
  std::snprintf(step, sizeof(step), ".%010lld.", static_cast<long long>(start_step));
  const std::string base = std::string(kEventFilePrefix) + stamp + host_name() + step + std::to_string(getpid());
  file_ = dir / base;
  for (int n = 1; fs::exists(file_); ++n) file_ = dir / (base + "." + std::to_string(n));
  out_.open(file_, std::ios::binary | std::ios::trunc);
  if (!out_) throw std::runtime_error("cannot open " + file_.string() + " for writing");
  tensorboard::Event header;
  header.set_wall_time(unix_time_s());
  header.set_file_version(kFileVersion);
  write_event(header.SerializeAsString());
}

void TensorBoardWriter::write_scalars(int64_t step, const std::vector<std::pair<std::string, double>>& scalars) {
  tensorboard::Event event;
  event.set_wall_time(unix_time_s());
  event.set_step(step);
  tensorboard::Summary* summary = event.mutable_summary();
  for (const auto& [tag, value] : scalars) {
    auto newest = last_step_.find(tag);
    if (newest != last_step_.end() && newest->second >= step) continue;
    last_step_[tag] = step;
    tensorboard::Summary::Value* entry = summary->add_value();
    entry->set_tag(tag);
    entry->set_simple_value(static_cast<float>(value));  // TensorBoard scalars are float32
  }
  if (summary->value_size() == 0) return;
  write_event(event.SerializeAsString());
}

void TensorBoardWriter::write_event(const std::string& serialized) {
  const std::string record = frame_tfrecord(serialized);
  out_.write(record.data(), static_cast<std::streamsize>(record.size()));
  out_.flush();
  if (!out_) throw std::runtime_error("cannot write " + file_.string() + " (disk full?)");
}

}  // namespace sft
