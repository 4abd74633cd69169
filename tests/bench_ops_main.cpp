// tests/bench_ops_main.cpp: the fused-op benchmarks and the training-step profile, printed as markdown.
//   bench_ops profile CONFIG.yaml [STEPS] [key=value ...]
//       Runs STEPS (default 6, the first is warm-up) LoRA/freeze/full training steps of CONFIG exactly as
//       trainer/train.cpp's step does (forward, masked loss, backward, clipping, AdamW) under LibTorch's
//       legacy CPU profiler, and prints the self time of every op, grouped as matmul / elementwise /
//       attention / optimizer / data / other (scripts/bench_ops.sh profile).
//   bench_ops ops [REPS]
//       ms and GB/s of each fused op against the composite ATen code it replaces, forward and backward,
//       plus the loss memory of the fused linear cross-entropy against plain logits at V = 49k and 128k.
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "kernels/cuda_plugin.h"
#include "common/autocast.h"
#include "data/loader.h"
#include "kernels/fused_ops.h"
#include "model/config.h"
#include "model/weights.h"
#include "trainer/config.h"
#include "trainer/optimizer.h"
#include "trainer/setup.h"

namespace {

// ---- profile ----
namespace prof = torch::autograd::profiler;

// Scope names the step below opens; an op inside one of them is charged to it.
const char* const kScopeData = "step::data";
const char* const kScopeOptimizer = "step::optimizer";

std::string category_of(const std::string& name, const std::vector<std::string>& ancestors) {
  for (const std::string& a : ancestors) {
    if (a == kScopeData) return "data";
    if (a == kScopeOptimizer) return "optimizer (incl. grad clipping)";
  }
  for (const std::string& a : ancestors) {
    if (a.find("attention") != std::string::npos || a.find("scaled_dot_product") != std::string::npos)
      return "attention";
  }
  static const std::vector<std::string> matmul{"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
                                               "aten::matmul", "aten::linear", "aten::addmv", "aten::mv"};
  if (std::find(matmul.begin(), matmul.end(), name) != matmul.end()) return "matmul";
  if (name.find("attention") != std::string::npos || name.find("scaled_dot_product") != std::string::npos)
    return "attention";
  static const std::vector<std::string> other{"aten::empty", "aten::empty_strided", "aten::view", "aten::reshape",
                                              "aten::t", "aten::transpose", "aten::slice", "aten::select",
                                              "aten::as_strided", "aten::expand", "aten::unsqueeze",
                                              "aten::squeeze", "aten::permute", "aten::detach", "aten::alias",
                                              "aten::resize_", "aten::index_select", "aten::embedding"};
  if (std::find(other.begin(), other.end(), name) != other.end()) return "other (views, allocation, gather)";
  if (name.rfind("aten::", 0) == 0 || name.rfind("sft::", 0) == 0) return "elementwise and reductions";
  return "other (autograd engine, bookkeeping)";
}

int profile_command(int argc, char** argv) {
  if (argc < 3) throw std::runtime_error("usage: bench_ops profile CONFIG.yaml [STEPS] [key=value ...]");
  int steps = 6;
  std::vector<std::string> overrides;
  for (int i = 3; i < argc; ++i) {
    std::string a = argv[i];
    if (a.find('=') == std::string::npos) steps = std::stoi(a); else overrides.push_back(a);
  }
  sft::Config config = sft::load_config(argv[2], overrides);
  sft::Runtime runtime = sft::resolve_runtime(config);
  torch::manual_seed(static_cast<uint64_t>(config.train.seed));
  auto tokenizer = sft::load_tokenizer_if_needed(config);
  const auto model_config = sft::model::load_model_config(config.model.path);
  sft::data::PreparedData data = sft::load_run_data(config, tokenizer.get(), model_config.vocab_size);
  sft::data::LoaderOptions lo;
  lo.micro_batch_size = config.train.micro_batch_size;
  lo.max_seq_len = config.data.max_seq_len;
  lo.packing = config.data.packing;
  lo.seed = static_cast<uint64_t>(config.train.seed);
  lo.pad_id = sft::run_pad_id(tokenizer.get());
  sft::data::BatchLoader loader(data.train, lo);
  auto lm = sft::model::load_pretrained(config.model.path, runtime.dtype, runtime.device);
  sft::apply_finetune_method(lm, config);
  lm->train();
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& item : lm->named_parameters()) named.emplace_back(item.key(), item.value());
  auto params = sft::trainable_parameters(named);
  const auto& betas = config.train.adam_betas;
  sft::AdamW optimizer(params, sft::AdamWOptions{betas[0], betas[1], config.train.adam_eps, config.train.weight_decay});

