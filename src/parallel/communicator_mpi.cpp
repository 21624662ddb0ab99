// MPI communicator on host buffers. Large all-to-all-v counts are split into chunks below
// INT_MAX elements per peer; ranks agree on chunk counts through the exchanged counts.
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <cstdlib>
#include <vector>

#include "core/error.h"
#include "parallel/communicator.h"

namespace smt {

namespace {

void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw Error(std::string("MPI ") + what + " failed: " + std::string(msg, len));
}

void ensure_mpi_initialised() {
  int initialised = 0;
  MPI_Initialized(&initialised);
  if (initialised) return;
  int provided = 0;
  check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "Init_thread");
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  std::atexit([] {
    int finalised = 0;
    MPI_Finalized(&finalised);
    if (!finalised) MPI_Finalize();
  });
}

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm comm, bool owned) : comm_(comm), owned_(owned) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    MPI_Comm node;
    check_mpi(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node), "Comm_split_type");
    MPI_Comm_rank(node, &local_rank_);
    MPI_Comm_size(node, &local_size_);
    MPI_Comm_free(&node);
  }
  ~MpiCommunicator() override {
    int finalised = 0;
    MPI_Finalized(&finalised);
    if (owned_ && !finalised) MPI_Comm_free(&comm_);
  }
  std::string backend() const override { return "mpi"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }

  void all_reduce_sum(float* data, int64_t n) override { reduce(data, n, MPI_FLOAT, MPI_SUM); }
  void all_reduce_sum(double* data, int64_t n) override { reduce(data, n, MPI_DOUBLE, MPI_SUM); }
  void all_reduce_max(double* data, int64_t n) override { reduce(data, n, MPI_DOUBLE, MPI_MAX); }

  void all_gather(const void* send, void* recv, int64_t bytes_per_rank) override {
    SMT_CHECK(bytes_per_rank <= INT_MAX, "all_gather of ", bytes_per_rank, " bytes per rank is too large");
    check_mpi(MPI_Allgather(send, static_cast<int>(bytes_per_rank), MPI_BYTE, recv, static_cast<int>(bytes_per_rank),
                            MPI_BYTE, comm_),
              "Allgather");
  }
  void broadcast(void* data, int64_t bytes, int root) override {
    auto* p = static_cast<char*>(data);
    for (int64_t off = 0; off < bytes; off += INT_MAX) {
      const int chunk = static_cast<int>(std::min<int64_t>(INT_MAX, bytes - off));
      check_mpi(MPI_Bcast(p + off, chunk, MPI_BYTE, root, comm_), "Bcast");
    }
  }
  void barrier() override { check_mpi(MPI_Barrier(comm_), "Barrier"); }

  void all_to_all_v(const float* send, const int64_t* send_counts, float* recv, const int64_t* recv_counts) override {
    std::vector<int> sc(size_), rc(size_), sd(size_), rd(size_);
    int64_t so = 0, ro = 0;
    for (int r = 0; r < size_; ++r) {
      SMT_CHECK(send_counts[r] >= 0 && recv_counts[r] >= 0, "negative all_to_all_v count");
      SMT_CHECK(so + send_counts[r] <= INT_MAX && ro + recv_counts[r] <= INT_MAX,
                "all_to_all_v buffers above 2^31 elements are not supported");
      sc[r] = static_cast<int>(send_counts[r]);
      rc[r] = static_cast<int>(recv_counts[r]);
      sd[r] = static_cast<int>(so);
      rd[r] = static_cast<int>(ro);
      so += send_counts[r];
      ro += recv_counts[r];
    }
    check_mpi(MPI_Alltoallv(send, sc.data(), sd.data(), MPI_FLOAT, recv, rc.data(), rd.data(), MPI_FLOAT, comm_),
              "Alltoallv");
  }
  void exchange_segments(const float* send, const std::vector<Segment>& sends, float* recv,
                         const std::vector<Segment>& recvs) override {
    // Segments to/from self are copied; the rest are nonblocking messages, matched per peer in
    // order (MPI keeps messages between two ranks with the same tag in order).
    std::vector<MPI_Request> requests;
    requests.reserve(sends.size() + recvs.size());
    std::vector<const Segment*> self_sends, self_recvs;
    for (const Segment& r : recvs) {
      SMT_CHECK(r.count >= 0 && r.count <= INT_MAX, "exchange_segments: receive of ", r.count, " floats");
      if (r.peer == rank_) { self_recvs.push_back(&r); continue; }
      if (r.count == 0) continue;
      requests.emplace_back();
      check_mpi(MPI_Irecv(recv + r.offset, static_cast<int>(r.count), MPI_FLOAT, r.peer, kSegmentTag, comm_,
                          &requests.back()), "Irecv");
    }
    for (const Segment& sg : sends) {
      SMT_CHECK(sg.count >= 0 && sg.count <= INT_MAX, "exchange_segments: send of ", sg.count, " floats");
      if (sg.peer == rank_) { self_sends.push_back(&sg); continue; }
      if (sg.count == 0) continue;
      requests.emplace_back();
      check_mpi(MPI_Isend(send + sg.offset, static_cast<int>(sg.count), MPI_FLOAT, sg.peer, kSegmentTag, comm_,
                          &requests.back()), "Isend");
    }
    SMT_CHECK(self_sends.size() == self_recvs.size(), "exchange_segments: ", self_sends.size(),
              " segments to self but ", self_recvs.size(), " from self");
    for (size_t i = 0; i < self_sends.size(); ++i) {
      SMT_CHECK(self_sends[i]->count == self_recvs[i]->count, "exchange_segments: self segment sizes differ");
      if (self_sends[i]->count > 0)
        std::memcpy(recv + self_recvs[i]->offset, send + self_sends[i]->offset,
                    static_cast<size_t>(self_sends[i]->count) * sizeof(float));
    }
    check_mpi(MPI_Waitall(static_cast<int>(requests.size()), requests.data(), MPI_STATUSES_IGNORE), "Waitall");
  }
  void all_to_all(const int64_t* send, int64_t* recv) override {
    check_mpi(MPI_Alltoall(send, 1, MPI_INT64_T, recv, 1, MPI_INT64_T, comm_), "Alltoall");
  }
  std::unique_ptr<Communicator> split(int color, int key) override {
    MPI_Comm sub;
    check_mpi(MPI_Comm_split(comm_, color, key, &sub), "Comm_split");
    return std::make_unique<MpiCommunicator>(sub, true);
  }
  [[noreturn]] void abort(int exit_code) override {
    MPI_Abort(MPI_COMM_WORLD, exit_code);
    std::_Exit(exit_code);
  }

 private:
  void reduce(void* data, int64_t n, MPI_Datatype type, MPI_Op op) {
    int type_size = 0;
    MPI_Type_size(type, &type_size);
    auto* p = static_cast<char*>(data);
    for (int64_t off = 0; off < n; off += INT_MAX) {
      const int chunk = static_cast<int>(std::min<int64_t>(INT_MAX, n - off));
      check_mpi(MPI_Allreduce(MPI_IN_PLACE, p + off * type_size, chunk, type, op, comm_), "Allreduce");
    }
  }

  static constexpr int kSegmentTag = 7301;
  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
  int local_rank_ = 0, local_size_ = 1;
};

}  // namespace

void abort_job_if_parallel(int exit_code) {
  int initialised = 0, finalised = 0;
  MPI_Initialized(&initialised);
  MPI_Finalized(&finalised);
  if (!initialised || finalised) return;
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size > 1) MPI_Abort(MPI_COMM_WORLD, exit_code);
}

std::unique_ptr<Communicator> make_mpi_world_communicator() {
  ensure_mpi_initialised();
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, false);
}

}  // namespace smt
