// tests/test_data_formats.cpp: the data-file readers (data/formats.*): format detection per file, every
// kind of bad line naming file:line, skip_invalid with max_invalid, and the data-option check.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>

#include "common/errors.h"
#include "data/dataset.h"
#include "data/formats.h"
#include "data/loader.h"
#include "data/packing.h"
#include "data/pipeline.h"
#include "data/template.h"
#include "data/tokenizer.h"
#include "tests/data_test_util.h"
#include "tests/test_util.h"

namespace sft::data {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace test_support;

// ---------------------------------------------------------------- formats

TEST(DataFormats, DetectsAndReadsPromptResponse) {
  FileReadResult r = read_data_file(fixture("prompt_response.jsonl"), Format::kAuto, false);
  EXPECT_EQ(r.format, Format::kPromptResponse);
  EXPECT_EQ(r.lines, 3);  // the blank line is ignored
  ASSERT_EQ(r.conversations.size(), 3u);
  EXPECT_EQ(r.conversations[0].messages[0].content, "What is the capital of France?");
  EXPECT_EQ(r.conversations[0].messages[1].role, Role::kAssistant);
  EXPECT_EQ(r.conversations[0].messages[1].content, "Paris.");
  EXPECT_EQ(r.conversations[1].messages[1].content, "4");  // "completion" stands for "response"
  EXPECT_EQ(r.conversations[1].source, fixture("prompt_response.jsonl").string() + ":3");
  ASSERT_EQ(r.conversations[2].messages.size(), 3u);
  EXPECT_EQ(r.conversations[2].messages[0].role, Role::kSystem);
  EXPECT_EQ(r.conversations[2].messages[0].content, "Answer briefly.");
}

TEST(DataFormats, DetectsAndReadsAlpaca) {
  FileReadResult r = read_data_file(fixture("alpaca.jsonl"), Format::kAuto, false);
  EXPECT_EQ(r.format, Format::kAlpaca);
  ASSERT_EQ(r.conversations.size(), 3u);
  EXPECT_EQ(r.conversations[0].messages[0].content, "Translate to French.\nGood morning");
  EXPECT_EQ(r.conversations[0].messages[1].content, "Bonjour");
  ASSERT_EQ(r.conversations[1].messages.size(), 3u);  // system + user + assistant; empty input adds nothing
  EXPECT_EQ(r.conversations[1].messages[0].content, "Be friendly.");
  EXPECT_EQ(r.conversations[1].messages[1].content, "Say hi.");
  EXPECT_EQ(r.conversations[2].messages[0].content, "Count to two.");
}

TEST(DataFormats, DetectsAndReadsMessages) {
  FileReadResult r = read_data_file(fixture("messages.jsonl"), Format::kAuto, false);
  EXPECT_EQ(r.format, Format::kMessages);
  ASSERT_EQ(r.conversations.size(), 2u);
  const auto& m = r.conversations[1].messages;
  ASSERT_EQ(m.size(), 5u);
  EXPECT_EQ(m[0].role, Role::kSystem);
  EXPECT_EQ(m[3].content, "Q2");
  EXPECT_EQ(m[4].role, Role::kAssistant);
}

TEST(DataFormats, DetectsAndReadsShareGpt) {
  FileReadResult r = read_data_file(fixture("sharegpt.jsonl"), Format::kAuto, false);
  EXPECT_EQ(r.format, Format::kShareGpt);
  ASSERT_EQ(r.conversations.size(), 2u);
  EXPECT_EQ(r.conversations[0].messages[0].role, Role::kUser);
  EXPECT_EQ(r.conversations[0].messages[1].content, "Lima.");
  EXPECT_EQ(r.conversations[1].messages[0].role, Role::kSystem);
}

TEST(DataFormats, ExplicitFormatOverridesDetection) {
  // Reading messages data as alpaca: every line lacks "instruction".
  std::string msg = expect_input_error([] { read_data_file(fixture("messages.jsonl"), Format::kAlpaca, false); });
  EXPECT_NE(msg.find("messages.jsonl:1: missing field \"instruction\""), std::string::npos) << msg;
  EXPECT_EQ(parse_format("sharegpt"), Format::kShareGpt);
  msg = expect_input_error([] { parse_format("csv"); });
  EXPECT_NE(msg.find("data.format"), std::string::npos) << msg;
}

TEST(DataFormats, DetectionIsPerFile) {
  test::TempDir dir;
  test::write_text(dir.path() / "a.jsonl", R"({"instruction": "i", "output": "o"})" "\n");
  test::write_text(dir.path() / "b.jsonl", R"({"conversations": [{"from": "human", "value": "h"}, {"from": "gpt", "value": "g"}]})" "\n");
  ByteTokenizer tok;
  DataOptions o;
  o.train = {(dir.path() / "a.jsonl").string(), (dir.path() / "b.jsonl").string()};
  o.chat_template = TemplateKind::kPlain;
  PreparedData d = prepare_data(o, tok, 1, 266);
  ASSERT_EQ(d.report.files.size(), 2u);
  EXPECT_EQ(d.report.files[0].format, "alpaca");
  EXPECT_EQ(d.report.files[1].format, "sharegpt");
  EXPECT_EQ(d.train.size(), 2u);
}

// ---------------------------------------------------------------- bad input

struct BadCase {
  const char* file;
  const char* expected;  // substring of the message after "file:line: " (or "file: " for file errors)
  int line;              // 0: a file-level error
  const char* reason;    // the skip_invalid reason, "" for file-level errors
};

class DataBadInput : public ::testing::TestWithParam<BadCase> {};

TEST_P(DataBadInput, NamesFileAndLine) {
  const BadCase& c = GetParam();
  const std::string path = fixture(c.file).string();
  std::string msg = expect_input_error([&] { read_data_file(path, Format::kAuto, false); });
  const std::string where = c.line ? path + ":" + std::to_string(c.line) + ": " : path + ": ";
  EXPECT_EQ(msg.rfind(where, 0), 0u) << msg;
  EXPECT_NE(msg.find(c.expected), std::string::npos) << msg;
  if (*c.reason) {  // the same line is skipped and counted by reason with skip_invalid
    FileReadResult r = read_data_file(path, Format::kAuto, true);
    ASSERT_EQ(r.invalid.size(), 1u);
    EXPECT_EQ(r.invalid[0].reason, c.reason);
    EXPECT_EQ(r.invalid[0].source, path + ":" + std::to_string(c.line));
    EXPECT_EQ(r.conversations.size(), 1u);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, DataBadInput,
    ::testing::Values(BadCase{"bad_json.jsonl", "malformed JSON", 2, invalid_reason::kMalformedJson},
                      BadCase{"bad_missing_field.jsonl", "missing field \"response\"", 2, invalid_reason::kMissingField},
                      BadCase{"bad_wrong_type.jsonl", "field \"messages[1].content\" must be a string (got number)", 2,
                              invalid_reason::kWrongType},
                      BadCase{"bad_unknown_role.jsonl", "unknown role \"robot\"", 2, invalid_reason::kUnknownRole},
                      BadCase{"bad_alternation.jsonl", "turn 1 is \"user\" but \"assistant\" was expected", 2,
                              invalid_reason::kBadTurnOrder},
                      BadCase{"bad_no_assistant.jsonl", "ends with a \"user\" turn", 2, invalid_reason::kNoAssistantTurn},
                      BadCase{"bad_utf8.jsonl", "not valid UTF-8 (byte 16", 2, invalid_reason::kNotUtf8},
                      BadCase{"empty.jsonl", "data file is empty", 0, ""},
                      BadCase{"no_such_file.jsonl", "cannot open", 0, ""}),
    [](const ::testing::TestParamInfo<BadCase>& info) {  // the fixture name: stable, readable test names
      std::string name = info.param.file;
      name = name.substr(0, name.find('.'));
      for (char& c : name) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
      return name;
    });

TEST(DataBadInputExtra, UndetectableFormatAndNonObject) {
  test::TempDir dir;
  test::write_text(dir.path() / "x.jsonl", "\n{\"text\": \"hello\"}\n");
  std::string msg = expect_input_error([&] { read_data_file(dir.path() / "x.jsonl", Format::kAuto, true); });
  EXPECT_NE(msg.find("x.jsonl:2: cannot detect the data format from keys {text}"), std::string::npos) << msg;
  test::write_text(dir.path() / "y.jsonl", "[1, 2]\n");
  msg = expect_input_error([&] { read_data_file(dir.path() / "y.jsonl", Format::kAuto, false); });
  EXPECT_NE(msg.find("y.jsonl:1: a line must be a JSON object (got array)"), std::string::npos) << msg;
  // Whitespace-only files are empty too.
  test::write_text(dir.path() / "z.jsonl", "\n  \n");
  msg = expect_input_error([&] { read_data_file(dir.path() / "z.jsonl", Format::kAuto, true); });
  EXPECT_NE(msg.find("z.jsonl: data file is empty"), std::string::npos) << msg;
}

TEST(DataBadInputExtra, Utf8Validator) {
  EXPECT_EQ(find_invalid_utf8("plain ascii"), std::string::npos);
  EXPECT_EQ(find_invalid_utf8("caf\xc3\xa9 \xe6\x97\xa5 \xf0\x9f\xa4\x94"), std::string::npos);
  EXPECT_EQ(find_invalid_utf8("ab\xe9"), 2u);               // latin-1 byte
  EXPECT_EQ(find_invalid_utf8("\xc0\xaf"), 0u);             // overlong '/'
  EXPECT_EQ(find_invalid_utf8("x\xed\xa0\x80"), 1u);        // UTF-16 surrogate
  EXPECT_EQ(find_invalid_utf8("\xe6\x97"), 0u);             // truncated sequence
}

TEST(DataSkipInvalid, CountsByReasonAndEnforcesMaxInvalid) {
  ByteTokenizer tok;
  DataOptions o;
  o.train = {fixture("mixed_invalid.jsonl").string()};
  o.chat_template = TemplateKind::kChatml;
  // Default: the first bad line is an error naming it.
  std::string msg = expect_input_error([&] { prepare_data(o, tok, 1, 266); });
  EXPECT_NE(msg.find("mixed_invalid.jsonl:2: malformed JSON"), std::string::npos) << msg;

  o.skip_invalid = true;
  o.max_invalid = 5;
  PreparedData d = prepare_data(o, tok, 1, 266);
  EXPECT_EQ(d.train.size(), 3u);
  EXPECT_EQ(d.report.invalid_total, 5);
  std::map<std::string, int64_t> expected{{"malformed_json", 1}, {"wrong_type", 1}, {"unknown_role", 1},
                                          {"no_assistant_turn", 1}, {"missing_field", 1}};
  EXPECT_EQ(d.report.invalid, expected);
  EXPECT_EQ(d.report.files[0].invalid, expected);
  EXPECT_EQ(d.report.files[0].lines, 8);
  EXPECT_EQ(d.report.files[0].valid, 3);
  json j = d.report.to_json();
  EXPECT_EQ(j["invalid_lines"], 5);
  EXPECT_EQ(j["invalid_by_reason"]["unknown_role"], 1);
  EXPECT_EQ(j["train"]["kept"], 3);

  o.max_invalid = 4;
  msg = expect_input_error([&] { prepare_data(o, tok, 1, 266); });
  EXPECT_NE(msg.find("data.max_invalid=4 exceeded: 5 invalid lines"), std::string::npos) << msg;
  EXPECT_NE(msg.find("first: " + fixture("mixed_invalid.jsonl").string() + ":2"), std::string::npos) << msg;
}

TEST(DataOptionsCheck, BadKeysAreNamed) {
  ByteTokenizer tok;
  DataOptions o;
  o.train = {fixture("messages.jsonl").string()};
  o.chat_template = TemplateKind::kChatml;
  auto with = [&](auto change) {
    DataOptions copy = o;
    change(copy);
    return expect_input_error([&] { prepare_data(copy, tok, 1, 266); });
  };
  // data.truncation and data.template are enums: a bad name cannot reach the pipeline (the config and
  // resolve_template's name overload reject it; Config.BadChoiceNamesListEveryAllowedName).
  EXPECT_NE(with([](DataOptions& c) { c.max_seq_len = 1; }).find("data.max_seq_len must be >= 2 (got 1)"), std::string::npos);
  EXPECT_NE(with([](DataOptions& c) { c.eval_ratio = 1.0; }).find("data.eval_ratio"), std::string::npos);
  EXPECT_NE(with([](DataOptions& c) { c.train.clear(); }).find("data.train is required"), std::string::npos);
  EXPECT_NE(expect_input_error([] { resolve_template("vicuna", std::nullopt, "unused"); })
                .find("data.template: 'vicuna' is not one of auto|chatml|qwen3|llama2|llama3|mistral|alpaca|plain"),
            std::string::npos);
}

}  // namespace
}  // namespace sft::data
