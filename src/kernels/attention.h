// Block-sparse multi-head attention on the CPU, FlashAttention-style: per (batch, head,
// query block), visit only the key blocks of the BlockMask, online softmax in fp32, save the
// log-sum-exp. Never forms an N x N matrix: extra memory is O(block_size^2 + block_size*hd) per
// thread, plus O(N*hd) per task of the fused backward and, for the built-in tile kernels, a
// transposed copy of k (and of v in the backward), kept by the calling thread between calls.
// Shapes: q, k, v, out, dout [B, N, H, hd] (i.e. [T, H*hd]); lse [B, H, N];
// key_valid [B, N] (1 = real token, 0 = padding; nullable = all valid).
// A query row with no allowed key gets out = 0 and lse = -inf, and no gradient.
// Templates over the scalar (instantiated for float and double: the model uses float, the
// gradient tests double); softmax statistics are kept in the scalar type. Nullable pointers
// and scalars are non-deduced (std::type_identity_t) so that `nullptr` / a double scale can be
// passed. Results do not depend on the thread count (no atomics, fixed accumulation order).
#pragma once
#include <cstdint>
#include <type_traits>

#include "kernels/attention_pattern.h"

namespace smt::cpu {

// How the backward is split over threads (both run the same tile computations in the same
// order, so they give identical results):
//   kFusedPerHead: one task per (batch, head) computes dq, dk, dv together (5 GEMMs per tile);
//   kSplit: dk/dv per (batch, head, key block) over the transposed lists, then dq per
//           (batch, head, query block) (7 GEMMs per tile, more parallelism);
//   kAuto: fused when B*H gives every thread at least 4 tasks, else split.
enum class AttnBackwardMode { kAuto, kFusedPerHead, kSplit };

// Back-end of the tile GEMMs (process-wide; results agree up to rounding):
//   kPortable: register-blocked kernel in compiler vector extensions (AVX2/FMA in Release);
//   kAvx512: AVX-512 intrinsics kernel (compiled for that target only), when the CPU has
//            AVX-512F, else kPortable;
//   kBlas: OpenBLAS sgemm/dgemm, single-threaded per tile;
//   kAuto (default): kAvx512 (so kPortable on CPUs without AVX-512).
enum class AttnTileGemm { kAuto, kPortable, kAvx512, kBlas };
void set_attention_tile_gemm(AttnTileGemm choice);
AttnTileGemm attention_tile_gemm();
const char* attention_tile_backend();  // what the current choice resolves to: "avx512", "portable", "blas"

// out = softmax(scale * q k^T + mask) v ; lse[b, h, i] = log sum_j exp(scale * q_i . k_j) over allowed j.
template <typename Real>
void attention_forward(Real* out, Real* lse, const Real* q, const Real* k, const Real* v, const uint8_t* key_valid,
                       const BlockMask& mask, int64_t B, int64_t H, int64_t hd, std::type_identity_t<Real> scale);
// dq, dk, dv += ... (each nullable = not needed); needs out and lse of the forward.
template <typename Real>
void attention_backward(std::type_identity_t<Real>* dq, std::type_identity_t<Real>* dk, std::type_identity_t<Real>* dv,
                        const Real* dout, const Real* out, const Real* lse, const Real* q, const Real* k, const Real* v,
                        const uint8_t* key_valid, const BlockMask& mask, int64_t B, int64_t H, int64_t hd,
                        std::type_identity_t<Real> scale, AttnBackwardMode mode = AttnBackwardMode::kAuto);

// Naive reference (tests only): per query row, scores over every allowed key (mask.allowed and
// key_valid), plain softmax. O(N) extra memory per row, O(N^2) time.
template <typename Real>
void attention_forward_naive(Real* out, const Real* q, const Real* k, const Real* v, const uint8_t* key_valid,
                             const BlockMask& mask, int64_t B, int64_t H, int64_t hd, std::type_identity_t<Real> scale);

}  // namespace smt::cpu
