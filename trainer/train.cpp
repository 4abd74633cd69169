// trainer/train.cpp: `sft train`. Setup lives in named helpers; train_step() is the whole optimizer step
// (micro-batches -> masked loss -> backward -> clip -> AdamW) with one host sync per step.
#include "trainer/train.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <iostream>
#include <memory>

#include "common/errors.h"
#include "data/loader.h"
#include "data/pipeline.h"
#include "model/weights.h"
#include "trainer/cli.h"
#include "trainer/config.h"
#include "trainer/evaluate.h"
#include "trainer/export.h"
#include "trainer/metrics.h"
#include "trainer/optimizer.h"
#include "trainer/schedule.h"
#include "trainer/setup.h"

namespace sft {
namespace fs = std::filesystem;

namespace {

// Everything the training step touches.
struct TrainContext {
  Config config;
  Runtime runtime;
  model::CausalLM model{nullptr};
  std::vector<NamedParameter> params;  // trainable only
  std::unique_ptr<AdamW> optimizer;
  std::unique_ptr<data::BatchLoader> loader;
  ScheduleSpec schedule;
  int64_t step = 0;              // optimizer steps completed
  int64_t total_steps = 0;
  int64_t total_micro_batches = 0;
  int64_t micro_batches_done = 0;
};

struct StepStats {
  double loss = 0, grad_norm = 0, lr = 0;
  int64_t tokens = 0, target_tokens = 0;
};

// Sum of target-token cross-entropies of one micro-batch: lm_head runs on target positions only, so
// prompt and padding rows never pay for the vocabulary projection. Returns a 0-dim fp32 tensor.
at::Tensor masked_loss_sum(model::CausalLM& lm, const data::Batch& batch, const Runtime& runtime) {
  kernels::PackedSequences seqs{batch.cu_seqlens, batch.cu_seqlens_host, batch.max_seqlen};
  at::Tensor hidden = lm->forward(batch.input_ids, batch.position_ids, seqs, runtime.forward_options());  // [T, H]
  at::Tensor selected = hidden.index_select(0, batch.target_positions);                                  // [N, H]
  at::Tensor logits = lm->logits(selected).to(at::kFloat);                                               // [N, V]
  return at::cross_entropy_loss(logits, batch.target_ids, {}, at::Reduction::Sum);
}

class NonFiniteError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// ---- TRAINING STEP BEGIN ----
StepStats train_step(TrainContext& ctx) {
  // 1. This step's micro-batches (the last step of a run may have fewer than grad_accum).
  const int64_t remaining = ctx.total_micro_batches - ctx.micro_batches_done;
  const int64_t n_micro = std::min<int64_t>(ctx.config.train.grad_accum, remaining);
  std::vector<data::Batch> micro_batches;
  StepStats stats;
  for (int64_t i = 0; i < n_micro; ++i) {
    micro_batches.push_back(ctx.loader->next());
    stats.tokens += micro_batches.back().num_real_tokens;
    stats.target_tokens += micro_batches.back().num_targets;
  }
  ctx.micro_batches_done += n_micro;

  // 2. Forward/backward. The loss is the mean over every target token of the whole step (known on the
  //    host), not a mean of per-micro-batch means: uneven micro-batches weigh by their targets.
  const double step_targets = static_cast<double>(stats.target_tokens);
  at::Tensor loss_sum = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(ctx.runtime.device));
  for (const data::Batch& host_batch : micro_batches) {
    if (host_batch.num_targets == 0) continue;  // nothing supervised: no loss, no NaN
    const data::Batch batch = host_batch.to(ctx.runtime.device);
    at::Tensor micro_loss = masked_loss_sum(ctx.model, batch, ctx.runtime);
    (micro_loss / step_targets).backward();
    loss_sum += micro_loss.detach();
  }

  // 3. Clip by global norm, then the step's only host sync: loss and norm.
  at::Tensor grad_norm = clip_grad_norm(ctx.params, ctx.config.train.max_grad_norm);
  stats.loss = step_targets > 0 ? loss_sum.item<double>() / step_targets : 0.0;  // SYNC
  stats.grad_norm = grad_norm.item<double>();                                   // SYNC
  if (!std::isfinite(stats.loss) || !std::isfinite(stats.grad_norm)) {
    throw NonFiniteError("non-finite " + std::string(std::isfinite(stats.loss) ? "gradient norm" : "loss") +
                         " at step " + std::to_string(ctx.step + 1) + " (loss " + std::to_string(stats.loss) +
                         ", grad_norm " + std::to_string(stats.grad_norm) +
                         "): stopped before the optimizer step; earlier checkpoints are intact");
  }

