// tests/test_launch_signals.cpp: how `sft launch` runs its ranks, through the real binary: output
// prefixing, an sft subcommand vs a program path, the first failure stopping the others (SIGTERM, then
// SIGKILL after --grace-s), SIGTERM/SIGINT forwarding and escalation, PDEATHSIG, and SIGTERM reaching the
// real trainer. Every test is bounded and checks that no rank outlives the launcher.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <sstream>
#include <thread>

#include "tests/launch_test_util.h"
#include "tests/test_util.h"

namespace sft {
namespace {
namespace fs = std::filesystem;
using namespace launch_test;
using Clock = std::chrono::steady_clock;

// ---- output ----

TEST(LaunchOutput, EveryLineOfEveryRankIsPrefixedWholeAndInOrder) {
  test::TempDir tmp;
  // On stdout: 200 numbered lines, 20 lines of 10000 characters (awk writes them in 4 KiB pieces, so the
  // launcher gets them cut mid-line), a CR, a CRLF and a last line without '\n'; one line on stderr.
  // stdout and stderr are separate pipes, so only the order within each is defined.
  const std::string body =
      record_pid(tmp.path()) +
      "i=0; while [ $i -lt 200 ]; do echo \"line $RANK $i\"; i=$((i+1)); done\n"
      "awk -v r=$RANK 'BEGIN { for (j = 0; j < 10000; j++) s = s r; for (i = 0; i < 20; i++) print s }'\n"
      "printf 'bar 1\\rbar 2\\r\\ncrlf done\\n'\n"
      "echo \"to stderr $RANK\" >&2\n"
      "printf 'no newline %s' $RANK\n";
  const Finished run =
      launch(tmp, {"--nproc-per-node", "2", "--master-port", "0", "--", script(tmp.path(), "out.sh", body)});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  std::map<int, std::vector<std::string>> lines_of;
  std::istringstream lines(run.output);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("sft launch: ", 0) == 0) continue;
    ASSERT_TRUE(line.size() >= 9 && (line.rfind("[rank 0] ", 0) == 0 || line.rfind("[rank 1] ", 0) == 0))
        << "unprefixed or garbled line: '" << line.substr(0, 80) << "'";
    lines_of[line[6] - '0'].push_back(line.substr(9));
  }
  for (int r = 0; r < 2; ++r) {
    std::vector<std::string>& got = lines_of[r];
    const std::string stderr_line = "to stderr " + std::to_string(r);
    const auto on_stderr = std::find(got.begin(), got.end(), stderr_line);
    ASSERT_NE(on_stderr, got.end()) << "rank " << r << " lost its stderr line";
    got.erase(on_stderr);
    ASSERT_EQ(got.size(), 200u + 20u + 3u + 1u) << "rank " << r;
    for (int i = 0; i < 200; ++i) EXPECT_EQ(got[i], "line " + std::to_string(r) + " " + std::to_string(i));
    for (int i = 200; i < 220; ++i) EXPECT_EQ(got[i], std::string(10000, static_cast<char>('0' + r))) << "line " << i;
    EXPECT_EQ(got[220], "bar 1");
    EXPECT_EQ(got[221], "bar 2");
    EXPECT_EQ(got[222], "crlf done");
    EXPECT_EQ(got[223], "no newline " + std::to_string(r)) << "the partial last line is flushed at exit";
  }
  expect_no_rank_left(tmp.path(), 2);
}

// COMMAND without a '/' is an sft subcommand run by the launcher's own binary.
TEST(LaunchOutput, SftSubcommandRunsThisBinary) {
  test::TempDir tmp;
  const Finished run = launch(tmp, {"--nproc-per-node", "2", "--master-port", "0", "--", "help", "launch"});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_TRUE(contains(run.output, "[rank 0] usage: sft launch")) << run.output;
  EXPECT_TRUE(contains(run.output, "[rank 1] usage: sft launch")) << run.output;
}

TEST(LaunchOutput, BadSftSubcommandFailsWithItsExitCode2) {
  test::TempDir tmp;
  const Finished run = launch(tmp, {"--nproc-per-node", "1", "--master-port", "0", "--", "no-such-command"});
  EXPECT_EQ(run.exit_code, 2) << run.output;
  EXPECT_TRUE(contains(run.output, "[rank 0] error: unknown command 'no-such-command'")) << run.output;
  EXPECT_TRUE(contains(run.output, "rank 0 (local rank 0, pid ")) << run.output;
  EXPECT_TRUE(contains(run.output, ") exited with code 2")) << run.output;
}

// ---- failures ----

