// tests/test_generate_batch.cpp: decoding through the model's own forward with a KV cache: the cached
// attention (kernels::kv_cache_attention) against its fp64 reference and against full causal attention,
// the cache's bookkeeping, and batched decoding (model::generate_batch) equal to decoding each prompt
// alone, greedy and sampled, with ragged prompts and sequences that stop early. SmolLM2 and the
// transformers comparisons are in tests/python/test_generate_reference.py.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <set>

#include "kernels/cached_attention.h"
#include "kernels/ops.h"
#include "model/generate.h"
#include "model/kv_cache.h"
#include "model/lora.h"
#include "model/weights.h"
#include "tests/test_util.h"

namespace sft {
namespace {

double max_err(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

kernels::PackedSequences packed(const std::vector<int32_t>& lengths) {
  std::vector<int32_t> cu{0};
  int64_t longest = 0;
  for (int32_t n : lengths) {
    cu.push_back(cu.back() + n);
    longest = std::max<int64_t>(longest, n);
  }
  at::Tensor host = at::tensor(cu, at::kInt);
  return {host, host, longest};
}

// A cache buffer of three sequences (rows [0, 40), [40, 57), [57, 90)) with random contents.
struct CacheCase {
  at::Tensor keys = at::randn({90, 2, 16}), values = at::randn({90, 2, 16});
};

// Documents with earlier positions, several new rows, a single row, GQA 4:2 -> kernel vs fp64 loops.
TEST(KvCacheAttention, MatchesFp64Reference) {
  at::manual_seed(1);
  CacheCase c;
  const kernels::PackedSequences seqs = packed({1, 3, 5});  // new rows per document
  kernels::KvCacheView view{c.keys, c.values, at::tensor(std::vector<int64_t>{40, 0, 57}),
                            at::tensor(std::vector<int64_t>{17, 30, 5})};  // doc 2: a prefill inside a decode step
  at::Tensor q = at::randn({9, 4, 16});
  at::Tensor ours = kernels::kv_cache_attention(q, at::Tensor(), at::Tensor(), view, seqs, 0.25,
                                                kernels::AttentionImpl::Sdpa);
  at::Tensor ref = kernels::reference_kv_cache_attention(q, view, seqs, 0.25);
  ASSERT_EQ(ours.sizes(), q.sizes());
  EXPECT_GT(ref.abs().max().item<double>(), 0.3);
  EXPECT_LE(max_err(ours, ref), 1e-5);
}

// The new rows at the end of a sequence see exactly what full causal attention over the whole sequence
// gives those rows (kernels::varlen_attention, eager math), and a prefill step is varlen_attention itself.
TEST(KvCacheAttention, NewRowsEqualFullCausalAttention) {
  at::manual_seed(2);
  const int64_t length = 23, fresh = 4;
  at::Tensor q = at::randn({length, 6, 32}), k = at::randn({length, 2, 32}), v = at::randn({length, 2, 32});
  at::Tensor full = kernels::varlen_attention(q, k, v, packed({int32_t(length)}), 0.17, true,
                                              kernels::AttentionImpl::Eager);
  kernels::KvCacheView view{k, v, at::tensor(std::vector<int64_t>{0}), at::tensor(std::vector<int64_t>{length})};
  at::Tensor tail = kernels::kv_cache_attention(q.slice(0, length - fresh), k.slice(0, length - fresh),
                                                v.slice(0, length - fresh), view, packed({int32_t(fresh)}), 0.17,
                                                kernels::AttentionImpl::Eager);
  EXPECT_LE(max_err(tail, full.slice(0, length - fresh)), 1e-5);

  kernels::KvCacheView prefill{k, v, at::tensor(std::vector<int64_t>{0, 10}), at::tensor(std::vector<int64_t>{10, 13})};
  const kernels::PackedSequences two = packed({10, 13});
  at::Tensor ours = kernels::kv_cache_attention(q, k, v, prefill, two, 0.17, kernels::AttentionImpl::Sdpa);
  EXPECT_TRUE(ours.equal(kernels::varlen_attention(q, k, v, two, 0.17, true, kernels::AttentionImpl::Sdpa)));
}

TEST(KvCacheAttention, RejectsInconsistentViews) {
  CacheCase c;
  at::Tensor q = at::randn({2, 4, 16});
  const kernels::PackedSequences seqs = packed({2});
  auto run = [&](std::vector<int64_t> starts, std::vector<int64_t> lengths) {
    kernels::KvCacheView view{c.keys, c.values, at::tensor(starts), at::tensor(lengths)};
    return kernels::kv_cache_attention(q, q, q, view, seqs, 1.0, kernels::AttentionImpl::Sdpa);
  };
  EXPECT_THROW(run({0}, {1}), c10::Error);       // fewer cached positions than new rows
  EXPECT_THROW(run({89}, {5}), c10::Error);      // past the buffer
  EXPECT_THROW(run({0, 5}, {5, 5}), c10::Error);  // two documents' views for one packed document
}

TEST(KvCache, PlansPositionsAndRefusesOverflow) {
  model::ModelConfig config;
  config.num_hidden_layers = 2;
  config.num_key_value_heads = 1;
  config.head_dim = 4;
  model::KvCache cache(config, {5, 3}, at::TensorOptions().dtype(at::kFloat));
  model::KvCache::Step step = cache.plan({1, 0}, {2, 3});
  EXPECT_TRUE(step.positions.equal(at::tensor(std::vector<int64_t>{0, 1, 0, 1, 2})));
  EXPECT_TRUE(step.seqs.cu_seqlens_host.equal(at::tensor(std::vector<int32_t>{0, 2, 5})));
  for (int64_t l = 0; l < 2; ++l) cache.append(l, at::ones({5, 1, 4}), at::ones({5, 1, 4}));
  cache.commit();
  EXPECT_EQ(cache.length(0), 3);
  EXPECT_EQ(cache.length(1), 2);
  step = cache.plan({0}, {1});
  EXPECT_TRUE(step.positions.equal(at::tensor(std::vector<int64_t>{3})));
  cache.commit();
  EXPECT_THROW(cache.plan({1}, {2}), c10::Error);     // 2 + 2 > capacity 3
  EXPECT_THROW(cache.plan({0, 0}, {1, 1}), c10::Error);  // a sequence twice
  EXPECT_THROW(cache.append(0, at::ones({1, 1, 4}), at::ones({1, 1, 4})), c10::Error);  // nothing planned
}

// ---------------------------------------------------------------------------------------------------
// Batched decoding == decoding alone
const std::vector<std::vector<int32_t>> kPrompts = {
    {1, 17, 33, 101, 7, 250, 64, 9}, {3, 200, 5}, {1, 59, 157, 255}, {42}, {9, 8, 7, 6, 5, 4, 3, 2, 1, 11, 12, 13}};

model::CausalLM load_golden(const std::string& name) {
  model::CausalLM lm = model::load_pretrained(test::golden_dir() / "models" / name, at::kFloat, at::kCPU);
  lm->eval();
  return lm;
}

std::vector<std::vector<int32_t>> one_by_one(model::CausalLM& lm, const model::GenerationOptions& options,
                                             const std::vector<uint64_t>& seeds) {
  std::vector<std::vector<int32_t>> out;
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    model::GenerationOptions alone = options;
    alone.seed = seeds.empty() ? options.seed : seeds[i];
    out.push_back(model::generate(lm, kPrompts[i], alone));
  }
  return out;
}

class GenerateBatchGolden : public ::testing::TestWithParam<std::string> {};

// Greedy, ragged prompts; the stop id is a token the first sequence emits early, so sequences finish at
// different steps while the others continue.
TEST_P(GenerateBatchGolden, GreedyEqualsDecodingAlone) {
  model::CausalLM lm = load_golden(GetParam());
  model::GenerationOptions options;
  options.max_new_tokens = 30;
  const std::vector<int32_t> free_run = model::generate(lm, kPrompts[0], options);
  options.stop_ids = {free_run[6]};
  const std::vector<std::vector<int32_t>> alone = one_by_one(lm, options, {});
  const std::vector<std::vector<int32_t>> batch = model::generate_batch(lm, kPrompts, options);
  EXPECT_EQ(batch, alone);
  std::set<size_t> lengths;
  for (const auto& ids : alone) lengths.insert(ids.size());
  EXPECT_GE(lengths.size(), 2u) << "every sequence stopped at the same step: the early-stop path went untested";
  EXPECT_LE(alone[0].size(), 7u);
}

// Sampled: sequence i draws from its own generator seeded by seeds[i]; empty seeds = options.seed for all.
TEST_P(GenerateBatchGolden, SampledEqualsDecodingAloneWithEachSeed) {
  model::CausalLM lm = load_golden(GetParam());
  model::GenerationOptions options;
  options.max_new_tokens = 20;
  options.temperature = 0.9;
  options.top_p = 0.9;
  options.top_k = 50;
  options.seed = 3;
  const std::vector<uint64_t> seeds = {11, 12, 13, 11, 99};
  EXPECT_EQ(model::generate_batch(lm, kPrompts, options, seeds), one_by_one(lm, options, seeds));
  const std::vector<std::vector<int32_t>> same_seed = model::generate_batch(lm, kPrompts, options);
  EXPECT_EQ(same_seed, one_by_one(lm, options, {}));
  EXPECT_NE(same_seed, model::generate_batch(lm, kPrompts, options, seeds)) << "the seeds changed nothing";
}

INSTANTIATE_TEST_SUITE_P(Golden, GenerateBatchGolden,
                         ::testing::Values("llama_gqa", "mistral", "qwen2_bias", "llama_tied_rope3"));

TEST(GenerateBatch, WithLoraAndRepeatedPromptsEqualsDecodingAlone) {
  model::CausalLM lm = load_golden("mistral");
  model::LoraSpec spec;
  spec.targets = {"q_proj", "v_proj", "down_proj"};  // rank 8, alpha 16 by default
  model::apply_lora(lm, spec);
  at::manual_seed(4);
  for (auto& [path, lora] : model::lora_modules(lm)) lora->lora_B->weight.detach().normal_(0.0, 0.3);
  model::GenerationOptions options;
  options.max_new_tokens = 16;
  std::vector<std::vector<int32_t>> prompts = kPrompts;
  prompts.push_back(kPrompts[1]);  // the same prompt twice in one batch
  const std::vector<std::vector<int32_t>> batch = model::generate_batch(lm, prompts, options);
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(batch[i], model::generate(lm, prompts[i], options)) << i;
  EXPECT_EQ(batch[1], batch.back());
}

TEST(GenerateBatch, RejectsBadRequests) {
  model::CausalLM lm = load_golden("llama_gqa");
  model::GenerationOptions options;
  options.max_new_tokens = 2;
  EXPECT_THROW(model::generate_batch(lm, {{1, 2}, {}}, options), c10::Error);
  EXPECT_THROW(model::generate_batch(lm, {{1, 2}, {3}}, options, {1}), c10::Error);
  options.max_new_tokens = 0;
  EXPECT_EQ(model::generate_batch(lm, {{1, 2}, {3}}, options), (std::vector<std::vector<int32_t>>{{}, {}}));
  EXPECT_TRUE(model::generate_batch(lm, {}, options).empty());
}

}  // namespace
}  // namespace sft
