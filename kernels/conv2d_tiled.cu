// conv2d_tiled.cu — shared-memory tiled CUDA convolution.
//
// Kernel in this file:
//   conv2d_tiled<T, TILE_P, TILE_Q, KB, FR, FS>: a block computes a TILE_P x TILE_Q tile of output pixels
//       for KB filters of one conv group; it walks that group's input channels in chunks of `cb`, staging
//       the chunk's input tile plus halo and the KB filters' weights for those channels in shared memory,
//       so each staged input value is reused for KB filters x up to R*S taps and each staged weight for
//       the whole tile. Each thread keeps ROWS (= TILE_P / THREAD_ROWS) pixels x KB filters of accumulators
//       in registers. FR/FS > 0 fix the filter size at compile time (loops fully unrolled; the host
//       instantiates 1x1 and 3x3 for KB = 8, 3x3 and 5x5 for KB = 1, see SPECIALIZED_FILTERS in conv.py);
//       FR = FS = 0 is the generic runtime-size version. Same coverage as conv2d_direct:
//       stride, asymmetric padding, dilation, groups/depthwise, flip, bias, fused activation.
//   Parameters: the pointers x, w, b, y, then the geometry as one ConvParams cp passed by value
//       (kernels/conv_params.cuh: N, C, H, W, K, R, S, groups, sh, sw, pt, pl, dh, dw, P, Q, flip, has_bias,
//       act; the host fills it with gpuconv/_cuda/abi.py conv_kernel_args), then cb (input channels
//       staged per chunk).
//   Launch shape: block = (TILE_Q, THREAD_ROWS = 8, 1) threads (16 x 8 = 128 for the 16x16 tile the host
//       uses); 1-D grid over N * groups * ceil(Kg/KB) * ceil(P/TILE_P) * ceil(Q/TILE_Q) blocks, covered by
//       a 64-bit grid-stride loop so the host may cap the grid. Dynamic shared memory, sized by the host
//       (gpuconv/_cuda/conv.py, tiled_shared_bytes):
//           sizeof(acc_type<T>) * cb * (halo_h * halo_w + KB * R * S)
//           halo_h = (TILE_P - 1) * sh + (R - 1) * dh + 1,  halo_w = (TILE_Q - 1) * sw + (S - 1) * dw + 1.
//   Measured speed: the README's Benchmarks section (bench/results/, one file per device).
//
// Semantics: exactly conv2d_direct's (see conv2d_direct.cu and docs/semantics.md). Staged values are held
// in the accumulation type (float for float16) so the inner loop does no conversions.
#include "common.cuh"
#include "conv_params.cuh"

