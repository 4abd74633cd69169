// tests/test_generate.cpp: KV-cache decoding (model/generate.h) on the golden tiny models of
// scripts/make_golden.py: token-by-token cached logits equal transformers' reference logits, cached
// greedy decoding equals full recompute token for token (also with LoRA), seeded sampling is
// reproducible, top-k/top-p filter as transformers' warpers do, and `sft generate` rejects bad input.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <set>

#include "model/generate.h"
#include "model/lora.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "tests/test_util.h"

namespace sft {
namespace {
namespace fs = std::filesystem;

const std::vector<int32_t> kPrompt = {1, 17, 33, 101, 7, 250, 64, 9};

model::CausalLM load_golden(const std::string& name) {
  model::CausalLM lm = model::load_pretrained(test::golden_dir() / "models" / name, at::kFloat, at::kCPU);
  lm->eval();
  return lm;
}

model::GenerationOptions greedy(int64_t n) {
  model::GenerationOptions options;
  options.max_new_tokens = n;
  return options;  // stop_ids empty: always n tokens
}

class GenerateGolden : public ::testing::TestWithParam<std::string> {};

// Prefill the first 3 tokens of each reference document, then feed the rest one at a time: the logits
// of every position equal transformers' full-sequence logits (reference.safetensors).
TEST_P(GenerateGolden, CachedLogitsMatchTransformersReference) {
  const fs::path dir = test::golden_dir() / "models" / GetParam();
  model::CausalLM lm = load_golden(GetParam());
  auto file = model::SafetensorsFile::open(dir / "reference.safetensors");
  torch::NoGradGuard no_grad;
  for (int d = 0; d < 3; ++d) {
    at::Tensor ids = file->load("input_ids_" + std::to_string(d), at::kLong);   // [L]
    at::Tensor ref = file->load("logits_" + std::to_string(d), at::kFloat);     // [L, vocab]
    const int64_t length = ids.size(0);
    model::IncrementalDecoder decoder(lm, length);
    std::vector<at::Tensor> rows{lm->logits(decoder.forward(ids.slice(0, 0, 3)))};
    for (int64_t t = 3; t < length; ++t) rows.push_back(lm->logits(decoder.forward(ids.slice(0, t, t + 1))));
    at::Tensor ours = at::cat(rows, 0);
    ASSERT_EQ(ours.sizes(), ref.sizes());
    const double scale = ref.abs().max().item<double>();
    EXPECT_GT(scale, 0.5) << "reference logits too small to make the test meaningful";
    EXPECT_LE((ours - ref).abs().max().item<double>(), 1e-5 * std::max(1.0, scale)) << GetParam() << " doc " << d;
    EXPECT_EQ(decoder.length(), length);
  }
}

// Appending a chunk of several tokens to a non-empty cache (the causal-offset path) equals a full forward.
TEST_P(GenerateGolden, ChunkedAppendEqualsFullForward) {
  model::CausalLM lm = load_golden(GetParam());
  torch::NoGradGuard no_grad;
  at::Tensor ids = at::tensor(std::vector<int64_t>{1, 44, 45, 46, 47, 90, 91, 92, 93, 94, 95, 96}, at::kLong);
  const int64_t n = ids.size(0);
  at::Tensor cu = at::tensor(std::vector<int32_t>{0, static_cast<int32_t>(n)}, at::kInt);
  at::Tensor full = lm->forward(ids, at::arange(n, at::kLong), {cu, cu, n}, {});  // [n, hidden]
  model::IncrementalDecoder decoder(lm, n);
  at::Tensor chunked = at::cat({decoder.forward(ids.slice(0, 0, 4)), decoder.forward(ids.slice(0, 4, 9)),
                                decoder.forward(ids.slice(0, 9, n))}, 0);
  EXPECT_LE((chunked - full).abs().max().item<double>(), 1e-5 * std::max(1.0, full.abs().max().item<double>()));
}

TEST_P(GenerateGolden, CachedGreedyEqualsFullRecompute) {
  model::CausalLM lm = load_golden(GetParam());
  model::GenerationOptions cached = greedy(40), recompute = greedy(40);
  recompute.use_cache = false;
  std::vector<int32_t> a = model::generate(lm, kPrompt, cached);
  std::vector<int32_t> b = model::generate(lm, kPrompt, recompute);
  ASSERT_EQ(a.size(), 40u);
  EXPECT_EQ(a, b);
  EXPECT_GT(std::set<int32_t>(a.begin(), a.end()).size(), 3u) << "degenerate output makes the test weak";
}

INSTANTIATE_TEST_SUITE_P(Golden, GenerateGolden,
                         ::testing::Values("llama_gqa", "mistral", "qwen2_bias", "llama_tied_rope3", "llama_sharded"));

TEST(Generate, CachedGreedyEqualsFullRecomputeWithLora) {
  model::CausalLM lm = load_golden("llama_gqa");
  at::manual_seed(3);
  model::LoraSpec spec;
  spec.rank = 4;
  spec.alpha = 8;
  spec.dropout = 0.1;  // must be inactive while generating
  spec.targets = {"all"};
  model::apply_lora(lm, spec);
  {
    torch::NoGradGuard no_grad;
    for (auto& [path, lora] : model::lora_modules(lm)) lora->lora_B->weight.normal_(0.0, 0.2);
  }
  std::vector<int32_t> base = model::generate(lm, kPrompt, greedy(1));
  lm->train();
  model::GenerationOptions recompute = greedy(30);
  recompute.use_cache = false;
  std::vector<int32_t> a = model::generate(lm, kPrompt, greedy(30));
  std::vector<int32_t> b = model::generate(lm, kPrompt, recompute);
  EXPECT_EQ(a, b);
  EXPECT_TRUE(lm->is_training()) << "generate must restore the training flag";

  // The adapter changes the output: the plain model decodes something else.
  model::CausalLM plain = load_golden("llama_gqa");
  EXPECT_NE(model::generate(plain, kPrompt, greedy(30)), a);
}

TEST(Generate, StopTokenEndsGenerationAndIsIncluded) {
  model::CausalLM lm = load_golden("mistral");
  std::vector<int32_t> free_run = model::generate(lm, kPrompt, greedy(20));
  model::GenerationOptions options = greedy(20);
  options.stop_ids = {free_run[5]};
  std::vector<int32_t> stopped = model::generate(lm, kPrompt, options);
  size_t first = std::find(free_run.begin(), free_run.end(), free_run[5]) - free_run.begin();
  ASSERT_EQ(stopped.size(), first + 1);
  EXPECT_TRUE(std::equal(stopped.begin(), stopped.end(), free_run.begin()));
  EXPECT_EQ(stopped.back(), free_run[5]);
}

TEST(Generate, SamplingIsReproducibleWithASeed) {
  model::CausalLM lm = load_golden("qwen2_bias");
  model::GenerationOptions options = greedy(32);
  options.temperature = 1.0;
  options.top_p = 0.95;
  options.seed = 7;
  at::manual_seed(123);
  std::vector<int32_t> a = model::generate(lm, kPrompt, options);
  at::manual_seed(456);  // the global generator plays no part
  std::vector<int32_t> b = model::generate(lm, kPrompt, options);
  EXPECT_EQ(a, b);
  options.seed = 8;
  EXPECT_NE(model::generate(lm, kPrompt, options), a);
  EXPECT_NE(model::generate(lm, kPrompt, greedy(32)), a) << "temperature 1 should not reproduce greedy";
  // The same draws without the cache: the sampler sees the same logits.
  options.seed = 7;
  options.use_cache = false;
  EXPECT_EQ(model::generate(lm, kPrompt, options), a);
}

TEST(Generate, TopK1EqualsGreedy) {
  model::CausalLM lm = load_golden("llama_tied_rope3");
  model::GenerationOptions options = greedy(32);
  options.temperature = 1.5;
  options.top_k = 1;
  options.seed = 11;
  EXPECT_EQ(model::generate(lm, kPrompt, options), model::generate(lm, kPrompt, greedy(32)));
}

// Empirical draws over fixed logits: top-k keeps the k best, top-p the smallest head with mass >= p,
// temperature sharpens; frequencies follow the renormalised probabilities.
TEST(Generate, TopKAndTopPFilterLikeTransformers) {
  // probabilities 0.5, 0.3, 0.15, 0.05 at ids 3, 1, 0, 2
  at::Tensor logits = at::log(at::tensor(std::vector<float>{0.15f, 0.3f, 0.05f, 0.5f}));
  auto histogram = [&](model::GenerationOptions options, int draws) {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(5);
    std::vector<double> freq(4, 0.0);
    for (int i = 0; i < draws; ++i) freq[model::select_next_token(logits, options, gen)] += 1.0 / draws;
    return freq;
  };
  model::GenerationOptions options;
  options.temperature = 1.0;
  at::Generator unused = at::make_generator<at::CPUGeneratorImpl>(0);
  EXPECT_EQ(model::select_next_token(logits, model::GenerationOptions{}, unused), 3);  // greedy

  std::vector<double> all = histogram(options, 4000);
  EXPECT_NEAR(all[3], 0.5, 0.03);
  EXPECT_NEAR(all[2], 0.05, 0.015);

  options.top_k = 2;  // ids 3 and 1: 0.5 / 0.8, 0.3 / 0.8
  std::vector<double> k2 = histogram(options, 4000);
  EXPECT_EQ(k2[0] + k2[2], 0.0);
  EXPECT_NEAR(k2[3], 0.625, 0.03);

  options.top_k = 0;
  options.top_p = 0.7;  // cumulative from the top: 0.5, 0.8 -> keep ids 3, 1
  std::vector<double> p7 = histogram(options, 4000);
  EXPECT_EQ(p7[0] + p7[2], 0.0);
  EXPECT_NEAR(p7[1], 0.375, 0.03);
  options.top_p = 0.85;  // 0.5, 0.8, 0.95 -> keep ids 3, 1, 0
  std::vector<double> p85 = histogram(options, 4000);
  EXPECT_EQ(p85[2], 0.0);
  EXPECT_NEAR(p85[0], 0.15 / 0.95, 0.03);

  options.top_p = 1.0;
  options.temperature = 0.5;  // p^2 renormalised: 0.25/0.3650 for id 3
  std::vector<double> cold = histogram(options, 4000);
  EXPECT_NEAR(cold[3], 0.25 / (0.25 + 0.09 + 0.0225 + 0.0025), 0.03);
}

TEST(Generate, CommandRejectsBadInput) {
  const fs::path model_dir = test::golden_dir() / "models" / "llama_gqa";
  const std::string sft = test::sft_binary().string() + " generate ";
  const std::string model = "--model " + model_dir.string() + " ";
  struct Case {
    std::string args, expect;
  };
  const std::vector<Case> cases = {
      {"--model /nonexistent/dir --prompt-ids 1,2", "/nonexistent/dir"},
      {model, "exactly one of --prompt, --input or --prompt-ids"},
      {model + "--prompt hi --input x.jsonl", "exactly one of"},
      {model + "--prompt-ids 1,x", "--prompt-ids: 'x'"},
      {model + "--prompt-ids 1,9999", "outside the embedding"},
      {model + "--prompt-ids 1,2 --temperature -1", "--temperature"},
      {model + "--prompt-ids 1,2 --top-p 0", "--top-p"},
      {model + "--prompt-ids 1,2 --top-k abc", "--top-k"},
      {model + "--prompt-ids 1,2 --max-new-tokens 0", "--max-new-tokens"},
      {model + "--prompt-ids 1,2 --adapter /nonexistent/adapter", "--adapter"},
      {model + "--prompt hi", "tokenizer"},  // the golden model has no tokenizer files
  };
  for (const Case& c : cases) {
    test::RunResult r = test::run_command(sft + c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.expect), std::string::npos) << c.args << "\n" << r.output;
  }
}

TEST(Generate, CommandPromptIdsPrintsGreedyIds) {
  const fs::path model_dir = test::golden_dir() / "models" / "llama_gqa";
  test::RunResult r = test::run_command("(" + test::sft_binary().string() + " generate --model " +
                                        model_dir.string() +
                                        " --prompt-ids 1,17,33,101,7,250,64,9 --max-new-tokens 12 2>/dev/null)");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  model::CausalLM lm = load_golden("llama_gqa");
  model::GenerationOptions options = greedy(12);
  options.stop_ids = {2};  // config.json eos_token_id
  std::vector<int32_t> ids = model::generate(lm, kPrompt, options);
  std::string expected;
  for (size_t i = 0; i < ids.size(); ++i) expected += (i ? "," : "") + std::to_string(ids[i]);
  EXPECT_EQ(r.output, expected + "\n");
}

}  // namespace
}  // namespace sft
