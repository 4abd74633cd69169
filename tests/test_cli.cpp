// tests/test_cli.cpp: bad input through the real `sft` binary: every case exits 2 (never a crash or a
// signal) with a message naming the file, key or tensor.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "tests/test_util.h"

namespace sft {
namespace {
namespace fs = std::filesystem;

fs::path golden_model() { return test::golden_dir() / "models" / "llama_gqa"; }

// Copies the golden model's config.json and weights into `dir`.
void copy_model(const fs::path& dir) {
  fs::create_directories(dir);
  fs::copy_file(golden_model() / "config.json", dir / "config.json");
  fs::copy_file(golden_model() / "model.safetensors", dir / "model.safetensors");
}

std::string bytes_of(const fs::path& path) { return test::read_text(path); }

// A safetensors file from a header JSON and a data section.
std::string safetensors_bytes(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

void expect_exit_2(const std::string& args, const std::vector<std::string>& needles) {
  auto result = test::run_command(test::sft_binary().string() + " " + args);
  EXPECT_EQ(result.exit_code, 2) << args << "\n" << result.output;
  for (const std::string& needle : needles) {
    EXPECT_NE(result.output.find(needle), std::string::npos) << "'" << needle << "' not in:\n" << result.output;
  }
}

TEST(CliBadInput, TruncatedWeightsFile) {
  test::TempDir tmp;
  copy_model(tmp.path() / "m");
  const std::string full = bytes_of(tmp.path() / "m" / "model.safetensors");
  test::write_text(tmp.path() / "m" / "model.safetensors", full.substr(0, full.size() - 100));
  expect_exit_2("logits --model " + (tmp.path() / "m").string() + " --ids 1,2", {"model.safetensors"});
}

TEST(CliBadInput, HeaderLengthPastTheEnd) {
  test::TempDir tmp;
  std::string bytes = safetensors_bytes("{}", "");
  const uint64_t huge = 5000;
  std::memcpy(bytes.data(), &huge, 8);
  test::write_text(tmp.path() / "x.safetensors", bytes);
  expect_exit_2("inspect " + (tmp.path() / "x.safetensors").string(), {"x.safetensors"});
}

TEST(CliBadInput, OversizedHeader) {
  test::TempDir tmp;
  std::string bytes = safetensors_bytes("{}", "");
  const uint64_t huge = 200'000'000;
  std::memcpy(bytes.data(), &huge, 8);
  test::write_text(tmp.path() / "x.safetensors", bytes);
  expect_exit_2("inspect " + (tmp.path() / "x.safetensors").string(), {"x.safetensors"});
}

TEST(CliBadInput, OverlappingOffsets) {
  test::TempDir tmp;
  test::write_text(tmp.path() / "x.safetensors",
                   safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                     R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                     std::string(12, '\0')));
  expect_exit_2("inspect " + (tmp.path() / "x.safetensors").string(), {"x.safetensors"});
}

TEST(CliBadInput, UnknownDtype) {
  test::TempDir tmp;
  test::write_text(tmp.path() / "x.safetensors",
                   safetensors_bytes(R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0')));
  expect_exit_2("inspect " + (tmp.path() / "x.safetensors").string(), {"x.safetensors", "Q4"});
}

TEST(CliBadInput, MissingTensorAndWrongShapeNameTheTensor) {
  test::TempDir tmp;
  copy_model(tmp.path() / "m");
  // Rename one tensor: it goes missing, and the renamed one is unexpected.
  std::string bytes = bytes_of(tmp.path() / "m" / "model.safetensors");
  const std::string from = "model.layers.1.mlp.up_proj.weight", to = "model.layers.1.mlp.up_proj.weigh_";
  bytes.replace(bytes.find(from), from.size(), to);
  test::write_text(tmp.path() / "m" / "model.safetensors", bytes);
  expect_exit_2("logits --model " + (tmp.path() / "m").string() + " --ids 1,2",
                {"missing tensor 'model.layers.1.mlp.up_proj.weight'", "unexpected tensor 'model.layers.1.mlp.up_proj.weigh_'"});
  // Wrong shape: config.json says intermediate_size 96 while the weights are 128 wide.
  copy_model(tmp.path() / "s");
  std::string config = test::read_text(tmp.path() / "s" / "config.json");
  config.replace(config.find("\"intermediate_size\": 128"), 24, "\"intermediate_size\": 96");
  test::write_text(tmp.path() / "s" / "config.json", config);
  expect_exit_2("logits --model " + (tmp.path() / "s").string() + " --ids 1,2",
                {"model.layers.0.mlp.gate_proj.weight", "[128, 64]", "[96, 64]"});
}

TEST(CliBadInput, ShardPathEscapingTheDirectory) {
  test::TempDir tmp;
  const fs::path dir = tmp.path() / "m";
  fs::create_directories(dir);
  fs::copy_file(golden_model() / "config.json", dir / "config.json");
  test::write_text(dir / "model.safetensors.index.json",
                   R"({"metadata": {}, "weight_map": {"model.embed_tokens.weight": "../outside.safetensors"}})");
  expect_exit_2("logits --model " + dir.string() + " --ids 1", {"../outside.safetensors"});
}

TEST(CliBadInput, MissingConfigKeyAndUnsupportedModelType) {
  test::TempDir tmp;
  copy_model(tmp.path() / "k");
  std::string config = test::read_text(tmp.path() / "k" / "config.json");
  config.replace(config.find("\"num_hidden_layers\""), 19, "\"num_hidden_layerz\"");
  test::write_text(tmp.path() / "k" / "config.json", config);
  expect_exit_2("logits --model " + (tmp.path() / "k").string() + " --ids 1", {"config.json", "num_hidden_layers"});
  copy_model(tmp.path() / "t");
  config = test::read_text(tmp.path() / "t" / "config.json");
  config.replace(config.find("\"model_type\": \"llama\""), 21, "\"model_type\": \"gpt2\"");
  test::write_text(tmp.path() / "t" / "config.json", config);
  expect_exit_2("logits --model " + (tmp.path() / "t").string() + " --ids 1", {"config.json", "model_type 'gpt2'"});
}

TEST(CliBadInput, UsageErrorsAndBadConfig) {
  expect_exit_2("frobnicate", {"unknown command 'frobnicate'"});
  expect_exit_2("logits --model", {"--model needs a value"});
  expect_exit_2("logits --modle x", {"unknown option '--modle'"});
  expect_exit_2("logits --model " + golden_model().string() + " --ids 1,999", {"token id 999"});
  test::TempDir tmp;
  test::write_text(tmp.path() / "c.yaml", "model: {path: m}\ntrain: {lr: fast}\n");
  expect_exit_2("train " + (tmp.path() / "c.yaml").string(), {"train.lr must be a number", "data.train is required"});
  expect_exit_2("train " + (tmp.path() / "missing.yaml").string(), {"missing.yaml"});
}

TEST(Cli, HelpListsCommandsAndEveryConfigKey) {
  auto help = test::run_command(test::sft_binary().string() + " help");
  EXPECT_EQ(help.exit_code, 0);
  for (const char* command : {"train", "eval", "data", "generate", "inspect"}) {
    EXPECT_NE(help.output.find(command), std::string::npos) << command;
  }
  auto keys = test::run_command(test::sft_binary().string() + " help config");
  EXPECT_EQ(keys.exit_code, 0);
  EXPECT_NE(keys.output.find("finetune.lora.targets"), std::string::npos);
  auto version = test::run_command(test::sft_binary().string() + " --version");
  EXPECT_EQ(version.exit_code, 0);
  EXPECT_NE(version.output.find("sft 0.1.0"), std::string::npos);
}

TEST(Cli, LogitsOfTheGoldenModel) {
  test::TempDir tmp;
  auto result = test::run_command(test::sft_binary().string() + " logits --model " + golden_model().string() +
                                  " --ids 1,17,33 --out " + (tmp.path() / "l.safetensors").string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("logits [3, 256]"), std::string::npos) << result.output;
  EXPECT_TRUE(fs::exists(tmp.path() / "l.safetensors"));
}

}  // namespace
}  // namespace sft
