// Block-sparse FlashAttention on the CPU: forward (online softmax, saves lse) and backward
// (recomputes P per tile from lse) over a BlockMask, tile GEMMs inside OpenMP tasks.
// Invariants: no O(N^2) buffer (extra memory O(N*d)); every output row is written by exactly one
// task in a fixed order, so results do not depend on the thread count.
// Variants: forward per (b, h, query block); backward fused per (b, h) or split (dk/dv per key
// block over the transposed lists, dq per query block); tile GEMM back-ends AVX-512, portable
// (compiler-vectorised) and BLAS; naive reference for tests.
#include "kernels/attention.h"

#include <cblas.h>
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// GCC 12 warns wrongly inside its AVX-512 intrinsics (_mm512_undefined_*, PR 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
// x86 kernels compiled for AVX2 / AVX-512 only, called after a CPU check.
#define SMT_ATTN_X86 1
#define SMT_AVX2_TARGET __attribute__((target("avx2")))
#define SMT_AVX512_TARGET __attribute__((target("avx512f,fma,avx2")))
#define SMT_AVX512_INLINE __attribute__((always_inline, target("avx512f,fma,avx2"))) inline
#endif

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/error.h"
#include "core/threads.h"

// Internal functions pass 32-byte vectors; without AVX enabled (Debug builds) GCC warns that
// their ABI changes, which does not matter inside this file.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace smt::cpu {

namespace {

// ---------------------------------------------------------------------------------------------
// Tile GEMMs. Three back-ends with the same meaning (AttnTileGemm):
//  - portable: a 6 x (64 bytes) register-blocked kernel in GCC vector extensions, vectorised by
//    the compiler (AVX2/FMA under the Release flags);
//  - avx512: an 8 x (2 zmm) kernel in AVX-512 intrinsics, compiled for that target only and
//    used when the CPU has AVX-512F (about 2x the portable kernel on 64 x 64 x 64 tiles);
//  - blas: OpenBLAS sgemm/dgemm, single-threaded per tile. OpenBLAS runs a GEMM on one thread
//    when M*N*K <= 65536 * GEMM_MULTITHREAD_THRESHOLD (default 4), so M is split to stay under
//    that bound (the tiles already run inside OpenMP tasks).
// The built-in kernels read B row-contiguous, so the transposed operands (K of S = Q K^T, V of
// dP = dO V^T) are transposed once per call (NtOperand).
enum class Backend { kPortable, kAvx512, kBlas };

std::atomic<int> g_tile_gemm{static_cast<int>(AttnTileGemm::kAuto)};

bool cpu_has_avx512() {
#ifdef SMT_ATTN_X86
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
#else
  return false;
#endif
}

Backend current_backend() {
  switch (static_cast<AttnTileGemm>(g_tile_gemm.load(std::memory_order_relaxed))) {
    case AttnTileGemm::kBlas:
      return Backend::kBlas;
    case AttnTileGemm::kPortable:
      return Backend::kPortable;
    case AttnTileGemm::kAvx512:
    case AttnTileGemm::kAuto:
      break;
  }
  return cpu_has_avx512() ? Backend::kAvx512 : Backend::kPortable;
}

constexpr int kMr = 6;  // rows per portable micro tile

// 32-byte GCC/Clang vector types (one AVX register under the Release flags; the compiler splits
// them on narrower targets). A portable micro tile is MR rows x 2 vectors (16 floats / 8 doubles).
template <typename Real>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(32)));
  static type splat(float x) { return type{x, x, x, x, x, x, x, x}; }
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(32)));
  static type splat(double x) { return type{x, x, x, x}; }
};

// C[MR, nr] (=|+=) alpha * A[MR, K] B[K, nr]; A(i, k) = A[i*a_rs + k*a_cs], B rows contiguous.
// kFull: nr = 2 vectors exactly (vector code); else scalar code for the column tail.
template <typename Real, int MR, bool kFull>
inline void micro_kernel(int64_t K, const Real* __restrict A, int64_t a_rs, int64_t a_cs, const Real* __restrict B,
                         int64_t ldb, Real* __restrict C, int64_t ldc, Real alpha, bool accumulate, int nr) {
  constexpr int NR = 64 / sizeof(Real), VL = 32 / sizeof(Real);
  if constexpr (kFull) {
    using V = typename Vec<Real>::type;
    V acc[MR][2];
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = V{};
    for (int64_t k = 0; k < K; ++k) {
      V b0, b1;
      std::memcpy(&b0, B + k * ldb, sizeof(V));
      std::memcpy(&b1, B + k * ldb + VL, sizeof(V));
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const V a = Vec<Real>::splat(A[r * a_rs + k * a_cs]);
        acc[r][0] += a * b0;
        acc[r][1] += a * b1;
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      Real* c = C + r * ldc;
      for (int h = 0; h < 2; ++h) {
        V out = acc[r][h] * alpha;
        if (accumulate) {
          V old;
          std::memcpy(&old, c + h * VL, sizeof(V));
          out += old;
        }
        std::memcpy(c + h * VL, &out, sizeof(V));
      }
    }
  } else {
    Real acc[MR][NR] = {};
    for (int64_t k = 0; k < K; ++k) {
      const Real* b = B + k * ldb;
      for (int r = 0; r < MR; ++r) {
        const Real a = A[r * a_rs + k * a_cs];
        for (int j = 0; j < nr; ++j) acc[r][j] += a * b[j];
      }
    }
    for (int r = 0; r < MR; ++r) {
      Real* c = C + r * ldc;
      for (int j = 0; j < nr; ++j) c[j] = (accumulate ? c[j] : Real(0)) + alpha * acc[r][j];
    }
  }
}

