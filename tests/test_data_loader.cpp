// tests/test_data_loader.cpp: packing and batches (data/packing.*) and the resumable, rank-sharded
// sampler (data/loader.*).
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>

#include "common/errors.h"
#include "data/dataset.h"
#include "data/formats.h"
#include "data/loader.h"
#include "data/packing.h"
#include "data/pipeline.h"
#include "data/template.h"
#include "data/tokenizer.h"
#include "tests/data_test_util.h"
#include "tests/test_util.h"

namespace sft::data {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace test_support;

// ---------------------------------------------------------------- packing and batches

TEST(DataPacking, BestFitDecreasing) {
  std::vector<int64_t> lengths{6, 5, 4, 3, 2};
  auto rows = pack_rows(lengths, {0, 1, 2, 3, 4}, 10);
  EXPECT_EQ(rows, (std::vector<std::vector<int64_t>>{{0, 2}, {1, 3, 4}}));
  EXPECT_DOUBLE_EQ(packing_efficiency(lengths, 10), 1.0);
  EXPECT_DOUBLE_EQ(packing_efficiency({7, 7, 7}, 10), 0.7);
  // Random instance: capacity respected, every example exactly once, near-optimal row count.
  SplitMix64 rng(7);
  std::vector<int64_t> many(500);
  for (auto& l : many) l = 1 + static_cast<int64_t>(rng.below(300));
  std::vector<int64_t> order(many.size());
  std::iota(order.begin(), order.end(), 0);
  auto packed = pack_rows(many, order, 512);
  std::vector<int> seen(many.size(), 0);
  int64_t total = 0;
  for (const auto& row : packed) {
    int64_t used = 0;
    for (int64_t i : row) used += many[i], ++seen[i];
    EXPECT_LE(used, 512);
    total += used;
  }
  EXPECT_TRUE(std::all_of(seen.begin(), seen.end(), [](int s) { return s == 1; }));
  const int64_t lower_bound = (total + 511) / 512;
  EXPECT_LE(static_cast<int64_t>(packed.size()), lower_bound + lower_bound / 10 + 1);
  EXPECT_THROW(pack_rows({11}, {0}, 10), std::invalid_argument);
}

std::vector<int64_t> vec64(const at::Tensor& t) {
  at::Tensor c = t.to(at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

TEST(DataPacking, PackedBatchBoundariesAndPositions) {
  TokenizedExample a{{11, 12, 13}, {kIgnoreLabel, 12, 13}, "a"};
  TokenizedExample b{{21, 22}, {kIgnoreLabel, 22}, "b"};
  TokenizedExample c{{31, 32, 33, 34}, {kIgnoreLabel, kIgnoreLabel, 33, 34}, "c"};
  Batch packed = build_batch({{&a, &b}, {&c}}, /*pad_rows=*/false, 0);
  EXPECT_EQ(vec64(packed.input_ids), (std::vector<int64_t>{11, 12, 13, 21, 22, 31, 32, 33, 34}));
  EXPECT_EQ(vec64(packed.position_ids), (std::vector<int64_t>{0, 1, 2, 0, 1, 0, 1, 2, 3}));
  EXPECT_EQ(packed.cu_seqlens.scalar_type(), at::kInt);
  EXPECT_EQ(vec64(packed.cu_seqlens_host), (std::vector<int64_t>{0, 3, 5, 9}));
  // No target crosses a document boundary: 13 does not predict 21, 22 does not predict 31.
  EXPECT_EQ(vec64(packed.target_positions), (std::vector<int64_t>{0, 1, 3, 6, 7}));
  EXPECT_EQ(vec64(packed.target_ids), (std::vector<int64_t>{12, 13, 22, 33, 34}));
  EXPECT_EQ(packed.max_seqlen, 4);
  EXPECT_EQ(packed.num_tokens, 9);
  EXPECT_EQ(packed.num_real_tokens, 9);
  EXPECT_EQ(packed.num_targets, 5);
  EXPECT_EQ(packed.num_rows, 2);
  EXPECT_EQ(packed.num_examples, 3);

  // Padded rows: each row padded to the longest (4); padding is its own segment with no targets.
  Batch padded = build_batch({{&a}, {&b}, {&c}}, /*pad_rows=*/true, 7);
  EXPECT_EQ(vec64(padded.input_ids), (std::vector<int64_t>{11, 12, 13, 7, 21, 22, 7, 7, 31, 32, 33, 34}));
  EXPECT_EQ(vec64(padded.position_ids), (std::vector<int64_t>{0, 1, 2, 0, 0, 1, 0, 1, 0, 1, 2, 3}));
  EXPECT_EQ(vec64(padded.cu_seqlens_host), (std::vector<int64_t>{0, 3, 4, 6, 8, 12}));
  EXPECT_EQ(vec64(padded.target_positions), (std::vector<int64_t>{0, 1, 4, 9, 10}));
  EXPECT_EQ(padded.num_tokens, 12);
  EXPECT_EQ(padded.num_real_tokens, 9);
  EXPECT_EQ(padded.num_examples, 3);

  Batch empty = build_batch({}, false, 7);  // a rank without data: one pad token, no targets
  EXPECT_EQ(empty.num_tokens, 1);
  EXPECT_EQ(empty.num_targets, 0);
  EXPECT_EQ(empty.num_examples, 0);
  EXPECT_EQ(vec64(empty.cu_seqlens_host), (std::vector<int64_t>{0, 1}));
}

TEST(DataPacking, EvalBatchesFixedOrderWithExampleIndex) {
  std::vector<TokenizedExample> ex;
  for (int i = 0; i < 5; ++i) {
    ex.push_back({{1000 + i, 5, 6}, {kIgnoreLabel, i % 2 ? kIgnoreLabel : 5, 6}, "e" + std::to_string(i)});
  }
  auto batches = make_eval_batches(ex, 2, 0);
  ASSERT_EQ(batches.size(), 3u);
  EXPECT_EQ(batches[0].example_index, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(batches[2].example_index, (std::vector<int64_t>{4}));
  EXPECT_EQ(batches[0].target_offsets, (std::vector<int64_t>{0, 2, 3}));
  EXPECT_EQ(vec64(batches[1].batch.input_ids), (std::vector<int64_t>{1002, 5, 6, 1003, 5, 6}));
  EXPECT_EQ(batches[0].batch.num_targets, 3);
}

// ---------------------------------------------------------------- sampler

std::vector<TokenizedExample> numbered_examples(int n, uint64_t seed) {
  SplitMix64 rng(seed);
  std::vector<TokenizedExample> ex;
  for (int i = 0; i < n; ++i) {
    int len = 2 + static_cast<int>(rng.below(30));
    TokenizedExample e;
    e.input_ids.push_back(1000 + i);  // marks the example: the first token of its segment
    e.labels.push_back(kIgnoreLabel);
    for (int k = 1; k < len; ++k) {
      e.input_ids.push_back(10 + k);
      e.labels.push_back(10 + k);
    }
    e.source = "n:" + std::to_string(i);
    ex.push_back(std::move(e));
  }
  return ex;
}

// Example numbers in a batch, segment by segment (padding segments start with pad id 0).
std::vector<int64_t> examples_in(const Batch& b) {
  std::vector<int64_t> ids = vec64(b.input_ids), cu = vec64(b.cu_seqlens_host), out;
  for (size_t s = 0; s + 1 < cu.size(); ++s) {
    if (ids[cu[s]] >= 1000) out.push_back(ids[cu[s]] - 1000);
  }
  return out;
}

LoaderOptions loader_options(bool packing, int64_t rank = 0, int64_t world = 1) {
  LoaderOptions o;
  o.micro_batch_size = 3;
  o.max_seq_len = 40;
  o.packing = packing;
  o.seed = 1234;
  o.rank = rank;
  o.world_size = world;
  o.pad_id = 0;
  return o;
}

TEST(DataSampler, DeterministicShufflesPerEpochAndCoversEveryExample) {
  for (bool packing : {true, false}) {
    auto ex = numbered_examples(37, 5);
    BatchLoader a(ex, loader_options(packing)), b(ex, loader_options(packing));
    const int64_t per_epoch = a.micro_batches_per_epoch();
    std::vector<int64_t> epoch0, epoch1;
    for (int64_t i = 0; i < 2 * per_epoch; ++i) {
      Batch x = a.next(), y = b.next();
      EXPECT_TRUE(x.input_ids.equal(y.input_ids));
      EXPECT_TRUE(x.cu_seqlens_host.equal(y.cu_seqlens_host));
      for (int64_t e : examples_in(x)) (i < per_epoch ? epoch0 : epoch1).push_back(e);
      if (packing) {
        EXPECT_LE(x.num_tokens, 3 * 40);
      }
    }
    EXPECT_EQ(a.epoch(), 1);
    EXPECT_NE(epoch0, epoch1) << "each epoch is reshuffled";
    for (auto* seen : {&epoch0, &epoch1}) {
      std::vector<int64_t> sorted = *seen;
      std::sort(sorted.begin(), sorted.end());
      std::vector<int64_t> all(37);
      std::iota(all.begin(), all.end(), 0);
      EXPECT_EQ(sorted, all);
    }
    LoaderOptions other = loader_options(packing);
    other.seed = 99;
    BatchLoader c(ex, other);
    std::vector<int64_t> other_epoch0;
    for (int64_t i = 0; i < c.micro_batches_per_epoch(); ++i) {
      for (int64_t e : examples_in(c.next())) other_epoch0.push_back(e);
    }
    EXPECT_NE(epoch0, other_epoch0) << "the seed changes the order";
  }
}

TEST(DataSampler, RestoreReproducesRemainingBatches) {
  auto ex = numbered_examples(41, 8);
  for (bool packing : {true, false}) {
    BatchLoader probe(ex, loader_options(packing));
    const int64_t per_epoch = probe.micro_batches_per_epoch();
    // Mid-epoch, exactly at the epoch boundary, and inside the second epoch.
    for (int64_t consumed : {per_epoch / 2, per_epoch, per_epoch + 1}) {
      BatchLoader a(ex, loader_options(packing));
      for (int64_t i = 0; i < consumed; ++i) a.next();
      SamplerState saved = SamplerState::from_json(json::parse(a.state().to_json().dump()));
      EXPECT_EQ(saved, a.state());
      std::vector<Batch> rest;
      for (int64_t i = 0; i < per_epoch + 2; ++i) rest.push_back(a.next());

      LoaderOptions fresh = loader_options(packing);
      fresh.seed = 777;  // the state's seed wins
      BatchLoader b(ex, fresh);
      b.restore(saved);
      EXPECT_EQ(b.state(), saved);
      for (const Batch& want : rest) {
        Batch got = b.next();
        EXPECT_TRUE(got.input_ids.equal(want.input_ids)) << "consumed=" << consumed;
        EXPECT_TRUE(got.target_positions.equal(want.target_positions));
      }
      EXPECT_EQ(b.epoch(), a.epoch());
    }
  }
}

TEST(DataSampler, StateJsonErrorsNameTheKey) {
  std::string msg = expect_input_error([] { SamplerState::from_json(json{{"seed", 1}, {"epoch", 0}}, "ckpt/trainer_state.json"); });
  EXPECT_NE(msg.find("ckpt/trainer_state.json: missing key \"position\""), std::string::npos) << msg;
  msg = expect_input_error([] { SamplerState::from_json(json{{"seed", 1}, {"epoch", "x"}, {"position", 0}}); });
  EXPECT_NE(msg.find("\"epoch\" must be an integer"), std::string::npos) << msg;
  auto ex = numbered_examples(10, 1);
  BatchLoader l(ex, loader_options(true));
  msg = expect_input_error([&] { l.restore({1234, 0, l.micro_batches_per_epoch() + 1}); });
  EXPECT_NE(msg.find("past the"), std::string::npos) << msg;
  msg = expect_input_error([] { BatchLoader empty({}, loader_options(true)); });
  EXPECT_NE(msg.find("no training examples"), std::string::npos) << msg;
}

TEST(DataSampler, RanksSeeDisjointShardsThatCoverTheEpoch) {
  auto ex = numbered_examples(29, 3);
  for (bool packing : {true, false}) {
    for (int64_t world : {1, 2, 3}) {
      std::vector<int> seen(ex.size(), 0);
      int64_t per_epoch = -1;
      for (int64_t rank = 0; rank < world; ++rank) {
        BatchLoader l(ex, loader_options(packing, rank, world));
        if (per_epoch < 0) per_epoch = l.micro_batches_per_epoch();
        EXPECT_EQ(l.micro_batches_per_epoch(), per_epoch) << "ranks must step in lockstep";
        for (int64_t i = 0; i < per_epoch; ++i) {
          for (int64_t e : examples_in(l.next())) ++seen[e];
        }
        EXPECT_EQ(l.epoch(), 0);
      }
      for (size_t i = 0; i < seen.size(); ++i) {
        EXPECT_EQ(seen[i], 1) << "example " << i << " world " << world << " packing " << packing;
      }
    }
  }
}

TEST(DataSampler, ShuffleIsOurOwn) {
  // Pinned values: SplitMix64 and Fisher-Yates must not change (resume across builds depends on it).
  SplitMix64 rng(0);
  EXPECT_EQ(rng.next(), 0xE220A8397B1DCDAFULL);
  EXPECT_EQ(permutation(6, 42), permutation(6, 42));
  std::vector<int64_t> p = permutation(1000, 3);
  std::vector<int64_t> sorted = p;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(sorted[i], i);
  EXPECT_NE(p, sorted);
}

}  // namespace
}  // namespace sft::data
