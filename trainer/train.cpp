// trainer/train.cpp: `sft train`, single- or multi-process (torchrun / sft launch). Setup lives in named
// helpers; train_step() is the whole optimizer step (this rank's share of the step's global micro-batches
// -> masked loss -> backward, whose hooks start the gradient allreduce -> one visible wait -> clip ->
// one small allreduce of loss and stop flag, the step's only host sync -> AdamW, or AdamW per parameter
// inside the backward with train.optimizer_in_backward). Checkpoints (every
// checkpoint.every_steps, at the end, and on SIGTERM/SIGINT) and resume are named helpers around the loop:
// save_checkpoint() / resume_from_checkpoint(); the step itself knows nothing about them.
//
// Data parallelism is exact: a step takes grad_accum x world_size consecutive global micro-batches of the
// one global sample order; global micro-batch j of the step belongs to rank j / grad_accum. Every rank
// knows the step's global target count from the plan (no communication) and backprops
// micro_loss / global_targets; the gradient SUM over ranks is then the gradient of the step's loss, and
// N ranks x grad_accum g equals 1 rank x grad_accum N*g. LoRA dropout draws from a generator reseeded
// from (train.seed, global micro-batch index) before each micro-batch, so it does not depend on which
// rank runs the micro-batch either.
#include "trainer/train.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>

#include "common/errors.h"
#include "data/loader.h"
#include "data/pipeline.h"
#include "model/named_tensors.h"
#include "model/weights.h"
#include "trainer/checkpoint.h"
#include "trainer/cli.h"
#include "trainer/config.h"
#include "trainer/evaluate.h"
#include "trainer/export.h"
#include "trainer/grad_sync.h"
#include "trainer/metrics.h"
#include "trainer/optimizer.h"
#include "trainer/step_in_backward.h"
#include "trainer/process_defaults.h"
#include "trainer/process_group.h"
#include "trainer/rank_checks.h"
#include "trainer/run_dir.h"
#include "trainer/run_lock.h"
#include "trainer/schedule.h"
#include "trainer/setup.h"
#include "trainer/stop_signals.h"
#include "trainer/trainer_state.h"
#include "trainer/train_logs.h"

