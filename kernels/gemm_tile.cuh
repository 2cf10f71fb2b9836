// gemm_tile.cuh — the block/thread-tiled GEMM that the GEMM-style conv2d kernels share
// (conv2d_igemm.cu: implicit GEMM for any filter; conv2d_gemm1x1.cu: 1x1 filters, zero padding;
// conv2d_igemm_tc.cu: the implicit GEMM on tensor cores).
//
// The kernels compute, per conv group g, the product
//     C[k, m] = sum_{kr < Kred} A[k, kr] * B[kr, m]          (k < Kg filters, m < M = N*P*Q pixels)
//   A = the group's weights, Kg x Kred with Kred = Cg*R*S: exactly w's C-contiguous layout (row k is
//       filter g*Kg + k, contiguous along kr = (c*R + r)*S + s), so A needs no gather;
//   B = the im2col matrix, Kred x M: B[kr, m] is the input element tap kr of output pixel m reads. It is
//       never materialised: each kernel has its own B loader that gathers it from x on the fly;
//   C[k, m] = y[n, g*Kg + k, p, q] with m = (n*P + p)*Q + q, so along m the output is contiguous within an
//       image (filters are the tile's rows, pixels its columns, which makes the output stores coalesce).
//
// What lives here (device templates, parameterised by the tile config and by operand-loader functors):
//   GemmTileConfig<BM, BN, BK, TM, TN>: a block computes a BM (filters) x BN (pixels) tile of C with
//       (BM/TM) x (BN/TN) threads; each thread keeps a TM x TN tile of accumulators in registers and reads
//       its fragments of both operands with 128-bit shared loads (TM, TN multiples of 4). The host's
//       configs (gpuconv/_cuda/gemm.py): 128x128x16, 64x128x16 and 64x64x16, all 8x8 per thread (256, 128
//       and 64 threads), and float64's 64x64x8 4x4 (256 threads).
//   GemmSmem: the double-buffered shared staging, A transposed (a[buf][kk][row]) so the inner loop reads
//       a thread's TM filters contiguously, B as is (b[buf][kk][col]).
//   GemmWeightLoader: the A loader every GEMM kernel uses (scalar, or 4-wide vector loads when the host says
//       the weights allow them).
//   gemm_slices: walks Kred in slices of BK; loads slice t+1 from global memory into registers while the
//       tile's accumulator computes slice t from shared memory; one __syncthreads() per slice; the last
//       slice is computed after the loop (no next-slice branches in the main loop).
//   RegisterTile: the CUDA-core accumulator (a thread's TM x TN results, FMAs) and its epilogue (bias,
//       activation, bounds-checked store into y). conv2d_igemm_tc.cu plugs a warp-MMA accumulator into
//       the same slice and tile loops.
//   gemm_conv_tiles: the grid-stride loop over tiles that the kernels run with their own B loader.
//
// An operand loader is a struct with
//     void fetch(int k0);     // global -> registers: this thread's share of slice [k0, k0 + BK), 0 where
//                             // the element lies outside the matrix (reduction, rows/columns, padding).
//                             // Called for k0 = 0, BK, 2*BK, ... in order, once each per tile (after
//                             // begin_tile): the loaders here advance their addresses by BK per call
//                             // instead of forming them from k0 (no division or 64-bit product per slice).
//     void stage(A (*dst)[LD]);  // registers -> one shared buffer (LD = Cfg::A_LD for A, Cfg::B_LD for B),
//                                // each value through Cfg::staged()
// and is set up per tile by the kernel (which rows / columns the tile covers).
#pragma once

#include "common.cuh"

