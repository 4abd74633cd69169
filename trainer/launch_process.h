// trainer/launch_process.h: the process side of `sft launch`: the launcher's signals (read from a
// signalfd, no handler, no global), starting the ranks, relaying their output with a `[rank K] ` prefix,
// forwarding SIGTERM/SIGINT, and stopping every rank when one fails.
#pragma once
#include <signal.h>

#include <string>
#include <vector>

namespace sft {

// What one rank runs. `argv[0]` is the program path; `environment` holds complete "NAME=value" items.
struct RankSpec {
  int rank = 0;
  int local_rank = 0;
  std::vector<std::string> argv;
  std::vector<std::string> environment;
};

// Blocks SIGINT, SIGTERM and SIGCHLD in the calling thread and reads them from a signalfd. Construct it
// before any other thread starts (the TCPStore server's): threads inherit the mask, so no thread ever
// runs the default action of these signals and the launcher sees each one on the fd. The destructor
// restores the mask; children get the original mask back before exec.
class LaunchSignals {
 public:
  LaunchSignals();
  ~LaunchSignals();
  LaunchSignals(const LaunchSignals&) = delete;
  LaunchSignals& operator=(const LaunchSignals&) = delete;

  int fd() const { return fd_; }
  const sigset_t& original_mask() const { return original_mask_; }

 private:
  int fd_ = -1;
  sigset_t original_mask_{};
  struct sigaction original_chld_ {};
};

// Starts every rank (each in its own session, with PR_SET_PDEATHSIG = SIGKILL), relays its stdout and
// stderr line by line with a `[rank K] ` prefix, forwards the first SIGTERM/SIGINT to every rank and
// answers a second one with SIGKILL. When a rank exits non-zero or dies by a signal, the other ranks get
// SIGTERM and, `grace_s` seconds later, SIGKILL. Returns once every rank has been reaped: 0 when all
// exited 0, else the first failing rank's exit code (1 for a signal death), after naming it on stderr.
int supervise_ranks(const std::vector<RankSpec>& ranks, double grace_s, const LaunchSignals& signals);

}  // namespace sft
