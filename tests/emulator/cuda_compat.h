// cuda_compat.h — the CUDA C++ dialect our kernels use, spelled in plain g++ C++17, so the real
// kernels/*.cu files compile unchanged for the CPU emulator (tests/emulator).
//
// The emulator force-includes this header (`g++ -include cuda_compat.h -DGPUCONV_EMULATED=1`) in front
// of a generated wrapper that #includes one kernel source, then fiber_runtime.h. Everything a kernel can
// name lives here; how blocks and threads actually run lives in fiber_runtime.h.
//
// Model (see README.md): one fiber (own stack) per CUDA thread; all fibers of a block run on one OS
// thread, one at a time, switching only at __syncthreads() and at thread exit. Hence:
//   * threadIdx/blockIdx/blockDim/gridDim are macros reading the *current fiber's* state through one
//     thread_local pointer (a thread_local *variable* per index would be wrong: all fibers of a block
//     share the OS thread);
//   * static __shared__ is `static thread_local`: exactly one copy per OS thread, and an OS thread runs
//     one block at a time, so it is one copy per block;
//   * atomics need no fiber-level care, but blocks may run on several OS threads
//     (GPUCONV_EMU_WORKERS > 1), so they are real atomic read-modify-writes.
//
// Not provided on purpose (a compile error is the intended outcome): warp shuffles/votes/__syncwarp
// (static_assert with a message), wmma, inline PTX (`asm("...")` with PTX text fails in the
// assembler), textures/surfaces, `extern __shared__` spelled directly (use GPUCONV_DYNAMIC_SHARED),
// __constant__ memory written from the host, cooperative groups.
#pragma once

#ifndef GPUCONV_EMULATED
#error "cuda_compat.h is for the gpuconv CPU emulator only (compile with -DGPUCONV_EMULATED=1)"
#endif

#include <assert.h>  // assert() failures land in the emulator's __assert_fail (fiber_runtime.h)
#include <math.h>    // libstdc++'s math.h also puts std::isnan/isinf/... overloads in the global namespace
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
// The runtime's own headers (fiber_runtime.h) are included here, BEFORE the macros below: libstdc++ and
// glibc spell `__attribute__((__noinline__))`, which the CUDA macro __noinline__ would break. (CUDA
// toolkits before 11.5 had the same clash.) A kernel source that includes such a header itself after
// this point fails to compile.
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>
#include <atomic>
#include <condition_variable>
#include <cstdarg>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <utility>
#include <vector>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

// ---------------------------------------------------------------------------------------------------
// Execution-space and declaration qualifiers
// ---------------------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)  // ignored: the emulator accepts up to 1024 threads per block regardless
#define __align__(n) __attribute__((aligned(n)))
#define __constant__  // plain (read-only in practice) globals; host-side writes are not supported
#define __managed__
// One copy per OS thread == one copy per block (a worker thread runs one block at a time). A `static`
// local keeps the CUDA meaning "one variable shared by all threads of the block" instead of one per fiber.
#define __shared__ static thread_local
// (__restrict__ is already a GNU keyword.)

#define warpSize 32

// ---------------------------------------------------------------------------------------------------
// Vector types and dim3
// ---------------------------------------------------------------------------------------------------
struct uint3 { unsigned int x, y, z; };

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

#define GPUEMU_VEC2(T, name, al)                                                                      \
    struct __attribute__((aligned(al))) name { T x, y; };                                           \
    inline name make_##name(T x, T y) { return name{x, y}; }
#define GPUEMU_VEC3(T, name)                                                                          \
    struct name { T x, y, z; };                                                                      \
    inline name make_##name(T x, T y, T z) { return name{x, y, z}; }
#define GPUEMU_VEC4(T, name, al)                                                                      \
    struct __attribute__((aligned(al))) name { T x, y, z, w; };                                     \
    inline name make_##name(T x, T y, T z, T w) { return name{x, y, z, w}; }