namespace gpuconv {

template <int BM_, int BN_, int BK_, int TM_, int TN_>
struct GemmTileConfig {
    static constexpr int BM = BM_;  // filters (rows of C) per block tile
    static constexpr int BN = BN_;  // output pixels (columns of C) per block tile
    static constexpr int BK = BK_;  // reduction indices per shared-memory slice
    static constexpr int TM = TM_;  // filters per thread
    static constexpr int TN = TN_;  // pixels per thread
    static constexpr int THREADS_M = BM / TM;
    static constexpr int THREADS_N = BN / TN;
    static constexpr int THREADS = THREADS_M * THREADS_N;
    // A is staged transposed, a[kk][row]. The weight loader has a warp store 32 consecutive rows of one kk
    // (conflict-free for any row length); the 4 extra words per row are kept because they keep rows 16-byte
    // aligned for the 128-bit fragment reads and give a different bank to the same row of consecutive kk
    // (the loader's second slot). The host mirrors this (GEMM_A_PAD in gpuconv/_cuda/gemm.py).
    static constexpr int A_PAD = 4;
    static constexpr int A_LD = BM + A_PAD;
    static constexpr int B_LD = BN;  // B slices unpadded: a warp's reads b[kk][tx + j*THREADS_N] are consecutive
    // What a loader writes into shared memory for a fetched value: the value itself here (the tensor-core
    // config of conv2d_igemm_tc.cu rounds float32 to TF32 at this point, once per element).
    template <typename A> __device__ __forceinline__ static A staged(A v) { return v; }
    static_assert(BM % TM == 0 && BN % TN == 0, "the thread tile must divide the block tile");
    static_assert(TM % 4 == 0 && TN % 4 == 0, "fragments are read 4 at a time (128-bit shared loads)");
    static_assert(BK % 4 == 0, "4-wide vector loads need BK to be a multiple of 4");
};

// Blocks per SM requested through __launch_bounds__ (which bounds the registers ptxas may use: 65536 /
// (threads x blocks)). Stated explicitly because without a minimum ptxas picked an occupancy target of its
// own on sm_90 (80 registers for a 4x4 tile of 256 threads) and spilled. A thread tile of 32 or more
// accumulators gets the whole 255 registers (the 8x8 tile: 64 accumulators, its 16 + 16 fragments and the
// loaders' next slice need more than 128; ptxas spilled at 128, and the 4x8 tile spilled at 128 on sm_100
// / sm_120 with NVRTC 12.9): 1 block of 256 threads, 2 of 128, 4 of 64 per SM -- 8 warps either way,
// latency hidden by the 8x8 tile's independent FMAs. The 4x4 tile (float64) fits 128 registers: 2 blocks
// of 256 threads.
__host__ __device__ constexpr int gemm_blocks_per_sm(int threads, int tm, int tn) {
    return 65536 / (threads * (tm * tn >= 32 ? 256 : 128));
}
// The same for a 256-thread block (conv2d_igemm_tc.cu's tiles, by accumulators per thread).
__host__ __device__ constexpr int gemm_min_blocks_per_sm(int tm, int tn) { return gemm_blocks_per_sm(256, tm, tn); }

// Shared staging for one block: two buffers of each operand (double buffering), in the accumulation
// type (float for float16), so the inner loop does no conversions. Size (bytes):
//     2 * BK * (A_LD + B_LD) * sizeof(acc_type<T>)
// A config (Cfg) provides BM, BN, BK, THREADS, A_LD, B_LD and staged(): GemmTileConfig here, the tensor-core config in
// conv2d_igemm_tc.cu (which pads both rows for its fragment reads).
template <typename A, class Cfg>
struct __align__(16) GemmSmem {
    A a[2][Cfg::BK][Cfg::A_LD];  // A^T slices: a[buf][kk][row] = A[k_begin + row, k0 + kk]
    A b[2][Cfg::BK][Cfg::B_LD];  // B slices:   b[buf][kk][col] = B[k0 + kk, m0 + col]
};

// ---------------------------------------------------------------------------------------------------
// 4-wide vector loads of 4 consecutive elements (16-byte float4 / 2 x double2, 8-byte for float16). The
// caller guarantees the address is aligned to ALIGN bytes; the host decides that (pointer and row-length
// checks, see the *_vectorizable rules in gpuconv/_cuda/conv_igemm.py and conv_gemm1x1.py).
// ---------------------------------------------------------------------------------------------------
template <typename T> struct Vec4;
template <> struct Vec4<float> {
    static constexpr int ALIGN = 16;
    __device__ __forceinline__ static void load(const float* p, float& a, float& b, float& c, float& d) {
        const float4 v = *reinterpret_cast<const float4*>(p);
        a = v.x; b = v.y; c = v.z; d = v.w;
    }
};
template <> struct Vec4<double> {
    static constexpr int ALIGN = 16;
    __device__ __forceinline__ static void load(const double* p, double& a, double& b, double& c, double& d) {
        const double2 u = *reinterpret_cast<const double2*>(p);
        const double2 v = *reinterpret_cast<const double2*>(p + 2);
        a = u.x; b = u.y; c = v.x; d = v.y;
    }
};
struct __align__(8) half4_storage { half h[4]; };
template <> struct Vec4<half> {
    static constexpr int ALIGN = 8;
    __device__ __forceinline__ static void load(const half* p, float& a, float& b, float& c, float& d) {
        const half4_storage v = *reinterpret_cast<const half4_storage*>(p);
        a = half_to_float(v.h[0]); b = half_to_float(v.h[1]);
        c = half_to_float(v.h[2]); d = half_to_float(v.h[3]);
    }
};

// ---------------------------------------------------------------------------------------------------
// The A operand: a BM x BK slice of the group's weights (rows = filters, contiguous along the reduction).
//
// Slot e = tid + i * THREADS holds the 4 consecutive reduction indices kk = 4 * (e / BM) .. + 3 of row
// e % BM (THREADS % BM == 0: a thread's row is the same in every slot, its slots are KK_STEP apart along
// the reduction). Rows fastest: a warp stages 32 consecutive rows of one kk row of the transposed staging
// (consecutive words, no bank conflict whatever the row padding). With 4-wide loads (vec) a slot is one
// Vec4 load, otherwise 4 scalar loads of the same addresses, so both paths share every address and all of
// the staging code. The pointer advances by BK per fetch: fetch() must be called for k0 = 0, BK, 2*BK, ...
// in order, once each, after begin_tile() (gemm_slices does exactly that).
// ---------------------------------------------------------------------------------------------------
template <typename T, class Cfg>
struct GemmWeightLoader {
    typedef typename acc_type<T>::type A;
    static constexpr int BM = Cfg::BM, BK = Cfg::BK, THREADS = Cfg::THREADS;
    static constexpr int KK_STEP = 4 * (THREADS / BM);  // reduction indices between a thread's slots
    static constexpr int LOADS = (BK + KK_STEP - 1) / KK_STEP;  // slots per thread (the last may not exist)
    static_assert(THREADS % BM == 0 && BK % 4 == 0, "weight slots: a fixed row per thread, 4 indices per slot");

