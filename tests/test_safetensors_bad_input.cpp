// tests/test_safetensors_bad_input.cpp: every kind of malformed safetensors file (each must be an
// sft::InputError naming the file and the problem), and model directories (single file, sharded index,
// shard paths escaping the directory).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <limits>
#include <optional>

#include <nlohmann/json.hpp>

#include "common/errors.h"
#include "model/safetensors.h"
#include "tests/test_util.h"
#include "tests/safetensors_test_util.h"

namespace sft::model {
namespace {
namespace fs = std::filesystem;
using sft::test::TempDir;
using namespace test_support;

// ---- malformed files -------------------------------------------------------------------------------

// A valid two-tensor layout the bad-input tests start from: a F32[2] at [0,8], b F32[1] at [8,12].
const std::string kGoodHeader =
    "{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[1]", 8, 12) + "}";
const std::string kGoodData(12, '\x01');

TEST(SafetensorsBadInput, HandMadeBaselineIsValid) {
  TempDir tmp;
  auto file = SafetensorsFile::open(write_raw(tmp.path() / "ok.safetensors", kGoodHeader, kGoodData));
  ASSERT_EQ(file->header().tensors.size(), 2u);
  EXPECT_EQ(file->header().data_offset, 8 + kGoodHeader.size());
  EXPECT_EQ(file->load("b", at::kFloat).view(at::kInt).item<int32_t>(), 0x01010101);
}

TEST(SafetensorsBadInput, JsonKeyOrderDoesNotMatterOnlyOffsets) {
  TempDir tmp;
  // "z" comes first in the data section although JSON lists it second and names sort it last
  const std::string header = "{" + entry("a", "F32", "[2]", 4, 12) + "," + entry("z", "F32", "[]", 0, 4) + "}";
  std::string data(12, '\0');
  data[0] = 0x01;
  auto file = SafetensorsFile::open(write_raw(tmp.path() / "order.safetensors", header, data));
  EXPECT_EQ(file->header().tensors[0].name, "z");
  EXPECT_EQ(file->load("z", at::kFloat).view(at::kInt).item<int32_t>(), 1);
}

TEST(SafetensorsBadInput, TruncatedFile) {
  TempDir tmp;
  const fs::path path = tmp.path() / "cut.safetensors";
  write_safetensors(path, {{"w", at::ones({4, 4})}, {"last", at::ones({8})}});
  fs::resize_file(path, fs::file_size(path) - 5);
  expect_open_fails(path, {"tensor 'last'", "past the end of the data section", "truncated"});
}

TEST(SafetensorsBadInput, FileTooShortForLength) {
  TempDir tmp;
  const fs::path path = tmp.path() / "tiny.safetensors";
  sft::test::write_text(path, "{}\n");
  expect_open_fails(path, {"3 bytes", "too short"});
  const fs::path empty = tmp.path() / "empty.safetensors";
  sft::test::write_text(empty, "");
  expect_open_fails(empty, {"0 bytes", "too short"});
}

TEST(SafetensorsBadInput, HeaderLengthPastEndOfFile) {
  TempDir tmp;
  const fs::path path =
      write_raw(tmp.path() / "long.safetensors", kGoodHeader, kGoodData, kGoodHeader.size() + 100);
  expect_open_fails(path, {"header length " + std::to_string(kGoodHeader.size() + 100),
                           "past the end of the file"});
}

TEST(SafetensorsBadInput, OversizedHeaderLength) {
  TempDir tmp;
  const fs::path path = write_raw(tmp.path() / "huge.safetensors", kGoodHeader, kGoodData, 200'000'000);
  expect_open_fails(path, {"header length 200000000", "exceeds the limit of 100000000 bytes"});
  const fs::path max = write_raw(tmp.path() / "max.safetensors", kGoodHeader, kGoodData,
                                 std::numeric_limits<uint64_t>::max());
  expect_open_fails(max, {"header length 18446744073709551615", "exceeds the limit"});
}

TEST(SafetensorsBadInput, OverlappingOffsets) {
  TempDir tmp;
  const std::string header = "{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[1]", 4, 8) + "}";
  const fs::path path = write_raw(tmp.path() / "overlap.safetensors", header, std::string(8, '\0'));
  expect_open_fails(path, {"tensor 'b'", "[4, 8]", "overlap tensor 'a'"});
}

