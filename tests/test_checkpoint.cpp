// tests/test_checkpoint.cpp: checkpoints and resume, end to end through the `sft` binary on the golden
// tiny Llama and pre-tokenized data (scripts/make_train_golden.py). LoRA runs use dropout 0.1 so the RNG
// state matters. An interrupted run (--stop-after-steps, SIGTERM or SIGKILL) resumed to the end must give
// metrics (step, epoch, loss, lr, grad_norm, token counts) and final weights bit-identical to one
// uninterrupted run. Crash-safety tests corrupt, truncate, half-write and fail checkpoint saves.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "common/errors.h"
#include "model/lora.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "tests/test_util.h"
#include "trainer/checkpoint.h"

namespace sft {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

fs::path train_golden() { return test::golden_dir() / "train"; }

// 16 examples, micro_batch_size 2, grad_accum 2: 8 micro-batches = 4 optimizer steps per epoch.
std::string base_config(const fs::path& out_dir, const std::string& extra, const fs::path& data = {}) {
  const fs::path g = train_golden();
  const fs::path data_file = data.empty() ? g / "data.jsonl" : data;
  return "model: {path: " + (g / "base").string() + ", attention: sdpa}\n" +
         "data: {train: " + data_file.string() + ", format: tokenized, packing: false, max_seq_len: 64}\n" +
         "train: {epochs: 2, micro_batch_size: 2, grad_accum: 2, lr: 1.0e-3, warmup_steps: 2, scheduler: cosine,\n"
         "        weight_decay: 0.01, max_grad_norm: 1.0, seed: 5, threads: 1}\n"
         "log: {every_steps: 1, progress: false}\n"
         "output_dir: " + out_dir.string() + "\n" + extra;
}
const std::string kLora = "finetune: {method: lora, lora: {r: 4, alpha: 8, dropout: 0.1}}\n";

struct RunDir {
  fs::path dir;  // holds config.yaml.in; outputs in dir/out
  fs::path out() const { return dir / "out"; }
  fs::path checkpoint(int64_t step) const {
    char name[32];
    std::snprintf(name, sizeof(name), "step-%08lld", static_cast<long long>(step));
    return out() / "checkpoints" / name;
  }
};

RunDir make_run(const fs::path& dir, const std::string& config_text) {
  test::write_text(dir / "config.yaml.in", config_text);
  return RunDir{dir};
}

test::RunResult train(const RunDir& run, const std::string& args = "", const std::string& env = "") {
  return test::run_command(env + " " + test::sft_binary().string() + " train " + (run.dir / "config.yaml.in").string() +
                           " " + args);
}

// metrics.jsonl without the wall-clock fields.
std::vector<json> metrics(const RunDir& run) {
  std::vector<json> lines;
  std::stringstream text(test::read_text(run.out() / "metrics.jsonl"));
  for (std::string line; std::getline(text, line);) {
    json j = json::parse(line);
    j.erase("tokens_per_s");
    j.erase("elapsed_s");
    lines.push_back(j);
  }
  return lines;
}

fs::path final_weights(const RunDir& run) {
  return fs::exists(run.out() / "adapter") ? run.out() / "adapter" / "adapter_model.safetensors"
                                           : run.out() / "model" / "model.safetensors";
}

// Same metrics lines (exact doubles) and bit-identical final tensors.
void expect_identical_runs(const RunDir& reference, const RunDir& resumed, size_t expected_steps) {
  const std::vector<json> a = metrics(reference), b = metrics(resumed);
  ASSERT_EQ(a.size(), expected_steps);
  ASSERT_EQ(b.size(), expected_steps);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i]["step"].get<int64_t>(), static_cast<int64_t>(i + 1));
    EXPECT_EQ(a[i], b[i]) << "metrics line " << i + 1;
  }
  auto ours = model::SafetensorsFile::open(final_weights(resumed));
  auto ref = model::SafetensorsFile::open(final_weights(reference));
  ASSERT_EQ(ours->header().tensors.size(), ref->header().tensors.size());
  for (const auto& info : ref->header().tensors) {
    ASSERT_NE(ours->find(info.name), nullptr) << info.name;
    EXPECT_TRUE(at::equal(ours->load(info.name, at::kFloat), ref->load(info.name, at::kFloat))) << info.name;
  }
}