    const T* wp;  // per tile: this thread's row, at reduction index k0 + kk0 of the next fetch
    int kred;     // row length (Cg*R*S)
    int vec;      // 1: kred % 4 == 0 and w is ALIGN-byte aligned (the host checked), use Vec4 loads
    int row;      // this thread's row (filter) of the tile
    int kk0;      // reduction index of its first slot within a slice
    bool row_ok;  // per tile: the row is one of the tile's filters
    A regs[4 * LOADS];  // the fetched slice, held until stage()

    __device__ __forceinline__ GemmWeightLoader(int kred_, int vec_, int tid)
        : wp(nullptr), kred(kred_), vec(vec_), row(tid % BM), kk0(4 * (tid / BM)), row_ok(false) {}

    // w_tile: first weight of the tile's first filter (w + (g*Kg + k_begin) * kred); rows: filters the tile
    // really has (BM, or fewer in a group's last tile).
    // k_start: the reduction index of the first fetch (a multiple of BK; 0 unless split-K, see gemm_conv_tiles).
    __device__ __forceinline__ void begin_tile(const T* w_tile, int rows, int k_start = 0) {
        row_ok = row < rows;
        // Rows past the group's last filter read 0 and are never stored; w is never read there (it may be the
        // next group, or past the end), so the pointer is only formed for rows that exist.
        wp = row_ok ? w_tile + (index_t)row * kred + k_start + kk0 : w_tile;
    }

    __device__ __forceinline__ void fetch(int k0) {
        // Elements past the row's end (the reduction tail) read 0. Written `x < kred - k0 - kk0` (never
        // `k0 + x < kred`): k0 + BK may exceed INT_MAX when kred is close to it, kred - k0 cannot overflow.
        const int left = row_ok ? kred - k0 - kk0 : 0;
        GPUCONV_UNROLL
        for (int i = 0; i < LOADS; ++i) {
            A v[4] = {A(0), A(0), A(0), A(0)};
            if (vec) {
                // kred % 4 == 0 and the slot starts at a multiple of 4: its 4 elements are all inside the row
                // or all past its end.
                if (i * KK_STEP < left) Vec4<T>::load(wp + i * KK_STEP, v[0], v[1], v[2], v[3]);
            } else {
                GPUCONV_UNROLL
                for (int e = 0; e < 4; ++e)
                    if (i * KK_STEP + e < left) v[e] = load<T>(wp + i * KK_STEP + e);
            }
            GPUCONV_UNROLL
            for (int e = 0; e < 4; ++e) regs[4 * i + e] = v[e];
        }
        if (row_ok) wp += BK;  // the next slice (only for rows that exist: see begin_tile)
    }

