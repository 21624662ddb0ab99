// Block-sparse FlashAttention-2 kernels (bf16 in, fp32 accumulate) over a BlockMask, on mma.sync tensor cores.
//
// Building blocks (sm_80 and later): mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, ldmatrix (.x4, plain
// and .trans) from shared memory into MMA fragments, cp.async (16 bytes, zero-fill past the sequence end) into
// double-buffered shared memory, exp2 with the log2(e)-scaled softmax scale.
//
// Tiling. Mask blocks (size bs, a multiple of 64) are cut into tiles that never straddle two blocks:
//  * forward and deterministic dq: one CTA per (query tile of BM = 16 * WARPS rows, head, batch); WARPS = 8
//    (BM = 128) when bs % 128 == 0, else 4 (BM = 64); warp w owns query rows [16w, 16w + 16) of the tile.
//    The CTA walks the key blocks of its query block's list (q_row_ptr / q_col_idx) in key sub-tiles of
//    BN = 64 keys, skipping sub-tiles that hold no allowed pair (causal corner, outside the window).
//  * dk/dv: one CTA per (key tile of 16 * WARPS keys, head, batch); warp w owns keys [16w, 16w + 16); the CTA
//    walks the query blocks of the transposed list (kv_col_ptr / kv_row_idx / kv_entry) in query sub-tiles of
//    kBwdM = 64 rows and computes S^T = K Q^T, P^T, dP^T = V dO^T, dS^T per warp (each warp's gradients stay
//    in its registers: no cross-warp reduction for dk/dv). In the atomic dq mode dS^T also goes to shared
//    memory and the CTA adds dS K into fp32 dq with atomicAdd.
// Shared memory (bf16 rows padded to hd + 8 elements = a 16-byte shift per row, so the 8 row addresses of an
// ldmatrix 8x8 matrix and the 4-byte fragment stores hit distinct banks; row starts stay 16-byte aligned):
//   forward  : sQ [BM][hd+8] | sK [2][64][hd+8] | sV [2][64][hd+8]      (sQ reused to stage out for 16-byte stores)
//   dq       : sQ [BM][hd+8] | sdO [BM][hd+8] | sK [2][64][hd+8] | sV [2][64][hd+8]
//   dk/dv    : sK [BN][hd+8] | sV [BN][hd+8] | sQ [2][64][hd+8] | sdO [2][64][hd+8] | sdS [BN][64+8] (atomic dq)
//              | sLse [2][64] | sD [2][64]  (fp32)
// Pipeline (all three kernels): the tile after the current one is issued with cp.async into the other stage
// before the current one is computed; cp.async.wait_group 1 + __syncthreads make the current stage visible;
// a trailing __syncthreads lets the next iteration overwrite the stage just read.
// Schedule (src/kernels/flash_tiles.h, shared with a CPU test of its coverage): seek_key_tile / seek_query_tile.
// Masks: a sub-tile gets the element mask (causal, window |q - k| <= w for kWindow entries, key validity bits)
// ONLY when its entry is partial and the sub-tile is not entirely inside the allowed region, or when one of
// its keys is padding or past the sequence end (one 64-bit validity word per 64 keys). Masked scores are
// -inf; a row whose running max is still -inf uses 0 as the exponent base, so exp2 gives 0, never NaN.
// Invariants: query rows and keys past N are zero-filled in shared memory and never stored; in the backward
// a query row past N or with lse = -inf gets lse2 = +inf, so its P (hence dS) is exactly 0; every output
// element is written by one thread (dq in the atomic mode: fp32 atomics, order not fixed).
// Tests: the device code (flash_attention_kernels.cuh) also runs on the CPU under a warp-level emulation
// (tests/unit/test_flash_emulated.cpp); the schedule has its own CPU test (test_flash_tiles.cpp); the GPU test
// is tests/gpu/test_gpu_flash_attention.cpp. Not here yet: a wgmma + TMA variant for sm_90 (this one is the
// mma.sync path that runs on sm_80 and later), and any tuning from GPU measurements.
#include <cmath>
#include <mutex>
#include <set>
#include <utility>

#include "core/device_buffer.h"
#include "kernels/cuda/common.cuh"
#include "kernels/flash_attention.h"
#include "kernels/cuda/flash_attention_kernels.cuh"
#include "kernels/flash_tiles.h"

