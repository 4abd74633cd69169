// tests/test_dist.cpp: the single-process pieces of multi-process training: torchrun's environment
// parsing and its errors, the backend choice, the trainer_state layout/parser round trip, and the
// loader's skip() counts (what every rank uses for the step's global target count) against next().
// The multi-process behaviour itself is tested under the real torchrun in tests/python/test_dist_torchrun.py.
#include <gtest/gtest.h>

#include <map>

#include "common/errors.h"
#include "data/loader.h"
#include "trainer/process_group.h"
#include "trainer/trainer_state.h"

namespace sft {
namespace {

DistEnv parse(const std::map<std::string, std::string>& vars) {
  return read_dist_env([&](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

std::string error_of(const std::map<std::string, std::string>& vars) {
  try {
    parse(vars);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(DistEnv, NoLauncherIsSingleProcess) {
  const DistEnv env = parse({});
  EXPECT_FALSE(env.distributed());
  EXPECT_EQ(env.rank, 0);
  EXPECT_EQ(env.world_size, 1);
}

TEST(DistEnv, ReadsTorchrunsContract) {
  const DistEnv env = parse({{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "2"},
                             {"MASTER_ADDR", "10.0.0.1"}, {"MASTER_PORT", "29400"},
                             {"TORCHELASTIC_RESTART_COUNT", "2"}, {"TORCHELASTIC_USE_AGENT_STORE", "True"}});
  EXPECT_TRUE(env.distributed());
  EXPECT_EQ(env.rank, 3);
  EXPECT_EQ(env.world_size, 4);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.local_world_size, 2);
  EXPECT_EQ(env.master_addr, "10.0.0.1");
  EXPECT_EQ(env.master_port, 29400);
  EXPECT_EQ(env.restart_count, 2);
  EXPECT_TRUE(env.use_agent_store);
  EXPECT_FALSE(parse({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"},
                      {"TORCHELASTIC_USE_AGENT_STORE", "False"}})
                   .use_agent_store);
}

TEST(DistEnv, WorldOfOneNeedsNoMaster) {
  const DistEnv env = parse({{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"TORCHELASTIC_USE_AGENT_STORE", "True"}});
  EXPECT_FALSE(env.distributed());
  EXPECT_FALSE(env.use_agent_store);  // no MASTER_ADDR/PORT: no store to join (a forced group hosts its own)
  EXPECT_EQ(env.master_port, 0);
}

// torchrun --nproc-per-node 1: a forced group of one (dist.force_process_group) joins the agent's store.
TEST(DistEnv, WorldOfOneKeepsTheLaunchersStore) {
  const DistEnv env = parse({{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", "29400"},
                             {"TORCHELASTIC_USE_AGENT_STORE", "True"}});
  EXPECT_FALSE(env.distributed());
  EXPECT_TRUE(env.use_agent_store);
  EXPECT_EQ(env.master_addr, "127.0.0.1");
  EXPECT_EQ(env.master_port, 29400);
  EXPECT_NE(error_of({{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "0"}})
                .find("MASTER_PORT=0 is not a port"),
            std::string::npos);
}

TEST(DistEnv, BadPairsAreInputErrorsNamingTheVariable) {
  const std::map<std::string, std::string> master{{"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", "29500"}};
  auto with = [&](std::map<std::string, std::string> vars) {
    vars.insert(master.begin(), master.end());
    return error_of(vars);
  };
  EXPECT_NE(with({{"RANK", "2"}, {"WORLD_SIZE", "2"}}).find("RANK=2 is outside [0, WORLD_SIZE=2)"), std::string::npos);
  EXPECT_NE(with({{"RANK", "-1"}, {"WORLD_SIZE", "2"}}).find("RANK=-1 is outside"), std::string::npos);
  EXPECT_NE(with({{"RANK", "0"}, {"WORLD_SIZE", "0"}}).find("WORLD_SIZE=0 must be >= 1"), std::string::npos);
  EXPECT_NE(with({{"WORLD_SIZE", "2"}}).find("WORLD_SIZE is set but RANK is not"), std::string::npos);
  EXPECT_NE(with({{"RANK", "1"}}).find("RANK is set but WORLD_SIZE is not"), std::string::npos);
  EXPECT_NE(with({{"RANK", "1x"}, {"WORLD_SIZE", "2"}}).find("RANK='1x' is not an integer"), std::string::npos);
  EXPECT_NE(with({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "2"}, {"LOCAL_WORLD_SIZE", "2"}})
                .find("LOCAL_RANK=2 is outside [0, LOCAL_WORLD_SIZE=2)"),
            std::string::npos);
  EXPECT_NE(with({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_WORLD_SIZE", "3"}}).find("LOCAL_WORLD_SIZE=3 is outside"),
            std::string::npos);
  EXPECT_NE(error_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}}).find("MASTER_ADDR is not set"), std::string::npos);
  EXPECT_NE(error_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}}).find("MASTER_PORT is not set"),
            std::string::npos);
  EXPECT_NE(error_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "70000"}})
                .find("MASTER_PORT=70000 is not a port"),
            std::string::npos);
}

