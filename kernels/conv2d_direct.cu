// conv2d_direct.cu — the reference-shaped CUDA convolution: one thread per output element.
//
// Kernel in this file:
//   conv2d_direct<T>: each thread owns one output element y[n, k, p, q] and sums its whole receptive
//                     field (the Cg input channels of k's group x R x S taps) straight from global memory,
//                     then adds the bias and applies the fused activation. No data reuse between threads
//                     other than what the caches give; it handles every geometry (any stride, asymmetric
//                     padding, dilation, groups / depthwise, flip) and is the correctness baseline.
//   Parameters: the pointers x, w, b, y, then the geometry as one ConvParams cp passed by value
//       (kernels/conv_params.cuh: N, C, H, W, K, R, S, groups, sh, sw, pt, pl, dh, dw, P, Q, flip, has_bias,
//       act; the host fills it with gpuconv/_cuda/abi.py conv_kernel_args).
//   Launch shape: 1-D grid of 1-D blocks (the host uses 256 threads and caps the grid, see
//                 gpuconv/_cuda/conv.py); a 64-bit grid-stride loop covers all N*K*P*Q outputs, so any
//                 output size works with any grid. No shared memory (shared_mem = 0).
//   Measured speed: the README's Benchmarks section (bench/results/, one file per device).
//
// Semantics (docs/semantics.md, "conv2d"): cross-correlation,
//   y[n,k,p,q] = act(b[k] + sum_{c in group(k), r, s} x[n, c, p*sh - pt + r*dh, q*sw - pl + s*dw] * w[k, c', r, s])
// with out-of-range x reading as 0 (multiplied like any value, so 0 * inf = NaN); flip != 0 uses
// w[k, c', R-1-r, S-1-s] (true convolution).
// float16 storage accumulates in float32 (acc_type), float32 in float32, float64 in float64.
#include "common.cuh"
#include "conv_params.cuh"

namespace gpuconv {

template <typename T>
__global__ void conv2d_direct(const T* __restrict__ x,   // (N, C, H, W), C-contiguous
                              const T* __restrict__ w,   // (K, Cg, R, S), C-contiguous
                              const T* __restrict__ b,   // (K,) when has_bias, else any valid pointer (unread)
                              T* __restrict__ y,         // (N, K, P, Q), C-contiguous, fully written
                              const __grid_constant__ ConvParams cp) {  // the geometry, by value (conv_params.cuh)
    typedef typename acc_type<T>::type A;
    // The geometry (conv_params.cuh) under the names the body uses (constant-bank reads, as scalars were).
    const int N = cp.N, C = cp.C, H = cp.H, W = cp.W, K = cp.K, R = cp.R, S = cp.S, groups = cp.groups;
    const int sh = cp.sh, sw = cp.sw, pt = cp.pt, pl = cp.pl, dh = cp.dh, dw = cp.dw, P = cp.P, Q = cp.Q;
    const int flip = cp.flip, has_bias = cp.has_bias, act = cp.act;
    const int Cg = C / groups;  // input channels per group (the weight's second dimension)
    const int Kg = K / groups;  // filters per group
    // 64-bit: N*K*P*Q may exceed 2^31 even when every single dimension fits in an int.
    const index_t total = (index_t)N * K * P * Q;
    const index_t plane = (index_t)H * W;  // 64-bit: one input plane alone may exceed 2^31 elements
    for (index_t i = (index_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (index_t)gridDim.x * blockDim.x) {
        // Decompose the flat NKPQ index (C order). Each quotient fits in an int because it is bounded
        // by one of the int dimensions.
        const int q = (int)(i % Q);
        index_t rest = i / Q;
        const int p = (int)(rest % P);
        rest /= P;
        const int k = (int)(rest % K);
        const int n = (int)(rest / K);
        const int c_first = (k / Kg) * Cg;  // first input channel of filter k's group
        // Top-left corner of the receptive field in input coordinates; negative inside the top/left
        // padding. int is enough: |p*sh| <= H + pt + pb, which the host checks fits in an int.
        const int ih0 = p * sh - pt;
        const int iw0 = q * sw - pl;
        const T* xn = x + ((index_t)n * C + c_first) * plane;  // channel c_first of sample n
        const T* wk = w + (index_t)k * Cg * R * S;             // filter k
        A acc = A(0);
        for (int c = 0; c < Cg; ++c) {
            const T* xc = xn + (index_t)c * plane;
            const T* wc = wk + (index_t)c * R * S;
            for (int r = 0; r < R; ++r) {
                const int ih = ih0 + r * dh;
                const bool row_inside = ih >= 0 && ih < H;  // rows outside [0, H) are padding
                const int wr = flip ? R - 1 - r : r;        // true convolution reads the rotated kernel
                for (int s = 0; s < S; ++s) {
                    const int iw = iw0 + s * dw;
                    // A padded tap (row or column outside the image) is never read; it is a zero that is
                    // still multiplied, not skipped, so that an infinite weight over padding gives NaN
                    // (0 * inf) here exactly as in the tiled, igemm and depthwise kernels, which multiply
                    // the zeros they load into shared memory, and as on the NumPy path.
                    const A xv = row_inside && iw >= 0 && iw < W ? load<T>(xc + (index_t)ih * W + iw) : A(0);
                    const int ws = flip ? S - 1 - s : s;
                    acc += xv * load<T>(wc + (index_t)wr * S + ws);
                }
            }
        }
        if (has_bias) acc += load<T>(b + k);
        store<T>(y + i, activate(acc, act));  // y is C-contiguous NKPQ, so its flat index is i
    }
}

}  // namespace gpuconv
