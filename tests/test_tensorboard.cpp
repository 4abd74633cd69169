// tests/test_tensorboard.cpp: CRC32C against the published check values (RFC 3720 B.4 and the
// "123456789" check value), TFRecord framing round trips, a torn tail is dropped, a resumed writer
// removes an earlier attempt's steps after the resume step, and our protobuf-lite and the one inside
// Debian's libsentencepiece work side by side in one process (CMakeLists.txt). tests/python/test_tensorboard.py reads real
// runs with TensorBoard's own event reader.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <string>

#include "data/tokenizer.h"
#include "test_util.h"
#include "trainer/tensorboard.h"

namespace sft {
namespace {

namespace fs = std::filesystem;

TEST(TensorBoard, Crc32cCheckValues) {
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  const std::string zeros(32, '\0'), ones(32, '\xFF');
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);  // RFC 3720 B.4
  EXPECT_EQ(crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  EXPECT_EQ(masked_crc32c("", 0), ((0u >> 15) | (0u << 17)) + 0xA282EAD8u);
}

std::vector<ScalarEvent> events_in(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir)) files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  std::vector<ScalarEvent> events;
  for (const fs::path& file : files) {
    bool complete = false;
    for (ScalarEvent& e : read_event_file(file, &complete)) events.push_back(std::move(e));
    EXPECT_TRUE(complete) << file;
  }
  return events;
}

TEST(TensorBoard, FramingRoundTripsAndATornTailIsDropped) {
  test::TempDir dir;
  const fs::path file = dir.path() / "records";
  test::write_text(file, frame_tfrecord("first") + frame_tfrecord(std::string(300, 'x')) + frame_tfrecord("third").substr(0, 9));
  const TfRecords records = read_tfrecords(file);
  EXPECT_FALSE(records.complete);
  ASSERT_EQ(records.records.size(), 2u);
  EXPECT_EQ(records.records[0], "first");
  EXPECT_EQ(records.records[1], std::string(300, 'x'));
  std::string corrupt = frame_tfrecord("abc");
  corrupt[13] ^= 1;  // a data byte: the data CRC no longer matches
  test::write_text(file, corrupt);
  EXPECT_TRUE(read_tfrecords(file).records.empty());
}

TEST(TensorBoard, ResumeDropsLaterStepsAndNeverRepeatsOne) {
  test::TempDir dir;
  {
    TensorBoardWriter first(dir.path(), 0);
    for (int64_t step = 1; step <= 6; ++step) first.write_scalars(step, {{"train/loss", 1.0 / step}});
    first.write_scalars(4, {{"eval/loss", 0.5}});
  }
  {
    TensorBoardWriter resumed(dir.path(), 4);      // checkpoint 4: steps 5 and 6 are written again
    resumed.write_scalars(4, {{"eval/loss", 9.0}});  // already on disk at step 4: skipped
    for (int64_t step = 5; step <= 7; ++step) resumed.write_scalars(step, {{"train/loss", 2.0 / step}});
  }
  std::vector<std::pair<std::string, int64_t>> seen;
  std::vector<float> values;
  for (const ScalarEvent& e : events_in(dir.path())) {
    if (!e.has_summary) {
      EXPECT_EQ(e.file_version, "brain.Event:2");
      continue;
    }
    for (const auto& [tag, value] : e.values) {
      seen.emplace_back(tag, e.step);
      values.push_back(value);
    }
  }
  const std::vector<std::pair<std::string, int64_t>> expected{
      {"train/loss", 1}, {"train/loss", 2}, {"train/loss", 3}, {"train/loss", 4}, {"eval/loss", 4},
      {"train/loss", 5}, {"train/loss", 6}, {"train/loss", 7}};
  EXPECT_EQ(seen, expected);
  EXPECT_FLOAT_EQ(values[4], 0.5f);
  EXPECT_FLOAT_EQ(values[5], 2.0f / 5);
  // A fresh run (start step 0) leaves no earlier file behind.
  { TensorBoardWriter fresh(dir.path(), 0); }
  for (const ScalarEvent& e : events_in(dir.path())) EXPECT_FALSE(e.has_summary);
}

// Two protobuf-lite runtimes in one process: sentencepiece parses its model with its own, we write and
// read events with ours, in either order. Crossed, either would crash.
TEST(TensorBoard, CoexistsWithSentencePiece) {
  test::TempDir dir;
  {
    TensorBoardWriter writer(dir.path(), 0);
    writer.write_scalars(1, {{"train/loss", 2.5}});
  }
  const auto tokenizer = data::load_tokenizer(test::assets_dir() / "tokenizers" / "llama2-sp");
  EXPECT_EQ(tokenizer->encode_ids("Hello world"), (std::vector<int32_t>{15043, 3186}));
  {
    TensorBoardWriter writer(dir.path(), 1);
    writer.write_scalars(2, {{"train/loss", 1.5}});
  }
  const std::vector<ScalarEvent> events = events_in(dir.path());
  ASSERT_EQ(events.size(), 4u);  // header, step 1, header, step 2
  EXPECT_EQ(events[3].step, 2);
  ASSERT_EQ(events[3].values.size(), 1u);
  EXPECT_FLOAT_EQ(events[3].values[0].second, 1.5f);
  EXPECT_EQ(data::load_tokenizer(test::assets_dir() / "tokenizers" / "llama2-sp")->decode({15043, 3186}), "Hello world");
}

}  // namespace
}  // namespace sft
