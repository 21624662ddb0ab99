// CUDA builder of the attention pattern metadata (see kernels/gpu_attention_pattern.h): the per-query-
// block rule is pattern::pattern_row, the very function build_block_mask runs on the host.
#if defined(SMT_CUDA_EMULATE)
#include "cuda_emu/cub.h"  // the emulated build (tests/cuda_emu)
#else
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#endif

#include <algorithm>
#include <cstdint>

#include "core/cuda_check.h"
#include "core/device_buffer.h"
#include "core/error.h"
#include "kernels/attention_pattern_rule.h"
#include "kernels/gpu_attention_pattern.h"

namespace smt::gpu {

namespace {

constexpr int kThreads = 128;
// Random-draw scratch of all threads together at most this (threads walk the query blocks grid-stride).
constexpr int64_t kScratchBudgetBytes = int64_t{64} << 20;

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// counts[qb] = entries of query block qb for qb < num_blocks; counts[num_blocks] = 0 (so that the
// exclusive scan of num_blocks + 1 counts ends with the total). Thread t uses
// scratch[t * scratch_words, (t + 1) * scratch_words) for every query block it walks.
__global__ void count_entries_kernel(AttnPatternConfig config, int seq_len, int layer, int num_blocks,
                                     int64_t scratch_words, int32_t* scratch, int64_t* counts) {
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int32_t* my_scratch = scratch_words > 0 ? scratch + thread * scratch_words : nullptr;
  for (int64_t qb = thread; qb <= num_blocks; qb += stride) {
    counts[qb] = qb == num_blocks ? 0
                                  : pattern::pattern_row(config, seq_len, layer, static_cast<int>(qb), my_scratch,
                                                         nullptr, nullptr, nullptr);
  }
}

// Fills the entries of query block qb at row_ptr64[qb] (the scan of the counts), row_ptr as int32, and
// per entry its query block and its own index (the values the radix sort carries). A row whose fill
// count differs from its scanned count (impossible unless the rule were not deterministic) raises *bad
// and writes no row or index (those stay 0 from the memset: the later kernels read in bounds).
__global__ void fill_entries_kernel(AttnPatternConfig config, int seq_len, int layer, int num_blocks,
                                    int64_t scratch_words, int32_t* scratch, const int64_t* row_ptr64,
                                    int32_t* row_ptr, int32_t* cols, uint8_t* kinds, uint8_t* fulls,
                                    int32_t* row_of_entry, int32_t* entry_index, int* bad) {
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int32_t* my_scratch = scratch_words > 0 ? scratch + thread * scratch_words : nullptr;
  for (int64_t qb = thread; qb <= num_blocks; qb += stride) {
    const int64_t start = row_ptr64[qb];
    row_ptr[qb] = static_cast<int32_t>(start);
    if (qb == num_blocks) continue;
    const int count = pattern::pattern_row(config, seq_len, layer, static_cast<int>(qb), my_scratch, cols + start,
                                           kinds + start, fulls + start);
    if (count != row_ptr64[qb + 1] - start) {
      atomicExch(bad, 1);
      continue;
    }
    for (int i = 0; i < count; ++i) {
      row_of_entry[start + i] = static_cast<int32_t>(qb);
      entry_index[start + i] = static_cast<int32_t>(start + i);
    }
  }
}

// kv_row_idx[t] = query block of the entry sorted to slot t.
__global__ void transposed_rows_kernel(const int32_t* kv_entry, const int32_t* row_of_entry, int64_t nnz,
                                       int32_t* kv_row_idx) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t < nnz) kv_row_idx[t] = row_of_entry[kv_entry[t]];
}

// kv_col_ptr[kb] = first slot of the sorted key blocks holding a value >= kb (lower bound), kb in
// [0, num_blocks]; kv_col_ptr[num_blocks] = nnz.
__global__ void transposed_col_ptr_kernel(const uint32_t* sorted_cols, int64_t nnz, int num_blocks,
                                          int32_t* kv_col_ptr) {
  const int64_t kb = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (kb > num_blocks) return;
  int64_t lo = 0, hi = nnz;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (static_cast<int64_t>(sorted_cols[mid]) < kb)
      lo = mid + 1;
    else
      hi = mid;
  }
  kv_col_ptr[kb] = static_cast<int32_t>(lo);
}

}  // namespace

