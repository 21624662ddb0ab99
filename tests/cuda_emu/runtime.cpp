// The CUDA runtime, cuBLAS and NCCL calls of the project, emulated on host memory for the cuda-emu build
// (see cuda_emu.h). One device ("smt CUDA emulator", properties of an H100 SXM: 132 SMs, 227 KiB of opt-in
// shared memory per block). Every call runs at once, in program order; streams and events only order
// nothing and time the host. Device memory is host memory from the registry below, filled with 0xFF bytes
// when allocated (NaN as float and bf16), so a kernel that reads memory nobody wrote produces NaN.
// Checks that a GPU would fail on (with a message on stderr): copies and cuBLAS operands outside device
// allocations or past their end, host pointers as device operands, cuBLAS leading dimensions below the
// matrix height, unsupported cuBLAS type combinations, NCCL communicators of more than one rank.
// Environment: SMT_EMU_STATS=1 prints the number of kernel launches and GEMMs at exit.
// cublasGemmGroupedBatchedEx refuses bf16 A/B with an fp32 C (CUBLAS_STATUS_NOT_SUPPORTED; it is
// documented for one type throughout) unless SMT_EMU_GROUPED_MIXED=1, so both experts backends can run.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_emu/state.h"

namespace smt::emu {
namespace {

constexpr size_t kTotalMemory = size_t(80) << 30;
constexpr int kSmemOptin = 232448;
constexpr size_t kDefaultSmem = 48 * 1024;

struct Allocation {
  size_t bytes;
  bool pinned_host;
};

struct State {
  ~State() {  // SMT_EMU_STATS=1: what the process asked of the "GPU"
    const char* e = std::getenv("SMT_EMU_STATS");
    if (e != nullptr && std::strcmp(e, "1") == 0)
      std::fprintf(stderr, "CUDA emulator: %lld kernel launches, %lld cuBLAS GEMMs (%lld in grouped calls)\n", launches,
                   gemm_calls, grouped_gemms);
  }
  std::mutex mu;
  long long gemm_calls = 0, grouped_gemms = 0;
  std::map<uintptr_t, Allocation> allocations;  // start -> allocation
  size_t device_bytes = 0, device_high = 0, pool_high = 0, pool_bytes = 0;
  std::map<const void*, size_t> smem_limit;
  cudaError_t last_error = cudaSuccess, sticky = cudaSuccess;
  long long launches = 0;
  uint64_t release_threshold = 0;
};
State& state() {
  static State s;
  return s;
}

// The allocation holding [p, p + bytes), or null; with device_only, pinned host memory does not count.
const Allocation* find(const void* p, size_t bytes, bool device_only = false) {
  auto& s = state();
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = s.allocations.upper_bound(a);
  if (it == s.allocations.begin()) return nullptr;
  --it;
  if (a < it->first || a + bytes > it->first + it->second.bytes) return nullptr;
  if (device_only && it->second.pinned_host) return nullptr;
  return &it->second;
}

cudaError_t fail(cudaError_t err, const std::string& what) {
  std::fprintf(stderr, "CUDA emulator: %s\n", what.c_str());
  auto& s = state();
  if (err == cudaErrorIllegalAddress) s.sticky = err;
  s.last_error = err;
  return err;
}

// A device operand [p, p + bytes): inside one device allocation (cudaMalloc*, not cudaMallocHost).
bool device_range(const void* p, size_t bytes, const char* who, const char* what) {
  if (bytes == 0) return true;
  if (p != nullptr && find(p, bytes, true) != nullptr) return true;
  std::fprintf(stderr, "CUDA emulator: %s: %s [%p, +%zu bytes) is not inside one device allocation\n", who, what, p,
               bytes);
  return false;
}
// A host operand: not in device memory (pageable or pinned host memory).
bool host_range(const void* p, size_t bytes, const char* who, const char* what) {
  if (bytes == 0 || (p != nullptr && find(p, 0, true) == nullptr)) return true;
  std::fprintf(stderr, "CUDA emulator: %s: %s %p is device memory, the copy's kind says host\n", who, what, p);
  return false;
}

void* allocate(size_t bytes, bool pinned) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;  // exactly `bytes` (under AddressSanitizer a kernel's access past the end is reported)
  if (posix_memalign(&p, 256, bytes) != 0) return nullptr;
  std::memset(p, 0xFF, bytes);
  auto& s = state();
  s.allocations[reinterpret_cast<uintptr_t>(p)] = Allocation{bytes, pinned};
  if (!pinned) {
    s.device_bytes += bytes;
    s.device_high = std::max(s.device_high, s.device_bytes);
  }
  return p;
}

cudaError_t release(void* p, bool pinned) {
  if (p == nullptr) return cudaSuccess;
  auto& s = state();
  auto it = s.allocations.find(reinterpret_cast<uintptr_t>(p));
  if (it == s.allocations.end() || it->second.pinned_host != pinned)
    return fail(cudaErrorInvalidValue, pinned ? "cudaFreeHost of a pointer cudaMallocHost did not return"
                                              : "cudaFree of a pointer cudaMalloc did not return");
  if (!pinned) s.device_bytes -= it->second.bytes;
  s.allocations.erase(it);
  std::free(p);
  return cudaSuccess;
}

using Clock = std::chrono::steady_clock;
struct Event {
  Clock::time_point t{};
  bool recorded = false;
};

}  // namespace

