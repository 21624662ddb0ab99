// A host communicator that accepts device buffers by staging them through pinned host memory
// (CUDA builds only; see communicator.h). For several ranks on one GPU, where NCCL cannot run.
#ifdef SMT_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "core/cuda_check.h"
#include "core/error.h"
#include "parallel/communicator.h"

namespace smt {

namespace {

// Pinned host scratch that grows on demand.
class PinnedBuffer {
 public:
  ~PinnedBuffer() {
    if (ptr_) cudaFreeHost(ptr_);
  }
  void* get(size_t bytes) {
    if (bytes > size_) {
      if (ptr_) SMT_CUDA_CHECK(cudaFreeHost(ptr_));
      ptr_ = nullptr;
      SMT_CUDA_CHECK(cudaMallocHost(&ptr_, bytes));
      size_ = bytes;
    }
    return ptr_;
  }

 private:
  void* ptr_ = nullptr;
  size_t size_ = 0;
};

class StagedCommunicator final : public Communicator {
 public:
  StagedCommunicator(std::unique_ptr<Communicator> host, cudaStream_t stream) : host_(std::move(host)), stream_(stream) {}
  std::string backend() const override { return host_->backend() + "+staged"; }
  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  int local_rank() const override { return host_->local_rank(); }
  int local_size() const override { return host_->local_size(); }

  void all_reduce_sum(float* data, int64_t n) override { in_place(data, n * sizeof(float), [&](void* h) { host_->all_reduce_sum(static_cast<float*>(h), n); }); }
  void all_reduce_sum(double* data, int64_t n) override { in_place(data, n * sizeof(double), [&](void* h) { host_->all_reduce_sum(static_cast<double*>(h), n); }); }
  void all_reduce_max(double* data, int64_t n) override { in_place(data, n * sizeof(double), [&](void* h) { host_->all_reduce_max(static_cast<double*>(h), n); }); }
  void broadcast(void* data, int64_t bytes, int root) override {
    in_place(data, bytes, [&](void* h) { host_->broadcast(h, bytes, root); });
  }
  void barrier() override {
    SMT_CUDA_CHECK(cudaStreamSynchronize(stream_));
    host_->barrier();
  }
  void all_gather(const void* send, void* recv, int64_t bytes_per_rank) override {
    const size_t in = static_cast<size_t>(bytes_per_rank), out = in * static_cast<size_t>(size());
    char* h = static_cast<char*>(scratch_.get(in + out));
    download(h, send, in);
    host_->all_gather(h, h + in, bytes_per_rank);
    upload(recv, h + in, out);
  }
  void all_to_all_v(const float* send, const int64_t* send_counts, float* recv, const int64_t* recv_counts) override {
    int64_t ns = 0, nr = 0;
    for (int r = 0; r < size(); ++r) ns += send_counts[r], nr += recv_counts[r];
    float* h = static_cast<float*>(scratch_.get(static_cast<size_t>(ns + nr) * sizeof(float)));
    download(h, send, static_cast<size_t>(ns) * sizeof(float));
    host_->all_to_all_v(h, send_counts, h + ns, recv_counts);
    upload(recv, h + ns, static_cast<size_t>(nr) * sizeof(float));
  }
  void exchange_segments(const float* send, const std::vector<Segment>& sends, float* recv,
                         const std::vector<Segment>& recvs) override {
    // Stage the spans the segments cover (offsets are kept, so the segment lists stay valid).
    int64_t send_end = 0, recv_end = 0;
    for (const Segment& s : sends) send_end = std::max(send_end, s.offset + s.count);
    for (const Segment& r : recvs) recv_end = std::max(recv_end, r.offset + r.count);
    float* h = static_cast<float*>(scratch_.get(static_cast<size_t>(send_end + recv_end) * sizeof(float)));
    download(h, send, static_cast<size_t>(send_end) * sizeof(float));
    SMT_CUDA_CHECK(cudaMemcpyAsync(h + send_end, recv, static_cast<size_t>(recv_end) * sizeof(float),
                                   cudaMemcpyDeviceToHost, stream_));  // keep what no segment overwrites
    SMT_CUDA_CHECK(cudaStreamSynchronize(stream_));
    host_->exchange_segments(h, sends, h + send_end, recvs);
    upload(recv, h + send_end, static_cast<size_t>(recv_end) * sizeof(float));
  }
  void all_to_all(const int64_t* send, int64_t* recv) override {
    const size_t bytes = static_cast<size_t>(size()) * sizeof(int64_t);
    int64_t* h = static_cast<int64_t*>(scratch_.get(2 * bytes));
    download(h, send, bytes);
    host_->all_to_all(h, h + size());
    upload(recv, h + size(), bytes);
  }
  std::unique_ptr<Communicator> split(int color, int key) override {
    return std::make_unique<StagedCommunicator>(host_->split(color, key), stream_);
  }
  [[noreturn]] void abort(int exit_code) override {
    host_->abort(exit_code);
    std::abort();  // not reached: the host communicator's abort ends the job
  }

 private:
  void download(void* host, const void* device, size_t bytes) {
    SMT_CUDA_CHECK(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, stream_));
    SMT_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void upload(void* device, const void* host, size_t bytes) {
    SMT_CUDA_CHECK(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream_));
    SMT_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the pinned scratch is reused by the next call
  }
  template <typename Fn>
  void in_place(void* device, int64_t bytes, Fn&& fn) {
    void* h = scratch_.get(static_cast<size_t>(bytes));
    download(h, device, static_cast<size_t>(bytes));
    fn(h);
    upload(device, h, static_cast<size_t>(bytes));
  }

  std::unique_ptr<Communicator> host_;
  cudaStream_t stream_;
  PinnedBuffer scratch_;
};

}  // namespace

std::unique_ptr<Communicator> make_staged_communicator(std::unique_ptr<Communicator> host, CUstream_st* compute_stream) {
  return std::make_unique<StagedCommunicator>(std::move(host), compute_stream);
}

}  // namespace smt
#endif  // SMT_CUDA
