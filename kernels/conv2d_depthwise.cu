// conv2d_depthwise.cu — depthwise CUDA convolution: every filter reads exactly one input channel
// (C/groups == 1; groups == C, K = m*C with channel multiplier m = K/groups >= 1).
//
// Kernel in this file:
//   conv2d_depthwise<T, ROWS, FR, FS>: a block slice computes one TW x (TH*ROWS) output tile of one (n, k)
//       plane; it stages that tile's input rectangle (tile + halo, zero where it is padding) of input
//       channel k / Kg in shared memory with coalesced row reads, so each input element is read from global
//       memory once per output plane (plus the halo overlap between neighbouring tiles), and each output is
//       written once, coalesced along Q. Each thread keeps ROWS vertically adjacent outputs in registers.
//       FR/FS > 0 (the host instantiates 3x3 and 5x5) fix the filter size: its taps live in registers, the
//       loops unroll fully, and stride-1 / dilation-1 rows run a sliding window (each staged input row is
//       read from shared memory once per thread and feeds up to FR of its outputs); other strides and
//       dilations sum each output's taps, one output at a time. FR = FS = 0 is the generic runtime-size
//       version (any R, S; taps staged in shared memory). All of them take any stride, asymmetric padding,
//       dilation, flip, bias and fused activation at run time. Registers are capped by __launch_bounds__
//       (depthwise_min_blocks below: 64 for 32-bit 3x3 / generic, 80 for 5x5; float64 128 / 168).
//   Parameters: the pointers x, w, b, y, then the geometry as one ConvParams cp passed by value
//       (kernels/conv_params.cuh: N, C, H, W, K, R, S, groups, sh, sw, pt, pl, dh, dw, P, Q, flip, has_bias,
//       act; the host fills it with gpuconv/_cuda/abi.py conv_kernel_args).
//   Launch shape: block = (TW, TH, PB) threads chosen by the host (gpuconv/_cuda/conv_depthwise.py,
//       depthwise_tile / depthwise_planes_per_block): TW in {8, 16, 32} output columns (one per thread.x),
//       TH thread rows (tile height TH * ROWS, ROWS = 4), and PB independent slices (threadIdx.z), each
//       computing its own (plane, tile) work item, so small planes (7x7, 14x14) still fill ~128-thread
//       blocks. 1-D grid over ceil(N * K * tiles / PB) blocks, covered by a 64-bit grid-stride loop (the
//       host may cap the grid).
//   Dynamic shared memory (host: depthwise_shared_bytes):
//       PB * sizeof(acc_type<T>) * (halo_h * halo_w + (FR == 0 ? R * S : 0))
//       halo_h = (TH*ROWS - 1) * sh + (R - 1) * dh + 1,  halo_w = (TW - 1) * sw + (S - 1) * dw + 1.
//       The host declines (ValueError naming the rule) when one slice does not fit in 48 KiB.
//   Measured speed: the README's Benchmarks section (bench/results/, one file per device).
//
// Semantics: exactly conv2d_direct's (see conv2d_direct.cu and docs/semantics.md) restricted to Cg == 1:
//   y[n,k,p,q] = act(b[k] + sum_{r,s} x[n, k/Kg, p*sh - pt + r*dh, q*sw - pl + s*dw] * w[k, 0, r, s]),
// out-of-range x reading as 0, flip reading w[k, 0, R-1-r, S-1-s]. Staged values are held in the
// accumulation type (float for float16) so the inner loops do no conversions.
#include "common.cuh"
#include "conv_params.cuh"