    // Transposed store: dst[kk][row]. Every (row, kk) of the slice is written by exactly one thread, zeros
    // included, so nothing of the previous slice (or the NaN poison of the emulator) survives.
    __device__ __forceinline__ void stage(A (*dst)[Cfg::A_LD]) {
        GPUCONV_UNROLL
        for (int i = 0; i < LOADS; ++i) {
            if (BK % KK_STEP == 0 || kk0 + i * KK_STEP < BK) {  // the slot exists
                GPUCONV_UNROLL
                for (int e = 0; e < 4; ++e) dst[kk0 + i * KK_STEP + e][row] = Cfg::staged(regs[4 * i + e]);
            }
        }
    }
};

// ---------------------------------------------------------------------------------------------------
// The slice loop: walks slices s0 .. s1-1 of the reduction (BK indices each; the loaders were begun at
// reduction index s0 * BK: s0 > 0 only for split-K), double-buffered, and hands each staged slice to the
// tile's accumulator (`acc.slice(as, bs)`: RegisterTile below, or the warp-MMA tile of conv2d_igemm_tc.cu).
// Must be called by every thread of the block (it contains __syncthreads()).
// ---------------------------------------------------------------------------------------------------
template <class Cfg, typename A, class LoadA, class LoadB, class Acc>
__device__ __forceinline__ void gemm_slice_range(LoadA& la, LoadB& lb, int s0, int s1, GemmSmem<A, Cfg>& sm, Acc& acc) {
    const int n = s1 - s0;   // slices of this range
    int k0 = s0 * Cfg::BK;   // reduction index of the next fetch (s0 * BK <= kred: no overflow)

    // Prologue: slice s0 into buffer 0.
    la.fetch(k0);
    lb.fetch(k0);
    la.stage(sm.a[0]);
    lb.stage(sm.b[0]);
    // Barrier: buffer 0 must be complete (written by all threads) before anyone computes from it. It also
    // separates these writes from the previous tile of the grid-stride loop, whose last reads of buffer 0
    // all happened before that tile's final barrier below.
    __syncthreads();

    // Every slice but the last: fetch the next one, compute this one, stage the next one. The last slice
    // is computed after the loop, so the loop body has no "is there a next slice" branches.
    for (int t = 0; t + 1 < n; ++t) {
        const int cur = t & 1;
        // Issue the global loads of the next slice now; they complete while this slice is computed.
        k0 += Cfg::BK;
        la.fetch(k0);
        lb.fetch(k0);
        acc.slice(sm.a[cur], sm.b[cur]);
        // Write the next slice into the other buffer. Safe without a barrier before it: that buffer was
        // last read while computing slice t-1, and every thread finished that before the barrier that
        // ended iteration t-1 (or, for t = 0, it has not been used in this tile).
        la.stage(sm.a[cur ^ 1]);
        lb.stage(sm.b[cur ^ 1]);
        // The one barrier per slice: (1) the next buffer is complete before anyone computes from it, and
        // (2) everyone is done reading buffer `cur` before iteration t+1 overwrites it with slice t+2.
        __syncthreads();
    }
    // The last slice (none when the range is empty, kred == 0: then there is nothing to sum). The
    // barrier after it: everyone is done reading its buffer before the next tile's prologue overwrites
    // buffer 0 (or, when it is buffer 1, before slice 1 of the next tile does). `n` is the same for
    // every thread, so every thread reaches the same barriers.
    if (n > 0) acc.slice(sm.a[(n - 1) & 1], sm.b[(n - 1) & 1]);
    __syncthreads();
}

// The whole reduction: slices 0 .. ceil(kred / BK) - 1.
template <class Cfg, typename A, class LoadA, class LoadB, class Acc>
__device__ __forceinline__ void gemm_slices(LoadA& la, LoadB& lb, int kred, GemmSmem<A, Cfg>& sm, Acc& acc) {
    // Slice count without forming kred + BK - 1 (which can overflow an int near INT_MAX).
    gemm_slice_range<Cfg>(la, lb, 0, kred / Cfg::BK + (kred % Cfg::BK != 0), sm, acc);
}

// The epilogue's output mapping (RegisterTile::epilogue's and gemm_conv_tiles' Out parameter): element offset
// of pixel (n, pq) of filter k_first in y, and the step between filters; the epilogue copies it per group of 4
// consecutive pixels, calls begin(pq) for the first and step(pq) after each with the next pixel's pq (0: the
// next image; a mapping that decomposes pq further steps its digits there instead of dividing per pixel). This one is the forward's y (N, K, P, Q),
// C-contiguous; CONTIGUOUS tells gemm_conv_tiles to call the accumulator's epilogue exactly as before the
// parameter existed (the tensor-core accumulator's epilogue has none).
struct GemmContiguousOutput {
    static constexpr bool CONTIGUOUS = true;
    __device__ __forceinline__ void begin(index_t) {}
    __device__ __forceinline__ void step(index_t) {}
    __device__ __forceinline__ index_t offset(index_t n, index_t pq, int K, int k_first, index_t PQ) const {
        return (n * K + k_first) * PQ + pq;
    }
    __device__ __forceinline__ index_t row_stride(index_t PQ) const { return PQ; }
};

// ---------------------------------------------------------------------------------------------------
// The CUDA-core accumulator: this thread's TM x TN tile of C in registers, FMAs from shared memory.
// Thread tid computes filters ty*TM + i (i < TM) and pixels col_of(j) (j < TN) of the block tile,
// ty = tid / THREADS_N, tx = tid % THREADS_N: TN / 4 groups of 4 consecutive pixels, groups 4*THREADS_N
// apart, so that both operands' fragments are read with 128-bit shared loads (with pixels interleaved one
// by one, as before issue 16, B took TN 32-bit loads per kk) and a warp's loads stay conflict-free.
// ---------------------------------------------------------------------------------------------------
template <typename T, class Cfg>
struct RegisterTile {
    typedef typename acc_type<T>::type A;
    A acc[Cfg::TM][Cfg::TN];
    int ty, tx;

