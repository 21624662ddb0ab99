// smt command-line entry point: dispatch to subcommands, turn errors into one line and an
// exit code (2 usage/config, 1 runtime).
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <thread>

#include "app/cli.h"
#include "app/commands_io.h"
#include "core/cpu_setup.h"
#include "core/error.h"
#include "parallel/communicator.h"

namespace {

void print_usage() {
  std::printf(
      "usage: smt <command> [options]   (smt <command> --help lists every option)\n\n"
      "commands:\n"
      "  train      train a model: smt train [--config FILE] [--section.key=value ...] [--resume | --overwrite]\n"
      "  eval       score a classifier checkpoint: smt eval --checkpoint FILE --data liar:PATH.tsv|synthetic\n"
      "  generate   write synthetic claims as JSONL: smt generate --out FILE\n"
      "  bench      time training steps: smt bench step --config FILE\n"
      "             compare attention patterns: smt bench compare --config FILE\n"
      "             one MoE layer (benchmark B2): smt bench moe [--device cpu|cuda]\n"
      "             attention patterns (benchmark B3): smt bench attention [--device cpu|cuda]\n"
      "             MoE token exchange against MPI_Alltoallv: mpirun -np N smt bench exchange\n"
      "  inspect    describe a checkpoint: smt inspect FILE [--json]\n"
      "  export     write a checkpoint's parameters: smt export FILE --format safetensors --out OUT\n");
}

// One line on stderr, then the exit code. Under mpirun/srun the message names the rank; a usage
// error (the same on every rank) is printed by rank 0 only, any other error by the rank that hit
// it; then the whole job is aborted so that no rank waits forever in a collective.
int fail(const std::string& cmd, const char* what, int exit_code) {
  const int rank = smt::launcher_rank();
  const bool multi_rank = smt::launched_under_mpi();
  if (multi_rank && rank != 0 && exit_code == 2) {
    // A usage error is normally the same on every rank: give rank 0 time to print it and abort the
    // job (which ends this process); print it here only if this rank is still alive after that.
    std::this_thread::sleep_for(std::chrono::seconds(3));
  }
  if (multi_rank) std::fprintf(stderr, "smt %s: error on rank %d: %s\n", cmd.c_str(), rank, what);
  else std::fprintf(stderr, "smt %s: error: %s\n", cmd.c_str(), what);
  std::fflush(stderr);
  smt::abort_job_if_parallel(exit_code);
  return exit_code;
}

}  // namespace

int main(int argc, char** argv) {
  smt::ensure_cpu_environment(argv);
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    print_usage();
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  try {
    if (cmd == "train") return smt::cmd_train(argc - 1, argv + 1);
    if (cmd == "eval") return smt::cmd_eval(argc - 1, argv + 1);
    if (cmd == "generate") return smt::cmd_generate(argc - 1, argv + 1);
    if (cmd == "bench") return smt::cmd_bench(argc - 1, argv + 1);
    if (cmd == "inspect") return smt::cmd_inspect(argc - 1, argv + 1);
    if (cmd == "export") return smt::cmd_export(argc - 1, argv + 1);
    std::fprintf(stderr, "smt: error: unknown command '%s' (try smt --help)\n", cmd.c_str());
    return 2;
  } catch (const smt::Error& e) {
    return fail(cmd, e.what(), e.exit_code());
  } catch (const std::exception& e) {
    return fail(cmd, e.what(), 1);
  }
}