// micro_kernel for mr in [1, MR] rows (mr chosen at run time).
template <typename Real, bool kFull, int MR = kMr>
inline void micro_rows(int mr, int64_t K, const Real* A, int64_t a_rs, int64_t a_cs, const Real* B, int64_t ldb,
                       Real* C, int64_t ldc, Real alpha, bool accumulate, int nr) {
  if constexpr (MR > 1) {
    if (mr < MR) return micro_rows<Real, kFull, MR - 1>(mr, K, A, a_rs, a_cs, B, ldb, C, ldc, alpha, accumulate, nr);
  }
  micro_kernel<Real, MR, kFull>(K, A, a_rs, a_cs, B, ldb, C, ldc, alpha, accumulate, nr);
}

// C[M, N] (=|+=) alpha * A B with A(i, k) = A[i*a_rs + k*a_cs] and B [K, N] rows contiguous (ldb).
template <typename Real>
void mm_portable(int64_t M, int64_t N, int64_t K, Real alpha, const Real* A, int64_t a_rs, int64_t a_cs, const Real* B,
                 int64_t ldb, Real* C, int64_t ldc, bool accumulate) {
  constexpr int NR = 64 / sizeof(Real);
  for (int64_t j0 = 0; j0 < N; j0 += NR) {
    const int nr = static_cast<int>(std::min<int64_t>(NR, N - j0));
    for (int64_t i0 = 0; i0 < M; i0 += kMr) {
      const int mr = static_cast<int>(std::min<int64_t>(kMr, M - i0));
      if (nr == NR)
        micro_rows<Real, true>(mr, K, A + i0 * a_rs, a_rs, a_cs, B + j0, ldb, C + i0 * ldc + j0, ldc, alpha, accumulate,
                               nr);
      else
        micro_rows<Real, false>(mr, K, A + i0 * a_rs, a_rs, a_cs, B + j0, ldb, C + i0 * ldc + j0, ldc, alpha,
                                accumulate, nr);
    }
  }
}

#ifdef SMT_ATTN_X86

SMT_AVX512_INLINE __m512 v_load(const float* p) { return _mm512_loadu_ps(p); }
SMT_AVX512_INLINE __m512d v_load(const double* p) { return _mm512_loadu_pd(p); }
SMT_AVX512_INLINE void v_store(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
SMT_AVX512_INLINE void v_store(double* p, __m512d v) { _mm512_storeu_pd(p, v); }
SMT_AVX512_INLINE __m512 v_set1(float x) { return _mm512_set1_ps(x); }
SMT_AVX512_INLINE __m512d v_set1(double x) { return _mm512_set1_pd(x); }
SMT_AVX512_INLINE __m512 v_fmadd(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }
SMT_AVX512_INLINE __m512d v_fmadd(__m512d a, __m512d b, __m512d c) { return _mm512_fmadd_pd(a, b, c); }
SMT_AVX512_INLINE __m512 v_mul(__m512 a, __m512 b) { return _mm512_mul_ps(a, b); }
SMT_AVX512_INLINE __m512d v_mul(__m512d a, __m512d b) { return _mm512_mul_pd(a, b); }
SMT_AVX512_INLINE __m512 v_add(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
SMT_AVX512_INLINE __m512d v_add(__m512d a, __m512d b) { return _mm512_add_pd(a, b); }

// C[MR, 2 zmm] (=|+=) alpha * A[MR, K] B[K, 2 zmm], as micro_kernel.
template <typename Real, int MR>
SMT_AVX512_INLINE void micro_avx512(int64_t K, const Real* __restrict A, int64_t a_rs, int64_t a_cs,
                                    const Real* __restrict B, int64_t ldb, Real* __restrict C, int64_t ldc, Real alpha,
                                    bool accumulate) {
  using V = decltype(v_set1(Real(0)));
  constexpr int VL = 64 / sizeof(Real);
  V acc[MR][2];
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = v_set1(Real(0));
  for (int64_t k = 0; k < K; ++k) {
    const V b0 = v_load(B + k * ldb), b1 = v_load(B + k * ldb + VL);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const V a = v_set1(A[r * a_rs + k * a_cs]);
      acc[r][0] = v_fmadd(a, b0, acc[r][0]);
      acc[r][1] = v_fmadd(a, b1, acc[r][1]);
    }
  }
  const V va = v_set1(alpha);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
    for (int h = 0; h < 2; ++h) {
      V out = v_mul(acc[r][h], va);
      if (accumulate) out = v_add(out, v_load(C + r * ldc + h * VL));
      v_store(C + r * ldc + h * VL, out);
    }
}

// micro_avx512 for mr in [1, MR] rows (mr chosen at run time).
template <typename Real, int MR>
SMT_AVX512_INLINE void micro_avx512_rows(int mr, int64_t K, const Real* A, int64_t a_rs, int64_t a_cs, const Real* B,
                                         int64_t ldb, Real* C, int64_t ldc, Real alpha, bool accumulate) {
  if constexpr (MR > 1) {
    if (mr < MR) return micro_avx512_rows<Real, MR - 1>(mr, K, A, a_rs, a_cs, B, ldb, C, ldc, alpha, accumulate);
  }
  micro_avx512<Real, MR>(K, A, a_rs, a_cs, B, ldb, C, ldc, alpha, accumulate);
}

// As mm_portable; full 2-zmm column blocks here, the column tail by the portable kernel.
template <typename Real>
SMT_AVX512_TARGET void mm_avx512(int64_t M, int64_t N, int64_t K, Real alpha, const Real* A, int64_t a_rs, int64_t a_cs,
                                 const Real* B, int64_t ldb, Real* C, int64_t ldc, bool accumulate) {
  constexpr int NR = 128 / sizeof(Real), MR = 8;
  int64_t j0 = 0;
  for (; j0 + NR <= N; j0 += NR) {
    int64_t i0 = 0;
    for (; i0 + MR <= M; i0 += MR)
      micro_avx512<Real, MR>(K, A + i0 * a_rs, a_rs, a_cs, B + j0, ldb, C + i0 * ldc + j0, ldc, alpha, accumulate);
    if (i0 < M)
      micro_avx512_rows<Real, MR - 1>(static_cast<int>(M - i0), K, A + i0 * a_rs, a_rs, a_cs, B + j0, ldb,
                                      C + i0 * ldc + j0, ldc, alpha, accumulate);
  }
  if (j0 < N) mm_portable<Real>(M, N - j0, K, alpha, A, a_rs, a_cs, B + j0, ldb, C + j0, ldc, accumulate);
}
#else
template <typename Real>
void mm_avx512(int64_t M, int64_t N, int64_t K, Real alpha, const Real* A, int64_t a_rs, int64_t a_cs, const Real* B,
               int64_t ldb, Real* C, int64_t ldc, bool accumulate) {
  mm_portable<Real>(M, N, K, alpha, A, a_rs, a_cs, B, ldb, C, ldc, accumulate);
}
#endif

inline void blas_raw(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                     const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, static_cast<int>(M),
              static_cast<int>(N), static_cast<int>(K), alpha, A, static_cast<int>(lda), B, static_cast<int>(ldb), beta,
              C, static_cast<int>(ldc));
}
inline void blas_raw(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
                     const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, static_cast<int>(M),
              static_cast<int>(N), static_cast<int>(K), alpha, A, static_cast<int>(lda), B, static_cast<int>(ldb), beta,
              C, static_cast<int>(ldc));
}

