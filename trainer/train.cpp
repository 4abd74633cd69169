// trainer/train.cpp: `sft train`. Setup lives in named helpers; train_step() is the whole optimizer step
// (micro-batches -> masked loss -> backward -> clip -> AdamW) with one host sync per step. Checkpoints
// (every checkpoint.every_steps, at the end, and on SIGTERM/SIGINT) and resume are named helpers around
// the loop: save_checkpoint() / resume_from_checkpoint(); the step itself knows nothing about them.
#include "trainer/train.h"

#include <torch/torch.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>

#include "common/errors.h"
#include "data/loader.h"
#include "data/pipeline.h"
#include "model/weights.h"
#include "trainer/checkpoint.h"
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
  nlohmann::json fingerprint;     // what this run is made from (trainer/checkpoint.h)
  int64_t last_saved_step = -1;   // newest checkpoint on disk, so the end of training does not save twice
  double elapsed_before_s = 0;    // training time of earlier attempts (a resumed run continues the clock)
  // The metrics window: steps since the last metrics.jsonl line. Saved in checkpoints so a resumed run
  // logs the same averages as an uninterrupted one.
  double window_loss = 0;
  int64_t window_steps = 0, window_tokens = 0, window_targets = 0;
};

struct StepStats {
  double loss = 0, grad_norm = 0, lr = 0;
  int64_t tokens = 0, target_tokens = 0;
};

// Sum of target-token cross-entropies of one micro-batch: lm_head runs on target positions only, so
// prompt and padding rows never pay for the vocabulary projection. With mixed precision the forward and
// lm_head run under autocast; the cross-entropy is always fp32. Returns a 0-dim fp32 tensor.
at::Tensor masked_loss_sum(model::CausalLM& lm, const data::Batch& batch, const Runtime& runtime) {
  kernels::PackedSequences seqs{batch.cu_seqlens, batch.cu_seqlens_host, batch.max_seqlen};
  at::Tensor logits;  // [N, V]
  {
    const AutocastScope autocast(runtime);
    at::Tensor hidden = lm->forward(batch.input_ids, batch.position_ids, seqs, runtime.forward_options());  // [T, H]
    at::Tensor selected = hidden.index_select(0, batch.target_positions);                                  // [N, H]
    logits = lm->logits(selected);
  }
  return at::cross_entropy_loss(logits.to(at::kFloat), batch.target_ids, {}, at::Reduction::Sum);
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

  // 4. AdamW with this step's scheduled learning rate. A step without a single target has no gradient:
  //    weights, moments and AdamW's step count stay as they are (no weight decay either, as
  //    torch.optim.AdamW skips parameters whose grad is None); the schedule still advances.
  stats.lr = lr_at(ctx.step, ctx.schedule);
  if (stats.target_tokens > 0) ctx.optimizer->step(stats.lr);
  ctx.optimizer->zero_grad();
  ++ctx.step;
  return stats;
}
// ---- TRAINING STEP END ----

// ---------------------------------------------------------------------------------------------------
// Stop signals. The flag is the one unavoidable piece of process-wide state: a signal handler can reach
// nothing else. It is a function-local static lock-free atomic, set by the handler and read between
// optimizer steps, so a SIGTERM/SIGINT lets the current step finish, then the loop saves and exits 0.

std::atomic<bool>& stop_flag() {
  static std::atomic<bool> flag{false};
  return flag;
}

extern "C" void on_stop_signal(int /*signo*/) { stop_flag().store(true); }