namespace sft {
namespace fs = std::filesystem;

namespace {

// Everything the training step touches.
struct TrainContext {
  Config config;
  Runtime runtime;
  std::unique_ptr<Collectives> group;        // the ranks (a world of one when single-process)
  model::CausalLM model{nullptr};
  std::vector<NamedParameter> params;  // trainable only
  std::unique_ptr<AdamW> optimizer;
  std::unique_ptr<data::BatchLoader> loader;  // the GLOBAL sample order (planned as rank 0 of 1)
  ScheduleSpec schedule;
  int64_t step = 0;              // optimizer steps completed
  int64_t total_steps = 0;
  int64_t total_micro_batches = 0;  // global
  int64_t micro_batches_done = 0;   // global
  nlohmann::json fingerprint;     // what this run is made from (trainer/checkpoint.h)
  int64_t last_saved_step = -1;   // newest checkpoint on disk, so the end of training does not save twice
  CheckpointWriteOptions checkpoint_write;  // tests only: --test-fail-checkpoint-write-after-bytes
  double elapsed_before_s = 0;    // training time of earlier attempts (a resumed run continues the clock)
  // The metrics window: steps since the last metrics.jsonl line. Saved in checkpoints so a resumed run
  // logs the same averages as an uninterrupted one. Tokens are global (all ranks).
  double window_loss = 0;
  int64_t window_steps = 0, window_tokens = 0, window_targets = 0;
  double window_comm_s = 0;       // rank 0's time blocked on the gradient allreduce (not checkpointed)
  // Hook-driven bucket allreduce (inert in a world of one). Near the end: it unhooks `params` when destroyed.
  std::unique_ptr<GradientBuckets> grad_sync;
  // train.optimizer_in_backward: AdamW runs in post-accumulate-grad hooks (null when off). Last, so it
  // unhooks before the optimizer it points at is destroyed.
  std::unique_ptr<StepInBackward> step_in_backward;
};

struct StepStats {
  double loss = 0, grad_norm = 0, lr = 0;
  int64_t tokens = 0, target_tokens = 0;  // global: every rank's micro-batches of this step
  bool stop = false;                      // some rank was asked to stop: all stop after this step
  double comm_wait_s = 0;                 // exposed gradient communication on this rank
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
    // model.fused_ops linear_ce: chunked lm_head + cross-entropy, the [N, V] logits never exist.
    if (lm->fused_ops().linear_ce) return lm->target_loss_sum(selected, batch.target_ids);
    logits = lm->logits(selected);
  }
  return at::cross_entropy_loss(logits.to(at::kFloat), batch.target_ids, {}, at::Reduction::Sum);
}

class NonFiniteError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Dropout (LoRA) of global micro-batch `index` draws from the default generators reseeded from
// (train.seed, index), so it is the same whichever rank, world size or resume point runs it. Gradient
// checkpointing replays the generator state it saw in the forward (model/llama.cpp).
void seed_micro_batch_rng(const TrainContext& ctx, int64_t index) {
  data::SplitMix64 mix(static_cast<uint64_t>(ctx.config.train.seed) * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(index));
  const uint64_t seed = mix.next();
  at::Generator cpu = at::detail::getDefaultCPUGenerator();
  {
    std::lock_guard<std::mutex> lock(cpu.mutex());
    cpu.set_current_seed(seed);
  }
  if (ctx.runtime.device.is_cuda()) {
    at::Generator gen = at::globalContext().defaultGenerator(ctx.runtime.device);
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_current_seed(seed);
  }
}

// ---- TRAINING STEP BEGIN ----
StepStats train_step(TrainContext& ctx, const StopSignals& signals, bool stop_hook) {
  // 1. This step's global micro-batches (grad_accum x world_size; the last step of a run may have fewer).
  //    Global micro-batch j goes to rank j / grad_accum; every rank walks all of them to count tokens
  //    and targets from the plan, and builds only its own.
  const int64_t accum = ctx.config.train.grad_accum;
  const int64_t remaining = ctx.total_micro_batches - ctx.micro_batches_done;
  const int64_t n_global = std::min<int64_t>(accum * ctx.group->world_size(), remaining);
  std::vector<data::Batch> micro_batches;
  std::vector<int64_t> global_index;  // of each of this rank's micro-batches, in the whole run
  StepStats stats;
  for (int64_t j = 0; j < n_global; ++j) {
    if (j / accum == ctx.group->rank()) {
      micro_batches.push_back(ctx.loader->next());
      global_index.push_back(ctx.micro_batches_done + j);
      stats.tokens += micro_batches.back().num_real_tokens;
      stats.target_tokens += micro_batches.back().num_targets;
    } else {
      const data::MicroBatchCounts counts = ctx.loader->skip();
      stats.tokens += counts.real_tokens;
      stats.target_tokens += counts.targets;
    }
  }
  ctx.micro_batches_done += n_global;

  // 2. Forward/backward. The loss is the mean over every target token of the whole global step (known on
  //    the host), not a mean of per-micro-batch means: uneven micro-batches weigh by their targets. The
  //    backward of this rank's last micro-batch with targets is armed: its post-accumulate-grad hooks
  //    start the bucket allreduces while the rest of the backward runs (earlier ones only accumulate).
  //    With train.optimizer_in_backward (one micro-batch, one rank) that backward is also the update:
  //    AdamW at this step's lr runs per parameter in its hook (trainer/step_in_backward.h).
  const double step_targets = static_cast<double>(stats.target_tokens);
  stats.lr = lr_at(ctx.step, ctx.schedule);
  if (ctx.step_in_backward && stats.target_tokens > 0) ctx.step_in_backward->arm(stats.lr);
  int64_t last_with_targets = -1;
  for (size_t k = 0; k < micro_batches.size(); ++k) {
    if (micro_batches[k].num_targets > 0) last_with_targets = static_cast<int64_t>(k);
  }
  at::Tensor loss_sum = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(ctx.runtime.device));
  for (size_t k = 0; k < micro_batches.size(); ++k) {
    if (micro_batches[k].num_targets == 0) continue;  // nothing supervised: no loss, no NaN
    if (static_cast<int64_t>(k) == last_with_targets) ctx.grad_sync->arm();
    seed_micro_batch_rng(ctx, global_index[k]);
    const data::Batch batch = micro_batches[k].to(ctx.runtime.device);
    at::Tensor micro_loss = masked_loss_sum(ctx.model, batch, ctx.runtime);
    (micro_loss / step_targets).backward();
    loss_sum += micro_loss.detach();
  }