constexpr int64_t kSingleThreadMnk = 65536 * 4;

// Row-major C = alpha op(A) op(B) + beta C through BLAS, split over M to stay single-threaded.
template <typename Real>
void blas_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, Real alpha, const Real* A, int64_t lda, const Real* B,
               int64_t ldb, Real beta, Real* C, int64_t ldc) {
  if (M <= 0 || N <= 0 || K <= 0) return;  // K > 0 always here (hd > 0, tiles non-empty)
  const int64_t rows = std::max<int64_t>(1, kSingleThreadMnk / std::max<int64_t>(1, N * K));
  for (int64_t i0 = 0; i0 < M; i0 += rows) {
    const int64_t mc = std::min(rows, M - i0);
    const Real* a = ta ? A + i0 : A + i0 * lda;  // rows i0.. of op(A): columns of A when transposed
    blas_raw(ta, tb, mc, N, K, alpha, a, lda, B, ldb, beta, C + i0 * ldc, ldc);
  }
}

// The three tile products of the attention kernels, on the back-end chosen per call.
template <typename Real>
struct TileGemm {
  Backend backend;

  void builtin(int64_t M, int64_t N, int64_t K, Real alpha, const Real* A, int64_t a_rs, int64_t a_cs, const Real* B,
               int64_t ldb, Real* C, int64_t ldc, bool accumulate) const {
    if (backend == Backend::kAvx512)
      mm_avx512<Real>(M, N, K, alpha, A, a_rs, a_cs, B, ldb, C, ldc, accumulate);
    else
      mm_portable<Real>(M, N, K, alpha, A, a_rs, a_cs, B, ldb, C, ldc, accumulate);
  }
  // C [M, N] = alpha * A [M, K] B^T. B_op is B [N, K] itself for BLAS and B^T [K, N] for the
  // built-in kernels (see NtOperand); ldb is its row stride.
  void nt(int64_t M, int64_t N, int64_t K, Real alpha, const Real* A, int64_t lda, const Real* B_op, int64_t ldb,
          Real* C, int64_t ldc) const {
    if (backend == Backend::kBlas)
      blas_gemm<Real>(false, true, M, N, K, alpha, A, lda, B_op, ldb, Real(0), C, ldc);
    else
      builtin(M, N, K, alpha, A, lda, 1, B_op, ldb, C, ldc, false);
  }
  // C [M, N] += alpha * A [M, K] B [K, N].
  void nn_acc(int64_t M, int64_t N, int64_t K, Real alpha, const Real* A, int64_t lda, const Real* B, int64_t ldb,
              Real* C, int64_t ldc) const {
    if (backend == Backend::kBlas)
      blas_gemm<Real>(false, false, M, N, K, alpha, A, lda, B, ldb, Real(1), C, ldc);
    else
      builtin(M, N, K, alpha, A, lda, 1, B, ldb, C, ldc, true);
  }
  // C [M, N] += alpha * A^T B with A [K, M] (lda), B [K, N].
  void tn_acc(int64_t M, int64_t N, int64_t K, Real alpha, const Real* A, int64_t lda, const Real* B, int64_t ldb,
              Real* C, int64_t ldc) const {
    if (backend == Backend::kBlas)
      blas_gemm<Real>(true, false, M, N, K, alpha, A, lda, B, ldb, Real(1), C, ldc);
    else
      builtin(M, N, K, alpha, A, 1, lda, B, ldb, C, ldc, true);
  }
};

// ---------------------------------------------------------------------------------------------
// exp: std::exp for double (the reference precision); for float a branch-free Cephes-style
// polynomial (|rel err| ~ 2e-7) in 8-wide vectors, with exp(x) = 0 for x < -87 (and -inf).
// The scalar and vector forms compute the same formula (same results lane by lane).
constexpr float kExpLo = -87.0f, kExpHi = 88.0f, kLog2e = 1.44269504088896341f, kRound = 12582912.0f;  // 1.5*2^23
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f, kP3 = 4.1665795894e-2f,
                kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;

inline float exp_fast(float x) {
  const float xc = std::min(std::max(x, kExpLo), kExpHi);
  const float n = (xc * kLog2e + kRound) - kRound;  // round to nearest
  float r = xc - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float p = kP0;
  p = p * r + kP1;
  p = p * r + kP2;
  p = p * r + kP3;
  p = p * r + kP4;
  p = p * r + kP5;
  const float y = p * r * r + r + 1.0f;
  const float pow2n = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  return x < kExpLo ? 0.0f : y * pow2n;
}

