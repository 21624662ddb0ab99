// The attention pattern metadata built on the GPU: the same DeviceBlockMask that
// gpu::upload_block_mask(build_block_mask(config, seq_len, layer)) gives, bit for bit, without the
// O(num_blocks^2) host work and the uploads. Both builders call pattern::pattern_row
// (attention_pattern_rule.h) for each query block.
#pragma once
#include <cuda_runtime.h>

#include "kernels/attention_pattern.h"
#include "kernels/gpu_ops.h"

namespace smt::gpu {

// One thread per query block counts its entries (pattern_row without outputs), an exclusive scan
// (cub::DeviceScan) gives q_row_ptr, one small device->host copy gives nnz, the same threads fill
// q_col_idx / q_kind / q_is_full; the transposed lists come from a stable radix sort of the entries by
// key block (cub::DeviceRadixSort::SortPairs over entry indices: inside each key block the query blocks
// stay ascending) and a binary search per key block for kv_col_ptr. Work runs on `stream`; the function
// synchronises it before returning, so the mask is ready for any stream. Throws as build_block_mask for
// a bad config (UsageError / Error) and smt::Error on a CUDA failure or more than 2^31 - 1 entries.
DeviceBlockMask build_block_mask_on_device(const AttnPatternConfig& config, int seq_len, int layer,
                                           cudaStream_t stream);

}  // namespace smt::gpu