  // 3. Gradient sync: wait for every bucket's SUM allreduce (those whose hooks never fired start now).
  //    The gradients are then the same on every rank, and so are the clipping and the update.
  stats.comm_wait_s = ctx.grad_sync->wait();

  // 4. Clip by global norm, then agree on the step's loss and on stopping (a SIGTERM/SIGINT seen by any
  //    rank during this step, or the --stop-after-steps hook): one allreduce of [loss_sum, stop], the
  //    step's only host sync (with the grad norm read).
  at::Tensor grad_norm = ctx.step_in_backward ? ctx.step_in_backward->finish()
                                              : clip_grad_norm(ctx.params, ctx.config.train.max_grad_norm);
  const bool stop_here = signals.requested() || stop_hook;
  at::Tensor agreed = at::stack({loss_sum.to(at::kDouble), at::scalar_tensor(stop_here ? 1.0 : 0.0,
                                                                               loss_sum.options().dtype(at::kDouble))});
  if (ctx.group->distributed()) agreed = agreed.to(ctx.group->device());
  ctx.group->allreduce_sum(agreed);
  const at::Tensor agreed_host = agreed.cpu();  // SYNC
  stats.stop = agreed_host[1].item<double>() > 0;
  stats.loss = step_targets > 0 ? agreed_host[0].item<double>() / step_targets : 0.0;
  stats.grad_norm = grad_norm.item<double>();  // SYNC
  if (!std::isfinite(stats.loss) || !std::isfinite(stats.grad_norm)) {
    throw NonFiniteError("non-finite " + std::string(std::isfinite(stats.loss) ? "gradient norm" : "loss") +
                         " at step " + std::to_string(ctx.step + 1) + " (loss " + std::to_string(stats.loss) +
                         ", grad_norm " + std::to_string(stats.grad_norm) +
                         (ctx.step_in_backward ? "): stopped; this step's update already ran in the backward "
                                                 "(train.optimizer_in_backward), earlier checkpoints are intact"
                                               : "): stopped before the optimizer step; earlier checkpoints are intact"));
  }

  // 5. AdamW with this step's scheduled learning rate. A step without a single target has no gradient:
  //    weights, moments and AdamW's step count stay as they are (no weight decay either, as
  //    torch.optim.AdamW skips parameters whose grad is None); the schedule still advances.
  if (!ctx.step_in_backward && stats.target_tokens > 0) ctx.optimizer->step(stats.lr);
  ctx.optimizer->zero_grad();
  ++ctx.step;
  return stats;
}
// ---- TRAINING STEP END ----

// ---------------------------------------------------------------------------------------------------
// Setup helpers

void plan_steps(TrainContext& ctx) {
  const TrainOptions& t = ctx.config.train;
  const int64_t per_epoch = ctx.loader->micro_batches_per_epoch();
  const int64_t per_step = t.grad_accum * ctx.group->world_size();  // global micro-batches per step
  if (t.max_steps > 0) {
    ctx.total_steps = t.max_steps;
    ctx.total_micro_batches = t.max_steps * per_step;
  } else {
    ctx.total_micro_batches = t.epochs * per_epoch;
    ctx.total_steps = (ctx.total_micro_batches + per_step - 1) / per_step;
  }
  ctx.schedule.kind = t.scheduler;
  ctx.schedule.peak_lr = t.lr;
  ctx.schedule.total_steps = ctx.total_steps;
  ctx.schedule.min_lr_ratio = t.min_lr_ratio;
  ctx.schedule.warmup_steps =
      t.warmup_steps > 0 ? t.warmup_steps : static_cast<int64_t>(std::ceil(t.warmup_ratio * ctx.total_steps));
}