  // 4. AdamW with this step's scheduled learning rate.
  stats.lr = lr_at(ctx.step, ctx.schedule);
  ctx.optimizer->step(stats.lr);
  ctx.optimizer->zero_grad();
  ++ctx.step;
  return stats;
}
// ---- TRAINING STEP END ----

// ---------------------------------------------------------------------------------------------------
// Setup helpers

fs::path prepare_output_dir(const Config& config, bool force) {
  const fs::path dir = config.output_dir;
  const bool has_run = fs::exists(dir / "metrics.jsonl") || fs::exists(dir / "checkpoints");
  if (has_run && !force) {
    throw InputError("output_dir '" + dir.string() +
                     "' already holds a run; pass --force to overwrite it (or set output_dir elsewhere)");
  }
  if (has_run && force) {
    for (const char* name : {"metrics.jsonl", "eval.jsonl", "data_report.json", "config.yaml"}) fs::remove(dir / name);
    fs::remove_all(dir / "checkpoints");
    fs::remove_all(dir / "adapter");
    fs::remove_all(dir / "model");
  }
  fs::create_directories(dir);
  return dir;
}

void write_text_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  if (!out.flush()) throw std::runtime_error("cannot write " + path.string());
}

void plan_steps(TrainContext& ctx) {
  const TrainOptions& t = ctx.config.train;
  const int64_t per_epoch = ctx.loader->micro_batches_per_epoch();
  if (t.max_steps > 0) {
    ctx.total_steps = t.max_steps;
    ctx.total_micro_batches = t.max_steps * t.grad_accum;
  } else {
    ctx.total_micro_batches = t.epochs * per_epoch;
    ctx.total_steps = (ctx.total_micro_batches + t.grad_accum - 1) / t.grad_accum;
  }
  ctx.schedule.kind = t.scheduler;
  ctx.schedule.peak_lr = t.lr;
  ctx.schedule.total_steps = ctx.total_steps;
  ctx.schedule.min_lr_ratio = t.min_lr_ratio;
  ctx.schedule.warmup_steps =
      t.warmup_steps > 0 ? t.warmup_steps : static_cast<int64_t>(std::ceil(t.warmup_ratio * ctx.total_steps));
}

nlohmann::json eval_line(int64_t step, const EvalResult& r) {
  nlohmann::json line = {{"step", step}, {"loss", r.loss}, {"perplexity", r.perplexity},
                         {"token_accuracy", r.token_accuracy}, {"target_tokens", r.target_tokens}};
  if (r.exact_match) line["exact_match"] = *r.exact_match;
  return line;
}

void export_final(TrainContext& ctx, const fs::path& out_dir) {
  if (ctx.config.finetune.method == "lora") {
    save_peft_adapter(ctx.model, lora_spec_from(ctx.config), ctx.config.model.path, out_dir / "adapter");
  } else {
    const fs::path model_dir = out_dir / "model";
    const at::ScalarType dtype = ctx.model->output_weight().scalar_type();
    model::save_pretrained(ctx.model, ctx.config.model.path, model_dir, dtype, int64_t{2} << 30);
    if (fs::is_directory(tokenizer_dir(ctx.config))) copy_tokenizer_files(tokenizer_dir(ctx.config), model_dir);
  }
}

}  // namespace

