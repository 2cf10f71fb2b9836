// Kernels for the emulator's own tests (tests/emulator/test_emulator.py). Plain CUDA C++, compiled by
// the emulator with g++; nothing here is part of gpuconv.
#ifndef GPUCONV_DYNAMIC_SHARED
#define GPUCONV_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#endif

namespace selftest {

// Grid-stride loop with a bounds check.
__global__ void vector_add(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) c[i] = a[i] + b[i];
}

// Tree reduction of each block's slice in static shared memory; kSync=false drops the barriers.
template <bool kSync>
__global__ void __launch_bounds__(256) block_sum(const float* __restrict__ x, float* __restrict__ out, int n) {
    __shared__ float buf[256];
    const int t = threadIdx.x;
    const int i = blockIdx.x * blockDim.x + t;
    buf[t] = i < n ? x[i] : 0.0f;
    if (kSync) __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) buf[t] += buf[t + s];
        if (kSync) __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = buf[0];
}

// Reverses each block's slice through dynamic shared memory.
__global__ void reverse_block(const float* __restrict__ x, float* __restrict__ y, int n) {
    GPUCONV_DYNAMIC_SHARED(float, s);
    const int t = threadIdx.x;
    const int base = blockIdx.x * blockDim.x;
    if (base + t < n) s[t] = x[base + t];
    __syncthreads();
    const int src = blockDim.x - 1 - t;
    if (base + t < n && base + src < n) y[base + t] = s[src];
}

// Reads shared memory it never wrote (dynamic) or wrote only in block 0 (static): must see 0xFF bytes.
__global__ void read_unwritten_shared(float* __restrict__ dyn_out, float* __restrict__ static_out) {
    GPUCONV_DYNAMIC_SHARED(float, d);
    __shared__ float s[64];
    const int t = threadIdx.x;
    if (blockIdx.x == 0) s[t] = 1.0f;
    __syncthreads();
    dyn_out[blockIdx.x * blockDim.x + t] = d[t];
    static_out[blockIdx.x * blockDim.x + t] = s[t];
}

// Fetched by name expression: selftest::scale<float> / <double> / <__half>.
template <typename T>
__global__ void scale(T* __restrict__ x, float a, long long n) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) x[i] = static_cast<T>(static_cast<float>(x[i]) * a);
}

// Every index built-in of every thread: out[linear thread][0..11].
__global__ void index3d(unsigned int* __restrict__ out) {
    const unsigned int bid = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    const unsigned int tid = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    unsigned int* o = out + (static_cast<size_t>(bid) * blockDim.x * blockDim.y * blockDim.z + tid) * 12;
    const dim3 g = gridDim, b = blockDim;
    o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z;
    o[3] = blockIdx.x; o[4] = blockIdx.y; o[5] = blockIdx.z;
    o[6] = b.x; o[7] = b.y; o[8] = b.z;
    o[9] = g.x; o[10] = g.y; o[11] = g.z;
}

// Threads >= active return before the barrier; the others exchange values through it and count
// themselves with __syncthreads_count.
__global__ void early_exit(const int* __restrict__ x, int* __restrict__ out, int active) {
    __shared__ int s[1024];
    const int t = threadIdx.x;
    if (t >= active) return;
    s[t] = x[t];
    const int live = __syncthreads_count(1);
    out[t] = s[active - 1 - t] + 1000 * live;
}

// One of every scalar kind, echoed into out (as double).
__global__ void echo_args(double* __restrict__ out, int i32, long long i64, unsigned int u32, float f32,
                          double f64, __half f16, bool b, unsigned char u8) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    out[0] = i32; out[1] = static_cast<double>(i64); out[2] = u32; out[3] = f32;
    out[4] = f64; out[5] = __half2float(f16); out[6] = b ? 1.0 : 0.0; out[7] = u8;
}

// Structs passed by value (as gpuconv::ConvParams is): every thread echoes the fields into its own row of
// out, with the int arguments around the structs showing that each argument lands in its own slot.
struct Small {  // 12 bytes (2 of them padding), 4-byte aligned
    int a;
    float b;
    short c;
};
struct Wide {   // 32 bytes, 8-byte aligned: an argument slot wider than 16 bytes
    double d[3];
    int i;
};
__global__ void echo_structs(double* __restrict__ out, int before, const __grid_constant__ Small s, Wide w,
                             int after) {
    double* row = out + 9 * (blockIdx.x * blockDim.x + threadIdx.x);
    row[0] = before; row[1] = s.a; row[2] = s.b; row[3] = s.c;
    row[4] = w.d[0]; row[5] = w.d[1]; row[6] = w.d[2]; row[7] = w.i; row[8] = after;
    w.i = -1;  // the thread's own copy, as on a GPU: the other threads still see the argument
}