using VecF = Vec<float>::type;
typedef int32_t VecI __attribute__((vector_size(32)));

inline VecF exp_fast(VecF x) {
  const VecF lo = Vec<float>::splat(kExpLo), hi = Vec<float>::splat(kExpHi);
  VecF xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const VecF n = (xc * kLog2e + kRound) - kRound;
  VecF r = xc - n * kLn2Hi;
  r = r - n * kLn2Lo;
  VecF p = Vec<float>::splat(kP0);
  p = p * r + kP1;
  p = p * r + kP2;
  p = p * r + kP3;
  p = p * r + kP4;
  p = p * r + kP5;
  const VecF y = p * r * r + r + 1.0f;
  const VecI e = (__builtin_convertvector(n, VecI) + 127) << 23;
  VecF pow2n;
  std::memcpy(&pow2n, &e, sizeof(VecF));
  return x < lo ? VecF{} : y * pow2n;
}

inline double exp_t(double x) { return std::exp(x); }
inline float exp_t(float x) { return exp_fast(x); }

// max_j row[j] (-inf for an all -inf row).
inline double row_max_of(const double* row, int64_t n) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n; ++j) m = std::max(m, row[j]);
  return m;
}
inline float row_max_of(const float* row, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  int64_t j = 0;
  if (n >= 8) {
    VecF mv = Vec<float>::splat(m);
    for (; j + 8 <= n; j += 8) {
      VecF x;
      std::memcpy(&x, row + j, sizeof(VecF));
      mv = x > mv ? x : mv;
    }
    for (int l = 0; l < 8; ++l) m = std::max(m, mv[l]);
  }
  for (; j < n; ++j) m = std::max(m, row[j]);
  return m;
}

#ifdef SMT_ATTN_X86
// exp_fast in 16-wide AVX-512 vectors over row[0, n16): row[j] = exp(row[j] - shift), returns the sum.
SMT_AVX512_TARGET float exp_shift_sum_avx512(float* row, int64_t n16, float shift) {
  const __m512 lo = _mm512_set1_ps(kExpLo), hi = _mm512_set1_ps(kExpHi), sh = _mm512_set1_ps(shift);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < n16; j += 16) {
    const __m512 x = _mm512_sub_ps(_mm512_loadu_ps(row + j), sh);
    const __m512 xc = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
    const __m512 n =
        _mm512_sub_ps(_mm512_fmadd_ps(xc, _mm512_set1_ps(kLog2e), _mm512_set1_ps(kRound)), _mm512_set1_ps(kRound));
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), xc);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
    __m512 p = _mm512_set1_ps(kP0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP5));
    const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    __m512 v = _mm512_mul_ps(y, _mm512_castsi512_ps(e));
    v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ), v);  // 0 below kExpLo (and -inf)
    _mm512_storeu_ps(row + j, v);
    sum = _mm512_add_ps(sum, v);
  }
  return _mm512_reduce_add_ps(sum);
}
#endif

// row[j] = exp(row[j] - shift); returns the sum of the new values. wide: AVX-512 for float.
inline double exp_shift_sum(double* row, int64_t n, double shift, bool /*wide*/) {
  double sum = 0;
  for (int64_t j = 0; j < n; ++j) sum += (row[j] = std::exp(row[j] - shift));
  return sum;
}
inline float exp_shift_sum(float* row, int64_t n, float shift, bool wide) {
  float sum = 0;
  int64_t j = 0;
#ifdef SMT_ATTN_X86
  if (wide && n >= 16) {
    j = n / 16 * 16;
    sum = exp_shift_sum_avx512(row, j, shift);
  }
#endif
  if (n - j >= 8) {
    VecF sv{};
    for (; j + 8 <= n; j += 8) {
      VecF x;
      std::memcpy(&x, row + j, sizeof(VecF));
      x = exp_fast(x - shift);
      std::memcpy(row + j, &x, sizeof(VecF));
      sv += x;
    }
    for (int l = 0; l < 8; ++l) sum += sv[l];
  }
  for (; j < n; ++j) sum += (row[j] = exp_fast(row[j] - shift));
  return sum;
}

// ---------------------------------------------------------------------------------------------
// Per-thread scratch, grown on demand and kept between calls: O(block_size^2 + block_size*hd),
// plus dq [N, hd] for the fused backward.
template <typename Real>
struct Scratch {
  std::vector<Real> s, dp, acc0, acc1, row0, row1, dq;
};
template <typename Real>
Scratch<Real>& scratch() {
  thread_local Scratch<Real> s;
  return s;
}
template <typename Real>
Real* sized(std::vector<Real>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(n);
  return v.data();
}

struct Geometry {
  int64_t B, N, H, hd, bs, nb, ld;
};

// The B operand of TileGemm::nt for a whole [B, N, H, hd] tensor X (K or V): BLAS reads X in
// place; the built-in kernels read X^T per (b, h), [hd, N], transposed once per call into buf
// (the size of X; the callers keep it thread_local between calls).
template <typename Real>
struct NtOperand {
  const Real* x = nullptr;
  const Real* xt = nullptr;  // [B, H, hd, N] or null (BLAS)
  int64_t N = 0, H = 0, hd = 0, ld = 0;
  const Real* at(int64_t b, int64_t h, int64_t pos) const {
    return xt ? xt + (b * H + h) * hd * N + pos : x + (b * N + pos) * ld + h * hd;
  }
  int64_t ldb() const { return xt ? N : ld; }
};

// dst[k * N + j] = src[j * ld + k] for j < N, k < hd: one head of X into X^T.
template <typename Real>
void transpose_head(const Real* src, int64_t ld, int64_t N, int64_t hd, Real* dst) {
  constexpr int64_t kT = 16;  // in kT x kT blocks
  for (int64_t j0 = 0; j0 < N; j0 += kT)
    for (int64_t k0 = 0; k0 < hd; k0 += kT) {
      const int64_t j1 = std::min(N, j0 + kT), k1 = std::min(hd, k0 + kT);
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t k = k0; k < k1; ++k) dst[k * N + j] = src[j * ld + k];
    }
}

