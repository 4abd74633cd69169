// tests/test_train.cpp: `sft train` against the reference. scripts/make_train_golden.py trains the same
// tiny Llama on the same pre-tokenized, masked data with transformers + peft + torch AdamW for 10 steps
// (grad_accum 2); we compare every loss (1e-4 relative) and the final trained tensors
// (max |ours - ref| <= 1e-4 * max|ref|), LoRA gradients after one backward (1e-5 relative), the
// schedule, gradient-accumulation invariance, determinism, frozen tensors and failure paths.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "data/loader.h"
#include "data/tokenized.h"
#include "model/lora.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "tests/test_util.h"
#include "trainer/export.h"
#include "trainer/schedule.h"

namespace sft {
namespace {
namespace fs = std::filesystem;

fs::path train_golden() { return test::golden_dir() / "train"; }

// A config for the parity runs; `extra` is appended YAML (method-specific keys).
std::string parity_config(const fs::path& out_dir, const std::string& extra) {
  const fs::path g = train_golden();
  return "model: {path: " + (g / "base").string() + ", attention: sdpa}\n" +
         "data: {train: " + (g / "data.jsonl").string() + ", format: tokenized, packing: false, max_seq_len: 64}\n" +
         "train: {epochs: 10, micro_batch_size: 8, grad_accum: 2, lr: 1.0e-3, warmup_steps: 2, scheduler: cosine,\n"
         "        weight_decay: 0.01, max_grad_norm: 1.0, seed: 3, threads: 2}\n"
         "log: {every_steps: 1, progress: false}\n"
         "output_dir: " + out_dir.string() + "\n" + extra;
}

struct RunOutput {
  std::vector<double> losses, lrs, grad_norms;
  std::string raw_metrics;
};

RunOutput run_train(const fs::path& dir, const std::string& config_text, const std::string& overrides = "") {
  test::write_text(dir / "config.yaml.in", config_text);
  auto result = test::run_command(test::sft_binary().string() + " train " + (dir / "config.yaml.in").string() + " " +
                                  overrides);
  EXPECT_EQ(result.exit_code, 0) << result.output;
  RunOutput out;
  out.raw_metrics = test::read_text(dir / "out" / "metrics.jsonl");
  std::stringstream lines(out.raw_metrics);
  for (std::string line; std::getline(lines, line);) {
    auto j = nlohmann::json::parse(line);
    out.losses.push_back(j["loss"].get<double>());
    out.lrs.push_back(j["lr"].get<double>());
    out.grad_norms.push_back(j["grad_norm"].get<double>());
  }
  return out;
}

nlohmann::json golden_losses(const std::string& method) {
  std::ifstream in(train_golden() / (method + "_losses.json"));
  return nlohmann::json::parse(in);
}

void expect_losses_match(const RunOutput& ours, const nlohmann::json& ref) {
  ASSERT_EQ(ours.losses.size(), ref["loss"].size());
  for (size_t i = 0; i < ours.losses.size(); ++i) {
    const double r = ref["loss"][i].get<double>();
    EXPECT_NEAR(ours.losses[i], r, 1e-4 * std::abs(r)) << "loss at step " << i + 1;
    EXPECT_NEAR(ours.lrs[i], ref["lr"][i].get<double>(), 1e-12) << "lr at step " << i + 1;
    const double n = ref["grad_norm"][i].get<double>();
    EXPECT_NEAR(ours.grad_norms[i], n, 1e-4 * std::abs(n) + 1e-7) << "grad_norm at step " << i + 1;
  }
  EXPECT_LT(ours.losses.back(), ours.losses.front());  // it learned
}

// Every tensor of `ours` equals its reference within 1e-4 * max|ref|.
void expect_tensors_match(const fs::path& ours_file, const fs::path& ref_file, const std::string& ours_prefix = "") {
  auto ours = model::SafetensorsFile::open(ours_file);
  auto ref = model::SafetensorsFile::open(ref_file);
  int compared = 0;
  for (const auto& info : ref->header().tensors) {
    const std::string name = ours_prefix + info.name;
    ASSERT_NE(ours->find(name), nullptr) << "missing " << name << " in " << ours_file;
    at::Tensor r = ref->load(info.name, at::kFloat), o = ours->load(name, at::kFloat);
    const double tol = 1e-4 * std::max(r.abs().max().item<double>(), 1e-12);
    EXPECT_LE((o - r).abs().max().item<double>(), tol) << name;
    ++compared;
  }
  EXPECT_GT(compared, 0);
}

TEST(TrainParity, LoraMatchesPeft) {
  test::TempDir tmp;
  RunOutput run = run_train(tmp.path(), parity_config(tmp.path() / "out",
      "finetune: {method: lora, lora: {r: 4, alpha: 8, dropout: 0.0, init_from: " +
          (train_golden() / "adapter_init").string() + "}}\n"));
  expect_losses_match(run, golden_losses("lora"));
  expect_tensors_match(tmp.path() / "out" / "adapter" / "adapter_model.safetensors",
                       train_golden() / "lora_final.safetensors");
}

TEST(TrainParity, FullMatchesTransformers) {
  test::TempDir tmp;
  RunOutput run = run_train(tmp.path(), parity_config(tmp.path() / "out", "finetune: {method: full}\n"));
  expect_losses_match(run, golden_losses("full"));
  expect_tensors_match(tmp.path() / "out" / "model" / "model.safetensors", train_golden() / "full_final.safetensors");
}

TEST(TrainParity, FreezeMatchesTransformersAndFrozenTensorsAreBitIdentical) {
  test::TempDir tmp;
  RunOutput run = run_train(tmp.path(), parity_config(tmp.path() / "out",
      "finetune: {method: freeze, freeze: {trainable_layers: 1, extra_modules: [norm]}}\n"));
  expect_losses_match(run, golden_losses("freeze"));
  const fs::path out = tmp.path() / "out" / "model" / "model.safetensors";
  expect_tensors_match(out, train_golden() / "freeze_final.safetensors");
  auto ours = model::SafetensorsFile::open(out);
  auto base = model::SafetensorsFile::open(train_golden() / "base" / "model.safetensors");
  int frozen = 0;
  for (const auto& info : base->header().tensors) {
    const bool trained = info.name.rfind("model.layers.1.", 0) == 0 || info.name == "model.norm.weight";
    at::Tensor a = ours->load(info.name, at::kFloat), b = base->load(info.name, at::kFloat);
    if (trained) {
      EXPECT_FALSE(at::equal(a, b)) << info.name << " should have trained";
    } else {
      EXPECT_TRUE(at::equal(a, b)) << info.name << " is frozen but changed";
      ++frozen;
    }
  }
  EXPECT_GT(frozen, 5);
}

std::vector<data::TokenizedExample> golden_examples() {
  data::DataOptions options;
  options.train = {(train_golden() / "data.jsonl").string()};
  options.format = "tokenized";
  options.max_seq_len = 64;
  return data::prepare_tokenized_data(options, 0, 256).train;
}

TEST(TrainParity, LoraGradientsMatchPeftAfterOneBackward) {
  model::CausalLM lm = model::load_pretrained(train_golden() / "base", at::kFloat, at::kCPU);
  load_peft_adapter(lm, train_golden() / "adapter_grad");
  lm->train();
  std::vector<data::TokenizedExample> examples = golden_examples();
  std::vector<std::vector<const data::TokenizedExample*>> rows;
  for (const auto& ex : examples) rows.push_back({&ex});
  data::Batch batch = data::build_batch(rows, /*pad_rows=*/true, 0);
  kernels::PackedSequences seqs{batch.cu_seqlens, batch.cu_seqlens_host, batch.max_seqlen};
  at::Tensor hidden = lm->forward(batch.input_ids, batch.position_ids, seqs, {kernels::AttentionImpl::Sdpa, false});
  at::Tensor logits = lm->logits(hidden.index_select(0, batch.target_positions));
  at::Tensor loss = at::cross_entropy_loss(logits, batch.target_ids, {}, at::Reduction::Sum) / batch.num_targets;
  loss.backward();
  auto ref = model::SafetensorsFile::open(train_golden() / "lora_grads.safetensors");
  int compared = 0;
  for (const auto& [path, lora] : model::lora_modules(lm)) {
    for (auto [suffix, param] : {std::pair<std::string, at::Tensor>{".lora_A.weight", lora->lora_A->weight},
                                 std::pair<std::string, at::Tensor>{".lora_B.weight", lora->lora_B->weight}}) {
      at::Tensor r = ref->load("base_model.model." + path + suffix, at::kFloat);
      ASSERT_TRUE(param.grad().defined()) << path << suffix;
      const double scale = r.abs().max().item<double>();
      EXPECT_GT(scale, 0.0);
      EXPECT_LE((param.grad() - r).abs().max().item<double>(), 1e-5 * scale) << path << suffix;
      ++compared;
    }
  }
  EXPECT_EQ(compared, 2 * 7 * 2);  // A and B of 7 projections in 2 layers
}

TEST(TrainLoop, GradAccumulationInvariance) {
  // 8 x 1 and 2 x 4 see the same examples per optimizer step (same seed and shuffle), so the losses
  // and the updates agree even though the micro-batches hold uneven numbers of target tokens.
  test::TempDir a, b;
  const std::string method = "finetune: {method: full}\n";
  RunOutput one = run_train(a.path(), parity_config(a.path() / "out", method), "train.epochs=2 train.grad_accum=1");
  RunOutput four = run_train(b.path(), parity_config(b.path() / "out", method),
                             "train.epochs=2 train.micro_batch_size=2 train.grad_accum=4");
  ASSERT_EQ(one.losses.size(), 4u);
  ASSERT_EQ(four.losses.size(), 4u);
  for (size_t i = 0; i < one.losses.size(); ++i) EXPECT_NEAR(one.losses[i], four.losses[i], 1e-5 * one.losses[i]);
  expect_tensors_match(b.path() / "out" / "model" / "model.safetensors", a.path() / "out" / "model" / "model.safetensors");
}

TEST(TrainLoop, SameConfigTwiceGivesBitIdenticalLosses) {
  test::TempDir a, b;
  const std::string method = "finetune: {method: lora, lora: {r: 4, dropout: 0.1}}\n";
  RunOutput first = run_train(a.path(), parity_config(a.path() / "out", method), "train.epochs=3");
  RunOutput second = run_train(b.path(), parity_config(b.path() / "out", method), "train.epochs=3");
  ASSERT_EQ(first.losses.size(), 3u);
  EXPECT_EQ(first.losses, second.losses);  // exact, not approximate
}

TEST(TrainLoop, LoraDropoutChangesTrainingButIsSeeded) {
  test::TempDir a, b;
  RunOutput plain = run_train(a.path(), parity_config(a.path() / "out", "finetune: {method: lora, lora: {r: 4, dropout: 0.0}}\n"),
                              "train.epochs=4");
  RunOutput dropped = run_train(b.path(), parity_config(b.path() / "out", "finetune: {method: lora, lora: {r: 4, dropout: 0.5}}\n"),
                                "train.epochs=4");
  // Step 1: B = 0, so dropout cannot matter yet; afterwards it must.
  EXPECT_EQ(plain.losses[0], dropped.losses[0]);
  EXPECT_NE(plain.losses[3], dropped.losses[3]);
}

TEST(TrainSchedule, LrAtEveryStepFollowsTheFormula) {
  ScheduleSpec cosine{"cosine", 1.0, 3, 13, 0.1};
  EXPECT_DOUBLE_EQ(lr_at(0, cosine), 0.0);
  EXPECT_DOUBLE_EQ(lr_at(1, cosine), 1.0 / 3);
  EXPECT_DOUBLE_EQ(lr_at(3, cosine), 1.0);
  for (int64_t s = 3; s < 13; ++s) {
    const double progress = (s - 3) / 10.0;
    EXPECT_NEAR(lr_at(s, cosine), 0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * progress)), 1e-15) << s;
  }
  ScheduleSpec linear{"linear", 2.0, 0, 10, 0.0};
  for (int64_t s = 0; s < 10; ++s) EXPECT_NEAR(lr_at(s, linear), 2.0 * (10 - s) / 10.0, 1e-15);
  ScheduleSpec constant{"constant", 0.5, 2, 10, 0.0};
  EXPECT_DOUBLE_EQ(lr_at(1, constant), 0.25);
  for (int64_t s = 2; s < 10; ++s) EXPECT_DOUBLE_EQ(lr_at(s, constant), 0.5);
}

