// tests/test_launch.cpp: `sft launch` through the real binary: torchrun's environment contract (checked
// against the real torchrun too), the TCPStore node 0 hosts (used by real c10d clients), and every
// bad-usage case. Process behaviour (output, failures, signals) is tests/test_launch_signals.cpp. The
// ranks are small /bin/sh scripts, so nothing here needs the training side; every test is bounded.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <optional>
#include <regex>
#include <set>

#include "tests/launch_test_util.h"
#include "tests/test_util.h"
#include "trainer/launch.h"

namespace sft {
namespace {
namespace fs = std::filesystem;
using namespace launch_test;

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
  ASSERT_TRUE(fs::exists(python)) << "no " << python << " (scripts/setup.sh makes it)";
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

// ctest lists a case by its name, not by the bytes of the struct.
void PrintTo(const BadUsage& usage, std::ostream* out) { *out << usage.name; }

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

TEST(LaunchHelp, ListsTheCommandAndEveryOptionWithItsDefault) {
  const auto listing = test::run_command(test::sft_binary().string() + " help");
  EXPECT_TRUE(contains(listing.output, "  launch    start N ranks")) << listing.output;
  const auto help = test::run_command(test::sft_binary().string() + " help launch");
  EXPECT_EQ(help.exit_code, 0);
  for (const char* text : {"usage: sft launch --nproc-per-node N", "--nnodes M", "(default 1)", "--node-rank R",
                           "(default 0)", "--master-addr A", "(default 127.0.0.1)", "(default 29500); 0 = node 0 picks a free port",
                           "--grace-s S", "(default 30)", "a program path (any\n           COMMAND with a '/')"}) {
    EXPECT_TRUE(contains(help.output, text)) << "'" << text << "' not in:\n" << help.output;
  }
}

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
  ASSERT_TRUE(fs::exists(torchrun)) << "no " << torchrun << " (scripts/setup.sh installs torch)";
  test::TempDir ours, theirs, tmpdir;
  // torchrun's agent makes a torchelastic_* directory with tempfile and never removes it: both launchers
  // run with TMPDIR in this test's own temporary directory (the same value, so the environments still match).
  struct ScopedTmpdir {
    std::optional<std::string> saved;
    explicit ScopedTmpdir(const fs::path& dir) {
      if (const char* old = std::getenv("TMPDIR")) saved = old;
      setenv("TMPDIR", dir.c_str(), 1);
    }
    ~ScopedTmpdir() { saved ? setenv("TMPDIR", saved->c_str(), 1) : unsetenv("TMPDIR"); }
  } scoped_tmpdir(tmpdir.path());
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