RunDir reference_run(const fs::path& dir, const std::string& extra, const std::string& overrides = "") {
  RunDir run = make_run(dir, base_config(dir / "out", extra));
  auto result = train(run, overrides);
  EXPECT_EQ(result.exit_code, 0) << result.output;
  return run;
}

// Stops after each step in `stops` (each a separate process), then runs to the end.
RunDir interrupted_run(const fs::path& dir, const std::string& extra, const std::vector<int64_t>& stops,
                    const std::string& overrides = "") {
  RunDir run = make_run(dir, base_config(dir / "out", extra));
  for (int64_t stop : stops) {
    auto result = train(run, overrides + " --stop-after-steps " + std::to_string(stop));
    EXPECT_EQ(result.exit_code, 0) << result.output;
    EXPECT_NE(result.output.find("stopped after step " + std::to_string(stop)), std::string::npos) << result.output;
    EXPECT_TRUE(fs::exists(run.checkpoint(stop) / kCheckpointManifest));
    EXPECT_FALSE(fs::exists(run.out() / "adapter"));  // an interrupted run exports nothing
    EXPECT_FALSE(fs::exists(run.out() / "model"));
  }
  auto result = train(run, overrides);
  EXPECT_EQ(result.exit_code, 0) << result.output;
  if (!stops.empty()) {
    EXPECT_NE(result.output.find("resuming from"), std::string::npos) << result.output;
  }
  return run;
}

// ---- exactness ---------------------------------------------------------------------------------------

// An uninterrupted run and one stopped after each step in `stops` and resumed, same config (`extra`
// YAML, `overrides`): every metrics line and final tensor bit-identical, `steps` optimizer steps.
void expect_resume_is_bit_identical(const std::string& extra, const std::vector<int64_t>& stops, size_t steps,
                                    const std::string& overrides = "") {
  test::TempDir a, b;
  RunDir ref = reference_run(a.path(), extra, overrides);
  RunDir resumed = interrupted_run(b.path(), extra, stops, overrides);
  expect_identical_runs(ref, resumed, steps);
}

TEST(CheckpointResume, StopMidEpochThenResumeIsBitIdentical) { expect_resume_is_bit_identical(kLora, {2}, 8); }

TEST(CheckpointResume, StopAtEpochBoundaryThenResumeIsBitIdentical) { expect_resume_is_bit_identical(kLora, {4}, 8); }

TEST(CheckpointResume, ResumeTwiceIsBitIdentical) { expect_resume_is_bit_identical(kLora, {3, 6}, 8); }

TEST(CheckpointResume, StepSpanningTheEpochBoundaryWithGradAccum3) {
  // 8 micro-batches per epoch, grad_accum 3: step 3 takes micro-batches 7, 8 of epoch 1 and 1 of epoch 2.
  expect_resume_is_bit_identical(kLora, {3}, 6, "train.grad_accum=3");
}

TEST(CheckpointResume, FullFineTuneResumeIsBitIdentical) {
  expect_resume_is_bit_identical("finetune: {method: full}\n", {3}, 8);
}

// Adapter methods (issue 14): DoRA magnitudes and LoRA+ lr multipliers resume exactly; PiSSA recomputes
// its residual base and initial adapter on resume (the converted export needs them) and resumes exactly.
TEST(CheckpointResume, DoraLoraPlusAndPissaResumeAreBitIdentical) {
  for (const std::string method :
       {"finetune: {method: lora, lora: {r: 4, alpha: 8, dropout: 0.1, dora: true, lr_ratio: 4}}\n",
        "finetune: {method: lora, lora: {r: 4, alpha: 8, dropout: 0.0, init: pissa}}\n"}) {
    SCOPED_TRACE(method);
    expect_resume_is_bit_identical(method, {3}, 8);
  }
}