// Intrinsics and the CUDA overloads of min/max.
__global__ void math_checks(float* __restrict__ out, float nan) {
    if (threadIdx.x != 0) return;
    out[0] = max(1.0f, nan);                        // fmaxf: NaN dropped, as on the GPU
    out[1] = min(-2.0f, nan);
    out[2] = static_cast<float>(max(3, 7));
    out[3] = static_cast<float>(min(5u, 9u));
    out[4] = __int_as_float(0x3f800000);            // 1.0f
    out[5] = static_cast<float>(__float_as_int(2.0f) == 0x40000000);
    out[6] = static_cast<float>(__longlong_as_double(0x4000000000000000LL));  // 2.0
    out[7] = __half2float(__float2half_rn(1.0f / 3.0f));
    out[8] = __fdividef(1.0f, 4.0f) + __expf(0.0f) + fmaf(2.0f, 3.0f, 1.0f) + tanhf(0.0f);  // 8.25
    out[9] = static_cast<float>(isnan(nan)) + static_cast<float>(isinf(1.0f / 0.0f)) * 2.0f;  // 3
    out[10] = __ldg(&out[8]);
}

// Global atomics from every thread of every block.
__global__ void count_atomic(int* __restrict__ counter, float* __restrict__ fsum, unsigned long long* __restrict__ usum) {
    atomicAdd(counter, 1);
    atomicAdd(fsum, 0.5f);
    atomicAdd(usum, 2ULL);
}

// Faults for the error-path tests.
__global__ void failing(int* __restrict__ x, int mode) {
    if (blockIdx.x == 1 && threadIdx.x == 3) {
        if (mode == 0) assert(x[0] == 12345);
        if (mode == 1) __trap();
    }
    if (mode == 2) {
        if (threadIdx.x % 2) {
            __syncthreads();
        } else {
            __syncthreads();
        }
    }
    x[1 + blockIdx.x] = 1;
}

// A few hundred instructions per thread (a 32-tap 1-D convolution), with or without a barrier, for the
// launch-rate benchmark (bench_emulator.py).
template <bool kBarrier>
__global__ void busy(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y, int n) {
    __shared__ float s[256];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    float acc = 0.0f;
    for (int k = 0; k < 32; ++k) acc += x[min(i + k, n - 1)] * w[k];
    if (kBarrier) {
        s[threadIdx.x] = acc;
        __syncthreads();
        acc = s[blockDim.x - 1 - threadIdx.x];
    }
    if (i < n) y[i] = acc;
}

// Reads one element past the end of x when `over` is set (for the sanitize-mode test).
__global__ void read_past_end(const float* __restrict__ x, float* __restrict__ y, int n, int over) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i + over];
}