// Installs the handlers for the lifetime of the run. SA_RESETHAND: a second Ctrl-C kills at once, for a
// user who does not want to wait for the step and the save.
class StopSignals {
 public:
  StopSignals() {
    stop_flag().store(false);
    struct sigaction action {};
    action.sa_handler = on_stop_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESETHAND;
    sigaction(SIGTERM, &action, &old_term_);
    sigaction(SIGINT, &action, &old_int_);
  }
  ~StopSignals() {
    sigaction(SIGTERM, &old_term_, nullptr);
    sigaction(SIGINT, &old_int_, nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  bool requested() const { return stop_flag().load(); }

 private:
  struct sigaction old_term_ {};
  struct sigaction old_int_ {};
};

// ---------------------------------------------------------------------------------------------------
// One run per output_dir: two processes saving and pruning the same checkpoints/ would delete each
// other's files. An flock on output_dir/.sft.lock is released by the kernel when the process dies
// (even by SIGKILL), so a crashed run never leaves a stale lock behind.
class OutputDirLock {
 public:
  explicit OutputDirLock(const fs::path& dir) {
    fs::create_directories(dir);
    const fs::path path = dir / ".sft.lock";
    fd_ = ::open(path.c_str(), O_CREAT | O_RDWR, 0644);
    if (fd_ < 0) throw std::runtime_error(path.string() + ": cannot open the run lock");
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      ::close(fd_);
      throw InputError("output_dir '" + dir.string() + "' is in use by another running `sft train` (" +
                       path.string() + " is locked)");
    }
  }
  ~OutputDirLock() { ::close(fd_); }
  OutputDirLock(const OutputDirLock&) = delete;
  OutputDirLock& operator=(const OutputDirLock&) = delete;

 private:
  int fd_ = -1;
};

// ---------------------------------------------------------------------------------------------------
// Setup helpers

bool dir_holds_run(const fs::path& dir) { return fs::exists(dir / "metrics.jsonl") || fs::exists(dir / "checkpoints"); }

void wipe_run(const fs::path& dir) {
  for (const char* name : {"metrics.jsonl", "eval.jsonl", "data_report.json", "config.yaml"}) fs::remove(dir / name);
  fs::remove_all(dir / "checkpoints");
  fs::remove_all(dir / "adapter");
  fs::remove_all(dir / "model");
}

// Decides between a fresh start and a resume, and prepares output_dir accordingly:
//   resume: auto   the newest complete checkpoint in output_dir/checkpoints; none but an existing run:
//                  refuse unless --force (which starts fresh)
//   resume: never  fresh; an existing run is refused unless --force
//   resume: PATH   that checkpoint (output_dir is kept as is)
// Returns the checkpoint to resume from, if any.
std::optional<fs::path> prepare_output_dir(const Config& config, bool force) {
  const fs::path dir = config.output_dir;
  const bool has_run = dir_holds_run(dir);
  std::optional<fs::path> checkpoint;
  if (config.resume != "auto" && config.resume != "never") {
    checkpoint = fs::path(config.resume);
    if (!fs::is_directory(*checkpoint)) {
      throw InputError("resume: '" + config.resume + "' is not a checkpoint directory (use auto, never or a path)");
    }
  } else if (config.resume == "auto" && !force) {
    if (auto newest = newest_complete_checkpoint(dir / "checkpoints")) checkpoint = newest->path;
  }
  if (!checkpoint && has_run) {
    if (!force) {
      throw InputError("output_dir '" + dir.string() + "' already holds a run" +
                       (config.resume == "auto" ? " but no complete checkpoint to resume from" : "") +
                       "; pass --force to overwrite it (or set output_dir elsewhere)");
    }
    wipe_run(dir);
  }
  fs::create_directories(dir);
  return checkpoint;
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

// ---------------------------------------------------------------------------------------------------
// Checkpoint and resume helpers

double elapsed_s(const TrainContext& ctx, std::chrono::steady_clock::time_point start) {
  return ctx.elapsed_before_s + std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

nlohmann::json trainer_state(const TrainContext& ctx, double elapsed) {
  const double per_epoch = static_cast<double>(ctx.loader->micro_batches_per_epoch());
  return {
      {"format_version", 1},
      {"global_step", ctx.step},
      {"micro_batches_done", ctx.micro_batches_done},
      {"epoch", ctx.micro_batches_done / per_epoch},
      {"total_steps", ctx.total_steps},
      {"world_size", 1},
      {"sampler", ctx.loader->state().to_json()},
      {"scheduler", {{"kind", ctx.schedule.kind}, {"peak_lr", ctx.schedule.peak_lr},
                     {"warmup_steps", ctx.schedule.warmup_steps}, {"total_steps", ctx.schedule.total_steps},
                     {"min_lr_ratio", ctx.schedule.min_lr_ratio}, {"next_step", ctx.step}}},
      {"rng", capture_rng_state()},
      {"log_window", {{"loss_sum", ctx.window_loss}, {"steps", ctx.window_steps}, {"tokens", ctx.window_tokens},
                      {"target_tokens", ctx.window_targets}}},
      {"elapsed_s", elapsed},
      {"finetune_method", ctx.config.finetune.method},
      {"config_yaml", config_to_yaml(ctx.config)},
      {"fingerprint", ctx.fingerprint},
  };
}

void save_checkpoint(TrainContext& ctx, const fs::path& out_dir, double elapsed) {
  if (ctx.last_saved_step == ctx.step) return;
  CheckpointContents contents;
  contents.step = ctx.step;
  for (const NamedParameter& p : ctx.params) contents.weights.emplace_back(p.name, p.tensor.detach());
  contents.optimizer = ctx.optimizer->state_tensors();
  contents.trainer_state = trainer_state(ctx, elapsed);
  const fs::path dir = write_checkpoint(out_dir / "checkpoints", contents);
  ctx.last_saved_step = ctx.step;
  prune_checkpoints(out_dir / "checkpoints", ctx.config.checkpoint.keep_last);
  std::cerr << "checkpoint: " << dir.string() << "\n";
}

// Keeps the lines of a JSONL log whose "step" is <= `step` (a resumed run rewrites what came after).
void truncate_jsonl_after(const fs::path& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string kept, line;
  while (std::getline(in, line)) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    // A torn last line (killed mid-write) is dropped along with later steps.
    if (j.is_object() && j.contains("step") && j["step"].is_number_integer() && j["step"].get<int64_t>() <= step) {
      kept += line + "\n";
    }
  }
  in.close();
  const fs::path tmp = path.string() + ".tmp";
  write_text_file(tmp, kept);
  fs::rename(tmp, path);
}

// Loads a checkpoint into the fully set-up context. Order matters for bit-exact resume: setup has already
// drawn LoRA's initial A from the seeded generator exactly as a fresh run does; the saved tensors then
// replace the trainable weights, and the generator state is restored last.
void resume_from_checkpoint(TrainContext& ctx, const fs::path& dir, bool ignore_fingerprint) {
  const CheckpointContents ckpt = read_checkpoint(dir);
  const std::string state_label = (dir / kCheckpointState).string();
  const nlohmann::json& state = ckpt.trainer_state;

  const std::vector<std::string> changes = fingerprint_differences(state.value("fingerprint", nlohmann::json::object()),
                                                                   ctx.fingerprint);
  if (!changes.empty()) {
    std::string text;
    for (const std::string& c : changes) text += "\n  - " + c;
    if (!ignore_fingerprint) {
      throw InputError("cannot resume from " + dir.string() + ": the run's inputs changed since it was saved:" + text +
                       "\npass --ignore-fingerprint to resume anyway (a deliberate change), or resume: never");
    }
    std::cerr << "warning: resuming from " << dir.string() << " although its inputs changed (--ignore-fingerprint):"
              << text << "\n";
  }
  if (state.value("finetune_method", ctx.config.finetune.method) != ctx.config.finetune.method) {
    throw InputError(state_label + ": saved by a finetune.method " + state.value("finetune_method", std::string()) +
                     " run, but finetune.method is now " + ctx.config.finetune.method);
  }

  // Trainable weights: exactly our trainable parameters, by name and shape.
  const std::string weights_label = (dir / kCheckpointWeights).string();
  std::map<std::string, at::Tensor> saved(ckpt.weights.begin(), ckpt.weights.end());
  {
    torch::NoGradGuard no_grad;
    for (const NamedParameter& p : ctx.params) {
      auto it = saved.find(p.name);
      if (it == saved.end()) throw InputError(weights_label + ": missing tensor '" + p.name + "'");
      if (it->second.sizes() != p.tensor.sizes()) {
        throw InputError(weights_label + ": tensor '" + p.name + "' has shape " + c10::str(it->second.sizes()) +
                         " but the model expects " + c10::str(p.tensor.sizes()));
      }
      p.tensor.copy_(it->second);
      saved.erase(it);
    }
  }
  if (!saved.empty()) {
    throw InputError(weights_label + ": tensor '" + saved.begin()->first +
                     "' is not a trainable parameter of this run (different LoRA targets or freeze settings?)");
  }
  ctx.optimizer->load_state(ckpt.optimizer, (dir / optimizer_shard_name(0)).string());

  // Step counters, sampler, schedule position, metrics window.
  ctx.step = ckpt.step;
  ctx.micro_batches_done = state.at("micro_batches_done").get<int64_t>();
  ctx.loader->restore(data::SamplerState::from_json(state.at("sampler"), state_label));
  const int64_t saved_total = state.value("total_steps", ctx.total_steps);
  if (saved_total != ctx.total_steps) {
    std::cerr << "warning: the run now has " << ctx.total_steps << " optimizer steps, the checkpoint was made for "
              << saved_total << ": the learning-rate schedule continues on the new length\n";
  }
  const nlohmann::json window = state.value("log_window", nlohmann::json::object());
  ctx.window_loss = window.value("loss_sum", 0.0);
  ctx.window_steps = window.value("steps", int64_t{0});
  ctx.window_tokens = window.value("tokens", int64_t{0});
  ctx.window_targets = window.value("target_tokens", int64_t{0});
  ctx.elapsed_before_s = state.value("elapsed_s", 0.0);
  ctx.last_saved_step = ctx.step;
  restore_rng_state(state.at("rng"), state_label);
}

}  // namespace

int command_train(const std::vector<std::string>& args) {
  // --ignore-fingerprint: resume even though the model config, tokenizer, template or data changed.
  // --stop-after-steps K: test hook; behaves exactly as a SIGTERM arriving during step K (save, exit 0).
  CommandLine cli("train", args, {"--stop-after-steps"}, {"--force", "--ignore-fingerprint"});
  if (cli.positional().size() != 1) {
    throw InputError("usage: sft train CONFIG.yaml [key.sub=value ...] [--force] [--ignore-fingerprint]");
  }
  const int64_t stop_after = cli.integer("--stop-after-steps", -1);
  TrainContext ctx;
  ctx.config = load_config(cli.positional()[0], cli.overrides());
  ctx.runtime = resolve_runtime(ctx.config);
  const OutputDirLock lock(ctx.config.output_dir);
  const std::optional<fs::path> resume_dir = prepare_output_dir(ctx.config, cli.has("--force"));
  const fs::path out_dir = ctx.config.output_dir;
  if (resume_dir && !fs::exists(*resume_dir / kCheckpointManifest)) {  // fail fast; hashes are checked on load
    throw InputError((*resume_dir / kCheckpointManifest).string() + ": missing: not a complete checkpoint");
  }
  StopSignals stop_signals;
  write_text_file(out_dir / "config.yaml", config_to_yaml(ctx.config));
  torch::manual_seed(static_cast<uint64_t>(ctx.config.train.seed));

  // Data first: a bad dataset fails before the model is loaded.
  auto tokenizer = load_tokenizer_if_needed(ctx.config);
  const model::ModelConfig model_config = model::load_model_config(ctx.config.model.path);
  data::PreparedData data = load_run_data(ctx.config, tokenizer.get(), model_config.vocab_size);
  write_text_file(out_dir / "data_report.json", data.report.to_json().dump(2) + "\n");
  ctx.fingerprint = run_fingerprint(ctx.config);
  const int32_t pad_id = run_pad_id(tokenizer.get());
  data::LoaderOptions loader_options;
  loader_options.micro_batch_size = ctx.config.train.micro_batch_size;
  loader_options.max_seq_len = ctx.config.data.max_seq_len;
  loader_options.packing = ctx.config.data.packing;
  loader_options.seed = static_cast<uint64_t>(ctx.config.train.seed);
  loader_options.pad_id = pad_id;
  ctx.loader = std::make_unique<data::BatchLoader>(data.train, loader_options);
  // Held-out scoring through the same Evaluator as `sft eval` (eval.generate: exact match too).
  const Evaluator evaluator(ctx.config, ctx.runtime, model_config, tokenizer.get(), data.eval);

  ctx.model = model::load_pretrained(ctx.config.model.path, ctx.runtime.dtype, ctx.runtime.device);
  const TrainableSummary summary = apply_finetune_method(ctx.model, ctx.config);
  ctx.model->train();
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& item : ctx.model->named_parameters()) named.emplace_back(item.key(), item.value());
  ctx.params = trainable_parameters(named, ctx.config.finetune.lora.lr_ratio);
  const auto& betas = ctx.config.train.adam_betas;
  ctx.optimizer = std::make_unique<AdamW>(
      ctx.params, AdamWOptions{betas[0], betas[1], ctx.config.train.adam_eps, ctx.config.train.weight_decay});
  plan_steps(ctx);
  if (resume_dir) {
    resume_from_checkpoint(ctx, *resume_dir, cli.has("--ignore-fingerprint"));
    truncate_jsonl_after(out_dir / "metrics.jsonl", ctx.step);
    truncate_jsonl_after(out_dir / "eval.jsonl", ctx.step);
  }