TEST(CheckpointResume, MetricsWindowSurvivesAResume) {
  // log.every_steps 3: the stop at step 2 falls inside a logging window; the averaged line at step 3
  // must still equal the uninterrupted run's.
  test::TempDir a, b;
  RunDir ref = reference_run(a.path(), kLora, "log.every_steps=3");
  RunDir resumed = interrupted_run(b.path(), kLora, {2}, "log.every_steps=3");
  const std::vector<json> x = metrics(ref), y = metrics(resumed);
  ASSERT_EQ(x.size(), 3u);  // steps 3, 6, 8
  EXPECT_EQ(x, y);
}

// Runs `sft train` in the background, waits for `wait_for` to exist, waits `delay_ms` more, then sends
// `signal`. Returns the shell's report "exit=N" of the training process.
std::string run_and_signal(const RunDir& run, const fs::path& wait_for, int delay_ms, const std::string& signal,
                           const std::string& args = "") {
  const std::string script =
      // `cd` is its own command so that $! is the sft process itself, not a subshell around it.
      "cd " + run.dir.string() + " || exit 1; " + test::sft_binary().string() + " train config.yaml.in " + args +
      " > run.log 2>&1 & pid=$!; "
      "while [ ! -e " + wait_for.string() + " ] && kill -0 $pid 2>/dev/null; do sleep 0.01; done; "
      "sleep " + std::to_string(delay_ms / 1000.0) + "; kill -" + signal + " $pid 2>/dev/null; wait $pid; echo exit=$?";
  return test::run_command("bash -c '" + script + "'").output;
}

TEST(CheckpointResume, SigkillAtARandomPointThenResumeIsBitIdentical) {
  // 100 steps, so the kill (<= 400 ms after step 2) lands mid-run even on a fast idle machine.
  const std::string extra = kLora + "checkpoint: {every_steps: 1, keep_last: 2}\n";
  test::TempDir a, b;
  RunDir ref = reference_run(a.path(), extra, "train.epochs=25");
  std::random_device entropy;
  const int delay_ms = static_cast<int>(entropy() % 400);
  SCOPED_TRACE("SIGKILL " + std::to_string(delay_ms) + " ms after the step-2 checkpoint appeared");
  RunDir run = make_run(b.path(), base_config(b.path() / "out", extra));
  const std::string report = run_and_signal(run, run.checkpoint(2) / kCheckpointManifest, delay_ms, "KILL",
                                            "train.epochs=25");
  // Killed mid-run (137 = 128 + SIGKILL), before the end of training exported anything.
  ASSERT_NE(report.find("exit=137"), std::string::npos) << report << test::read_text(run.dir / "run.log");
  EXPECT_FALSE(fs::exists(run.out() / "adapter"));
  auto resumed = train(run, "train.epochs=25");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  expect_identical_runs(ref, run, 100);
  // keep_last 2: only the two newest complete checkpoints remain, no temp dirs.
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(run.out() / "checkpoints")) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"step-00000099", "step-00000100"}));
}

TEST(CheckpointResume, SigtermLetsTheStepFinishSavesAndExitsZero) {
  const std::string extra = kLora + "checkpoint: {every_steps: 0}\n";
  test::TempDir a, b;
  RunDir ref = reference_run(a.path(), extra, "train.epochs=25");
  RunDir run = make_run(b.path(), base_config(b.path() / "out", extra));
  // metrics.jsonl appears after step 1; SIGTERM then lands in a later step (100 steps in all).
  const std::string report = run_and_signal(run, run.out() / "metrics.jsonl", 0, "TERM", "train.epochs=25");
  EXPECT_NE(report.find("exit=0"), std::string::npos) << report << test::read_text(run.dir / "run.log");
  const std::string log = test::read_text(run.dir / "run.log");
  ASSERT_NE(log.find("stopped after step"), std::string::npos) << log;
  auto saved = newest_complete_checkpoint(run.out() / "checkpoints");
  ASSERT_TRUE(saved.has_value());
  EXPECT_LT(saved->step, 100);
  auto resumed = train(run, "train.epochs=25");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  expect_identical_runs(ref, run, 100);
}

// ---- contents ------------------------------------------------------------------------------------------