#ifdef SMT_ATTN_X86
bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}

// As transpose_head for float, in 8 x 8 AVX blocks (the scalar loop costs ~10% of the forward).
SMT_AVX2_TARGET void transpose_head_avx2(const float* src, int64_t ld, int64_t N, int64_t hd, float* dst) {
  const int64_t N8 = N / 8 * 8, hd8 = hd / 8 * 8;
  for (int64_t j0 = 0; j0 < N8; j0 += 8)
    for (int64_t k0 = 0; k0 < hd8; k0 += 8) {
      __m256 r[8], t[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + (j0 + i) * ld + k0);
      for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
      }
      for (int i = 0; i < 2; ++i) {
        r[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
      }
      // r[0..3]: columns 0..3 of rows 0-3 | 4-7 ... ; combine the 128-bit halves.
      for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(dst + (k0 + i) * N + j0, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
        _mm256_storeu_ps(dst + (k0 + i + 4) * N + j0, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
      }
    }
  for (int64_t j = 0; j < N; ++j)  // tails: columns hd8.. of every row, rows N8.. of every column
    for (int64_t k = (j < N8 ? hd8 : 0); k < hd; ++k) dst[k * N + j] = src[j * ld + k];
}

void transpose_head(const float* src, int64_t ld, int64_t N, int64_t hd, float* dst) {
  if (cpu_has_avx2()) return transpose_head_avx2(src, ld, N, hd, dst);
  transpose_head<float>(src, ld, N, hd, dst);
}
#endif

template <typename Real, typename Run>
NtOperand<Real> make_nt_operand(Backend backend, const Real* x, const Geometry& g, std::vector<Real>& buf, Run&& run) {
  NtOperand<Real> op{x, nullptr, g.N, g.H, g.hd, g.ld};
  if (backend == Backend::kBlas) return op;
  if (static_cast<int64_t>(buf.size()) < g.B * g.H * g.hd * g.N) buf.resize(g.B * g.H * g.hd * g.N);
  Real* xt = buf.data();
  run(g.B * g.H, [&](int64_t bh) {
    const int64_t b = bh / g.H, h = bh % g.H;
    transpose_head(x + b * g.N * g.ld + h * g.hd, g.ld, g.N, g.hd, xt + bh * g.hd * g.N);
  });
  op.xt = xt;
  return op;
}

// Everything a tile needs to know about its (qb, kb) entry.
struct TileInfo {
  int64_t q0, m, k0, n;
  bool full;          // no position mask needed
  bool window_kind;   // kWindow: |q - k| <= window
  const uint8_t* kv;  // key_valid of the key block (nullable)
  bool kv_any_invalid;
};

// Number of valid keys among kv[0, n) (nullable = all).
inline int64_t count_valid(const uint8_t* kv, int64_t n) {
  if (!kv) return n;
  int64_t c = 0;
  for (int64_t j = 0; j < n; ++j) c += kv[j] != 0;
  return c;
}

// Sets S[i, j] = -inf where the element rule (position and key padding) forbids (q0+i, k0+j).
template <typename Real>
void apply_mask(Real* S, const TileInfo& t, bool causal, int64_t window) {
  const Real ninf = -std::numeric_limits<Real>::infinity();
  if (!t.full) {
    for (int64_t i = 0; i < t.m; ++i) {
      const int64_t q = t.q0 + i;
      int64_t lo = 0, hi = t.n - 1;  // allowed columns [lo, hi]
      if (causal) hi = std::min(hi, q - t.k0);
      if (t.window_kind) {
        lo = std::max(lo, q - window - t.k0);
        hi = std::min(hi, q + window - t.k0);
      }
      Real* row = S + i * t.n;
      if (hi < lo) {
        std::fill(row, row + t.n, ninf);
        continue;
      }
      std::fill(row, row + lo, ninf);
      std::fill(row + hi + 1, row + t.n, ninf);
    }
  }
  if (t.kv_any_invalid) {
    for (int64_t i = 0; i < t.m; ++i) {
      Real* row = S + i * t.n;
      for (int64_t j = 0; j < t.n; ++j)
        if (!t.kv[j]) row[j] = ninf;
    }
  }
}

inline TileInfo make_tile(const BlockMask& mask, const Geometry& g, int64_t b, int64_t qb, int64_t e,
                          const uint8_t* key_valid) {
  TileInfo t;
  const int64_t kb = mask.q_col_idx[e];
  t.q0 = qb * g.bs;
  t.m = std::min(g.bs, g.N - t.q0);
  t.k0 = kb * g.bs;
  t.n = std::min(g.bs, g.N - t.k0);
  t.full = mask.q_is_full[e] != 0;
  t.window_kind = mask.q_kind[e] == BlockMask::kWindow;
  t.kv = key_valid ? key_valid + b * g.N + t.k0 : nullptr;
  t.kv_any_invalid = t.kv && count_valid(t.kv, t.n) != t.n;
  return t;
}

// Recomputes P = exp(scale * Q K^T - lse) into S (masked entries and rows with lse = -inf give 0).
// Kt, ldkt: K of the tile as an NtOperand gives it.
template <typename Real>
void compute_p(Real* S, const TileInfo& t, const TileGemm<Real>& mm, const Real* Qp, const Real* Kt, int64_t ldkt,
               const Real* lse_rows, const Geometry& g, const BlockMask& mask, Real scale) {
  mm.nt(t.m, t.n, g.hd, scale, Qp, g.ld, Kt, ldkt, S, t.n);
  apply_mask(S, t, mask.config.causal, mask.config.window);
  for (int64_t i = 0; i < t.m; ++i) {
    Real* row = S + i * t.n;
    const Real l = lse_rows[i];
    if (std::isinf(l)) {  // no allowed key: no gradient
      std::fill(row, row + t.n, Real(0));
      continue;
    }
    exp_shift_sum(row, t.n, l, mm.backend == Backend::kAvx512);
  }
}

// dP = dO V^T, then dS = P * (dP - D) in place in dP. Vt, ldvt: V of the tile (NtOperand).
template <typename Real>
void compute_ds(Real* dP, const Real* P, const TileInfo& t, const TileGemm<Real>& mm, const Real* dOp, const Real* Vt,
                int64_t ldvt, const Real* D_rows, const Geometry& g) {
  mm.nt(t.m, t.n, g.hd, Real(1), dOp, g.ld, Vt, ldvt, dP, t.n);
  for (int64_t i = 0; i < t.m; ++i) {
    Real* row = dP + i * t.n;
    const Real* prow = P + i * t.n;
    const Real d = D_rows[i];
#pragma omp simd
    for (int64_t j = 0; j < t.n; ++j) row[j] = prow[j] * (row[j] - d);
  }
}

void check_args(const BlockMask& mask, int64_t B, int64_t H, int64_t hd, const char* what) {
  SMT_CHECK(B >= 0 && H > 0 && hd > 0, what, ": bad shape B=", B, " H=", H, " hd=", hd);
  SMT_CHECK(mask.seq_len > 0 && mask.block_size > 0 &&
                mask.num_blocks == (mask.seq_len + mask.block_size - 1) / mask.block_size &&
                static_cast<int64_t>(mask.q_row_ptr.size()) == mask.num_blocks + 1 &&
                static_cast<int64_t>(mask.kv_col_ptr.size()) == mask.num_blocks + 1,
            what, ": BlockMask is not built (seq_len=", mask.seq_len, ", num_blocks=", mask.num_blocks, ")");
}

// Runs fn(i) for i in [0, n): over threads, unless the whole call is too small (about
// kSerialFlops) to pay for a parallel region.
constexpr double kSerialFlops = 4e6;
template <typename Fn>
void run_tasks(int64_t n, double total_flops, Fn&& fn) {
  if (n <= 1 || total_flops < kSerialFlops) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  parallel_for_dynamic(n, fn);
}

// FLOPs of one GEMM pass over every tile of the mask, for all (b, h).
inline double tile_flops(const BlockMask& mask, int64_t B, int64_t H, int64_t hd) {
  return 2.0 * static_cast<double>(mask.nnz_blocks()) * mask.block_size * mask.block_size * hd * B * H;
}

}  // namespace

