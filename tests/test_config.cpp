// tests/test_config.cpp: the typed config: defaults, overrides, every problem listed at once, the
// resolved config round-trips, and every shipped config in configs/ loads.
#include <gtest/gtest.h>

#include "common/errors.h"
#include "tests/test_util.h"
#include "trainer/config.h"

namespace sft {
namespace {

std::string error_of(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  try {
    parse_config(yaml, "c.yaml", overrides, "c");
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(Config, DefaultsFromCode) {
  Config c = parse_config("model: {path: m}\ndata: {train: t.jsonl}\n", "c.yaml", {}, "demo");
  EXPECT_EQ(c.finetune.method, "lora");
  EXPECT_EQ(c.finetune.lora.r, 8);
  EXPECT_EQ(c.finetune.lora.targets.size(), 7u);
  EXPECT_DOUBLE_EQ(c.train.lr, 2e-4);
  EXPECT_EQ(c.data.max_seq_len, 1024);
  EXPECT_TRUE(c.data.packing);
  EXPECT_EQ(c.output_dir, "runs/demo");
  EXPECT_EQ(c.data.train, std::vector<std::string>{"t.jsonl"});
}

TEST(Config, DottedOverridesWin) {
  Config c = parse_config("model: {path: m}\ndata: {train: [a.jsonl, b.jsonl]}\n", "c.yaml",
                          {"train.lr=1e-4", "finetune.method=full", "finetune.freeze.trainable_layers=[0, 3]",
                           "data.system_prompt=Be brief."},
                          "c");
  EXPECT_DOUBLE_EQ(c.train.lr, 1e-4);
  EXPECT_EQ(c.finetune.method, "full");
  EXPECT_FALSE(c.finetune.freeze.trainable_layers.count.has_value());
  EXPECT_EQ(c.finetune.freeze.trainable_layers.indices, (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(c.data.train.size(), 2u);
  EXPECT_EQ(*c.data.system_prompt, "Be brief.");
}

TEST(Config, EveryProblemIsListedAtOnce) {
  const std::string message = error_of(
      "model: {dtype: float8}\n"
      "data: {max_seq_len: lots}\n"
      "finetune: {lora: {r: 0, alpha: 16}}\n"
      "train: {lr: -1, learning_rate: 3, epochs: 1.5}\n",
      {"train.seeed=3"});
  for (const char* needle : {"model.path is required", "data.train is required", "model.dtype 'float8'",
                             "data.max_seq_len must be an integer", "finetune.lora.r must be > 0", "train.lr must be >= 0",
                             "unknown key 'train.learning_rate'", "train.epochs must be an integer",
                             "unknown key 'train.seeed'"}) {
    EXPECT_NE(message.find(needle), std::string::npos) << "missing '" << needle << "' in:\n" << message;
  }
  EXPECT_NE(message.find("9 problems"), std::string::npos) << message;
}

TEST(Config, WrongTypesAreNamed) {
  EXPECT_NE(error_of("model: {path: m, gradient_checkpointing: maybe}\ndata: {train: t}\n")
                .find("model.gradient_checkpointing must be true or false"),
            std::string::npos);
  EXPECT_NE(error_of("model: {path: m}\ndata: {train: t}\ntrain: {adam_betas: 0.9}\n")
                .find("train.adam_betas must be a list of numbers"),
            std::string::npos);
  EXPECT_NE(error_of("model: [1, 2]\n").find("model.path"), std::string::npos);
  EXPECT_NE(error_of("model: {path: m}\ndata: {train: t}\n", {"novalue"}).find("must look like key.sub=value"),
            std::string::npos);
  EXPECT_NE(error_of("model: {path: m\n").find("invalid YAML"), std::string::npos);
}

TEST(Config, ResolvedConfigRoundTrips) {
  Config c = parse_config("model: {path: m}\ndata: {train: t.jsonl}\nfinetune: {lora: {targets: [q_proj]}}\n", "c.yaml",
                          {"train.adam_betas=[0.8, 0.95]"}, "c");
  const std::string yaml = config_to_yaml(c);
  Config again = parse_config(yaml, "resolved.yaml", {}, "other");
  EXPECT_EQ(config_to_yaml(again), yaml);
  EXPECT_EQ(again.finetune.lora.targets, std::vector<std::string>{"q_proj"});
  EXPECT_DOUBLE_EQ(again.train.adam_betas[1], 0.95);
  EXPECT_NE(yaml.find("warmup_ratio"), std::string::npos);  // every key, defaults included
}

TEST(Config, EveryShippedConfigLoads) {
  int loaded = 0;
  for (const auto& entry : std::filesystem::directory_iterator(test::source_dir() / "configs")) {
    if (entry.path().extension() != ".yaml") continue;
    EXPECT_NO_THROW(load_config(entry.path(), {})) << entry.path();
    const std::string first_line = test::read_text(entry.path()).substr(0, 40);
    EXPECT_EQ(first_line.rfind("# ", 0), 0u) << entry.path() << " must start with a comment giving its command";
    ++loaded;
  }
  EXPECT_GE(loaded, 4);
}

TEST(Config, ReferenceListsEveryKeyWithDefault) {
  const std::string reference = config_reference();
  for (const char* key : {"model.path", "finetune.lora.rslora", "train.max_grad_norm", "checkpoint.keep_last", "log.progress"}) {
    EXPECT_NE(reference.find(key), std::string::npos) << key;
  }
  EXPECT_NE(reference.find("default 0.0002"), std::string::npos) << reference;
}

}  // namespace
}  // namespace sft
