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
//     (GPUCONV_EMU_WORKERS > 1), so they are real atomic read-modify-writes;
//   * the tensor-core mma that a kernel writes as inline PTX on a GPU is provided as plain functions
//     (gpuconv_emu_mma_m16n8k8_tf32, gpuconv_emu_mma_m16n8k16_f16, gpuconv_emu_cvt_rna_tf32, at the end
//     of this file) that the kernel calls under #ifdef GPUCONV_EMULATED. The mma is warp-collective on a
//     GPU but BLOCK-collective here (lanes exchange operands through static shared memory between two
//     barriers): every thread of the block must make the same sequence of mma calls.
//
// Not provided on purpose (a compile error is the intended outcome): warp shuffles/votes/__syncwarp
// (static_assert with a message), wmma, inline PTX (`asm("...")` with PTX text fails in the
// assembler; the mma and cvt.rna.tf32 above are the only PTX with a stand-in), textures/surfaces,
// `extern __shared__` spelled directly (use GPUCONV_DYNAMIC_SHARED), __constant__ memory written from
// the host, cooperative groups.
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
#define __grid_constant__  // a read-only by-value kernel parameter (ConvParams); each fiber gets its own copy
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

// ---------------------------------------------------------------------------------------------------
// Tensor-core MMA: what a kernel reaches through inline PTX on a GPU (`mma.sync.aligned.m16n8k8.row.col.
// f32.tf32.tf32.f32`, `mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32`, `cvt.rna.tf32.f32`), as plain
// functions a kernel calls under #ifdef GPUCONV_EMULATED (kernels/tensor_core.cuh). Fragment layouts are
// the PTX ISA's ("Matrix fragments for mma.m16n8k8 / mma.m16n8k16"); with lane = linear thread index % 32,
// warp = linear thread index / 32 (linear = x + blockDim.x * (y + blockDim.y * z)), gid = lane >> 2,
// tig = lane & 3:
//   m16n8k8 tf32:  a[0..3] = A[gid][tig], A[gid+8][tig], A[gid][tig+4], A[gid+8][tig+4]   (A 16x8)
//                  b[0..1] = B[tig][gid], B[tig+4][gid]                                   (B 8x8)
//   m16n8k16 f16:  a[0..3] = A[gid][2tig..2tig+1], A[gid+8][2tig..], A[gid][2tig+8..2tig+9],
//                            A[gid+8][2tig+8..]  (two halves per register, lower k in the low 16 bits)
//                  b[0..1] = B[2tig..2tig+1][gid], B[2tig+8..2tig+9][gid]                 (B 16x8)
//   both:          d[0..3] = D[gid][2tig], D[gid][2tig+1], D[gid+8][2tig], D[gid+8][2tig+1]  (D 16x8)
// Arithmetic: every product exact (in double: two 11-bit significands fit easily), D = C + sum over k
// rounded ONCE to float at the end, IEEE inf/NaN rules (0 * inf = NaN). Real tensor cores may round or
// truncate partial sums differently; a kernel test comparing with a float64 reference needs a tolerance
// for that anyway, and the emulator's job is the data movement (layouts), not the last ulp.
//
// Warp-collective on a GPU, BLOCK-collective here: a lane cannot read another lane's registers, and fibers
// only switch at barriers. So every calling thread publishes its operand registers in a per-block exchange
// area, meets the block at a barrier, computes its own four outputs from its warp's published operands,
// and meets the block at a second barrier before anyone may overwrite the area in a next call. Hence EVERY
// thread of the block that has not returned must make the same sequence of mma calls (true of kernels
// whose mma calls sit in block-uniform control flow); otherwise the barriers inside the mma meet another
// __syncthreads() and the launch fails with the usual "divergent __syncthreads()" RuntimeError, naming the
// mma's site below. Threads (whole warps) that have returned do not take part, as at any barrier; a warp
// in which only some lanes call the mma (undefined on a GPU: mma.sync needs all 32 lanes; so is a block
// whose size is not a multiple of 32) aborts the launch with a RuntimeError naming the missing lane.
// ---------------------------------------------------------------------------------------------------
namespace gpuemu {

// One lane's published operands. `tag` says which mma published them (1 = tf32, 2 = f16) and is cleared
// to 0 after the call, so a lane that skipped a call (returned, or took another branch) is seen as such
// instead of its previous call's registers being used. 32 bytes.
struct MmaSlot {
    unsigned a[4];
    unsigned b[2];
    unsigned tag;
    unsigned unused;
};

// The exchange area of the running block: [warp][lane] for up to 1024 threads (32 KiB). A static
// __shared__ array (static thread_local: one per OS thread = per block), so it is part of the TLS block
// that is filled with 0xFF bytes before every block (harmless: each call writes a slot before anyone
// reads it, and tag 0xFFFFFFFF means "not published"). A function-local static in an inline function is
// emitted only in modules that use the mma. It must stay trivially constructible: a thread_local with a
// constructor would get a lazy-initialisation guard, itself thread_local, which the poisoning overwrites.
inline MmaSlot* mma_exchange() {
    __shared__ MmaSlot slots[1024];
    return slots;
}

// The barriers' site, in the "divergent __syncthreads()" message (both mma kinds share it, so warps that
// run different kinds of mma at the same time still meet at the same barrier).
#define GPUEMU_MMA_SITE "the emulated mma.sync (cuda_compat.h; block-collective in the emulator: every thread of the block must call it)"

inline unsigned mma_linear_thread() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

// First half of a call: publish this lane's registers, wait for the block, check that all 32 lanes of the
// warp published registers for the same kind of mma. Returns the warp's 32 slots.
inline const MmaSlot* mma_publish(unsigned tag, const unsigned* a, const unsigned* b, unsigned t) {
    MmaSlot* all = mma_exchange();
    MmaSlot& me = all[t];
    for (int i = 0; i < 4; ++i) me.a[i] = a[i];
    for (int i = 0; i < 2; ++i) me.b[i] = b[i];
    me.tag = tag;
    ::gpuemu::barrier(GPUEMU_MMA_SITE, __LINE__, 0);
    const MmaSlot* warp = all + (t & ~31u);
    for (unsigned l = 0; l < 32; ++l) {
        if (warp[l].tag != tag) {
            char msg[200];
            snprintf(msg, sizeof msg,
                     "%s: lane %u of warp %u did not call it (mma.sync needs all 32 lanes of the warp%s)",
                     tag == 1 ? "gpuconv_emu_mma_m16n8k8_tf32" : "gpuconv_emu_mma_m16n8k16_f16", l, t / 32,
                     (t & ~31u) + 32 > blockDim.x * blockDim.y * blockDim.z ? "; the block size is not a multiple of 32"
                                                                             : ", and the same mma");
            ::gpuemu::trap(msg, __FILE__, __LINE__);
        }
    }
    return warp;
}

// Second half: wait until every thread has read the area, then withdraw this lane's registers.
inline void mma_retire(unsigned t) {
    ::gpuemu::barrier(GPUEMU_MMA_SITE, __LINE__, 0);
    mma_exchange()[t].tag = 0;
}
#undef GPUEMU_MMA_SITE

inline double tf32_operand(unsigned bits) {
    // The tensor core reads only the top 19 bits (sign, exponent, 10 mantissa bits) of a .tf32 operand:
    // an operand that did not go through cvt.rna.tf32 is truncated, not rounded. (A NaN whose payload lies
    // only in the low 13 bits thereby reads as inf — as the hardware, which never sees those bits.)
    return static_cast<double>(__uint_as_float(bits & 0xFFFFE000u));
}

inline double f16_operand(unsigned reg, unsigned k) {  // k even: the low 16 bits, k odd: the high 16 bits
    return static_cast<double>(__ushort_as_half(static_cast<unsigned short>(k & 1 ? reg >> 16 : reg & 0xFFFFu)));
}

}  // namespace gpuemu

