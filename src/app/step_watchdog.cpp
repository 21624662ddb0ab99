// The hung-step watchdog (see step_watchdog.h).
#include "app/step_watchdog.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace smt {

StepWatchdog::StepWatchdog(double timeout_s, std::string who) : timeout_s_(timeout_s), who_(std::move(who)) {
  if (timeout_s_ <= 0) return;
  last_beat_ = Clock::now();
  thread_ = std::thread([this] { run(); });
}

StepWatchdog::~StepWatchdog() { stop(); }

void StepWatchdog::beat(int64_t step) {
  if (!thread_.joinable()) return;
  std::lock_guard<std::mutex> lock(mutex_);
  step_ = step;
  last_beat_ = Clock::now();
}

void StepWatchdog::stop() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void StepWatchdog::run() {
  const auto timeout = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s_));
  // Poll often enough to notice a stopped process (see the header) and to fire near the deadline.
  const auto poll = std::min<Clock::duration>(timeout / 4, std::chrono::seconds(1));
  std::unique_lock<std::mutex> lock(mutex_);
  Clock::time_point last_wake = Clock::now();
  while (!stopping_) {
    wake_.wait_for(lock, poll, [this] { return stopping_; });
    if (stopping_) break;
    const Clock::time_point now = Clock::now();
    const Clock::duration gap = now - last_wake;
    last_wake = now;
    // The process was stopped meanwhile (or this thread starved): that time is not the step's. Clamped to
    // now: a beat that came after the stop already restarted the clock and gains at most a poll interval.
    if (gap > poll + std::chrono::seconds(2)) last_beat_ = std::min(now, last_beat_ + (gap - poll));
    if (now - last_beat_ < timeout) continue;
    // Straight to the file descriptor: stdio's lock may be held by the hung thread.
    char line[512];
    const int n = std::snprintf(line, sizeof line,
                                "%s: step %lld has not finished after %.0f s (train.step_timeout): a rank is hung or far "
                                "slower than expected; stopping the run (continue from the last checkpoint with "
                                "--resume)\n",
                                who_.c_str(), static_cast<long long>(step_), timeout_s_);
    if (n > 0) (void)!::write(STDERR_FILENO, line, std::min<size_t>(static_cast<size_t>(n), sizeof line - 1));
    std::_Exit(1);  // no unwinding: the main thread may be blocked inside a collective
  }
}

}  // namespace smt
