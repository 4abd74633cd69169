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
  EXPECT_EQ(c.finetune.method, FinetuneMethod::kLora);
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
  EXPECT_EQ(c.finetune.method, FinetuneMethod::kFull);
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

TEST(Config, OptimizerInBackwardNeedsOneMicroBatchAndNoClipping) {
  // The defaults (max_grad_norm 1.0) plus grad_accum 4: both conflicts named at once.
  const std::string message =
      error_of("model: {path: m}\ndata: {train: t}\ntrain: {optimizer_in_backward: true, grad_accum: 4}\n");
  EXPECT_NE(message.find("train.optimizer_in_backward needs train.grad_accum 1 (each backward is a whole optimizer step), got 4"),
            std::string::npos) << message;
  EXPECT_NE(message.find("train.optimizer_in_backward needs train.max_grad_norm 0"), std::string::npos) << message;
  EXPECT_NE(message.find("2 problems"), std::string::npos) << message;
  EXPECT_EQ(error_of("model: {path: m}\ndata: {train: t}\ntrain: {optimizer_in_backward: true, max_grad_norm: 0}\n"), "");
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

// Every config choice is an enum with one list of names: a bad name lists them all (one problem per key),
// the resolved YAML writes the name, and `sft help config` shows the same list.
TEST(Config, BadChoiceNamesListEveryAllowedName) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"model.dtype=fp8", "model.dtype 'fp8' is not one of auto|float32|bfloat16|float16"},
      {"model.attention=flash", "model.attention 'flash' is not one of auto|fused|sdpa|eager"},
      {"model.fused_ops=[rope, flash]", "model.fused_ops: unknown op 'flash' (auto, none, or a list of rmsnorm, rope, swiglu, linear_ce, dropout, projections, lora)"},
      {"data.format=csv", "data.format 'csv' is not one of auto|alpaca|prompt_response|messages|sharegpt|tokenized"},
      {"data.template=vicuna", "data.template 'vicuna' is not one of auto|chatml|qwen3|llama2|llama3|mistral|alpaca|plain"},
      {"data.truncation=left", "data.truncation 'left' is not one of right|drop"},
      {"finetune.method=prefix", "finetune.method 'prefix' is not one of lora|freeze|full"},
      {"finetune.lora.init=loftq", "finetune.lora.init 'loftq' is not one of default|gaussian|pissa|olora"},
      {"train.scheduler=step", "train.scheduler 'step' is not one of cosine|linear|constant"},
      {"train.device=tpu", "train.device 'tpu' is not one of auto|cpu|cuda"},
      {"train.mixed_precision=fp16", "train.mixed_precision 'fp16' is not one of auto|none|bf16"},
      {"dist.backend=mpi", "dist.backend 'mpi' is not one of auto|gloo|nccl"},
  };
  for (const auto& [override_text, expected] : cases) {
    const std::string message = error_of("model: {path: m}\ndata: {train: t.jsonl}\n", {override_text});
    EXPECT_NE(message.find("c.yaml: " + expected), std::string::npos) << override_text << ":\n" << message;
    EXPECT_NE(message.find("(1 problem)"), std::string::npos) << message;
  }
  EXPECT_NE(error_of("model: {path: m, attention: [sdpa]}\ndata: {train: t.jsonl}\n")
                .find("model.attention must be one of auto|fused|sdpa|eager, got a list"),
            std::string::npos);
  Config c = parse_config("model: {path: m}\ndata: {train: t.jsonl}\n", "c.yaml",
                          {"data.template=llama3", "train.scheduler=linear", "model.fused_ops=[swiglu, rope]"}, "c");
  EXPECT_EQ(c.data.chat_template, data::TemplateKind::kLlama3);
  EXPECT_EQ(c.train.scheduler, Scheduler::kLinear);
  const std::string yaml = config_to_yaml(c);
  EXPECT_NE(yaml.find("template: llama3"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("scheduler: linear"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("fused_ops: [swiglu, rope]"), std::string::npos) << yaml;
  EXPECT_EQ(parse_config(yaml, "resolved.yaml", {}, "c").model.fused_ops, c.model.fused_ops);
  const std::string reference = config_reference();
  EXPECT_NE(reference.find("auto|chatml|qwen3|llama2|llama3|mistral|alpaca|plain: chat template"), std::string::npos)
      << reference;
  EXPECT_NE(reference.find("auto | none | a list of rmsnorm, rope, swiglu, linear_ce"), std::string::npos) << reference;
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
