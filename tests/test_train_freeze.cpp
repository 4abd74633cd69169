// tests/test_train_freeze.cpp: freeze fine-tuning with LLaMA-Factory's rules (the trainable sets, and
// frozen tensors bit-identical after training), and gradient checkpointing bit-identical to stored
// activations on the CPU. Runs use one thread (see test_train.cpp).
#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "data/loader.h"
#include "data/tokenized.h"
#include "model/lora.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "tests/test_util.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/export.h"
#include "trainer/optimizer.h"
#include "trainer/schedule.h"
#include "trainer/setup.h"
#include "tests/train_test_util.h"

namespace sft {
namespace {
namespace fs = std::filesystem;
using namespace test_support;

// ---------------------------------------------------------------------------------------------------
// Freeze variants (LLaMA-Factory semantics): the trainable set, then frozen tensors after training.

// The names of the parameters that require grad after applying a config's finetune section.
std::set<std::string> trainable_names(const fs::path& model_dir, const std::string& finetune_yaml) {
  const Config config = parse_config("model: {path: " + model_dir.string() + "}\ndata: {train: x.jsonl}\n" +
                                         finetune_yaml, "test.yaml", {}, "test");
  model::CausalLM lm = model::load_pretrained(model_dir, at::kFloat, at::kCPU);
  apply_finetune_method(lm, config);
  std::set<std::string> names;
  for (const auto& item : lm->named_parameters()) {
    if (item.value().requires_grad()) names.insert(item.key());
  }
  return names;
}

TEST(TrainFreeze, TrainableSetsFollowLlamaFactoryRules) {
  // Last N, first |N|, N beyond the layer count, an explicit list, module narrowing and extra modules,
  // each against the names LLaMA-Factory's substring rules give (computed on the HF model).
  const std::vector<FreezeCase> cases = freeze_cases();
  ASSERT_EQ(cases.size(), 9u);
  for (const FreezeCase& c : cases) {
    EXPECT_FALSE(c.trainable.empty());
    EXPECT_EQ(trainable_names(train_golden() / "base", c.yaml()), c.trainable) << c.settings.dump();
  }
  // Spot checks written out by hand (the golden lists could be wrong together with our rules).
  EXPECT_EQ(cases[2].settings["trainable_layers"], 1);   // last layer: all 9 of its tensors, nothing else
  EXPECT_EQ(cases[2].trainable.size(), 9u);
  EXPECT_TRUE(cases[2].trainable.count("model.layers.1.mlp.down_proj.weight"));
  EXPECT_EQ(cases[3].settings["trainable_layers"], -1);  // first layer
  EXPECT_TRUE(cases[3].trainable.count("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_FALSE(cases[3].trainable.count("model.layers.1.self_attn.q_proj.weight"));
  EXPECT_EQ(cases[4].trainable.size(), 18u);  // 5 layers asked, the model has 2: both
}

TEST(TrainFreeze, SingleProjectionsAndTiedLmHead) {
  // Beyond LLaMA-Factory: a single projection as a module name.
  EXPECT_EQ(trainable_names(train_golden() / "base",
                            "finetune: {method: freeze, freeze: {trainable_layers: [1], trainable_modules: [q_proj, "
                            "down_proj]}}\n"),
            (std::set<std::string>{"model.layers.1.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"}));
  // With tied embeddings lm_head is embed_tokens.
  const fs::path tied = test::golden_dir() / "models" / "llama_tied_rope3";
  const std::set<std::string> names = trainable_names(
      tied, "finetune: {method: freeze, freeze: {trainable_layers: 1, trainable_modules: [mlp], extra_modules: [lm_head]}}\n");
  EXPECT_TRUE(names.count("model.embed_tokens.weight"));
  EXPECT_FALSE(names.count("model.norm.weight"));
}

// Trains a freeze variant for 3 steps and checks that exactly its trainable tensors moved.
void expect_frozen_tensors_untouched(const FreezeCase& c) {
  test::TempDir tmp;
  RunOutput run = run_train(tmp.path(), parity_config(tmp.path() / "out", c.yaml()), "train.epochs=3");
  ASSERT_EQ(run.losses.size(), 3u);
  expect_only_trainable_changed(tmp.path() / "out" / "model" / "model.safetensors", c.trainable);
}

TEST(TrainFreeze, ListOfLayersNarrowedToSelfAttnKeepsTheRestBitIdentical) {
  const FreezeCase c = freeze_cases()[6];
  ASSERT_EQ(c.settings["trainable_layers"], nlohmann::json({0, 1}));
  expect_frozen_tensors_untouched(c);
}

TEST(TrainFreeze, LastLayerMlpAndInputNormWithEmbeddingsKeepsTheRestBitIdentical) {
  const FreezeCase c = freeze_cases()[7];
  ASSERT_EQ(c.settings["extra_modules"], nlohmann::json({"embed_tokens"}));
  expect_frozen_tensors_untouched(c);
}

TEST(TrainFreeze, FirstLayersSelfAttnWithNormsAndLmHeadKeepsTheRestBitIdentical) {
  const FreezeCase c = freeze_cases()[8];
  ASSERT_EQ(c.settings["trainable_layers"], -2);
  expect_frozen_tensors_untouched(c);
}

// ---------------------------------------------------------------------------------------------------
// Gradient checkpointing: backward recomputes each layer from its input with the forward's RNG state, so
// on CPU the run must be bit-identical to the stored-activation run (measured: it is, for losses, grad
// norms and every final tensor). LoRA and freeze also check that layers behind frozen embeddings train.

void expect_bit_identical_tensors(const fs::path& a_file, const fs::path& b_file) {
  auto a = model::SafetensorsFile::open(a_file);
  auto b = model::SafetensorsFile::open(b_file);
  ASSERT_EQ(a->header().tensors.size(), b->header().tensors.size());
  for (const auto& info : a->header().tensors) {
    EXPECT_TRUE(at::equal(a->load(info.name, at::kFloat), b->load(info.name, at::kFloat))) << info.name;
  }
}

void expect_checkpointing_is_bit_identical(const std::string& finetune_yaml, const std::string& weights,
                                           const std::string& overrides = "") {
  test::TempDir a, b;
  RunOutput stored = run_train(a.path(), parity_config(a.path() / "out", finetune_yaml), "train.epochs=4 " + overrides);
  RunOutput recomputed = run_train(b.path(), parity_config(b.path() / "out", finetune_yaml),
                                   "train.epochs=4 model.gradient_checkpointing=true " + overrides);
  ASSERT_EQ(stored.losses.size(), 4u);
  EXPECT_EQ(stored.losses, recomputed.losses);
  EXPECT_EQ(stored.grad_norms, recomputed.grad_norms);
  EXPECT_LT(stored.losses.back(), stored.losses.front());
  expect_bit_identical_tensors(a.path() / "out" / weights, b.path() / "out" / weights);
}

TEST(TrainCheckpointing, LoraWithDropoutIsBitIdenticalToStoredActivations) {
  expect_checkpointing_is_bit_identical("finetune: {method: lora, lora: {r: 4, dropout: 0.1}}\n",
                                        "adapter/adapter_model.safetensors");
}

TEST(TrainCheckpointing, FullIsBitIdenticalToStoredActivations) {
  expect_checkpointing_is_bit_identical("finetune: {method: full}\n", "model/model.safetensors");
}

TEST(TrainCheckpointing, FreezeWithFrozenEmbeddingsIsBitIdenticalToStoredActivations) {
  // Nothing before layer 1 trains, so the checkpointed layers' inputs carry no grad of their own.
  expect_checkpointing_is_bit_identical("finetune: {method: freeze, freeze: {trainable_layers: 1}}\n",
                                        "model/model.safetensors");
}

TEST(TrainCheckpointing, MixedBf16RecomputeReplaysAutocast) {
  // The recompute re-enters the forward's autocast state: without it the recomputed layer would run in
  // fp32 and the gradients would differ from the stored-activation run.
  expect_checkpointing_is_bit_identical("finetune: {method: full}\n", "model/model.safetensors",
                                        "train.mixed_precision=bf16 model.dtype=float32");
  expect_checkpointing_is_bit_identical("finetune: {method: lora, lora: {r: 4, dropout: 0.1}}\n",
                                        "adapter/adapter_model.safetensors", "train.mixed_precision=bf16");
}

}  // namespace
}  // namespace sft
