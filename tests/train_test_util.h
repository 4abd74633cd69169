// tests/train_test_util.h: helpers shared by the training tests (test_train*.cpp): the golden runs of
// scripts/make_train_golden.py, running `sft train` on a config, and comparing losses and tensors with
// the reference; the freeze settings of LLaMA-Factory's rules.
#pragma once
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

namespace sft::test_support {
namespace fs = std::filesystem;

inline fs::path train_golden() { return test::golden_dir() / "train"; }

// A config for the parity runs; `extra` is appended YAML (method-specific keys).
inline std::string parity_config(const fs::path& out_dir, const std::string& extra) {
  const fs::path g = train_golden();
  return "model: {path: " + (g / "base").string() + ", attention: sdpa}\n" +
         "data: {train: " + (g / "data.jsonl").string() + ", format: tokenized, packing: false, max_seq_len: 64}\n" +
         "train: {epochs: 10, micro_batch_size: 8, grad_accum: 2, lr: 1.0e-3, warmup_steps: 2, scheduler: cosine,\n"
         "        weight_decay: 0.01, max_grad_norm: 1.0, seed: 3, threads: 1}\n"
         "log: {every_steps: 1, progress: false}\n"
         "output_dir: " + out_dir.string() + "\n" + extra;
}

struct RunOutput {
  std::vector<double> losses, lrs, grad_norms;
  std::string raw_metrics;
};

inline RunOutput run_train(const fs::path& dir, const std::string& config_text, const std::string& overrides = "") {
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

inline nlohmann::json golden_losses(const std::string& method) {
  std::ifstream in(train_golden() / (method + "_losses.json"));
  return nlohmann::json::parse(in);
}

inline void expect_losses_match(const RunOutput& ours, const nlohmann::json& ref) {
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
inline void expect_tensors_match(const fs::path& ours_file, const fs::path& ref_file, const std::string& ours_prefix = "") {
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


// The freeze settings of scripts/make_train_golden.py with the parameter names LLaMA-Factory's rules make
// trainable for each (freeze_sets.json; its first two entries are the `freeze` and `freeze_narrow` runs).
struct FreezeCase {
  nlohmann::json settings;             // trainable_layers, trainable_modules, extra_modules
  std::set<std::string> trainable;
  std::string yaml() const {           // the finetune section of a config
    return "finetune: {method: freeze, freeze: {trainable_layers: " + settings["trainable_layers"].dump() +
           ", trainable_modules: " + settings["trainable_modules"].dump() +
           ", extra_modules: " + settings["extra_modules"].dump() + "}}\n";
  }
};

inline std::vector<FreezeCase> freeze_cases() {
  std::ifstream in(train_golden() / "freeze_sets.json");
  std::vector<FreezeCase> cases;
  for (const auto& entry : nlohmann::json::parse(in)) {
    const auto names = entry["trainable"].get<std::vector<std::string>>();
    cases.push_back({entry, std::set<std::string>(names.begin(), names.end())});
  }
  return cases;
}

// Every tensor of an exported model differs from the base model exactly when it is in `trainable`:
// trained tensors moved, frozen ones are bit-identical.
inline void expect_only_trainable_changed(const fs::path& model_file, const std::set<std::string>& trainable) {
  auto ours = model::SafetensorsFile::open(model_file);
  auto base = model::SafetensorsFile::open(train_golden() / "base" / "model.safetensors");
  int frozen = 0, trained = 0;
  for (const auto& info : base->header().tensors) {
    at::Tensor a = ours->load(info.name, at::kFloat), b = base->load(info.name, at::kFloat);
    if (trainable.count(info.name)) {
      EXPECT_FALSE(at::equal(a, b)) << info.name << " should have trained";
      ++trained;
    } else {
      EXPECT_TRUE(at::equal(a, b)) << info.name << " is frozen but changed";
      ++frozen;
    }
  }
  EXPECT_EQ(trained, static_cast<int>(trainable.size()));
  EXPECT_GT(frozen, 0);
}

}  // namespace sft::test_support