  int64_t tokens = 0;
  double seconds = 0;
  auto one_step = [&]() {  // the step of trainer/train.cpp (one micro-batch), with named scopes
    sft::data::Batch batch;
    {
      RECORD_FUNCTION(kScopeData, std::vector<c10::IValue>());
      batch = loader.next();
    }
    tokens += batch.input_ids.numel();
    sft::kernels::PackedSequences seqs{batch.cu_seqlens, batch.cu_seqlens_host, batch.max_seqlen};
    at::Tensor hidden = lm->forward(batch.input_ids, batch.position_ids, seqs, runtime.forward_options());
    at::Tensor loss = lm->target_loss_sum(hidden.index_select(0, batch.target_positions), batch.target_ids);
    (loss / batch.target_ids.numel()).backward();
    {
      RECORD_FUNCTION(kScopeOptimizer, std::vector<c10::IValue>());
      sft::clip_grad_norm(params, config.train.max_grad_norm);
      optimizer.step(config.train.lr);
      optimizer.zero_grad();
    }
  };
  one_step();  // warm-up: first-touch allocations, MKL init
  tokens = 0;
  prof::enableProfilerLegacy(torch::profiler::impl::ProfilerConfig(torch::profiler::impl::ProfilerState::CPU));
  const auto start = std::chrono::steady_clock::now();
  for (int s = 1; s < steps; ++s) one_step();
  seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  prof::thread_event_lists lists = prof::disableProfilerLegacy();

  // Self time per op: a range's duration minus its children's, on its own thread.
  std::map<std::string, double> by_category, by_op;
  double total = 0;
  for (auto& list : lists) {
    struct Open { std::string name; const prof::LegacyEvent* event; double child_us; };
    std::vector<Open> stack;
    for (const auto& e : list) {
      if (e.kindStr() == "push") {
        stack.push_back({e.name(), &e, 0.0});
      } else if (e.kindStr() == "pop" && !stack.empty()) {
        Open open = stack.back();
        stack.pop_back();
        const double us = open.event->cpuElapsedUs(e);
        const double self = std::max(0.0, us - open.child_us);
        if (!stack.empty()) stack.back().child_us += us;
        std::vector<std::string> ancestors;
        for (const Open& o : stack) ancestors.push_back(o.name);
        by_category[category_of(open.name, ancestors)] += self;
        by_op[open.name] += self;
        if (stack.empty()) total += us;
      }
    }
  }
  const double wall_us = seconds * 1e6;
  // Time outside every recorded op (Python-free C++ glue, the autograd engine between nodes).
  by_category["other (autograd engine, bookkeeping)"] += std::max(0.0, wall_us - total);
  std::printf("%d profiled steps, %lld tokens, %.1f tokens/s, %d threads\n\n", steps - 1,
              static_cast<long long>(tokens), tokens / seconds, at::get_num_threads());
  std::printf("| where | ms per step | share |\n|---|---:|---:|\n");
  std::vector<std::pair<double, std::string>> rows;
  for (auto& [k, v] : by_category) rows.emplace_back(v, k);
  std::sort(rows.rbegin(), rows.rend());
  for (auto& [v, k] : rows)
    std::printf("| %s | %.1f | %.1f%% |\n", k.c_str(), v / 1e3 / (steps - 1), 100.0 * v / wall_us);
  std::printf("\nTop ops by self time:\n\n| op | share |\n|---|---:|\n");
  rows.clear();
  for (auto& [k, v] : by_op) rows.emplace_back(v, k);
  std::sort(rows.rbegin(), rows.rend());
  for (size_t i = 0; i < rows.size() && i < 15; ++i)
    std::printf("| %s | %.1f%% |\n", rows[i].second.c_str(), 100.0 * rows[i].first / wall_us);
  return 0;
}

}  // namespace

int ops_command(int argc, char** argv);  // tests/bench_ops_kernels.cpp

int main(int argc, char** argv) {
  try {
    sft::kernels::load_cuda_plugin();  // first: before anything asks LibTorch about CUDA (kernels/cuda_plugin.h)
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "profile") return profile_command(argc, argv);
    if (mode == "ops") return ops_command(argc, argv);
    std::fprintf(stderr, "usage: bench_ops profile CONFIG.yaml [STEPS] [key=value ...] | bench_ops ops [REPS]\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_ops: %s\n", e.what());
    return 1;
  }
}
