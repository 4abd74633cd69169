// tests/test_qlora.cpp: QLoRA (`model.quantization: nf4`) end to end on the tiny golden Llama
// (scripts/make_train_golden.py's base and data): the transform keeps the base names and stores 4 bits;
// a 10-step LoRA (and DoRA) trajectory on the NF4 base tracks the same run on a base whose weights are
// the dequantised NF4 weights (the math is the same, only the storage differs); `sft merge` of a QLoRA
// run folds into the unquantised base weights; bad combinations exit 2 naming the key.
// Runs use one thread (train.threads=1), as the other training tests.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "model/lora.h"
#include "model/quantize.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "tests/test_util.h"
#include "trainer/config.h"
#include "trainer/setup.h"

namespace sft {
namespace {
namespace fs = std::filesystem;

fs::path train_golden() { return test::golden_dir() / "train"; }

// model_keys: extra keys of `model:` (e.g. "quantization: nf4"); extra: appended YAML.
std::string qlora_config(const fs::path& base, const std::string& model_keys, const fs::path& out_dir,
                         const std::string& extra) {
  return "model: {path: " + base.string() + ", attention: sdpa" + (model_keys.empty() ? "" : ", " + model_keys) +
         "}\n" +
         "data: {train: " + (train_golden() / "data.jsonl").string() +
         ", format: tokenized, packing: false, max_seq_len: 64}\n"
         "train: {epochs: 10, micro_batch_size: 8, grad_accum: 2, lr: 1.0e-3, warmup_steps: 2, scheduler: cosine,\n"
         "        weight_decay: 0.01, max_grad_norm: 1.0, seed: 3, threads: 1}\n"
         "log: {every_steps: 1, progress: false}\n"
         "output_dir: " + out_dir.string() + "\n" + extra;
}

std::vector<double> run_losses(const fs::path& dir, const std::string& config_text) {
  test::write_text(dir / "config.yaml", config_text);
  auto result = test::run_command(test::sft_binary().string() + " train " + (dir / "config.yaml").string());
  EXPECT_EQ(result.exit_code, 0) << result.output;
  std::vector<double> losses;
  std::ifstream in(dir / "out" / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) losses.push_back(nlohmann::json::parse(line)["loss"].get<double>());
  return losses;
}

// An HF model dir whose block projections hold dequant(quant(W)) of the golden base (fp32).
fs::path write_dequantised_base(const fs::path& out, bool double_quant) {
  model::CausalLM lm = model::load_pretrained(train_golden() / "base", at::kFloat, at::kCPU);
  torch::NoGradGuard no_grad;
  model::for_each_block_projection(lm, [&](const std::string&, torch::nn::Module&, const std::string&,
                                           model::Projection& p) {
    p->weight.copy_(kernels::nf4_dequantize(model::quantize_nf4(p->weight, double_quant), at::kFloat));
  });
  model::save_pretrained(lm, train_golden() / "base", out, at::kFloat, int64_t{5} << 30);
  return out;
}

void expect_adapters_match(const fs::path& ours_file, const fs::path& ref_file) {
  auto ours = model::SafetensorsFile::open(ours_file);
  auto ref = model::SafetensorsFile::open(ref_file);
  ASSERT_EQ(ours->header().tensors.size(), ref->header().tensors.size());
  for (const auto& info : ref->header().tensors) {
    at::Tensor r = ref->load(info.name, at::kFloat), o = ours->load(info.name, at::kFloat);
    EXPECT_LE((o - r).abs().max().item<double>(), 1e-4 * std::max(r.abs().max().item<double>(), 1e-12)) << info.name;
  }
}

TEST(QLoRA, TransformKeepsNamesStoresFourBitsAndComputesTheDequantisedModel) {
  model::CausalLM dense = model::load_pretrained(train_golden() / "base", at::kFloat, at::kCPU);
  model::CausalLM lm = model::load_pretrained(train_golden() / "base", at::kFloat, at::kCPU);
  std::set<std::string> names_before;
  for (const auto& item : lm->named_parameters()) names_before.insert(item.key());
  const std::vector<std::string> paths = model::quantize_model_nf4(lm, {/*double_quant=*/true});
  EXPECT_EQ(paths.size(), 7u * lm->config().num_hidden_layers);
  std::set<std::string> names_after;
  for (const auto& item : lm->named_parameters()) {
    names_after.insert(item.key());
    const bool projection = item.key().find("_proj.weight") != std::string::npos;
    EXPECT_EQ(item.value().scalar_type(), projection ? at::kByte : at::kFloat) << item.key();
    EXPECT_FALSE(item.value().requires_grad() && projection) << item.key();
  }
  EXPECT_EQ(names_after, names_before);  // base names kept: `weight` is the packed codes
  const model::QuantizationSummary s = model::quantization_summary(lm);
  EXPECT_EQ(s.modules, static_cast<int64_t>(paths.size()));
  // Per module: ceil(n/2) code bytes, one absmax byte per 64, one fp32 per 256 blocks, the 1 KiB code map.
  int64_t expected = 0;
  model::for_each_block_projection(lm, [&](const std::string&, torch::nn::Module&, const std::string&,
                                           model::Projection& p) {
    const auto& q = dynamic_cast<const model::Nf4ProjectionImpl&>(*p).nf4;
    const int64_t blocks = (q.numel() + 63) / 64;
    expected += (q.numel() + 1) / 2 + blocks + 4 * ((blocks + 255) / 256) + 4 * 256;
  });
  EXPECT_EQ(s.quantized_bytes, expected);
  EXPECT_LT(s.quantized_bytes * 5, s.dense_bytes);  // tiny weights: the code map weighs (SmolLM2: 7.6x smaller)

  // The quantised model's logits equal those of the dense model given the dequantised weights.
  {
    torch::NoGradGuard no_grad;
    model::for_each_block_projection(dense, [&](const std::string&, torch::nn::Module&, const std::string&,
                                                model::Projection& p) {
      p->weight.copy_(kernels::nf4_dequantize(model::quantize_nf4(p->weight, true), at::kFloat));
    });
  }
  const at::Tensor ids = at::tensor(std::vector<int64_t>{5, 17, 3, 90, 41, 7, 7, 120}, at::kLong);
  const at::Tensor pos = at::arange(8, at::kLong);
  const at::Tensor cu = at::tensor({0, 8}, at::kInt);
  const kernels::PackedSequences seqs{cu, cu, 8};
  const model::ForwardOptions options{kernels::AttentionImpl::Eager, false};
  torch::NoGradGuard no_grad;
  const at::Tensor a = lm->logits(lm->forward(ids, pos, seqs, options));
  const at::Tensor b = dense->logits(dense->forward(ids, pos, seqs, options));
  EXPECT_LE((a - b).abs().max().item<double>(), 1e-5 * b.abs().max().item<double>());
  model::CausalLM original = model::load_pretrained(train_golden() / "base", at::kFloat, at::kCPU);
  const at::Tensor orig = original->logits(original->forward(ids, pos, seqs, options));
  EXPECT_GT((a - orig).abs().max().item<double>(), 1e-4);  // quantisation did change the model
}

// The same seeded LoRA run three times: on the NF4 base, on the dequantised-weights base and on the
// original base. The first two agree within 1e-4 (loss by loss and the final adapter); the third differs.
void expect_trajectory_tracks_dequantised_base(const std::string& lora_keys, bool double_quant) {
  test::TempDir tmp;
  const fs::path deq = write_dequantised_base(tmp.path() / "deq_base", double_quant);
  const std::string finetune = "finetune: {method: lora, lora: {r: 4, alpha: 8, " + lora_keys + "}}\n";
  const std::string nf4 = std::string("quantization: nf4, double_quantization: ") + (double_quant ? "true" : "false");
  for (const char* run : {"q", "d", "o"}) fs::create_directories(tmp.path() / run);
  const auto q = run_losses(tmp.path() / "q", qlora_config(train_golden() / "base", nf4, tmp.path() / "q" / "out", finetune));
  const auto d = run_losses(tmp.path() / "d", qlora_config(deq, "", tmp.path() / "d" / "out", finetune));
  const auto o = run_losses(tmp.path() / "o", qlora_config(train_golden() / "base", "", tmp.path() / "o" / "out", finetune));
  ASSERT_EQ(q.size(), 10u);
  ASSERT_EQ(d.size(), 10u);
  ASSERT_EQ(o.size(), 10u);
  for (size_t i = 0; i < q.size(); ++i) EXPECT_NEAR(q[i], d[i], 1e-4 * std::abs(d[i])) << "loss at step " << i + 1;
  EXPECT_LT(q.back(), q.front());  // it learned
  double largest = 0;
  for (size_t i = 0; i < q.size(); ++i) largest = std::max(largest, std::abs(q[i] - o[i]));
  EXPECT_GT(largest, 1e-4) << "the NF4 run equals the unquantised run: nothing was quantised";
  expect_adapters_match(tmp.path() / "q" / "out" / "adapter" / "adapter_model.safetensors",
                        tmp.path() / "d" / "out" / "adapter" / "adapter_model.safetensors");
  // The adapter is ordinary PEFT: no quantisation keys, the base names.
  const auto config = nlohmann::json::parse(test::read_text(tmp.path() / "q" / "out" / "adapter" / "adapter_config.json"));
  EXPECT_EQ(config["peft_type"], "LORA");
  EXPECT_EQ(config["base_model_name_or_path"], (train_golden() / "base").string());
}

TEST(QLoRA, LoraTrajectoryTracksTheDequantisedBase) {
  expect_trajectory_tracks_dequantised_base("dropout: 0.1", /*double_quant=*/true);
}
TEST(QLoRA, LoraTrajectoryWithoutDoubleQuantisation) {
  expect_trajectory_tracks_dequantised_base("dropout: 0.0", /*double_quant=*/false);
}
TEST(QLoRA, DoraTrajectoryTracksTheDequantisedBase) {
  expect_trajectory_tracks_dequantised_base("dropout: 0.1, dora: true", /*double_quant=*/true);
}

// sft merge of a QLoRA run folds the adapter into the unquantised weights of --model (peft #2321's trap
// is merging into dequant(quant(W))): merged = W + scale * B @ A with the original W.
TEST(QLoRA, MergeFoldsIntoTheUnquantisedBase) {
  test::TempDir tmp;
  fs::create_directories(tmp.path() / "q");
  std::string config = qlora_config(train_golden() / "base", "quantization: nf4", tmp.path() / "q" / "out",
                                    "finetune: {method: lora, lora: {r: 4, alpha: 8, dropout: 0.0}}\n");
  const std::string data = "format: tokenized";
  config.replace(config.find(data), data.size(), "eval: " + (train_golden() / "data.jsonl").string() + ", " + data);
  run_losses(tmp.path() / "q", config);
  // sft eval --adapter with the same config scores on the same NF4 base: training's last evaluation, exactly.
  auto eval = test::run_command(test::sft_binary().string() + " eval " + (tmp.path() / "q" / "config.yaml").string() +
                                " --adapter " + (tmp.path() / "q" / "out").string() + " --out " +
                                (tmp.path() / "eval").string());
  ASSERT_EQ(eval.exit_code, 0) << eval.output;
  std::string last;
  std::ifstream lines(tmp.path() / "q" / "out" / "eval.jsonl");
  for (std::string line; std::getline(lines, line);) last = line;
  const auto trained = nlohmann::json::parse(last);
  const auto scored = nlohmann::json::parse(test::read_text(tmp.path() / "eval" / "summary.json"));
  EXPECT_EQ(trained["loss"].get<double>(), scored["loss"].get<double>()) << scored.dump();
  const fs::path merged = tmp.path() / "merged";
  auto result = test::run_command(test::sft_binary().string() + " merge --model " + (train_golden() / "base").string() +
                                  " --adapter " + (tmp.path() / "q" / "out" / "adapter").string() + " --out " +
                                  merged.string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  auto base = model::SafetensorsFile::open(train_golden() / "base" / "model.safetensors");
  auto out = model::SafetensorsFile::open(merged / "model.safetensors");
  auto adapter = model::SafetensorsFile::open(tmp.path() / "q" / "out" / "adapter" / "adapter_model.safetensors");
  int checked = 0;
  for (const auto& info : base->header().tensors) {
    const std::string lora = "base_model.model." + info.name.substr(0, info.name.size() - std::string(".weight").size());
    const at::Tensor w = base->load(info.name, at::kFloat), m = out->load(info.name, at::kFloat);
    if (!adapter->find(lora + ".lora_A.weight")) {
      EXPECT_TRUE(at::equal(w, m)) << info.name;
      continue;
    }
    const at::Tensor delta = 2.0 * at::matmul(adapter->load(lora + ".lora_B.weight", at::kFloat),
                                              adapter->load(lora + ".lora_A.weight", at::kFloat));
    EXPECT_LE((m - (w + delta)).abs().max().item<double>(), 1e-6 * w.abs().max().item<double>()) << info.name;
    const at::Tensor dequantised = kernels::nf4_dequantize(model::quantize_nf4(w, true), at::kFloat);
    EXPECT_GT((m - (dequantised + delta)).abs().max().item<double>(), 1e-3 * w.abs().max().item<double>())
        << info.name << ": merged into the dequantised weights";
    ++checked;
  }
  EXPECT_EQ(checked, 14);
  // merge_lora itself refuses a model whose base is 4-bit.
  model::CausalLM lm = model::load_pretrained(train_golden() / "base", at::kFloat, at::kCPU);
  model::quantize_model_nf4(lm, {});
  model::LoraSpec spec;
  spec.rank = 2;
  spec.targets = {"q_proj"};
  model::apply_lora(lm, spec);
  EXPECT_THROW(model::merge_lora(lm), std::logic_error);
}

TEST(QLoRA, BadCombinationsExitTwoNamingTheKey) {
  test::TempDir tmp;
  test::write_text(tmp.path() / "c.yaml", "model: {path: m, quantization: nf4}\ndata: {train: x.jsonl}\n");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"finetune.method=full", "model.quantization nf4 needs finetune.method lora (got full)"},
      {"finetune.method=freeze", "model.quantization nf4 needs finetune.method lora (got freeze)"},
      {"model.quantization=int4", "model.quantization 'int4' is not one of none|nf4"},
      {"model.double_quantization=sometimes", "model.double_quantization must be true or false"},
      {"finetune.lora.init=pissa", "finetune.lora.init pissa with model.quantization nf4 is not implemented"},
      {"finetune.lora.init=olora", "finetune.lora.init olora with model.quantization nf4 is not implemented"}};
  for (const auto& [bad, message] : cases) {
    auto result = test::run_command(test::sft_binary().string() + " train " + (tmp.path() / "c.yaml").string() + " " + bad);
    EXPECT_EQ(result.exit_code, 2) << bad << "\n" << result.output;
    EXPECT_NE(result.output.find(message), std::string::npos) << bad << "\n" << result.output;
  }
  // Defaults, the saved YAML and `sft help config`.
  const Config defaults = parse_config("model: {path: m}\ndata: {train: x.jsonl}\n", "c.yaml", {}, "c");
  EXPECT_EQ(defaults.model.quantization, Quantization::kNone);
  EXPECT_TRUE(defaults.model.double_quantization);
  const Config c = parse_config("model: {path: m, quantization: nf4, double_quantization: false}\ndata: {train: x.jsonl}\n",
                                "c.yaml", {}, "c");
  const Config again = parse_config(config_to_yaml(c), "resolved.yaml", {}, "c");
  EXPECT_EQ(again.model.quantization, Quantization::kNf4);
  EXPECT_FALSE(again.model.double_quantization);
  for (const char* key : {"model.quantization", "model.double_quantization"}) {
    EXPECT_NE(config_reference().find(key), std::string::npos) << key;
  }
}

}  // namespace
}  // namespace sft
