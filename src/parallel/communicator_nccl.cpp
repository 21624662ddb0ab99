// NCCL communicator on device buffers (CUDA builds only; see communicator.h). Bootstrapped by
// broadcasting the ncclUniqueId over a host communicator; collectives on an own stream ordered
// against the caller's compute stream by events.
#ifdef SMT_CUDA
#include <cuda_runtime.h>
#include <nccl.h>

#include <climits>
#include <cstdlib>
#include <vector>

#include "core/cuda_check.h"
#include "core/error.h"
#include "parallel/communicator.h"

namespace smt {

namespace {

void check_nccl(ncclResult_t rc, const char* what) {
  if (rc != ncclSuccess) throw Error(std::string("NCCL ") + what + " failed: " + ncclGetErrorString(rc));
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int device, cudaStream_t compute, int local_rank, int local_size)
      : comm_(comm), device_(device), compute_(compute), local_rank_(local_rank), local_size_(local_size) {
    check_nccl(ncclCommUserRank(comm_, &rank_), "CommUserRank");
    check_nccl(ncclCommCount(comm_, &size_), "CommCount");
    SMT_CUDA_CHECK(cudaSetDevice(device_));
    SMT_CUDA_CHECK(cudaStreamCreateWithFlags(&comm_stream_, cudaStreamNonBlocking));
    SMT_CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
    SMT_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  }
  ~NcclCommunicator() override {
    cudaStreamSynchronize(comm_stream_);
    ncclCommDestroy(comm_);
    if (barrier_scratch_ != nullptr) cudaFree(barrier_scratch_);
    cudaEventDestroy(ready_);
    cudaEventDestroy(done_);
    cudaStreamDestroy(comm_stream_);
  }
  std::string backend() const override { return "nccl"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }

  void all_reduce_sum(float* data, int64_t n) override { reduce(data, n, ncclFloat32, ncclSum); }
  void all_reduce_sum(double* data, int64_t n) override { reduce(data, n, ncclFloat64, ncclSum); }
  void all_reduce_max(double* data, int64_t n) override { reduce(data, n, ncclFloat64, ncclMax); }
  void all_gather(const void* send, void* recv, int64_t bytes_per_rank) override {
    ordered([&] {
      check_nccl(ncclAllGather(send, recv, static_cast<size_t>(bytes_per_rank), ncclInt8, comm_, comm_stream_),
                 "AllGather");
    });
  }
  void broadcast(void* data, int64_t bytes, int root) override {
    ordered([&] {
      check_nccl(ncclBroadcast(data, data, static_cast<size_t>(bytes), ncclInt8, root, comm_, comm_stream_), "Broadcast");
    });
  }
  void barrier() override {
    // One element: NCCL drops zero-count collectives, which would then synchronise nothing.
    if (barrier_scratch_ == nullptr) SMT_CUDA_CHECK(cudaMalloc(&barrier_scratch_, sizeof(float)));
    ordered([&] {
      check_nccl(ncclAllReduce(barrier_scratch_, barrier_scratch_, 1, ncclFloat32, ncclSum, comm_, comm_stream_),
                 "AllReduce (barrier)");
    });
    SMT_CUDA_CHECK(cudaStreamSynchronize(comm_stream_));
  }
  void all_to_all_v(const float* send, const int64_t* send_counts, float* recv, const int64_t* recv_counts) override {
    std::vector<Segment> sends(size_), recvs(size_);
    int64_t so = 0, ro = 0;
    for (int r = 0; r < size_; ++r) {
      sends[r] = Segment{r, so, send_counts[r]};
      recvs[r] = Segment{r, ro, recv_counts[r]};
      so += send_counts[r];
      ro += recv_counts[r];
    }
    exchange_segments(send, sends, recv, recvs);
  }
  void exchange_segments(const float* send, const std::vector<Segment>& sends, float* recv,
                         const std::vector<Segment>& recvs) override {
    // One NCCL group of sends and receives; per peer, segments are matched in order.
    ordered([&] {
      check_nccl(ncclGroupStart(), "GroupStart");
      for (const Segment& r : recvs)
        if (r.count > 0)
          check_nccl(ncclRecv(recv + r.offset, static_cast<size_t>(r.count), ncclFloat32, r.peer, comm_, comm_stream_),
                     "Recv");
      for (const Segment& s : sends)
        if (s.count > 0)
          check_nccl(ncclSend(send + s.offset, static_cast<size_t>(s.count), ncclFloat32, s.peer, comm_, comm_stream_),
                     "Send");
      check_nccl(ncclGroupEnd(), "GroupEnd");
    });
  }
  void all_to_all(const int64_t* send, int64_t* recv) override {
    ordered([&] {
      check_nccl(ncclGroupStart(), "GroupStart");
      for (int r = 0; r < size_; ++r) {
        check_nccl(ncclRecv(recv + r, 1, ncclInt64, r, comm_, comm_stream_), "Recv");
        check_nccl(ncclSend(send + r, 1, ncclInt64, r, comm_, comm_stream_), "Send");
      }
      check_nccl(ncclGroupEnd(), "GroupEnd");
    });
  }
  std::unique_ptr<Communicator> split(int color, int key) override {
    ncclComm_t sub = nullptr;
    check_nccl(ncclCommSplit(comm_, color, key, &sub, nullptr), "CommSplit");
    return std::make_unique<NcclCommunicator>(sub, device_, compute_, local_rank_, local_size_);
  }
  [[noreturn]] void abort(int exit_code) override {
    ncclCommAbort(comm_);
    abort_job_if_parallel(exit_code);
    std::_Exit(exit_code);
  }

 private:
  // compute stream -> (event) -> comm stream: op -> (event) -> compute stream.
  template <typename Op>
  void ordered(Op&& op) {
    SMT_CUDA_CHECK(cudaEventRecord(ready_, compute_));
    SMT_CUDA_CHECK(cudaStreamWaitEvent(comm_stream_, ready_, 0));
    op();
    SMT_CUDA_CHECK(cudaEventRecord(done_, comm_stream_));
    SMT_CUDA_CHECK(cudaStreamWaitEvent(compute_, done_, 0));
  }
  void reduce(void* data, int64_t n, ncclDataType_t type, ncclRedOp_t op) {
    ordered([&] {
      check_nccl(ncclAllReduce(data, data, static_cast<size_t>(n), type, op, comm_, comm_stream_), "AllReduce");
    });
  }

  ncclComm_t comm_;
  int device_;
  cudaStream_t compute_;
  cudaStream_t comm_stream_ = nullptr;
  cudaEvent_t ready_ = nullptr, done_ = nullptr;
  float* barrier_scratch_ = nullptr;  // barrier(): a one-element all-reduce (contents irrelevant)
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, int device, CUstream_st* compute_stream) {
  SMT_CUDA_CHECK(cudaSetDevice(device));
  ncclUniqueId id{};
  if (bootstrap.rank() == 0) check_nccl(ncclGetUniqueId(&id), "GetUniqueId");
  bootstrap.broadcast(&id, sizeof id, 0);  // host communicator: id is host memory
  ncclComm_t comm = nullptr;
  check_nccl(ncclCommInitRank(&comm, bootstrap.size(), id, bootstrap.rank()), "CommInitRank");
  return std::make_unique<NcclCommunicator>(comm, device, compute_stream, bootstrap.local_rank(),
                                            bootstrap.local_size());
}

}  // namespace smt
#endif  // SMT_CUDA