// ---- Tensor-core mma (the emulator's stand-ins for PTX mma.sync / cvt.rna.tf32, cuda_compat.h) ----------
// Every warp w (numbered across the grid: blockIdx.x * warps per block + linear thread index / 32) loads
// its own matrices, stored row-major: A[w][s] (16 x K), B[w][s] (K x 8) for steps s = 0, 1, C[w] (16 x 8),
// and writes D[w] = C[w] + A[w][0] B[w][0] + A[w][1] B[w][1] (two accumulating mma calls).
__device__ inline unsigned selftest_linear_thread() {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

// This thread's warp (numbered across the grid) and its place in the mma fragments (gid = lane / 4,
// tig = lane % 4).
struct MmaLane {
    unsigned warp, gid, tig;
};

__device__ inline MmaLane mma_lane() {
    const unsigned t = selftest_linear_thread(), lane = t % 32;
    return {blockIdx.x * (blockDim.x * blockDim.y * blockDim.z / 32) + t / 32, lane / 4, lane % 4};
}

__device__ inline void load_c(const float* c, float d[4], unsigned gid, unsigned tig) {
    d[0] = c[gid * 8 + 2 * tig];
    d[1] = c[gid * 8 + 2 * tig + 1];
    d[2] = c[(gid + 8) * 8 + 2 * tig];
    d[3] = c[(gid + 8) * 8 + 2 * tig + 1];
}

__device__ inline void store_d(float* o, const float d[4], unsigned gid, unsigned tig) {
    o[gid * 8 + 2 * tig] = d[0];
    o[gid * 8 + 2 * tig + 1] = d[1];
    o[(gid + 8) * 8 + 2 * tig] = d[2];
    o[(gid + 8) * 8 + 2 * tig + 1] = d[3];
}

// m16n8k8 tf32. raw_a: step 0 passes A's raw float bits (no cvt.rna.tf32), which the mma must truncate.
__global__ void mma_tf32(const float* __restrict__ A, const float* __restrict__ B, const float* __restrict__ C,
                         float* __restrict__ D, int raw_a) {
    const MmaLane m = mma_lane();
    const unsigned w = m.warp, gid = m.gid, tig = m.tig;
    float d[4];
    load_c(C + w * 128, d, gid, tig);
    for (int s = 0; s < 2; ++s) {
        const float* a = A + (w * 2 + s) * 128;  // 16 x 8
        const float* b = B + (w * 2 + s) * 64;   // 8 x 8
        const float av[4] = {a[gid * 8 + tig], a[(gid + 8) * 8 + tig], a[gid * 8 + tig + 4], a[(gid + 8) * 8 + tig + 4]};
        unsigned ar[4], br[2];
        for (int i = 0; i < 4; ++i) ar[i] = (raw_a && s == 0) ? __float_as_uint(av[i]) : gpuconv_emu_cvt_rna_tf32(av[i]);
        br[0] = gpuconv_emu_cvt_rna_tf32(b[tig * 8 + gid]);
        br[1] = gpuconv_emu_cvt_rna_tf32(b[(tig + 4) * 8 + gid]);
        gpuconv_emu_mma_m16n8k8_tf32(d, ar, br);
    }
    store_d(D + w * 128, d, gid, tig);
}

__device__ inline unsigned pack2(__half lo, __half hi) {
    return static_cast<unsigned>(__half_as_ushort(lo)) | (static_cast<unsigned>(__half_as_ushort(hi)) << 16);
}

// m16n8k16 f16.
__global__ void mma_f16(const __half* __restrict__ A, const __half* __restrict__ B, const float* __restrict__ C,
                        float* __restrict__ D) {
    const MmaLane m = mma_lane();
    const unsigned w = m.warp, gid = m.gid, tig = m.tig;
    float d[4];
    load_c(C + w * 128, d, gid, tig);
    for (int s = 0; s < 2; ++s) {
        const __half* a = A + (w * 2 + s) * 256;  // 16 x 16
        const __half* b = B + (w * 2 + s) * 128;  // 16 x 8
        const unsigned k0 = 2 * tig;
        const unsigned ar[4] = {pack2(a[gid * 16 + k0], a[gid * 16 + k0 + 1]),
                                pack2(a[(gid + 8) * 16 + k0], a[(gid + 8) * 16 + k0 + 1]),
                                pack2(a[gid * 16 + k0 + 8], a[gid * 16 + k0 + 9]),
                                pack2(a[(gid + 8) * 16 + k0 + 8], a[(gid + 8) * 16 + k0 + 9])};
        const unsigned br[2] = {pack2(b[k0 * 8 + gid], b[(k0 + 1) * 8 + gid]),
                                pack2(b[(k0 + 8) * 8 + gid], b[(k0 + 9) * 8 + gid])};
        gpuconv_emu_mma_m16n8k16_f16(d, ar, br);
    }
    store_d(D + w * 128, d, gid, tig);
}

__global__ void cvt_tf32(const float* __restrict__ x, unsigned* __restrict__ y, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) y[i] = gpuconv_emu_cvt_rna_tf32(x[i]);
}

// Misuse of the (in the emulator) block-collective mma, 64 threads = 2 warps, A = 1, B = 2, C = 0:
//   mode 0: only warp 0 calls the mma, then the block meets at a __syncthreads() (fine on a GPU: a
//           divergent barrier in the emulator);
//   mode 1: lanes 16..31 of every warp return before the mma (undefined on a GPU: a missing lane);
//   mode 2: warp 1 returns at once, warp 0 calls the mma (fine on a GPU and in the emulator);
//   mode 3: every thread calls the mma (fine).
__global__ void mma_misuse(float* __restrict__ out, int mode) {
    const unsigned t = threadIdx.x, lane = t % 32, gid = lane / 4, tig = lane % 4;
    if (mode == 1 && lane >= 16) return;
    if (mode == 2 && t >= 32) return;
    float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const unsigned one = gpuconv_emu_cvt_rna_tf32(1.0f), two = gpuconv_emu_cvt_rna_tf32(2.0f);
    const unsigned a[4] = {one, one, one, one}, b[2] = {two, two};
    if (mode != 0 || t < 32) gpuconv_emu_mma_m16n8k8_tf32(d, a, b);
    __syncthreads();
    store_d(out + (t / 32) * 128, d, gid, tig);
}

}  // namespace selftest