void export_final(TrainContext& ctx, const fs::path& out_dir) {
  if (ctx.config.finetune.method == FinetuneMethod::kLora) {
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

TrainerState trainer_state(const TrainContext& ctx, double elapsed) {
  TrainerState s;
  s.global_step = ctx.step;
  s.micro_batches_done = ctx.micro_batches_done;
  s.epoch = ctx.micro_batches_done / static_cast<double>(ctx.loader->micro_batches_per_epoch());
  s.total_steps = ctx.total_steps;
  s.world_size = ctx.group->world_size();
  s.micro_batch_size = ctx.config.train.micro_batch_size;
  s.grad_accum = ctx.config.train.grad_accum;
  s.sampler = ctx.loader->state();
  s.schedule = ctx.schedule;
  s.rng = capture_rng_state();
  s.window_loss = ctx.window_loss;
  s.window_steps = ctx.window_steps;
  s.window_tokens = ctx.window_tokens;
  s.window_targets = ctx.window_targets;
  s.elapsed_s = elapsed;
  s.finetune_method = enum_name(ctx.config.finetune.method);
  s.config_yaml = config_to_yaml(ctx.config);
  s.fingerprint = ctx.fingerprint;
  return s;
}

// The commit protocol (trainer/checkpoint.h): rank 0 opens the temp dir and names it to the others;
// each other rank writes what only it has (its RNG state); barrier; rank 0 writes the replicated
// weights and optimizer state, the manifest last, and renames; barrier, so no rank runs ahead of a save
// that failed. Single-process: one write_checkpoint().
void save_checkpoint(TrainContext& ctx, const fs::path& out_dir, double elapsed) {
  if (ctx.last_saved_step == ctx.step) return;
  Collectives& group = *ctx.group;
  const fs::path checkpoints = out_dir / "checkpoints";
  CheckpointContents contents;
  if (group.is_main()) {
    contents.step = ctx.step;
    for (const NamedParameter& p : ctx.params) contents.weights.emplace_back(p.name, p.tensor.detach());
    contents.optimizer = ctx.optimizer->state_tensors();
    contents.trainer_state = trainer_state(ctx, elapsed).to_json();
  }
  fs::path dir;
  if (!group.distributed()) {
    dir = write_checkpoint(checkpoints, contents, ctx.checkpoint_write);
  } else {
    const std::string step = std::to_string(ctx.step);
    const fs::path tmp = decide_on_main(group, "checkpoint-begin/" + step,
                                        [&] { return begin_checkpoint(checkpoints, ctx.step).string(); });
    if (!group.is_main()) write_rank_state(tmp, group.rank(), {{"rank", group.rank()}, {"rng", capture_rng_state()}});
    group.barrier();
    const std::string committed =
        decide_on_main(group, "checkpoint-commit/" + step, [&] { return commit_checkpoint(checkpoints, tmp, contents, ctx.checkpoint_write).string(); });
    dir = committed;
  }
  ctx.last_saved_step = ctx.step;
  if (group.is_main()) {
    prune_checkpoints(checkpoints, ctx.config.checkpoint.keep_last);
    std::cerr << "checkpoint: " << dir.string() << "\n";
  }
}

// Loads a checkpoint into the fully set-up context. Order matters for bit-exact resume: setup has already
// drawn LoRA's initial A from the seeded generator exactly as a fresh run does; the saved tensors then
// replace the trainable weights, and the generator state is restored last (this rank's own, when the
// checkpoint has one for it; else rank 0's).
void resume_from_checkpoint(TrainContext& ctx, const fs::path& dir, bool ignore_fingerprint, bool allow_batch_change) {
  const CheckpointContents ckpt = read_checkpoint(dir);
  const std::string state_label = (dir / kCheckpointState).string();
  const TrainerState state = TrainerState::from_json(ckpt.trainer_state, state_label);
  const bool main = ctx.group->is_main();

  const std::vector<std::string> changes = fingerprint_differences(state.fingerprint, ctx.fingerprint);
  if (!changes.empty()) {
    std::string text;
    for (const std::string& c : changes) text += "\n  - " + c;
    if (!ignore_fingerprint) {
      throw InputError("cannot resume from " + dir.string() + ": the run's inputs changed since it was saved:" + text +
                       "\npass --ignore-fingerprint to resume anyway (a deliberate change), or resume: never");
    }
    if (main) {
      std::cerr << "warning: resuming from " << dir.string() << " although its inputs changed (--ignore-fingerprint):"
                << text << "\n";
    }
  }
  if (!state.finetune_method.empty() && state.finetune_method != enum_name(ctx.config.finetune.method)) {
    throw InputError(state_label + ": saved by a finetune.method " + state.finetune_method +
                     " run, but finetune.method is now " + enum_name(ctx.config.finetune.method));
  }
  check_global_batch(state, ctx.config.train.micro_batch_size, ctx.config.train.grad_accum, ctx.group->world_size(),
                     state_label, allow_batch_change);

  // Trainable weights: exactly our trainable parameters, by name and shape.
  std::vector<model::TensorSlot> slots;
  for (const NamedParameter& p : ctx.params) slots.push_back({p.name, p.tensor});
  model::TensorMatchRules rules;
  rules.heading = "does not match this run's trainable parameters";
  rules.unexpected_hint = "(different LoRA targets or freeze settings?)";
  model::load_named_tensors(model::NamedTensorSource::of(ckpt.weights, (dir / kCheckpointWeights).string()), slots,
                            rules);
  ctx.optimizer->load_state(ckpt.optimizer, (dir / optimizer_shard_name(0)).string());

  // Step counters, global sampler position, schedule position, metrics window.
  ctx.step = state.global_step;
  ctx.micro_batches_done = state.micro_batches_done;
  ctx.loader->restore(state.sampler);
  if (state.total_steps != ctx.total_steps && main) {
    std::cerr << "warning: the run now has " << ctx.total_steps << " optimizer steps, the checkpoint was made for "
              << state.total_steps << ": the learning-rate schedule continues on the new length\n";
  }
  ctx.window_loss = state.window_loss;
  ctx.window_steps = state.window_steps;
  ctx.window_tokens = state.window_tokens;
  ctx.window_targets = state.window_targets;
  ctx.elapsed_before_s = state.elapsed_s;
  ctx.last_saved_step = ctx.step;
  const std::optional<nlohmann::json> own = ctx.group->rank() > 0 && state.world_size == ctx.group->world_size()
                                                ? read_rank_state(dir, ctx.group->rank())
                                                : std::nullopt;
  restore_rng_state(own ? own->at("rng") : state.rng, state_label);
}

void print_eval_line(int64_t step, const EvalResult& r) {
  char text[200];
  std::snprintf(text, sizeof(text), "eval step %lld: loss %.4f  ppl %.3f  token_accuracy %.4f",
                static_cast<long long>(step), r.loss, r.perplexity, r.token_accuracy);
  std::cerr << text;
  if (r.exact_match) {
    std::snprintf(text, sizeof(text), "  exact_match %.4f (normalized %.4f)", *r.exact_match, *r.exact_match_normalized);
    std::cerr << text;
  }
  std::cerr << "\n";
}

// "RANK:STEP" of the --fail-at-step test hook.
std::pair<int64_t, int64_t> parse_fail_at(const std::optional<std::string>& text) {
  if (!text) return {-1, -1};
  const size_t colon = text->find(':');
  try {
    if (colon != std::string::npos) return {std::stoll(text->substr(0, colon)), std::stoll(text->substr(colon + 1))};
  } catch (const std::exception&) {
  }
  throw InputError("--fail-at-step: expected RANK:STEP, got '" + *text + "'");
}

// The run itself, on this rank (a world of one when single-process).
int train_on_this_rank(const CommandLine& cli, const DistEnv& env) {
  StopSignals stop_signals;  // first: a SIGTERM during start-up stops after step 1 instead of killing
  const int64_t stop_after = cli.integer("--stop-after-steps", -1);
  const auto [fail_rank, fail_step] = parse_fail_at(cli.value("--fail-at-step"));
  TrainContext ctx;
  if (cli.value("--test-fail-checkpoint-write-after-bytes")) {
    ctx.checkpoint_write.fail_after_bytes = cli.integer("--test-fail-checkpoint-write-after-bytes", -1);
  }
  ctx.config = load_config(cli.positional()[0], cli.overrides());
  ctx.runtime = resolve_runtime(ctx.config, env.distributed() ? env.local_rank : 0);
  const bool group_wanted = env.distributed() || ctx.config.dist.force_process_group;
  const std::string backend = group_wanted ? resolve_backend(ctx.config.dist, ctx.runtime.device) : "none";
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(ctx.config.dist.timeout_s * 1000));
  ctx.group = Collectives::connect(env, backend, timeout, ctx.config.dist.force_process_group);
  Collectives& group = *ctx.group;
  const bool main = group.is_main();
  if (ctx.config.train.optimizer_in_backward && group.distributed()) {  // every rank throws the same: no hang
    throw InputError("train.optimizer_in_backward: not supported with a process group (world size " +
                     std::to_string(group.world_size()) +
                     (ctx.config.dist.force_process_group ? ", dist.force_process_group" : "") +
                     "): each gradient's allreduce would have to finish inside the backward; turn one of them off");
  }

  // Rank 0 owns output_dir: it holds the run lock and decides fresh start vs resume; every rank follows.
  std::optional<OutputDirLock> lock;
  const std::string resume_text = decide_on_main(group, "output-dir", [&] {
    lock.emplace(ctx.config.output_dir);
    const std::optional<fs::path> dir = prepare_output_dir(ctx.config, cli.has("--force"));
    return dir ? dir->string() : std::string();
  });
  const std::optional<fs::path> resume_dir = resume_text.empty() ? std::nullopt : std::optional<fs::path>(resume_text);
  const fs::path out_dir = ctx.config.output_dir;
  if (resume_dir && !fs::exists(*resume_dir / kCheckpointManifest)) {  // fail fast; hashes are checked on load
    throw InputError((*resume_dir / kCheckpointManifest).string() + ": missing: not a complete checkpoint");
  }
  if (main) write_text_file(out_dir / "config.yaml", config_to_yaml(ctx.config));
  torch::manual_seed(static_cast<uint64_t>(ctx.config.train.seed));

  // Data first: a bad dataset fails before the model is loaded.
  auto tokenizer = load_tokenizer_if_needed(ctx.config);
  const model::ModelConfig model_config = model::load_model_config(ctx.config.model.path);
  data::PreparedData data = load_run_data(ctx.config, tokenizer.get(), model_config.vocab_size);
  if (main) write_text_file(out_dir / "data_report.json", data.report.to_json().dump(2) + "\n");
  ctx.fingerprint = run_fingerprint(ctx.config);
  const int32_t pad_id = run_pad_id(tokenizer.get());
  data::LoaderOptions loader_options;  // rank 0 of 1: the global order (train_step splits it across ranks)
  loader_options.micro_batch_size = ctx.config.train.micro_batch_size;
  loader_options.max_seq_len = ctx.config.data.max_seq_len;
  loader_options.packing = ctx.config.data.packing;
  loader_options.seed = static_cast<uint64_t>(ctx.config.train.seed);
  loader_options.pad_id = pad_id;
  ctx.loader = std::make_unique<data::BatchLoader>(data.train, loader_options);
  // Held-out scoring through the same Evaluator as `sft eval` (eval.generate: exact match too).
  const Evaluator evaluator(ctx.config, ctx.runtime, model_config, tokenizer.get(), data.eval);

  ctx.model = model::load_pretrained(ctx.config.model.path, ctx.runtime.dtype, ctx.runtime.device,
                                     model_load_options(ctx.config));
  const TrainableSummary summary = apply_finetune_method(ctx.model, ctx.config);
  release_free_heap_pages();  // the load's and the transforms' temporaries
  ctx.model->train();
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& item : ctx.model->named_parameters()) named.emplace_back(item.key(), item.value());
  ctx.params = trainable_parameters(named, ctx.config.finetune.lora.lr_ratio);
  check_ranks_agree(group, {config_to_yaml(ctx.config), ctx.fingerprint, trainable_weights_sha256(ctx.params)});
  const auto& betas = ctx.config.train.adam_betas;
  ctx.optimizer = std::make_unique<AdamW>(
      ctx.params, AdamWOptions{betas[0], betas[1], ctx.config.train.adam_eps, ctx.config.train.weight_decay});
  plan_steps(ctx);
  if (resume_dir) {
    resume_from_checkpoint(ctx, *resume_dir, cli.has("--ignore-fingerprint"), cli.has("--allow-batch-change"));
    if (main) {
      truncate_jsonl_after(out_dir / "metrics.jsonl", ctx.step);
      truncate_jsonl_after(out_dir / "eval.jsonl", ctx.step);
    }
  }
  ctx.grad_sync = set_up_grad_sync(ctx.params, group, ctx.config.dist.bucket_mb, !cli.has("--grad-sync-after-backward"));
  ctx.step_in_backward = set_up_step_in_backward(*ctx.optimizer, ctx.config.train.optimizer_in_backward);

  if (main) {
    std::cerr << "sft train: " << ctx.config.model.path << " (" << model_config.model_type << "), method "
              << enum_name(ctx.config.finetune.method) << ", " << summary.describe() << "\n"
              << "  " << data.train.size() << " train / " << data.eval.size() << " eval examples, "
              << ctx.loader->micro_batches_per_epoch() << " micro-batches per epoch, " << ctx.total_steps
              << " optimizer steps, device " << ctx.runtime.device.str() << "\n";
    // On the CPU the wait policy and allocator decide much of the speed (README "Training throughput").
    if (ctx.runtime.device.is_cpu()) {
      std::istringstream report(process_defaults_report());
      std::cerr << "  " << at::get_num_threads() << " threads";
      for (std::string line; std::getline(report, line);) std::cerr << "; " << line;
      std::cerr << "\n";
    }
    if (group.distributed()) {
      std::cerr << "  " << group.world_size() << " processes (" << group.backend_name() << "), global batch "
                << ctx.config.train.micro_batch_size * ctx.config.train.grad_accum * group.world_size()
                << " rows, " << ctx.grad_sync->num_buckets() << " gradient buckets\n";
    }
    if (resume_dir) std::cerr << "  resuming from " << resume_dir->string() << " at step " << ctx.step << "\n";
  }

  // metrics.jsonl, eval.jsonl and (log.tensorboard) TensorBoard event files: rank 0 only.
  std::optional<TrainLogs> logs;
  if (main) logs.emplace(out_dir, ctx.config.log.tensorboard, ctx.step);
  auto run_eval = [&](int64_t step) {  // sharded across the ranks; rank 0 writes the reduced summary
    if (evaluator.empty()) return;
    const EvalResult r = evaluator.run(ctx.model, {}, &group);
    if (!main) return;
    nlohmann::json line = r.to_json();
    line["step"] = step;
    logs->write_eval(line);
    print_eval_line(step, r);
  };

  ProgressDisplay progress(ctx.total_steps, main && ctx.config.log.progress);
  const auto start = std::chrono::steady_clock::now();
  auto window_start = start;
  const int64_t every = ctx.config.checkpoint.every_steps;
  while (ctx.step < ctx.total_steps) {
    if (group.rank() == fail_rank && ctx.step + 1 == fail_step) {
      throw std::runtime_error("rank " + std::to_string(fail_rank) + ": failure injected before step " +
                               std::to_string(fail_step) + " (--fail-at-step)");
    }
    const StepStats stats = train_step(ctx, stop_signals, ctx.step + 1 == stop_after);
    ctx.window_loss += stats.loss;
    ctx.window_tokens += stats.tokens;
    ctx.window_targets += stats.target_tokens;
    ctx.window_comm_s += stats.comm_wait_s;
    ++ctx.window_steps;
    const auto now = std::chrono::steady_clock::now();
    const double window_s = std::chrono::duration<double>(now - window_start).count();
    if (main) progress.update(ctx.step, stats.loss, stats.lr, window_s > 0 ? ctx.window_tokens / window_s : 0.0);
    if (ctx.step % ctx.config.log.every_steps == 0 || ctx.step == ctx.total_steps) {
      const double per_epoch = static_cast<double>(ctx.loader->micro_batches_per_epoch());
      nlohmann::json line = {{"step", ctx.step},
                             {"epoch", ctx.micro_batches_done / per_epoch},
                             {"loss", ctx.window_loss / ctx.window_steps},
                             {"lr", stats.lr},
                             {"grad_norm", stats.grad_norm},
                             {"tokens", ctx.window_tokens},
                             {"target_tokens", ctx.window_targets},
                             {"tokens_per_s", window_s > 0 ? ctx.window_tokens / window_s : 0.0},
                             {"elapsed_s", elapsed_s(ctx, start)}};
      if (group.distributed()) line["comm_wait_s"] = ctx.window_comm_s;
      if (main) logs->write_metrics(line);
      ctx.window_loss = ctx.window_comm_s = 0;
      ctx.window_steps = ctx.window_tokens = ctx.window_targets = 0;
      window_start = now;
    }
    if (ctx.config.eval.every_steps > 0 && ctx.step % ctx.config.eval.every_steps == 0 && ctx.step != ctx.total_steps) {
      run_eval(ctx.step);
    }
    // A stop request (a signal on any rank, or the test hook) before the last step: save, end as a success.
    const bool stop = ctx.step < ctx.total_steps && stats.stop;
    if (stop || (every > 0 && ctx.step % every == 0)) save_checkpoint(ctx, out_dir, elapsed_s(ctx, start));
    if (stop) {
      if (main) {
        progress.finish();
        std::cerr << "sft train: stopped after step " << ctx.step << " of " << ctx.total_steps
                  << " on request; the checkpoint is saved. Run the same command again to resume (resume: auto).\n";
      }
      return 0;
    }
  }
  if (main) progress.finish();
  save_checkpoint(ctx, out_dir, elapsed_s(ctx, start));  // the end of training, before eval and export
  run_eval(ctx.step);
  if (main) {
    export_final(ctx, out_dir);
    std::cerr << "sft train: done, " << ctx.step << " steps; outputs in " << out_dir.string() << "\n";
  }
  group.barrier();  // nobody exits (and tears the group down) while rank 0 still exports
  return 0;
}

}  // namespace