TEST(DistBackend, AutoIsGlooOnCpuAndNcclOnCpuIsRefused) {
  DistOptions options;
  EXPECT_EQ(resolve_backend(options, at::Device(at::kCPU)), "gloo");
  options.backend = DistBackend::kGloo;
  EXPECT_EQ(resolve_backend(options, at::Device(at::kCPU)), "gloo");
  options.backend = DistBackend::kNccl;
  try {
    resolve_backend(options, at::Device(at::kCPU));
    FAIL() << "nccl on CPU must be refused";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("dist.backend: nccl needs CUDA devices"), std::string::npos) << e.what();
  }
}

TEST(DistCollectives, WorldOfOneIsANoOp) {
  Collectives one;
  at::Tensor t = at::ones({3});
  one.allreduce_sum(t);
  one.barrier();
  EXPECT_TRUE(at::equal(t, at::ones({3})));
  EXPECT_EQ(one.exchange("k", "v"), std::vector<std::string>{"v"});
  EXPECT_EQ(one.broadcast_from_main("k", "v"), "v");
}

TEST(DistTrainerState, LayoutAndParserRoundTrip) {
  TrainerState s;
  s.global_step = 7;
  s.micro_batches_done = 28;
  s.epoch = 1.75;
  s.total_steps = 20;
  s.world_size = 2;
  s.micro_batch_size = 2;
  s.grad_accum = 2;
  s.sampler = {3, 1, 12};
  s.schedule.kind = Scheduler::kLinear;
  s.schedule.warmup_steps = 2;
  s.rng = {{"cpu", "00ff"}};
  s.window_loss = 1.5;
  s.window_steps = 1;
  s.config_yaml = "a: 1\n";
  const nlohmann::json j = s.to_json();
  EXPECT_EQ(j["world_size"], 2);
  EXPECT_EQ(j["scheduler"]["next_step"], 7);
  const TrainerState back = TrainerState::from_json(j, "state.json");
  EXPECT_EQ(back.to_json(), j);
  EXPECT_EQ(back.global_batch_rows(), 8);
  nlohmann::json old = j;  // a checkpoint from before multi-process training
  old.erase("micro_batch_size");
  old.erase("grad_accum");
  EXPECT_FALSE(TrainerState::from_json(old, "state.json").global_batch_rows().has_value());
  old.erase("global_step");
  try {
    TrainerState::from_json(old, "state.json");
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("state.json: missing integer 'global_step'"), std::string::npos);
  }
}

TEST(DistTrainerState, GlobalBatchChangeIsRefusedSayingHowToKeepIt) {
  TrainerState saved;
  saved.world_size = 2;
  saved.micro_batch_size = 2;
  saved.grad_accum = 1;  // 4 rows
  EXPECT_NO_THROW(check_global_batch(saved, 2, 2, 1, "s.json", false));  // 2 x 2 x 1: kept
  EXPECT_NO_THROW(check_global_batch(saved, 2, 1, 1, "s.json", true));   // changed, but allowed
  auto message = [&](int64_t mbs, int64_t accum, int64_t world) {
    try {
      check_global_batch(saved, mbs, accum, world, "s.json", false);
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const std::string halved = message(2, 1, 1);
  EXPECT_NE(halved.find("the global batch would change from 4 rows"), std::string::npos) << halved;
  EXPECT_NE(halved.find("keep it with train.grad_accum=2 on 1 process"), std::string::npos) << halved;
  EXPECT_NE(halved.find("--allow-batch-change"), std::string::npos) << halved;
  EXPECT_NE(message(2, 1, 3).find("with 3 processes it cannot be kept"), std::string::npos);
  EXPECT_NE(message(4, 1, 1).find("keep train.micro_batch_size=2"), std::string::npos);
  TrainerState old;  // no micro_batch_size / grad_accum recorded: nothing to compare
  EXPECT_NO_THROW(check_global_batch(old, 8, 3, 5, "s.json", false));
}

TEST(DistLoader, SkipCountsEqualTheBatchesNextBuilds) {
  std::vector<data::TokenizedExample> examples;
  for (int i = 0; i < 11; ++i) {
    data::TokenizedExample e;
    for (int t = 0; t < 5 + (i * 7) % 13; ++t) {
      e.input_ids.push_back(3 + t);
      e.labels.push_back(t < 3 ? data::kIgnoreLabel : 3 + t);
    }
    examples.push_back(e);
  }
  data::LoaderOptions options;
  options.micro_batch_size = 2;
  options.packing = false;
  data::BatchLoader built(examples, options), skipped(examples, options);
  for (int k = 0; k < 15; ++k) {  // crosses an epoch boundary (6 micro-batches per epoch)
    const data::Batch b = built.next();
    const data::MicroBatchCounts c = skipped.skip();
    EXPECT_EQ(c.real_tokens, b.num_real_tokens) << k;
    EXPECT_EQ(c.targets, b.num_targets) << k;
    EXPECT_EQ(built.state(), skipped.state()) << k;
  }
}

}  // namespace
}  // namespace sft
