// trainer/launch_process.cpp: starting, watching and stopping the ranks of `sft launch`. One thread, one
// poll() loop over the signalfd and every rank's stdout/stderr pipe: it never busy-waits, and the only
// timeout it ever sets is the SIGKILL deadline of a stop.
#include "trainer/launch_process.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <sstream>
#include <stdexcept>

namespace sft {
namespace {

using Clock = std::chrono::steady_clock;

std::runtime_error system_error(const std::string& what) {
  return std::runtime_error("sft launch: " + what + ": " + strerror(errno));
}

// Writes all of `text` to `fd` (our stdout or stderr), retrying short writes.
void write_all(int fd, const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // our own output is gone (a closed pipe): nothing sensible is left to do with it
    done += static_cast<size_t>(n);
  }
}

void say(const std::string& message) { write_all(STDERR_FILENO, "sft launch: " + message + "\n"); }

std::string seconds_text(double seconds) {
  std::ostringstream text;
  text << seconds << " s";
  return text.str();
}

std::string signal_name(int signo) {
  const char* abbrev = sigabbrev_np(signo);
  return abbrev ? std::string("SIG") + abbrev : "signal " + std::to_string(signo);
}

// One of a rank's two output pipes, read non-blocking and re-emitted to `target_fd` in whole lines.
// '\n', '\r' and a "\r\n" pair each end a line, so a progress bar's redraws become one prefixed line each
// and can never overwrite another rank's line. Lines longer than kMaxLine are split.
struct OutputPipe {
  static constexpr size_t kMaxLine = 64 * 1024;
  int fd = -1;
  int target_fd = STDOUT_FILENO;
  std::string prefix;
  std::string pending;    // the current, incomplete line
  bool after_cr = false;  // the last byte was '\r': a '\n' right after it ends nothing new

  void emit_pending() {
    write_all(target_fd, prefix + pending + "\n");
    pending.clear();
  }
  void take(const char* data, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      const char c = data[i];
      if (c == '\n' && after_cr) {
        after_cr = false;
        continue;
      }
      after_cr = c == '\r';
      if (c == '\n' || c == '\r') {
        emit_pending();
      } else {
        pending.push_back(c);
        if (pending.size() >= kMaxLine) emit_pending();
      }
    }
  }
  // Reads what is there now. Returns false at end of file (the pipe is then closed).
  bool read_available() {
    char buffer[16384];
    while (fd >= 0) {
      const ssize_t n = read(fd, buffer, sizeof buffer);
      if (n > 0) {
        take(buffer, static_cast<size_t>(n));
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        return true;
      } else {
        close_and_flush();
        return false;
      }
    }
    return false;
  }
  // Flushes a partial last line (with a '\n', so the next prefix starts a line) and closes the pipe.
  void close_and_flush() {
    if (!pending.empty()) emit_pending();
    if (fd >= 0) close(fd);
    fd = -1;
  }
};

struct RankProcess {
  const RankSpec* spec = nullptr;
  pid_t pid = -1;
  bool running = false;
  OutputPipe out, err;

  std::string describe() const {
    return "rank " + std::to_string(spec->rank) + " (local rank " + std::to_string(spec->local_rank) + ", pid " +
           std::to_string(pid) + ")";
  }
  // Signals the rank's whole session (it is its process group leader), as torchrun's os.killpg does, so a
  // shell rank's own children are stopped with it.
  void signal(int signo) const {
    if (running) killpg(pid, signo);
  }
};

// The first rank that failed: the root cause the launcher names, whatever happens to the others after.
struct Failure {
  std::string message;
  int exit_code = 1;
};

std::optional<Failure> failure_of(const RankProcess& rank, int status) {
  if (WIFEXITED(status)) {
    if (WEXITSTATUS(status) == 0) return std::nullopt;
    return Failure{rank.describe() + " exited with code " + std::to_string(WEXITSTATUS(status)), WEXITSTATUS(status)};
  }
  const int signo = WTERMSIG(status);
  return Failure{rank.describe() + " was killed by signal " + std::to_string(signo) + " (" + signal_name(signo) + ")",
                 1};
}

// Creates a pipe whose ends close on exec; the read end is non-blocking.
void make_pipe(int ends[2]) {
  if (pipe2(ends, O_CLOEXEC) != 0) throw system_error("pipe2");
  fcntl(ends[0], F_SETFL, fcntl(ends[0], F_GETFL) | O_NONBLOCK);
}