TEST(TrainFailures, NonFiniteLossStopsBeforeTheStep) {
  test::TempDir tmp;
  // A copy of the base model with one poisoned weight.
  const fs::path model_dir = tmp.path() / "nan_model";
  fs::create_directories(model_dir);
  fs::copy_file(train_golden() / "base" / "config.json", model_dir / "config.json");
  auto base = model::SafetensorsFile::open(train_golden() / "base" / "model.safetensors");
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& info : base->header().tensors) {
    at::Tensor t = base->load(info.name, at::kFloat);
    if (info.name == "model.layers.0.mlp.down_proj.weight") t[0][0] = std::numeric_limits<float>::quiet_NaN();
    tensors.emplace_back(info.name, t);
  }
  model::write_safetensors(model_dir / "model.safetensors", tensors);
  std::string config = parity_config(tmp.path() / "out", "finetune: {method: full}\n");
  config.replace(config.find((train_golden() / "base").string()), (train_golden() / "base").string().size(),
                 model_dir.string());
  test::write_text(tmp.path() / "c.yaml", config);
  auto result = test::run_command(test::sft_binary().string() + " train " + (tmp.path() / "c.yaml").string());
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_NE(result.output.find("non-finite loss at step 1"), std::string::npos) << result.output;
  EXPECT_FALSE(fs::exists(tmp.path() / "out" / "model"));  // nothing half-trained was exported
}

TEST(TrainFailures, ExistingRunIsNotOverwrittenWithoutForce) {
  test::TempDir tmp;
  run_train(tmp.path(), parity_config(tmp.path() / "out", "finetune: {method: lora}\n"), "train.epochs=1");
  auto again = test::run_command(test::sft_binary().string() + " train " + (tmp.path() / "config.yaml.in").string() +
                                 " resume=never");
  EXPECT_EQ(again.exit_code, 2) << again.output;
  EXPECT_NE(again.output.find("already holds a run"), std::string::npos) << again.output;
  auto forced = test::run_command(test::sft_binary().string() + " train " + (tmp.path() / "config.yaml.in").string() +
                                  " --force train.epochs=1");
  EXPECT_EQ(forced.exit_code, 0) << forced.output;
}

}  // namespace
}  // namespace sft