inline uint3 make_uint3(unsigned int x, unsigned int y, unsigned int z) { return uint3{x, y, z}; }
GPUEMU_VEC2(float, float2, 8)
GPUEMU_VEC3(float, float3)
GPUEMU_VEC4(float, float4, 16)
GPUEMU_VEC2(double, double2, 16)
GPUEMU_VEC2(int, int2, 8)
GPUEMU_VEC3(int, int3)
GPUEMU_VEC4(int, int4, 16)
GPUEMU_VEC2(unsigned int, uint2, 8)
GPUEMU_VEC4(unsigned int, uint4, 16)
GPUEMU_VEC2(long long, longlong2, 16)
GPUEMU_VEC4(unsigned char, uchar4, 4)
GPUEMU_VEC4(signed char, char4, 4)
GPUEMU_VEC2(short, short2, 4)
#undef GPUEMU_VEC2
#undef GPUEMU_VEC3
#undef GPUEMU_VEC4

// ---------------------------------------------------------------------------------------------------
// The per-fiber / per-block state the index built-ins read (filled in by fiber_runtime.h)
// ---------------------------------------------------------------------------------------------------
namespace gpuemu {

struct ThreadView {      // one per fiber (the first member of a Fiber)
    uint3 thread_idx;
};

struct BlockView {       // one per worker OS thread (the first part of a Worker)
    ThreadView* cur;     // the fiber running right now; switched by whoever switches fibers
    uint3 block_idx;
    dim3 block_dim;
    dim3 grid_dim;
    int sync_count;      // __syncthreads_count result of the last barrier
    int sync_live;       // threads that took part in the last barrier
};

// The worker this OS thread is serving (null outside a launch). It is the ONLY thread_local the
// runtime itself owns, because the block poisoning fills this module's whole TLS block (where every
// static __shared__ array lives) and has to save/restore just this pointer around it.
inline thread_local BlockView* t_view = nullptr;

// Defined in fiber_runtime.h (same translation unit).
void barrier(const char* file, int line, int pred);
[[noreturn]] void trap(const char* what, const char* file, int line);

template <class...> struct always_false { static constexpr bool value = false; };

}  // namespace gpuemu

// Read-only views of the current fiber's / block's indices: `threadIdx.x = 1` does not compile, and
// every read goes through the thread_local pointer, so after a context switch it sees the new fiber.
#define threadIdx (static_cast<const ::uint3&>(::gpuemu::t_view->cur->thread_idx))
#define blockIdx (static_cast<const ::uint3&>(::gpuemu::t_view->block_idx))
#define blockDim (static_cast<const ::dim3&>(::gpuemu::t_view->block_dim))
#define gridDim (static_cast<const ::dim3&>(::gpuemu::t_view->grid_dim))

// ---------------------------------------------------------------------------------------------------
// Synchronisation
// ---------------------------------------------------------------------------------------------------
// The call site travels with the barrier so that threads waiting at *different* __syncthreads() calls
// (undefined behaviour in CUDA: the barrier is in divergent code) are reported instead of silently
// matched.
#define __syncthreads() ::gpuemu::barrier(__FILE__, __LINE__, 0)
#define __syncthreads_count(pred) (::gpuemu::barrier(__FILE__, __LINE__, (pred) ? 1 : 0), ::gpuemu::t_view->sync_count)
#define __syncthreads_and(pred) \
    (::gpuemu::barrier(__FILE__, __LINE__, (pred) ? 1 : 0), ::gpuemu::t_view->sync_count == ::gpuemu::t_view->sync_live)
#define __syncthreads_or(pred) (::gpuemu::barrier(__FILE__, __LINE__, (pred) ? 1 : 0), ::gpuemu::t_view->sync_count > 0)

inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

#define __trap() ::gpuemu::trap("__trap()", __FILE__, __LINE__)
#define __brkpt() ::gpuemu::trap("__brkpt()", __FILE__, __LINE__)