    __device__ __forceinline__ explicit RegisterTile(int tid) : ty(tid / Cfg::THREADS_N), tx(tid % Cfg::THREADS_N) {
        GPUCONV_UNROLL
        for (int i = 0; i < Cfg::TM; ++i) {
            GPUCONV_UNROLL
            for (int j = 0; j < Cfg::TN; ++j) acc[i][j] = A(0);
        }
    }

    // Column (pixel) of the block tile that result column j of this thread is: TN / 4 groups of 4
    // consecutive pixels, group h starting at h * 4 * THREADS_N + 4 * tx.
    __device__ __forceinline__ int col_of(int j) const { return (j / 4) * (4 * Cfg::THREADS_N) + 4 * tx + (j % 4); }

    // Per kk, a thread reads its TM filters (TM / 4 x 128-bit: as[kk][ty*TM .. +TM-1] is contiguous and
    // 16-byte aligned, A_LD % 4 == 0) and its TN pixels (TN / 4 x 128-bit, 4 consecutive per group) from
    // shared memory, then does TM x TN FMAs. A warp's THREADS_N distinct tx (16 in the 128-pixel tiles, 8
    // in the 64-pixel one) read 4 * THREADS_N consecutive words of a B row per 128-bit load (no bank
    // conflict); its 32 / THREADS_N distinct ty read that many TM-word runs of the A row, 8 banks apart
    // with TM = 8 (no conflict), each a broadcast to its tx.
    __device__ __forceinline__ void slice(const A (*as)[Cfg::A_LD], const A (*bs)[Cfg::B_LD]) {
        GPUCONV_UNROLL
        for (int kk = 0; kk < Cfg::BK; ++kk) {
            A af[Cfg::TM], bf[Cfg::TN];
            GPUCONV_UNROLL
            for (int i = 0; i < Cfg::TM; ++i) af[i] = as[kk][ty * Cfg::TM + i];
            GPUCONV_UNROLL
            for (int j = 0; j < Cfg::TN; ++j) bf[j] = bs[kk][col_of(j)];
            GPUCONV_UNROLL
            for (int i = 0; i < Cfg::TM; ++i) {
                GPUCONV_UNROLL
                for (int j = 0; j < Cfg::TN; ++j) acc[i][j] += af[i] * bf[j];
            }
        }
    }

