// pool2d.cu — 2-D max, average and adaptive pooling with PyTorch's semantics (docs/semantics.md, "Pooling").
//
// Kernels in this file (each: one thread per output element y[n, c, oh, ow]; the thread reduces its
// window straight from global memory, no data reuse between threads other than what the caches give):
//   max_pool2d<T, WITH_INDEX, KH, KW>:   running max (NaN wins) over the dilated window clamped to the
//                                        input; WITH_INDEX also writes the argmax h*W + w of the plane.
//   avg_pool2d<T, KH, KW>:               sum of the window clamped to the input, divided by PyTorch's
//                                        divisor (count_include_pad / in-bounds count / divisor_override).
//   adaptive_max_pool2d<T, WITH_INDEX>:  max_pool2d's reduction over [floor(i*H/O), ceil((i+1)*H/O)).
//   adaptive_avg_pool2d<T>:              mean over the same adaptive window.
//   KH, KW: 0 = window size read at run time; > 0 = that size at compile time (the host instantiates
//   2x2 and 3x3), which unrolls the tap loops. Every variant runs the same window code
//   (pool_span / adaptive_span, in pool_window.cuh -> reduce_window with a MaxReducer or SumReducer), so
//   the four ops cannot drift apart.
//   Launch shape: 1-D grid of 1-D blocks (the host uses 256 threads and caps the grid, see
//                 gpuconv/_cuda/pool.py); a 64-bit grid-stride loop covers all N*C*OH*OW outputs, so any
//                 output size works with any grid. No shared memory (shared_mem = 0).
//   Measured speed: the README's Benchmarks section (bench/results/, one file per device).
//
// Layouts: x is (N, C, H, W) C-contiguous, y (and the indices) (N, C, OH, OW) C-contiguous, so output
// element i of the flat loop is y[i]. float16 reduces in float32 (acc_type), float32 in float32,
// float64 in float64. Sizes are int (the host checks every coordinate formed here fits, see
// int32_limit_reason in pool.py); plane offsets, flat indices and divisors are 64-bit.
#include "common.cuh"
#include "pool_window.cuh"