void set_attention_tile_gemm(AttnTileGemm choice) {
  g_tile_gemm.store(static_cast<int>(choice), std::memory_order_relaxed);
}
AttnTileGemm attention_tile_gemm() { return static_cast<AttnTileGemm>(g_tile_gemm.load(std::memory_order_relaxed)); }
const char* attention_tile_backend() {
  switch (current_backend()) {
    case Backend::kAvx512:
      return "avx512";
    case Backend::kBlas:
      return "blas";
    case Backend::kPortable:
      break;
  }
  return "portable";
}

// ---------------------------------------------------------------------------------------------
template <typename Real>
void attention_forward(Real* out, Real* lse, const Real* q, const Real* k, const Real* v, const uint8_t* key_valid,
                       const BlockMask& mask, int64_t B, int64_t H, int64_t hd, std::type_identity_t<Real> scale) {
  check_args(mask, B, H, hd, "attention_forward");
  const Geometry g{B, mask.seq_len, H, hd, mask.block_size, mask.num_blocks, H * hd};
  if (B == 0) return;
  SMT_CHECK(out && lse && q && k && v, "attention_forward: null tensor");
  const Real ninf = -std::numeric_limits<Real>::infinity();
  const bool causal = mask.config.causal;
  const int64_t window = mask.config.window;
  const TileGemm<Real> mm{current_backend()};
  const double flops = 2 * tile_flops(mask, B, H, hd);
  auto run = [&](int64_t n, auto&& fn) { run_tasks(n, flops, fn); };
  thread_local std::vector<Real> kt_buf;
  const NtOperand<Real> kt = make_nt_operand(mm.backend, k, g, kt_buf, run);

  run(B * H * g.nb, [&](int64_t item) {
    const int64_t qb = item % g.nb, bh = item / g.nb, h = bh % H, b = bh / H;
    const int64_t q0 = qb * g.bs, m = std::min(g.bs, g.N - q0);
    const Real* Qp = q + (b * g.N + q0) * g.ld + h * hd;
    Scratch<Real>& sc = scratch<Real>();
    Real* S = sized(sc.s, g.bs * g.bs);
    Real* O = sized(sc.acc0, m * hd);
    Real* row_max = sized(sc.row0, m);
    Real* row_sum = sized(sc.row1, m);
    std::fill(O, O + m * hd, Real(0));
    std::fill(row_max, row_max + m, ninf);
    std::fill(row_sum, row_sum + m, Real(0));

    for (int64_t e = mask.q_row_ptr[qb]; e < mask.q_row_ptr[qb + 1]; ++e) {
      const TileInfo t = make_tile(mask, g, b, qb, e, key_valid);
      if (t.kv_any_invalid && count_valid(t.kv, t.n) == 0) continue;  // all keys padding
      const Real* Vp = v + (b * g.N + t.k0) * g.ld + h * hd;
      mm.nt(m, t.n, hd, scale, Qp, g.ld, kt.at(b, h, t.k0), kt.ldb(), S, t.n);
      apply_mask(S, t, causal, window);
      for (int64_t i = 0; i < m; ++i) {
        Real* row = S + i * t.n;
        const Real m_new = std::max(row_max[i], row_max_of(row, t.n));
        if (m_new == ninf) {  // nothing allowed so far in this row
          std::fill(row, row + t.n, Real(0));
          continue;
        }
        const Real alpha = exp_t(row_max[i] - m_new);  // 0 when row_max was -inf
        const Real sum = exp_shift_sum(row, t.n, m_new, mm.backend == Backend::kAvx512);
        row_sum[i] = row_sum[i] * alpha + sum;
        row_max[i] = m_new;
        if (alpha != Real(1)) {
          Real* o = O + i * hd;
#pragma omp simd
          for (int64_t d = 0; d < hd; ++d) o[d] *= alpha;
        }
      }
      mm.nn_acc(m, hd, t.n, Real(1), S, t.n, Vp, g.ld, O, hd);
    }

    Real* lse_rows = lse + (b * H + h) * g.N + q0;
    for (int64_t i = 0; i < m; ++i) {
      Real* o_out = out + (b * g.N + q0 + i) * g.ld + h * hd;
      if (row_sum[i] > Real(0)) {
        const Real inv = Real(1) / row_sum[i];
        const Real* o = O + i * hd;
#pragma omp simd
        for (int64_t d = 0; d < hd; ++d) o_out[d] = o[d] * inv;
        lse_rows[i] = row_max[i] + std::log(row_sum[i]);
      } else {
        std::fill(o_out, o_out + hd, Real(0));
        lse_rows[i] = ninf;
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
template <typename Real>
void attention_backward(std::type_identity_t<Real>* dq, std::type_identity_t<Real>* dk, std::type_identity_t<Real>* dv,
                        const Real* dout, const Real* out, const Real* lse, const Real* q, const Real* k, const Real* v,
                        const uint8_t* key_valid, const BlockMask& mask, int64_t B, int64_t H, int64_t hd,
                        std::type_identity_t<Real> scale, AttnBackwardMode mode) {
  check_args(mask, B, H, hd, "attention_backward");
  const Geometry g{B, mask.seq_len, H, hd, mask.block_size, mask.num_blocks, H * hd};
  if (B == 0 || (!dq && !dk && !dv)) return;
  SMT_CHECK(dout && out && lse && q && k && v, "attention_backward: null tensor");
  const int64_t N = g.N, nb = g.nb, bs = g.bs, ld = g.ld;
  const TileGemm<Real> mm{current_backend()};
  const double flops = 5 * tile_flops(mask, B, H, hd);
  auto run = [&](int64_t n, auto&& fn) { run_tasks(n, flops, fn); };
  thread_local std::vector<Real> kt_buf, vt_buf;
  const NtOperand<Real> kt = make_nt_operand(mm.backend, k, g, kt_buf, run);
  NtOperand<Real> vt;
  if (dq || dk) vt = make_nt_operand(mm.backend, v, g, vt_buf, run);

  // D[b, h, i] = sum_d dout * out (O(N) per head).
  std::vector<Real> D(static_cast<size_t>(B * H * N));
  parallel_for(
      B * N,
      [&](int64_t row) {
        const int64_t b = row / N, i = row % N;
        for (int64_t h = 0; h < H; ++h) {
          const Real* o = out + row * ld + h * hd;
          const Real* dO = dout + row * ld + h * hd;
          Real s = 0;
#pragma omp simd reduction(+ : s)
          for (int64_t d = 0; d < hd; ++d) s += o[d] * dO[d];
          D[(b * H + h) * N + i] = s;
        }
      },
      H * hd);

  auto at = [&](const Real* base, int64_t b, int64_t pos, int64_t h) { return base + (b * N + pos) * ld + h * hd; };
  auto add_rows = [&](Real* dst, const Real* acc, int64_t b, int64_t pos0, int64_t rows, int64_t h) {
    for (int64_t i = 0; i < rows; ++i) {
      Real* d = dst + (b * N + pos0 + i) * ld + h * hd;
      const Real* a = acc + i * hd;
#pragma omp simd
      for (int64_t c = 0; c < hd; ++c) d[c] += a[c];
    }
  };

  // All tiles of key block kb for (b, h), over the transposed list (query blocks ascending):
  // dk, dv of the block, and when dq_acc is given ([N, hd] for the whole sequence) dq too.
  auto key_block_pass = [&](int64_t b, int64_t h, int64_t kb, Real* dq_acc) {
    const int64_t k0 = kb * bs, n = std::min(bs, N - k0);
    const uint8_t* kv = key_valid ? key_valid + b * N + k0 : nullptr;
    if (kv && count_valid(kv, n) == 0) return;  // all keys padding: no tile contributes
    Scratch<Real>& sc = scratch<Real>();
    Real* S = sized(sc.s, bs * bs);
    Real* dP = sized(sc.dp, bs * bs);
    Real* dK = sized(sc.acc0, n * hd);
    Real* dV = sized(sc.acc1, n * hd);
    std::fill(dK, dK + n * hd, Real(0));
    std::fill(dV, dV + n * hd, Real(0));
    const Real* Kp = at(k, b, k0, h);
    const Real* Kt = kt.at(b, h, k0);
    const bool need_ds = dk || dq_acc;
    const Real* Vt = need_ds ? vt.at(b, h, k0) : nullptr;
    for (int64_t idx = mask.kv_col_ptr[kb]; idx < mask.kv_col_ptr[kb + 1]; ++idx) {
      const int64_t qb = mask.kv_row_idx[idx], e = mask.kv_entry[idx];
      const TileInfo t = make_tile(mask, g, b, qb, e, key_valid);
      const Real* Qp = at(q, b, t.q0, h);
      const Real* dOp = at(dout, b, t.q0, h);
      const Real* lse_rows = lse + (b * H + h) * N + t.q0;
      const Real* D_rows = D.data() + (b * H + h) * N + t.q0;
      compute_p(S, t, mm, Qp, Kt, kt.ldb(), lse_rows, g, mask, scale);
      if (dv) mm.tn_acc(n, hd, t.m, Real(1), S, n, dOp, ld, dV, hd);
      if (need_ds) {
        compute_ds(dP, S, t, mm, dOp, Vt, vt.ldb(), D_rows, g);
        if (dk) mm.tn_acc(n, hd, t.m, scale, dP, n, Qp, ld, dK, hd);
        if (dq_acc) mm.nn_acc(t.m, hd, n, scale, dP, n, Kp, ld, dq_acc + t.q0 * hd, hd);
      }
    }
    if (dk) add_rows(dk, dK, b, k0, n, h);
    if (dv) add_rows(dv, dV, b, k0, n, h);
  };

  // dq of query block qb for (b, h), over its key blocks ascending (the fused order too).
  auto query_block_pass = [&](int64_t b, int64_t h, int64_t qb) {
    const int64_t q0 = qb * bs, m = std::min(bs, N - q0);
    Scratch<Real>& sc = scratch<Real>();
    Real* S = sized(sc.s, bs * bs);
    Real* dP = sized(sc.dp, bs * bs);
    Real* dQ = sized(sc.acc0, m * hd);
    std::fill(dQ, dQ + m * hd, Real(0));
    const Real* Qp = at(q, b, q0, h);
    const Real* dOp = at(dout, b, q0, h);
    const Real* lse_rows = lse + (b * H + h) * N + q0;
    const Real* D_rows = D.data() + (b * H + h) * N + q0;
    for (int64_t e = mask.q_row_ptr[qb]; e < mask.q_row_ptr[qb + 1]; ++e) {
      const TileInfo t = make_tile(mask, g, b, qb, e, key_valid);
      if (t.kv_any_invalid && count_valid(t.kv, t.n) == 0) continue;
      const Real* Kp = at(k, b, t.k0, h);
      compute_p(S, t, mm, Qp, kt.at(b, h, t.k0), kt.ldb(), lse_rows, g, mask, scale);
      compute_ds(dP, S, t, mm, dOp, vt.at(b, h, t.k0), vt.ldb(), D_rows, g);
      mm.nn_acc(m, hd, t.n, scale, dP, t.n, Kp, ld, dQ, hd);
    }
    add_rows(dq, dQ, b, q0, m, h);
  };

  bool fused = mode == AttnBackwardMode::kFusedPerHead;
  if (mode == AttnBackwardMode::kAuto) fused = B * H >= 4 * static_cast<int64_t>(num_threads());
  if (fused) {
    run(B * H, [&](int64_t bh) {
      const int64_t h = bh % H, b = bh / H;
      Real* dq_acc = dq ? sized(scratch<Real>().dq, N * hd) : nullptr;
      if (dq) std::fill(dq_acc, dq_acc + N * hd, Real(0));
      for (int64_t kb = 0; kb < nb; ++kb) key_block_pass(b, h, kb, dq_acc);
      if (dq) add_rows(dq, dq_acc, b, 0, N, h);
    });
  } else {
    if (dk || dv)
      run(B * H * nb, [&](int64_t item) {
        const int64_t kb = item % nb, bh = item / nb;
        key_block_pass(bh / H, bh % H, kb, nullptr);
      });
    if (dq)
      run(B * H * nb, [&](int64_t item) {
        const int64_t qb = item % nb, bh = item / nb;
        query_block_pass(bh / H, bh % H, qb);
      });
  }
}

// ---------------------------------------------------------------------------------------------
template <typename Real>
void attention_forward_naive(Real* out, const Real* q, const Real* k, const Real* v, const uint8_t* key_valid,
                             const BlockMask& mask, int64_t B, int64_t H, int64_t hd,
                             std::type_identity_t<Real> scale) {
  check_args(mask, B, H, hd, "attention_forward_naive");
  const int64_t N = mask.seq_len, ld = H * hd;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < N; ++i) {
        std::vector<int64_t> keys;
        std::vector<Real> s;
        const Real* qi = q + (b * N + i) * ld + h * hd;
        for (int64_t j = 0; j < N; ++j) {
          if (!mask.allowed(static_cast<int>(i), static_cast<int>(j))) continue;
          if (key_valid && !key_valid[b * N + j]) continue;
          const Real* kj = k + (b * N + j) * ld + h * hd;
          Real dot = 0;
          for (int64_t d = 0; d < hd; ++d) dot += qi[d] * kj[d];
          keys.push_back(j);
          s.push_back(scale * dot);
        }
        Real* o = out + (b * N + i) * ld + h * hd;
        std::fill(o, o + hd, Real(0));
        if (keys.empty()) continue;
        const Real mx = *std::max_element(s.begin(), s.end());
        Real sum = 0;
        for (auto& x : s) {
          x = std::exp(x - mx);
          sum += x;
        }
        for (size_t t = 0; t < keys.size(); ++t) {
          const Real* vj = v + (b * N + keys[t]) * ld + h * hd;
          const Real p = s[t] / sum;
          for (int64_t d = 0; d < hd; ++d) o[d] += p * vj[d];
        }
      }
}

#define SMT_INSTANTIATE_ATTENTION(Real)                                                                                \
  template void attention_forward<Real>(Real*, Real*, const Real*, const Real*, const Real*, const uint8_t*,           \
                                        const BlockMask&, int64_t, int64_t, int64_t, Real);                            \
  template void attention_backward<Real>(Real*, Real*, Real*, const Real*, const Real*, const Real*, const Real*,      \
                                         const Real*, const Real*, const uint8_t*, const BlockMask&, int64_t, int64_t, \
                                         int64_t, Real, AttnBackwardMode);                                             \
  template void attention_forward_naive<Real>(Real*, const Real*, const Real*, const Real*, const uint8_t*,            \
                                              const BlockMask&, int64_t, int64_t, int64_t, Real);
SMT_INSTANTIATE_ATTENTION(float)
SMT_INSTANTIATE_ATTENTION(double)
#undef SMT_INSTANTIATE_ATTENTION

}  // namespace smt::cpu