  std::cerr << "sft train: " << ctx.config.model.path << " (" << model_config.model_type << "), method "
            << ctx.config.finetune.method << ", " << summary.describe() << "\n"
            << "  " << data.train.size() << " train / " << data.eval.size() << " eval examples, "
            << ctx.loader->micro_batches_per_epoch() << " micro-batches per epoch, " << ctx.total_steps
            << " optimizer steps, device " << ctx.runtime.device.str() << "\n";
  if (resume_dir) std::cerr << "  resuming from " << resume_dir->string() << " at step " << ctx.step << "\n";

  JsonlWriter metrics(out_dir / "metrics.jsonl");
  JsonlWriter eval_log(out_dir / "eval.jsonl");
  auto run_eval = [&](int64_t step) {
    if (evaluator.empty()) return;
    const EvalResult r = evaluator.run(ctx.model);
    nlohmann::json line = r.to_json();
    line["step"] = step;
    eval_log.write(line);
    char text[200];
    std::snprintf(text, sizeof(text), "eval step %lld: loss %.4f  ppl %.3f  token_accuracy %.4f",
                  static_cast<long long>(step), r.loss, r.perplexity, r.token_accuracy);
    std::cerr << text;
    if (r.exact_match) {
      std::snprintf(text, sizeof(text), "  exact_match %.4f (normalized %.4f)", *r.exact_match, *r.exact_match_normalized);
      std::cerr << text;
    }
    std::cerr << "\n";
  };

