// tests/launch_test_util.h: helpers for the `sft launch` tests (test_launch.cpp, test_launch_signals.cpp):
// a bounded child process, rank scripts written as small /bin/sh files, and checks that no rank
// outlives its launcher. Every wait here has a deadline, after which the process is SIGKILLed and the
// test fails, so no test can hang.
#pragma once
#include <sys/types.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tests/test_util.h"

namespace sft::launch_test {

// A process the test started, with stdout and stderr in one file. The destructor SIGKILLs and reaps it
// if it is still running, so a failing test never leaves it behind.
class Spawned {
 public:
  Spawned(const std::vector<std::string>& argv, const std::filesystem::path& output,
          const std::vector<std::string>& unset_env = {"OMP_NUM_THREADS"});
  ~Spawned();
  Spawned(const Spawned&) = delete;
  Spawned& operator=(const Spawned&) = delete;

  pid_t pid() const { return pid_; }
  std::string output() const;
  // The exit code, 128 + signo for a signal death, or -1 (and a test failure) when it outlived
  // `timeout_s` and had to be killed.
  int wait(double timeout_s);

 private:
  std::filesystem::path output_;
  pid_t pid_ = -1;
};

// argv of `sft launch ARGS`.
std::vector<std::string> launch_argv(const std::vector<std::string>& args);

struct Finished {
  int exit_code = -1;
  std::string output;
  double seconds = 0;
};
// Runs `sft launch ARGS` to the end (bounded by `timeout_s`).
Finished launch(const test::TempDir& tmp, const std::vector<std::string>& args, double timeout_s = 20);

// Starts a 2-rank launcher of the script `body` and waits until both ranks have written their pid
// (nullptr and a test failure if they do not).
std::unique_ptr<Spawned> start_two_ranks(const test::TempDir& tmp, const std::string& body);

// A /bin/sh script in `dir`, made executable. Returns its path.
std::string script(const std::filesystem::path& dir, const std::string& name, const std::string& body);
// sh snippets for the rank scripts. Every wait in them is bounded (500 x 20 ms).
std::string record_pid(const std::filesystem::path& dir);  // writes $$ to dir/pid.$RANK
std::string wait_until_exists(const std::filesystem::path& file);
// Rank 1 waits until rank 0 has written its pid (so rank 0 is running), then runs `then`.
std::string rank1_after_rank0(const std::filesystem::path& dir, const std::string& then);
// A script that writes its pid and its environment (dir/env.$RANK), then exits 0.
std::string env_script(const std::filesystem::path& dir);

// Polls until `path` exists; false after `timeout_s`.
bool wait_for_file(const std::filesystem::path& path, double timeout_s = 10);
// Alive = exists and is not a zombie (an orphan's zombie waits for whoever reaps orphans here).
bool alive(pid_t pid);
// Waits (bounded) for every pid the ranks wrote to `dir/pid.R` to be gone; fails the test otherwise.
void expect_no_rank_left(const std::filesystem::path& dir, int ranks, double timeout_s = 5);

std::map<std::string, std::string> read_env(const std::filesystem::path& path);
// The port node 0 printed ("TCPStore hosted at ADDR:PORT"), waiting (bounded) for the line; -1 if none.
int hosted_port(const Spawned& launcher);
// A port that was free a moment ago (bound to 0, read back, closed): for the reference torchrun, which
// cannot be told to pick one and print it.
int free_port();
bool contains(const std::string& text, const std::string& needle);

}  // namespace sft::launch_test