namespace gpuconv {

// Reducers: what reduce_window does with each in-bounds cell (value v at flat plane index at).
template <typename A, bool WITH_INDEX>
struct MaxReducer {
    A best;
    index_t arg;
    // Start at -inf (padding is -inf, so an all-padding or all--inf window gives -inf) with the window's
    // first in-bounds cell as the index, as PyTorch (an empty dilated window reports where it would start).
    __device__ __forceinline__ MaxReducer(index_t first) : best(negative_infinity<A>()), arg(first) {}
    // NaN wins: a NaN replaces anything, including an earlier NaN, so the index is the last NaN's in
    // scan order; otherwise strictly greater, so the first of equal maxima is kept.
    __device__ __forceinline__ void add(A v, index_t at) {
        if (v > best || isnan(v)) {
            best = v;
            if (WITH_INDEX) arg = at;  // compile-time: without indices the index math is dead code
        }
    }
};

template <typename A>
struct SumReducer {
    A sum;
    __device__ __forceinline__ SumReducer() : sum(A(0)) {}
    __device__ __forceinline__ void add(A v, index_t) { sum += v; }
};

// Feed every in-bounds cell of the window rows x cols of one (n, c) plane to r, in row-major order
// (the order PyTorch scans, which decides ties and which NaN wins). KH/KW > 0: the loop runs a
// compile-time KH/KW times (unrolled) and stops at the clamped count, which can only be smaller.
template <int KH, int KW, typename T, typename R>
__device__ __forceinline__ void reduce_window(const T* __restrict__ plane, int W, const Span& rows,
                                              const Span& cols, R& r) {
#pragma unroll
    for (int a = 0; a < (KH > 0 ? KH : rows.count); ++a) {
        if (KH > 0 && a >= rows.count) break;  // compile-time size: taps in the padding were clamped off
        const int h = rows.begin + a * rows.step;
        const T* row = plane + (index_t)h * W;  // 64-bit: h*W may exceed 2^31 in one huge plane
#pragma unroll
        for (int b = 0; b < (KW > 0 ? KW : cols.count); ++b) {
            if (KW > 0 && b >= cols.count) break;
            const int w = cols.begin + b * cols.step;
            r.add(load<T>(row + w), (index_t)h * W + w);
        }
    }
}

template <typename T, bool WITH_INDEX, int KH, int KW>
__global__ void max_pool2d(const T* __restrict__ x,  // (N, C, H, W), C-contiguous
                           T* __restrict__ y,        // (N, C, OH, OW), C-contiguous, fully written
                           index_t* __restrict__ idx,  // like y when WITH_INDEX, else unread and unwritten
                           index_t planes,           // N*C (64-bit: may exceed 2^31 with tiny planes)
                           int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw,
                           int dh, int dw) {
    typedef typename acc_type<T>::type A;
    const index_t plane_size = (index_t)H * W;
    GPUCONV_GRID_STRIDE_LOOP(i, planes * OH * OW) {
        const OutputPos p = output_pos(i, OH, OW);
        // Window origin in input coordinates; negative inside the top/left padding.
        const Span rows = pool_span(p.oh * sh - ph, KH > 0 ? KH : kh, dh, H);
        const Span cols = pool_span(p.ow * sw - pw, KW > 0 ? KW : kw, dw, W);
        MaxReducer<A, WITH_INDEX> r((index_t)rows.begin * W + cols.begin);
        reduce_window<KH, KW>(x + p.plane * plane_size, W, rows, cols, r);
        store<T>(y + i, r.best);
        if (WITH_INDEX) idx[i] = r.arg;
    }
}

template <typename T, int KH, int KW>
__global__ void avg_pool2d(const T* __restrict__ x,  // (N, C, H, W), C-contiguous
                           T* __restrict__ y,        // (N, C, OH, OW), C-contiguous, fully written
                           index_t planes,           // N*C
                           int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw,
                           int pb, int pr,           // bottom / right padding (ph, pw: top / left)
                           int count_include_pad,    // 0 / 1
                           index_t divisor_override) {  // 0: none; else replaces the divisor
    typedef typename acc_type<T>::type A;
    const index_t plane_size = (index_t)H * W;
    const int KH_ = KH > 0 ? KH : kh;
    const int KW_ = KW > 0 ? KW : kw;
    GPUCONV_GRID_STRIDE_LOOP(i, planes * OH * OW) {
        const OutputPos p = output_pos(i, OH, OW);
        const int h0 = p.oh * sh - ph;  // window origin; negative inside the top/left padding
        const int w0 = p.ow * sw - pw;
        const Span rows = pool_span(h0, KH_, 1, H);  // average pooling has no dilation
        const Span cols = pool_span(w0, KW_, 1, W);
        SumReducer<A> r;
        reduce_window<KH, KW>(x + p.plane * plane_size, W, rows, cols, r);
        index_t divisor;  // 64-bit: a huge window's cell count may exceed 2^31
        if (divisor_override != 0) {
            divisor = divisor_override;
        } else if (count_include_pad) {
            // The window clipped to the padded input [-p_lo, size + p_hi): explicit padding counts, but
            // not the ceil_mode overhang past size + p_hi (PyTorch's rule; the window never starts before
            // -p_lo).
            divisor = (index_t)(pool_imin(h0 + KH_, H + pb) - h0) * (pool_imin(w0 + KW_, W + pr) - w0);
        } else {
            divisor = (index_t)rows.count * cols.count;  // in-bounds cells only
        }
        // divisor >= 1 here: without dilation every window holds an input cell (each side's padding is
        // below the window size, and with ceil_mode the last window starts before size + p_lo); PyTorch
        // does not guard it either.
        store<T>(y + i, r.sum / (A)divisor);
    }
}

template <typename T, bool WITH_INDEX>
__global__ void adaptive_max_pool2d(const T* __restrict__ x,  // (N, C, H, W), C-contiguous
                                    T* __restrict__ y,        // (N, C, OH, OW), C-contiguous
                                    index_t* __restrict__ idx,  // like y when WITH_INDEX, else unused
                                    index_t planes, int H, int W, int OH, int OW) {
    typedef typename acc_type<T>::type A;
    const index_t plane_size = (index_t)H * W;
    GPUCONV_GRID_STRIDE_LOOP(i, planes * OH * OW) {
        const OutputPos p = output_pos(i, OH, OW);
        const Span rows = adaptive_span(p.oh, H, OH);
        const Span cols = adaptive_span(p.ow, W, OW);
        MaxReducer<A, WITH_INDEX> r((index_t)rows.begin * W + cols.begin);
        reduce_window<0, 0>(x + p.plane * plane_size, W, rows, cols, r);
        store<T>(y + i, r.best);
        if (WITH_INDEX) idx[i] = r.arg;
    }
}

template <typename T>
__global__ void adaptive_avg_pool2d(const T* __restrict__ x,  // (N, C, H, W), C-contiguous
                                    T* __restrict__ y,        // (N, C, OH, OW), C-contiguous
                                    index_t planes, int H, int W, int OH, int OW) {
    typedef typename acc_type<T>::type A;
    const index_t plane_size = (index_t)H * W;
    GPUCONV_GRID_STRIDE_LOOP(i, planes * OH * OW) {
        const OutputPos p = output_pos(i, OH, OW);
        const Span rows = adaptive_span(p.oh, H, OH);
        const Span cols = adaptive_span(p.ow, W, OW);
        SumReducer<A> r;
        reduce_window<0, 0>(x + p.plane * plane_size, W, rows, cols, r);
        // Adaptive windows are never empty (see adaptive_span), so the count is >= 1.
        store<T>(y + i, r.sum / (A)((index_t)rows.count * cols.count));
    }
}

}  // namespace gpuconv