    // Epilogue: y[n, k_first + row, p, q] = act(acc + bias) for this thread's filters / pixels that exist.
    // k_first = g*Kg + k_begin (first filter of the tile, global index); rows = filters the tile has;
    // m0 = first pixel (column) of the tile; M = N*P*Q; PQ = P*Q. Out: where pixel (n, pq) of filter row
    // k_first + row is stored (GemmContiguousOutput: y (N, K, P, Q) C-contiguous; conv2d_backward_data.cu
    // maps a stride phase's pixels into gx).
    template <class Out = GemmContiguousOutput>
    __device__ __forceinline__ void epilogue(const T* __restrict__ b, T* __restrict__ y, int has_bias, int act, int K,
                                          int k_first, int rows, index_t m0, index_t M, index_t PQ,
                                          const Out& out = Out()) const {
        A bias[Cfg::TM];
        GPUCONV_UNROLL
        for (int i = 0; i < Cfg::TM; ++i) {
            // Rows past the group's last filter (partial last tile) are not stored: never read b for them.
            // b is only read when has_bias (without a bias the host passes w, which must not be read as one).
            const int row = ty * Cfg::TM + i;
            bias[i] = (has_bias && row < rows) ? load<T>(b + k_first + row) : A(0);
        }
        GPUCONV_UNROLL
        for (int h = 0; h < Cfg::TN / 4; ++h) {
            const int col0 = col_of(4 * h);
            // Columns past the last pixel (partial last tile) were computed from zero-filled B and are not
            // stored; columns only grow with h and e, so the rest are past it too.
            if ((index_t)col0 >= M - m0) break;
            // Pixel m0 + col0 as (image n, pixel pq within the image); the group's next 3 pixels step
            // (n, pq) instead of dividing again.
            index_t n = (m0 + col0) / PQ;
            index_t pq = m0 + col0 - n * PQ;
            Out o = out;
            o.begin(pq);  // (a mapping's own decomposition of pq, once per 4 pixels as n's)
            GPUCONV_UNROLL
            for (int e = 0; e < 4; ++e) {
                if ((index_t)(col0 + e) >= M - m0) break;
                T* yc = y + o.offset(n, pq, K, k_first, PQ);  // 64-bit: y may exceed 2^31 elements
                GPUCONV_UNROLL
                for (int i = 0; i < Cfg::TM; ++i) {
                    const int row = ty * Cfg::TM + i;
                    if (row < rows) {
                        A v = acc[i][4 * h + e];
                        if (has_bias) v += bias[i];  // (only when there is one: keeps -0.0 as the sum made it)
                        store<T>(yc + (index_t)row * o.row_stride(PQ), activate(v, act));
                    }
                }
                if (++pq == PQ) {
                    pq = 0;
                    ++n;
                }
                o.step(pq);
            }
        }
    }