TEST(SafetensorsBadInput, EndPastDataSection) {
  TempDir tmp;
  const std::string header = "{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[1]", 12, 16) + "}";
  const fs::path path = write_raw(tmp.path() / "range.safetensors", header, std::string(12, '\0'));
  expect_open_fails(path, {"tensor 'b'", "[12, 16]", "past the end of the data section (12 bytes"});
}

TEST(SafetensorsBadInput, BeginAfterEnd) {
  TempDir tmp;
  const std::string header = "{" + entry("a", "F32", "[1]", 4, 0) + "}";
  const fs::path path = write_raw(tmp.path() / "reversed.safetensors", header, std::string(4, '\0'));
  expect_open_fails(path, {"tensor 'a'", "begin > end"});
}

TEST(SafetensorsBadInput, HoleBetweenTensors) {
  TempDir tmp;
  const std::string header = "{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[1]", 12, 16) + "}";
  const fs::path path = write_raw(tmp.path() / "hole.safetensors", header, std::string(16, '\0'));
  expect_open_fails(path, {"tensor 'b'", "hole of 4 bytes", "'a'"});
  const std::string late_start = "{" + entry("a", "F32", "[1]", 4, 8) + "}";
  const fs::path start = write_raw(tmp.path() / "start.safetensors", late_start, std::string(8, '\0'));
  expect_open_fails(start, {"tensor 'a'", "hole of 4 bytes", "start of the data section"});
}

TEST(SafetensorsBadInput, TrailingBytes) {
  TempDir tmp;
  const fs::path path = write_raw(tmp.path() / "trail.safetensors", kGoodHeader, kGoodData + "XYZW");
  expect_open_fails(path, {"4 trailing bytes", "'b'"});
}

TEST(SafetensorsBadInput, UnknownDtype) {
  TempDir tmp;
  const std::string header = "{" + entry("w", "F7", "[1]", 0, 4) + "}";
  expect_open_fails(write_raw(tmp.path() / "f7.safetensors", header, std::string(4, '\0')),
                    {"tensor 'w'", "unknown dtype 'F7'", "BF16"});
  const std::string fp8 = "{" + entry("w", "F8_E4M3", "[4]", 0, 4) + "}";
  expect_open_fails(write_raw(tmp.path() / "fp8.safetensors", fp8, std::string(4, '\0')),
                    {"tensor 'w'", "unsupported dtype 'F8_E4M3'"});
}

TEST(SafetensorsBadInput, ShapeOverflow) {
  TempDir tmp;
  const std::string elements = "{" + entry("w", "F32", "[1099511627776,1099511627776]", 0, 4) + "}";
  expect_open_fails(write_raw(tmp.path() / "numel.safetensors", elements, std::string(4, '\0')),
                    {"tensor 'w'", "overflows 64-bit element count"});
  // 2^62 elements fit, 2^62 * 4 bytes do not
  const std::string bytes = "{" + entry("w", "F32", "[4611686018427387904]", 0, 4) + "}";
  expect_open_fails(write_raw(tmp.path() / "bytes.safetensors", bytes, std::string(4, '\0')),
                    {"tensor 'w'", "overflows 64-bit byte count"});
  const std::string dim = "{" + entry("w", "F32", "[9223372036854775808,0]", 0, 0) + "}";
  expect_open_fails(write_raw(tmp.path() / "dim.safetensors", dim, ""), {"tensor 'w'", "too large"});
}

TEST(SafetensorsBadInput, NumelBytesMismatch) {
  TempDir tmp;
  const std::string header = "{" + entry("w", "F32", "[3]", 0, 8) + "}";
  expect_open_fails(write_raw(tmp.path() / "mismatch.safetensors", header, std::string(8, '\0')),
                    {"tensor 'w'", "span 8 bytes", "needs 12 bytes"});
}

