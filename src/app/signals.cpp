// SIGTERM / SIGINT -> a flag polled between training steps (see signals.h).
#include "app/signals.h"

#include <csignal>
#include <cstdio>

#include "parallel/communicator.h"

namespace smt {

namespace {

volatile std::sig_atomic_t g_stop_signal = 0;

extern "C" void on_stop_signal(int sig) {
  if (g_stop_signal != 0) {
    // Second request: give up on the graceful stop. signal() and raise() are async-signal-safe.
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  g_stop_signal = sig;
}

}  // namespace

void install_stop_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // a read()/write() in progress continues; the loop polls the flag
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
}

int stop_signal() { return g_stop_signal; }

int stop_signal_all_ranks(Communicator* world) {
  if (world == nullptr || world->size() <= 1) return stop_signal();
  double sig = stop_signal();
  world->all_reduce_max(&sig, 1);
  return static_cast<int>(sig);
}

const char* signal_name(int sig) {
  if (sig == SIGTERM) return "SIGTERM";
  if (sig == SIGINT) return "SIGINT";
  static char buf[32];
  std::snprintf(buf, sizeof buf, "signal %d", sig);
  return buf;
}

}  // namespace smt