// D += A * B for one warp: PTX mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 with C = D.
// d: this lane's 4 accumulators (in/out); a: its 4 A registers (tf32 bit patterns); b: its 2 B registers.
inline void gpuconv_emu_mma_m16n8k8_tf32(float* d, const unsigned* a, const unsigned* b) {
    const unsigned t = ::gpuemu::mma_linear_thread();
    const ::gpuemu::MmaSlot* w = ::gpuemu::mma_publish(1, a, b, t);
    const unsigned gid = (t & 31) >> 2, tig = t & 3;  // (lane & 3 == t & 3)
    for (unsigned i = 0; i < 4; ++i) {
        const unsigned row = gid + 8 * (i >> 1), col = 2 * tig + (i & 1);
        double sum = 0.0;
        for (unsigned k = 0; k < 8; ++k) {
            // A[row][k] is held by lane (row % 8) * 4 + k % 4, in a[(row >= 8) + 2 * (k >= 4)];
            // B[k][col] by lane col * 4 + k % 4, in b[k >= 4].
            const double av = ::gpuemu::tf32_operand(w[(row & 7) * 4 + (k & 3)].a[(row >> 3) + 2 * (k >> 2)]);
            const double bv = ::gpuemu::tf32_operand(w[col * 4 + (k & 3)].b[k >> 2]);
            sum += av * bv;
        }
        d[i] = static_cast<float>(static_cast<double>(d[i]) + sum);  // d[i] is C[row][col]: this lane's own
    }
    ::gpuemu::mma_retire(t);
}