TEST(SafetensorsBadInput, InvalidJson) {
  TempDir tmp;
  expect_open_fails(write_raw(tmp.path() / "cut.safetensors", "{\"a\": {\"dtype\"", ""),
                    {"header is not valid JSON"});
  expect_open_fails(write_raw(tmp.path() / "array.safetensors", "[1, 2]  ", ""), {"not a JSON object"});
  expect_open_fails(write_raw(tmp.path() / "utf8.safetensors", "{\"\xff\":{}}", ""),
                    {"header is not valid JSON"});
  expect_open_fails(write_raw(tmp.path() / "entry.safetensors", "{\"w\": 5}", ""),
                    {"tensor 'w'", "not a JSON object"});
  expect_open_fails(write_raw(tmp.path() / "neg.safetensors", "{" + entry("w", "F32", "[-1]", 0, 0) + "}", ""),
                    {"tensor 'w'", "non-negative integers"});
  expect_open_fails(write_raw(tmp.path() / "nooff.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[]}}", ""),
                    {"tensor 'w'", "missing 'data_offsets'"});
}

TEST(SafetensorsBadInput, DeeplyNestedJsonStopsEarly) {
  TempDir tmp;
  const size_t depth = 1'000'000;  // would build a huge tree (and recurse when printed) if accepted
  const std::string header = "{\"w\":" + std::string(depth, '[') + std::string(depth, ']') + "}";
  expect_open_fails(write_raw(tmp.path() / "deep.safetensors", header, ""), {"nests deeper than 16 levels"});
}

TEST(SafetensorsBadInput, MetadataMustMapStringsToStrings) {
  TempDir tmp;
  expect_open_fails(write_raw(tmp.path() / "meta.safetensors", "{\"__metadata__\":{\"step\":12}}", ""),
                    {"__metadata__", "'step'", "not a string"});
  expect_open_fails(write_raw(tmp.path() / "meta2.safetensors", "{\"__metadata__\":[\"x\"]}", ""),
                    {"__metadata__ is not a JSON object"});
}

TEST(SafetensorsBadInput, DuplicateTensorNames) {
  TempDir tmp;
  const std::string header = "{" + entry("w", "F32", "[1]", 0, 4) + "," + entry("w", "F32", "[1]", 4, 8) + "}";
  expect_open_fails(write_raw(tmp.path() / "dup.safetensors", header, std::string(8, '\0')),
                    {"duplicate tensor name 'w'"});
  const std::string key = "{\"w\":{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[],\"data_offsets\":[0,4]}}";
  expect_open_fails(write_raw(tmp.path() / "dupkey.safetensors", key, std::string(4, '\0')),
                    {"'w'", "duplicate key 'dtype'"});
}

TEST(SafetensorsBadInput, MissingFileAndAbsentTensor) {
  TempDir tmp;
  const fs::path missing = tmp.path() / "missing.safetensors";
  expect_open_fails(missing, {"cannot open"});
  const fs::path path = write_raw(tmp.path() / "ok.safetensors", kGoodHeader, kGoodData);
  auto file = SafetensorsFile::open(path);
  expect_mentions(input_error_of([&] { file->load("nope", at::kFloat); }), {path.string(), "'nope'"});
}

TEST(SafetensorsBadInput, IntegerTensorOnlyLoadsAsItself) {
  TempDir tmp;
  const fs::path path = tmp.path() / "int.safetensors";
  write_safetensors(path, {{"step", at::tensor(std::vector<int64_t>{5}, at::kLong)}});
  auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file->load("step", at::kLong).item<int64_t>(), 5);
  expect_mentions(input_error_of([&] { file->load("step", at::kFloat); }),
                  {path.string(), "'step'", "I64", "Float"});
}

// ---- model directories -----------------------------------------------------------------------------

