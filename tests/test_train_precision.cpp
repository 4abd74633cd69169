// tests/test_train_precision.cpp: bf16 training on the CPU against the fp32 reference: bf16 weights
// (model.dtype: bfloat16) and mixed precision (fp32 masters under autocast), with the tolerances derived
// below, the per-device resolution of train.mixed_precision and its config errors.
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
// Precision: CPU bf16 (model.dtype: bfloat16) and bf16 mixed precision (fp32 masters, autocast).
//
// Tolerances, relative to the fp32 reference loss at every one of the 10 parity steps. bf16 keeps 8
// significant bits: unit roundoff u = 2^-9 ~ 2e-3.
//  - bf16 compute, exact fp32 trained weights (LoRA adapters on a bf16 base; autocast over fp32 weights):
//    each loss is a mean over 208 target tokens, per-token rounding largely averages out, and the losses
//    stay within about u of fp32 (measured worst 1.1e-3 for LoRA, 5.1e-4 for autocast). Bound: 1.5u.
//  - bf16 trained weights (full fine-tuning in bf16, or fp32 masters that start from bf16-rounded
//    weights): AdamW's normalised update lr * m / sqrt(v) turns the rounding of tiny gradients into
//    full-size steps, so the trajectories drift apart over the steps (measured worst 1.4e-2 in both
//    cases). Bound: 10u.
constexpr double kBf16ComputeTolerance = 3e-3;
constexpr double kBf16WeightsTolerance = 2e-2;

// Returns the worst relative loss difference.
double expect_losses_track(const RunOutput& ours, const nlohmann::json& fp32, double rel_tolerance) {
  EXPECT_EQ(ours.losses.size(), fp32["loss"].size());
  if (ours.losses.size() != fp32["loss"].size()) return 0;
  double worst = 0;
  for (size_t i = 0; i < ours.losses.size(); ++i) {
    const double r = fp32["loss"][i].get<double>();
    EXPECT_NEAR(ours.losses[i], r, rel_tolerance * r) << "loss at step " << i + 1;
    worst = std::max(worst, std::abs(ours.losses[i] - r) / r);
  }
  EXPECT_LT(ours.losses.back(), ours.losses.front() - 0.1);  // it learned
  std::cerr << "[precision] worst relative loss difference to fp32: " << worst << "\n";
  return worst;
}

TEST(TrainPrecision, CpuBf16LoraTracksFp32) {
  test::TempDir tmp;
  RunOutput run = run_train(tmp.path(), parity_config(tmp.path() / "out",
      "finetune: {method: lora, lora: {r: 4, alpha: 8, dropout: 0.0, init_from: " +
          (train_golden() / "adapter_init").string() + "}}\n"), "model.dtype=bfloat16");
  expect_losses_track(run, golden_losses("lora"), kBf16ComputeTolerance);
}

TEST(TrainPrecision, CpuBf16FullTracksFp32) {
  test::TempDir tmp;
  RunOutput run = run_train(tmp.path(), parity_config(tmp.path() / "out", "finetune: {method: full}\n"),
                            "model.dtype=bfloat16");
  expect_losses_track(run, golden_losses("full"), kBf16WeightsTolerance);
  // Full bf16 (no mixed precision) trains and exports the bf16 weights themselves.
  auto exported = model::SafetensorsFile::open(tmp.path() / "out" / "model" / "model.safetensors");
  EXPECT_EQ(exported->find("lm_head.weight")->dtype, model::StDType::BF16);
}

TEST(TrainPrecision, MixedBf16FullKeepsFp32MastersAndTracksFp32) {
  test::TempDir tmp;
  RunOutput run = run_train(tmp.path(), parity_config(tmp.path() / "out", "finetune: {method: full}\n"),
                            "train.mixed_precision=bf16");
  expect_losses_track(run, golden_losses("full"), kBf16WeightsTolerance);
  // The masters are fp32 in the checkpoint and in the exported model.
  auto ckpt = model::SafetensorsFile::open(tmp.path() / "out" / "checkpoints" / "step-00000010" / kCheckpointWeights);
  auto exported = model::SafetensorsFile::open(tmp.path() / "out" / "model" / "model.safetensors");
  EXPECT_EQ(ckpt->header().tensors.size(), exported->header().tensors.size());
  for (const auto* file : {ckpt.get(), exported.get()}) {
    for (const auto& info : file->header().tensors) EXPECT_EQ(info.dtype, model::StDType::F32) << info.name;
  }
}

TEST(TrainPrecision, MixedBf16OnAnFp32ModelComputesInBf16) {
  // model.dtype float32 + mixed_precision bf16: the weights are exactly the fp32 reference's, so any
  // difference from the fp32 run comes from autocast's bf16 matmuls in the training forward.
  test::TempDir tmp;
  RunOutput run = run_train(tmp.path(), parity_config(tmp.path() / "out", "finetune: {method: full}\n"),
                            "train.mixed_precision=bf16 model.dtype=float32");
  const double worst = expect_losses_track(run, golden_losses("full"), kBf16ComputeTolerance);
  EXPECT_GT(worst, 1e-4);  // beyond the fp32 parity tolerance: the matmuls did run in bf16
}