// fork + exec of one rank. Everything the child needs is built before fork(): between fork and exec the
// child of a multi-threaded process may only make async-signal-safe calls.
pid_t spawn(const RankSpec& spec, const sigset_t& original_mask, int out_fd, int err_fd) {
  std::vector<char*> argv, envp;
  for (const std::string& arg : spec.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  for (const std::string& item : spec.environment) envp.push_back(const_cast<char*>(item.c_str()));
  envp.push_back(nullptr);
  static constexpr char kExecFailed[] = "sft launch: exec of the rank's program failed\n";
  const pid_t launcher = getpid();

  const pid_t pid = fork();
  if (pid < 0) throw system_error("fork");
  if (pid > 0) return pid;
  // Child. Its own session, as torchrun's start_new_session=True: a terminal's Ctrl-C reaches only the
  // launcher, which forwards it once (the trainer takes a second SIGINT as "kill now").
  setsid();
  prctl(PR_SET_PDEATHSIG, SIGKILL);      // the launcher dies, even by SIGKILL: so do we
  if (getppid() != launcher) _exit(1);   // it died before prctl took effect
  dup2(out_fd, STDOUT_FILENO);
  dup2(err_fd, STDERR_FILENO);
  sigprocmask(SIG_SETMASK, &original_mask, nullptr);
  execve(argv[0], argv.data(), envp.data());
  (void)!write(STDERR_FILENO, kExecFailed, sizeof kExecFailed - 1);
  _exit(127);
}

std::vector<RankProcess> start_ranks(const std::vector<RankSpec>& specs, const sigset_t& original_mask) {
  std::vector<RankProcess> ranks(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    RankProcess& rank = ranks[i];
    rank.spec = &specs[i];
    int out[2], err[2];
    make_pipe(out);
    make_pipe(err);
    rank.pid = spawn(specs[i], original_mask, out[1], err[1]);
    rank.running = true;
    close(out[1]);
    close(err[1]);
    const std::string prefix = "[rank " + std::to_string(specs[i].rank) + "] ";
    rank.out.fd = out[0];
    rank.out.target_fd = STDOUT_FILENO;
    rank.out.prefix = prefix;
    rank.err.fd = err[0];
    rank.err.target_fd = STDERR_FILENO;
    rank.err.prefix = prefix;
  }
  return ranks;
}

size_t count_running(const std::vector<RankProcess>& ranks) {
  size_t n = 0;
  for (const RankProcess& rank : ranks) n += rank.running;
  return n;
}

}  // namespace

LaunchSignals::LaunchSignals() {
  // SIGCHLD must not be ignored (an ignored SIGCHLD reaps children behind waitpid's back).
  struct sigaction default_action {};
  default_action.sa_handler = SIG_DFL;
  sigemptyset(&default_action.sa_mask);
  sigaction(SIGCHLD, &default_action, &original_chld_);
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGCHLD);
  if (pthread_sigmask(SIG_BLOCK, &mask, &original_mask_) != 0) throw system_error("pthread_sigmask");
  fd_ = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
  if (fd_ < 0) throw system_error("signalfd");
}

LaunchSignals::~LaunchSignals() {
  close(fd_);
  pthread_sigmask(SIG_SETMASK, &original_mask_, nullptr);
  sigaction(SIGCHLD, &original_chld_, nullptr);
}

namespace {

// The launcher's state while the ranks run, and what it does on each event of the poll loop.
class Supervisor {
 public:
  Supervisor(std::vector<RankProcess> ranks, double grace_s) : ranks_(std::move(ranks)), grace_s_(grace_s) {}

  bool any_running() const { return count_running(ranks_) > 0; }

  // Every open output pipe, for poll(). The pointers stay valid while the ranks_ vector is unchanged.
  std::vector<OutputPipe*> open_pipes() {
    std::vector<OutputPipe*> pipes;
    for (RankProcess& rank : ranks_) {
      for (OutputPipe* pipe : {&rank.out, &rank.err}) {
        if (pipe->fd >= 0) pipes.push_back(pipe);
      }
    }
    return pipes;
  }

  // poll()'s timeout: -1 (none) unless a SIGKILL deadline is pending.
  int poll_timeout_ms() const {
    if (kill_deadline_ == kNoDeadline) return -1;
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(kill_deadline_ - Clock::now()).count();
    return static_cast<int>(std::max<int64_t>(0, left));
  }