struct ShardedDir {
  TempDir tmp;
  fs::path dir() const { return tmp.path(); }
  fs::path index() const { return tmp.path() / "model.safetensors.index.json"; }
  void write_index(const nlohmann::json& weight_map) const {
    nlohmann::json root = {{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}};
    sft::test::write_text(index(), root.dump(2));
  }
  // two valid shards: s1 holds a, b; s2 holds c
  ShardedDir() {
    write_safetensors(dir() / "s1.safetensors", {{"b", at::full({2}, 2.0)}, {"a", at::full({3}, 1.0)}});
    write_safetensors(dir() / "s2.safetensors", {{"c", at::full({1, 2}, 3.0, at::kDouble)}});
  }
};

void expect_checkpoint_fails(const fs::path& dir, std::initializer_list<std::string> fragments) {
  expect_mentions(input_error_of([&] { CheckpointFiles::open(dir); }), fragments);
}

TEST(SafetensorsCheckpoint, SingleFile) {
  TempDir tmp;
  write_safetensors(tmp.path() / "model.safetensors", {{"z", at::ones({2})}, {"y", at::zeros({1}, at::kHalf)}});
  auto files = CheckpointFiles::open(tmp.path());
  EXPECT_EQ(files.tensor_names(), (std::vector<std::string>{"y", "z"}));
  EXPECT_TRUE(files.contains("z"));
  EXPECT_FALSE(files.contains("x"));
  EXPECT_EQ(files.info("y").dtype, StDType::F16);
  EXPECT_EQ(files.file_of("z"), (tmp.path() / "model.safetensors").string());
  EXPECT_TRUE(at::equal(files.load("y", at::kFloat), at::zeros({1})));
  expect_mentions(input_error_of([&] { files.load("x", at::kFloat); }), {tmp.path().string(), "'x'"});
  expect_mentions(input_error_of([&] { files.info("x"); }), {"'x'"});
}

