// tests/test_dropout_linear.cpp: the fused dropout + linear (kernels/dropout_linear.h) against an fp64
// reference that builds the same Philox mask explicitly with at::Philox4_32 (forward and both gradients,
// odd sizes, fp64/fp32/bf16, autocast), central finite differences on a small case, p = 0 equal to
// at::linear, the keep rate within binomial bounds, masks that differ between calls and seeds and repeat
// for one seed or one generator state, the memory the autograd graph holds (no [T, in] tensor is saved),
// bad inputs, the LoRA call site behind `model.fused_ops: [dropout]`, model.fused_ops in the run
// fingerprint, and the CUDA kernel (skipped, with the reason, without a GPU).
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <ATen/core/PhiloxRNGEngine.h>
#include <c10/core/CPUAllocator.h>

#include <atomic>
#include <cmath>

#include "kernels/cuda_plugin.h"
#include "common/autocast.h"
#include "kernels/dropout_linear.h"
#include "kernels/fused_ops.h"
#include "model/lora.h"
#include "tests/test_util.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"

namespace sft {
namespace {
using kernels::DropoutSeed;

// ---- the reference: the mask from its definition, then fp64 math ----
// Element e of the flattened [rows, cols] input: the (e % 4)-th draw of Philox4x32-10 keyed by the seed,
// subsequence e / 4, offset key.offset; kept iff the draw is below round((1 - p) 2^32).
at::Tensor ref_keep_mask(int64_t rows, int64_t cols, const DropoutSeed& key, double p) {
  at::Tensor mask = at::empty({rows * cols}, at::kDouble);
  double* m = mask.data_ptr<double>();
  const double below = std::round((1.0 - p) * 4294967296.0);
  for (int64_t e = 0; e < rows * cols; ++e) {
    at::Philox4_32 engine(key.seed, static_cast<uint64_t>(e / 4), key.offset);
    uint32_t draw = 0;
    for (int64_t lane = 0; lane <= e % 4; ++lane) draw = engine();
    m[e] = static_cast<double>(draw) < below ? 1.0 : 0.0;
  }
  return mask.view({rows, cols});
}

// (x * mask / (1 - p)) W^T in fp64; x [..., in] and w [out, in] fp64 leaves.
at::Tensor ref_dropout_linear(const at::Tensor& x, const at::Tensor& w, double p, const DropoutSeed& key) {
  const at::Tensor mask = ref_keep_mask(x.numel() / x.size(-1), x.size(-1), key, p).view(x.sizes());
  return at::matmul(x * mask / (1.0 - p), w.t());
}

struct Case {
  at::Tensor x_ref, w_ref, x, w;  // fp64 leaves and the op's leaves (dtype, device)
};
Case make_case(at::IntArrayRef x_sizes, int64_t out, at::ScalarType dtype, const at::Device& device = at::kCPU) {
  at::Tensor x = torch::randn(x_sizes, at::kDouble), w = torch::randn({out, x_sizes.back()}, at::kDouble) * 0.3;
  return {x.clone().requires_grad_(true), w.clone().requires_grad_(true),
          x.to(device, dtype).detach().requires_grad_(true), w.to(device, dtype).detach().requires_grad_(true)};
}

double rel_err(const at::Tensor& ours, const at::Tensor& ref) {
  const at::Tensor r = ref.detach();
  return (ours.detach().to(at::kCPU, at::kDouble) - r).abs().max().item<double>() /
         std::max(1.0, r.abs().max().item<double>());
}

// Forward and both gradients of the op against the reference with one random upstream gradient.
void expect_matches_reference(Case c, double p, const DropoutSeed& key, double tol, const std::string& what) {
  at::Tensor ours = kernels::dropout_linear(c.x, c.w, p, key);
  at::Tensor ref = ref_dropout_linear(c.x_ref, c.w_ref, p, key);
  ASSERT_EQ(ours.sizes(), ref.sizes()) << what;
  EXPECT_EQ(ours.scalar_type(), c.w.scalar_type()) << what;
  EXPECT_LT(rel_err(ours, ref), tol) << what << " forward";
  const at::Tensor grad = torch::randn(ref.sizes(), at::kDouble);
  ours.backward(grad.to(ours.device(), ours.scalar_type()));
  ref.backward(grad);
  EXPECT_LT(rel_err(c.x.grad(), c.x_ref.grad()), tol) << what << " d x";
  EXPECT_LT(rel_err(c.w.grad(), c.w_ref.grad()), tol) << what << " d weight";
}

TEST(DropoutLinear, MatchesFp64ReferenceOverOddSizes) {
  torch::manual_seed(7);
  const DropoutSeed key{0x243F6A8885A308D3ull, 3};
  for (auto [dtype, tol] : {std::pair{at::kDouble, 1e-12}, {at::kFloat, 1e-5}, {at::kBFloat16, 3e-2}}) {
    for (double p : {0.1, 0.5}) {
      const std::string tag = std::string(c10::toString(dtype)) + " p=" + std::to_string(p);
      expect_matches_reference(make_case({1, 1}, 1, dtype), p, key, tol, "[1,1] " + tag);
      expect_matches_reference(make_case({3, 7}, 5, dtype), p, key, tol, "[3,7] " + tag);
      expect_matches_reference(make_case({37, 129}, 17, dtype), p, key, tol, "[37,129] " + tag);
      expect_matches_reference(make_case({2, 13, 65}, 9, dtype), p, key, tol, "[2,13,65] " + tag);
    }
  }
  // Larger than one task of the CPU twin (rows split over threads, groups of 4 crossing rows).
  expect_matches_reference(make_case({301, 577}, 16, at::kFloat), 0.05, {11, 0}, 1e-5, "[301,577] fp32");
}

TEST(DropoutLinear, GradientsMatchFiniteDifferences) {
  torch::manual_seed(3);
  const DropoutSeed key{12345, 0};
  const double p = 0.3, h = 1e-6;
  at::Tensor x = torch::randn({3, 6}, at::kDouble).requires_grad_(true);
  at::Tensor w = torch::randn({4, 6}, at::kDouble).requires_grad_(true);
  const at::Tensor g = torch::randn({3, 4}, at::kDouble);
  (kernels::dropout_linear(x, w, p, key) * g).sum().backward();
  ASSERT_GT(ref_keep_mask(3, 6, key, p).sum().item<double>(), 0);
  ASSERT_LT(ref_keep_mask(3, 6, key, p).sum().item<double>(), 18);  // both kept and dropped elements
  for (at::Tensor* t : {&x, &w}) {
    at::Tensor analytic = t->grad().clone();
    at::Tensor numeric = at::zeros_like(analytic);
    for (int64_t i = 0; i < t->numel(); ++i) {
      auto loss_at = [&](double delta) {
        at::NoGradGuard no_grad;
        at::Tensor moved = t->detach().clone();
        moved.view(-1)[i] += delta;
        const at::Tensor& xx = t == &x ? moved : x.detach();
        const at::Tensor& ww = t == &w ? moved : w.detach();
        return (kernels::dropout_linear(xx, ww, p, key) * g).sum().item<double>();
      };
      numeric.view(-1)[i] = (loss_at(h) - loss_at(-h)) / (2 * h);
    }
    EXPECT_LT((analytic - numeric).abs().max().item<double>(), 1e-7) << (t == &x ? "d x" : "d weight");
  }
}

TEST(DropoutLinear, ZeroPIsExactlyLinear) {
  at::Tensor x = torch::randn({9, 31}).requires_grad_(true), w = torch::randn({5, 31}).requires_grad_(true);
  at::Tensor x2 = x.detach().clone().requires_grad_(true), w2 = w.detach().clone().requires_grad_(true);
  at::Tensor ours = kernels::dropout_linear(x, w, 0.0), ref = at::linear(x2, w2);
  EXPECT_TRUE(at::equal(ours, ref));
  ours.sum().backward();
  ref.sum().backward();
  EXPECT_TRUE(at::equal(x.grad(), x2.grad()));
  EXPECT_TRUE(at::equal(w.grad(), w2.grad()));
}

// Kept fraction of n = rows * 1000 elements: x = 1, W = ones [1, 1000] gives scale * (kept in the row).
double keep_rate(int64_t rows, double p, std::optional<DropoutSeed> key = std::nullopt) {
  at::NoGradGuard no_grad;
  const at::Tensor y = kernels::dropout_linear(at::ones({rows, 1000}), at::ones({1, 1000}), p, key);
  return y.sum().item<double>() * (1.0 - p) / (rows * 1000.0);
}

TEST(DropoutLinear, KeepRateIsWithinBinomialBounds) {
  torch::manual_seed(0);
  for (double p : {0.1, 0.05, 0.5}) {
    const double n = 1e6, sigma = std::sqrt(p * (1 - p) / n);
    const double rate = keep_rate(1000, p);
    EXPECT_LT(std::abs(rate - (1 - p)), 5 * sigma) << "p = " << p << ": keep rate " << rate;
  }
  EXPECT_EQ(keep_rate(10, 1.0), 0.0);  // p = 1 drops everything (and never divides by zero)
}

TEST(DropoutLinear, MasksDifferBetweenCallsAndSeedsAndRepeatForOneSeed) {
  torch::manual_seed(1);
  at::Tensor x = torch::randn({64, 96}), w = torch::eye(96);  // y = the dropped input itself
  at::NoGradGuard no_grad;
  const at::Tensor a = kernels::dropout_linear(x, w, 0.2), b = kernels::dropout_linear(x, w, 0.2);
  EXPECT_FALSE(at::equal(a, b)) << "two calls drew the same mask";
  const at::Tensor s1 = kernels::dropout_linear(x, w, 0.2, DropoutSeed{1, 0});
  EXPECT_TRUE(at::equal(s1, kernels::dropout_linear(x, w, 0.2, DropoutSeed{1, 0})));
  EXPECT_FALSE(at::equal(s1, kernels::dropout_linear(x, w, 0.2, DropoutSeed{2, 0})));
  EXPECT_FALSE(at::equal(s1, kernels::dropout_linear(x, w, 0.2, DropoutSeed{1, 1})));
  // The default generator's state fixes the mask (checkpoint resume and the checkpointing recompute).
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  const at::Tensor state = gen.get_state();
  const at::Tensor c = kernels::dropout_linear(x, w, 0.2);
  gen.set_state(state);
  EXPECT_TRUE(at::equal(c, kernels::dropout_linear(x, w, 0.2)));
  // y = x * mask * 1/(1-p) exactly (an identity weight): every element is 0 or the scaled input.
  const at::Tensor scaled = x * static_cast<float>(1.0 / 0.8);
  EXPECT_TRUE(at::all((c == 0) | (c == scaled)).item<bool>());
}

// ---- memory held by the graph: a CPU allocator that counts live bytes ----
class CountingAllocator final : public c10::Allocator {
 public:
  explicit CountingAllocator(c10::Allocator* base) : base_(base) {}
  c10::DataPtr allocate(size_t n) override {
    auto* held = new Held{base_->allocate(n), n, this};
    live_ += static_cast<int64_t>(n);
    return {held->inner.get(), held, &release, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }
  int64_t live() const { return live_.load(); }

 private:
  struct Held {
    c10::DataPtr inner;
    size_t n;
    CountingAllocator* owner;
  };
  static void release(void* ctx) {
    auto* held = static_cast<Held*>(ctx);
    held->owner->live_ -= static_cast<int64_t>(held->n);
    delete held;
  }
  c10::Allocator* base_;
  std::atomic<int64_t> live_{0};
};

// Bytes still allocated after a forward through `op` (output and graph), minus the output's own bytes.
int64_t bytes_held_by_graph(const std::function<at::Tensor(const at::Tensor&, const at::Tensor&)>& op) {
  static CountingAllocator counting(c10::GetCPUAllocator());  // outlives every tensor it hands out
  c10::Allocator* previous = c10::GetCPUAllocator();
  c10::SetCPUAllocator(&counting, /*priority=*/100);
  int64_t held = 0;
  {
    at::Tensor x = torch::randn({512, 576}).requires_grad_(true), w = torch::randn({16, 576}).requires_grad_(true);
    const int64_t before = counting.live();
    at::Tensor y = op(x, w);
    held = counting.live() - before - static_cast<int64_t>(y.nbytes());
    y.sum().backward();  // the graph works
  }
  c10::SetCPUAllocator(previous, /*priority=*/100);
  return held;
}

TEST(DropoutLinear, GraphHoldsNoInputSizedTensor) {
  const int64_t x_bytes = 512 * 576 * 4;
  const int64_t fused = bytes_held_by_graph([](auto& x, auto& w) { return kernels::dropout_linear(x, w, 0.1); });
  const int64_t composite =
      bytes_held_by_graph([](auto& x, auto& w) { return kernels::composite_dropout_linear(x, w, 0.1); });
  EXPECT_LT(fused, x_bytes / 8) << "the fused op keeps " << fused << " bytes besides x";
  // The measurement sees the composite's mask and dropped input (it can fail).
  EXPECT_GE(composite, 2 * x_bytes) << "composite keeps " << composite << " bytes";
}

TEST(DropoutLinear, BadInputsAreRefused) {
  at::Tensor x = torch::randn({4, 8}), w = torch::randn({3, 8});
  auto message = [](const std::function<void()>& fn) {
    try {
      fn();
    } catch (const c10::Error& e) {
      return std::string(e.what_without_backtrace());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([&] { kernels::dropout_linear(x, w, 1.5); }).find("p = 1.5 outside [0, 1]"), std::string::npos);
  EXPECT_NE(message([&] { kernels::dropout_linear(x, torch::randn({3, 7}), 0.1); }).find("input features"),
            std::string::npos);
  EXPECT_NE(message([&] { kernels::dropout_linear(x, torch::randn({8}), 0.1); }).find("weight must be [out, in]"),
            std::string::npos);
  EXPECT_NE(message([&] { kernels::dropout_linear(x.to(at::kInt), w.to(at::kInt), 0.1); }).find("unsupported dtype"),
            std::string::npos);
}

TEST(DropoutLinear, AutocastMultipliesInTheAutocastDtype) {
  torch::manual_seed(5);
  const DropoutSeed key{99, 0};
  Case c = make_case({21, 67}, 8, at::kFloat);
  at::Tensor ours;
  {
    const ScopedAutocast autocast(at::kCPU, at::kBFloat16);
    ours = kernels::dropout_linear(c.x, c.w, 0.25, key);
  }
  EXPECT_EQ(ours.scalar_type(), at::kBFloat16);  // as at::linear under autocast
  at::Tensor ref = ref_dropout_linear(c.x_ref, c.w_ref, 0.25, key);
  EXPECT_LT(rel_err(ours, ref), 3e-2);
  ours.to(at::kFloat).sum().backward();
  ref.sum().backward();
  EXPECT_EQ(c.w.grad().scalar_type(), at::kFloat);
  EXPECT_LT(rel_err(c.x.grad(), c.x_ref.grad()), 3e-2);
  EXPECT_LT(rel_err(c.w.grad(), c.w_ref.grad()), 3e-2);
}

// ---- the LoRA call site and the switch ----
TEST(DropoutLinear, LoraForwardUsesTheFusedOpWhenSwitchedOn) {
  torch::manual_seed(2);
  model::Projection base(32, 24, false, at::TensorOptions(at::kFloat));
  base->weight.detach().normal_(0, 0.02);  // a Projection is not initialised (the loader fills it)
  auto lora = std::make_shared<model::LoraProjectionImpl>(*base, 4, 2.0, 0.2);
  torch::NoGradGuard no_grad;
  lora->lora_B->weight.normal_();
  lora->fused_dropout = true;
  lora->train();
  const at::Tensor x = torch::randn({10, 32});
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  const at::Tensor state = gen.get_state();
  const at::Tensor ours = lora->forward(x);
  gen.set_state(state);
  const DropoutSeed key = kernels::draw_dropout_seed(at::kCPU);
  const at::Tensor expected =
      at::linear(x, lora->weight) + at::linear(kernels::dropout_linear(x, lora->lora_A->weight, 0.2, key),
                                               lora->lora_B->weight) * 2.0;
  EXPECT_TRUE(at::equal(ours, expected));
  lora->eval();  // no dropout outside training
  EXPECT_TRUE(at::allclose(lora->forward(x), at::linear(x, lora->weight + lora->delta_weight()), 1e-5, 1e-5));
}

TEST(DropoutLinear, FusedOpsEntryParsesAndPrints) {
  const kernels::FusedOps ops = kernels::parse_fused_ops({"rmsnorm", "dropout"});
  EXPECT_TRUE(ops.dropout);
  EXPECT_TRUE(ops.rmsnorm);
  EXPECT_FALSE(ops.rope);
  EXPECT_EQ(kernels::to_string(ops), "[rmsnorm, dropout]");
  EXPECT_FALSE(kernels::parse_fused_ops({"none"}).dropout);
  EXPECT_TRUE(kernels::FusedOps::all().dropout);
}

// With `dropout` the masks come from another stream (same distribution, other draws), so a resume across a
// change of model.fused_ops would not continue the run it came from: the fingerprint refuses it.
TEST(DropoutLinear, FusedOpsChangeIsAFingerprintDifference) {
  Config config;
  config.model.path = (test::golden_dir() / "train" / "base").string();
  config.data.train = {(test::golden_dir() / "train" / "data.jsonl").string()};
  const nlohmann::json before = run_fingerprint(config);
  config.model.fused_ops = kernels::parse_fused_ops_choice({"rmsnorm", "dropout"});
  const std::vector<std::string> changes = fingerprint_differences(before, run_fingerprint(config));
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0], R"(model.fused_ops changed from ["auto"] to ["rmsnorm","dropout"])");
  nlohmann::json older = before;  // saved before the key existed: not compared
  older.erase("fused_ops");
  EXPECT_TRUE(fingerprint_differences(older, run_fingerprint(config)).empty());
}

// ---- CUDA (run by the GPU bundle) ----
TEST(DropoutLinearCuda, MaskEqualsTheCpuTwinsAndMatchesFp64Reference) {
  if (const std::string why = kernels::cuda_unavailable_reason(); !why.empty()) GTEST_SKIP() << why;
  torch::manual_seed(4);
  const DropoutSeed key{0xC0FFEEull, 5};
  const at::Device dev(at::kCUDA);
  for (auto [dtype, tol] : {std::pair{at::kFloat, 1e-5}, {at::kBFloat16, 3e-2}, {at::kHalf, 3e-3}}) {
    const std::string tag = c10::toString(dtype);
    expect_matches_reference(make_case({37, 129}, 17, dtype, dev), 0.1, key, tol, "cuda [37,129] " + tag);
    expect_matches_reference(make_case({2, 513, 577}, 16, dtype, dev), 0.05, key, tol, "cuda [2,513,577] " + tag);
  }
  // The same key gives the same mask on both devices, bit for bit (identity weight: y is the dropped input).
  at::NoGradGuard no_grad;
  const at::Tensor x = torch::randn({333, 96});
  const at::Tensor cpu = kernels::dropout_linear(x, torch::eye(96), 0.3, key);
  const at::Tensor cuda = kernels::dropout_linear(x.to(dev), torch::eye(96, at::TensorOptions(dev)), 0.3, key);
  EXPECT_TRUE(at::equal(cpu == 0, cuda.cpu() == 0));
  // Calls without a key draw from the CUDA generator: they differ, and its state repeats them.
  at::Generator gen = at::globalContext().defaultGenerator(dev);
  const at::Tensor state = gen.get_state();
  const at::Tensor a = kernels::dropout_linear(x.to(dev), torch::eye(96, at::TensorOptions(dev)), 0.3);
  const at::Tensor b = kernels::dropout_linear(x.to(dev), torch::eye(96, at::TensorOptions(dev)), 0.3);
  EXPECT_FALSE(at::equal(a, b));
  gen.set_state(state);
  EXPECT_TRUE(at::equal(a, kernels::dropout_linear(x.to(dev), torch::eye(96, at::TensorOptions(dev)), 0.3)));
}

}  // namespace
}  // namespace sft
