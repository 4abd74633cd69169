// tests/test_model.cpp: the decoder against HF transformers. Golden models and logits come from
// scripts/make_golden.py (tiny random Llama/Mistral/Qwen2 models, fixed seed). fp32 logits must match
// within 1e-5 * max(1, max|ref|); a packed batch of three documents must equal three separate forwards.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>

#include "common/errors.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "tests/test_util.h"

namespace sft {
namespace {
namespace fs = std::filesystem;

struct Reference {
  std::vector<at::Tensor> input_ids;  // int64 [L_d]
  std::vector<at::Tensor> logits;     // fp32 [L_d, vocab]
};

Reference load_reference(const fs::path& dir) {
  auto file = model::SafetensorsFile::open(dir / "reference.safetensors");
  Reference ref;
  for (int d = 0; file->find("input_ids_" + std::to_string(d)); ++d) {
    ref.input_ids.push_back(file->load("input_ids_" + std::to_string(d), at::kLong));
    ref.logits.push_back(file->load("logits_" + std::to_string(d), at::kFloat));
  }
  return ref;
}

kernels::PackedSequences packed(const std::vector<int64_t>& lengths) {
  std::vector<int32_t> offsets{0};
  int64_t longest = 0;
  for (int64_t n : lengths) {
    offsets.push_back(offsets.back() + static_cast<int32_t>(n));
    longest = std::max(longest, n);
  }
  at::Tensor cu = at::tensor(offsets, at::kInt);
  return {cu, cu, longest};
}

at::Tensor forward_logits(model::CausalLM& lm, const at::Tensor& ids, kernels::AttentionImpl impl) {
  torch::NoGradGuard no_grad;
  const int64_t n = ids.numel();
  at::Tensor hidden = lm->forward(ids, at::arange(n, at::kLong), packed({n}), {impl, false});
  return lm->logits(hidden).to(at::kFloat);
}

double max_abs(const at::Tensor& t) { return t.abs().max().item<double>(); }

class ModelParity : public ::testing::TestWithParam<std::string> {};

TEST_P(ModelParity, LogitsMatchTransformersFp32) {
  const fs::path dir = test::golden_dir() / "models" / GetParam();
  model::CausalLM lm = model::load_pretrained(dir, at::kFloat, at::kCPU);
  lm->eval();
  Reference ref = load_reference(dir);
  ASSERT_EQ(ref.logits.size(), 3u);
  for (auto impl : {kernels::AttentionImpl::Sdpa, kernels::AttentionImpl::Eager}) {
    for (size_t d = 0; d < ref.logits.size(); ++d) {
      at::Tensor ours = forward_logits(lm, ref.input_ids[d], impl);
      const double tol = 1e-5 * std::max(1.0, max_abs(ref.logits[d]));
      const double err = max_abs(ours - ref.logits[d]);
      EXPECT_LE(err, tol) << GetParam() << " doc " << d << " attention " << kernels::to_string(impl);
      EXPECT_GT(max_abs(ref.logits[d]), 0.5) << "reference logits too small to make the test meaningful";
    }
  }
}

TEST_P(ModelParity, PackedBatchEqualsSeparateForwards) {
  const fs::path dir = test::golden_dir() / "models" / GetParam();
  model::CausalLM lm = model::load_pretrained(dir, at::kFloat, at::kCPU);
  lm->eval();
  Reference ref = load_reference(dir);
  std::vector<int64_t> lengths;
  std::vector<at::Tensor> positions;
  for (const at::Tensor& ids : ref.input_ids) {
    lengths.push_back(ids.numel());
    positions.push_back(at::arange(ids.numel(), at::kLong));
  }
  torch::NoGradGuard no_grad;
  at::Tensor hidden = lm->forward(at::cat(ref.input_ids), at::cat(positions), packed(lengths),
                                  {kernels::AttentionImpl::Sdpa, false});
  at::Tensor logits = lm->logits(hidden);
  int64_t offset = 0;
  for (size_t d = 0; d < ref.logits.size(); ++d) {
    at::Tensor slice = logits.slice(0, offset, offset + lengths[d]);
    const double tol = 1e-5 * std::max(1.0, max_abs(ref.logits[d]));
    EXPECT_LE(max_abs(slice - ref.logits[d]), tol) << "doc " << d << " leaked attention across documents";
    // Per-example next-token loss: packed, run alone (ours), and from transformers' logits.
    const int64_t len = lengths[d];
    auto next_token_loss = [&](const at::Tensor& doc_logits) {
      return at::cross_entropy_loss(doc_logits.slice(0, 0, len - 1), ref.input_ids[d].slice(0, 1, len)).item<double>();
    };
    const double packed_loss = next_token_loss(slice);
    const double alone_loss = next_token_loss(forward_logits(lm, ref.input_ids[d], kernels::AttentionImpl::Sdpa));
    const double reference_loss = next_token_loss(ref.logits[d]);
    EXPECT_NEAR(packed_loss, alone_loss, 1e-6 * alone_loss) << "doc " << d;
    EXPECT_NEAR(packed_loss, reference_loss, 1e-5 * reference_loss) << "doc " << d;
    offset += lengths[d];
  }
}

INSTANTIATE_TEST_SUITE_P(Golden, ModelParity,
                         ::testing::Values("llama_gqa", "mistral", "qwen2_bias", "llama_tied_rope3", "llama_sharded"));

TEST(ModelLoad, ConfigFieldsFromConfigJson) {
  model::ModelConfig gqa = model::load_model_config(test::golden_dir() / "models" / "llama_gqa");
  EXPECT_EQ(gqa.num_key_value_heads, 2);
  EXPECT_EQ(gqa.head_dim, 16);
  model::ModelConfig tied = model::load_model_config(test::golden_dir() / "models" / "llama_tied_rope3");
  EXPECT_TRUE(tied.tie_word_embeddings);
  EXPECT_EQ(tied.rope_scaling, model::RopeScaling::Llama3);
  EXPECT_EQ(tied.rope_original_max_position, 16);
  model::ModelConfig qwen = model::load_model_config(test::golden_dir() / "models" / "qwen2_bias");
  EXPECT_TRUE(qwen.attention_bias);
  model::ModelConfig sharded = model::load_model_config(test::golden_dir() / "models" / "llama_sharded");
  EXPECT_EQ(sharded.head_dim, 32);  // explicit head_dim != hidden / heads
}

TEST(ModelLoad, TiedModelHasNoSeparateLmHead) {
  model::CausalLM lm = model::load_pretrained(test::golden_dir() / "models" / "llama_tied_rope3", at::kFloat, at::kCPU);
  EXPECT_TRUE(lm->lm_head.is_empty());
  for (const auto& item : lm->named_parameters()) EXPECT_NE(item.key(), "lm_head.weight");
}

TEST(ModelLoad, Bf16LoadOfFp32Checkpoint) {
  const fs::path dir = test::golden_dir() / "models" / "llama_gqa";
  model::CausalLM fp32 = model::load_pretrained(dir, at::kFloat, at::kCPU);
  model::CausalLM bf16 = model::load_pretrained(dir, at::kBFloat16, at::kCPU);
  auto p32 = fp32->named_parameters();
  for (const auto& item : bf16->named_parameters()) {
    ASSERT_EQ(item.value().scalar_type(), at::kBFloat16) << item.key();
    EXPECT_TRUE(at::equal(item.value(), p32[item.key()].to(at::kBFloat16))) << item.key();
  }
  // bf16 logits stay close to the fp32 reference (bf16 has ~3 significant digits).
  Reference ref = load_reference(dir);
  bf16->eval();
  at::Tensor ours = forward_logits(bf16, ref.input_ids[0], kernels::AttentionImpl::Sdpa);
  const double rel = max_abs(ours - ref.logits[0]) / max_abs(ref.logits[0]);
  EXPECT_LT(rel, 0.08);
  EXPECT_GT(rel, 0.0);  // it really ran in bf16
}

// Copies a golden model dir so a test can corrupt it.
fs::path copy_model(const fs::path& from, const fs::path& to) {
  fs::create_directories(to);
  for (const auto& entry : fs::directory_iterator(from)) fs::copy(entry.path(), to / entry.path().filename());
  return to;
}

void expect_input_error(const std::function<void()>& body, const std::vector<std::string>& needles) {
  try {
    body();
    FAIL() << "expected sft::InputError";
  } catch (const InputError& e) {
    for (const std::string& needle : needles) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "message lacks '" << needle << "': " << e.what();
    }
  }
}

TEST(ModelLoad, MissingTensorNamesTensor) {
  test::TempDir tmp;
  const fs::path dir = copy_model(test::golden_dir() / "models" / "llama_gqa", tmp.path() / "m");
  auto file = model::SafetensorsFile::open(dir / "model.safetensors");
  std::vector<std::pair<std::string, at::Tensor>> kept;
  for (const auto& info : file->header().tensors) {
    if (info.name != "model.layers.1.mlp.up_proj.weight") kept.emplace_back(info.name, file->load(info.name, at::kFloat));
  }
  file.reset();
  model::write_safetensors(dir / "model.safetensors", kept);
  expect_input_error([&] { model::load_pretrained(dir, at::kFloat, at::kCPU); },
                     {"missing tensor 'model.layers.1.mlp.up_proj.weight'", "[128, 64]"});
}

TEST(ModelLoad, WrongShapeNamesTensorAndBothShapes) {
  test::TempDir tmp;
  const fs::path dir = copy_model(test::golden_dir() / "models" / "llama_gqa", tmp.path() / "m");
  auto file = model::SafetensorsFile::open(dir / "model.safetensors");
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& info : file->header().tensors) {
    at::Tensor t = file->load(info.name, at::kFloat);
    if (info.name == "model.norm.weight") t = at::ones({63});
    tensors.emplace_back(info.name, t);
  }
  file.reset();
  model::write_safetensors(dir / "model.safetensors", tensors);
  expect_input_error([&] { model::load_pretrained(dir, at::kFloat, at::kCPU); },
                     {"model.norm.weight", "[63]", "[64]"});
}