TEST(SafetensorsCheckpoint, ShardedIndex) {
  ShardedDir d;
  d.write_index({{"a", "s1.safetensors"}, {"b", "s1.safetensors"}, {"c", "s2.safetensors"}});
  auto files = CheckpointFiles::open(d.dir());
  EXPECT_EQ(files.tensor_names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(files.file_of("a"), (d.dir() / "s1.safetensors").string());
  EXPECT_EQ(files.file_of("c"), (d.dir() / "s2.safetensors").string());
  EXPECT_TRUE(at::equal(files.load("a", at::kFloat), at::full({3}, 1.0)));
  EXPECT_TRUE(at::equal(files.load("c", at::kBFloat16), at::full({1, 2}, 3.0, at::kBFloat16)));
  EXPECT_EQ(files.info("c").shape, (std::vector<int64_t>{1, 2}));
}

TEST(SafetensorsCheckpoint, SymlinkInsideDirectoryIsAllowed) {
  ShardedDir d;
  fs::create_symlink("s2.safetensors", d.dir() / "link.safetensors");
  d.write_index({{"a", "s1.safetensors"}, {"b", "s1.safetensors"}, {"c", "link.safetensors"}});
  auto files = CheckpointFiles::open(d.dir());
  EXPECT_TRUE(at::equal(files.load("c", at::kDouble), at::full({1, 2}, 3.0, at::kDouble)));
}

TEST(SafetensorsCheckpoint, ShardAbsolutePathRejected) {
  ShardedDir d;
  TempDir outside;
  write_safetensors(outside.path() / "x.safetensors", {{"c", at::ones({1})}});
  const std::string absolute = (outside.path() / "x.safetensors").string();
  d.write_index({{"a", "s1.safetensors"}, {"b", "s1.safetensors"}, {"c", absolute}});
  expect_checkpoint_fails(d.dir(), {d.index().string(), "'" + absolute + "'", "'c'", "absolute path"});
}

TEST(SafetensorsCheckpoint, ShardDotDotRejected) {
  ShardedDir d;
  d.write_index({{"a", "s1.safetensors"}, {"c", "../" + d.dir().filename().string() + "/s2.safetensors"}});
  expect_checkpoint_fails(d.dir(), {d.index().string(), "'c'", "path separator"});
  d.write_index({{"a", "s1.safetensors"}, {"c", ".."}});
  expect_checkpoint_fails(d.dir(), {d.index().string(), "shard '..'", "not allowed"});
}

TEST(SafetensorsCheckpoint, ShardPathSeparatorRejected) {
  ShardedDir d;
  fs::create_directories(d.dir() / "sub");
  write_safetensors(d.dir() / "sub" / "s3.safetensors", {{"c", at::ones({1})}});
  d.write_index({{"a", "s1.safetensors"}, {"c", "sub/s3.safetensors"}});
  expect_checkpoint_fails(d.dir(), {d.index().string(), "shard 'sub/s3.safetensors'", "path separator"});
}

TEST(SafetensorsCheckpoint, ShardSymlinkOutsideRejected) {
  ShardedDir d;
  TempDir outside;
  write_safetensors(outside.path() / "x.safetensors", {{"c", at::ones({1})}});
  fs::create_symlink(outside.path() / "x.safetensors", d.dir() / "evil.safetensors");
  d.write_index({{"a", "s1.safetensors"}, {"c", "evil.safetensors"}});
  expect_checkpoint_fails(d.dir(), {d.index().string(), "shard 'evil.safetensors'", "symlink leading outside"});
}

TEST(SafetensorsCheckpoint, MissingShardFile) {
  ShardedDir d;
  d.write_index({{"a", "s1.safetensors"}, {"c", "s9.safetensors"}});
  expect_checkpoint_fails(d.dir(), {d.index().string(), "shard 's9.safetensors'", "'c'", "missing"});
}

TEST(SafetensorsCheckpoint, TensorAbsentFromItsShard) {
  ShardedDir d;
  d.write_index({{"a", "s1.safetensors"}, {"zz", "s2.safetensors"}});
  expect_checkpoint_fails(d.dir(), {d.index().string(), "tensor 'zz'", "absent from",
                                    (d.dir() / "s2.safetensors").string()});
}

TEST(SafetensorsCheckpoint, TensorInTwoShards) {
  ShardedDir d;
  write_safetensors(d.dir() / "s3.safetensors", {{"a", at::ones({3})}});
  d.write_index({{"a", "s1.safetensors"}, {"c", "s3.safetensors"}});
  expect_checkpoint_fails(d.dir(), {d.index().string(), "tensor 'a'", "present in two shards"});
}

TEST(SafetensorsCheckpoint, NoWeightFiles) {
  TempDir tmp;
  expect_checkpoint_fails(tmp.path(), {tmp.path().string(), "neither model.safetensors nor"});
  expect_checkpoint_fails(tmp.path() / "nope", {(tmp.path() / "nope").string(), "not a directory"});
}

TEST(SafetensorsCheckpoint, BadIndexFile) {
  ShardedDir d;
  sft::test::write_text(d.index(), "{\"weight_map\": {\"a\": ");
  expect_checkpoint_fails(d.dir(), {d.index().string(), "invalid JSON"});
  sft::test::write_text(d.index(), "{\"metadata\": {}}");
  expect_checkpoint_fails(d.dir(), {d.index().string(), "missing 'weight_map'"});
  sft::test::write_text(d.index(), "{\"weight_map\": {\"a\": \"s1.safetensors\", \"a\": \"s2.safetensors\"}}");
  expect_checkpoint_fails(d.dir(), {d.index().string(), "duplicate key 'a'"});
  sft::test::write_text(d.index(), "{\"weight_map\": {\"a\": 7}}");
  expect_checkpoint_fails(d.dir(), {d.index().string(), "'a'", "not a file name"});
}

TEST(SafetensorsCheckpoint, BadShardNamesTheShard) {
  ShardedDir d;
  sft::test::write_text(d.dir() / "s2.safetensors", "garbage-garbage");
  d.write_index({{"a", "s1.safetensors"}, {"c", "s2.safetensors"}});
  expect_checkpoint_fails(d.dir(), {(d.dir() / "s2.safetensors").string(), "header length"});
}

}  // namespace
}  // namespace sft::model
