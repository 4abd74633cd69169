// tests/test_adapters.cpp: the adapter methods of issue 14 against PEFT (goldens from
// scripts/make_train_golden.py): DoRA's forward on a PEFT adapter (logits within 1e-5), its merge, the
// saved tensor names; PiSSA/OLoRA initial adapters and residual base weights (1e-5); the gaussian init;
// LoRA+ parameter groups as PEFT's create_loraplus_optimizer makes them; and the bad-input errors (exit 2).
// The 10-step DoRA and LoRA+ trajectories are TrainParity.DoraMatchesPeft / LoraPlusMatchesPeft.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "common/errors.h"
#include "model/lora.h"
#include "model/lora_init.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "tests/test_util.h"
#include "trainer/config.h"
#include "trainer/export.h"
#include "trainer/optimizer.h"
#include "trainer/setup.h"

namespace sft {
namespace {
namespace fs = std::filesystem;

fs::path train_golden() { return test::golden_dir() / "train"; }

at::Tensor logits_of(model::CausalLM& lm, const at::Tensor& ids) {
  torch::NoGradGuard no_grad;
  const int64_t n = ids.size(0);
  at::Tensor cu = at::tensor(std::vector<int32_t>{0, static_cast<int32_t>(n)}, at::kInt);
  kernels::PackedSequences seqs{cu, cu, n};
  at::Tensor hidden = lm->forward(ids, at::arange(n, at::kLong), seqs, {kernels::AttentionImpl::Sdpa, false});
  return lm->logits(hidden).to(at::kFloat);
}

double max_rel_diff(const at::Tensor& ours, const at::Tensor& ref) {
  return (ours - ref).abs().max().item<double>() / std::max(ref.abs().max().item<double>(), 1e-30);
}

TEST(LoraDora, ForwardOnPeftAdapterMatchesPeftLogits) {
  auto golden = model::SafetensorsFile::open(train_golden() / "dora_random_logits.safetensors");
  const at::Tensor ids = golden->load("ids", at::kLong), ref = golden->load("logits", at::kFloat);
  model::CausalLM lm = model::load_pretrained(train_golden() / "base", at::kFloat, at::kCPU);
  const at::Tensor base_logits = logits_of(lm, ids);
  const model::LoraSpec spec = load_peft_adapter(lm, train_golden() / "adapter_dora_random");
  EXPECT_TRUE(spec.dora);
  lm->eval();
  for (const auto& [path, lora] : model::lora_modules(lm)) ASSERT_TRUE(lora->is_dora()) << path;
  const at::Tensor ours = logits_of(lm, ids);
  EXPECT_GT(max_rel_diff(base_logits, ref), 1e-2);  // the adapter matters
  EXPECT_LE(max_rel_diff(ours, ref), 1e-5);
  // Merging folds the magnitude in: the merged plain model gives the same logits.
  model::merge_lora(lm);
  EXPECT_TRUE(model::lora_modules(lm).empty());
  EXPECT_LE(max_rel_diff(logits_of(lm, ids), ref), 1e-5);
}

TEST(LoraDora, StepZeroEqualsBaseAndMagnitudeIsTheRowNorm) {
  model::CausalLM lm = model::load_pretrained(train_golden() / "base", at::kFloat, at::kCPU);
  const at::Tensor ids = at::tensor(std::vector<int64_t>{1, 5, 9, 44, 3}, at::kLong);
  const at::Tensor base_logits = logits_of(lm, ids);
  model::LoraSpec spec{4, 8.0, 0.0, false, {"all"}, /*dora=*/true};
  model::apply_lora(lm, spec);
  for (const auto& [path, lora] : model::lora_modules(lm)) {
    ASSERT_EQ(lora->lora_magnitude_vector.sizes(), (std::vector<int64_t>{lora->out_features()}));
    EXPECT_TRUE(lora->lora_magnitude_vector.requires_grad());
    // PEFT: linalg.norm(W + dW, dim=1), one per output row; B = 0 at init.
    EXPECT_TRUE(at::allclose(lora->lora_magnitude_vector, at::linalg_vector_norm(lora->weight, 2, {1}), 1e-6, 1e-7))
        << path;
  }
  EXPECT_LE(max_rel_diff(logits_of(lm, ids), base_logits), 1e-6);
}

// With dropout PEFT's DoraLinearVariant.forward recomputes the base part on the dropped-out input x':
//   y = x W^T + b + (m/n - 1) * x' W^T + (m/n) * scale * B A x'.  The same dropout mask is drawn by reseeding.
TEST(LoraDora, DropoutFollowsPeftsFormula) {
  torch::manual_seed(11);
  model::Projection base(64, 48, /*with_bias=*/true, at::TensorOptions().dtype(at::kFloat));
  torch::NoGradGuard no_grad;
  base->weight.normal_(0, 0.02);  // a Projection is not initialised (the loader fills it)
  base->bias.normal_();
  model::LoraProjectionImpl lora(*base, 4, 2.0, 0.5, /*dora=*/true);
  lora.lora_B->weight.normal_(0, 0.1);
  lora.lora_magnitude_vector.mul_(1.3);
  lora.train();
  const at::Tensor x = at::randn({5, 64});
  torch::manual_seed(5);
  const at::Tensor ours = lora.forward(x);
  torch::manual_seed(5);
  const at::Tensor dropped = at::dropout(x, 0.5, true);
  const at::Tensor adapted = lora.weight + 2.0 * at::matmul(lora.lora_B->weight, lora.lora_A->weight);
  const at::Tensor mag_norm_scale = lora.lora_magnitude_vector / at::linalg_vector_norm(adapted, 2, {1});
  const at::Tensor ref = at::linear(x, lora.weight, lora.bias) + (mag_norm_scale - 1) * at::linear(dropped, lora.weight) +
                         mag_norm_scale * 2.0 * at::linear(at::linear(dropped, lora.lora_A->weight), lora.lora_B->weight);
  EXPECT_LE(max_rel_diff(ours, ref), 1e-6);
  EXPECT_GT(max_rel_diff(ours, lora.merged_weight().matmul(x.t()).t() + lora.bias), 1e-2);  // dropout did act
}

TEST(LoraDora, AdapterUsesPeftNamesAndRoundTrips) {
  test::TempDir tmp;
  model::CausalLM lm = model::load_pretrained(train_golden() / "base", at::kFloat, at::kCPU);
  load_peft_adapter(lm, train_golden() / "adapter_dora_random");
  model::LoraSpec spec{4, 8.0, 0.0, false, {"q_proj"}, true};
  save_peft_adapter(lm, spec, "base", tmp.path() / "adapter");
  std::ifstream in(tmp.path() / "adapter" / "adapter_config.json");
  EXPECT_TRUE(nlohmann::json::parse(in)["use_dora"].get<bool>());
  auto ours = model::SafetensorsFile::open(tmp.path() / "adapter" / "adapter_model.safetensors");
  auto ref = model::SafetensorsFile::open(train_golden() / "adapter_dora_random" / "adapter_model.safetensors");
  ASSERT_EQ(ours->header().tensors.size(), ref->header().tensors.size());
  for (const auto& info : ref->header().tensors) {
    ASSERT_NE(ours->find(info.name), nullptr) << info.name;
    EXPECT_TRUE(at::equal(ours->load(info.name, at::kFloat), ref->load(info.name, at::kFloat))) << info.name;
  }
  // A plain-LoRA model refuses a DoRA adapter instead of dropping its magnitudes.
  model::CausalLM plain = model::load_pretrained(train_golden() / "base", at::kFloat, at::kCPU);
  model::apply_lora(plain, model::LoraSpec{4, 8.0, 0.0, false, {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                 "up_proj", "down_proj"}});
  EXPECT_THROW(load_peft_adapter(plain, train_golden() / "adapter_dora_random"), InputError);
}

// PEFT's pissa/olora init on the golden base: every adapter and every modified base weight within 1e-5.
void expect_init_matches_peft(model::LoraInit init) {
  model::CausalLM lm = model::load_pretrained(train_golden() / "base", at::kFloat, at::kCPU);
  model::LoraSpec spec{4, 8.0, 0.0, false, {"all"}};
  spec.init = init;
  model::apply_lora(lm, spec);
  auto ref = model::SafetensorsFile::open(train_golden() / (std::string(enum_name(init)) + "_init.safetensors"));
  std::map<std::string, at::Tensor> ours;
  for (const auto& item : lm->named_parameters()) ours["base_model.model." + item.key()] = item.value();
  int compared = 0;
  for (const auto& info : ref->header().tensors) {
    ASSERT_TRUE(ours.count(info.name)) << info.name;
    const at::Tensor r = ref->load(info.name, at::kFloat);
    EXPECT_LE((ours[info.name] - r).abs().max().item<double>(), 1e-5 * std::max(r.abs().max().item<double>(), 1.0))
        << enum_name(init) << " " << info.name;
    ++compared;
  }
  EXPECT_EQ(compared, 3 * 7 * 2);  // A, B and W for 7 projections in each of 2 layers
  // The adapted model still equals the base model at step 0 (W_res + scale B A = W).
  model::CausalLM base = model::load_pretrained(train_golden() / "base", at::kFloat, at::kCPU);
  const at::Tensor ids = at::tensor(std::vector<int64_t>{1, 5, 9, 44, 3}, at::kLong);
  EXPECT_LE(max_rel_diff(logits_of(lm, ids), logits_of(base, ids)), 1e-5);
}

TEST(LoraInit, PissaMatchesPeft) { expect_init_matches_peft(model::LoraInit::kPissa); }
TEST(LoraInit, OloraMatchesPeft) { expect_init_matches_peft(model::LoraInit::kOlora); }

TEST(LoraInit, GaussianIsNormalWithStdOneOverRAndZeroB) {
  model::CausalLM lm = model::load_pretrained(train_golden() / "base", at::kFloat, at::kCPU);
  model::LoraSpec spec{4, 8.0, 0.0, false, {"all"}};
  spec.init = model::LoraInit::kGaussian;
  torch::manual_seed(3);
  model::apply_lora(lm, spec);
  std::vector<at::Tensor> a_values;
  for (const auto& [path, lora] : model::lora_modules(lm)) {
    EXPECT_EQ(lora->lora_B->weight.abs().max().item<double>(), 0.0) << path;
    a_values.push_back(lora->lora_A->weight.flatten());
  }
  const at::Tensor all = at::cat(a_values);  // ~10k samples: std within a few % of 1/r = 0.25
  EXPECT_NEAR(all.std().item<double>(), 0.25, 0.01);
  EXPECT_NEAR(all.mean().item<double>(), 0.0, 0.01);
  // Kaiming-uniform(a = sqrt(5)) would be bounded by 1/sqrt(in) = 0.125 for in = 64.
  EXPECT_GT(all.abs().max().item<double>(), 0.5);
}

TEST(LoraInit, PissaRefusesRankAboveTheSmallerWeightDimension) {
  test::TempDir tmp;
  const fs::path g = train_golden();
  test::write_text(tmp.path() / "c.yaml",
                   "model: {path: " + (g / "base").string() + "}\ndata: {train: " + (g / "data.jsonl").string() +
                       ", format: tokenized}\ntrain: {threads: 1}\noutput_dir: " + (tmp.path() / "out").string() +
                       "\nfinetune: {lora: {r: 100, init: pissa}}\n");
  auto result = test::run_command(test::sft_binary().string() + " train " + (tmp.path() / "c.yaml").string());
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("finetune.lora.r 100 is larger than the smaller dimension of model.layers.0.self_attn"),
            std::string::npos)
      << result.output;
}

// PEFT's create_loraplus_optimizer groups (loraplus_groups.json): every trainable parameter's lr and decay.
TEST(LoraPlus, ParameterGroupsMatchPeft) {
  std::ifstream in(train_golden() / "loraplus_groups.json");
  const nlohmann::json golden = nlohmann::json::parse(in);
  const double lr = golden["lr"].get<double>(), ratio = golden["ratio"].get<double>();
  for (const bool dora : {false, true}) {
    const nlohmann::json& ref = golden["groups"][dora ? "dora" : "lora"];
    model::CausalLM lm = model::load_pretrained(train_golden() / "base", at::kFloat, at::kCPU);
    model::apply_lora(lm, model::LoraSpec{4, 8.0, 0.0, false, {"all"}, dora});
    std::vector<std::pair<std::string, at::Tensor>> named;
    for (const auto& item : lm->named_parameters()) named.emplace_back(item.key(), item.value());
    const std::vector<NamedParameter> params = trainable_parameters(named, ratio);
    ASSERT_EQ(params.size(), ref.size()) << "dora " << dora;
    int boosted = 0;
    for (const NamedParameter& p : params) {
      const std::string name = "base_model.model." + p.name;
      ASSERT_TRUE(ref.contains(name)) << name;
      EXPECT_DOUBLE_EQ(lr * p.lr_scale, ref[name]["lr"].get<double>()) << name;
      EXPECT_EQ(p.decay, ref[name]["weight_decay"].get<double>() > 0) << name;
      boosted += p.lr_scale != 1.0;
    }
    EXPECT_EQ(boosted, dora ? 2 * 14 : 14);  // lora_B (and magnitudes) of 14 modules
  }
  // Without a ratio every lr is the step's lr.
  model::CausalLM lm = model::load_pretrained(train_golden() / "base", at::kFloat, at::kCPU);
  model::apply_lora(lm, model::LoraSpec{4, 8.0, 0.0, false, {"all"}});
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& item : lm->named_parameters()) named.emplace_back(item.key(), item.value());
  for (const NamedParameter& p : trainable_parameters(named)) EXPECT_EQ(p.lr_scale, 1.0) << p.name;
}

