// tests/test_train_in_backward.cpp: train.optimizer_in_backward (trainer/step_in_backward.h). The hooks
// against AdamW::step on a small graph with a weight used twice (bit-identical, every gradient freed);
// `sft train` against torch's own optimizer-in-backward recipe (scripts/make_train_golden.py,
// full_in_backward: 10 losses within 1e-4, final tensors within 1e-4 of max|ref|); the same run without the
// hooks and an interrupted-and-resumed run, both bit-identical; a process group refused with a clear error.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "tests/test_util.h"
#include "tests/train_test_util.h"
#include "trainer/optimizer.h"
#include "trainer/step_in_backward.h"

namespace sft {
namespace {
namespace fs = std::filesystem;
using namespace test_support;

// Two parameter sets with the same values, one per path.
std::vector<NamedParameter> small_params(uint64_t seed) {
  at::manual_seed(seed);
  return {{"w1", at::randn({7, 5}).requires_grad_(true), true, 1.0},
          {"norm", at::randn({7}).requires_grad_(true), false, 1.0},
          {"lora_B", at::randn({3, 7}).requires_grad_(true), true, 4.0},
          {"unused", at::randn({2}).requires_grad_(true), true, 1.0}};
}

// x [4, 5] -> w1 -> * norm -> w1^T again (w1 used twice, as a tied embedding is) -> lora_B; "unused" is not.
at::Tensor small_loss(const std::vector<NamedParameter>& p, const at::Tensor& x) {
  at::Tensor h = at::matmul(x, p[0].tensor.t()) * p[1].tensor;  // [4, 7]
  at::Tensor back = at::matmul(h, p[0].tensor);                  // [4, 5]: w1's second use
  at::Tensor out = at::matmul(at::matmul(back, p[0].tensor.t()), p[2].tensor.t());  // [4, 3]
  return out.pow(2).mean();
}

TEST(StepInBackward, HooksGiveAdamWStepBitForBitAndFreeEveryGradient) {
  std::vector<NamedParameter> plain = small_params(5), hooked = small_params(5);
  const AdamWOptions options{0.9, 0.95, 1e-6, 0.1};
  AdamW plain_adamw(plain, options), hooked_adamw(hooked, options);
  std::vector<at::Tensor> norms_plain, norms_hooked;
  {
    StepInBackward in_backward(hooked_adamw);
    for (int step = 1; step <= 3; ++step) {
      const at::Tensor x = at::randn({4, 5});
      const double lr = 0.05 / step;
      small_loss(plain, x).backward();
      norms_plain.push_back(clip_grad_norm(plain_adamw.parameters(), 0.0));
      plain_adamw.step(lr);
      plain_adamw.zero_grad();

      in_backward.arm(lr);
      small_loss(hooked, x).backward();
      for (const NamedParameter& p : hooked) EXPECT_FALSE(p.tensor.grad().defined()) << p.name << " kept its gradient";
      norms_hooked.push_back(in_backward.finish());
    }
    // Not armed: a backward accumulates gradients as usual and updates nothing.
    const at::Tensor before = hooked[0].tensor.detach().clone();
    small_loss(hooked, at::randn({4, 5})).backward();
    EXPECT_TRUE(hooked[0].tensor.grad().defined());
    EXPECT_TRUE(at::equal(hooked[0].tensor, before));
    hooked_adamw.zero_grad();
  }
  // Hooks removed with the object: a later armed-looking backward leaves .grad in place.
  small_loss(hooked, at::randn({4, 5})).backward();
  EXPECT_TRUE(hooked[0].tensor.grad().defined());

  EXPECT_EQ(hooked_adamw.steps_taken(), 3);
  for (size_t i = 0; i < plain.size(); ++i) {
    EXPECT_TRUE(at::equal(plain[i].tensor, hooked[i].tensor)) << plain[i].name;
  }
  EXPECT_TRUE(at::equal(plain[3].tensor, small_params(5)[3].tensor));  // no gradient: untouched, no decay
  EXPECT_FALSE(at::equal(plain[0].tensor, small_params(5)[0].tensor));
  for (size_t s = 0; s < norms_plain.size(); ++s) EXPECT_TRUE(at::equal(norms_plain[s], norms_hooked[s])) << s;
  const auto state_plain = plain_adamw.state_tensors(), state_hooked = hooked_adamw.state_tensors();
  ASSERT_EQ(state_plain.size(), state_hooked.size());
  for (size_t i = 0; i < state_plain.size(); ++i) {
    EXPECT_TRUE(at::equal(state_plain[i].second, state_hooked[i].second)) << state_plain[i].first;
  }
}

// The full fine-tuning golden config, as one micro-batch of all 16 examples per step and no clipping.
std::string in_backward_config(const fs::path& out, bool in_backward) {
  std::string text = parity_config(out, "finetune: {method: full}\n");
  auto replace = [&](const std::string& from, const std::string& to) {
    const size_t at = text.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    if (at != std::string::npos) text.replace(at, from.size(), to);
  };
  replace("micro_batch_size: 8, grad_accum: 2", "micro_batch_size: 16, grad_accum: 1");
  replace("max_grad_norm: 1.0", std::string("max_grad_norm: 0, optimizer_in_backward: ") + (in_backward ? "true" : "false"));
  return text;
}

TEST(TrainInBackward, MatchesTorchsOptimizerInBackwardRecipe) {
  test::TempDir tmp;
  RunOutput run = run_train(tmp.path(), in_backward_config(tmp.path() / "out", true));
  const std::string resolved = test::read_text(tmp.path() / "out" / "config.yaml");
  ASSERT_NE(resolved.find("optimizer_in_backward: true"), std::string::npos) << resolved;
  ASSERT_NE(resolved.find("grad_accum: 1"), std::string::npos) << resolved;
  expect_losses_match(run, golden_losses("full_in_backward"));
  expect_tensors_match(tmp.path() / "out" / "model" / "model.safetensors",
                       train_golden() / "full_in_backward_final.safetensors");
}

TEST(TrainInBackward, EqualsTheStepAfterBackwardAndResumesBitForBit) {
  test::TempDir normal, hooked, resumed;
  RunOutput a = run_train(normal.path(), in_backward_config(normal.path() / "out", false));
  RunOutput b = run_train(hooked.path(), in_backward_config(hooked.path() / "out", true));
  ASSERT_EQ(a.losses.size(), 10u);
  EXPECT_EQ(a.losses, b.losses);
  EXPECT_EQ(a.grad_norms, b.grad_norms);
  const auto model_file = [](const test::TempDir& d) { return d.path() / "out" / "model" / "model.safetensors"; };
  auto same_tensors = [&](const test::TempDir& x, const test::TempDir& y) {
    auto fx = model::SafetensorsFile::open(model_file(x)), fy = model::SafetensorsFile::open(model_file(y));
    for (const auto& info : fx->header().tensors) {
      EXPECT_TRUE(at::equal(fx->load(info.name, at::kFloat), fy->load(info.name, at::kFloat))) << info.name;
    }
  };
  same_tensors(normal, hooked);

  // Stopped after step 4 (checkpoint), then the same command resumes to the end.
  test::write_text(resumed.path() / "config.yaml.in", in_backward_config(resumed.path() / "out", true));
  const std::string command = test::sft_binary().string() + " train " + (resumed.path() / "config.yaml.in").string();
  auto first = test::run_command(command + " --stop-after-steps 4");
  ASSERT_EQ(first.exit_code, 0) << first.output;
  RunOutput c = run_train(resumed.path(), in_backward_config(resumed.path() / "out", true));
  EXPECT_EQ(b.losses, c.losses);
  same_tensors(hooked, resumed);
}

TEST(TrainInBackward, AProcessGroupIsRefusedBeforeTheModelLoads) {
  test::TempDir tmp;
  test::write_text(tmp.path() / "c.yaml", in_backward_config(tmp.path() / "out", true));
  auto result = test::run_command(test::sft_binary().string() + " train " + (tmp.path() / "c.yaml").string() +
                                  " dist.force_process_group=true");
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("train.optimizer_in_backward: not supported with a process group (world size 1, "
                               "dist.force_process_group)"),
            std::string::npos)
      << result.output;
  EXPECT_EQ(result.output.find("sft train: "), std::string::npos) << result.output;  // no banner: nothing loaded
}

}  // namespace
}  // namespace sft