TEST(CheckpointFormat, HoldsTrainableWeightsOptimizerStateAndVerifiedManifest) {
  test::TempDir tmp;
  RunDir run = make_run(tmp.path(), base_config(tmp.path() / "out", kLora + "checkpoint: {every_steps: 1, keep_last: 5}\n"));
  auto result = train(run, "--stop-after-steps 2");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const fs::path dir = run.checkpoint(2);
  EXPECT_TRUE(fs::exists(run.checkpoint(1) / kCheckpointManifest));

  // Weights: exactly the 28 LoRA tensors (2 layers x 7 projections x A, B), no frozen base weight.
  auto weights = model::SafetensorsFile::open(dir / kCheckpointWeights);
  EXPECT_EQ(weights->header().tensors.size(), 28u);
  for (const auto& info : weights->header().tensors) {
    EXPECT_NE(info.name.find(".lora_"), std::string::npos) << info.name;
    EXPECT_EQ(info.name.rfind("base_model.", 0), std::string::npos) << "our names, not PEFT's: " << info.name;
  }
  auto optimizer = model::SafetensorsFile::open(dir / optimizer_shard_name(0));
  EXPECT_EQ(optimizer->header().tensors.size(), 28u * 2 + 1);
  EXPECT_EQ(optimizer->load("step", at::kLong).item<int64_t>(), 2);

  const json state = json::parse(test::read_text(dir / kCheckpointState));
  EXPECT_EQ(state["global_step"], 2);
  EXPECT_EQ(state["micro_batches_done"], 4);
  EXPECT_EQ(state["world_size"], 1);
  EXPECT_EQ(state["sampler"]["epoch"], 0);
  EXPECT_EQ(state["sampler"]["position"], 4);
  EXPECT_EQ(state["scheduler"]["next_step"], 2);
  EXPECT_EQ(state["rng"]["cpu"].get<std::string>().size() % 2, 0u);
  EXPECT_GT(state["rng"]["cpu"].get<std::string>().size(), 1000u);
  EXPECT_EQ(state["fingerprint"]["data_train"][0]["sha256"], sha256_file(train_golden() / "data.jsonl"));
  EXPECT_EQ(state["fingerprint"]["model_config"]["sha256"], sha256_file(train_golden() / "base" / "config.json"));
  EXPECT_NE(state["config_yaml"].get<std::string>().find("micro_batch_size: 2"), std::string::npos);

  const json manifest = json::parse(test::read_text(dir / kCheckpointManifest));
  ASSERT_EQ(manifest["files"].size(), 3u);
  for (const auto& [name, entry] : manifest["files"].items()) {
    EXPECT_EQ(entry["size"].get<uintmax_t>(), fs::file_size(dir / name)) << name;
    EXPECT_EQ(entry["sha256"].get<std::string>(), sha256_file(dir / name)) << name;
  }
  EXPECT_NO_THROW(verify_checkpoint(dir));
}

TEST(CheckpointFormat, LoadCheckpointWeightsForScoring) {
  test::TempDir tmp;
  RunDir run = make_run(tmp.path(), base_config(tmp.path() / "out", kLora));
  ASSERT_EQ(train(run, "--stop-after-steps 2").exit_code, 0);
  model::CausalLM lm = model::load_pretrained(train_golden() / "base", at::kFloat, at::kCPU);
  model::apply_lora(lm, model::LoraSpec{4, 8.0, 0.1, false, {"all"}});
  load_checkpoint_weights(lm, run.checkpoint(2));
  auto saved = model::SafetensorsFile::open(run.checkpoint(2) / kCheckpointWeights);
  int compared = 0;
  for (const auto& [path, lora] : model::lora_modules(lm)) {
    const at::Tensor b = saved->load(path + ".lora_B.weight", at::kFloat);
    EXPECT_GT(b.abs().max().item<double>(), 0.0) << "trained B is non-zero";
    EXPECT_TRUE(at::equal(lora->lora_B->weight, b)) << path;
    EXPECT_TRUE(at::equal(lora->lora_A->weight, saved->load(path + ".lora_A.weight", at::kFloat))) << path;
    ++compared;
  }
  EXPECT_EQ(compared, 14);
  // A model without LoRA has no parameter for the adapter tensors, and its trainable base weights are not
  // in the checkpoint: one error names the file, the missing and the unexpected tensors.
  model::CausalLM plain = model::load_pretrained(train_golden() / "base", at::kFloat, at::kCPU);
  try {
    load_checkpoint_weights(plain, run.checkpoint(2));
    ADD_FAILURE() << "expected InputError";
  } catch (const InputError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("weights.safetensors: does not match the model's trainable parameters"), std::string::npos)
        << message;
    EXPECT_NE(message.find("missing tensor 'model.embed_tokens.weight'"), std::string::npos) << message;
    EXPECT_NE(message.find("unexpected tensor 'model.layers."), std::string::npos) << message;
  }
}