std::string config_error(const std::vector<std::string>& overrides) {
  try {
    parse_config("model: {path: m}\ndata: {train: x.jsonl}\n", "c.yaml", overrides, "c");
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(ConfigAdapters, NewKeysParseAndRoundTrip) {
  const Config c = parse_config("model: {path: m}\ndata: {train: x.jsonl}\n"
                                "finetune: {lora: {dora: true, lr_ratio: 16, init: gaussian}}\n", "c.yaml", {}, "c");
  EXPECT_TRUE(c.finetune.lora.dora);
  EXPECT_EQ(c.finetune.lora.lr_ratio, 16.0);
  EXPECT_EQ(c.finetune.lora.init, LoraInit::kGaussian);
  const Config again = parse_config(config_to_yaml(c), "resolved.yaml", {}, "c");
  EXPECT_EQ(again.finetune.lora.lr_ratio, 16.0);
  EXPECT_EQ(again.finetune.lora.init, LoraInit::kGaussian);
  const Config defaults = parse_config("model: {path: m}\ndata: {train: x.jsonl}\n", "c.yaml", {}, "c");
  EXPECT_FALSE(defaults.finetune.lora.dora);
  EXPECT_FALSE(defaults.finetune.lora.lr_ratio.has_value());
  EXPECT_EQ(defaults.finetune.lora.init, LoraInit::kDefault);
  const std::string reference = config_reference();
  for (const char* key : {"finetune.lora.dora", "finetune.lora.lr_ratio", "finetune.lora.init"}) {
    EXPECT_NE(reference.find(key), std::string::npos) << key;
  }
}

TEST(ConfigAdapters, BadValuesNameTheKey) {
  EXPECT_NE(config_error({"finetune.lora.lr_ratio=0"}).find("finetune.lora.lr_ratio must be > 0"), std::string::npos);
  EXPECT_NE(config_error({"finetune.lora.lr_ratio=-2"}).find("finetune.lora.lr_ratio must be > 0"), std::string::npos);
  EXPECT_NE(config_error({"finetune.lora.lr_ratio=abc"}).find("finetune.lora.lr_ratio must be a number"),
            std::string::npos);
  EXPECT_NE(config_error({"finetune.lora.init=loftq"}).find("finetune.lora.init 'loftq' is not one of"),
            std::string::npos);
  EXPECT_NE(config_error({"finetune.lora.dora=true", "finetune.lora.init=pissa"})
                .find("finetune.lora.dora with finetune.lora.init pissa is not implemented"),
            std::string::npos);
  EXPECT_NE(config_error({"finetune.lora.dora=maybe"}).find("finetune.lora.dora must be true or false"),
            std::string::npos);
  EXPECT_NE(config_error({"finetune.lora.init=olora", "finetune.lora.init_from=dir"})
                .find("cannot be combined with finetune.lora.init_from"),
            std::string::npos);
}

TEST(ConfigAdapters, BadValuesExitTwoFromTheBinary) {
  test::TempDir tmp;
  test::write_text(tmp.path() / "c.yaml", "model: {path: m}\ndata: {train: x.jsonl}\n");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"finetune.lora.lr_ratio=0", "finetune.lora.lr_ratio must be > 0"},
      {"finetune.lora.init=loftq", "finetune.lora.init 'loftq' is not one of default|gaussian|pissa|olora"},
      {"finetune.lora.dora=true finetune.lora.init=olora", "finetune.lora.dora with finetune.lora.init olora is not implemented"}};
  for (const auto& [bad, message] : cases) {
    auto result = test::run_command(test::sft_binary().string() + " train " + (tmp.path() / "c.yaml").string() + " " + bad);
    EXPECT_EQ(result.exit_code, 2) << bad << "\n" << result.output;
    EXPECT_NE(result.output.find(message), std::string::npos) << result.output;
  }
}

}  // namespace
}  // namespace sft