namespace smt::gpu {
namespace {

using namespace flash_impl;  // kernels, FlashArgs, MaskArgs, tile constants

// dq_acc += scratch; dq = bf16(scratch) (atomic mode with a bf16 dq).
__global__ void flash_dq_finish_kernel(bf16* __restrict__ dq, float* __restrict__ dq_acc,
                                       const float* __restrict__ scratch, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float x = scratch[i];
    if (dq_acc != nullptr) dq_acc[i] += x;
    if (dq != nullptr) dq[i] = __float2bfloat16_rn(x);
  }
}

// bits[b][w] for 64-key groups: bit j = (64 w + j < N) && key_valid[b, 64 w + j].
__global__ void flash_key_bits_kernel(uint64_t* __restrict__ bits, const uint8_t* __restrict__ key_valid, int64_t B,
                                      int N, int words) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= B * words) return;
  const int64_t b = i / words;
  const int k0 = static_cast<int>(i % words) * 64;
  uint64_t w = 0;
  for (int j = 0; j < 64 && k0 + j < N; ++j)
    if (key_valid[b * N + k0 + j] != 0) w |= 1ull << j;
  bits[i] = w;
}

// ---- host side ----

// Raises a kernel's dynamic shared memory limit once per (kernel, device): the attribute calls are not repeated
// on every launch (the B3 rows at 4k tokens take a fraction of a millisecond).
template <typename Kernel>
void prepare_kernel(Kernel kernel, size_t bytes, const char* who) {
  static std::mutex mu;
  static std::set<std::pair<const void*, int>> done;
  int dev = 0;
  SMT_CUDA_CHECK(cudaGetDevice(&dev));
  const std::pair<const void*, int> key(reinterpret_cast<const void*>(kernel), dev);
  std::lock_guard<std::mutex> lock(mu);
  if (done.count(key) != 0) return;
  int optin = 0;
  SMT_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  SMT_CHECK(bytes <= static_cast<size_t>(optin), who, ": needs ", bytes, " bytes of shared memory per block, the device allows ",
            optin);
  SMT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  done.insert(key);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

void check_common(const DeviceBlockMask& mask, int64_t B, int64_t H, int64_t hd, float scale, const char* who) {
  SMT_CHECK(hd == 64 || hd == 128, who, ": head dim must be 64 or 128, got ", hd);
  SMT_CHECK(mask.block_size > 0 && mask.num_blocks > 0 && mask.seq_len > 0, who, ": mask not uploaded");
  SMT_CHECK(mask.block_size % 64 == 0, who, ": mask block size must be a multiple of 64, got ", mask.block_size);
  SMT_CHECK(B >= 0 && B <= 65535 && H >= 0 && H <= 65535, who, ": B and H must be in [0, 65535], got B=", B, " H=", H);
  SMT_CHECK(scale > 0.0f && std::isfinite(scale), who, ": scale must be positive and finite, got ", scale);
  SMT_CHECK(int64_t(mask.num_blocks) * (mask.block_size / 64) <= INT32_MAX, who, ": too many tiles");
}

int warps_for(const DeviceBlockMask& mask) { return flash::warps_for_block(mask.block_size); }

MaskArgs mask_args(const DeviceBlockMask& mask, const uint64_t* key_bits) {
  MaskArgs m;
  m.q_row_ptr = mask.q_row_ptr.data();
  m.q_col_idx = mask.q_col_idx.data();
  m.q_kind = mask.q_kind.data();
  m.q_is_full = mask.q_is_full.data();
  m.kv_col_ptr = mask.kv_col_ptr.data();
  m.kv_row_idx = mask.kv_row_idx.data();
  m.kv_entry = mask.kv_entry.data();
  m.key_bits = key_bits;
  m.key_words = (mask.seq_len + 63) / 64;
  m.N = mask.seq_len;
  m.bs = mask.block_size;
  m.causal = mask.causal ? 1 : 0;
  m.window = mask.window;
  return m;
}

// Key validity bits when key_valid is given (else the kernels derive them from N).
struct KeyBits {
  KeyBits(const uint8_t* key_valid, int64_t B, int N, cudaStream_t stream)
      : buf(key_valid != nullptr ? size_t(B) * ((N + 63) / 64) : 0, stream) {
    if (key_valid == nullptr || B == 0) return;
    const int words = (N + 63) / 64;
    const int64_t n = B * words;
    flash_key_bits_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream>>>(buf.data(), key_valid, B, N,
                                                                                      words);
    SMT_CUDA_CHECK_LAUNCH();
  }
  const uint64_t* data() const { return buf.size() > 0 ? buf.data() : nullptr; }
  StreamBuffer<uint64_t> buf;
};

// Every flash kernel runs one CTA of WARPS warps per (16 * WARPS-row tile of a mask block, head, batch row).
template <int WARPS>
void launch_over_tiles(void (*kernel)(FlashArgs), size_t smem_bytes, const char* who, const FlashArgs& args,
                       const DeviceBlockMask& mask, int64_t B, int64_t H, cudaStream_t stream) {
  prepare_kernel(kernel, smem_bytes, who);
  FlashArgs a = args;
  a.tiles_per_block = mask.block_size / (16 * WARPS);
  const dim3 grid(static_cast<unsigned>(int64_t(mask.num_blocks) * a.tiles_per_block), static_cast<unsigned>(H),
                  static_cast<unsigned>(B));
  kernel<<<grid, WARPS * 32, smem_bytes, stream>>>(a);
  SMT_CUDA_CHECK_LAUNCH();
}

template <int HD, int WARPS>
void launch_fwd(const FlashArgs& args, const DeviceBlockMask& mask, int64_t B, int64_t H, cudaStream_t stream) {
  launch_over_tiles<WARPS>(flash_fwd_kernel<HD, WARPS>, fwd_smem_bytes<HD, WARPS>(), "gpu::flash_attention_forward",
                           args, mask, B, H, stream);
}

template <int HD, int WARPS, bool ATOMIC_DQ>
void launch_dkv(const FlashArgs& args, const DeviceBlockMask& mask, int64_t B, int64_t H, cudaStream_t stream) {
  launch_over_tiles<WARPS>(flash_bwd_dkv_kernel<HD, WARPS, ATOMIC_DQ>, dkv_smem_bytes<HD, WARPS, ATOMIC_DQ>(),
                           "gpu::flash_attention_backward (dk/dv)", args, mask, B, H, stream);
}

template <int HD, int WARPS>
void launch_dq(const FlashArgs& args, const DeviceBlockMask& mask, int64_t B, int64_t H, cudaStream_t stream) {
  launch_over_tiles<WARPS>(flash_bwd_dq_kernel<HD, WARPS>, dq_smem_bytes<HD, WARPS>(),
                           "gpu::flash_attention_backward (dq)", args, mask, B, H, stream);
}

template <int HD, int WARPS>
void run_backward(const FlashArgs& a, const DeviceBlockMask& mask, int64_t B, int64_t H, bool want_dkv, bool want_dq,
                  FlashDqMode mode, cudaStream_t stream) {
  if (want_dq && mode == FlashDqMode::kAtomic) {
    launch_dkv<HD, WARPS, true>(a, mask, B, H, stream);
    return;
  }
  if (want_dkv) launch_dkv<HD, WARPS, false>(a, mask, B, H, stream);
  if (want_dq) launch_dq<HD, WARPS>(a, mask, B, H, stream);
}

unsigned grid_stride_blocks(int64_t n) { return detail::grid_for(n, 256); }

}  // namespace