// The full-disk injection is an options struct the caller passes (no environment): a budget of 100 bytes
// cuts weights.safetensors, the save fails as ENOSPC naming the file, and no directory is left; without
// the option the same contents save and verify.
TEST(CheckpointFormat, InjectedWriteFailureLeavesNothing) {
  test::TempDir tmp;
  CheckpointContents contents;
  contents.step = 3;
  contents.weights = {{"w", at::arange(64, at::kFloat)}};
  contents.optimizer = {{"w.exp_avg", at::zeros({64})}};
  contents.trainer_state = {{"global_step", 3}};
  const fs::path checkpoints = tmp.path() / "checkpoints";
  try {
    write_checkpoint(checkpoints, contents, CheckpointWriteOptions{100});
    ADD_FAILURE() << "expected the injected failure";
  } catch (const std::runtime_error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(kCheckpointWeights + std::string(": write failed: No space left on device")), std::string::npos)
        << message;
    EXPECT_NE(message.find("earlier checkpoints are intact"), std::string::npos) << message;
  }
  EXPECT_TRUE(fs::is_empty(checkpoints));
  const fs::path saved = write_checkpoint(checkpoints, contents);
  EXPECT_EQ(saved.filename(), "step-00000003");
  EXPECT_NO_THROW(verify_checkpoint(saved));
}