// Rank 1 waits until rank 0 is asleep, then fails. Rank 0 must be stopped at once (it does not ignore
// SIGTERM), long before the grace period ends.
TEST(LaunchFailure, FailingRankStopsASleepingSibling) {
  test::TempDir tmp;
  const fs::path dir = tmp.path();
  const std::string body = record_pid(dir) + rank1_after_rank0(dir, "exit 3") + "exec sleep 30\n";
  const Finished run = launch(tmp, {"--nproc-per-node", "2", "--master-port", "0", "--grace-s", "10", "--",
                                    script(tmp.path(), "fail.sh", body)});
  EXPECT_EQ(run.exit_code, 3) << run.output;
  EXPECT_LT(run.seconds, 8) << "the sibling was not stopped by SIGTERM";
  const std::string pid1 = std::to_string(std::stoi(test::read_text(tmp.path() / "pid.1")));
  EXPECT_TRUE(contains(run.output, "sft launch: rank 1 (local rank 1, pid " + pid1 + ") exited with code 3\n"))
      << run.output;
  EXPECT_FALSE(contains(run.output, "rank 0 (local rank 0")) << "only the root cause is named:\n" << run.output;
  expect_no_rank_left(tmp.path(), 2);
}

TEST(LaunchFailure, SigkilledRankIsNamedWithTheSignal) {
  test::TempDir tmp;
  const fs::path dir = tmp.path();
  const std::string body = record_pid(dir) + rank1_after_rank0(dir, "kill -9 $$") + "exec sleep 30\n";
  const Finished run = launch(tmp, {"--nproc-per-node", "2", "--master-port", "0", "--", script(tmp.path(), "kill.sh", body)});
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_TRUE(contains(run.output, "rank 1 (local rank 1, pid ")) << run.output;
  EXPECT_TRUE(contains(run.output, ") was killed by signal 9 (SIGKILL)\n")) << run.output;
  EXPECT_LT(run.seconds, 8);
  expect_no_rank_left(tmp.path(), 2);
}

TEST(LaunchFailure, RankIgnoringSigtermIsKilledAfterTheGracePeriod) {
  test::TempDir tmp;
  const fs::path dir = tmp.path();
  const std::string body = rank1_after_rank0(dir, "exit 3") + "trap '' TERM\n" + record_pid(dir) + "exec sleep 30\n";
  const Finished run = launch(tmp, {"--nproc-per-node", "2", "--master-port", "0", "--grace-s", "1", "--",
                                    script(tmp.path(), "stubborn.sh", body)});
  EXPECT_EQ(run.exit_code, 3) << run.output;
  EXPECT_GE(run.seconds, 1.0) << "killed before the grace period";
  EXPECT_LT(run.seconds, 6.0) << "not killed after the grace period";
  EXPECT_TRUE(contains(run.output, "grace period over")) << run.output;
  EXPECT_TRUE(contains(run.output, "sft launch: rank 1 (local rank 1, pid ")) << run.output;
  expect_no_rank_left(tmp.path(), 2);
}

// ---- signals ----

// What sft train does on SIGTERM: finish, save, exit 0. The launcher forwards and then exits 0 too.
TEST(LaunchSignals, SigtermIsForwardedAndTheLauncherExits0) {
  test::TempDir tmp;
  const fs::path dir = tmp.path();
  auto launcher = start_two_ranks(tmp, "trap 'echo stopped > " + dir.string() + "/marker.$RANK; exit 0' TERM\n" +
                                           record_pid(dir) + wait_until_exists(dir / "never") + "exit 5\n");
  ASSERT_TRUE(launcher);
  kill(launcher->pid(), SIGTERM);
  EXPECT_EQ(launcher->wait(10), 0) << launcher->output();
  for (int r = 0; r < 2; ++r) {
    const fs::path marker = dir / ("marker." + std::to_string(r));
    ASSERT_TRUE(fs::exists(marker)) << "rank " << r << " got no SIGTERM\n" << launcher->output();
    EXPECT_EQ(test::read_text(marker), "stopped\n");
  }
  EXPECT_TRUE(contains(launcher->output(), "SIGTERM: forwarded to every rank")) << launcher->output();
  expect_no_rank_left(dir, 2);
}

// Ranks that ignore SIGINT: the first SIGINT is forwarded (and ignored), the second kills them.
TEST(LaunchSignals, SecondSigintEscalatesToSigkill) {
  test::TempDir tmp;
  const fs::path dir = tmp.path();
  auto launcher = start_two_ranks(tmp, "trap 'echo got > " + dir.string() + "/marker.$RANK' INT\n" + record_pid(dir) +
                                           wait_until_exists(dir / "never"));
  ASSERT_TRUE(launcher);
  kill(launcher->pid(), SIGINT);
  ASSERT_TRUE(wait_for_file(dir / "marker.0") && wait_for_file(dir / "marker.1")) << launcher->output();
  EXPECT_TRUE(alive(launcher->pid())) << "the launcher keeps waiting after the first SIGINT";
  kill(launcher->pid(), SIGINT);
  EXPECT_EQ(launcher->wait(10), 1) << launcher->output();
  EXPECT_TRUE(contains(launcher->output(), "SIGINT again: killing every rank (SIGKILL)")) << launcher->output();
  EXPECT_TRUE(contains(launcher->output(), ") was killed by signal 9 (SIGKILL)")) << launcher->output();
  expect_no_rank_left(dir, 2);
}

