// RAII device memory: DeviceBuffer<T> (cudaMalloc / cudaFree, move-only, never managed memory) and
// StreamBuffer<T> (stream-ordered cudaMallocAsync / cudaFreeAsync, for op temporaries that must outlive
// the kernels queued on that stream), plus blocking copy helpers between host vectors and device buffers.
// Invariants: a buffer of 0 elements holds nullptr and allocates nothing; copies check sizes. The copy
// helpers use cudaMemcpy (legacy default stream): they order against blocking streams only, so after
// work on a cudaStreamNonBlocking stream call cudaStreamSynchronize first.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <utility>
#include <vector>

#include "core/cuda_check.h"
#include "core/error.h"

namespace smt {

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : size_(n) {
    if (n > 0) SMT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr_), n * sizeof(T)));
  }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = std::exchange(o.ptr_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }

  T* data() { return ptr_; }
  const T* data() const { return ptr_; }
  size_t size() const { return size_; }
  size_t bytes() const { return size_ * sizeof(T); }
  bool empty() const { return size_ == 0; }

  // Blocking fill with a byte value (0 gives zeros for every arithmetic type).
  void memset_bytes(int value) {
    if (size_ > 0) SMT_CUDA_CHECK(cudaMemset(ptr_, value, bytes()));
  }

 private:
  void release() noexcept {
    if (ptr_ != nullptr) {
      const cudaError_t err = cudaFree(ptr_);
      if (err != cudaSuccess) std::fprintf(stderr, "warning: cudaFree failed: %s\n", cudaGetErrorString(err));
      ptr_ = nullptr;
      size_ = 0;
    }
  }
  T* ptr_ = nullptr;
  size_t size_ = 0;
};

// Stream-ordered temporary: allocated and freed in the order of `stream`, so kernels queued on the
// stream before the destructor may still use it.
template <typename T>
class StreamBuffer {
 public:
  StreamBuffer(size_t n, cudaStream_t stream) : size_(n), stream_(stream) {
    if (n > 0) SMT_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&ptr_), n * sizeof(T), stream));
  }
  ~StreamBuffer() {
    if (ptr_ != nullptr) {
      const cudaError_t err = cudaFreeAsync(ptr_, stream_);
      if (err != cudaSuccess) std::fprintf(stderr, "warning: cudaFreeAsync failed: %s\n", cudaGetErrorString(err));
    }
  }
  StreamBuffer(const StreamBuffer&) = delete;
  StreamBuffer& operator=(const StreamBuffer&) = delete;
  StreamBuffer(StreamBuffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), size_(std::exchange(o.size_, 0)), stream_(o.stream_) {}
  StreamBuffer& operator=(StreamBuffer&&) = delete;

  T* data() { return ptr_; }
  const T* data() const { return ptr_; }
  size_t size() const { return size_; }

 private:
  T* ptr_ = nullptr;
  size_t size_ = 0;
  cudaStream_t stream_ = nullptr;
};

// StreamBuffer allocates from the device's default memory pool, which by default hands its free memory
// back to the system at every synchronisation, so the next large temporary maps memory again (slow). The
// training step synchronises once per layer: call this once per process for the current device (after
// cudaSetDevice) to keep the pool's memory for reuse.
inline void retain_stream_ordered_memory() {
  int device = 0;
  SMT_CUDA_CHECK(cudaGetDevice(&device));
  cudaMemPool_t pool = nullptr;
  SMT_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
  uint64_t keep_all = UINT64_MAX;
  SMT_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_all));
}

// A host -> device copy that is complete on return: cudaMemcpy from pageable memory may return once the
// data is staged, before the DMA lands, and kernels on non-blocking streams are not ordered after the legacy
// stream it runs on; synchronising that stream closes the gap.
inline void blocking_upload(void* device, const void* host, size_t bytes) {
  SMT_CUDA_CHECK(cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice));
  SMT_CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy));
}

// Blocking host -> device copy into a new buffer of n elements / of the vector's size.
template <typename T>
DeviceBuffer<T> copy_to_device(const T* host, size_t n) {
  DeviceBuffer<T> buf(n);
  if (n > 0) blocking_upload(buf.data(), host, n * sizeof(T));
  return buf;
}
template <typename T>
DeviceBuffer<T> copy_to_device(const std::vector<T>& host) {
  return copy_to_device(host.data(), host.size());
}
// Blocking host -> device copy into an existing buffer (sizes must match).
template <typename T>
void copy_to_device(DeviceBuffer<T>& dst, const std::vector<T>& host) {
  SMT_CHECK(dst.size() == host.size(), "copy_to_device: buffer holds ", dst.size(), " elements, host vector ",
            host.size());
  if (!host.empty()) blocking_upload(dst.data(), host.data(), dst.bytes());
}
// Blocking device -> host copy of a whole buffer.
template <typename T>
std::vector<T> copy_to_host(const DeviceBuffer<T>& src) {
  std::vector<T> host(src.size());
  if (!host.empty()) SMT_CUDA_CHECK(cudaMemcpy(host.data(), src.data(), src.bytes(), cudaMemcpyDeviceToHost));
  return host;
}
template <typename T>
std::vector<T> copy_to_host(const T* device, size_t n) {
  std::vector<T> host(n);
  if (n > 0) SMT_CUDA_CHECK(cudaMemcpy(host.data(), device, n * sizeof(T), cudaMemcpyDeviceToHost));
  return host;
}

}  // namespace smt