// Warp-level primitives cannot be emulated by a fiber-per-thread model that only switches at barriers.
#define GPUEMU_UNSUPPORTED(fn)                                                                        \
    template <class... A> inline unsigned fn(A...) {                                                 \
        static_assert(::gpuemu::always_false<A...>::value,                                           \
                      #fn " is not supported by the gpuconv CPU emulator (see tests/emulator/README.md)"); \
        return 0;                                                                                    \
    }
GPUEMU_UNSUPPORTED(__syncwarp)
GPUEMU_UNSUPPORTED(__activemask)
GPUEMU_UNSUPPORTED(__shfl_sync)
GPUEMU_UNSUPPORTED(__shfl_up_sync)
GPUEMU_UNSUPPORTED(__shfl_down_sync)
GPUEMU_UNSUPPORTED(__shfl_xor_sync)
GPUEMU_UNSUPPORTED(__ballot_sync)
GPUEMU_UNSUPPORTED(__any_sync)
GPUEMU_UNSUPPORTED(__all_sync)
GPUEMU_UNSUPPORTED(__match_any_sync)
GPUEMU_UNSUPPORTED(__reduce_add_sync)
#undef GPUEMU_UNSUPPORTED

// ---------------------------------------------------------------------------------------------------
// Dynamic shared memory: `GPUCONV_DYNAMIC_SHARED(float, tile);` inside a kernel body makes `tile` a
// float* to the current block's buffer of `shared_mem` bytes (16-byte aligned, filled with 0xFF bytes —
// NaN for floating types — before every block). Function scope only (a namespace-scope use would be
// evaluated once at load time).
// ---------------------------------------------------------------------------------------------------
namespace gpuemu { void* dynamic_shared(); }
#define GPUCONV_DYNAMIC_SHARED(type, name) type* const name = static_cast<type*>(::gpuemu::dynamic_shared())

// ---------------------------------------------------------------------------------------------------
// float16: CUDA's __half, as the compiler's _Float16 (IEEE binary16; conversions round to nearest even)
// ---------------------------------------------------------------------------------------------------
typedef _Float16 __half;
struct __attribute__((aligned(4))) __half2 { __half x, y; };
inline float __half2float(__half h) { return static_cast<float>(h); }
inline __half __float2half(float f) { return static_cast<__half>(f); }
inline __half __float2half_rn(float f) { return static_cast<__half>(f); }
inline __half __double2half(double d) { return static_cast<__half>(d); }  // one rounding, as CUDA
inline __half __int2half_rn(int i) { return static_cast<__half>(i); }
inline __half2 __floats2half2_rn(float a, float b) { return __half2{__float2half_rn(a), __float2half_rn(b)}; }
inline float __low2float(__half2 h) { return static_cast<float>(h.x); }
inline float __high2float(__half2 h) { return static_cast<float>(h.y); }
inline unsigned short __half_as_ushort(__half h) { unsigned short u; std::memcpy(&u, &h, 2); return u; }
inline __half __ushort_as_half(unsigned short u) { __half h; std::memcpy(&h, &u, 2); return h; }

// ---------------------------------------------------------------------------------------------------
// Loads, bit casts, fast-math intrinsics (exact versions: the emulator checks logic, not ulps)
// ---------------------------------------------------------------------------------------------------
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldca(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldlu(const T* p) { return *p; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stwt(T* p, T v) { *p = v; }

inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline unsigned int __float_as_uint(float f) { unsigned int i; std::memcpy(&i, &f, 4); return i; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }
inline long long __double_as_longlong(double d) { long long i; std::memcpy(&i, &d, 8); return i; }

inline float __fdividef(float a, float b) { return a / b; }
inline float fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return powf(10.0f, x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log10f(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float __saturatef(float x) { return x != x ? 0.0f : (x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x)); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }

inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned int>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned int __brev(unsigned int x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    return __builtin_bswap32(x);
}
inline int __mul24(int a, int b) { return static_cast<int>((static_cast<long long>(a) << 40 >> 40) * (static_cast<long long>(b) << 40 >> 40)); }
inline unsigned int __umul24(unsigned int a, unsigned int b) { return (a & 0xffffffu) * (b & 0xffffffu); }
inline int __mulhi(int a, int b) { return static_cast<int>((static_cast<long long>(a) * b) >> 32); }
inline unsigned int __umulhi(unsigned int a, unsigned int b) { return static_cast<unsigned int>((static_cast<unsigned long long>(a) * b) >> 32); }
inline long long __mul64hi(long long a, long long b) { return static_cast<long long>((static_cast<__int128>(a) * b) >> 64); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) { return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64); }

// ---------------------------------------------------------------------------------------------------
// min / max: the same overload set as CUDA's math_functions.hpp, so a call that is ambiguous for NVRTC is
// ambiguous here too. The floating-point ones are fminf/fmaxf, as on the GPU (a NaN operand is dropped).
// ---------------------------------------------------------------------------------------------------
#define GPUEMU_MINMAX(RT, TA, TB)                                                                     \
    inline RT min(TA a, TB b) { return static_cast<RT>(a) < static_cast<RT>(b) ? static_cast<RT>(a) : static_cast<RT>(b); } \
    inline RT max(TA a, TB b) { return static_cast<RT>(a) > static_cast<RT>(b) ? static_cast<RT>(a) : static_cast<RT>(b); }
GPUEMU_MINMAX(int, int, int)
GPUEMU_MINMAX(unsigned int, unsigned int, unsigned int)
GPUEMU_MINMAX(unsigned int, int, unsigned int)
GPUEMU_MINMAX(unsigned int, unsigned int, int)
GPUEMU_MINMAX(long, long, long)
GPUEMU_MINMAX(unsigned long, unsigned long, unsigned long)
GPUEMU_MINMAX(unsigned long, long, unsigned long)
GPUEMU_MINMAX(unsigned long, unsigned long, long)
GPUEMU_MINMAX(long long, long long, long long)
GPUEMU_MINMAX(unsigned long long, unsigned long long, unsigned long long)
GPUEMU_MINMAX(unsigned long long, long long, unsigned long long)
GPUEMU_MINMAX(unsigned long long, unsigned long long, long long)
#undef GPUEMU_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline double min(float a, double b) { return fmin(static_cast<double>(a), b); }
inline double max(float a, double b) { return fmax(static_cast<double>(a), b); }
inline double min(double a, float b) { return fmin(a, static_cast<double>(b)); }
inline double max(double a, float b) { return fmax(a, static_cast<double>(b)); }
inline unsigned int umin(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int umax(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline long long llmin(long long a, long long b) { return a < b ? a : b; }
inline long long llmax(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long ullmin(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long ullmax(unsigned long long a, unsigned long long b) { return a > b ? a : b; }

// ---------------------------------------------------------------------------------------------------
// Atomics. Fibers of one block never run concurrently, but blocks may (GPUCONV_EMU_WORKERS > 1), so these
// are real atomic read-modify-writes (relaxed, as CUDA's). Floating-point ones are compare-and-swap loops.
// ---------------------------------------------------------------------------------------------------
namespace gpuemu {
template <class T, class F> inline T atomic_update(T* p, F f) {
    T old;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    T desired;
    do { desired = f(old); } while (!__atomic_compare_exchange(p, &old, &desired, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}
}  // namespace gpuemu

#define GPUEMU_ATOMIC_INT(T)                                                                          \
    inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }             \
    inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }             \
    inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }           \
    inline T atomicMin(T* p, T v) { return ::gpuemu::atomic_update(p, [v](T o) { return o < v ? o : v; }); } \
    inline T atomicMax(T* p, T v) { return ::gpuemu::atomic_update(p, [v](T o) { return o > v ? o : v; }); } \
    inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); }             \
    inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }               \
    inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_RELAXED); }             \
    inline T atomicCAS(T* p, T cmp, T v) {                                                           \
        __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);           \
        return cmp;                                                                                  \
    }
