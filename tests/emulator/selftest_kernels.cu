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

}  // namespace selftest