bool is_device_pointer(const void* p) {
  std::lock_guard<std::mutex> lock(state().mu);
  return find(p, 0) != nullptr;
}
void fail_launch(cudaError_t err, const std::string& what) {
  std::lock_guard<std::mutex> lock(state().mu);
  fail(err, what);
}
cudaError_t sticky_error() { return state().sticky; }
size_t dynamic_smem_limit(const void* kernel) {
  std::lock_guard<std::mutex> lock(state().mu);
  auto it = state().smem_limit.find(kernel);
  return kernel == nullptr || it == state().smem_limit.end() ? kDefaultSmem : it->second;
}
void count_launch() { ++state().launches; }
long long launches() { return state().launches; }

}  // namespace smt::emu

using smt::emu::state;
namespace emu = smt::emu;

#define EMU_LOCK std::lock_guard<std::mutex> emu_lock_(state().mu)
#define EMU_STICKY \
  if (state().sticky != cudaSuccess) return state().sticky

extern "C" {

// ---- errors, versions, devices ----
cudaError_t cudaGetLastError() {
  EMU_LOCK;
  const cudaError_t e = state().sticky != cudaSuccess ? state().sticky : state().last_error;
  state().last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return state().sticky != cudaSuccess ? state().sticky : state().last_error; }
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    default: return "cudaError (emulator: other)";
  }
}
const char* cudaGetErrorString(cudaError_t e) { return cudaGetErrorName(e); }
cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
cudaError_t cudaDeviceSynchronize() {
  EMU_STICKY;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (d != 0) return cudaErrorInvalidDevice;
  std::memset(p, 0, sizeof(*p));
  std::snprintf(p->name, sizeof(p->name), "smt CUDA emulator");
  p->totalGlobalMem = emu::kTotalMemory;
  p->sharedMemPerBlock = emu::kDefaultSmem;
  p->sharedMemPerBlockOptin = emu::kSmemOptin;
  p->sharedMemPerMultiprocessor = 233472;
  p->regsPerBlock = 65536;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  p->maxThreadsPerMultiProcessor = 2048;
  p->multiProcessorCount = 132;
  p->major = 9;
  p->minor = 0;
  p->maxGridSize[0] = 2147483647;
  p->maxGridSize[1] = p->maxGridSize[2] = 65535;
  p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
  p->maxThreadsDim[2] = 64;
  p->l2CacheSize = 50 << 20;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int d) {
  if (d != 0) return cudaErrorInvalidDevice;
  switch (attr) {
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = emu::kSmemOptin; break;
    case cudaDevAttrMultiProcessorCount: *v = 132; break;
    case cudaDevAttrComputeCapabilityMajor: *v = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *v = 0; break;
    case cudaDevAttrMaxThreadsPerBlock: *v = 1024; break;
    case cudaDevAttrWarpSize: *v = 32; break;
    default: *v = 0; break;
  }
  return cudaSuccess;
}
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  EMU_LOCK;
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || value > emu::kSmemOptin)
      return emu::fail(cudaErrorInvalidValue, "cudaFuncSetAttribute: " + std::to_string(value) +
                                                  " bytes of dynamic shared memory exceed the opt-in limit");
    state().smem_limit[func] = static_cast<size_t>(value);
  }
  return cudaSuccess;
}