TEST(CheckpointFormat, Sha256KnownAnswers) {
  EXPECT_EQ(sha256_hex("", 0), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc", 3), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  EXPECT_EQ(sha256_hex(two_blocks.data(), two_blocks.size()),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(CheckpointFormat, KeepLastKeepsTheNewestComplete) {
  test::TempDir tmp;
  RunDir run = make_run(tmp.path(), base_config(tmp.path() / "out", kLora + "checkpoint: {every_steps: 2, keep_last: 2}\n"));
  auto result = train(run);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  auto complete = list_complete_checkpoints(run.out() / "checkpoints");
  ASSERT_EQ(complete.size(), 2u);
  EXPECT_EQ(complete[0].step, 6);
  EXPECT_EQ(complete[1].step, 8);
}

// ---- resume policy -------------------------------------------------------------------------------------

TEST(CheckpointPolicy, ResumePathContinuesFromThatCheckpointAndTruncatesLogs) {
  const std::string extra = kLora + "checkpoint: {every_steps: 1, keep_last: 10}\n";
  test::TempDir a, b;
  RunDir ref = reference_run(a.path(), extra);
  RunDir run = make_run(b.path(), base_config(b.path() / "out", extra));
  ASSERT_EQ(train(run, "--stop-after-steps 5").exit_code, 0);
  ASSERT_EQ(metrics(run).size(), 5u);
  auto result = train(run, "resume=" + run.checkpoint(2).string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("at step 2"), std::string::npos) << result.output;
  expect_identical_runs(ref, run, 8);  // lines 3..5 of the first attempt were replaced, not duplicated
}

TEST(CheckpointPolicy, NeverRefusesAnExistingRunUnlessForced) {
  test::TempDir tmp;
  RunDir run = make_run(tmp.path(), base_config(tmp.path() / "out", kLora));
  ASSERT_EQ(train(run, "--stop-after-steps 2").exit_code, 0);
  auto refused = train(run, "resume=never");
  EXPECT_EQ(refused.exit_code, 2) << refused.output;
  EXPECT_NE(refused.output.find("already holds a run"), std::string::npos) << refused.output;
  auto forced = train(run, "resume=never --force");
  EXPECT_EQ(forced.exit_code, 0) << forced.output;
  EXPECT_EQ(forced.output.find("resuming from"), std::string::npos) << forced.output;
  EXPECT_EQ(metrics(run).size(), 8u);
}

TEST(CheckpointPolicy, AutoWithAnExistingRunButNoCheckpointRefuses) {
  test::TempDir tmp;
  RunDir run = make_run(tmp.path(), base_config(tmp.path() / "out", kLora));
  test::write_text(run.out() / "metrics.jsonl", "{\"step\": 1, \"loss\": 1.0}\n");
  auto refused = train(run);
  EXPECT_EQ(refused.exit_code, 2) << refused.output;
  EXPECT_NE(refused.output.find("no complete checkpoint"), std::string::npos) << refused.output;
}

TEST(CheckpointPolicy, ChangedDataIsRefusedUnlessIgnoreFingerprint) {
  test::TempDir tmp;
  const fs::path data = tmp.path() / "data.jsonl";
  fs::copy_file(train_golden() / "data.jsonl", data);
  RunDir run = make_run(tmp.path(), base_config(tmp.path() / "out", kLora, data));
  ASSERT_EQ(train(run, "--stop-after-steps 2").exit_code, 0);
  std::string text = test::read_text(data);
  text.erase(text.rfind('\n', text.size() - 2) + 1);  // drop the last example
  test::write_text(data, text);
  auto refused = train(run);
  EXPECT_EQ(refused.exit_code, 2) << refused.output;
  EXPECT_NE(refused.output.find("data file " + data.string() + " changed"), std::string::npos) << refused.output;
  auto ignored = train(run, "--ignore-fingerprint");
  EXPECT_EQ(ignored.exit_code, 0) << ignored.output;
  EXPECT_NE(ignored.output.find("resuming from"), std::string::npos) << ignored.output;
}

// data.direction (sft synth's backward model) decides what is trained on, so resuming across a change is refused.
TEST(CheckpointPolicy, ChangedDirectionIsAFingerprintDifference) {
  Config config;
  config.model.path = (train_golden() / "base").string();
  config.data.train = {(train_golden() / "data.jsonl").string()};
  config.data.format = data::Format::kPromptResponse;
  const nlohmann::json forward = run_fingerprint(config);
  config.data.direction = data::Direction::kReverse;
  const std::vector<std::string> changes = fingerprint_differences(forward, run_fingerprint(config));
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0], "data.direction changed from 'forward' to 'reverse'");
  nlohmann::json older = forward;  // saved before the key existed: forward
  older.erase("data_direction");
  config.data.direction = data::Direction::kForward;
  EXPECT_TRUE(fingerprint_differences(older, run_fingerprint(config)).empty());
}

TEST(CheckpointPolicy, ASecondRunOnTheSameOutputDirIsRefusedWhileTheFirstRuns) {
  test::TempDir tmp;
  RunDir run = make_run(tmp.path(), base_config(tmp.path() / "out", kLora));
  // The first run is stopped by SIGTERM once the second one has been refused. It is given far more epochs
  // (4000 steps) than it can finish meanwhile: with 25 epochs this failed once in a loaded ctest run (its
  // output was not kept), the likely cause being the second's start-up (a 100 ms look at the load, then a
  // re-exec with the passive OpenMP default) outlasting the first's 100 steps, so no lock refused it.
  const std::string script =
      "cd " + run.dir.string() + " || exit 1; " + test::sft_binary().string() +
      " train config.yaml.in train.epochs=1000 > run.log 2>&1 & pid=$!; "
      "while [ ! -e out/metrics.jsonl ] && kill -0 $pid 2>/dev/null; do sleep 0.01; done; " +
      test::sft_binary().string() + " train config.yaml.in train.epochs=1000; echo second=$?; "
      "kill -TERM $pid; wait $pid; echo first=$?";
  const std::string report = test::run_command("bash -c '" + script + "'").output;
  EXPECT_NE(report.find("second=2"), std::string::npos) << report;
  EXPECT_NE(report.find("is in use by another running `sft train`"), std::string::npos) << report;
  EXPECT_NE(report.find("first=0"), std::string::npos) << report;
}

