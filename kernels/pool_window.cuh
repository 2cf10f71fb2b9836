// pool_window.cuh — the pooling windows, shared by the forward kernels (pool2d.cu) and the backward ones
// (pool2d_backward.cu), 2-D and 3-D, so that all read the same clamping, divisor and adaptive-window
// arithmetic.
//
//   Span / pool_span:     the in-bounds taps of one max/avg window along one axis (PyTorch's clamping).
//   avg_extent:           one axis' factor of an average window's divisor (forward and backward, 2-D, 3-D).
//   adaptive_span:        adaptive window i of out_size over size, [floor(i*size/out), ceil((i+1)*size/out)).
//                         With the roles swapped, adaptive_span(h, OH, H) is the range of OUTPUT rows whose
//                         windows contain input row h (the backward kernels' gather range).
//   OutputPos / output_pos: flat index -> (plane, row, col) of a C-contiguous (planes, rows, cols) array;
//   VolumePos / volume_pos: the same for (planes, depth, rows, cols) (the 3-D kernels, and the adaptive ones,
//                         2-D as depth 1).
//   AdaptiveCell / adaptive_cell<DIMS>: an adaptive kernel's cell and its three adaptive spans.
//   GPUCONV_GRID_STRIDE_LOOP(i, total): 64-bit grid-stride loop over a flat range.
#pragma once

#include "common.cuh"

namespace gpuconv {

__device__ __forceinline__ int pool_imin(int a, int b) { return a < b ? a : b; }

// The in-bounds taps of a window along one axis: begin, begin + step, ... while < end; every one of
// them lies in [0, size). count = how many (0 when the window holds no input cell at all).
struct Span {
    int begin;
    int end;
    int step;
    int count;
};

// A max/avg pooling window along one axis: k taps `step` apart (the dilation; 1 for avg) from `start`,
// which is negative inside the leading padding. Clamped exactly as PyTorch does, because padding taps
// never take part: they are -inf for max and 0 for the avg sum (the avg divisor is computed apart).
__device__ __forceinline__ Span pool_span(int start, int k, int step, int size) {
    Span s;
    s.step = step;
    // One past the last tap, but not past the input: trailing padding and the ceil_mode overhang past
    // size + padding are not input cells.
    s.end = pool_imin(start + (k - 1) * step + 1, size);
    // First tap at or after 0: skip the whole taps in the leading padding, staying on the tap grid
    // start + j*step (with dilation the first in-bounds tap may be past 0). This is also PyTorch's
    // initial argmax position.
    s.begin = start < 0 ? start + ((-start + step - 1) / step) * step : start;
    // With dilation every tap may be padding (e.g. k=2, d=3, p=1, H=2: taps -1 and 2), then end <= begin
    // and the window is empty.
    s.count = s.end > s.begin ? (s.end - s.begin - 1) / step + 1 : 0;
    return s;
}

// avg pooling's divisor factor along one axis for the window starting at h0 = o*s - p_lo (negative inside
// the leading padding), as PyTorch computes it: with count_include_pad the window clipped to the padded
// input [-p_lo, size + p_hi) (the ceil_mode overhang past size + p_hi does not count), without it the
// in-bounds cells. The divisor of a window is the product of its axes' factors (or divisor_override).
__device__ __forceinline__ int avg_extent(int h0, int k, int p_hi, int size, int count_include_pad) {
    if (count_include_pad) return pool_imin(h0 + k, size + p_hi) - h0;
    const int lo = h0 > 0 ? h0 : 0;
    const int hi = pool_imin(h0 + k, size);
    return hi > lo ? hi - lo : 0;
}

// A 3-D output or input position: flat index i of a C-contiguous (planes, D, H, W) array.
struct VolumePos {
    index_t plane;
    int d;
    int h;
    int w;
};
__device__ __forceinline__ VolumePos volume_pos(index_t i, int D, int H, int W) {
    VolumePos p;
    p.w = (int)(i % W);
    index_t rest = i / W;
    p.h = (int)(rest % H);
    rest /= H;
    p.d = (int)(rest % D);
    p.plane = rest / D;
    return p;
}

// Adaptive window i of out_size over size: [floor(i*size/out_size), ceil((i+1)*size/out_size)). Never
// empty (ceil((i+1)*s/o) > i*s/o >= floor(i*s/o)), and inside [0, size) since i < out_size. The
// products are 64-bit: i*size may exceed 2^31 even though the quotients fit in an int.
__device__ __forceinline__ Span adaptive_span(int i, int size, int out_size) {
    Span s;
    s.step = 1;
    s.begin = (int)(((index_t)i * size) / out_size);
    s.end = (int)(((index_t)(i + 1) * size + out_size - 1) / out_size);
    s.count = s.end - s.begin;
    return s;
}

// The adaptive kernels' cell: flat index i of a C-contiguous (planes, D, H, W) array (the outputs in the
// forward kernels, the input cells in the backward ones) and, per axis, the adaptive span of the other array
// (oD, oH, oW) that pairs with it: the forward's input window, or the outputs whose windows contain the cell
// (adaptive_span with the roles swapped, see above). DIMS = 2 fixes both depths at 1 at compile time (the
// host's D values are then ignored), so the depth decode and span fold away.
struct AdaptiveCell {
    VolumePos p;
    Span deps, rows, cols;
};
template <int DIMS>
__device__ __forceinline__ AdaptiveCell adaptive_cell(index_t i, int D, int H, int W, int oD, int oH, int oW) {
    static_assert(DIMS == 2 || DIMS == 3, "adaptive pooling kernels are 2-D or 3-D");
    const int D_ = DIMS == 3 ? D : 1;
    const int oD_ = DIMS == 3 ? oD : 1;
    AdaptiveCell c;
    c.p = volume_pos(i, D_, H, W);
    c.deps = adaptive_span(c.p.d, oD_, D_);
    c.rows = adaptive_span(c.p.h, oH, H);
    c.cols = adaptive_span(c.p.w, oW, W);
    return c;
}

// Flat index i of a C-contiguous (planes, OH, OW) array -> (plane = n*C + c, oh, ow) (the backward
// kernels use it for input positions (plane, h, w) too). Each quotient fits in an int except the plane.
struct OutputPos {
    index_t plane;
    int oh;
    int ow;
};
__device__ __forceinline__ OutputPos output_pos(index_t i, int OH, int OW) {
    OutputPos p;
    p.ow = (int)(i % OW);
    const index_t rest = i / OW;
    p.oh = (int)(rest % OH);
    p.plane = rest / OH;
    return p;
}

// 64-bit grid-stride loop over a flat range: total (N*C*OH*OW outputs, N*C*H*W inputs) may exceed 2^31.
#define GPUCONV_GRID_STRIDE_LOOP(i, total)                                                \
    for (index_t i = (index_t)blockIdx.x * blockDim.x + threadIdx.x; i < (total);       \
         i += (index_t)gridDim.x * blockDim.x)

}  // namespace gpuconv
