// trainer/stop_signals.cpp: the stop flag and its signal handlers.
#include "trainer/stop_signals.h"

#include <atomic>

namespace sft {
namespace {

std::atomic<bool>& stop_flag() {
  static std::atomic<bool> flag{false};
  return flag;
}

extern "C" void on_stop_signal(int /*signo*/) { stop_flag().store(true); }

}  // namespace

StopSignals::StopSignals() {
  stop_flag().store(false);
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESETHAND;
  sigaction(SIGTERM, &action, &old_term_);
  sigaction(SIGINT, &action, &old_int_);
}

StopSignals::~StopSignals() {
  sigaction(SIGTERM, &old_term_, nullptr);
  sigaction(SIGINT, &old_int_, nullptr);
}

bool StopSignals::requested() const { return stop_flag().load(); }

}  // namespace sft
