// The two CUB device algorithms the project uses, for the emulated CUDA build: the same signatures and
// results (a query call with null temp storage sets the bytes; the scan is exclusive; the radix sort of
// pairs is stable, over bits [begin_bit, end_bit) of the unsigned keys), computed on the host.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <vector>

#include "cuda_emu/state.h"

namespace cub {

struct DeviceScan {
  template <typename In, typename Out>
  static cudaError_t ExclusiveSum(void* temp, size_t& temp_bytes, In in, Out out, int64_t n, cudaStream_t = nullptr) {
    if (temp == nullptr) {
      temp_bytes = 256;
      return cudaSuccess;
    }
    if (n > 0 && (!::smt::emu::is_device_pointer(&in[0]) || !::smt::emu::is_device_pointer(&out[n - 1])))
      return cudaErrorInvalidValue;
    using T = std::decay_t<decltype(out[0])>;
    T run{};
    for (int64_t i = 0; i < n; ++i) {
      const T x = in[i];
      out[i] = run;
      run += x;
    }
    return cudaSuccess;
  }
};

struct DeviceRadixSort {
  template <typename K, typename V>
  static cudaError_t SortPairs(void* temp, size_t& temp_bytes, const K* keys_in, K* keys_out, const V* values_in,
                               V* values_out, int64_t n, int begin_bit = 0, int end_bit = int(sizeof(K) * 8),
                               cudaStream_t = nullptr) {
    if (temp == nullptr) {
      temp_bytes = 256;
      return cudaSuccess;
    }
    if (n <= 0) return cudaSuccess;
    for (const void* p : {static_cast<const void*>(keys_in), static_cast<const void*>(keys_out),
                          static_cast<const void*>(values_in), static_cast<const void*>(values_out)})
      if (!::smt::emu::is_device_pointer(p)) return cudaErrorInvalidValue;
    const uint64_t mask = (end_bit >= 64 ? ~0ull : ((1ull << end_bit) - 1)) & ~((1ull << begin_bit) - 1);
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return (uint64_t(keys_in[a]) & mask) < (uint64_t(keys_in[b]) & mask);
    });
    std::vector<K> k(static_cast<size_t>(n));
    std::vector<V> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      k[i] = keys_in[order[i]];
      v[i] = values_in[order[i]];
    }
    std::copy(k.begin(), k.end(), keys_out);
    std::copy(v.begin(), v.end(), values_out);
    return cudaSuccess;
  }
};

}  // namespace cub