  ProgressDisplay progress(ctx.total_steps, ctx.config.log.progress);
  const auto start = std::chrono::steady_clock::now();
  auto window_start = start;
  const int64_t every = ctx.config.checkpoint.every_steps;
  while (ctx.step < ctx.total_steps) {
    const StepStats stats = train_step(ctx);
    ctx.window_loss += stats.loss;
    ctx.window_tokens += stats.tokens;
    ctx.window_targets += stats.target_tokens;
    ++ctx.window_steps;
    const auto now = std::chrono::steady_clock::now();
    const double window_s = std::chrono::duration<double>(now - window_start).count();
    progress.update(ctx.step, stats.loss, stats.lr, window_s > 0 ? ctx.window_tokens / window_s : 0.0);
    if (ctx.step % ctx.config.log.every_steps == 0 || ctx.step == ctx.total_steps) {
      const double per_epoch = static_cast<double>(ctx.loader->micro_batches_per_epoch());
      metrics.write({{"step", ctx.step},
                     {"epoch", ctx.micro_batches_done / per_epoch},
                     {"loss", ctx.window_loss / ctx.window_steps},
                     {"lr", stats.lr},
                     {"grad_norm", stats.grad_norm},
                     {"tokens", ctx.window_tokens},
                     {"target_tokens", ctx.window_targets},
                     {"tokens_per_s", window_s > 0 ? ctx.window_tokens / window_s : 0.0},
                     {"elapsed_s", elapsed_s(ctx, start)}});
      ctx.window_loss = 0;
      ctx.window_steps = ctx.window_tokens = ctx.window_targets = 0;
      window_start = now;
    }
    if (ctx.config.eval.every_steps > 0 && ctx.step % ctx.config.eval.every_steps == 0 && ctx.step != ctx.total_steps) {
      run_eval(ctx.step);
    }
    // A stop request (signal or the test hook) before the last step: save, and end as a success.
    const bool stop = ctx.step < ctx.total_steps && (stop_signals.requested() || ctx.step == stop_after);
    if (stop || (every > 0 && ctx.step % every == 0)) save_checkpoint(ctx, out_dir, elapsed_s(ctx, start));
    if (stop) {
      progress.finish();
      std::cerr << "sft train: stopped after step " << ctx.step << " of " << ctx.total_steps
                << " on request; the checkpoint is saved. Run the same command again to resume (resume: auto).\n";
      return 0;
    }
  }
  progress.finish();
  save_checkpoint(ctx, out_dir, elapsed_s(ctx, start));  // the end of training, before eval and export
  run_eval(ctx.step);
  export_final(ctx, out_dir);
  std::cerr << "sft train: done, " << ctx.step << " steps; outputs in " << out_dir.string() << "\n";
  return 0;
}

}  // namespace sft
