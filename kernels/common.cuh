// common.cuh — what every gpuconv kernel file shares: storage types, loads/stores with accumulation
// type, the fused activations and their derivatives (act_backward), -inf/NaN helpers, the dynamic-shared-memory and loop-unrolling macros.
//
// Kept free of CUDA toolkit headers on purpose: CuPy compiles our sources with NVRTC at run time, and
// a pip-installed CuPy may have no cuda_fp16.h to find. float16 is therefore our own 2-byte storage
// type converted with one PTX instruction each way. Under the CPU emulator used by the tests
// (tests/emulator, which defines GPUCONV_EMULATED and provides __half) the conversions are plain C++.
//
// The Python side splices this file into each .cu text before handing it to NVRTC (see
// gpuconv/_cuda/runtime.py), so CuPy's on-disk kernel cache is keyed on the full source.
#pragma once

#ifndef GPUCONV_DYNAMIC_SHARED
// Dynamic shared memory of a launch, sized by the launch's shared_mem argument.
#define GPUCONV_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#endif

// Full unrolling of fixed-trip loops (tile sizes, filter taps) keeps per-thread accumulator arrays in
// registers (without it nvcc placed conv2d_tiled's acc[][] in local memory for the float KB = 8
// instantiations). Only for the CUDA compilers; the CPU emulator's g++ build needs no hint.
#ifndef GPUCONV_UNROLL
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define GPUCONV_UNROLL _Pragma("unroll")
#else
#define GPUCONV_UNROLL
#endif
#endif

namespace gpuconv {

typedef long long index_t;  // 64-bit offsets: a tensor may exceed 2^31 elements

#ifdef GPUCONV_EMULATED
typedef __half half;
__device__ __forceinline__ float half_to_float(half h) { return __half2float(h); }
__device__ __forceinline__ half float_to_half(float f) { return __float2half_rn(f); }
#else
struct __align__(2) half { unsigned short bits; };
__device__ __forceinline__ float half_to_float(half h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h.bits));
    return f;
}
__device__ __forceinline__ half float_to_half(float f) {
    half h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(f));  // round to nearest even, as NumPy
    return h;
}
#endif

// Accumulation type: float16 accumulates in float32, the others in themselves.
template <typename T> struct acc_type { typedef T type; };
template <> struct acc_type<half> { typedef float type; };

template <typename T> __device__ __forceinline__ typename acc_type<T>::type load(const T* p) { return *p; }
template <> __device__ __forceinline__ float load<half>(const half* p) { return half_to_float(*p); }

template <typename T> __device__ __forceinline__ void store(T* p, typename acc_type<T>::type v) { *p = v; }
template <> __device__ __forceinline__ void store<half>(half* p, float v) { *p = float_to_half(v); }

// -inf without INFINITY (NVRTC has no <math.h> macros).
template <typename A> __device__ __forceinline__ A negative_infinity();
template <> __device__ __forceinline__ float negative_infinity<float>() { return __int_as_float(0xff800000); }
template <> __device__ __forceinline__ double negative_infinity<double>() {
    return __longlong_as_double(0xfff0000000000000ULL);
}

// Activation codes; must match gpuconv/_geometry.py ACTIVATIONS.
enum Activation { ACT_NONE = 0, ACT_RELU = 1, ACT_LEAKY_RELU = 2, ACT_SIGMOID = 3, ACT_TANH = 4 };

// Applied after the bias. NaN propagates through every branch (relu of NaN is NaN, as PyTorch).
__device__ __forceinline__ float activate(float v, int act) {
    switch (act) {
        case ACT_RELU: return v < 0.0f ? 0.0f : v;
        case ACT_LEAKY_RELU: return v < 0.0f ? 0.01f * v : v;
        case ACT_SIGMOID: return 1.0f / (1.0f + expf(-v));
        case ACT_TANH: return tanhf(v);
        default: return v;
    }
}
__device__ __forceinline__ double activate(double v, int act) {
    switch (act) {
        case ACT_RELU: return v < 0.0 ? 0.0 : v;
        case ACT_LEAKY_RELU: return v < 0.0 ? 0.01 * v : v;
        case ACT_SIGMOID: return 1.0 / (1.0 + exp(-v));
        case ACT_TANH: return tanh(v);
        default: return v;
    }
}

// d loss / d pre-activation from g = d loss / d out and the activated value o (docs/gradients.md's table,
// PyTorch's backward formulas). relu / leaky_relu SELECT rather than multiply: a NaN `out` is not > 0, so
// it gives 0 (relu) or the slope times g (leaky_relu), and an infinite g where the derivative is 0 gives 0,
// as PyTorch's threshold_backward / where. Same operation order as the NumPy pre-pass
// (gpuconv/_grad_conv.py activation_derivative_times). Used by conv2d_backward_filter.cu's gy loaders and,
// for the data gradient, by im2col_loader.cuh's gather (conv2d_backward_data.cu).
template <typename A>
__device__ __forceinline__ A act_backward(A g, A o, int act) {
    switch (act) {
        case ACT_RELU: return o > A(0) ? g : A(0);
        case ACT_LEAKY_RELU: return o > A(0) ? g : g * A(0.01);
        case ACT_SIGMOID: return g * (A(1) - o) * o;
        case ACT_TANH: return g * (A(1) - o * o);
        default: return g;
    }
}

}  // namespace gpuconv
