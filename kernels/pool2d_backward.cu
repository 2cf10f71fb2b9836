// pool2d_backward.cu — gradients of the pooling ops with respect to their input (docs/pooling-gradients.md),
// written as a GATHER: each thread owns input elements and sums, in a fixed order, the contributions of
// every output whose window covers its element. Nothing is scattered, so there are no atomics and no
// two threads ever write one element.
//
// Kernels in this file (each: one thread per input-gradient element gi[n, c, (d,) h, w]):
//   max_pool2d_backward<T, KH, KW>:   sum of go[n, c, oh, ow] over the outputs whose window has a tap on
//                                     (h, w) and whose recorded index equals h*W + w. Tap (a, b) of output
//                                     (oh, ow) is (oh*sh - ph + a*dh, ow*sw - pw + b*dw), so for each tap
//                                     row a the output row is (h + ph - a*dh) / sh when that divides exactly
//                                     and lies in [0, OH) (likewise columns).
//   avg_pool2d_backward<T, KH, KW>:   sum of go / divisor over the outputs whose window covers (h, w), with
//                                     the forward's divisor (count_include_pad / in-bounds count /
//                                     divisor_override) recomputed per output as the forward computes it.
//   max_pool3d_backward<T>, avg_pool3d_backward<T>: the max / avg gathers over (d, h, w), depth taps
//                                     outermost.
//   adaptive_max_pool_backward<T, DIMS>: as max, over the outputs whose adaptive window contains the cell:
//                                     output rows adaptive_span(h, OH, H) = [floor(h*OH/H), ceil((h+1)*OH/H)),
//                                     likewise columns and (DIMS = 3) depth (pool_window.cuh).
//   adaptive_avg_pool_backward<T, DIMS>: go / (the window's cell count) over the same outputs.
//   (both at the bottom of the file; DIMS = 2 or 3, one kernel family, 2-D folds the depth axis away)
//   KH, KW: 0 = window size read at run time; > 0 = that size at compile time (the host instantiates 2x2,
//   3x3, and 1x2, 1x3 for 1-D pooling, as the forward), which unrolls the tap loops.
//   Parameters: go (N, C, OH, OW) and, for max, idx (N, C, OH, OW) int64, both C-contiguous; gi (N, C, H, W)
//   C-contiguous (3-D: a depth axis after C in each), fully written (no zeroing needed); planes = N*C
//   (64-bit); then the sizes and window arguments as int (padding: ph, pw = top, left; avg also takes pb, pr = bottom, right), avg's
//   count_include_pad as int and divisor_override as 64-bit (0 = none).
//   Launch shape: 1-D grid of 1-D blocks (the host uses 256 threads and caps the grid, see
//                 gpuconv/_cuda/pool_grad.py); a 64-bit grid-stride loop covers all N*C*H*W inputs. No
//                 shared memory (shared_mem = 0).
//   Determinism: each gi element is written once, by the one thread that owns it, from a sum whose terms
//                are added in a fixed order (tap rows a ascending then tap columns b ascending; adaptive:
//                output depths, then rows, then columns ascending), independent of the launch shape, the grid
//                cap and the order threads run in: the same inputs give bitwise the same gradient.
//   Max-pool index rule: an output's gradient goes to its recorded index when that index is a cell of its
//                window, which every index the forward records is, except the placeholder of a dilated
//                window holding no input cell (its output is -inf whatever the input). Any other index
//                (out of [0, H*W), or elsewhere in the plane) matches no thread's search and is dropped:
//                no memory outside gi is written, whatever idx holds.
//   Measured speed: not measured yet (docs/architecture.md, "Tuning status").
//
// Accumulation: float16 in float32 (acc_type), float32 in float32, float64 in float64; one rounding to T
// at the store. Sizes are int (the host checks every coordinate formed here fits, pool.py's
// pool_int32_limit_reason: h + ph < H + ph + pb, a*dh < dh*kh, oh*sh - ph + kh < H + pb + sh + kh); plane
// offsets, flat indices and divisors are 64-bit.
#include "common.cuh"
#include "pool_window.cuh"

