// pool2d.cu — 2-D and 3-D max, average and adaptive pooling with PyTorch's semantics
// (docs/semantics.md, "Pooling"). (1-D pooling runs the 2-D kernels on one-row planes.)
//
// Kernels in this file (each: one thread per output element y[n, c, (od,) oh, ow]; the thread reduces its
// window straight from global memory, no data reuse between threads other than what the caches give):
//   max_pool2d<T, WITH_INDEX, KH, KW>:   running max (NaN wins) over the dilated window clamped to the
//                                        input; WITH_INDEX also writes the argmax h*W + w of the plane.
//   avg_pool2d<T, KH, KW>:               sum of the window clamped to the input, divided by PyTorch's
//                                        divisor (count_include_pad / in-bounds count / divisor_override).
//   max_pool3d<T, WITH_INDEX>, avg_pool3d<T>: the 2-D window code over each depth tap's slice (below).
//   adaptive_max_pool<T, WITH_INDEX, DIMS>: max_pool2d's reduction over [floor(i*H/O), ceil((i+1)*H/O)) per
//                                        axis, DIMS = 2 or 3 (one kernel family; 2-D folds the depth away).
//   adaptive_avg_pool<T, DIMS>:          mean over the same adaptive window.
//   KH, KW: 0 = window size read at run time; > 0 = that size at compile time (the host instantiates
//   2x2, 3x3, and 1x2, 1x3 for 1-D pooling), which unrolls the tap loops. Every variant runs the same
//   window code (pool_span / adaptive_span, in pool_window.cuh -> reduce_window with a MaxReducer or
//   SumReducer), so the ops cannot drift apart.
//   Launch shape: 1-D grid of 1-D blocks (the host uses 256 threads and caps the grid, see
//                 gpuconv/_cuda/pool.py); a 64-bit grid-stride loop covers all N*C*OH*OW outputs, so any
//                 output size works with any grid. No shared memory (shared_mem = 0).
//   Measured speed: the README's Benchmarks section (bench/results/, one file per device).
//
// Layouts: x is (N, C, H, W) C-contiguous, y (and the indices) (N, C, OH, OW) C-contiguous (3-D: a depth axis
// after C in each), so output element i of the flat loop is y[i]. float16 reduces in float32 (acc_type),
// float32 in float32, float64 in float64. Sizes are int (the host checks every coordinate formed here fits, see
// int32_limit_reason in pool.py); plane offsets, flat indices and divisors are 64-bit.
#include "common.cuh"
#include "pool_window.cuh"