// ---- memory ----
cudaError_t cudaMalloc(void** p, size_t bytes) {
  EMU_LOCK;
  EMU_STICKY;
  *p = emu::allocate(bytes, false);
  return (*p != nullptr || bytes == 0) ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFree(void* p) {
  EMU_LOCK;
  return emu::release(p, false);
}
cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) {
  EMU_LOCK;
  EMU_STICKY;
  *p = emu::allocate(bytes, false);
  state().pool_bytes += bytes;
  state().pool_high = std::max(state().pool_high, state().pool_bytes);
  return (*p != nullptr || bytes == 0) ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFreeAsync(void* p, cudaStream_t) {
  EMU_LOCK;
  const emu::Allocation* a = p != nullptr ? emu::find(p, 0, true) : nullptr;
  const size_t bytes = a != nullptr ? a->bytes : 0;
  const cudaError_t err = emu::release(p, false);
  if (err == cudaSuccess) state().pool_bytes -= std::min(bytes, state().pool_bytes);
  return err;
}
cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned int) {
  EMU_LOCK;
  *p = emu::allocate(bytes, true);
  return (*p != nullptr || bytes == 0) ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaMallocHost(void** p, size_t bytes) { return cudaHostAlloc(p, bytes, 0); }
cudaError_t cudaFreeHost(void* p) {
  EMU_LOCK;
  return emu::release(p, true);
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total) {
  EMU_LOCK;
  *total = emu::kTotalMemory;
  *free_bytes = emu::kTotalMemory - state().device_bytes;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int d) {
  if (d != 0) return cudaErrorInvalidDevice;
  static int tag;
  *pool = reinterpret_cast<cudaMemPool_t>(&tag);
  return cudaSuccess;
}
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t, cudaMemPoolAttr attr, void* value) {
  EMU_LOCK;
  switch (attr) {
    case cudaMemPoolAttrReleaseThreshold: state().release_threshold = *static_cast<uint64_t*>(value); break;
    case cudaMemPoolAttrUsedMemHigh:
    case cudaMemPoolAttrReservedMemHigh:
      if (*static_cast<uint64_t*>(value) != 0) return cudaErrorInvalidValue;  // may only be reset
      state().pool_high = state().pool_bytes;
      break;
    default: break;
  }
  return cudaSuccess;
}
cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t, cudaMemPoolAttr attr, void* value) {
  EMU_LOCK;
  uint64_t v = 0;
  switch (attr) {
    case cudaMemPoolAttrReleaseThreshold: v = state().release_threshold; break;
    case cudaMemPoolAttrUsedMemHigh:
    case cudaMemPoolAttrReservedMemHigh: v = state().pool_high; break;
    case cudaMemPoolAttrUsedMemCurrent:
    case cudaMemPoolAttrReservedMemCurrent: v = state().pool_bytes; break;
    default: break;
  }
  *static_cast<uint64_t*>(value) = v;
  return cudaSuccess;
}
cudaError_t cudaMemPoolTrimTo(cudaMemPool_t, size_t) { return cudaSuccess; }

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
  EMU_LOCK;
  EMU_STICKY;
  if (bytes == 0) return cudaSuccess;
  const char* who = "cudaMemcpy";
  bool ok = true;
  switch (kind) {
    case cudaMemcpyHostToDevice:
      ok = emu::device_range(dst, bytes, who, "destination") && emu::host_range(src, bytes, who, "source");
      break;
    case cudaMemcpyDeviceToHost:
      ok = emu::device_range(src, bytes, who, "source") && emu::host_range(dst, bytes, who, "destination");
      break;
    case cudaMemcpyDeviceToDevice:
      ok = emu::device_range(dst, bytes, who, "destination") && emu::device_range(src, bytes, who, "source");
      break;
    case cudaMemcpyHostToHost:
      ok = emu::host_range(dst, bytes, who, "destination") && emu::host_range(src, bytes, who, "source");
      break;
    default:  // cudaMemcpyDefault: either side anything; a registered pointer must fit its allocation
      ok = (emu::find(dst, 0) == nullptr || emu::find(dst, bytes) != nullptr) &&
           (emu::find(src, 0) == nullptr || emu::find(src, bytes) != nullptr);
      if (!ok) std::fprintf(stderr, "CUDA emulator: cudaMemcpy (default kind) past the end of an allocation\n");
      break;
  }
  if (!ok) return emu::fail(cudaErrorInvalidValue, "cudaMemcpy: operands do not match the copy's kind");
  const auto d = reinterpret_cast<uintptr_t>(dst), s = reinterpret_cast<uintptr_t>(src);
  if (d < s + bytes && s < d + bytes && d != s)
    return emu::fail(cudaErrorInvalidValue, "cudaMemcpy: overlapping source and destination");
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  return cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  EMU_LOCK;
  EMU_STICKY;
  if (!emu::device_range(p, bytes, "cudaMemset", "buffer"))
    return emu::fail(cudaErrorInvalidValue, "cudaMemset outside device memory");
  if (bytes > 0) std::memset(p, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemset(void* p, int value, size_t bytes) { return cudaMemsetAsync(p, value, bytes, nullptr); }

// ---- streams and events ----
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned int) {
  *s = reinterpret_cast<cudaStream_t>(new int(0));
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, 0); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete reinterpret_cast<int*>(s);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) {
  EMU_STICKY;
  return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned int) {
  EMU_STICKY;
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned int) {
  *e = reinterpret_cast<cudaEvent_t>(new emu::Event());
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* e) { return cudaEventCreateWithFlags(e, 0); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete reinterpret_cast<emu::Event*>(e);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
  auto* ev = reinterpret_cast<emu::Event*>(e);
  ev->t = emu::Clock::now();
  ev->recorded = true;
  EMU_STICKY;
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) {
  EMU_STICKY;
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  const auto* ea = reinterpret_cast<emu::Event*>(a);
  const auto* eb = reinterpret_cast<emu::Event*>(b);
  if (!ea->recorded || !eb->recorded) return cudaErrorInvalidResourceHandle;
  *ms = std::chrono::duration<float, std::milli>(eb->t - ea->t).count();
  return cudaSuccess;
}

}  // extern "C"