    // Split-K epilogue: the raw partial sums (no bias, no activation: gemm_splitk_reduce adds them after
    // summing the splits) into this split's plane ws[K][M] of the workspace, ws[k_first + row][m0 + col].
    // Every (filter, pixel) of the tile that exists is written by exactly one thread of one block.
    __device__ __forceinline__ void store_partial(A* __restrict__ ws, int k_first, int rows, index_t m0,
                                                  index_t M) const {
        GPUCONV_UNROLL
        for (int j = 0; j < Cfg::TN; ++j) {
            const int col = col_of(j);
            if ((index_t)col >= M - m0) continue;  // past the last pixel (partial last tile)
            A* wc = ws + (index_t)k_first * M + m0 + col;
            GPUCONV_UNROLL
            for (int i = 0; i < Cfg::TM; ++i) {
                const int row = ty * Cfg::TM + i;
                if (row < rows) wc[(index_t)row * M] = acc[i][j];
            }
        }
    }
};

// Blocks of a GEMM-style conv kernel, in order (group, pixel tile, filter tile), filter tile fastest:
// consecutive blocks share their pixel tile, so the input it gathers is reused from L2.
struct GemmBlockIndex {
    int g;          // conv group
    int k_begin;    // first filter of the tile within the group
    index_t m0;     // first pixel of the tile
};
__device__ __forceinline__ GemmBlockIndex gemm_block_index(index_t blk, int k_tiles, index_t m_tiles, int BM,
                                                           int BN) {
    GemmBlockIndex r;
    const index_t rest = blk / k_tiles;
    r.k_begin = (int)(blk - rest * k_tiles) * BM;
    r.m0 = (rest % m_tiles) * BN;
    r.g = (int)(rest / m_tiles);
    return r;
}

// The block loop every GEMM-style conv kernel runs, with its own input loader `xl` (LoadB) and accumulator
// (Acc: RegisterTile<T, Cfg> for the CUDA-core kernels): a 64-bit grid-stride walk over the (group, pixel
// tile, filter tile) tiles; per tile the weight loader and `xl` are pointed at it, the slice loop
// accumulates, the accumulator's epilogue stores. The trip count depends only on blockIdx / gridDim, so
// every thread of a block reaches the same __syncthreads() (in gemm_slices).
//
// Split-K (SPLIT, conv2d_igemm_splitk only): the walk covers splits x tiles blocks, split
// slowest; block (split, tile) sums slices [split * split_slices, min(+ split_slices, slices)) of the
// reduction (the loaders begin at that slice's reduction index, so they still advance by BK per fetch
// and the main loop is unchanged) and stores its raw partial sums into plane `split` of ws, [splits][K][M]
// in the accumulation type; gemm_splitk_reduce (conv2d_igemm.cu) then sums the planes in fixed order.
// Out: the epilogue's output mapping (GemmContiguousOutput: y as the forward's; conv2d_backward_data.cu's
// stride-phase mapping into gx), unsplit only.
template <typename T, class Cfg, class Acc, class LoadB, bool SPLIT = false, class Out = GemmContiguousOutput>
__device__ __forceinline__ void gemm_conv_tiles(const T* __restrict__ w, const T* __restrict__ b,
                                                T* __restrict__ y, LoadB& xl,
                                                GemmSmem<typename acc_type<T>::type, Cfg>& smem, int kred, int K,
                                                int groups, index_t M, index_t PQ, int vec_w, int has_bias,
                                                int act, int tid, int splits = 1, int split_slices = 0,
                                                typename acc_type<T>::type* __restrict__ ws = nullptr,
                                                const Out& out = Out()) {
    static_assert(Out::CONTIGUOUS || !SPLIT, "split-K stores its partial sums contiguously");
    const int Kg = K / groups;
    const index_t m_tiles = (M + Cfg::BN - 1) / Cfg::BN;
    const int k_tiles = (Kg + Cfg::BM - 1) / Cfg::BM;
    const index_t tiles = m_tiles * k_tiles * groups;
    const index_t total = tiles * (SPLIT ? splits : 1);
    const int slices = kred / Cfg::BK + (kred % Cfg::BK != 0);
    GemmWeightLoader<T, Cfg> wl(kred, vec_w, tid);
    for (index_t blk = blockIdx.x; blk < total; blk += gridDim.x) {
        int split = 0;
        index_t tile = blk;
        if constexpr (SPLIT) {
            split = (int)(blk / tiles);
            tile = blk - (index_t)split * tiles;
        }
        const GemmBlockIndex bi = gemm_block_index(tile, k_tiles, m_tiles, Cfg::BM, Cfg::BN);
        // Filters this tile really has: BM, except in a group's last tile when Kg % BM != 0.
        const int rows = Kg - bi.k_begin < Cfg::BM ? Kg - bi.k_begin : Cfg::BM;
        const int k_first = bi.g * Kg + bi.k_begin;
        Acc acc(tid);
        if constexpr (SPLIT) {
            const int s0 = split * split_slices;
            const int s1 = slices - s0 < split_slices ? slices : s0 + split_slices;
            wl.begin_tile(w + (index_t)k_first * kred, rows, s0 * Cfg::BK);
            xl.begin_tile(bi.m0, bi.g, s0 * Cfg::BK);
            gemm_slice_range<Cfg>(wl, xl, s0, s1, smem, acc);
            acc.store_partial(ws + (index_t)split * K * M, k_first, rows, bi.m0, M);
        } else {
            wl.begin_tile(w + (index_t)k_first * kred, rows);
            xl.begin_tile(bi.m0, bi.g);
            gemm_slice_range<Cfg>(wl, xl, 0, slices, smem, acc);
            if constexpr (Out::CONTIGUOUS) acc.epilogue(b, y, has_bias, act, K, k_first, rows, bi.m0, M, PQ);
            else acc.epilogue(b, y, has_bias, act, K, k_first, rows, bi.m0, M, PQ, out);
        }
    }
}

}  // namespace gpuconv