int command_train(const std::vector<std::string>& args) {
  CommandLine cli("train", args, {}, {"--force"});
  if (cli.positional().size() != 1) throw InputError("usage: sft train CONFIG.yaml [key.sub=value ...] [--force]");
  TrainContext ctx;
  ctx.config = load_config(cli.positional()[0], cli.overrides());
  ctx.runtime = resolve_runtime(ctx.config);
  const fs::path out_dir = prepare_output_dir(ctx.config, cli.has("--force"));
  write_text_file(out_dir / "config.yaml", config_to_yaml(ctx.config));
  torch::manual_seed(static_cast<uint64_t>(ctx.config.train.seed));

  // Data first: a bad dataset fails before the model is loaded.
  auto tokenizer = load_tokenizer_if_needed(ctx.config);
  const model::ModelConfig model_config = model::load_model_config(ctx.config.model.path);
  data::PreparedData data = load_run_data(ctx.config, tokenizer.get(), model_config.vocab_size);
  write_text_file(out_dir / "data_report.json", data.report.to_json().dump(2) + "\n");
  const int32_t pad_id = run_pad_id(tokenizer.get());
  data::LoaderOptions loader_options;
  loader_options.micro_batch_size = ctx.config.train.micro_batch_size;
  loader_options.max_seq_len = ctx.config.data.max_seq_len;
  loader_options.packing = ctx.config.data.packing;
  loader_options.seed = static_cast<uint64_t>(ctx.config.train.seed);
  loader_options.pad_id = pad_id;
  ctx.loader = std::make_unique<data::BatchLoader>(data.train, loader_options);
  const std::vector<data::EvalBatch> eval_batches =
      data.eval.empty() ? std::vector<data::EvalBatch>{}
                        : data::make_eval_batches(data.eval, ctx.config.eval.batch_size, pad_id, !ctx.config.data.packing);

  ctx.model = model::load_pretrained(ctx.config.model.path, ctx.runtime.dtype, ctx.runtime.device);
  const TrainableSummary summary = apply_finetune_method(ctx.model, ctx.config);
  ctx.model->train();
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& item : ctx.model->named_parameters()) named.emplace_back(item.key(), item.value());
  ctx.params = trainable_parameters(named);
  const auto& betas = ctx.config.train.adam_betas;
  ctx.optimizer = std::make_unique<AdamW>(
      ctx.params, AdamWOptions{betas[0], betas[1], ctx.config.train.adam_eps, ctx.config.train.weight_decay});
  plan_steps(ctx);

  std::cerr << "sft train: " << ctx.config.model.path << " (" << model_config.model_type << "), method "
            << ctx.config.finetune.method << ", " << summary.describe() << "\n"
            << "  " << data.train.size() << " train / " << data.eval.size() << " eval examples, "
            << ctx.loader->micro_batches_per_epoch() << " micro-batches per epoch, " << ctx.total_steps
            << " optimizer steps, device " << ctx.runtime.device.str() << "\n";

  JsonlWriter metrics(out_dir / "metrics.jsonl");
  JsonlWriter eval_log(out_dir / "eval.jsonl");
  auto run_eval = [&](int64_t step) {
    if (eval_batches.empty()) return;
    EvalResult r = evaluate(ctx.model, eval_batches, ctx.runtime);
    eval_log.write(eval_line(step, r));
    char text[200];
    std::snprintf(text, sizeof(text), "eval step %lld: loss %.4f  ppl %.3f  token_accuracy %.4f",
                  static_cast<long long>(step), r.loss, r.perplexity, r.token_accuracy);
    std::cerr << text << "\n";
  };

  ProgressDisplay progress(ctx.total_steps, ctx.config.log.progress);
  const auto start = std::chrono::steady_clock::now();
  double window_loss = 0;
  int64_t window_steps = 0, window_tokens = 0, window_targets = 0;
  auto window_start = start;
  while (ctx.step < ctx.total_steps) {
    const StepStats stats = train_step(ctx);
    window_loss += stats.loss;
    window_tokens += stats.tokens;
    window_targets += stats.target_tokens;
    ++window_steps;
    const auto now = std::chrono::steady_clock::now();
    const double window_s = std::chrono::duration<double>(now - window_start).count();
    progress.update(ctx.step, stats.loss, stats.lr, window_s > 0 ? window_tokens / window_s : 0.0);
    if (ctx.step % ctx.config.log.every_steps == 0 || ctx.step == ctx.total_steps) {
      const double per_epoch = static_cast<double>(ctx.loader->micro_batches_per_epoch());
      metrics.write({{"step", ctx.step},
                     {"epoch", ctx.micro_batches_done / per_epoch},
                     {"loss", window_loss / window_steps},
                     {"lr", stats.lr},
                     {"grad_norm", stats.grad_norm},
                     {"tokens", window_tokens},
                     {"target_tokens", window_targets},
                     {"tokens_per_s", window_s > 0 ? window_tokens / window_s : 0.0},
                     {"elapsed_s", std::chrono::duration<double>(now - start).count()}});
      window_loss = 0;
      window_steps = window_tokens = window_targets = 0;
      window_start = now;
    }
    if (ctx.config.eval.every_steps > 0 && ctx.step % ctx.config.eval.every_steps == 0 && ctx.step != ctx.total_steps) {
      run_eval(ctx.step);
    }
  }
  progress.finish();
  run_eval(ctx.step);
  export_final(ctx, out_dir);
  std::cerr << "sft train: done, " << ctx.step << " steps; outputs in " << out_dir.string() << "\n";
  return 0;
}

}  // namespace sft
