// tests/test_launch.cpp: `sft launch` through the real binary: torchrun's environment contract (checked
// against the real torchrun too), the TCPStore node 0 hosts (used by real c10d clients), output
// prefixing, failure handling, signal forwarding, no leaked processes, and every bad-usage case.
// The ranks are small /bin/sh scripts, so nothing here needs the training side. Every test is bounded:
// each process gets a deadline, after which it is SIGKILLed and the test fails.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "trainer/launch.h"
#include "tests/test_util.h"

extern char** environ;

namespace sft {
namespace {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// A process the test started, with stdout and stderr in one file. The destructor SIGKILLs and reaps it
// if it is still running, so a failing test never leaves it behind.
class Spawned {
 public:
  Spawned(const std::vector<std::string>& argv, const fs::path& output,
          const std::vector<std::string>& unset_env = {"OMP_NUM_THREADS"})
      : output_(output) {
    std::vector<std::string> env_items;
    for (char** item = environ; *item; ++item) {
      const std::string text = *item;
      bool drop = false;
      for (const std::string& name : unset_env) drop = drop || text.rfind(name + "=", 0) == 0;
      if (!drop) env_items.push_back(text);
    }
    std::vector<char*> args, envp;
    for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
    args.push_back(nullptr);
    for (const std::string& item : env_items) envp.push_back(const_cast<char*>(item.c_str()));
    envp.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, output.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
    // Default signal actions and an empty mask, whatever this test process inherited: a test run in the
    // background has SIGINT ignored, and an ignored signal can be neither caught nor trapped by a rank.
    posix_spawnattr_t attributes;
    posix_spawnattr_init(&attributes);
    sigset_t defaults, empty;
    sigemptyset(&defaults);
    for (int signo : {SIGINT, SIGTERM, SIGQUIT, SIGCHLD}) sigaddset(&defaults, signo);
    sigemptyset(&empty);
    posix_spawnattr_setsigdefault(&attributes, &defaults);
    posix_spawnattr_setsigmask(&attributes, &empty);
    posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
    const int rc = posix_spawn(&pid_, args[0], &actions, &attributes, args.data(), envp.data());
    posix_spawnattr_destroy(&attributes);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) throw std::runtime_error("posix_spawn " + argv[0] + " failed");
  }
  ~Spawned() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  Spawned(const Spawned&) = delete;
  Spawned& operator=(const Spawned&) = delete;

  pid_t pid() const { return pid_; }
  std::string output() const { return fs::exists(output_) ? test::read_text(output_) : ""; }

