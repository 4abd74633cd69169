// tests/test_lora_group.cpp: `model.fused_ops: lora`, frozen projections of one input with their LoRA
// adapters as one autograd node (kernels/lora_group.cpp). The node against its composite twin in fp64 over
// odd sizes (outputs, d x, d A, d B; with and without biases; groups of three and of one), against finite
// differences, no gradient for the frozen base, the cases it refuses; the model with the switch on against
// the same model with it off (GQA with Qwen2 biases, LoRA r=3 on every projection; bf16 autocast against the
// composite at bf16's bound): loss and every
// gradient within fp32 1e-6 relative, one node per group in the graph, and dropout falling back.
#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "kernels/fused_ops.h"
#include "model/lora.h"
#include "tests/model_test_util.h"
#include "tests/test_util.h"

namespace sft {
namespace {

double relative_error(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor ad = a.to(at::kDouble), bd = b.to(at::kDouble);
  return (ad - bd).norm().item<double>() / std::max(bd.norm().item<double>(), 1e-30);
}

struct GroupOperands {
  at::Tensor x;
  std::vector<at::Tensor> weights, biases, lora_A, lora_B;
  std::vector<double> scales;
};

// Odd sizes: x [2, 13, 37]; projections of 30, 10 and 10 rows (GQA-like), ranks 3, 5, 3.
GroupOperands make_operands(at::ScalarType dtype, bool with_bias, size_t count = 3) {
  torch::manual_seed(13);
  GroupOperands g;
  const auto options = at::TensorOptions().dtype(dtype);
  g.x = torch::randn({2, 13, 37}, options);
  const int64_t rows[] = {30, 10, 10}, ranks[] = {3, 5, 3};
  const double scales[] = {2.0, 0.5, 1.5};
  for (size_t i = 0; i < count; ++i) {
    g.weights.push_back(torch::randn({rows[i], 37}, options));
    if (with_bias) g.biases.push_back(torch::randn({rows[i]}, options));
    g.lora_A.push_back(torch::randn({ranks[i], 37}, options));
    g.lora_B.push_back(torch::randn({rows[i], ranks[i]}, options));
    g.scales.push_back(scales[i]);
  }
  return g;
}

// Runs one path on fresh leaves (x, A, B trainable; the base frozen), backprops sum(y_i * probe_i) and
// returns {y_0.., dx, dA_0.., dB_0..}.
std::vector<at::Tensor> run_path(const GroupOperands& g, bool fused) {
  auto leaf = [](const at::Tensor& t) { return t.detach().clone().requires_grad_(true); };
  at::Tensor x = leaf(g.x);
  std::vector<at::Tensor> a, b;
  for (const at::Tensor& t : g.lora_A) a.push_back(leaf(t));
  for (const at::Tensor& t : g.lora_B) b.push_back(leaf(t));
  const std::vector<at::Tensor> ys = fused ? kernels::lora_group_linear(x, g.weights, g.biases, a, b, g.scales)
                                           : kernels::composite_lora_group_linear(x, g.weights, g.biases, a, b, g.scales);
  torch::manual_seed(17);
  at::Tensor loss = at::zeros({}, x.options());
  for (const at::Tensor& y : ys) loss = loss + (y * torch::randn(y.sizes(), y.options())).sum();
  loss.backward();
  std::vector<at::Tensor> out(ys.begin(), ys.end());
  out.push_back(x.grad());
  for (const at::Tensor& t : a) out.push_back(t.grad());
  for (const at::Tensor& t : b) out.push_back(t.grad());
  return out;
}

TEST(LoraGroup, MatchesTheCompositeInFp64WithEveryGradient) {
  for (bool with_bias : {false, true}) {
    for (size_t count : {size_t{3}, size_t{1}}) {
      const GroupOperands g = make_operands(at::kDouble, with_bias, count);
      const std::vector<at::Tensor> fused = run_path(g, true), plain = run_path(g, false);
      ASSERT_EQ(fused.size(), plain.size());
      ASSERT_EQ(fused.size(), 3 * count + 1);  // y_i, dx, dA_i, dB_i
      for (size_t i = 0; i < fused.size(); ++i) {
        ASSERT_TRUE(fused[i].defined()) << i;
        EXPECT_EQ(fused[i].sizes(), plain[i].sizes()) << i;
        EXPECT_LT(relative_error(fused[i], plain[i]), 1e-13) << "bias " << with_bias << ", count " << count << ", " << i;
        EXPECT_GT(plain[i].abs().max().item<double>(), 0.1) << i;  // nothing compared is trivially zero
      }
    }
  }
}

TEST(LoraGroup, GradientsMatchFiniteDifferences) {
  // Small fp64 case: central differences of L = sum(y_0 * p_0 + y_1 * p_1) along random directions.
  torch::manual_seed(3);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  GroupOperands g;
  g.x = torch::randn({3, 4}, f64);
  for (int64_t rows : {2, 3}) {
    g.weights.push_back(torch::randn({rows, 4}, f64));
    g.lora_A.push_back(torch::randn({2, 4}, f64));
    g.lora_B.push_back(torch::randn({rows, 2}, f64));
    g.scales.push_back(1.75);
  }
  const at::Tensor p0 = torch::randn({3, 2}, f64), p1 = torch::randn({3, 3}, f64);
  auto loss = [&](const at::Tensor& x, const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
    const auto ys = kernels::lora_group_linear(x, g.weights, {}, a, b, g.scales);
    return (ys[0] * p0).sum() + (ys[1] * p1).sum();
  };
  at::Tensor x = g.x.clone().requires_grad_(true);
  std::vector<at::Tensor> a, b;
  for (const at::Tensor& t : g.lora_A) a.push_back(t.clone().requires_grad_(true));
  for (const at::Tensor& t : g.lora_B) b.push_back(t.clone().requires_grad_(true));
  loss(x, a, b).backward();
  std::vector<at::Tensor*> leaves{&x, &a[0], &a[1], &b[0], &b[1]};
  const double eps = 1e-6;
  for (size_t k = 0; k < leaves.size(); ++k) {
    at::NoGradGuard no_grad;
    const at::Tensor direction = torch::randn(leaves[k]->sizes(), f64);
    auto shifted = [&](double sign) {
      at::Tensor xs = x.detach().clone();
      std::vector<at::Tensor> as{a[0].detach().clone(), a[1].detach().clone()}, bs{b[0].detach().clone(), b[1].detach().clone()};
      std::vector<at::Tensor*> copies{&xs, &as[0], &as[1], &bs[0], &bs[1]};
      copies[k]->add_(direction, sign * eps);
      return loss(xs, as, bs).item<double>();
    };
    const double numeric = (shifted(1) - shifted(-1)) / (2 * eps);
    const double analytic = (leaves[k]->grad() * direction).sum().item<double>();
    EXPECT_NEAR(analytic, numeric, 1e-7 * std::max(1.0, std::abs(numeric))) << "leaf " << k;
  }
}

TEST(LoraGroup, IsOneNodeAndTheFrozenBaseGetsNoGradient) {
  GroupOperands g = make_operands(at::kFloat, true);
  at::Tensor x = g.x.clone().requires_grad_(true);
  std::vector<at::Tensor> a, b;
  for (const at::Tensor& t : g.lora_A) a.push_back(t.clone().requires_grad_(true));
  for (const at::Tensor& t : g.lora_B) b.push_back(t.clone().requires_grad_(true));
  const auto ys = kernels::lora_group_linear(x, g.weights, g.biases, a, b, g.scales);
  // Views of the node's outputs: their base's grad_fn is the one node, shared by all three.
  const auto node = ys[0].grad_fn();
  ASSERT_TRUE(node);
  std::set<const torch::autograd::Node*> nodes;
  for (const at::Tensor& y : ys) {
    auto fn = y.grad_fn();
    while (fn && fn->name().find("LoraGroup") == std::string::npos && !fn->next_edges().empty()) {
      fn = fn->next_edges()[0].function;  // through the view's node
    }
    ASSERT_TRUE(fn) << "no LoraGroupFunction under the output";
    EXPECT_NE(fn->name().find("LoraGroupFunction"), std::string::npos) << fn->name();
    nodes.insert(fn.get());
  }
  EXPECT_EQ(nodes.size(), 1u);
  (ys[0].sum() + ys[1].sum() + ys[2].sum()).backward();
  for (const at::Tensor& w : g.weights) EXPECT_FALSE(w.grad().defined());
  for (const at::Tensor& t : g.biases) EXPECT_FALSE(t.grad().defined());
  EXPECT_TRUE(x.grad().defined());
}

TEST(LoraGroup, UnderBf16AutocastMatchesTheCompositeAndReturnsFp32AdapterGradients) {
  // A bf16 base and fp32 adapters under CPU bf16 autocast, as train.mixed_precision: bf16 runs LoRA. Both
  // paths compute in bf16; they differ in where bf16 rounding happens (the composite rounds each of the
  // engine's additions of d x, the node accumulates d x in its GEMMs), so the bound is bf16's: 2e-2.
  GroupOperands g = make_operands(at::kFloat, true);
  for (at::Tensor& w : g.weights) w = w.to(at::kBFloat16);
  for (at::Tensor& b : g.biases) b = b.to(at::kBFloat16);
  std::vector<at::Tensor> fused, plain;
  {
    at::autocast::set_autocast_enabled(at::kCPU, true);
    at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
    ASSERT_TRUE(kernels::lora_group_supported(g.x, g.weights, g.biases, g.lora_A, g.lora_B));
    fused = run_path(g, true);
    plain = run_path(g, false);
    at::autocast::set_autocast_enabled(at::kCPU, false);
    at::autocast::clear_cache();
  }
  ASSERT_EQ(fused.size(), plain.size());
  for (size_t i = 0; i < fused.size(); ++i) {
    EXPECT_EQ(fused[i].scalar_type(), plain[i].scalar_type()) << i;  // outputs bf16; x, A, B grads fp32
    EXPECT_LT(relative_error(fused[i], plain[i]), 2e-2) << i;
  }
  EXPECT_EQ(fused[0].scalar_type(), at::kBFloat16);
  EXPECT_EQ(fused.back().scalar_type(), at::kFloat);  // dB of the last projection
}

TEST(LoraGroup, RefusesWhatItCannotDoAndSaysSo) {
  GroupOperands g = make_operands(at::kFloat, false);
  EXPECT_TRUE(kernels::lora_group_supported(g.x, g.weights, g.biases, g.lora_A, g.lora_B));
  std::vector<at::Tensor> trainable = g.weights;
  trainable[1] = trainable[1].clone().requires_grad_(true);  // a trained base needs dW: not this node's job
  EXPECT_FALSE(kernels::lora_group_supported(g.x, trainable, g.biases, g.lora_A, g.lora_B));
  std::vector<at::Tensor> half = g.lora_A;
  half[0] = half[0].to(at::kBFloat16);  // mixed dtypes without autocast: the composite would refuse them too
  EXPECT_FALSE(kernels::lora_group_supported(g.x, g.weights, g.biases, half, g.lora_B));
  std::vector<at::Tensor> doubled = g.lora_A;
  doubled[1] = doubled[1].to(at::kDouble);
  {
    at::autocast::set_autocast_enabled(at::kCPU, true);  // autocast does not cast fp64: refused
    EXPECT_FALSE(kernels::lora_group_supported(g.x, g.weights, g.biases, doubled, g.lora_B));
    at::autocast::set_autocast_enabled(at::kCPU, false);
  }
  std::vector<at::Tensor> wrong = g.lora_B;
  wrong[2] = torch::randn({10, 4});  // rank 4 against A's 3
  EXPECT_FALSE(kernels::lora_group_supported(g.x, g.weights, g.biases, g.lora_A, wrong));
  try {
    kernels::lora_group_linear(g.x, g.weights, g.biases, g.lora_A, wrong, g.scales);
    FAIL() << "no error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("lora_group_linear: unsupported operands"), std::string::npos) << e.what();
  }
}

// ---- the model, switch on against switch off ----
kernels::FusedOps lora_only(bool on) {
  kernels::FusedOps ops;
  ops.lora = on;
  return ops;
}

// A LoRA model (r=3, every projection, B != 0) with the given switch; the same weights for either switch.
model::CausalLM make_lora_model(bool fused, double dropout) {
  torch::manual_seed(5);
  model::CausalLM lm(test_support::odd_gqa_config(/*bias=*/true), at::TensorOptions().dtype(at::kFloat), lora_only(fused));
  {
    at::NoGradGuard no_grad;
    for (auto& p : lm->parameters()) p.normal_(0.0, 0.3);
  }
  model::LoraSpec spec;
  spec.rank = 3;
  spec.alpha = 7;
  spec.dropout = dropout;
  spec.targets = {"all"};
  model::apply_lora(lm, spec);
  at::NoGradGuard no_grad;
  torch::manual_seed(23);
  for (auto& [path, lora] : model::lora_modules(lm)) lora->lora_B->weight.normal_(0.0, 0.3);
  return lm;
}

// Loss of the shared packed batch (two documents, five target rows), with the graph's node names.
at::Tensor loss_of(model::CausalLM& lm, std::multiset<std::string>* node_names = nullptr) {
  const test_support::PackedBatch batch = test_support::odd_packed_batch(61);
  torch::manual_seed(31);  // the dropout masks
  at::Tensor loss = test_support::target_loss_of(lm, batch);
  if (node_names) {
    std::set<const torch::autograd::Node*> seen;
    std::function<void(const std::shared_ptr<torch::autograd::Node>&)> walk = [&](const auto& fn) {
      if (!fn || !seen.insert(fn.get()).second) return;
      node_names->insert(fn->name());
      for (const auto& edge : fn->next_edges()) walk(edge.function);
    };
    walk(loss.grad_fn());
  }
  return loss;
}

void expect_same_loss_and_gradients(bool dropout_on, size_t expected_group_nodes) {
  const double dropout = dropout_on ? 0.2 : 0.0;
  model::CausalLM fused = make_lora_model(true, dropout), plain = make_lora_model(false, dropout);
  fused->train();
  plain->train();
  std::multiset<std::string> names;
  at::Tensor fused_loss = loss_of(fused, &names), plain_loss = loss_of(plain);
  EXPECT_EQ(std::count_if(names.begin(), names.end(),
                          [](const std::string& n) { return n.find("LoraGroupFunction") != std::string::npos; }),
            static_cast<std::ptrdiff_t>(expected_group_nodes));
  fused_loss.backward();
  plain_loss.backward();
  EXPECT_LE(relative_error(fused_loss.detach(), plain_loss.detach()), 1e-6);
  auto plain_params = plain->named_parameters();
  int trained = 0;
  for (const auto& item : fused->named_parameters()) {
    const at::Tensor& p = plain_params[item.key()];
    if (!p.requires_grad()) {
      EXPECT_FALSE(item.value().grad().defined()) << "frozen " << item.key() << " got a gradient";
      continue;
    }
    ASSERT_TRUE(item.value().grad().defined()) << item.key();
    // 2e-6: a layer-0 LoRA A gradient collects the whole backward (as test_fused_projections.cpp's bound).
    EXPECT_LE(relative_error(item.value().grad(), p.grad()), 2e-6) << item.key();
    ++trained;
  }
  EXPECT_EQ(trained, 2 * 7 * 2);  // A and B of 7 projections in 2 layers
}

TEST(LoraGroupModel, OneNodePerGroupAndTheSameLossAndGradients) {
  expect_same_loss_and_gradients(/*dropout_on=*/false, /*q/k/v, o, gate/up, down per layer=*/4 * 2);
}

TEST(LoraGroupModel, ActiveDropoutFallsBackToTheSeparateAdapters) {
  expect_same_loss_and_gradients(/*dropout_on=*/true, 0);
}

TEST(LoraGroupModel, LoraIsAFusedOpsEntry) {
  const kernels::FusedOps ops = kernels::parse_fused_ops({"lora"});
  EXPECT_TRUE(ops.lora);
  EXPECT_FALSE(ops.projections);
  EXPECT_TRUE(kernels::op_table(ops).group_lora);
  EXPECT_FALSE(kernels::op_table(kernels::FusedOps{}).group_lora);
  EXPECT_EQ(kernels::to_string(ops), "[lora]");
}

}  // namespace
}  // namespace sft