namespace gpuconv {

// Thread rows per block; the host launches blockDim = (TILE_Q, CONV_TILED_THREAD_ROWS, 1) (conv.py mirrors
// this value as TILED_THREAD_ROWS).
constexpr int CONV_TILED_THREAD_ROWS = 8;

template <typename T, int TILE_P, int TILE_Q, int KB, int FR, int FS>
__global__ void conv2d_tiled(const T* __restrict__ x,   // (N, C, H, W), C-contiguous
                             const T* __restrict__ w,   // (K, Cg, R, S), C-contiguous
                             const T* __restrict__ b,   // (K,) when has_bias, else any valid pointer (unread)
                             T* __restrict__ y,         // (N, K, P, Q), C-contiguous, fully written
                             const __grid_constant__ ConvParams cp,  // the geometry, by value (conv_params.cuh)
                             int cb) {  // input channels staged per chunk; the host sized shared memory for it
    typedef typename acc_type<T>::type A;
    constexpr int ROWS = TILE_P / CONV_TILED_THREAD_ROWS;  // output rows per thread
    static_assert(TILE_P % CONV_TILED_THREAD_ROWS == 0, "TILE_P must be a multiple of the thread rows");
    static_assert((FR > 0) == (FS > 0), "specialize both filter dimensions or neither");
    // The geometry (conv_params.cuh) under the names the body uses (constant-bank reads, as scalars were).
    const int N = cp.N, C = cp.C, H = cp.H, W = cp.W, K = cp.K, R = cp.R, S = cp.S, groups = cp.groups;
    const int sh = cp.sh, sw = cp.sw, pt = cp.pt, pl = cp.pl, dh = cp.dh, dw = cp.dw, P = cp.P, Q = cp.Q;
    const int flip = cp.flip, has_bias = cp.has_bias, act = cp.act;

    // Filter size: a compile-time constant in the specializations (the host only picks those when
    // R == FR and S == FS), so the tap loops below unroll; the runtime value otherwise.
    const int RR = FR > 0 ? FR : R;
    const int SS = FS > 0 ? FS : S;
    const int RS = RR * SS;
    const int Cg = C / groups;
    const int Kg = K / groups;

    // The input region one tile needs, per channel: output row p reads input rows p*sh - pt + r*dh for
    // r in [0, R), so TILE_P consecutive rows span (TILE_P-1)*sh + (R-1)*dh + 1 input rows (likewise columns).
    // This depends on stride, dilation and the runtime filter size, hence dynamic shared memory. The host
    // computes the same formula (tiled_shared_bytes) and declines geometries whose cb = 1 size exceeds
    // 48 KiB, so these products (and every shared-memory index below) fit easily in an int.
    const int halo_h = (TILE_P - 1) * sh + (RR - 1) * dh + 1;
    const int halo_w = (TILE_Q - 1) * sw + (SS - 1) * dw + 1;
    const int halo_plane = halo_h * halo_w;

    // Shared layout: s_in[cb][halo_h][halo_w], then s_w[cb][R][S][KB] (KB innermost: the KB weights of
    // one tap are read together by every thread). Declared as raw bytes because the element type differs
    // between instantiations.
    GPUCONV_DYNAMIC_SHARED(unsigned char, smem_raw);
    A* s_in = reinterpret_cast<A*>(smem_raw);
    A* s_w = s_in + cb * halo_plane;

    // The host launches exactly TILE_Q x CONV_TILED_THREAD_ROWS threads: tx covers the tile's columns and
    // ty + j*CONV_TILED_THREAD_ROWS (j < ROWS) its rows, each once.
    const int tx = threadIdx.x;  // output column within the tile
    const int ty = threadIdx.y;  // first output row within the tile; this thread also owns ty + j*THREAD_ROWS
    const int tid = ty * blockDim.x + tx;
    const int nthreads = blockDim.x * blockDim.y;

    // Block decomposition (C order: n, group, filter block within the group, tile row, tile column).
    // 64-bit: the block count may exceed 2^31 even though each factor fits in an int.
    const int tiles_q = (Q + TILE_Q - 1) / TILE_Q;
    const int tiles_p = (P + TILE_P - 1) / TILE_P;
    const int kblocks = (Kg + KB - 1) / KB;  // filter blocks per group; the last may be partial
    const index_t tiles = (index_t)tiles_p * tiles_q;
    const index_t total_blocks = (index_t)N * groups * kblocks * tiles;
    const index_t plane = (index_t)H * W;  // 64-bit: one input plane alone may exceed 2^31 elements

    // Grid-stride over blocks. The loop condition depends only on blockIdx/gridDim, so every thread of a
    // block runs the same iterations and reaches the same __syncthreads() calls.
    for (index_t blk = blockIdx.x; blk < total_blocks; blk += gridDim.x) {
        const index_t tile = blk % tiles;
        index_t rest = blk / tiles;
        const int kb = (int)(rest % kblocks);
        rest /= kblocks;
        const int g = (int)(rest % groups);
        const int n = (int)(rest / groups);
        const int p0 = (int)(tile / tiles_q) * TILE_P;  // first output row / column of the tile
        const int q0 = (int)(tile % tiles_q) * TILE_Q;
        const int k_begin = g * Kg + kb * KB;            // first filter of this block
        // Filters this block really has: KB, except for the last block of a group when Kg % KB != 0.
        // Filters past the group end are never read from w or written to y (their staged weights are 0).
        const int kcount = (g * Kg + Kg - k_begin < KB) ? g * Kg + Kg - k_begin : KB;
        const int c_first = g * Cg;  // first input channel of the group
        // Input coordinates of the tile's halo origin (negative inside the top/left padding).
        // int: |p0*sh| <= H + pt + pb, which the host checks fits in an int.
        const int ih0 = p0 * sh - pt;
        const int iw0 = q0 * sw - pl;
        const T* xg = x + ((index_t)n * C + c_first) * plane;

        A acc[ROWS][KB];
        GPUCONV_UNROLL
        for (int j = 0; j < ROWS; ++j) {
            GPUCONV_UNROLL
            for (int kk = 0; kk < KB; ++kk) acc[j][kk] = A(0);
        }

        for (int c0 = 0; c0 < Cg; c0 += cb) {
            const int ccount = (Cg - c0 < cb) ? Cg - c0 : cb;  // the last chunk may be partial: stage only real channels

            // Stage the input tile + halo of channels [c0, c0 + ccount). Consecutive threads take
            // consecutive columns, so global reads are coalesced along W.
            for (int e = tid; e < ccount * halo_plane; e += nthreads) {
                const int c = e / halo_plane;
                const int hy = (e - c * halo_plane) / halo_w;
                const int hx = e - c * halo_plane - hy * halo_w;
                const int ih = ih0 + hy;
                const int iw = iw0 + hx;
                // Halo cells outside the image are either padding (which reads as 0 by definition) or lie
                // beyond the padded image (only outputs past P/Q, which are never stored, read those).
                // Zero-fill both, and never read x out of range.
                A v = A(0);
                if (ih >= 0 && ih < H && iw >= 0 && iw < W)
                    v = load<T>(xg + (index_t)(c0 + c) * plane + (index_t)ih * W + iw);
                s_in[e] = v;
            }
            // Stage the weights of the block's filters for these channels, flipped here when flip is set
            // (rotating by 180 degrees reverses the flat r*S + s order), so the inner loop is flip-free.
            // Reading in source order (kk slowest) keeps the global reads contiguous.
            for (int e = tid; e < KB * ccount * RS; e += nthreads) {
                const int kk = e / (ccount * RS);
                const int crs = e - kk * ccount * RS;  // c * RS + r * S + s
                const int c = crs / RS;
                const int rs = crs - c * RS;
                A v = A(0);
                // Filters past the group end (partial last block) stage 0: their accumulators are then
                // harmless and are not stored; w is never read past filter K-1 or into the next group.
                if (kk < kcount)
                    v = load<T>(w + ((index_t)(k_begin + kk) * Cg + c0 + c) * RS + (flip ? RS - 1 - rs : rs));
                s_w[crs * KB + kk] = v;
            }
            // Barrier: the whole chunk must be staged (by all threads) before anyone reads it.
            __syncthreads();

            for (int c = 0; c < ccount; ++c) {
                const A* in_c = s_in + c * halo_plane;
                const A* w_c = s_w + c * RS * KB;
                GPUCONV_UNROLL  // fully unrolled in the 1x1/3x3/5x5 specializations, a plain loop otherwise
                for (int r = 0; r < RR; ++r) {
                    GPUCONV_UNROLL
                    for (int s = 0; s < SS; ++s) {
                        A wv[KB];
                        GPUCONV_UNROLL
                        for (int kk = 0; kk < KB; ++kk) wv[kk] = w_c[(r * SS + s) * KB + kk];
                        GPUCONV_UNROLL
                        for (int j = 0; j < ROWS; ++j) {
                            // Output (p0 + ty + j*THREAD_ROWS, q0 + tx) reads input row
                            // (p - p0)*sh + r*dh and column (q - q0)*sw + s*dw of the halo tile: always
                            // inside it, even for pixels past P/Q (the halo covers the whole tile).
                            const A xv = in_c[((ty + j * CONV_TILED_THREAD_ROWS) * sh + r * dh) * halo_w
                                              + tx * sw + s * dw];
                            GPUCONV_UNROLL
                            for (int kk = 0; kk < KB; ++kk) acc[j][kk] += xv * wv[kk];
                        }
                    }
                }
            }
            // Barrier: everyone must be done reading this chunk before the next chunk (or the next block
            // of the grid-stride loop) overwrites s_in / s_w.
            __syncthreads();
        }

        const int q = q0 + tx;
        GPUCONV_UNROLL
        for (int j = 0; j < ROWS; ++j) {
            const int p = p0 + ty + j * CONV_TILED_THREAD_ROWS;
            // Border tiles: pixels past the output edge were computed from zero-filled halo but are not
            // part of y; skip them (and filters past the group end, see kcount).
            if (p >= P || q >= Q) continue;
            // kk runs to the compile-time KB (not kcount) so acc stays in registers (constant indices).
            GPUCONV_UNROLL
            for (int kk = 0; kk < KB; ++kk) {
                if (kk < kcount) {
                    const int k = k_begin + kk;
                    A v = acc[j][kk];
                    if (has_bias) v += load<T>(b + k);
                    store<T>(y + (((index_t)n * K + k) * P + p) * Q + q, activate(v, act));
                }
            }
        }
    }
}

}  // namespace gpuconv