// After a forwarded SIGTERM, a rank that fails must not bring the others a second SIGTERM (sft train
// takes a second one as "die now", in the middle of its checkpoint); they get SIGKILL after the grace.
TEST(LaunchSignals, FailureAfterAForwardedStopSendsNoSecondSigterm) {
  test::TempDir tmp;
  const fs::path dir = tmp.path();
  auto launcher = start_two_ranks(
      tmp, "if [ $RANK = 1 ]; then trap 'exit 4' TERM; else n=0; trap 'n=$((n+1)); echo $n > " + dir.string() +
               "/terms.0' TERM; fi\n" + record_pid(dir) + wait_until_exists(dir / "never"));
  ASSERT_TRUE(launcher);
  // --grace-s is the default 30 s here, so the test bounds it by the SIGKILL below instead.
  kill(launcher->pid(), SIGTERM);
  EXPECT_TRUE(wait_for_file(dir / "terms.0"));
  const auto deadline = Clock::now() + std::chrono::seconds(5);
  while (!contains(launcher->output(), "already got the stop signal") && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // time for a (wrong) second SIGTERM to land
  EXPECT_EQ(test::read_text(dir / "terms.0"), "1\n") << "rank 0 got a second SIGTERM";
  EXPECT_TRUE(contains(launcher->output(), "rank 1 (local rank 1, pid ")) << launcher->output();
  EXPECT_TRUE(contains(launcher->output(), ") exited with code 4; the other 1 rank(s) already got the stop signal: "
                                           "SIGKILL after 30 s"))
      << launcher->output();
  kill(launcher->pid(), SIGTERM);  // a second request: SIGKILL now
  EXPECT_EQ(launcher->wait(10), 4) << launcher->output();
  expect_no_rank_left(dir, 2);
}

TEST(LaunchSignals, SigkilledLauncherLeavesNoRankBehind) {
  test::TempDir tmp;
  auto launcher = start_two_ranks(tmp, record_pid(tmp.path()) + "exec sleep 30\n");
  ASSERT_TRUE(launcher);
  ASSERT_TRUE(alive(std::stoi(test::read_text(tmp.path() / "pid.0"))));
  kill(launcher->pid(), SIGKILL);
  EXPECT_EQ(launcher->wait(10), 128 + SIGKILL);
  expect_no_rank_left(tmp.path(), 2);  // PR_SET_PDEATHSIG: the kernel SIGKILLs them
}

// ---- with the real trainer ----

// The user's case: Ctrl-C/SIGTERM to `sft launch -- train`: the trainer finishes its step, saves a
// checkpoint and exits 0, and so does the launcher. One rank, so it needs nothing of the c10d side.
TEST(LaunchTrain, SigtermMakesTheTrainerSaveAndEveryoneExit0) {
  test::TempDir tmp;
  const fs::path g = test::golden_dir() / "train";
  const fs::path out = tmp.path() / "out";
  test::write_text(tmp.path() / "run.yaml",
                   "model: {path: " + (g / "base").string() + ", attention: sdpa}\n" +
                       "data: {train: " + (g / "data.jsonl").string() + ", format: tokenized, packing: false}\n" +
                       "finetune: {method: lora}\n"
                       "train: {epochs: 50, micro_batch_size: 2, threads: 1}\n"
                       "log: {every_steps: 1, progress: false}\n"
                       "output_dir: " + out.string() + "\n");
  Spawned launcher(
      launch_argv({"--nproc-per-node", "1", "--master-port", "0", "--", "train", (tmp.path() / "run.yaml").string()}),
      tmp.path() / "launcher.out");
  ASSERT_TRUE(wait_for_file(out / "metrics.jsonl", 60)) << launcher.output();
  kill(launcher.pid(), SIGTERM);
  EXPECT_EQ(launcher.wait(60), 0) << launcher.output();
  EXPECT_TRUE(contains(launcher.output(), "[rank 0] sft train: stopped after step ")) << launcher.output();
  ASSERT_TRUE(fs::is_directory(out / "checkpoints")) << launcher.output();
  EXPECT_FALSE(fs::is_empty(out / "checkpoints")) << "no checkpoint saved";
}

}  // namespace
}  // namespace sft
