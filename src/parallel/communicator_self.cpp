// World-size-1 communicator: every collective is a local copy (or nothing).
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "parallel/communicator.h"

namespace smt {

namespace {

class SelfCommunicator final : public Communicator {
 public:
  std::string backend() const override { return "self"; }
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int local_rank() const override { return 0; }
  int local_size() const override { return 1; }
  void all_reduce_sum(float*, int64_t) override {}
  void all_reduce_sum(double*, int64_t) override {}
  void all_reduce_max(double*, int64_t) override {}
  void all_gather(const void* send, void* recv, int64_t bytes_per_rank) override {
    if (send != recv) std::memmove(recv, send, static_cast<size_t>(bytes_per_rank));
  }
  void broadcast(void*, int64_t, int root) override { SMT_CHECK(root == 0, "broadcast root ", root, " of 1 rank"); }
  void barrier() override {}
  void all_to_all_v(const float* send, const int64_t* send_counts, float* recv, const int64_t* recv_counts) override {
    SMT_CHECK(send_counts[0] == recv_counts[0], "all_to_all_v to self: sending ", send_counts[0], " but receiving ",
              recv_counts[0]);
    if (send != recv) std::memmove(recv, send, static_cast<size_t>(send_counts[0]) * sizeof(float));
  }
  void exchange_segments(const float* send, const std::vector<Segment>& sends, float* recv,
                         const std::vector<Segment>& recvs) override {
    SMT_CHECK(sends.size() == recvs.size(), "exchange_segments with self: ", sends.size(), " sends but ", recvs.size(),
              " receives");
    for (size_t i = 0; i < sends.size(); ++i) {
      SMT_CHECK(sends[i].count == recvs[i].count, "exchange_segments with self: segment ", i, " sends ",
                sends[i].count, " floats but receives ", recvs[i].count);
      if (sends[i].count > 0)
        std::memmove(recv + recvs[i].offset, send + sends[i].offset, static_cast<size_t>(sends[i].count) * sizeof(float));
    }
  }
  void all_to_all(const int64_t* send, int64_t* recv) override { recv[0] = send[0]; }
  std::unique_ptr<Communicator> split(int, int) override { return std::make_unique<SelfCommunicator>(); }
  [[noreturn]] void abort(int exit_code) override { std::_Exit(exit_code); }
};

}  // namespace

std::unique_ptr<Communicator> make_self_communicator() { return std::make_unique<SelfCommunicator>(); }

bool launched_under_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_PROCID"})
    if (std::getenv(v) != nullptr) return true;
  return false;
}

int launcher_rank() {
  for (const char* v : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"})
    if (const char* s = std::getenv(v)) return std::atoi(s);
  return 0;
}

std::unique_ptr<Communicator> make_world_communicator() {
  return launched_under_mpi() ? make_mpi_world_communicator() : make_self_communicator();
}

}  // namespace smt
