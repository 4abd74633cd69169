// tests/launch_test_util.cpp: implementation of the `sft launch` test helpers.
#include "tests/launch_test_util.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

extern char** environ;

namespace sft::launch_test {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

Spawned::Spawned(const std::vector<std::string>& argv, const fs::path& output, const std::vector<std::string>& unset_env)
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

Spawned::~Spawned() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

std::string Spawned::output() const { return fs::exists(output_) ? test::read_text(output_) : ""; }

int Spawned::wait(double timeout_s) {
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

std::vector<std::string> launch_argv(const std::vector<std::string>& args) {
  std::vector<std::string> argv{test::sft_binary().string(), "launch"};
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

Finished launch(const test::TempDir& tmp, const std::vector<std::string>& args, double timeout_s) {
  const auto start = Clock::now();
  Spawned launcher(launch_argv(args), tmp.path() / "launcher.out");
  Finished result;
  result.exit_code = launcher.wait(timeout_s);
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  result.output = launcher.output();
  return result;
}

std::string script(const fs::path& dir, const std::string& name, const std::string& body) {
  const fs::path path = dir / name;
  test::write_text(path, "#!/bin/sh\n" + body);
  fs::permissions(path, fs::perms::owner_all);
  return path.string();
}

bool wait_for_file(const fs::path& path, double timeout_s) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
  while (!fs::exists(path)) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

bool alive(pid_t pid) {
  if (kill(pid, 0) != 0) return false;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const size_t paren = text.rfind(')');
  return paren == std::string::npos || paren + 2 >= text.size() || text[paren + 2] != 'Z';
}

void expect_no_rank_left(const fs::path& dir, int ranks, double timeout_s) {
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

std::string record_pid(const fs::path& dir) { return "echo $$ > " + dir.string() + "/pid.$RANK\n"; }
std::string wait_until_exists(const fs::path& file) {
  return "i=0; while [ ! -f " + file.string() + " ] && [ $i -lt 500 ]; do sleep 0.02; i=$((i+1)); done\n";
}
std::string rank1_after_rank0(const fs::path& dir, const std::string& then) {
  return "if [ $RANK = 1 ]; then\n" + wait_until_exists(dir / "pid.0") + then + "\nfi\n";
}

std::unique_ptr<Spawned> start_two_ranks(const test::TempDir& tmp, const std::string& body) {
  auto launcher = std::make_unique<Spawned>(
      launch_argv({"--nproc-per-node", "2", "--master-port", "0", "--", script(tmp.path(), "rank.sh", body)}),
      tmp.path() / "launcher.out");
  const bool started = wait_for_file(tmp.path() / "pid.0") && wait_for_file(tmp.path() / "pid.1");
  EXPECT_TRUE(started) << launcher->output();
  return started ? std::move(launcher) : nullptr;
}

std::string env_script(const fs::path& dir) {
  return script(dir, "env.sh", record_pid(dir) + "env > " + dir.string() + "/env.$RANK\n");
}

}  // namespace sft::launch_test