// ---- cuBLAS ----
namespace smt::emu {
namespace {

struct Handle {
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
};

float load(const void* base, cudaDataType_t type, int64_t i) {
  if (type == CUDA_R_32F) return static_cast<const float*>(base)[i];
  return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
}
void store(void* base, cudaDataType_t type, int64_t i, float v) {
  if (type == CUDA_R_32F) static_cast<float*>(base)[i] = v;
  else static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(v);
}
size_t type_bytes(cudaDataType_t t) { return t == CUDA_R_32F ? 4 : 2; }

// cublasGemmEx's combinations for these types: fp32 A/B/C (any 32F compute type), bf16 A/B with bf16 or fp32
// C (CUBLAS_COMPUTE_32F / _PEDANTIC only: the FAST_* types are for fp32 inputs).
bool supported(cudaDataType_t a, cudaDataType_t b, cudaDataType_t c, cublasComputeType_t compute) {
  if (a != b) return false;
  if (a == CUDA_R_32F)
    return c == CUDA_R_32F && (compute == CUBLAS_COMPUTE_32F || compute == CUBLAS_COMPUTE_32F_PEDANTIC ||
                               compute == CUBLAS_COMPUTE_32F_FAST_TF32 || compute == CUBLAS_COMPUTE_32F_FAST_16BF);
  if (a == CUDA_R_16BF)
    return (c == CUDA_R_32F || c == CUDA_R_16BF) &&
           (compute == CUBLAS_COMPUTE_32F || compute == CUBLAS_COMPUTE_32F_PEDANTIC);
  return false;
}

// Column-major C[m x n] = alpha op(A) op(B) + beta C (C not read when beta == 0), fp32 accumulation in k order.
// With a bf16 C and a math mode that allows reduced-precision reductions (no
// CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION), cuBLAS may split k and add bf16-rounded partial sums:
// the emulation does that (two halves of k), so code that needs one rounding must say so.
cublasStatus_t gemm(const char* who, cublasMath_t math, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha,
                    const void* A, cudaDataType_t at, int lda, const void* B, cudaDataType_t bt, int ldb, float beta,
                    void* C, cudaDataType_t ct, int ldc) {
  if (m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_INVALID_VALUE;
  const bool tA = ta != CUBLAS_OP_N, tB = tb != CUBLAS_OP_N;
  const int a_rows = tA ? k : m, a_cols = tA ? m : k, b_rows = tB ? n : k, b_cols = tB ? k : n;
  if (lda < std::max(1, a_rows) || ldb < std::max(1, b_rows) || ldc < std::max(1, m)) {
    std::fprintf(stderr, "CUDA emulator: %s: leading dimension too small (m %d n %d k %d lda %d ldb %d ldc %d)\n", who,
                 m, n, k, lda, ldb, ldc);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  ++state().gemm_calls;
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  auto extent = [](int rows, int cols, int ld, cudaDataType_t t) {
    return rows == 0 || cols == 0 ? size_t(0) : (size_t(cols - 1) * ld + rows) * type_bytes(t);
  };
  {
    std::lock_guard<std::mutex> lock(state().mu);
    if (!device_range(A, k == 0 ? 0 : extent(a_rows, a_cols, lda, at), who, "A") ||
        !device_range(B, k == 0 ? 0 : extent(b_rows, b_cols, ldb, bt), who, "B") ||
        !device_range(C, extent(m, n, ldc, ct), who, "C")) {
      fail(cudaErrorIllegalAddress, std::string(who) + ": operand outside device memory");
      return CUBLAS_STATUS_EXECUTION_FAILED;
    }
  }
  const bool split_k = ct == CUDA_R_16BF && (math & CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION) == 0 && k >= 2;
  auto bf16_round = [](float x) { return __bfloat162float(__float2bfloat16_rn(x)); };
  std::vector<float> col(static_cast<size_t>(m));
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) {
      float acc = 0.0f, first_half = 0.0f;
      for (int l = 0; l < k; ++l) {
        if (split_k && l == k / 2) {
          first_half = bf16_round(acc);
          acc = 0.0f;
        }
        const float a = load(A, at, tA ? l + int64_t(i) * lda : i + int64_t(l) * lda);
        const float b = load(B, bt, tB ? j + int64_t(l) * ldb : l + int64_t(j) * ldb);
        acc += a * b;
      }
      col[i] = split_k ? bf16_round(first_half + bf16_round(acc)) : acc;
    }
    for (int i = 0; i < m; ++i) {
      const int64_t o = i + int64_t(j) * ldc;
      const float prior = beta == 0.0f ? 0.0f : beta * load(C, ct, o);
      store(C, ct, o, alpha * col[i] + prior);
    }
  }
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace
}  // namespace smt::emu

extern "C" {

cublasStatus_t cublasCreate_v2(cublasHandle_t* h) {
  *h = reinterpret_cast<cublasHandle_t>(new emu::Handle());
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t h) {
  delete reinterpret_cast<emu::Handle*>(h);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream_v2(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t mode) {
  reinterpret_cast<emu::Handle*>(h)->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasGetMathMode(cublasHandle_t h, cublasMath_t* mode) {
  *mode = reinterpret_cast<emu::Handle*>(h)->math;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void* alpha, const void* A, cudaDataType_t at, int lda, const void* B,
                            cudaDataType_t bt, int ldb, const void* beta, void* C, cudaDataType_t ct, int ldc,
                            cublasComputeType_t compute, cublasGemmAlgo_t) {
  if (state().sticky != cudaSuccess) return CUBLAS_STATUS_EXECUTION_FAILED;
  if (!emu::supported(at, bt, ct, compute)) return CUBLAS_STATUS_NOT_SUPPORTED;
  return emu::gemm("cublasGemmEx", reinterpret_cast<emu::Handle*>(handle)->math, ta, tb, m, n, k, *static_cast<const float*>(alpha), A, at, lda, B, bt, ldb,
                   *static_cast<const float*>(beta), C, ct, ldc);
}
cublasStatus_t cublasGemmGroupedBatchedEx(cublasHandle_t handle, const cublasOperation_t transa[],
                                          const cublasOperation_t transb[], const int m[], const int n[],
                                          const int k[], const void* alpha, const void* const Aarray[],
                                          cudaDataType_t at, const int lda[], const void* const Barray[],
                                          cudaDataType_t bt, const int ldb[], const void* beta, void* const Carray[],
                                          cudaDataType_t ct, const int ldc[], int group_count,
                                          const int group_size[], cublasComputeType_t compute) {
  if (state().sticky != cudaSuccess) return CUBLAS_STATUS_EXECUTION_FAILED;
  if (!emu::supported(at, bt, ct, compute)) return CUBLAS_STATUS_NOT_SUPPORTED;
  // The grouped call is documented for A/B/C of one type; bf16 A/B with an fp32 C is refused unless
  // SMT_EMU_GROUPED_MIXED=1 (a cuBLAS that accepts it: the project's code then takes that backend).
  const char* mixed = std::getenv("SMT_EMU_GROUPED_MIXED");
  if (at != ct && !(mixed != nullptr && std::strcmp(mixed, "1") == 0)) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (group_count < 0) return CUBLAS_STATUS_INVALID_VALUE;
  int64_t total = 0;
  for (int g = 0; g < group_count; ++g) {
    if (group_size[g] < 0) return CUBLAS_STATUS_INVALID_VALUE;
    total += group_size[g];
  }
  {  // the pointer arrays live in device memory
    std::lock_guard<std::mutex> lock(state().mu);
    const size_t bytes = size_t(total) * sizeof(void*);
    if (!emu::device_range(Aarray, bytes, "cublasGemmGroupedBatchedEx", "Aarray") ||
        !emu::device_range(Barray, bytes, "cublasGemmGroupedBatchedEx", "Barray") ||
        !emu::device_range(Carray, bytes, "cublasGemmGroupedBatchedEx", "Carray")) {
      emu::fail(cudaErrorIllegalAddress, "cublasGemmGroupedBatchedEx: pointer arrays outside device memory");
      return CUBLAS_STATUS_EXECUTION_FAILED;
    }
  }
  state().grouped_gemms += total;
  const float* alphas = static_cast<const float*>(alpha);
  const float* betas = static_cast<const float*>(beta);
  int64_t idx = 0;
  for (int g = 0; g < group_count; ++g)
    for (int p = 0; p < group_size[g]; ++p, ++idx) {
      const cublasStatus_t st =
          emu::gemm("cublasGemmGroupedBatchedEx", reinterpret_cast<emu::Handle*>(handle)->math, transa[g], transb[g], m[g], n[g], k[g], alphas[g], Aarray[idx], at,
                    lda[g], Barray[idx], bt, ldb[g], betas[g], Carray[idx], ct, ldc[g]);
      if (st != CUBLAS_STATUS_SUCCESS) return st;
    }
  return CUBLAS_STATUS_SUCCESS;
}

// ---- NCCL: communicators of one rank ----
struct ncclComm {
  int rank = 0;
};
ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  std::memset(id, 0, sizeof(*id));
  std::snprintf(id->internal, sizeof(id->internal), "smt-emu-%d", std::rand());
  return ncclSuccess;
}
ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId, int rank) {
  if (nranks != 1 || rank != 0) {
    std::fprintf(stderr, "CUDA emulator: NCCL communicators of %d ranks are not emulated (one rank only)\n", nranks);
    return ncclInvalidUsage;
  }
  *comm = new ncclComm();
  return ncclSuccess;
}
ncclResult_t ncclCommSplit(ncclComm_t, int, int, ncclComm_t* newcomm, ncclConfig_t*) {
  *newcomm = new ncclComm();
  return ncclSuccess;
}
ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}
ncclResult_t ncclCommAbort(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}
ncclResult_t ncclCommCount(const ncclComm_t, int* count) {
  *count = 1;
  return ncclSuccess;
}
ncclResult_t ncclCommUserRank(const ncclComm_t, int* rank) {
  *rank = 0;
  return ncclSuccess;
}
const char* ncclGetErrorString(ncclResult_t r) { return r == ncclSuccess ? "no error" : "NCCL error (emulator)"; }

static size_t nccl_bytes(ncclDataType_t t) {
  switch (t) {
    case ncclInt8: case ncclUint8: return 1;
    case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
    default: return 4;
  }
}
static ncclResult_t nccl_copy(const char* who, const void* send, void* recv, size_t bytes) {
  std::lock_guard<std::mutex> lock(state().mu);
  if (!emu::device_range(send, bytes, who, "send buffer") || !emu::device_range(recv, bytes, who, "receive buffer"))
    return ncclInvalidArgument;
  if (send != recv && bytes > 0) std::memmove(recv, send, bytes);
  return ncclSuccess;
}
ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t t, ncclRedOp_t, ncclComm_t,
                           cudaStream_t) {
  return nccl_copy("ncclAllReduce", send, recv, count * nccl_bytes(t));
}
ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t t, int root, ncclComm_t,
                           cudaStream_t) {
  if (root != 0) return ncclInvalidArgument;
  return nccl_copy("ncclBroadcast", send, recv, count * nccl_bytes(t));
}
ncclResult_t ncclAllGather(const void* send, void* recv, size_t count, ncclDataType_t t, ncclComm_t, cudaStream_t) {
  return nccl_copy("ncclAllGather", send, recv, count * nccl_bytes(t));
}
// Send / receive to oneself: matched in order inside a group (ncclGroupStart / ncclGroupEnd).
static std::vector<std::pair<const void*, size_t>> g_sends;
static std::vector<std::pair<void*, size_t>> g_recvs;
static int g_group_depth = 0;
static ncclResult_t nccl_match() {
  if (g_sends.size() != g_recvs.size()) return ncclInvalidUsage;
  for (size_t i = 0; i < g_sends.size(); ++i) {
    if (g_sends[i].second != g_recvs[i].second) return ncclInvalidUsage;
    const ncclResult_t r = nccl_copy("ncclSend/ncclRecv", g_sends[i].first, g_recvs[i].first, g_sends[i].second);
    if (r != ncclSuccess) return r;
  }
  g_sends.clear();
  g_recvs.clear();
  return ncclSuccess;
}
ncclResult_t ncclSend(const void* send, size_t count, ncclDataType_t t, int peer, ncclComm_t, cudaStream_t) {
  if (peer != 0) return ncclInvalidArgument;
  g_sends.emplace_back(send, count * nccl_bytes(t));
  return g_group_depth > 0 ? ncclSuccess : ncclInvalidUsage;  // a lone send to oneself would hang
}
ncclResult_t ncclRecv(void* recv, size_t count, ncclDataType_t t, int peer, ncclComm_t, cudaStream_t) {
  if (peer != 0) return ncclInvalidArgument;
  g_recvs.emplace_back(recv, count * nccl_bytes(t));
  return g_group_depth > 0 ? ncclSuccess : ncclInvalidUsage;
}
ncclResult_t ncclGroupStart() {
  ++g_group_depth;
  return ncclSuccess;
}
ncclResult_t ncclGroupEnd() {
  if (g_group_depth == 0) return ncclInvalidUsage;
  return --g_group_depth == 0 ? nccl_match() : ncclSuccess;
}

}  // extern "C"