  // The exit code, 128 + signo for a signal death, or -1 (and a test failure) when it outlived
  // `timeout_s` and had to be killed.
  int wait(double timeout_s) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
    while (true) {
      int status = 0;
      const pid_t done = waitpid(pid_, &status, WNOHANG);
      if (done == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      if (Clock::now() > deadline) {
        ADD_FAILURE() << "process " << pid_ << " still running after " << timeout_s << " s; killed it. Output:\n"
                      << output();
        kill(pid_, SIGKILL);
        waitpid(pid_, nullptr, 0);
        pid_ = -1;
        return -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

 private:
  fs::path output_;
  pid_t pid_ = -1;
};

std::vector<std::string> launch_argv(const std::vector<std::string>& args) {
  std::vector<std::string> argv{test::sft_binary().string(), "launch"};
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

struct Finished {
  int exit_code = -1;
  std::string output;
  double seconds = 0;
};

// Runs `sft launch ARGS` to the end (bounded by `timeout_s`).
Finished launch(const test::TempDir& tmp, const std::vector<std::string>& args, double timeout_s = 20) {
  const auto start = Clock::now();
  Spawned launcher(launch_argv(args), tmp.path() / "launcher.out");
  Finished result;
  result.exit_code = launcher.wait(timeout_s);
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  result.output = launcher.output();
  return result;
}

// A /bin/sh script in `dir`, made executable. Returns its path.
std::string script(const fs::path& dir, const std::string& name, const std::string& body) {
  const fs::path path = dir / name;
  test::write_text(path, "#!/bin/sh\n" + body);
  fs::permissions(path, fs::perms::owner_all);
  return path.string();
}

// Polls until `path` exists; false after `timeout_s`.
bool wait_for_file(const fs::path& path, double timeout_s = 10) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
  while (!fs::exists(path)) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

// Alive = exists and is not a zombie (an orphan's zombie waits for whoever reaps orphans here).
bool alive(pid_t pid) {
  if (kill(pid, 0) != 0) return false;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const size_t paren = text.rfind(')');
  return paren == std::string::npos || paren + 2 >= text.size() || text[paren + 2] != 'Z';
}

// Waits (bounded) for every pid written by the ranks to `pid.R` files in `dir` to be gone.
void expect_no_rank_left(const fs::path& dir, int ranks, double timeout_s = 5) {
  for (int r = 0; r < ranks; ++r) {
    const fs::path file = dir / ("pid." + std::to_string(r));
    if (!fs::exists(file)) continue;  // that rank never got that far
    const pid_t pid = std::stoi(test::read_text(file));
    const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
    while (alive(pid) && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    EXPECT_FALSE(alive(pid)) << "rank " << r << " (pid " << pid << ") outlived the launcher";
    if (alive(pid)) kill(pid, SIGKILL);
  }
}

std::map<std::string, std::string> read_env(const fs::path& path) {
  std::map<std::string, std::string> env;
  std::istringstream lines(test::read_text(path));
  for (std::string line; std::getline(lines, line);) {
    const size_t eq = line.find('=');
    if (eq != std::string::npos) env[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return env;
}

// The port node 0 printed ("TCPStore hosted at ADDR:PORT"), waiting (bounded) for the line.
int hosted_port(const Spawned& launcher) {
  static const std::regex pattern("TCPStore hosted at [^ ]+:([0-9]+)");
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (Clock::now() < deadline) {
    std::smatch match;
    const std::string out = launcher.output();
    if (std::regex_search(out, match, pattern)) return std::stoi(match[1]);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ADD_FAILURE() << "no 'TCPStore hosted at' line in:\n" << launcher.output();
  return -1;
}

// A port that was free a moment ago (bound to 0, read back, closed): for the reference torchrun, which
// cannot be told to pick one and print it.
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

bool contains(const std::string& text, const std::string& needle) { return text.find(needle) != std::string::npos; }

// sh snippets for the rank scripts. Every wait in them is bounded (500 x 20 ms).
std::string record_pid(const fs::path& dir) { return "echo $$ > " + dir.string() + "/pid.$RANK\n"; }
std::string wait_until_exists(const fs::path& file) {
  return "i=0; while [ ! -f " + file.string() + " ] && [ $i -lt 500 ]; do sleep 0.02; i=$((i+1)); done\n";
}
// Rank 1 waits until rank 0 has written its pid (so rank 0 is running), then runs `then`.
std::string rank1_after_rank0(const fs::path& dir, const std::string& then) {
  return "if [ $RANK = 1 ]; then\n" + wait_until_exists(dir / "pid.0") + then + "\nfi\n";
}

// Starts a 2-rank launcher of `body` and waits until both ranks have written their pid.
std::unique_ptr<Spawned> start_two_ranks(const test::TempDir& tmp, const std::string& body) {
  auto launcher = std::make_unique<Spawned>(
      launch_argv({"--nproc-per-node", "2", "--master-port", "0", "--", script(tmp.path(), "rank.sh", body)}),
      tmp.path() / "launcher.out");
  const bool started = wait_for_file(tmp.path() / "pid.0") && wait_for_file(tmp.path() / "pid.1");
  EXPECT_TRUE(started) << launcher->output();
  return started ? std::move(launcher) : nullptr;
}

// Writes its pid and environment, then exits 0.
std::string env_script(const fs::path& dir) {
  return script(dir, "env.sh", record_pid(dir) + "env > " + dir.string() + "/env.$RANK\n");
}

// ---- the environment contract ----

TEST(LaunchEnv, ThreeRanksGetTorchrunsContract) {
  test::TempDir tmp;
  const Finished run = launch(tmp, {"--nproc-per-node", "3", "--master-port", "0", "--", env_script(tmp.path())});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  std::smatch match;
  ASSERT_TRUE(std::regex_search(run.output, match, std::regex("TCPStore hosted at 127.0.0.1:([0-9]+)"))) << run.output;
  const std::string port = match[1];
  EXPECT_NE(port, "0");
  for (int r = 0; r < 3; ++r) {
    const auto env = read_env(tmp.path() / ("env." + std::to_string(r)));
    const std::map<std::string, std::string> expected = {
        {"RANK", std::to_string(r)},
        {"LOCAL_RANK", std::to_string(r)},
        {"GROUP_RANK", "0"},
        {"ROLE_RANK", std::to_string(r)},
        {"ROLE_NAME", "default"},
        {"WORLD_SIZE", "3"},
        {"LOCAL_WORLD_SIZE", "3"},
        {"GROUP_WORLD_SIZE", "1"},
        {"ROLE_WORLD_SIZE", "3"},
        {"MASTER_ADDR", "127.0.0.1"},
        {"MASTER_PORT", port},
        {"TORCHELASTIC_RESTART_COUNT", "0"},
        {"TORCHELASTIC_MAX_RESTARTS", "0"},
        {"TORCHELASTIC_RUN_ID", "none"},
        {"TORCHELASTIC_USE_AGENT_STORE", "True"},
        {"OMP_NUM_THREADS", "1"},  // unset in the launcher's environment, N > 1
    };
    for (const auto& [name, value] : expected) {
      ASSERT_TRUE(env.count(name)) << "rank " << r << " has no " << name;
      EXPECT_EQ(env.at(name), value) << "rank " << r << " " << name;
    }
    EXPECT_TRUE(env.count("PATH")) << "the launcher's own environment is inherited";
  }
  expect_no_rank_left(tmp.path(), 3);
}

TEST(LaunchEnv, PureEnvironmentKeepsAnInheritedOmpNumThreads) {
  LaunchOptions options;
  options.nproc_per_node = 4;
  options.nnodes = 3;
  options.node_rank = 2;
  auto env = rank_environment(options, 1, 1234, "7", nullptr);
  EXPECT_EQ(env.at("OMP_NUM_THREADS"), "7");
  EXPECT_EQ(env.at("RANK"), "9");
  EXPECT_EQ(env.at("WORLD_SIZE"), "12");
  EXPECT_EQ(env.at("GROUP_RANK"), "2");
  EXPECT_EQ(env.at("TORCH_NCCL_ASYNC_ERROR_HANDLING"), "1");
  options.nproc_per_node = 1;
  env = rank_environment(options, 0, 1234, nullptr, "0");
  EXPECT_FALSE(env.count("OMP_NUM_THREADS")) << "one process per node: torchrun leaves it unset";
  EXPECT_EQ(env.at("TORCH_NCCL_ASYNC_ERROR_HANDLING"), "0");
}

TEST(LaunchEnv, TwoNodesOnLoopback) {
  test::TempDir tmp;
  const std::string rank_script = env_script(tmp.path());
  // Node 0 picks the port and prints it; node 1 is given it. Node 0's ranks wait for node 1's, so both
  // launchers run at once.
  const std::string wait_script = script(tmp.path(), "wait.sh", record_pid(tmp.path()) + "env > " +
                                                                  tmp.path().string() + "/env.$RANK\n" +
                                                                  wait_until_exists(tmp.path() / "env.3"));
  Spawned node0(launch_argv({"--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "0", "--master-addr", "127.0.0.1",
                             "--master-port", "0", "--", wait_script}),
                tmp.path() / "node0.out");
  const int port = hosted_port(node0);
  ASSERT_GT(port, 0);
  // Node 1 is given its options with torchrun's underscore spellings, which sft launch accepts too.
  Spawned node1(launch_argv({"--nproc_per_node", "2", "--nnodes", "2", "--node_rank", "1", "--master_addr", "127.0.0.1",
                             "--master_port=" + std::to_string(port), "--", rank_script}),
                tmp.path() / "node1.out");
  EXPECT_EQ(node1.wait(20), 0) << node1.output();
  EXPECT_EQ(node0.wait(20), 0) << node0.output();
  EXPECT_TRUE(contains(node1.output(), "TCPStore of node 0 at 127.0.0.1:" + std::to_string(port))) << node1.output();
  for (int r = 0; r < 4; ++r) {
    const auto env = read_env(tmp.path() / ("env." + std::to_string(r)));
    EXPECT_EQ(env.at("RANK"), std::to_string(r));
    EXPECT_EQ(env.at("LOCAL_RANK"), std::to_string(r % 2));
    EXPECT_EQ(env.at("GROUP_RANK"), std::to_string(r / 2));
    EXPECT_EQ(env.at("WORLD_SIZE"), "4");
    EXPECT_EQ(env.at("LOCAL_WORLD_SIZE"), "2");
    EXPECT_EQ(env.at("GROUP_WORLD_SIZE"), "2");
    EXPECT_EQ(env.at("MASTER_PORT"), std::to_string(port));
  }
  expect_no_rank_left(tmp.path(), 4);
}

// ---- the TCPStore ----

TEST(LaunchStore, SecondLauncherOnTheSamePortExits2) {
  test::TempDir tmp;
  const std::string hold =
      script(tmp.path(), "hold.sh", record_pid(tmp.path()) + wait_until_exists(tmp.path() / "release"));
  Spawned first(launch_argv({"--nproc-per-node", "2", "--master-port", "0", "--", hold}), tmp.path() / "first.out");
  const int port = hosted_port(first);
  ASSERT_GT(port, 0);
  const Finished second = launch(tmp, {"--nproc-per-node", "2", "--master-port", std::to_string(port), "--", hold});
  EXPECT_EQ(second.exit_code, 2) << second.output;
  EXPECT_TRUE(contains(second.output, "master port " + std::to_string(port))) << second.output;
  EXPECT_FALSE(contains(second.output, "[rank")) << "no rank may start without the store";
  test::write_text(tmp.path() / "release", "");
  EXPECT_EQ(first.wait(20), 0) << first.output();
  expect_no_rank_left(tmp.path(), 2);
}

// Real c10d clients (torch.distributed.TCPStore from the .venv) join the launcher's store, set their key
// and read each other's: the store works for what the ranks will really do.
TEST(LaunchStore, TorchClientsSetAndGetKeysThroughIt) {
  const fs::path python = test::source_dir() / ".venv" / "bin" / "python";
  if (!fs::exists(python)) GTEST_SKIP() << "no " << python << " (scripts/setup.sh makes it)";
  test::TempDir tmp;
  const std::string client =
      "import datetime, os\n"
      "import torch.distributed as dist\n"
      "rank = int(os.environ['RANK'])\n"
      "open(f'" + tmp.path().string() + "/pid.{rank}', 'w').write(str(os.getpid()))\n"
      "store = dist.TCPStore(os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT']), is_master=False,\n"
      "                      timeout=datetime.timedelta(seconds=30))\n"
      "store.set(f'key{rank}', f'value from {rank}')\n"
      "print('got', store.get(f'key{1 - rank}').decode(), flush=True)\n"
      "store.add('count', 1)\n";
  const Finished run = launch(tmp, {"--nproc-per-node", "2", "--master-port", "0", "--", python.string(), "-c", client},
                              90);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_TRUE(contains(run.output, "[rank 0] got value from 1\n")) << run.output;
  EXPECT_TRUE(contains(run.output, "[rank 1] got value from 0\n")) << run.output;
  expect_no_rank_left(tmp.path(), 2);
}

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

// ---- bad usage: exit 2 with a message, no rank started ----

void expect_usage_error(const std::vector<std::string>& args, const std::string& needle) {
  test::TempDir tmp;
  const Finished run = launch(tmp, args);
  std::string joined;
  for (const std::string& arg : args) joined += arg + " ";
  EXPECT_EQ(run.exit_code, 2) << joined << "\n" << run.output;
  EXPECT_TRUE(contains(run.output, needle)) << joined << ": '" << needle << "' not in:\n" << run.output;
  EXPECT_FALSE(contains(run.output, "[rank")) << joined;
}

struct BadUsage {
  const char* name;
  std::vector<std::string> args;
  std::string message;
};

class LaunchUsage : public ::testing::TestWithParam<BadUsage> {};

TEST_P(LaunchUsage, Exits2WithAMessage) { expect_usage_error(GetParam().args, GetParam().message); }

INSTANTIATE_TEST_SUITE_P(
    Launch, LaunchUsage,
    ::testing::Values(
        BadUsage{"NoSeparator", {"--nproc-per-node", "2", "train", "x.yaml"}, "put the command after `--`"},
        BadUsage{"NothingAfterSeparator", {"--nproc-per-node", "2", "--"}, "nothing after `--`"},
        BadUsage{"NoNprocPerNode", {"--", "/bin/true"}, "--nproc-per-node is required"},
        BadUsage{"NprocZero", {"--nproc-per-node", "0", "--", "/bin/true"},
                 "--nproc-per-node must be between 1 and 1024, got 0"},
        BadUsage{"NprocNegative", {"--nproc-per-node", "-2", "--", "/bin/true"},
                 "--nproc-per-node must be between 1 and 1024, got -2"},
        BadUsage{"NprocNotANumber", {"--nproc-per-node", "two", "--", "/bin/true"},
                 "--nproc-per-node must be an integer, got 'two'"},
        BadUsage{"NnodesZero", {"--nproc-per-node", "1", "--nnodes", "0", "--", "/bin/true"},
                 "--nnodes must be >= 1, got 0"},
        BadUsage{"NodeRankPastNnodes", {"--nproc-per-node", "1", "--nnodes", "2", "--node-rank", "2", "--", "/bin/true"},
                 "--node-rank must be in [0, --nnodes) = [0, 2), got 2"},
        BadUsage{"NodeRankNegative", {"--nproc-per-node", "1", "--node-rank", "-1", "--", "/bin/true"},
                 "--node-rank must be in [0, --nnodes) = [0, 1), got -1"},
        BadUsage{"PortTooLarge", {"--nproc-per-node", "1", "--master-port", "70000", "--", "/bin/true"},
                 "--master-port must be a port in [0, 65535], got 70000"},
        BadUsage{"PortNotANumber", {"--nproc-per-node", "1", "--master-port", "http", "--", "/bin/true"},
                 "--master-port must be an integer, got 'http'"},
        BadUsage{"PortZeroOnNodeOne",
                 {"--nproc-per-node", "1", "--nnodes", "2", "--node-rank", "1", "--master-port", "0", "--", "/bin/true"},
                 "--master-port 0 (pick a free port) works on node 0 only"},
        BadUsage{"GraceNegative", {"--nproc-per-node", "1", "--grace-s", "-1", "--", "/bin/true"},
                 "--grace-s must be in [0, 86400] seconds, got -1"},
        BadUsage{"UnknownOption", {"--nproc-per-node", "1", "--max-restarts", "1", "--", "/bin/true"},
                 "sft launch: unknown option '--max-restarts'"},
        BadUsage{"StrayArgument", {"--nproc-per-node", "1", "stray", "--", "/bin/true"},
                 "unexpected argument 'stray' before `--`"},
        BadUsage{"ProgramNotExecutable", {"--nproc-per-node", "1", "--master-port", "0", "--", "/no/such/program"},
                 "cannot run '/no/such/program': not an executable file"}),
    [](const ::testing::TestParamInfo<BadUsage>& info) { return std::string(info.param.name); });

TEST(LaunchPort, MasterPortInUseExits2NamingThePort) {
  // A plain listening socket holds the port (the two-launcher case is LaunchStore.SecondLauncher...).
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const std::string port = std::to_string(ntohs(addr.sin_port));
  expect_usage_error({"--nproc-per-node", "2", "--master-port", port, "--", "/bin/true"},
                     "cannot host the TCPStore on master port " + port + " (is the port in use?");
  close(fd);
}

// ---- against the reference launcher ----

// The real torchrun and sft launch, given the same static rendezvous (nproc 2, 127.0.0.1, one port), set
// the same variables with the same values for each rank. torchrun's two agent-internal ones are the
// documented exceptions.
TEST(LaunchReference, TorchrunSetsTheSameEnvironment) {
  const fs::path torchrun = test::source_dir() / ".venv" / "bin" / "torchrun";
  if (!fs::exists(torchrun)) GTEST_SKIP() << "no " << torchrun << " (scripts/setup.sh installs torch)";
  test::TempDir ours, theirs;
  const std::string port = std::to_string(free_port());
  const std::vector<std::string> common = {"--nnodes", "1", "--node_rank", "0", "--master_addr", "127.0.0.1",
                                           "--master_port", port};
  std::vector<std::string> reference = {torchrun.string(), "--no-python", "--nproc_per_node", "2"};
  reference.insert(reference.end(), common.begin(), common.end());
  reference.push_back(env_script(theirs.path()));
  Spawned torchrun_run(reference, theirs.path() / "torchrun.out");
  ASSERT_EQ(torchrun_run.wait(90), 0) << torchrun_run.output();

  const Finished run = launch(ours, {"--nproc-per-node", "2", "--nnodes", "1", "--node-rank", "0", "--master-addr",
                                     "127.0.0.1", "--master-port", port, "--", env_script(ours.path())});
  ASSERT_EQ(run.exit_code, 0) << run.output;

  const std::set<std::string> torchrun_internal = {"TORCHELASTIC_ERROR_FILE", "TORCHELASTIC_SIGNALS_TO_HANDLE"};
  // Set by the shells and Python (PEP 538 locale coercion) on the way, not by the launchers' contract.
  const std::set<std::string> differ_by_process = {"PWD", "OLDPWD", "_", "SHLVL", "LC_CTYPE"};
  for (int r = 0; r < 2; ++r) {
    const auto expected = read_env(theirs.path() / ("env." + std::to_string(r)));
    const auto got = read_env(ours.path() / ("env." + std::to_string(r)));
    for (const char* name : {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                             "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_USE_AGENT_STORE", "GROUP_RANK"}) {
      ASSERT_TRUE(expected.count(name)) << "torchrun no longer sets " << name;
    }
    for (const auto& [name, value] : expected) {
      if (torchrun_internal.count(name) || differ_by_process.count(name)) continue;
      ASSERT_TRUE(got.count(name)) << "rank " << r << ": torchrun sets " << name << "=" << value << ", we do not";
      EXPECT_EQ(got.at(name), value) << "rank " << r << " " << name;
    }
    for (const auto& [name, value] : got) {
      if (differ_by_process.count(name)) continue;
      EXPECT_TRUE(expected.count(name)) << "rank " << r << ": we set " << name << " and torchrun does not";
    }
  }
  expect_no_rank_left(ours.path(), 2);
  expect_no_rank_left(theirs.path(), 2);
}

}  // namespace
}  // namespace sft