void flash_attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                             const uint8_t* key_valid, const DeviceBlockMask& mask, int64_t B, int64_t H, int64_t hd,
                             float scale, cudaStream_t stream) {
  const char* who = "gpu::flash_attention_forward";
  check_common(mask, B, H, hd, scale, who);
  SMT_CHECK(out != nullptr && lse != nullptr && q != nullptr && k != nullptr && v != nullptr, who,
            ": out, lse, q, k, v are required");
  SMT_CHECK(aligned16(out) && aligned16(q) && aligned16(k) && aligned16(v), who, ": tensors must be 16-byte aligned");
  if (B == 0 || H == 0) return;
  const KeyBits bits(key_valid, B, mask.seq_len, stream);
  FlashArgs a{};
  a.q = q;
  a.k = k;
  a.v = v;
  a.out = out;
  a.lse = lse;
  a.m = mask_args(mask, bits.data());
  a.H = static_cast<int>(H);
  a.scale = scale;
  a.scale_log2 = scale * kLog2e;
  const bool wide = warps_for(mask) == 8;
  if (hd == 64) {
    wide ? launch_fwd<64, 8>(a, mask, B, H, stream) : launch_fwd<64, 4>(a, mask, B, H, stream);
  } else {
    wide ? launch_fwd<128, 8>(a, mask, B, H, stream) : launch_fwd<128, 4>(a, mask, B, H, stream);
  }
}

