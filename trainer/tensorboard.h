// trainer/tensorboard.h: TensorBoard event files for scalar summaries. An event file is a sequence of
// TFRecords (uint64 length, masked CRC32C of the length, the serialized tensorboard.Event, masked CRC32C
// of the data); the Event protos come from trainer/tensorboard_event.proto (Debian protobuf) and the
// CRC32C from Debian's ISA-L. TensorBoard reads the files of a directory in name order, so each run or
// resumed attempt writes a new file named after its start time.
#pragma once
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#define SFT_TENSORBOARD_API __attribute__((visibility("default")))

namespace sft {

// CRC32C (Castagnoli) of `size` bytes, and TFRecord's masked form of a CRC.
SFT_TENSORBOARD_API uint32_t crc32c(const void* data, size_t size);
SFT_TENSORBOARD_API uint32_t masked_crc32c(const void* data, size_t size);

// The records of one TFRecord file, in order. Reading stops at the first torn or corrupt record (a run
// killed mid-write leaves one at the end); `complete` says whether the whole file was valid.
struct TfRecords {
  std::vector<std::string> records;
  bool complete = true;
};
SFT_TENSORBOARD_API TfRecords read_tfrecords(const std::filesystem::path& path);
SFT_TENSORBOARD_API std::string frame_tfrecord(const std::string& data);  // length + crc + data + crc

// One decoded tensorboard.Event, the parts we write: the file header (file_version) or scalars.
struct ScalarEvent {
  double wall_time = 0;
  int64_t step = 0;
  std::string file_version;                           // set in a file's first event only
  bool has_summary = false;
  std::vector<std::pair<std::string, float>> values;  // (tag, simple_value)
};
// The events of one event file (up to a torn or corrupt record). Keeps protobuf inside this library:
// LibTorch's include directory carries protobuf headers of its own, so no torch-including file may
// include the generated header.
SFT_TENSORBOARD_API std::vector<ScalarEvent> read_event_file(const std::filesystem::path& path, bool* complete = nullptr);

// Writes scalars of one run into `dir` (output_dir/tensorboard). Only one process may write a run's
// directory (rank 0): the caller decides, by constructing a writer or not.
class SFT_TENSORBOARD_API TensorBoardWriter {
 public:
  // Opens a new event file in `dir` for a run that starts after optimizer step `start_step` (0 for a
  // fresh run, k when resuming from checkpoint k). Records that earlier attempts wrote for steps after
  // `start_step` are removed from their files first (as metrics.jsonl is truncated on resume), and files
  // left with no scalar are deleted, so every (tag, step) appears once across the directory.
  TensorBoardWriter(const std::filesystem::path& dir, int64_t start_step);

  // One Event at `step` holding every (tag, value); flushed at once, so a killed run keeps what it wrote.
  // A tag already on disk at this step or a later one (only possible right at the resume step) is skipped.
  void write_scalars(int64_t step, const std::vector<std::pair<std::string, double>>& scalars);

  const std::filesystem::path& file() const { return file_; }

 private:
  void write_event(const std::string& serialized);
  std::filesystem::path file_;
  std::ofstream out_;
  std::map<std::string, int64_t> last_step_;  // per tag: the newest step already in the directory
};

}  // namespace sft