DeviceBlockMask build_block_mask_on_device(const AttnPatternConfig& config, int seq_len, int layer,
                                           cudaStream_t stream) {
  validate_attn_pattern(config, seq_len, layer);
  const int64_t nb64 = pattern::num_blocks_of(seq_len, config.block_size);
  const int nb = static_cast<int>(nb64);  // <= seq_len
  const int64_t scratch_words = pattern::random_draw_scratch_words(config, nb64);

  // One thread per query block (and one for the end of the CSR), fewer when the random-draw scratch of
  // so many threads would pass kScratchBudgetBytes (the threads then walk the query blocks grid-stride).
  int64_t row_threads = nb64 + 1;
  if (scratch_words > 0)
    row_threads = pattern::max64(kThreads, pattern::min64(row_threads, kScratchBudgetBytes / (4 * scratch_words)));
  const unsigned row_grid = blocks_for(row_threads);
  StreamBuffer<int32_t> scratch(static_cast<size_t>(scratch_words * row_grid * kThreads), stream);

  // Pass 1: count per query block, exclusive scan over num_blocks + 1 counts.
  StreamBuffer<int64_t> counts(static_cast<size_t>(nb64 + 1), stream);
  StreamBuffer<int64_t> row_ptr64(static_cast<size_t>(nb64 + 1), stream);
  count_entries_kernel<<<row_grid, kThreads, 0, stream>>>(config, seq_len, layer, nb, scratch_words, scratch.data(),
                                                          counts.data());
  SMT_CUDA_CHECK_LAUNCH();
  size_t scan_bytes = 0;
  SMT_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, counts.data(), row_ptr64.data(), nb64 + 1, stream));
  {
    StreamBuffer<uint8_t> scan_temp(std::max<size_t>(scan_bytes, 1), stream);  // non-null: null means "query"
    SMT_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(scan_temp.data(), scan_bytes, counts.data(), row_ptr64.data(),
                                                 nb64 + 1, stream));
  }
  int64_t nnz = 0;
  SMT_CUDA_CHECK(
      cudaMemcpyAsync(&nnz, row_ptr64.data() + nb64, sizeof(int64_t), cudaMemcpyDeviceToHost, stream));
  SMT_CUDA_CHECK(cudaStreamSynchronize(stream));
  SMT_CHECK(nnz >= 0 && nnz <= INT32_MAX, "build_block_mask_on_device: ", nnz,
            " block entries (the lists are int32; at most 2^31 - 1)");

  DeviceBlockMask d;
  d.seq_len = seq_len;
  d.block_size = config.block_size;
  d.num_blocks = nb;
  d.causal = config.causal;
  d.window = config.window;
  d.nnz = nnz;
  d.q_row_ptr = DeviceBuffer<int32_t>(static_cast<size_t>(nb64 + 1));
  d.q_col_idx = DeviceBuffer<int32_t>(static_cast<size_t>(nnz));
  d.q_kind = DeviceBuffer<uint8_t>(static_cast<size_t>(nnz));
  d.q_is_full = DeviceBuffer<uint8_t>(static_cast<size_t>(nnz));
  d.kv_col_ptr = DeviceBuffer<int32_t>(static_cast<size_t>(nb64 + 1));
  d.kv_row_idx = DeviceBuffer<int32_t>(static_cast<size_t>(nnz));
  d.kv_entry = DeviceBuffer<int32_t>(static_cast<size_t>(nnz));

  // Pass 2: fill.
  StreamBuffer<int32_t> row_of_entry(static_cast<size_t>(nnz), stream);
  StreamBuffer<int32_t> entry_index(static_cast<size_t>(nnz), stream);
  StreamBuffer<int> bad(1, stream);
  SMT_CUDA_CHECK(cudaMemsetAsync(bad.data(), 0, sizeof(int), stream));
  if (nnz > 0) {
    SMT_CUDA_CHECK(cudaMemsetAsync(row_of_entry.data(), 0, static_cast<size_t>(nnz) * sizeof(int32_t), stream));
    SMT_CUDA_CHECK(cudaMemsetAsync(entry_index.data(), 0, static_cast<size_t>(nnz) * sizeof(int32_t), stream));
  }
  fill_entries_kernel<<<row_grid, kThreads, 0, stream>>>(
      config, seq_len, layer, nb, scratch_words, scratch.data(), row_ptr64.data(), d.q_row_ptr.data(),
      d.q_col_idx.data(), d.q_kind.data(), d.q_is_full.data(), row_of_entry.data(), entry_index.data(), bad.data());
  SMT_CUDA_CHECK_LAUNCH();

  // Transposed lists: stable sort of the entry indices by key block (keys as unsigned: all >= 0).
  StreamBuffer<uint32_t> sorted_cols(static_cast<size_t>(nnz), stream);
  if (nnz > 0) {
    int end_bit = 1;
    while (end_bit < 32 && (int64_t{1} << end_bit) < nb64) ++end_bit;  // key blocks < 2^end_bit
    const uint32_t* keys_in = reinterpret_cast<const uint32_t*>(d.q_col_idx.data());
    size_t sort_bytes = 0;
    SMT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, keys_in, sorted_cols.data(),
                                                   entry_index.data(), d.kv_entry.data(), nnz, 0, end_bit, stream));
    StreamBuffer<uint8_t> sort_temp(std::max<size_t>(sort_bytes, 1), stream);  // non-null: null means "query"
    SMT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_temp.data(), sort_bytes, keys_in, sorted_cols.data(),
                                                   entry_index.data(), d.kv_entry.data(), nnz, 0, end_bit, stream));
    transposed_rows_kernel<<<blocks_for(nnz), kThreads, 0, stream>>>(d.kv_entry.data(), row_of_entry.data(), nnz,
                                                                      d.kv_row_idx.data());
    SMT_CUDA_CHECK_LAUNCH();
  }
  transposed_col_ptr_kernel<<<blocks_for(nb64 + 1), kThreads, 0, stream>>>(sorted_cols.data(), nnz, nb,
                                                                            d.kv_col_ptr.data());
  SMT_CUDA_CHECK_LAUNCH();

  int bad_host = 0;
  SMT_CUDA_CHECK(cudaMemcpyAsync(&bad_host, bad.data(), sizeof(int), cudaMemcpyDeviceToHost, stream));
  SMT_CUDA_CHECK(cudaStreamSynchronize(stream));
  SMT_CHECK(bad_host == 0, "build_block_mask_on_device: a query block filled a different number of entries than "
                           "it counted");
  return d;
}

}  // namespace smt::gpu