void flash_attention_backward(const FlashAttentionGrads& grads, const bf16* dout, const bf16* out, const float* lse,
                              const bf16* q, const bf16* k, const bf16* v, const uint8_t* key_valid,
                              const DeviceBlockMask& mask, int64_t B, int64_t H, int64_t hd, float scale,
                              FlashDqMode dq_mode, cudaStream_t stream) {
  const char* who = "gpu::flash_attention_backward";
  check_common(mask, B, H, hd, scale, who);
  SMT_CHECK(dout != nullptr && out != nullptr && lse != nullptr && q != nullptr && k != nullptr && v != nullptr, who,
            ": dout, out, lse, q, k, v are required");
  for (const void* p : {static_cast<const void*>(dout), static_cast<const void*>(out), static_cast<const void*>(q),
                        static_cast<const void*>(k), static_cast<const void*>(v), static_cast<const void*>(grads.dq),
                        static_cast<const void*>(grads.dk), static_cast<const void*>(grads.dv),
                        static_cast<const void*>(grads.dq_acc), static_cast<const void*>(grads.dk_acc),
                        static_cast<const void*>(grads.dv_acc)})
    SMT_CHECK(aligned16(p), who, ": tensors must be 16-byte aligned");
  const bool want_dq = grads.dq != nullptr || grads.dq_acc != nullptr;
  const bool want_dkv =
      grads.dk != nullptr || grads.dv != nullptr || grads.dk_acc != nullptr || grads.dv_acc != nullptr;
  if (B == 0 || H == 0 || (!want_dq && !want_dkv)) return;
  const int64_t N = mask.seq_len;
  const int64_t num_rows = B * N * H;
  const int64_t n = num_rows * hd;

  StreamBuffer<float> D(static_cast<size_t>(num_rows), stream);
  {
    const int64_t threads = num_rows * (hd / 8);
    const int64_t blocks = (threads + 255) / 256;
    SMT_CHECK(blocks <= INT32_MAX, who, ": too many rows");
    if (hd == 64)
      flash_bwd_dot_kernel<64><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(D.data(), dout, out, num_rows,
                                                                                 static_cast<int>(N), static_cast<int>(H));
    else
      flash_bwd_dot_kernel<128><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(D.data(), dout, out, num_rows,
                                                                                  static_cast<int>(N), static_cast<int>(H));
    SMT_CUDA_CHECK_LAUNCH();
  }
  const KeyBits bits(key_valid, B, static_cast<int>(N), stream);

  // Atomic dq: straight into dq_acc when only the fp32 gradient is wanted, else into a zeroed scratch.
  const bool atomic = want_dq && dq_mode == FlashDqMode::kAtomic;
  const bool need_scratch = atomic && grads.dq != nullptr;
  StreamBuffer<float> scratch(need_scratch ? static_cast<size_t>(n) : 0, stream);
  if (need_scratch) SMT_CUDA_CHECK(cudaMemsetAsync(scratch.data(), 0, size_t(n) * sizeof(float), stream));

  FlashArgs a{};
  a.q = q;
  a.k = k;
  a.v = v;
  a.dout = dout;
  a.lse_in = lse;
  a.Dvec = D.data();
  a.dq = grads.dq;
  a.dk = grads.dk;
  a.dv = grads.dv;
  a.dq_acc = grads.dq_acc;
  a.dk_acc = grads.dk_acc;
  a.dv_acc = grads.dv_acc;
  a.dq_atomic = atomic ? (need_scratch ? scratch.data() : grads.dq_acc) : nullptr;
  a.m = mask_args(mask, bits.data());
  a.H = static_cast<int>(H);
  a.scale = scale;
  a.scale_log2 = scale * kLog2e;
  const bool wide = warps_for(mask) == 8;
  if (hd == 64) {
    wide ? run_backward<64, 8>(a, mask, B, H, want_dkv, want_dq, dq_mode, stream)
         : run_backward<64, 4>(a, mask, B, H, want_dkv, want_dq, dq_mode, stream);
  } else {
    wide ? run_backward<128, 8>(a, mask, B, H, want_dkv, want_dq, dq_mode, stream)
         : run_backward<128, 4>(a, mask, B, H, want_dkv, want_dq, dq_mode, stream);
  }
  if (need_scratch) {
    flash_dq_finish_kernel<<<grid_stride_blocks(n), 256, 0, stream>>>(grads.dq, grads.dq_acc, scratch.data(), n);
    SMT_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace smt::gpu
