// A watchdog for `smt train`: a thread that ends the process when no training step has started for
// `timeout_s` seconds (train.step_timeout), the symptom of a hung rank (a peer dead inside a
// collective, a stuck device). It prints one line naming the step and exits 1, so a job under
// mpirun ends (mpirun stops the other ranks when one exits with an error; theirs fire too) instead of
// waiting forever; restart with --resume. Time the process spends stopped (SIGSTOP, a suspended
// VM) is not counted: a wake-up gap of the watchdog's own clock longer than its poll interval shifts
// the deadline.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

namespace smt {

class StepWatchdog {
 public:
  // timeout_s = 0: disabled (no thread). `who` prefixes the message ("smt train: error on rank 1").
  StepWatchdog(double timeout_s, std::string who);
  ~StepWatchdog();
  StepWatchdog(const StepWatchdog&) = delete;
  StepWatchdog& operator=(const StepWatchdog&) = delete;

  void beat(int64_t step);  // step `step` starts now: the deadline moves to now + timeout
  void stop();              // the loop is over (evaluation follows); joins the thread

 private:
  using Clock = std::chrono::steady_clock;
  void run();

  double timeout_s_;
  std::string who_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  int64_t step_ = 0;
  Clock::time_point last_beat_;
  std::thread thread_;
};

}  // namespace smt
