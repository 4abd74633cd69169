// tests/test_fused_projections.cpp: `model.fused_ops: [projections]`, q/k/v and gate/up (and the LoRA A
// matrices beside them) as one GEMM each. The grouped linear against one at::linear per weight (outputs
// and every gradient, odd sizes, with and without bias, frozen weights, the fallbacks); the model with the
// switch on against the same model with it off (GQA and Qwen2-bias shapes, full fine-tuning over AdamW
// steps, LoRA with and without dropout, DoRA, freeze): losses and every gradient within fp32 1e-6
// relative, no gradient on frozen weights, the same parameter names and shapes, the same saved model and
// PEFT adapter files, and token-identical KV-cache greedy decoding.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "kernels/fused_ops.h"
#include "model/generate.h"
#include "model/lora.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "tests/model_test_util.h"
#include "tests/test_util.h"
#include "trainer/export.h"

namespace sft {
namespace {

namespace fs = std::filesystem;
using kernels::FusedOps;

// ||a - b|| / ||b|| (2-norms over the whole tensor), the fp32 1e-6 relative bound of this file. The two
// paths differ only in GEMM blocking, i.e. fp32 summation order (~1e-7 relative per GEMM); a max-norm
// bound was seen at 1.06e-6 on the embedding gradient's largest entry after two layers of that.
double relative_error(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor ad = a.to(at::kDouble), bd = b.to(at::kDouble);
  return (ad - bd).norm().item<double>() / std::max(bd.norm().item<double>(), 1e-30);
}
constexpr double kTol = 1e-6;
// Model gradients: a LoRA A gradient of layer 0 collects the whole backward, and was seen at 1.009e-6
// (layer 0 v_proj lora_A, GQA + bias); the bound for them is 2e-6.
constexpr double kGradTol = 2e-6;

FusedOps projections_only(bool on) {
  FusedOps ops;
  ops.projections = on;
  return ops;
}

// ---- the grouped linear ----
struct GroupCase {
  std::vector<at::Tensor> weights, biases;
  at::Tensor x;
};

// Odd sizes, GQA-like blocks (q 30 rows, k and v 10): x [2, 13, 37] so leading dimensions are flattened.
GroupCase make_case(bool with_bias, bool adjacent) {
  torch::manual_seed(7);
  GroupCase c;
  for (int64_t rows : {30, 10, 10}) {
    c.weights.push_back(torch::randn({rows, 37}).requires_grad_(true));
    if (with_bias) c.biases.push_back(torch::randn({rows}).requires_grad_(true));
  }
  c.x = torch::randn({2, 13, 37}).requires_grad_(true);
  if (adjacent) {
    EXPECT_TRUE(kernels::make_rows_adjacent(c.weights));
    if (with_bias) {
      EXPECT_TRUE(kernels::make_rows_adjacent(c.biases));
    }
  }
  return c;
}

// Runs `group` on a copy of `c` and back-propagates sum(out_i * probe_i); returns outputs then the
// gradients of x, each weight and each bias (undefined where none was made).
std::vector<at::Tensor> run_group(const GroupCase& c, bool fused, const std::vector<bool>& weight_grad = {}) {
  std::vector<at::Tensor> weights, biases;
  for (size_t i = 0; i < c.weights.size(); ++i) {
    weights.push_back(c.weights[i].detach().clone().requires_grad_(weight_grad.empty() || weight_grad[i]));
  }
  for (const at::Tensor& b : c.biases) biases.push_back(b.detach().clone().requires_grad_(true));
  if (fused) {
    EXPECT_TRUE(kernels::make_rows_adjacent(weights));
    if (!biases.empty()) {
      EXPECT_TRUE(kernels::make_rows_adjacent(biases));
    }
  }
  at::Tensor x = c.x.detach().clone().requires_grad_(true);
  std::vector<at::Tensor> out = fused ? kernels::fused_linear_group(x, weights, biases)
                                      : kernels::composite_linear_group(x, weights, biases);
  at::Tensor loss = at::zeros({}, at::kFloat);
  torch::manual_seed(11);
  for (const at::Tensor& o : out) loss = loss + (o * torch::randn(o.sizes())).sum();
  loss.backward();
  std::vector<at::Tensor> result;
  for (const at::Tensor& o : out) result.push_back(o.detach());
  result.push_back(x.grad());
  for (const at::Tensor& w : weights) result.push_back(w.grad());
  for (const at::Tensor& b : biases) result.push_back(b.grad());
  return result;
}

TEST(FusedProjections, LinearGroupMatchesSeparateLinearsWithEveryGradient) {
  for (bool with_bias : {false, true}) {
    const GroupCase c = make_case(with_bias, false);
    const std::vector<at::Tensor> fused = run_group(c, true), separate = run_group(c, false);
    ASSERT_EQ(fused.size(), separate.size());
    for (size_t i = 0; i < fused.size(); ++i) {
      ASSERT_TRUE(fused[i].defined()) << i;
      EXPECT_EQ(fused[i].sizes(), separate[i].sizes()) << i;
      EXPECT_LE(relative_error(fused[i], separate[i]), kTol) << "bias " << with_bias << ", tensor " << i;
    }
    // And the fp64 reference from the definition: y_i = x W_i^T + b_i.
    for (size_t i = 0; i < 3; ++i) {
      at::Tensor ref = at::matmul(c.x.detach().to(at::kDouble), c.weights[i].detach().to(at::kDouble).t());
      if (with_bias) ref = ref + c.biases[i].detach().to(at::kDouble);
      EXPECT_LE(relative_error(fused[i], ref), kTol) << i;
    }
  }
}

TEST(FusedProjections, FrozenWeightsGetNoGradient) {
  const GroupCase c = make_case(true, false);
  const std::vector<at::Tensor> fused = run_group(c, true, {false, true, false});
  const std::vector<at::Tensor> separate = run_group(c, false, {false, true, false});
  // outputs 0..2, x grad 3, weight grads 4..6, bias grads 7..9
  EXPECT_FALSE(fused[4].defined());
  EXPECT_FALSE(fused[6].defined());
  ASSERT_TRUE(fused[5].defined());
  EXPECT_LE(relative_error(fused[5], separate[5]), kTol);
  EXPECT_LE(relative_error(fused[3], separate[3]), kTol);
  for (size_t i = 7; i < 10; ++i) EXPECT_LE(relative_error(fused[i], separate[i]), kTol) << i;
}

TEST(FusedProjections, SeparateStoragesAndMixedDtypesFallBackToTheSeparateGemms) {
  const GroupCase c = make_case(false, false);
  ASSERT_FALSE(kernels::rows_adjacent(c.weights));
  at::NoGradGuard no_grad;
  const std::vector<at::Tensor> fused = kernels::fused_linear_group(c.x, c.weights, {});
  const std::vector<at::Tensor> separate = kernels::composite_linear_group(c.x, c.weights, {});
  for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(fused[i].equal(separate[i])) << "not bit-identical: " << i;
  std::vector<at::Tensor> mixed = {c.weights[0].detach().clone(), c.weights[1].detach().to(at::kDouble)};
  EXPECT_FALSE(kernels::make_rows_adjacent(mixed));
  EXPECT_EQ(mixed[1].scalar_type(), at::kDouble);
}

TEST(FusedProjections, MakeRowsAdjacentKeepsValuesIdentityAndRequiresGrad) {
  GroupCase c = make_case(false, false);
  const std::vector<at::Tensor> before = {c.weights[0].detach().clone(), c.weights[1].detach().clone(),
                                          c.weights[2].detach().clone()};
  at::TensorImpl* impl = c.weights[1].unsafeGetTensorImpl();
  ASSERT_TRUE(kernels::make_rows_adjacent(c.weights));
  EXPECT_TRUE(kernels::rows_adjacent(c.weights));
  EXPECT_EQ(c.weights[1].unsafeGetTensorImpl(), impl);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_TRUE(c.weights[i].equal(before[i]));
    EXPECT_TRUE(c.weights[i].requires_grad());
    EXPECT_TRUE(c.weights[i].is_leaf());
  }
  // An in-place update of one block (what the optimizer does) keeps the layout and touches only its rows.
  {
    at::NoGradGuard no_grad;
    c.weights[1].add_(1.0);
  }
  EXPECT_TRUE(kernels::rows_adjacent(c.weights));
  EXPECT_TRUE(c.weights[0].equal(before[0]));
  EXPECT_TRUE(c.weights[2].equal(before[2]));
}

// ---- the model, switch on against switch off ----
// Two models with the same weights: `fused` with the projections fused, `plain` without.
struct ModelPair {
  model::CausalLM fused{nullptr}, plain{nullptr};
};
ModelPair make_pair(const model::ModelConfig& config) {
  torch::manual_seed(5);
  ModelPair pair{model::CausalLM(config, at::TensorOptions().dtype(at::kFloat), projections_only(true)),
                 model::CausalLM(config, at::TensorOptions().dtype(at::kFloat), projections_only(false))};
  at::NoGradGuard no_grad;
  auto target = pair.plain->named_parameters();
  for (const auto& item : pair.fused->named_parameters()) {
    item.value().normal_(0.0, 0.3);  // larger than the init so every path matters
    target[item.key()].copy_(item.value());
  }
  return pair;
}

using Batch = test_support::PackedBatch;
Batch make_batch(int64_t vocab) { return test_support::odd_packed_batch(vocab); }
at::Tensor loss_of(model::CausalLM& lm, const Batch& b) { return test_support::target_loss_of(lm, b); }

// One forward + backward of both; compares the loss and the gradient of every trainable parameter, and
// checks that the parameters without requires_grad got none.
void expect_same_step(ModelPair& pair, const Batch& b, const std::string& what) {
  pair.fused->zero_grad();
  pair.plain->zero_grad();
  at::Tensor fused_loss = loss_of(pair.fused, b), plain_loss = loss_of(pair.plain, b);
  fused_loss.backward();
  plain_loss.backward();
  EXPECT_LE(relative_error(fused_loss.detach(), plain_loss.detach()), kTol) << what;
  auto plain_params = pair.plain->named_parameters();
  for (const auto& item : pair.fused->named_parameters()) {
    const at::Tensor& p = plain_params[item.key()];
    if (!p.requires_grad()) {
      EXPECT_FALSE(item.value().grad().defined()) << what << ": frozen " << item.key() << " got a gradient";
      continue;
    }
    ASSERT_TRUE(item.value().grad().defined()) << what << ": " << item.key();
    EXPECT_LE(relative_error(item.value().grad(), p.grad()), kGradTol) << what << ": " << item.key();
  }
}

// The fused model really runs one GEMM per group: its q/k/v and gate/up weights share one storage.
void expect_grouped_layout(model::CausalLM& lm, bool with_lora_A) {
  for (const auto& module : *lm->model->layers) {
    auto layer = std::dynamic_pointer_cast<model::DecoderLayerImpl>(module);
    auto& attn = *layer->self_attn;
    auto& mlp = *layer->mlp;
    EXPECT_TRUE(kernels::rows_adjacent({attn.q_proj->weight, attn.k_proj->weight, attn.v_proj->weight}));
    EXPECT_TRUE(kernels::rows_adjacent({mlp.up_proj->weight, mlp.gate_proj->weight}));
    if (attn.q_proj->bias.defined()) {
      EXPECT_TRUE(kernels::rows_adjacent({attn.q_proj->bias, attn.k_proj->bias, attn.v_proj->bias}));
    }
    if (with_lora_A) {
      EXPECT_TRUE(kernels::rows_adjacent(
          {attn.q_proj->groupable_lora_A(), attn.k_proj->groupable_lora_A(), attn.v_proj->groupable_lora_A()}));
    }
  }
}

TEST(FusedProjectionsModel, FullFineTuningMatchesOverAdamWSteps) {
  for (bool bias : {false, true}) {
    ModelPair pair = make_pair(test_support::odd_gqa_config(bias));
    const Batch b = make_batch(61);
    torch::optim::AdamW fused_opt(pair.fused->parameters(), torch::optim::AdamWOptions(1e-3));
    torch::optim::AdamW plain_opt(pair.plain->parameters(), torch::optim::AdamWOptions(1e-3));
    for (int step = 0; step < 3; ++step) {
      expect_same_step(pair, b, "full, bias " + std::to_string(bias) + ", step " + std::to_string(step));
      expect_grouped_layout(pair.fused, false);  // the in-place AdamW update keeps the shared storage
      fused_opt.step();
      plain_opt.step();
    }
  }
}

TEST(FusedProjectionsModel, RelayoutAfterATransformThatReplacesTheData) {
  ModelPair pair = make_pair(test_support::odd_gqa_config(true));
  const Batch b = make_batch(61);
  expect_same_step(pair, b, "before");
  // set_data, as .to() and the fp32 upcast of trainable weights do, separates the blocks again.
  {
    at::NoGradGuard no_grad;
    for (auto& p : pair.fused->parameters()) p.set_data(p.clone());
  }
  auto attn = std::dynamic_pointer_cast<model::DecoderLayerImpl>(pair.fused->model->layers[0])->self_attn;
  ASSERT_FALSE(kernels::rows_adjacent({attn->q_proj->weight, attn->k_proj->weight, attn->v_proj->weight}));
  expect_same_step(pair, b, "after set_data");
  expect_grouped_layout(pair.fused, false);
}

model::LoraSpec lora_spec(double dropout, bool dora = false) {
  model::LoraSpec spec;
  spec.rank = 3;
  spec.alpha = 7;
  spec.dropout = dropout;
  spec.dora = dora;
  spec.targets = {"all"};
  return spec;
}

void apply_lora_to_both(ModelPair& pair, const model::LoraSpec& spec) {
  torch::manual_seed(21);
  model::apply_lora(pair.fused, spec);
  torch::manual_seed(21);
  model::apply_lora(pair.plain, spec);
  at::NoGradGuard no_grad;
  auto plain = model::lora_modules(pair.plain);
  torch::manual_seed(23);
  for (auto& [path, lora] : model::lora_modules(pair.fused)) {  // B != 0, so B's path reaches A's gradient
    lora->lora_B->weight.normal_(0.0, 0.3);
    plain[path]->lora_B->weight.copy_(lora->lora_B->weight);
  }
}

TEST(FusedProjectionsModel, LoraMatchesWithGroupedAAndNoBaseGradient) {
  for (bool bias : {false, true}) {
    ModelPair pair = make_pair(test_support::odd_gqa_config(bias));
    apply_lora_to_both(pair, lora_spec(0.0));
    const Batch b = make_batch(61);
    expect_same_step(pair, b, "lora dropout 0, bias " + std::to_string(bias));
    expect_grouped_layout(pair.fused, /*with_lora_A=*/true);
  }
}

TEST(FusedProjectionsModel, LoraWithDropoutDrawsTheSameMasksAndDoraMatches) {
  // Dropout: the A matrices stay separate (one mask per module, as PEFT); the masks are drawn in the
  // same order as without the switch, so the same seed gives the same step.
  ModelPair pair = make_pair(test_support::odd_gqa_config(true));
  apply_lora_to_both(pair, lora_spec(0.2));
  const Batch b = make_batch(61);
  pair.fused->train();
  pair.plain->train();
  pair.fused->zero_grad();
  pair.plain->zero_grad();
  torch::manual_seed(31);
  at::Tensor fused_loss = loss_of(pair.fused, b);
  torch::manual_seed(31);
  at::Tensor plain_loss = loss_of(pair.plain, b);
  EXPECT_LE(relative_error(fused_loss.detach(), plain_loss.detach()), kTol);
  fused_loss.backward();
  plain_loss.backward();
  auto plain_params = pair.plain->named_parameters();
  for (const auto& item : pair.fused->named_parameters()) {
    if (!item.value().requires_grad()) {
      EXPECT_FALSE(item.value().grad().defined()) << item.key();
      continue;
    }
    EXPECT_LE(relative_error(item.value().grad(), plain_params[item.key()].grad()), kGradTol) << item.key();
  }
  // DoRA (no dropout): the base GEMM is shared, A is not.
  ModelPair dora = make_pair(test_support::odd_gqa_config(false));
  apply_lora_to_both(dora, lora_spec(0.0, /*dora=*/true));
  expect_same_step(dora, b, "dora");
}

TEST(FusedProjectionsModel, FreezeWithOneTrainableProjectionGivesOnlyItAGradient) {
  ModelPair pair = make_pair(test_support::odd_gqa_config(true));
  model::FreezeSpec spec;
  spec.layer_count = 1;
  spec.trainable_modules = {"k_proj", "up_proj"};
  model::apply_freeze(pair.fused, spec);
  model::apply_freeze(pair.plain, spec);
  expect_same_step(pair, make_batch(61), "freeze k_proj + up_proj");
  expect_grouped_layout(pair.fused, false);
}

TEST(FusedProjectionsModel, NamesShapesSavedModelAndAdapterEqualTheUnfusedOnes) {
  ModelPair pair = make_pair(test_support::odd_gqa_config(true));
  const model::LoraSpec spec = lora_spec(0.0);
  apply_lora_to_both(pair, spec);
  const Batch b = make_batch(61);
  expect_same_step(pair, b, "lora");  // the fused model is now re-laid out
  expect_grouped_layout(pair.fused, true);
  auto fused_params = pair.fused->named_parameters(), plain_params = pair.plain->named_parameters();
  ASSERT_EQ(fused_params.keys(), plain_params.keys());
  for (const auto& item : plain_params) EXPECT_EQ(fused_params[item.key()].sizes(), item.value().sizes()) << item.key();

  const fs::path dir = fs::temp_directory_path() / ("sft_fused_proj_" + std::to_string(test::fresh_seed()));
  fs::create_directories(dir);
  const fs::path config_dir = dir / "config";
  fs::create_directories(config_dir);
  test::write_text(config_dir / "config.json", test::read_text(test::golden_dir() / "models" / "qwen2_bias" / "config.json"));
  auto compare_files = [&](const fs::path& a, const fs::path& b_path) {
    auto fa = model::SafetensorsFile::open(a), fb = model::SafetensorsFile::open(b_path);
    std::vector<std::string> names_a, names_b;
    for (const auto& t : fa->header().tensors) names_a.push_back(t.name);
    for (const auto& t : fb->header().tensors) names_b.push_back(t.name);
    ASSERT_EQ(names_a, names_b);
    ASSERT_FALSE(names_a.empty());
    for (const std::string& n : names_a) EXPECT_TRUE(fa->load(n, at::kFloat).equal(fb->load(n, at::kFloat))) << n;
  };
  save_peft_adapter(pair.fused, spec, "base", dir / "fused_adapter");
  save_peft_adapter(pair.plain, spec, "base", dir / "plain_adapter");
  compare_files(dir / "fused_adapter" / "adapter_model.safetensors", dir / "plain_adapter" / "adapter_model.safetensors");
  model::merge_lora(pair.fused);
  model::merge_lora(pair.plain);
  model::save_pretrained(pair.fused, config_dir, dir / "fused_model", at::kFloat, int64_t{1} << 40);
  model::save_pretrained(pair.plain, config_dir, dir / "plain_model", at::kFloat, int64_t{1} << 40);
  compare_files(dir / "fused_model" / "model.safetensors", dir / "plain_model" / "model.safetensors");
  fs::remove_all(dir);
}

TEST(FusedProjectionsModel, KvCacheGreedyDecodingIsTokenIdentical) {
  for (const char* name : {"llama_gqa", "qwen2_bias"}) {
    model::CausalLM lm = model::load_pretrained(test::golden_dir() / "models" / name, at::kFloat, at::kCPU);
    torch::manual_seed(3);
    model::apply_lora(lm, lora_spec(0.1));
    {
      at::NoGradGuard no_grad;
      for (auto& [path, lora] : model::lora_modules(lm)) lora->lora_B->weight.normal_(0.0, 0.2);
    }
    const std::vector<int32_t> prompt = {5, 17, 42, 9, 100, 3};
    model::GenerationOptions greedy;
    greedy.max_new_tokens = 24;
    lm->set_fused_ops(FusedOps{});
    const std::vector<int32_t> plain = model::generate(lm, prompt, greedy);
    lm->set_fused_ops(projections_only(true));
    const std::vector<int32_t> fused = model::generate(lm, prompt, greedy);
    EXPECT_EQ(fused, plain) << name;
    EXPECT_EQ(fused.size(), 24u) << name;
    auto attn = std::dynamic_pointer_cast<model::DecoderLayerImpl>(lm->model->layers[0])->self_attn;
    EXPECT_TRUE(kernels::rows_adjacent({attn->q_proj->weight, attn->k_proj->weight, attn->v_proj->weight})) << name;
  }
}

TEST(FusedProjectionsConfig, ProjectionsIsAFusedOpsEntry) {
  EXPECT_EQ(kernels::to_string(kernels::parse_fused_ops({"projections"})), "[projections]");
  EXPECT_EQ(kernels::to_string(kernels::parse_fused_ops({"rope", "projections"})), "[rope, projections]");
  EXPECT_EQ(kernels::to_string(kernels::parse_fused_ops({"auto"}, at::kCUDA)), "none");  // not yet run on a GPU
  EXPECT_TRUE(kernels::op_table(projections_only(true)).group_projections);
  EXPECT_FALSE(kernels::op_table(FusedOps{}).group_projections);
}

}  // namespace
}  // namespace sft