TEST(TrainPrecision, MixedBf16WithFusedAttentionAndEvaluationTracksFp32) {
  // Fused attention under autocast gets q/k in fp32 (rotary tables) and v in bf16: it runs in the autocast
  // dtype like SDPA. Freeze keeps bf16 frozen weights beside fp32 masters, and the held-out evaluation
  // runs under the same autocast as training.
  test::TempDir tmp;
  RunOutput run = run_train(tmp.path(), parity_config(tmp.path() / "out", "finetune: {method: full}\n"),
                            "train.mixed_precision=bf16 model.dtype=float32 model.attention=fused");
  expect_losses_track(run, golden_losses("full"), kBf16ComputeTolerance);
  test::TempDir freeze;
  RunOutput frozen = run_train(freeze.path(),
                               parity_config(freeze.path() / "out", "finetune: {method: freeze, freeze: {trainable_layers: 1}}\n"),
                               "train.mixed_precision=bf16 eval.every_steps=5 data.eval=" +
                                   (train_golden() / "data.jsonl").string());
  EXPECT_LT(frozen.losses.back(), frozen.losses.front());
  std::stringstream eval_lines(test::read_text(freeze.path() / "out" / "eval.jsonl"));
  int evaluations = 0;
  for (std::string line; std::getline(eval_lines, line); ++evaluations) {
    EXPECT_TRUE(std::isfinite(nlohmann::json::parse(line)["loss"].get<double>())) << line;
  }
  EXPECT_EQ(evaluations, 2);
}

Config precision_config(const std::vector<std::string>& overrides) {
  return parse_config("model: {path: " + (train_golden() / "base").string() + "}\ndata: {train: x.jsonl}\n" +
                          "train: {device: cpu}\n", "test.yaml", overrides, "test");
}

TEST(TrainPrecision, MixedPrecisionResolvesPerDeviceAndSplitsMastersFromFrozenWeights) {
  const Runtime cpu_default = resolve_runtime(precision_config({}));
  EXPECT_FALSE(cpu_default.autocast_dtype.has_value());  // auto on CPU: none
  EXPECT_EQ(cpu_default.dtype, at::kFloat);
  EXPECT_EQ(resolve_mixed_precision(precision_config({}), at::Device(at::kCUDA, 0)), at::kBFloat16);
  EXPECT_FALSE(resolve_mixed_precision(precision_config({"model.dtype=float32"}), at::Device(at::kCUDA, 0)));
  const Runtime fp32_amp = resolve_runtime(precision_config({"model.dtype=float32", "train.mixed_precision=bf16"}));
  EXPECT_EQ(fp32_amp.dtype, at::kFloat);
  EXPECT_EQ(fp32_amp.autocast_dtype, at::kBFloat16);

  // mixed_precision bf16: frozen weights load in bf16, every trainable parameter is an fp32 master.
  for (const std::string method : {"freeze", "lora", "full"}) {
    const Config config = precision_config({"train.mixed_precision=bf16", "finetune.method=" + method});
    const Runtime runtime = resolve_runtime(config);
    ASSERT_EQ(runtime.dtype, at::kBFloat16);
    model::CausalLM lm = model::load_pretrained(config.model.path, runtime.dtype, runtime.device);
    apply_finetune_method(lm, config);
    int trainable = 0, frozen = 0;
    for (const auto& item : lm->named_parameters()) {
      const bool trains = item.value().requires_grad();
      EXPECT_EQ(item.value().scalar_type(), trains ? at::kFloat : at::kBFloat16) << method << " " << item.key();
      (trains ? trainable : frozen)++;
    }
    EXPECT_GT(trainable, 0) << method;
    EXPECT_EQ(frozen > 0, method != "full") << method;
  }
}

TEST(TrainPrecision, AutocastScopeRunsMatmulsInBf16OnCpuAndRestoresState) {
  Runtime runtime;
  runtime.autocast_dtype = at::kBFloat16;
  const at::Tensor a = at::randn({4, 8}), b = at::randn({8, 3});
  {
    const AutocastScope autocast(runtime);
    EXPECT_TRUE(at::autocast::is_autocast_enabled(at::kCPU));
    EXPECT_EQ(at::matmul(a, b).scalar_type(), at::kBFloat16);
    EXPECT_EQ((a + 1).scalar_type(), at::kFloat);  // elementwise ops keep their dtype
  }
  EXPECT_FALSE(at::autocast::is_autocast_enabled(at::kCPU));
  EXPECT_EQ(at::matmul(a, b).scalar_type(), at::kFloat);
  Runtime none;  // no mixed precision: a no-op
  const AutocastScope nothing(none);
  EXPECT_FALSE(at::autocast::is_autocast_enabled(at::kCPU));
}

TEST(TrainFailures, MixedPrecisionConfigErrors) {
  test::TempDir tmp;
  test::write_text(tmp.path() / "c.yaml", parity_config(tmp.path() / "out", "finetune: {method: full}\n"));
  const std::string train = test::sft_binary().string() + " train " + (tmp.path() / "c.yaml").string();
  auto fp16 = test::run_command(train + " train.mixed_precision=fp16");
  EXPECT_EQ(fp16.exit_code, 2) << fp16.output;
  EXPECT_NE(fp16.output.find("train.mixed_precision 'fp16' is not one of auto|none|bf16"), std::string::npos)
      << fp16.output;
  auto half_model = test::run_command(train + " train.mixed_precision=bf16 model.dtype=float16");
  EXPECT_EQ(half_model.exit_code, 2) << half_model.output;
  EXPECT_NE(half_model.output.find("needs model.dtype auto, bfloat16 or float32"), std::string::npos)
      << half_model.output;
  EXPECT_FALSE(fs::exists(tmp.path() / "out" / "metrics.jsonl"));
}

}  // namespace
}  // namespace sft
