// Graceful stop on SIGTERM / SIGINT: the handler only records the signal (async-signal-safe);
// the training loop polls stop_signal() between steps, writes a checkpoint at the current step
// and exits with 128 + signal (130 for SIGINT, 143 for SIGTERM, the shell convention), so that
// a scheduler sees "stopped, resumable" rather than "finished". A second signal of either kind
// while the first is being handled restores the default action (terminate at once).
#pragma once

namespace smt {

class Communicator;

// Installs the handlers for SIGTERM and SIGINT (idempotent).
void install_stop_signal_handlers();

// The signal that asked the run to stop (SIGTERM or SIGINT), 0 if none arrived.
int stop_signal();

// stop_signal() agreed over all ranks of `world` (nullable: this process only): the largest signal
// any rank received, so that every rank stops at the same step (the stop writes a checkpoint, a
// collective). Collective itself when world has several ranks: call it at the same point on all.
int stop_signal_all_ranks(Communicator* world);

// "SIGTERM", "SIGINT", or "signal N".
const char* signal_name(int sig);

}  // namespace smt