namespace gpuconv {

// Reducers: what reduce_window does with each in-bounds cell (value v at flat plane index at).
template <typename A, bool WITH_INDEX>
struct MaxReducer {
    typedef A value_type;
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
    typedef A value_type;
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

// 3-D pooling: the 2-D window code run over the window's depth taps. Each depth tap z of output (od, oh, ow)
// is one 2-D window of the input slice z, fed to the same reducer (an IndexOffset adds z*H*W to its
// plane index), so the scan order is (depth, row, column), PyTorch's: the first maximum or the last NaN
// wins, the sum is in that order. Parameters: x (N, C, D, H, W), y (N, C, OD, OH, OW), C-contiguous;
// planes = N*C; sizes and window arguments as int per axis (depth, rows, columns; p*_hi: trailing
// padding); avg's count_include_pad as int and divisor_override as 64-bit (0 = none). Window sizes at run
// time (KH = KW = 0).
template <typename R>
struct IndexOffset {
    R& r;
    index_t offset;
    __device__ __forceinline__ void add(typename R::value_type v, index_t at) { r.add(v, at + offset); }
};

template <typename T, bool WITH_INDEX>
__global__ void max_pool3d(const T* __restrict__ x, T* __restrict__ y, index_t* __restrict__ idx,
                           index_t planes, int D, int H, int W, int OD, int OH, int OW,
                           int kd, int kh, int kw, int sd, int sh, int sw, int pd, int ph, int pw,
                           int dd, int dh, int dw) {
    typedef typename acc_type<T>::type A;
    const index_t slice = (index_t)H * W;
    GPUCONV_GRID_STRIDE_LOOP(i, planes * OD * OH * OW) {
        const VolumePos p = volume_pos(i, OD, OH, OW);
        const Span deps = pool_span(p.d * sd - pd, kd, dd, D);
        const Span rows = pool_span(p.h * sh - ph, kh, dh, H);
        const Span cols = pool_span(p.w * sw - pw, kw, dw, W);
        // PyTorch's initial index: each axis' first tap at or after 0 (outside the volume when the window
        // holds no input cell; the output is then -inf).
        MaxReducer<A, WITH_INDEX> r(((index_t)deps.begin * H + rows.begin) * W + cols.begin);
        for (int a = 0; a < deps.count; ++a) {
            const int z = deps.begin + a * deps.step;
            IndexOffset<MaxReducer<A, WITH_INDEX> > rz{r, (index_t)z * slice};
            reduce_window<0, 0>(x + (p.plane * D + z) * slice, W, rows, cols, rz);
        }
        store<T>(y + i, r.best);
        if (WITH_INDEX) idx[i] = r.arg;
    }
}

template <typename T>
__global__ void avg_pool3d(const T* __restrict__ x, T* __restrict__ y, index_t planes, int D, int H, int W,
                           int OD, int OH, int OW, int kd, int kh, int kw, int sd, int sh, int sw,
                           int pd, int ph, int pw, int pd_hi, int ph_hi, int pw_hi,
                           int count_include_pad, index_t divisor_override) {
    typedef typename acc_type<T>::type A;
    const index_t slice = (index_t)H * W;
    GPUCONV_GRID_STRIDE_LOOP(i, planes * OD * OH * OW) {
        const VolumePos p = volume_pos(i, OD, OH, OW);
        const int d0 = p.d * sd - pd, h0 = p.h * sh - ph, w0 = p.w * sw - pw;
        const Span deps = pool_span(d0, kd, 1, D);  // average pooling has no dilation
        const Span rows = pool_span(h0, kh, 1, H);
        const Span cols = pool_span(w0, kw, 1, W);
        SumReducer<A> r;
        for (int a = 0; a < deps.count; ++a) {
            reduce_window<0, 0>(x + (p.plane * D + deps.begin + a) * slice, W, rows, cols, r);
        }
        // >= 1: every window holds an input cell (each side's padding is below the window size)
        const index_t divisor = divisor_override != 0
            ? divisor_override
            : (index_t)avg_extent(d0, kd, pd_hi, D, count_include_pad) * avg_extent(h0, kh, ph_hi, H, count_include_pad)
                  * avg_extent(w0, kw, pw_hi, W, count_include_pad);
        store<T>(y + i, r.sum / (A)divisor);
    }
}

// Adaptive pooling, 2-D and 3-D in one kernel per op: DIMS (2 or 3) at compile time. Output (od, oh, ow) reduces
// the adaptive windows adaptive_span(od, D, OD) x adaptive_span(oh, H, OH) x adaptive_span(ow, W, OW), each depth
// slice z of it a 2-D window fed to the reducer through an IndexOffset (z*H*W), so the scan order is (depth,
// row, column), PyTorch's (first maximum, last NaN; sums in that order). With DIMS = 2 the depth axis is one
// slice at compile time (D = OD = 1, whatever the host passes): the depth decode, span and loop fold away and
// the kernel is the plain 2-D one. Parameters: x (N, C, [D,] H, W), y and idx (N, C, [OD,] OH, OW), C-contiguous;
// planes = N*C; the sizes as int (D, OD unused for DIMS = 2).
template <typename T, bool WITH_INDEX, int DIMS>
__global__ void adaptive_max_pool(const T* __restrict__ x, T* __restrict__ y,
                                  index_t* __restrict__ idx,  // like y when WITH_INDEX, else unused
                                  index_t planes, int D, int H, int W, int OD, int OH, int OW) {
    typedef typename acc_type<T>::type A;
    const int D_ = DIMS == 3 ? D : 1;  // adaptive_cell's depth (1 for DIMS = 2)
    const index_t slice = (index_t)H * W;
    GPUCONV_GRID_STRIDE_LOOP(i, planes * (DIMS == 3 ? OD : 1) * OH * OW) {
        const AdaptiveCell cell = adaptive_cell<DIMS>(i, OD, OH, OW, D, H, W);  // output cell, input window
        const VolumePos& p = cell.p;
        const Span &deps = cell.deps, &rows = cell.rows, &cols = cell.cols;
        // Adaptive windows are never empty: the first cell is a real one (PyTorch's initial index).
        MaxReducer<A, WITH_INDEX> r(((index_t)deps.begin * H + rows.begin) * W + cols.begin);
        for (int z = deps.begin; z < deps.end; ++z) {
            IndexOffset<MaxReducer<A, WITH_INDEX> > rz{r, (index_t)z * slice};
            reduce_window<0, 0>(x + (p.plane * D_ + z) * slice, W, rows, cols, rz);
        }
        store<T>(y + i, r.best);
        if (WITH_INDEX) idx[i] = r.arg;
    }
}

template <typename T, int DIMS>
__global__ void adaptive_avg_pool(const T* __restrict__ x, T* __restrict__ y, index_t planes, int D, int H, int W,
                                  int OD, int OH, int OW) {
    typedef typename acc_type<T>::type A;
    const int D_ = DIMS == 3 ? D : 1;  // adaptive_cell's depth (1 for DIMS = 2)
    const index_t slice = (index_t)H * W;
    GPUCONV_GRID_STRIDE_LOOP(i, planes * (DIMS == 3 ? OD : 1) * OH * OW) {
        const AdaptiveCell cell = adaptive_cell<DIMS>(i, OD, OH, OW, D, H, W);  // output cell, input window
        const VolumePos& p = cell.p;
        const Span &deps = cell.deps, &rows = cell.rows, &cols = cell.cols;
        SumReducer<A> r;
        for (int z = deps.begin; z < deps.end; ++z) {
            reduce_window<0, 0>(x + (p.plane * D_ + z) * slice, W, rows, cols, r);
        }
        // Adaptive windows are never empty (see adaptive_span), so the count is >= 1 (64-bit: a huge window).
        store<T>(y + i, r.sum / (A)((index_t)deps.count * rows.count * cols.count));
    }
}

}  // namespace gpuconv