namespace gpuconv {

// The output row (or column) whose tap `a` lands on input coordinate h: (h + p - a*d) / s when exact and
// in [0, out); -1 otherwise. t = h + p - a*d >= 0 is checked first (integer division rounds toward 0).
__device__ __forceinline__ int tap_output(int h, int p, int a, int d, int s, int out) {
    const int t = h + p - a * d;
    if (t < 0 || t % s != 0) return -1;
    const int o = t / s;
    return o < out ? o : -1;
}

template <typename T, int KH, int KW>
__global__ void max_pool2d_backward(const T* __restrict__ go,         // (N, C, OH, OW), C-contiguous
                                    const index_t* __restrict__ idx,  // (N, C, OH, OW), C-contiguous
                                    T* __restrict__ gi,               // (N, C, H, W), fully written
                                    index_t planes,                   // N*C
                                    int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph,
                                    int pw, int dh, int dw) {
    typedef typename acc_type<T>::type A;
    const int KH_ = KH > 0 ? KH : kh;
    const int KW_ = KW > 0 ? KW : kw;
    const index_t out_plane = (index_t)OH * OW;
    GPUCONV_GRID_STRIDE_LOOP(i, planes * H * W) {
        const OutputPos p = output_pos(i, H, W);  // (plane, h, w) of this input element
        const index_t target = (index_t)p.oh * W + p.ow;
        const T* g = go + p.plane * out_plane;
        const index_t* ix = idx + p.plane * out_plane;
        A acc = A(0);
#pragma unroll
        for (int a = 0; a < KH_; ++a) {
            const int oh = tap_output(p.oh, ph, a, dh, sh, OH);
            if (oh < 0) continue;
#pragma unroll
            for (int b = 0; b < KW_; ++b) {
                const int ow = tap_output(p.ow, pw, b, dw, sw, OW);
                if (ow < 0) continue;
                const index_t o = (index_t)oh * OW + ow;
                if (ix[o] == target) acc += load<T>(g + o);
            }
        }
        store<T>(gi + i, acc);
    }
}

template <typename T, int KH, int KW>
__global__ void avg_pool2d_backward(const T* __restrict__ go,  // (N, C, OH, OW), C-contiguous
                                    T* __restrict__ gi,        // (N, C, H, W), fully written
                                    index_t planes,            // N*C
                                    int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph,
                                    int pw, int pb, int pr,      // padding top, left, bottom, right
                                    int count_include_pad,       // 0 / 1
                                    index_t divisor_override) {  // 0: none; else replaces the divisor
    typedef typename acc_type<T>::type A;
    const int KH_ = KH > 0 ? KH : kh;
    const int KW_ = KW > 0 ? KW : kw;
    const index_t out_plane = (index_t)OH * OW;
    GPUCONV_GRID_STRIDE_LOOP(i, planes * H * W) {
        const OutputPos p = output_pos(i, H, W);
        const T* g = go + p.plane * out_plane;
        A acc = A(0);
#pragma unroll
        for (int a = 0; a < KH_; ++a) {
            const int oh = tap_output(p.oh, ph, a, 1, sh, OH);  // average pooling has no dilation
            if (oh < 0) continue;
            const int div_h = avg_extent(oh * sh - ph, KH_, pb, H, count_include_pad);
#pragma unroll
            for (int b = 0; b < KW_; ++b) {
                const int ow = tap_output(p.ow, pw, b, 1, sw, OW);
                if (ow < 0) continue;
                // The forward's divisor of output (oh, ow): >= 1, since this window holds (h, w).
                const index_t divisor = divisor_override != 0
                    ? divisor_override
                    : (index_t)div_h * avg_extent(ow * sw - pw, KW_, pr, W, count_include_pad);
                acc += load<T>(g + (index_t)oh * OW + ow) / (A)divisor;
            }
        }
        store<T>(gi + i, acc);
    }
}

// 3-D: the same gathers with a depth tap loop outside the row and column ones (terms in tap order: depth,
// then rows, then columns). Parameters as the 3-D forward kernels' (pool2d.cu), go/idx (N, C, OD, OH, OW),
// gi (N, C, D, H, W); window sizes at run time.
template <typename T>
__global__ void max_pool3d_backward(const T* __restrict__ go, const index_t* __restrict__ idx,
                                    T* __restrict__ gi, index_t planes, int D, int H, int W, int OD, int OH,
                                    int OW, int kd, int kh, int kw, int sd, int sh, int sw, int pd, int ph,
                                    int pw, int dd, int dh, int dw) {
    typedef typename acc_type<T>::type A;
    const index_t out_volume = (index_t)OD * OH * OW;
    GPUCONV_GRID_STRIDE_LOOP(i, planes * D * H * W) {
        const VolumePos p = volume_pos(i, D, H, W);
        const index_t target = ((index_t)p.d * H + p.h) * W + p.w;  // the index a window records for it
        const T* g = go + p.plane * out_volume;
        const index_t* ix = idx + p.plane * out_volume;
        A acc = A(0);
        for (int a = 0; a < kd; ++a) {
            const int od = tap_output(p.d, pd, a, dd, sd, OD);
            if (od < 0) continue;
            for (int b = 0; b < kh; ++b) {
                const int oh = tap_output(p.h, ph, b, dh, sh, OH);
                if (oh < 0) continue;
                for (int c = 0; c < kw; ++c) {
                    const int ow = tap_output(p.w, pw, c, dw, sw, OW);
                    if (ow < 0) continue;
                    const index_t o = ((index_t)od * OH + oh) * OW + ow;
                    if (ix[o] == target) acc += load<T>(g + o);
                }
            }
        }
        store<T>(gi + i, acc);
    }
}

template <typename T>
__global__ void avg_pool3d_backward(const T* __restrict__ go, T* __restrict__ gi, index_t planes, int D, int H,
                                    int W, int OD, int OH, int OW, int kd, int kh, int kw, int sd, int sh,
                                    int sw, int pd, int ph, int pw, int pd_hi, int ph_hi, int pw_hi,
                                    int count_include_pad, index_t divisor_override) {
    typedef typename acc_type<T>::type A;
    const index_t out_volume = (index_t)OD * OH * OW;
    GPUCONV_GRID_STRIDE_LOOP(i, planes * D * H * W) {
        const VolumePos p = volume_pos(i, D, H, W);
        const T* g = go + p.plane * out_volume;
        A acc = A(0);
        for (int a = 0; a < kd; ++a) {
            const int od = tap_output(p.d, pd, a, 1, sd, OD);  // average pooling has no dilation
            if (od < 0) continue;
            const int div_d = avg_extent(od * sd - pd, kd, pd_hi, D, count_include_pad);
            for (int b = 0; b < kh; ++b) {
                const int oh = tap_output(p.h, ph, b, 1, sh, OH);
                if (oh < 0) continue;
                const int div_h = avg_extent(oh * sh - ph, kh, ph_hi, H, count_include_pad);
                for (int c = 0; c < kw; ++c) {
                    const int ow = tap_output(p.w, pw, c, 1, sw, OW);
                    if (ow < 0) continue;
                    // The forward's divisor of output (od, oh, ow): >= 1, since this window holds the cell.
                    const index_t divisor = divisor_override != 0
                        ? divisor_override
                        : (index_t)div_d * div_h * avg_extent(ow * sw - pw, kw, pw_hi, W, count_include_pad);
                    acc += load<T>(g + ((index_t)od * OH + oh) * OW + ow) / (A)divisor;
                }
            }
        }
        store<T>(gi + i, acc);
    }
}

// Adaptive, 2-D and 3-D in one kernel per op (DIMS at compile time, as the forward's): the outputs whose windows
// contain depth d / row h / column w are the ranges adaptive_span(d, OD, D) x adaptive_span(h, OH, H) x
// adaptive_span(w, OW, W), visited ascending (depth, then rows, then columns). With DIMS = 2 the depth axis is
// one slice at compile time (D = OD = 1, whatever the host passes), so the depth loop folds away and the kernel
// is the plain 2-D gather. go/idx (N, C, [OD,] OH, OW), gi (N, C, [D,] H, W), C-contiguous.
template <typename T, int DIMS>
__global__ void adaptive_max_pool_backward(const T* __restrict__ go, const index_t* __restrict__ idx,
                                           T* __restrict__ gi, index_t planes, int D, int H, int W, int OD,
                                           int OH, int OW) {
    typedef typename acc_type<T>::type A;
    const int D_ = DIMS == 3 ? D : 1;  // adaptive_cell's depths (1 for DIMS = 2)
    const int OD_ = DIMS == 3 ? OD : 1;
    const index_t out_volume = (index_t)OD_ * OH * OW;
    GPUCONV_GRID_STRIDE_LOOP(i, planes * D_ * H * W) {
        // Input cell; per axis the outputs whose adaptive windows contain it (never empty).
        const AdaptiveCell cell = adaptive_cell<DIMS>(i, D, H, W, OD, OH, OW);
        const VolumePos& p = cell.p;
        const Span &deps = cell.deps, &rows = cell.rows, &cols = cell.cols;
        const index_t target = ((index_t)p.d * H + p.h) * W + p.w;  // the index a window records for it
        const T* g = go + p.plane * out_volume;
        const index_t* ix = idx + p.plane * out_volume;
        A acc = A(0);
        for (int od = deps.begin; od < deps.end; ++od) {
            for (int oh = rows.begin; oh < rows.end; ++oh) {
                for (int ow = cols.begin; ow < cols.end; ++ow) {
                    const index_t o = ((index_t)od * OH + oh) * OW + ow;
                    if (ix[o] == target) acc += load<T>(g + o);
                }
            }
        }
        store<T>(gi + i, acc);
    }
}

template <typename T, int DIMS>
__global__ void adaptive_avg_pool_backward(const T* __restrict__ go, T* __restrict__ gi, index_t planes, int D,
                                           int H, int W, int OD, int OH, int OW) {
    typedef typename acc_type<T>::type A;
    const int D_ = DIMS == 3 ? D : 1;  // adaptive_cell's depths (1 for DIMS = 2)
    const int OD_ = DIMS == 3 ? OD : 1;
    const index_t out_volume = (index_t)OD_ * OH * OW;
    GPUCONV_GRID_STRIDE_LOOP(i, planes * D_ * H * W) {
        // Input cell; per axis the outputs whose adaptive windows contain it (never empty).
        const AdaptiveCell cell = adaptive_cell<DIMS>(i, D, H, W, OD, OH, OW);
        const VolumePos& p = cell.p;
        const Span &deps = cell.deps, &rows = cell.rows, &cols = cell.cols;
        const T* g = go + p.plane * out_volume;
        A acc = A(0);
        for (int od = deps.begin; od < deps.end; ++od) {
            const int count_d = adaptive_span(od, D_, OD_).count;  // the forward's window of output depth od
            for (int oh = rows.begin; oh < rows.end; ++oh) {
                const index_t count_dh = (index_t)count_d * adaptive_span(oh, H, OH).count;
                for (int ow = cols.begin; ow < cols.end; ++ow) {
                    const index_t count = count_dh * adaptive_span(ow, W, OW).count;  // the forward's divisor
                    acc += load<T>(g + ((index_t)od * OH + oh) * OW + ow) / (A)count;
                }
            }
        }
        store<T>(gi + i, acc);
    }
}

#undef GPUCONV_GRID_STRIDE_LOOP

}  // namespace gpuconv
