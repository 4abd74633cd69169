// trainer/stop_signals.h: SIGTERM/SIGINT -> "stop after this step". The flag is the one unavoidable piece
// of process-wide state: a signal handler can reach nothing else. It is a function-local static
// lock-free atomic, set by the handler and read between optimizer steps, so a SIGTERM/SIGINT lets the
// current step finish, then the loop saves and exits 0. In a multi-process run the ranks agree on the
// stop through the step's collective (trainer/train.cpp), so ranks signalled at different moments still
// stop after the same step.
#pragma once
#include <signal.h>

namespace sft {

// Installs the handlers for the lifetime of the run. SA_RESETHAND: a second Ctrl-C kills at once, for a
// user who does not want to wait for the step and the save.
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  bool requested() const;

 private:
  struct sigaction old_term_ {};
  struct sigaction old_int_ {};
};

}  // namespace sft