int command_train(const std::vector<std::string>& args) {
  // --ignore-fingerprint: resume even though the model config, tokenizer, template or data changed.
  // --allow-batch-change: resume although the global batch (micro_batch_size x grad_accum x world_size)
  //   differs from the checkpoint's.
  // Test hooks (hidden, documented in README "Multi-process training"):
  //   --stop-after-steps K: behaves exactly as a SIGTERM arriving during step K (on every rank; save, exit 0).
  //   --fail-at-step R:S: rank R throws just before optimizer step S (a rank failure mid-run).
  //   --grad-sync-after-backward: start every gradient bucket after the backward instead of from the
  //     hooks (the no-overlap baseline of scripts/bench_dist.sh).
  //   --test-fail-checkpoint-write-after-bytes N: every save of this process fails like a full disk once N
  //     bytes of it are written (CheckpointWriteOptions). A flag, not an environment variable, so the
  //     production writer reads no process state; the crash tests need it through the binary because
  //     they check what a whole run (and, under torchrun, one rank of it) does after a failed save.
  CommandLine cli("train", args, {"--stop-after-steps", "--fail-at-step", "--test-fail-checkpoint-write-after-bytes"},
                  {"--force", "--ignore-fingerprint", "--allow-batch-change", "--grad-sync-after-backward"});
  if (cli.positional().size() != 1) {
    throw InputError(
        "usage: sft train CONFIG.yaml [key.sub=value ...] [--force] [--ignore-fingerprint] [--allow-batch-change]");
  }
  const DistEnv env = read_dist_env([](const char* name) { return std::getenv(name); });
  if (!env.distributed()) return train_on_this_rank(cli, env);
  // Multi-process: every error names its rank (torchrun interleaves the ranks' output); the kind, and so
  // the exit code, stays.
  const std::string rank = "rank " + std::to_string(env.rank) + ": ";
  try {
    return train_on_this_rank(cli, env);
  } catch (const InputError& e) {
    throw InputError(rank + e.what());
  } catch (const std::exception& e) {
    throw std::runtime_error(rank + e.what());
  }
}

}  // namespace sft