GPUEMU_ATOMIC_INT(int)
GPUEMU_ATOMIC_INT(unsigned int)
GPUEMU_ATOMIC_INT(long long)
GPUEMU_ATOMIC_INT(unsigned long long)
#undef GPUEMU_ATOMIC_INT
inline float atomicAdd(float* p, float v) { return ::gpuemu::atomic_update(p, [v](float o) { return o + v; }); }
inline double atomicAdd(double* p, double v) { return ::gpuemu::atomic_update(p, [v](double o) { return o + v; }); }
inline __half atomicAdd(__half* p, __half v) { return ::gpuemu::atomic_update(p, [v](__half o) { return static_cast<__half>(static_cast<float>(o) + static_cast<float>(v)); }); }
inline float atomicExch(float* p, float v) { float old; __atomic_exchange(p, &v, &old, __ATOMIC_RELAXED); return old; }
inline unsigned int atomicInc(unsigned int* p, unsigned int lim) { return ::gpuemu::atomic_update(p, [lim](unsigned int o) { return o >= lim ? 0u : o + 1; }); }
inline unsigned int atomicDec(unsigned int* p, unsigned int lim) { return ::gpuemu::atomic_update(p, [lim](unsigned int o) { return (o == 0 || o > lim) ? lim : o - 1; }); }
