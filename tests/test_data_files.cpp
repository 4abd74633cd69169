// tests/test_data_files.cpp: the data files people have: JSON arrays (.json), gzip (.jsonl.gz, .json.gz)
// besides JSON Lines. The same examples read from every form give the same conversations; bad input
// (truncated gzip, non-object array elements, mixed formats, a non-array .json) is an sft::InputError
// naming the file and the line or array index; `sft data` reads them and exits 2 on bad ones.
#include <gtest/gtest.h>
#include <zlib.h>

#include <fstream>
#include <string>
#include <vector>

#include "common/errors.h"
#include "data/formats.h"
#include "data/text_source.h"
#include "test_util.h"

namespace sft::data {
namespace {

namespace fs = std::filesystem;

const char* kAlpacaLines =
    "{\"instruction\": \"Capital of France?\", \"output\": \"Paris\"}\n"
    "{\"instruction\": \"Translate\", \"input\": \"chat\", \"output\": \"cat\", \"system\": \"Be brief.\"}\n";

// The same two examples as one pretty-printed JSON array, as alpaca_data.json is laid out.
const char* kAlpacaArray =
    "[\n"
    "  {\n    \"instruction\": \"Capital of France?\",\n    \"input\": \"\",\n    \"output\": \"Paris\"\n  },\n"
    "  {\n    \"instruction\": \"Translate\",\n    \"input\": \"chat\",\n    \"output\": \"cat\",\n"
    "    \"system\": \"Be brief.\"\n  }\n"
    "]\n";

void write_gzip(const fs::path& path, const std::string& text) {
  gzFile file = gzopen(path.c_str(), "wb");
  ASSERT_NE(file, nullptr);
  ASSERT_EQ(gzwrite(file, text.data(), static_cast<unsigned>(text.size())), static_cast<int>(text.size()));
  ASSERT_EQ(gzclose(file), Z_OK);
}

std::string error_of(const fs::path& path, bool skip_invalid = false) {
  try {
    read_data_file(path, Format::kAuto, skip_invalid);
  } catch (const InputError& e) {
    return e.what();
  }
  ADD_FAILURE() << path << ": no InputError";
  return "";
}

std::vector<std::vector<std::pair<Role, std::string>>> turns(const FileReadResult& r) {
  std::vector<std::vector<std::pair<Role, std::string>>> out;
  for (const Conversation& c : r.conversations) {
    out.emplace_back();
    for (const Message& m : c.messages) out.back().emplace_back(m.role, m.content);
  }
  return out;
}

TEST(DataFiles, JsonArrayAndGzipGiveTheSameExamplesAsJsonl) {
  test::TempDir dir;
  test::write_text(dir.path() / "a.jsonl", kAlpacaLines);
  test::write_text(dir.path() / "a.json", kAlpacaArray);
  write_gzip(dir.path() / "b.jsonl.gz", kAlpacaLines);
  write_gzip(dir.path() / "b.json.gz", kAlpacaArray);
  const FileReadResult lines = read_data_file(dir.path() / "a.jsonl", Format::kAuto, false);
  ASSERT_EQ(lines.conversations.size(), 2u);
  const std::vector<std::pair<Role, std::string>> second{
      {Role::kSystem, "Be brief."}, {Role::kUser, "Translate\nchat"}, {Role::kAssistant, "cat"}};
  EXPECT_EQ(turns(lines)[1], second);
  for (const char* name : {"a.json", "b.jsonl.gz", "b.json.gz"}) {
    const FileReadResult r = read_data_file(dir.path() / name, Format::kAuto, false);
    EXPECT_EQ(r.format, Format::kAlpaca) << name;
    EXPECT_EQ(r.lines, 2) << name;
    EXPECT_EQ(turns(r), turns(lines)) << name;
  }
  const std::string json = (dir.path() / "a.json").string();
  const FileReadResult array = read_data_file(json, Format::kAuto, false);
  EXPECT_EQ(array.conversations[0].source, json + "[0]");
  EXPECT_EQ(array.conversations[1].source, json + "[1]");
  const std::string gz = (dir.path() / "b.jsonl.gz").string();
  EXPECT_EQ(read_data_file(gz, Format::kAuto, false).conversations[1].source, gz + ":2");
}

TEST(DataFiles, ShareGptArrayAsLlamaFactoryShipsIt) {
  test::TempDir dir;
  test::write_text(dir.path() / "glaive.json",
                   "[{\"conversations\": [{\"from\": \"human\", \"value\": \"Hi\"}, {\"from\": \"gpt\", \"value\": \"Hello\"}],"
                   " \"system\": \"S\"}]");
  const FileReadResult r = read_data_file(dir.path() / "glaive.json", Format::kAuto, false);
  EXPECT_EQ(r.format, Format::kShareGpt);
  const std::vector<std::pair<Role, std::string>> expected{
      {Role::kSystem, "S"}, {Role::kUser, "Hi"}, {Role::kAssistant, "Hello"}};
  EXPECT_EQ(turns(r)[0], expected);
}

TEST(DataFiles, JsonFileHoldingJsonLinesIsReadAsJsonLines) {
  test::TempDir dir;
  test::write_text(dir.path() / "lines.json", kAlpacaLines);
  const FileReadResult r = read_data_file(dir.path() / "lines.json", Format::kAuto, false);
  ASSERT_EQ(r.conversations.size(), 2u);
  EXPECT_EQ(r.conversations[1].source, (dir.path() / "lines.json").string() + ":2");
}

TEST(DataFilesBadInput, TruncatedGzip) {
  test::TempDir dir;
  std::string big;
  for (int i = 0; i < 2000; ++i) big += kAlpacaLines;
  write_gzip(dir.path() / "full.jsonl.gz", big);
  std::ifstream in(dir.path() / "full.jsonl.gz", std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  test::write_text(dir.path() / "cut.jsonl.gz", bytes.substr(0, bytes.size() / 2));
  const std::string msg = error_of(dir.path() / "cut.jsonl.gz", /*skip_invalid=*/true);
  EXPECT_NE(msg.find((dir.path() / "cut.jsonl.gz").string() + ": truncated gzip data"), std::string::npos) << msg;
  // Losing only the 8-byte trailer (CRC and length) is truncation too.
  test::write_text(dir.path() / "trailer.json.gz", bytes.substr(0, bytes.size() - 4));
  EXPECT_NE(error_of(dir.path() / "trailer.json.gz").find("truncated gzip data"), std::string::npos);
}

TEST(DataFilesBadInput, CorruptAndNonGzipData) {
  test::TempDir dir;
  test::write_text(dir.path() / "plain.jsonl.gz", kAlpacaLines);
  std::string msg = error_of(dir.path() / "plain.jsonl.gz");
  EXPECT_NE(msg.find("plain.jsonl.gz: not gzip data"), std::string::npos) << msg;
  write_gzip(dir.path() / "bad.jsonl.gz", kAlpacaLines);
  std::fstream f(dir.path() / "bad.jsonl.gz", std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(14);
  f.put('\xFF').put('\xFF').put('\xFF');
  f.close();
  msg = error_of(dir.path() / "bad.jsonl.gz");
  EXPECT_NE(msg.find("bad.jsonl.gz: corrupt gzip data"), std::string::npos) << msg;
}

TEST(DataFilesBadInput, ArrayWithANonObjectElement) {
  test::TempDir dir;
  const fs::path path = dir.path() / "a.json";
  test::write_text(path, "[{\"prompt\": \"p\", \"response\": \"r\"}, 42, {\"prompt\": \"q\", \"response\": \"s\"}]");
  const std::string msg = error_of(path);
  EXPECT_NE(msg.find(path.string() + "[1]: an array element must be an example object (got number)"), std::string::npos)
      << msg;
  // With skip_invalid it is counted, and the rest is kept.
  const FileReadResult r = read_data_file(path, Format::kAuto, true);
  EXPECT_EQ(r.conversations.size(), 2u);
  ASSERT_EQ(r.invalid.size(), 1u);
  EXPECT_EQ(r.invalid[0].reason, invalid_reason::kWrongType);
  EXPECT_EQ(r.invalid[0].source, path.string() + "[1]");
}

TEST(DataFilesBadInput, ElementErrorsNameTheIndex) {
  test::TempDir dir;
  const fs::path path = dir.path() / "a.json.gz";
  write_gzip(path, "[{\"instruction\": \"i\", \"output\": \"o\"}, {\"instruction\": \"j\"}]");
  const std::string msg = error_of(path);
  EXPECT_NE(msg.find(path.string() + "[1]: missing field \"output\" (format alpaca)"), std::string::npos) << msg;
}

TEST(DataFilesBadInput, MixedFormatsInOneFile) {
  test::TempDir dir;
  const fs::path lines = dir.path() / "mixed.jsonl";
  test::write_text(lines, std::string(kAlpacaLines) +
                              "{\"messages\": [{\"role\": \"user\", \"content\": \"u\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}\n");
  std::string msg = error_of(lines);
  EXPECT_NE(msg.find(lines.string() + ":3: keys {messages} are the messages format, but this file is alpaca (detected at " +
                     lines.string() + ":1)"),
            std::string::npos)
      << msg;
  const FileReadResult skipped = read_data_file(lines, Format::kAuto, true);
  ASSERT_EQ(skipped.invalid.size(), 1u);
  EXPECT_EQ(skipped.invalid[0].reason, invalid_reason::kMixedFormat);

  const fs::path array = dir.path() / "mixed.json";
  test::write_text(array, "[{\"prompt\": \"p\", \"response\": \"r\"}, {\"instruction\": \"i\", \"output\": \"o\"}]");
  msg = error_of(array);
  EXPECT_NE(msg.find(array.string() + "[1]: keys {instruction, output} are the alpaca format, but this file is "
                                      "prompt_response"),
            std::string::npos)
      << msg;
  // A JSON array followed by JSON Lines is malformed JSON, at the line where the second value starts.
  const fs::path both = dir.path() / "both.json";
  test::write_text(both, std::string("[{\"prompt\": \"p\", \"response\": \"r\"}]\n") + kAlpacaLines);
  msg = error_of(both, /*skip_invalid=*/true);
  EXPECT_NE(msg.find(both.string() + ":2:1: malformed JSON"), std::string::npos) << msg;
}

TEST(DataFilesBadInput, NonArrayTopLevelValueInJson) {
  test::TempDir dir;
  const fs::path object = dir.path() / "object.json";
  test::write_text(object, "{\n  \"data\": [{\"prompt\": \"p\", \"response\": \"r\"}]\n}\n");
  std::string msg = error_of(object, /*skip_invalid=*/true);
  EXPECT_NE(msg.find(object.string() + ": the top-level JSON value is an object, not an array of examples"),
            std::string::npos)
      << msg;
  const fs::path number = dir.path() / "number.json";
  test::write_text(number, "42\n");
  msg = error_of(number);
  EXPECT_NE(msg.find(number.string() + ": the top-level JSON value is number"), std::string::npos) << msg;
  const fs::path empty = dir.path() / "empty.json";
  test::write_text(empty, "[]");
  msg = error_of(empty);
  EXPECT_NE(msg.find(empty.string() + ": the JSON array holds no examples"), std::string::npos) << msg;
}

TEST(DataFilesBadInput, MalformedJsonArrayNamesLineAndColumn) {
  test::TempDir dir;
  const fs::path path = dir.path() / "broken.json";
  test::write_text(path, "[\n  {\"prompt\": \"p\", \"response\": \"r\"},\n  {\"prompt\": \"q\" \"response\": \"s\"}\n]\n");
  const std::string msg = error_of(path);
  EXPECT_NE(msg.find(path.string() + ":3:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("malformed JSON"), std::string::npos) << msg;
  const fs::path latin1 = dir.path() / "latin1.json";
  test::write_text(latin1, "[\n{\"prompt\": \"p\xff\", \"response\": \"r\"}]\n");
  const std::string utf8 = error_of(latin1, /*skip_invalid=*/true);
  EXPECT_NE(utf8.find(latin1.string() + ":2:14: not valid UTF-8"), std::string::npos) << utf8;
}

// `sft data` (the pipeline `sft train` uses) reads .json arrays and .gz files, and exits 2 on bad ones.
TEST(DataFilesCli, SftDataReadsArraysAndGzipAndExits2OnBadInput) {
  test::TempDir dir;
  const fs::path model = dir.path() / "model";
  fs::create_directories(model);
  test::write_text(model / "config.json",
                   R"({"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 64, "intermediate_size": 128,)"
                   R"( "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2})");
  write_gzip(dir.path() / "train.json.gz", kAlpacaArray);
  write_gzip(dir.path() / "eval.jsonl.gz", kAlpacaLines);
  const fs::path tokenizer = test::assets_dir() / "tokenizers" / "qwen3-bpe";
  auto config = [&](const std::string& train) {
    const fs::path path = dir.path() / "data.yaml";
    test::write_text(path, "model: {path: " + model.string() + "}\ntokenizer: {path: " + tokenizer.string() +
                               "}\ndata: {train: " + train + ", eval: " + (dir.path() / "eval.jsonl.gz").string() +
                               ", template: chatml}\noutput_dir: " + (dir.path() / "run").string() + "\n");
    return path.string();
  };
  test::RunResult ok = test::run_command(test::sft_binary().string() + " data " +
                                         config((dir.path() / "train.json.gz").string()) + " --show 1");
  ASSERT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_NE(ok.output.find("\"format\": \"alpaca\""), std::string::npos) << ok.output;
  EXPECT_NE(ok.output.find("train.json.gz[0]"), std::string::npos) << ok.output;
  EXPECT_NE(ok.output.find("\u27E6Paris"), std::string::npos) << ok.output;

  test::write_text(dir.path() / "bad.json", "[{\"instruction\": \"i\", \"output\": \"o\"}, \"text\"]");
  test::RunResult bad = test::run_command(test::sft_binary().string() + " data " +
                                          config((dir.path() / "bad.json").string()));
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_NE(bad.output.find("bad.json[1]: an array element must be an example object (got string)"), std::string::npos)
      << bad.output;
}

}  // namespace
}  // namespace sft::data