TEST(ModelLoad, UnexpectedTensorIsAnError) {
  test::TempDir tmp;
  const fs::path dir = copy_model(test::golden_dir() / "models" / "llama_gqa", tmp.path() / "m");
  auto file = model::SafetensorsFile::open(dir / "model.safetensors");
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& info : file->header().tensors) tensors.emplace_back(info.name, file->load(info.name, at::kFloat));
  file.reset();
  tensors.emplace_back("model.layers.7.extra.weight", at::zeros({2}));
  model::write_safetensors(dir / "model.safetensors", tensors);
  expect_input_error([&] { model::load_pretrained(dir, at::kFloat, at::kCPU); },
                     {"unexpected tensor 'model.layers.7.extra.weight'"});
}

TEST(ModelConfigErrors, MissingKeyAndUnsupportedType) {
  expect_input_error([] { model::parse_model_config(R"({"model_type": "llama", "vocab_size": 10})", "cfg.json"); },
                     {"cfg.json", "hidden_size"});
  expect_input_error([] { model::parse_model_config(R"({"model_type": "gpt2"})", "cfg.json"); },
                     {"cfg.json", "model_type 'gpt2' is not supported"});
  expect_input_error(
      [] {
        model::parse_model_config(R"({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 8,
          "num_hidden_layers": 1, "num_attention_heads": 2, "rope_scaling": {"rope_type": "yarn", "factor": 4}})",
                                  "cfg.json");
      },
      {"cfg.json", "yarn", "not supported"});
  expect_input_error([] { model::parse_model_config("{not json", "cfg.json"); }, {"cfg.json", "invalid JSON"});
}

TEST(ModelSave, SavePretrainedRoundTripsAndShards) {
  const fs::path src = test::golden_dir() / "models" / "llama_gqa";
  model::CausalLM lm = model::load_pretrained(src, at::kFloat, at::kCPU);
  test::TempDir tmp;
  model::save_pretrained(lm, src, tmp.path() / "single", at::kFloat, int64_t{1} << 30);
  model::save_pretrained(lm, src, tmp.path() / "sharded", at::kFloat, 20000);
  EXPECT_TRUE(fs::exists(tmp.path() / "single" / "model.safetensors"));
  EXPECT_TRUE(fs::exists(tmp.path() / "sharded" / "model.safetensors.index.json"));
  for (const char* name : {"single", "sharded"}) {
    model::CausalLM again = model::load_pretrained(tmp.path() / name, at::kFloat, at::kCPU);
    auto original = lm->named_parameters();
    for (const auto& item : again->named_parameters()) {
      EXPECT_TRUE(at::equal(item.value(), original[item.key()])) << name << " " << item.key();
    }
  }
}

}  // namespace
}  // namespace sft