// ---- crash safety --------------------------------------------------------------------------------------

TEST(CheckpointCrash, HalfWrittenSavesAreIgnoredAndAutoPicksTheNewestComplete) {
  const std::string extra = kLora + "checkpoint: {every_steps: 1, keep_last: 5}\n";
  test::TempDir a, b;
  RunDir ref = reference_run(a.path(), extra);
  RunDir run = make_run(b.path(), base_config(b.path() / "out", extra));
  ASSERT_EQ(train(run, "--stop-after-steps 2").exit_code, 0);
  // A SIGKILL during the save of step 3 (temp dir, partial file) and a step dir that lost its manifest.
  const fs::path tmp_dir = run.out() / "checkpoints" / "step-00000003.tmp-99999";
  fs::create_directories(tmp_dir);
  test::write_text(tmp_dir / kCheckpointWeights, "partial");
  fs::copy(run.checkpoint(2), run.checkpoint(4), fs::copy_options::recursive);
  fs::remove(run.checkpoint(4) / kCheckpointManifest);
  ASSERT_EQ(newest_complete_checkpoint(run.out() / "checkpoints")->step, 2);
  auto result = train(run);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("resuming from " + run.checkpoint(2).string()), std::string::npos) << result.output;
  expect_identical_runs(ref, run, 8);
  EXPECT_FALSE(fs::exists(tmp_dir));  // cleaned up by the next save
}

TEST(CheckpointCrash, FlippedByteIsDetectedAndNamed) {
  test::TempDir tmp;
  RunDir run = make_run(tmp.path(), base_config(tmp.path() / "out", kLora));
  ASSERT_EQ(train(run, "--stop-after-steps 2").exit_code, 0);
  const fs::path file = run.checkpoint(2) / kCheckpointWeights;
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(fs::file_size(file) - 10));
  char byte = 0;
  f.read(&byte, 1);
  byte ^= 0x01;
  f.seekp(static_cast<std::streamoff>(fs::file_size(file) - 10));
  f.write(&byte, 1);
  f.close();
  auto result = train(run);
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find(file.string() + ": sha256 differs"), std::string::npos) << result.output;
}

TEST(CheckpointCrash, TruncatedFileIsDetectedAndNamed) {
  test::TempDir tmp;
  RunDir run = make_run(tmp.path(), base_config(tmp.path() / "out", kLora));
  ASSERT_EQ(train(run, "--stop-after-steps 2").exit_code, 0);
  const fs::path file = run.checkpoint(2) / optimizer_shard_name(0);
  fs::resize_file(file, fs::file_size(file) / 2);
  auto result = train(run);
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find(file.string()), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("truncated"), std::string::npos) << result.output;
}

TEST(CheckpointCrash, FullDiskDuringASaveFailsClearlyAndKeepsThePreviousCheckpoint) {
  const std::string extra = kLora + "checkpoint: {every_steps: 1, keep_last: 5}\n";
  test::TempDir a, b;
  RunDir ref = reference_run(a.path(), extra);
  RunDir run = make_run(b.path(), base_config(b.path() / "out", extra));
  ASSERT_EQ(train(run, "--stop-after-steps 2").exit_code, 0);
  // The step-3 save runs out of space 2000 bytes in (inside weights.safetensors).
  auto failed = train(run, "--test-fail-checkpoint-write-after-bytes 2000");
  EXPECT_EQ(failed.exit_code, 1) << failed.output;
  EXPECT_NE(failed.output.find("No space left on device"), std::string::npos) << failed.output;
  EXPECT_NE(failed.output.find("step-00000003"), std::string::npos) << failed.output;
  EXPECT_NE(failed.output.find("earlier checkpoints are intact"), std::string::npos) << failed.output;
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(run.out() / "checkpoints")) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"step-00000001", "step-00000002"}));
  EXPECT_NO_THROW(verify_checkpoint(run.checkpoint(2)));
  auto resumed = train(run);
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  expect_identical_runs(ref, run, 8);
}

}  // namespace
}  // namespace sft