  // SIGTERM/SIGINT to the launcher: the first is forwarded, the next ones kill.
  void on_stop_request(int signo) {
    ++stop_requests_;
    if (stop_requests_ == 1) {
      say(signal_name(signo) + ": forwarded to every rank; waiting for them to exit (send it again to kill them)");
      signal_all(signo);
    } else {
      say(signal_name(signo) + " again: killing every rank (SIGKILL)");
      signal_all(SIGKILL);
    }
  }

  // Reaps every rank that has ended; the first failure stops the others.
  void reap() {
    for (RankProcess& rank : ranks_) {
      if (!rank.running) continue;
      int status = 0;
      const pid_t done = waitpid(rank.pid, &status, WNOHANG);
      if (done == 0) continue;
      rank.running = false;
      // What it wrote before exiting is in the pipes now; a grandchild may still hold them open, so
      // take what is there and close rather than wait for an end of file.
      for (OutputPipe* pipe : {&rank.out, &rank.err}) {
        pipe->read_available();
        pipe->close_and_flush();
      }
      std::optional<Failure> failure =
          done < 0 ? Failure{rank.describe() + " could not be waited for", 1} : failure_of(rank, status);
      if (failure && !first_failure_) {
        first_failure_ = failure;
        stop_others(failure->message);
      }
    }
  }

  void kill_if_grace_is_over() {
    if (kill_deadline_ == kNoDeadline || Clock::now() < kill_deadline_) return;
    if (any_running()) say("grace period over: killing the remaining rank(s) (SIGKILL)");
    signal_all(SIGKILL);
    kill_deadline_ = kNoDeadline;
  }

  // 0, or the first failure's code after naming it as the launcher's last line.
  int exit_code() const {
    if (!first_failure_) return 0;
    say(first_failure_->message);
    return first_failure_->exit_code;
  }

 private:
  static constexpr Clock::time_point kNoDeadline = Clock::time_point::max();

  void signal_all(int signo) const {
    for (const RankProcess& rank : ranks_) rank.signal(signo);
  }

  // SIGTERM now, SIGKILL after the grace period. Ranks that already got a forwarded stop signal get no
  // second SIGTERM: sft train would take it as "die now", in the middle of its checkpoint.
  void stop_others(const std::string& failure) {
    const size_t others = count_running(ranks_);
    if (others == 0) return;
    const std::string count = std::to_string(others) + " rank(s)";
    if (stop_requests_ == 0) {
      say(failure + "; stopping the other " + count + ": SIGTERM, then SIGKILL after " + seconds_text(grace_s_));
      signal_all(SIGTERM);
    } else {
      say(failure + "; the other " + count + " already got the stop signal: SIGKILL after " + seconds_text(grace_s_));
    }
    kill_deadline_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(grace_s_));
  }

  std::vector<RankProcess> ranks_;
  double grace_s_;
  std::optional<Failure> first_failure_;           // the root cause the launcher names
  Clock::time_point kill_deadline_ = kNoDeadline;  // set while stopping the ranks after a failure
  int stop_requests_ = 0;                          // SIGTERM/SIGINT received by the launcher
};

}  // namespace

int supervise_ranks(const std::vector<RankSpec>& specs, double grace_s, const LaunchSignals& signals) {
  Supervisor supervisor(start_ranks(specs, signals.original_mask()), grace_s);
  while (supervisor.any_running()) {
    // Sleeps until a signal, rank output or the SIGKILL deadline: never busy.
    std::vector<OutputPipe*> pipes = supervisor.open_pipes();
    std::vector<pollfd> fds{{signals.fd(), POLLIN, 0}};
    for (const OutputPipe* pipe : pipes) fds.push_back({pipe->fd, POLLIN, 0});
    if (poll(fds.data(), fds.size(), supervisor.poll_timeout_ms()) < 0 && errno != EINTR) throw system_error("poll");

    if (fds[0].revents & POLLIN) {
      signalfd_siginfo info{};
      while (read(signals.fd(), &info, sizeof info) == static_cast<ssize_t>(sizeof info)) {
        // SIGCHLD needs nothing here: reap() below looks at every running rank.
        if (info.ssi_signo == SIGINT || info.ssi_signo == SIGTERM) supervisor.on_stop_request(info.ssi_signo);
      }
    }
    for (size_t i = 0; i < pipes.size(); ++i) {
      if (fds[i + 1].revents & (POLLIN | POLLHUP | POLLERR)) pipes[i]->read_available();
    }
    supervisor.reap();
    supervisor.kill_if_grace_is_over();
  }
  return supervisor.exit_code();
}

}  // namespace sft