namespace gpuconv {

// A loop the CUDA compilers must not unroll (no hint for the CPU emulator's g++).
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define GPUCONV_NO_UNROLL _Pragma("unroll 1")
#else
#define GPUCONV_NO_UNROLL
#endif

// Most threads per block the host launches (conv_depthwise.py mirrors it as MAX_THREADS).
constexpr int CONV_DEPTHWISE_MAX_THREADS = 128;
// Blocks of CONV_DEPTHWISE_MAX_THREADS threads to keep resident per SM, for __launch_bounds__ (which then
// caps registers at 65536 / (128 * value) per thread). Without the cap ptxas hoists every shared-memory
// load of the unrolled loops ahead of the multiply-adds (85 registers for float 3x3, 128 for 5x5, up to
// 238 for float64 5x5), which for a memory-bound kernel trades away the occupancy (warps in flight) that
// hides global-memory latency. 32-bit types: 8 blocks (64 registers) for 3x3 and the generic kernel,
// 6 (80) for 5x5, whose 25 taps alone take 25 registers; float64 (two registers per value): 4 (128) and
// 3 (168). Each leaves headroom over what NVRTC 12.9 needed without spilling (checked for sm_75..sm_120,
// with NVRTC 12.9 and 13.0, by tests/test_nvrtc_compile.py).
template <typename T, int FR, int FS>
struct depthwise_min_blocks {
    static constexpr bool wide = sizeof(typename acc_type<T>::type) == 8;
    static constexpr bool big_filter = FR * FS > 9;
    static constexpr int value = wide ? (big_filter ? 3 : 4) : (big_filter ? 6 : 8);
};

template <typename T, int ROWS, int FR, int FS>
__global__ void __launch_bounds__(CONV_DEPTHWISE_MAX_THREADS, (depthwise_min_blocks<T, FR, FS>::value))
conv2d_depthwise(const T* __restrict__ x,   // (N, C, H, W), C-contiguous
                 const T* __restrict__ w,   // (K, 1, R, S), C-contiguous
                 const T* __restrict__ b,   // (K,) when has_bias, else any valid pointer (unread)
                 T* __restrict__ y,         // (N, K, P, Q), C-contiguous, fully written
                 const __grid_constant__ ConvParams cp) {  // the geometry, by value (conv_params.cuh)
    typedef typename acc_type<T>::type A;
    static_assert((FR > 0) == (FS > 0), "specialize both filter dimensions or neither");
    static_assert(ROWS >= 1, "each thread owns at least one output row");
    constexpr bool FIXED = FR > 0;
    constexpr int NTAPS = FIXED ? FR * FS : 1;  // register taps (the generic kernel reads them from shared)
    // The geometry (conv_params.cuh) under the names the body uses (constant-bank reads, as scalars were).
    const int N = cp.N, C = cp.C, H = cp.H, W = cp.W, K = cp.K, R = cp.R, S = cp.S, groups = cp.groups;
    const int sh = cp.sh, sw = cp.sw, pt = cp.pt, pl = cp.pl, dh = cp.dh, dw = cp.dw, P = cp.P, Q = cp.Q;
    const int flip = cp.flip, has_bias = cp.has_bias, act = cp.act;

    // Filter size: a compile-time constant in the specializations (the host picks those only when
    // R == FR and S == FS), so the tap loops unroll; the runtime value otherwise.
    const int RR = FIXED ? FR : R;
    const int SS = FIXED ? FS : S;
    const int RS = RR * SS;
    // Filters per input channel (the channel multiplier): filter k reads input channel k / Kg, because
    // C/groups == 1 (the host declines every other geometry), so group g = k / Kg is input channel g.
    const int Kg = K / groups;

    // The block shape is the tile shape (host: depthwise_tile): thread.x = output column, thread.y = a
    // band of ROWS consecutive output rows, thread.z = which of the block's PB independent work items.
    const int TW = (int)blockDim.x;
    const int TH = (int)blockDim.y;
    const int PB = (int)blockDim.z;
    const int tx = (int)threadIdx.x;
    const int ty = (int)threadIdx.y;
    const int tz = (int)threadIdx.z;
    const int tile_h = TH * ROWS;
    const int row0 = ty * ROWS;  // this thread's first output row within the tile

    // Halo: output row p reads input rows p*sh - pt + r*dh for r in [0, R), so tile_h consecutive output
    // rows span (tile_h-1)*sh + (R-1)*dh + 1 input rows; likewise TW columns. Depends on the runtime
    // stride/dilation (and filter size in the generic kernel), hence dynamic shared memory. The host
    // computes the same formula (depthwise_halo) and declines geometries whose one slice exceeds 48 KiB,
    // so these products, and every shared-memory index below, fit easily in an int.
    const int halo_h = (tile_h - 1) * sh + (RR - 1) * dh + 1;
    const int halo_w = (TW - 1) * sw + (SS - 1) * dw + 1;
    const int halo_plane = halo_h * halo_w;

    // Shared layout: PB slices, one per threadIdx.z, each s_in[halo_h][halo_w] then (generic kernel only)
    // s_w[R*S]. A slice is written and read only by its own threads. Raw bytes: the element type differs
    // between instantiations.
    GPUCONV_DYNAMIC_SHARED(unsigned char, smem_raw);
    A* const s_in = reinterpret_cast<A*>(smem_raw) + tz * (halo_plane + (FIXED ? 0 : RS));
    A* const s_w = s_in + halo_plane;  // generic kernel only

    // Work items in C order (n, k, tile row, tile column): consecutive items are neighbouring tiles of one
    // plane, and with a channel multiplier the planes k sharing an input channel follow each other (their
    // repeated reads of that channel then tend to hit L2). 64-bit: N*K*tiles may exceed 2^31.
    const int tiles_q = (Q + TW - 1) / TW;
    const int tiles_p = (P + tile_h - 1) / tile_h;
    const index_t tiles = (index_t)tiles_p * tiles_q;
    const index_t items = (index_t)N * K * tiles;
    const index_t in_plane = (index_t)H * W;   // 64-bit: one input plane alone may exceed 2^31 elements
    const index_t out_plane = (index_t)P * Q;

    // Grid-stride over groups of PB items. The loop condition depends only on blockIdx/gridDim/blockDim,
    // never on threadIdx, so every thread of the block runs the same iterations and reaches the same
    // __syncthreads() calls, including slices whose item is past the end (they idle but keep the barrier).
    for (index_t base = (index_t)blockIdx.x * PB; base < items; base += (index_t)gridDim.x * PB) {
        const index_t item = base + tz;
        const bool active = item < items;  // the last group of items may be partial
        int n = 0, k = 0, p0 = 0, q0 = 0;
        if (active) {
            const index_t tile = item % tiles;
            const index_t plane_nk = item / tiles;  // n * K + k
            k = (int)(plane_nk % K);
            n = (int)(plane_nk / K);
            p0 = (int)(tile / tiles_q) * tile_h;  // first output row / column of the tile
            q0 = (int)(tile % tiles_q) * TW;
        }

        // Taps of filter k, flipped here when flip is set (rotating by 180 degrees reverses the flat
        // r*S + s order) so the inner loops are flip-free. Specializations: in registers, read straight
        // from global memory (every thread of the slice reads the same address: one broadcast).
        A wr[NTAPS];
        GPUCONV_UNROLL
        for (int t = 0; t < NTAPS; ++t) wr[t] = A(0);
        if (active) {
            const T* wk = w + (index_t)k * RS;
            if constexpr (FIXED) {
                GPUCONV_UNROLL
                for (int t = 0; t < NTAPS; ++t) wr[t] = load<T>(wk + (flip ? NTAPS - 1 - t : t));
            } else {
                // Generic kernel: R*S is unbounded at compile time, so the slice stages them in shared.
                for (int t = ty * TW + tx; t < RS; t += TW * TH) s_w[t] = load<T>(wk + (flip ? RS - 1 - t : t));
            }

            // Stage the input rectangle of the tile. Its origin is the input coordinate of the tile's
            // first output's first tap (negative inside the top/left padding). int: |p0*sh| <= H + pt + pb
            // plus one tile, which the host checks fits in an int (int32_limit_reason with the tile's
            // overhang). Threads of a row take consecutive columns, so the global reads of a warp are
            // contiguous runs of one input row (coalesced), each input element read once per tile.
            const int ih0 = p0 * sh - pt;
            const int iw0 = q0 * sw - pl;
            const T* xc = x + ((index_t)n * C + k / Kg) * in_plane;
            for (int hy = ty; hy < halo_h; hy += TH) {
                const int ih = ih0 + hy;
                // Halo cells outside the image are either padding (reads as 0 by definition) or lie past
                // the padded image (read only by outputs past P/Q, which are never stored): zero-fill
                // both and never read x out of range. Every cell of the slice is written, so no output
                // reads a stale (or, under the emulator, NaN-poisoned) value.
                const bool row_inside = ih >= 0 && ih < H;
                A* srow = s_in + hy * halo_w;
                for (int hx = tx; hx < halo_w; hx += TW) {
                    const int iw = iw0 + hx;
                    A v = A(0);
                    if (row_inside && iw >= 0 && iw < W) v = load<T>(xc + (index_t)ih * W + iw);
                    srow[hx] = v;
                }
            }
        }
        // Barrier: the slice's input rectangle (and generic taps) are staged by all of its threads; each
        // thread below reads cells other threads wrote.
        __syncthreads();

        if (active) {
            // Border tiles: outputs past the plane's edge were computed from zero-filled cells but are not
            // part of y; emit() skips them. Threads of a row store consecutive q: coalesced.
            const int q = q0 + tx;
            const A bias = has_bias ? load<T>(b + k) : A(0);  // b is not read without a bias
            T* const yq = y + ((index_t)n * K + k) * out_plane + q;
            auto emit = [&](int j, A v) {
                const int p = p0 + row0 + j;
                if (q < Q && p < P) {
                    if (has_bias) v += bias;
                    store<T>(yq + (index_t)p * Q, activate(v, act));
                }
            };

            // Output (p0 + row0 + j, q0 + tx) reads rectangle row (row0 + j)*sh + r*dh and column
            // tx*sw + s*dw: always inside the rectangle, even for outputs past P/Q (it covers the whole
            // tile), so no bounds checks here.
            const A* const col = s_in + tx * sw;
            if constexpr (!FIXED) {
                // Generic size: runtime tap loops, the ROWS outputs innermost (unrolled) so each tap value
                // read from shared memory feeds all of them.
                A acc[ROWS];
                GPUCONV_UNROLL
                for (int j = 0; j < ROWS; ++j) acc[j] = A(0);
                for (int r = 0; r < RR; ++r) {
                    for (int s = 0; s < SS; ++s) {
                        const A wv = s_w[r * SS + s];
                        const A* tap = col + (r * dh) * halo_w + s * dw;
                        GPUCONV_UNROLL
                        for (int j = 0; j < ROWS; ++j) acc[j] += tap[(row0 + j) * sh * halo_w] * wv;
                    }
                }
                GPUCONV_UNROLL
                for (int j = 0; j < ROWS; ++j) emit(j, acc[j]);
            } else if (sh == 1 && dh == 1) {
                // Sliding window (stride 1, dilation 1 rows: every MobileNet/EfficientNet stride-1 layer):
                // the thread's ROWS outputs read rectangle rows row0 .. row0 + ROWS + FR - 2; load each of
                // those rows' FS taps once and add them to every output j that uses it (tap row r = i - j).
                // (ROWS + FR - 1) * FS shared loads instead of ROWS * FR * FS.
                A acc[ROWS];
                GPUCONV_UNROLL
                for (int j = 0; j < ROWS; ++j) acc[j] = A(0);
                GPUCONV_UNROLL
                for (int i = 0; i < ROWS + FR - 1; ++i) {
                    const A* row = col + (row0 + i) * halo_w;
                    A xv[FS];
                    GPUCONV_UNROLL
                    for (int s = 0; s < FS; ++s) xv[s] = row[s * dw];
                    GPUCONV_UNROLL
                    for (int j = 0; j < ROWS; ++j) {
                        const int r = i - j;  // compile-time after unrolling
                        if (r >= 0 && r < FR) {
                            GPUCONV_UNROLL
                            for (int s = 0; s < FS; ++s) acc[j] += xv[s] * wr[r * FS + s];
                        }
                    }
                }
                GPUCONV_UNROLL
                for (int j = 0; j < ROWS; ++j) emit(j, acc[j]);
            } else {
                // Any stride / dilation: each output reads its own FR x FS taps, one output at a time and
                // stored at once. Not unrolled over j on purpose: fully unrolled, the compiler hoists all
                // ROWS * FR * FS shared loads ahead of the multiply-adds and float64 5x5 then spills.
                GPUCONV_NO_UNROLL
                for (int j = 0; j < ROWS; ++j) {
                    const A* rows = col + (row0 + j) * sh * halo_w;
                    A a = A(0);
                    GPUCONV_UNROLL
                    for (int r = 0; r < FR; ++r) {
                        const A* row = rows + r * dh * halo_w;
                        GPUCONV_UNROLL
                        for (int s = 0; s < FS; ++s) a += row[s * dw] * wr[r * FS + s];
                    }
                    emit(j, a);
                }
            }
        }
        // Barrier: every thread must be done reading its slice before the next grid-stride iteration
        // restages it.
        __syncthreads();
    }
}

}  // namespace gpuconv
