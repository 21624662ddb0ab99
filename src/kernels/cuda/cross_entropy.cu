// CUDA softmax cross-entropy: one block per row (max, exponentials summed in double, probs normalised,
// row loss in double), then one block sums the row losses in a fixed order (deterministic); backward is
// elementwise. Invariants: rows with target < 0 are ignored; a target >= C raises a device flag that
// the host turns into smt::Error after the kernels.
#include "kernels/cuda/common.cuh"
#include "kernels/gpu_ops.h"

namespace smt::gpu {
namespace {

__global__ void cross_entropy_rows_kernel(float* probs, double* row_loss, int* bad_target, const float* logits,
                                          const int32_t* targets, int64_t C) {
  __shared__ float fscratch[32];
  __shared__ double dscratch[32];
  const int64_t i = blockIdx.x;
  const float* z = logits + i * C;
  float* p = probs + i * C;
  float mx = -INFINITY;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) mx = fmaxf(mx, z[c]);
  mx = detail::block_max(mx, fscratch);
  double sum = 0.0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const float e = expf(z[c] - mx);
    p[c] = e;
    sum += double(e);
  }
  sum = detail::block_sum(sum, dscratch);
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) p[c] *= inv;
  if (threadIdx.x == 0) {
    const int32_t tgt = targets[i];
    double loss = 0.0;
    if (tgt >= C) {
      atomicExch(bad_target, 1);
    } else if (tgt >= 0) {
      loss = log(sum) - (double(z[tgt]) - double(mx));
    }
    row_loss[i] = loss;
  }
}

// One block: result[0] = sum of row_loss, count[0] = rows with target >= 0.
__global__ void cross_entropy_sum_kernel(double* result, long long* count, const double* row_loss,
                                         const int32_t* targets, int64_t M) {
  __shared__ double dscratch[32];
  __shared__ long long cscratch[32];
  double s = 0.0;
  long long c = 0;
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) {
    s += row_loss[i];
    c += targets[i] >= 0 ? 1 : 0;
  }
  s = detail::block_sum(s, dscratch);
  c = detail::block_sum(c, cscratch);
  if (threadIdx.x == 0) {
    result[0] = s;
    count[0] = c;
  }
}

__global__ void cross_entropy_backward_kernel(float* dlogits, const float* probs, const int32_t* targets, int64_t M,
                                              int64_t C, float scale) {
  const int64_t n = M * C;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = idx / C, c = idx - i * C;
    const int32_t tgt = targets[i];
    if (tgt < 0) continue;
    float g = dlogits[idx] + scale * probs[idx];
    if (c == tgt) g -= scale;
    dlogits[idx] = g;
  }
}

}  // namespace

double cross_entropy_forward(float* probs, const float* logits, const int32_t* targets, int64_t M, int64_t C,
                             int64_t* num_valid, cudaStream_t stream) {
  if (M <= 0) {
    if (num_valid != nullptr) *num_valid = 0;
    return 0.0;
  }
  SMT_CHECK(C >= 1, "gpu::cross_entropy_forward: need C >= 1, got ", C);
  SMT_CHECK(M <= 2147483647LL, "gpu::cross_entropy_forward: too many rows ", M);
  StreamBuffer<double> row_loss(static_cast<size_t>(M), stream);
  StreamBuffer<double> result(1, stream);
  StreamBuffer<long long> count(1, stream);
  StreamBuffer<int> bad(1, stream);
  SMT_CUDA_CHECK(cudaMemsetAsync(bad.data(), 0, sizeof(int), stream));
  cross_entropy_rows_kernel<<<static_cast<unsigned>(M), detail::kThreads, 0, stream>>>(probs, row_loss.data(),
                                                                                      bad.data(), logits, targets, C);
  SMT_CUDA_CHECK_LAUNCH();
  cross_entropy_sum_kernel<<<1, 1024, 0, stream>>>(result.data(), count.data(), row_loss.data(), targets, M);
  SMT_CUDA_CHECK_LAUNCH();
  double total = 0.0;
  long long valid = 0;
  int bad_host = 0;
  SMT_CUDA_CHECK(cudaMemcpyAsync(&total, result.data(), sizeof(double), cudaMemcpyDeviceToHost, stream));
  SMT_CUDA_CHECK(cudaMemcpyAsync(&valid, count.data(), sizeof(long long), cudaMemcpyDeviceToHost, stream));
  SMT_CUDA_CHECK(cudaMemcpyAsync(&bad_host, bad.data(), sizeof(int), cudaMemcpyDeviceToHost, stream));
  SMT_CUDA_CHECK(cudaStreamSynchronize(stream));
  SMT_CHECK(bad_host == 0, "gpu::cross_entropy_forward: a target is >= number of classes ", C);
  if (num_valid != nullptr) *num_valid = static_cast<int64_t>(valid);
  return total;
}

void cross_entropy_backward(float* dlogits, const float* probs, const int32_t* targets, int64_t M, int64_t C,
                            float scale, cudaStream_t stream) {
  if (M <= 0 || C <= 0 || dlogits == nullptr) return;
  cross_entropy_backward_kernel<<<detail::grid_for(M * C), detail::kThreads, 0, stream>>>(dlogits, probs, targets, M,
                                                                                         C, scale);
  SMT_CUDA_CHECK_LAUNCH();
}

}  // namespace smt::gpu