// D += A * B for one warp: PTX mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 with C = D.
// a: 4 registers each holding 2 halves (.f16x2, lower k in the low 16 bits), b: 2 such registers;
// d: 4 floats (in/out).
inline void gpuconv_emu_mma_m16n8k16_f16(float* d, const unsigned* a, const unsigned* b) {
    const unsigned t = ::gpuemu::mma_linear_thread();
    const ::gpuemu::MmaSlot* w = ::gpuemu::mma_publish(2, a, b, t);
    const unsigned gid = (t & 31) >> 2, tig = t & 3;  // (lane & 3 == t & 3)
    for (unsigned i = 0; i < 4; ++i) {
        const unsigned row = gid + 8 * (i >> 1), col = 2 * tig + (i & 1);
        double sum = 0.0;
        for (unsigned k = 0; k < 16; ++k) {
            // A[row][k] is held by lane (row % 8) * 4 + (k % 8) / 2, in a[(row >= 8) + 2 * (k >= 8)];
            // B[k][col] by lane col * 4 + (k % 8) / 2, in b[k >= 8]; even k in the low half.
            const double av = ::gpuemu::f16_operand(w[(row & 7) * 4 + ((k & 7) >> 1)].a[(row >> 3) + 2 * (k >> 3)], k);
            const double bv = ::gpuemu::f16_operand(w[col * 4 + ((k & 7) >> 1)].b[k >> 3], k);
            sum += av * bv;
        }
        d[i] = static_cast<float>(static_cast<double>(d[i]) + sum);
    }
    ::gpuemu::mma_retire(t);
}

// PTX cvt.rna.tf32.f32: f rounded to 10 explicit mantissa bits, to nearest, ties away from zero, as the
// fp32 bit pattern with the low 13 bits zero. Adding half a tf32 ulp to the magnitude bits and truncating
// does exactly that for every finite input, carries included: a mantissa overflow bumps the exponent, a
// subnormal may round up to FLT_MIN, and everything from the tie above the largest tf32 (0x7F7FF000, i.e.
// FLT_MAX too) overflows to inf, as round-to-nearest must. inf stays inf. A NaN stays a NaN (quieted; sign
// and top payload kept): rounding its bits would turn 0x7F800001 into inf and carry 0x7FFFFFFF into the
// sign bit.
inline unsigned gpuconv_emu_cvt_rna_tf32(float f) {
    const unsigned u = __float_as_uint(f);
    if ((u & 0x7F800000u) == 0x7F800000u) return (u & 0x007FFFFFu) ? ((u & 0xFFFFE000u) | 0x00400000u) : u;
    return (u + 0x1000u) & 0xFFFFE000u;
}

// ---------------------------------------------------------------------------------------------------
// Byte permute (issue 16, conv2d_igemm_tc.cu's float16 operand packing, kernels/tensor_core.cuh
// pack_halves): CUDA's __byte_perm(x, y, s), i.e. PTX prmt.b32 in its default mode. The 8 input bytes are
// x's bytes 0-3 then y's bytes 0-3 (least significant first); byte n of the result is the input byte that
// the low 3 bits of s's nibble n select (the nibble's top bit is ignored, as CUDA documents). So a kernel
// runs the same packing code in the emulator as on a GPU; tests/test_cuda_igemm_tc_operands.py checks the
// packed float16 operands value by value against the inputs.
// ---------------------------------------------------------------------------------------------------
inline unsigned int __byte_perm(unsigned int x, unsigned int y, unsigned int s) {
    const unsigned long long in = (static_cast<unsigned long long>(y) << 32) | x;
    unsigned int r = 0;
    for (int n = 0; n < 4; ++n) r |= static_cast<unsigned int>((in >> (8 * ((s >> (4 * n)) & 7))) & 0xFFu) << (8 * n);
    return r;
}
