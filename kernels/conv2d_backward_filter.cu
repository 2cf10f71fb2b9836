// conv2d_backward_filter.cu — the filter (and bias) gradient of conv1d, conv2d and conv3d: deterministic, no atomics
// (issues 17, 18).
//
// Kernels in this file:
//   conv2d_backward_filter_igemm<T, BM, BN, BK, TM, TN, ACT>: per conv group g the implicit GEMM
//           gw[Kg, Cg*R*S] = gy'[Kg, N*P*Q] @ im2col(x)[N*P*Q, Cg*R*S]
//       whose REDUCTION runs over the N*P*Q output pixels (the forward's reduction Cg*R*S is this GEMM's
//       column dimension). gy' = gy times the derivative of activation ACT (an Activation code, a template
//       argument so that the main loop has no switch; cp.act is not read) computed from `out`, fused into
//       the gy loader; gy itself for ACT_NONE. The reduction is cut into `splits` fixed ranges of
//       split_slices slices of BK pixels; block (split, tile) sums its range and stores the raw partial sums
//       into plane `split` of the workspace ws[splits][K][Cg*R*S] (float32; float64 for double).
//       gemm_splitk_reduce<T> of conv2d_igemm.cu (loaded from THAT module by the host, N = 1, PQ = Cg*R*S)
//       then sums the planes in fixed order 0..splits-1 and writes gw, so the result is bitwise the same
//       for every block / thread order and run. The tiling (RegisterTile, GemmSmem, gemm_slice_range,
//       store_partial, gemm_block_index) is gemm_tile.cuh's; the operand loaders are this file's
//       (GyRowLoader: A; Im2colColumnLoader: B), the index math of padding / stride / dilation / flip is
//       Im2colGeometry's (im2col_loader.cuh: pixel_origin and tap_dh / tap_dw).
//   conv3d_backward_filter_igemm<T, BM, BN, BK, TM, TN, ACT>: the same body (backward_filter_igemm) with the
//       3-D gather geometry Im2colGeometry3d (im2col_loader.cuh) as its template parameter, one kernel family:
//           gw[Kg, Cg*KD*R*S] = gy'[Kg, N*OD*P*Q] @ im2col3d(x)[N*OD*P*Q, Cg*KD*R*S]
//       The depth lives only in the geometry, in the pixel cursor's od digit (PixelCursorN<3>: one carry
//       more) and in each column's depth offset (ColumnDepthState<3>: one more compare per gathered
//       element), all under `if constexpr (ND == 3)`: the 2-D kernels compile to the same machine code as
//       before the 3-D one existed (nvdisasm of every 2-D instantiation identical on sm_90 and sm_80, NVRTC
//       12.9 and 13.5). Same tile, splits, workspace and reduce as 2-D; x (N, C, D, H, W), gy / out (N, K,
//       OD, P, Q), ws [splits][K][Cg*KD*R*S], Conv3dParams cp (conv_params.cuh).
//   conv3d_backward_filter_depthwise<T>: the depthwise body below (backward_filter_depthwise) with the 3-D
//       geometry: taps (t, r, s), KD*R*S of them in chunks of DW_TAPS; pixels (n, od, p, q); one more compare
//       per tap (the depth); the tap's offset formed in int (did*H*W + h*W + w, bounded by the host's
//       rule). Same block shape, tree and workspace ws[splits][K][KD*R*S].
//   conv1d_backward_filter_igemm<T, BM, BN, BK, TM, TN, ACT>: the same body with the 1-D gather geometry
//       Im2colGeometry1d: gw[Kg, Cg*S] = gy'[Kg, N*Q] @ im2col1d(x)[N*Q, Cg*S]. No row anywhere (under
//       `if constexpr (ND == 1)`): the pixel cursor is (n, q) with one carry (PixelCursorN<1>), a column's
//       tap offset is c*W + s*dw, one compare per gathered element (the column's; a column past Cg*S gets
//       a column sentinel). x (N, C, L), gy / out (N, K, Q), ws [splits][K][Cg*S], the ConvParams of the
//       unit-height call (H = R = P = 1; the row's members unread). The 2-D and 3-D kernels' machine code
//       is unchanged by it (nvdisasm of every instantiation, sm_90 / sm_80, NVRTC 12.9 and 13.5).
//   conv1d_backward_filter_depthwise<T>: the depthwise body below with Im2colGeometry1d: taps s, pixels
//       (n, q), one column compare per tap. ws [splits][K][S].
//   conv2d_backward_filter_depthwise<T>: depthwise layers (Cg == 1, groups > 1), where the GEMM's tile
//       would be almost all padding rows (Kg = 1 or 2 filters of 64) and columns (R*S of 64). One block per
//       (filter k, split): its 256 threads walk the split's pixels (thread t: pixels t, t + 256, ...),
//       each accumulating DW_TAPS taps at a time in registers, then a fixed-shape tree reduction in shared
//       memory gives the taps' sums, stored into ws[split][k][tap]; the same gemm_splitk_reduce follows.
//   conv2d_backward_bias<T>: gb[k] = sum_{n, p, q} gy'[n, k, p, q] (the activation's derivative fused as
//       above), one block per filter, a fixed-order tree reduction; written as T (float16 rounded once).
//       conv3d's bias gradient runs it with PQ = OD*P*Q (gy seen as (N, K, 1, OD*P*Q)).
//
// Parameters (igemm, depthwise): x (N, C, H, W), gy (N, K, P, Q), out (N, K, P, Q: the activated forward
//   output, read only with an activation -- igemm's ACT, depthwise's cp.act -- else any valid pointer), ws,
//   then ConvParams cp by value (conv_params.cuh; cp.flip: true convolution; has_bias unread), then splits
//   (>= 1) and split_slices (igemm: slices of BK pixels per range) / split_len (depthwise: pixels per
//   range). Bias: gy, out, gb (K,), N, K, P*Q, act.
//   All arrays C-contiguous. N*P*Q (3-D: N*OD*P*Q) must leave room for one more slice below 2^31 (the
//   host's rule: the slice loop's reduction index is an int), and Cg*H*W (Cg*D*H*W) plus the filter's reach
//   below 2^31 (the igemm B loader's per-column tap offsets are ints).
// Launch shapes: igemm: 1-D blocks of (BM/TM)*(BN/TN) = 256 threads, 1-D grid over splits x groups x
//   ceil(Cg*R*S / BN) x ceil(Kg / BM) tiles (64-bit grid-stride loop, so the host may cap it); depthwise
//   and bias: 1-D blocks of BWF_THREADS = 256, grid over K*splits (K) items, grid-stride.
// Tile the host instantiates: gpuconv/_cuda/gemm.py's SMALL_TILE_4X4 (64 x 64 x 16, 4 x 4 per thread on 256
//   threads; the 8 x 8 small tile spilled 4 bytes with a fused activation on sm_120, NVRTC 13) and float64's
//   SMALL_TILE_F64 (64 x 64 x 8, 4 x 4): this GEMM's rows are Kg filters and its
//   columns Cg*R*S, both rarely large enough for a bigger tile to fill the GPU; the parallelism comes
//   from the splits.
// Shared memory: static, 16,896 bytes (igemm, every dtype); BWF_THREADS * DW_TAPS accumulators
//   (9 KiB float, 18 KiB double) for depthwise, BWF_THREADS for bias.
// Registers (NVRTC 12.9 and 13, sm_75..sm_120, no spills; tests/test_nvrtc_compile.py prints them): igemm
//   float / float16 without an activation 122-128 (two blocks per SM, gemm_blocks_per_sm: the 128-register
//   bound is tight; the loaders share one pixel cursor and keep int tap offsets to stay under it); with one,
//   and float64, one block per SM (bwf_min_blocks_per_sm); depthwise 96-124 (3-D: 118-125); bias 52-96.
//   3-D igemm: float32
//   without an activation 128 (two blocks per SM); float16 (also without one: it spilled 4 bytes at 128 on
//   sm_120, NVRTC 13.5), every fused activation and float64 one block per SM (bwf3d_min_blocks_per_sm):
//   140-193 registers.
// Main loop (SASS, tests/sass_check.py, floors in tests/sass_floors.json): igemm float32 on sm_90 with
//   NVRTC 12.9, FMA share of one slice: about 56% without an activation, 51-54% with one (the forward's
//   8x8 small tile: 73.7%); float64 43-47%; depthwise about 4% (one FMA per loaded input element: bound by its loads).
//   3-D igemm (python -m tests.sass_check --source conv2d_backward_filter.cu), sm_90, NVRTC 12.9: float32
//   54.7% without an activation (256 FMA / 468 instructions; 2-D 453), 51.2-52.4% with one; float16 54.2%,
//   49.6-51.2%; float64 44.3%, 40.4-42.6%: the od digit's carry, the depth offset and one more compare per
//   gathered element (NVRTC 13.5: 0.5-1 point higher).
//   3-D depthwise: 240 instructions per pixel iteration for float32 (2-D 236), 10 FMA.
//   1-D igemm (sm_90, NVRTC 12.9): float32 61.0% without an activation (256 FMA / 420 instructions; the 2-D
//   kernel on a height-1 view, which ran before: 453), 56.9-58.4% with one; float16 60.0%, 55.4-56.8%;
//   float64 50.6%, 45.6-48.3%. 1-D depthwise: 162 instructions per pixel iteration for float32, 10 FMA.
//   Registers (sm_80 / sm_90, NVRTC 12.9): 1-D igemm float32 / float16 119-127, float64 148-162; 1-D
//   depthwise 77-90.
// Measured speed: not yet (no GPU measurement; docs/gradients.md).
#include "common.cuh"
#include "conv_params.cuh"
#include "gemm_tile.cuh"
#include "im2col_loader.cuh"

namespace gpuconv {

#define BWF_THREADS 256
#define DW_TAPS 9  // a 3x3 filter (the common depthwise one) in one pass over the pixels

// The output-pixel digits beyond (n, p, q): none in 2-D (so that the 2-D cursor holds exactly its three
// ints), the output depth od in 3-D.
template <int ND>
struct PixelDepthDigit {};
template <>
struct PixelDepthDigit<3> {
    int od;
};

// A position m = (n*P + p)*Q + q (3-D: ((n*OD + od)*P + p)*Q + q; 1-D: n*Q + q, p held at 0 and never
// read) of the reduction over output pixels, advanced by a constant step with carries (no division after
// init): the loaders call step() once per slice, after their fetch. OD is read only in 3-D, P not in 1-D.
template <int ND>
struct PixelCursorN : PixelDepthDigit<ND> {
    int n, p, q;  // int: n <= N (one past the last image for the reduction tail), N < 2^31
    __device__ __forceinline__ void init(index_t m, int P, int Q, int OD = 1) {
        const index_t PQ = (index_t)P * Q;
        if constexpr (ND == 2) {
            n = (int)(m / PQ);
            const int pq = (int)(m - n * PQ);
            p = pq / Q;
            q = pq - p * Q;
        } else if constexpr (ND == 1) {
            // 1-D: the pixel is (n, q); p stays 0 (never read: the 1-D loaders have no row)
            n = (int)(m / Q);
            q = (int)(m - (index_t)n * Q);
            p = 0;
        } else {
            const index_t OPQ = OD * PQ;
            n = (int)(m / OPQ);
            const index_t opq = m - n * OPQ;  // < OD*P*Q < 2^31 (the host's N*OD*P*Q rule)
            this->od = (int)(opq / PQ);
            const int pq = (int)(opq - this->od * PQ);
            p = pq / Q;
            q = pq - p * Q;
        }
    }
    // step = ([sod,] sn, sp, sq) with sp < P, sq < Q (sod < OD): each carry happens at most once
    // (q + sq <= 2Q - 2, then p + sp + 1 <= 2P - 1, then od + sod + 1 <= 2OD - 1).
    template <class Step>
    __device__ __forceinline__ void step(const Step& st, int P, int Q, int OD = 1) {
        if constexpr (ND == 1) {
            // 1-D: one carry, q into n (sq < Q: it happens at most once)
            q += st.sq;
            n += st.sn;
            if (q >= Q) {
                q -= Q;
                ++n;
            }
            return;
        }
        q += st.sq;
        p += st.sp;
        n += st.sn;
        if constexpr (ND == 3) this->od += st.od;
        if (q >= Q) {
            q -= Q;
            ++p;
        }
        if (p >= P) {
            p -= P;
            if constexpr (ND == 2) ++n;
            else if constexpr (ND == 3) ++this->od;
        }
        if constexpr (ND == 3) {
            if (this->od >= OD) {
                this->od -= OD;
                ++n;
            }
        }
    }
};
typedef PixelCursorN<2> PixelCursor;

// A step of `count` pixels as (sn, [od,] sp, sq) in the cursor's radices.
template <int ND>
struct PixelStepN : PixelDepthDigit<ND> {
    int sn, sp, sq;
    __device__ __forceinline__ PixelStepN(int count, int P, int Q, int OD = 1) {
        const index_t PQ = (index_t)P * Q;
        if constexpr (ND == 2) {
            sn = (int)(count / PQ);
            const int rest = (int)(count - sn * PQ);
            sp = rest / Q;
            sq = rest - sp * Q;
        } else if constexpr (ND == 1) {
            sn = count / Q;
            sp = 0;
            sq = count - sn * Q;
        } else {
            const index_t OPQ = OD * PQ;
            sn = (int)(count / OPQ);
            const int rest = (int)(count - sn * OPQ);
            this->od = (int)(rest / PQ);
            const int pq = (int)(rest - this->od * PQ);
            sp = pq / Q;
            sq = pq - sp * Q;
        }
    }
};
typedef PixelStepN<2> PixelStep;

// ---------------------------------------------------------------------------------------------------
// The A operand: A[k, m] = gy'[n, g*Kg + k, p, q], m = (n*P + p)*Q + q (3-D: gy'[n, g*Kg + k, od, p, q],
// m = ((n*OD + od)*P + p)*Q + q), staged transposed (a[kk][row]).
// Thread t holds reduction index kk = t / RW of every slice (RW = THREADS / BK threads per slice row, the
// B loader's kk, so both read the pixel of ONE PixelCursor, owned by the B loader) and rows t % RW + j * RW:
// a warp stages 2 kk rows of 16 consecutive filters (stores at most 2-way bank-conflicted: rows are
// A_LD = BM + 4 words apart); its global reads are 2 pixels of 16 filters, the neighbouring pixels of the
// same 32-byte sectors being read by the block's other warps in the same slice (L1). One pixel per
// thread, so its offset is formed once per slice for all of its rows. Rows past the tile's filters and
// pixels past M read 0. fetch(k0) must be called for k0 = k_start, k_start + BK, ... in order
// (gemm_tile.cuh's contract), each BEFORE the B loader's fetch(k0), which steps the shared cursor
// (gemm_slice_range calls la.fetch, then lb.fetch). Geo: Im2colGeometry<T> (2-D) or Im2colGeometry3d<T>.
// ---------------------------------------------------------------------------------------------------
template <typename T, class Cfg, int ACT, class Geo = Im2colGeometry<T>>
struct GyRowLoader {
    typedef typename acc_type<T>::type A;
    static constexpr int ND = Geo::ND;
    static constexpr int BK = Cfg::BK, THREADS = Cfg::THREADS;
    static constexpr int ROW_STEP = THREADS / BK;  // RW
    static constexpr int LOADS = Cfg::BM / ROW_STEP;  // rows per thread
    static_assert(THREADS % BK == 0 && LOADS * ROW_STEP == Cfg::BM, "gy slots must tile BM x BK exactly");

    const T* gy;
    const T* out;
    int P, Q, kk, row0;
    index_t M, KPQ;   // N*P*Q; K*P*Q (one sample of gy; 3-D: N*OD*P*Q, K*OD*P*Q)
    index_t OPQ;      // outputs of one (sample, filter): P*Q (3-D: OD*P*Q)
    const PixelCursorN<ND>* cur;  // this thread's pixel of the next fetch (the B loader's, which steps it)
    // per tile: offset of (filter k_first + row0, pixel 0) in gy; rows of the thread's slots that exist
    // (slot j is row row0 + j * ROW_STEP). Two values rather than a 64-bit offset per slot: registers.
    index_t tile_off;
    int rows_left;
    A regs[LOADS];

    __device__ __forceinline__ GyRowLoader(const T* gy_, const T* out_, const typename Geo::Params& gp, index_t M_,
                                           int tid, const PixelCursorN<ND>* cur_)
        : gy(gy_), out(out_), P(Geo::plane(gp).P), Q(Geo::plane(gp).Q), kk(tid / ROW_STEP), row0(tid % ROW_STEP),
          M(M_), KPQ(ND == 2 ? (index_t)Geo::plane(gp).K * Geo::plane(gp).P * Geo::plane(gp).Q
                             : (index_t)Geo::plane(gp).K * Geo::outputs_per_image(gp)),
          OPQ(Geo::outputs_per_image(gp)),
          cur(cur_) {}

    // (the cursor is set by the B loader's begin_tile)
    __device__ __forceinline__ void begin_tile(int k_first, int rows) {
        if constexpr (ND == 2) tile_off = (index_t)(k_first + row0) * P * Q;
        else tile_off = (index_t)(k_first + row0) * OPQ;
        rows_left = rows - row0;
    }

    __device__ __forceinline__ void fetch(int k0) {
        // The pixel exists iff kk < M - k0 (no overflow: k0 < M + BK <= INT_MAX by the host's rule).
        const bool ok = (index_t)kk < M - k0;
        index_t base;
        if constexpr (ND == 1) base = (index_t)cur->n * KPQ + cur->q + tile_off;  // no row
        else base = (index_t)cur->n * KPQ + (index_t)cur->p * Q + cur->q + tile_off;
        if constexpr (ND == 3) base += (index_t)cur->od * P * Q;
        const index_t row_step = ND == 2 ? (index_t)ROW_STEP * P * Q : (index_t)ROW_STEP * OPQ;
        const T* g = gy + base;
        const T* o = out + base;  // (formed, never read without an activation)
        GPUCONV_UNROLL
        for (int j = 0; j < LOADS; ++j) {
            A v = A(0);
            if (ok && j * ROW_STEP < rows_left) {  // rows past the tile's filters read 0
                v = load<T>(g + j * row_step);
                // ACT is a template argument: no activation switch in the main loop (it cost ~20
                // instructions per element as a run-time switch, tests/sass_check.py)
                if (ACT != ACT_NONE) v = act_backward<A>(v, load<T>(o + j * row_step), ACT);
            }
            regs[j] = v;
        }
    }

    // Transposed store dst[kk][row]: every (kk, row) of the slice written by exactly one thread.
    __device__ __forceinline__ void stage(A (*dst)[Cfg::A_LD]) {
        GPUCONV_UNROLL
        for (int j = 0; j < LOADS; ++j) dst[kk][row0 + j * ROW_STEP] = Cfg::staged(regs[j]);
    }
};

// Per-column depth state of Im2colColumnLoader: none in 2-D (the 2-D loader holds exactly what it did before
// the 3-D one existed); in 3-D the input depth of pixel 0's first tap and each column's depth offset.
template <int ND, int LOADS>
struct ColumnDepthState {};
template <int LOADS>
struct ColumnDepthState<3, LOADS> {
    int id_base;
    int did[LOADS];
};

// ---------------------------------------------------------------------------------------------------
// The B operand: B[m, col] = x[n, g*Cg + c, p*sh - pt + r'*dh, q*sw - pl + s'*dw] (0 in the padding),
// col = (c*R + r)*S + s, (r', s') = (r, s) or (R-1-r, S-1-s) with flip: Im2colGeometry's gather with the
// roles of its axes swapped (the pixel m is this GEMM's reduction index, the tap its column).
// 3-D (Geo = Im2colGeometry3d): B[m, col] = x[n, g*Cg + c, od*sd - pf + t'*dd, ...], col = ((c*KD + t)*R
// + r)*S + s; the depth lives only under `if constexpr (ND == 3)` and in ColumnDepthState.
// Thread t holds reduction index kk = t / CW of every slice (CW = THREADS / BK threads per slice row)
// and columns t % CW + j * CW: a warp stages 2 rows of 16 consecutive columns (stores at most 2-way
// bank-conflicted). The tap of each column (its offset from the pixel's first tap) is found once per
// tile; per slice the pixel's origin is formed once (one 64-bit multiply-add) for all of its columns.
// ---------------------------------------------------------------------------------------------------
template <typename T, class Cfg, class Geo = Im2colGeometry<T>>
struct Im2colColumnLoader : ColumnDepthState<Geo::ND, Cfg::BN / (Cfg::THREADS / Cfg::BK)> {
    typedef typename acc_type<T>::type A;
    static constexpr int ND = Geo::ND;
    static constexpr int BK = Cfg::BK, BN = Cfg::BN, THREADS = Cfg::THREADS;
    static constexpr int CW = THREADS / BK;
    static constexpr int LOADS = BN / CW;  // columns per thread
    static_assert(THREADS % BK == 0 && LOADS * CW == BN, "x slots must tile BK x BN exactly");

    Geo geo;
    int kk, col0, ih_base, iw_base;  // pixel 0's first-tap row / column (padding, flip: pixel_origin)
    index_t CHW, group_off;           // C*H*W (3-D: C*D*H*W); per tile g*Cg*H*W (3-D: g*Cg*D*H*W)
    PixelStepN<ND> stepk;
    PixelCursorN<ND> cur;  // this thread's pixel of the next fetch (also read by the A loader: GyRowLoader)
    // per tile and column j: tap offset (elements) from the pixel's first tap, and its row / column
    // offsets (3-D: and depth, ColumnDepthState::did). A column past the reduction gets the row offset
    // -1 - (ih_base + (P-1)*sh): every pixel's row ih_base + p*sh then lands at -1 or above it, outside
    // the image, so it reads nothing (a sentinel instead of a per-load column test: fewer instructions in
    // the main loop; |value| <= H + pt + pb, within int by the 32-bit rule).
    // int: |offset| < Cg*H*W + (R-1)*dh*W + (S-1)*dw (3-D: Cg*D*H*W + (KD-1)*dd*H*W + ...), which the host's
    // rule keeps below 2^31 (64-bit offsets here cost the float16 tile a spill on sm_75).
    int tap_off[LOADS];
    int dih[LOADS], diw[LOADS];
    A regs[LOADS];

    __device__ __forceinline__ Im2colColumnLoader(const T* x, const typename Geo::Params& gp, int Cg, index_t M,
                                                  int tid)
        : geo(x, gp, Cg, M), kk(tid / CW), col0(tid % CW), CHW(ND == 2 ? (index_t)Geo::plane(gp).C * Geo::plane(gp).H * Geo::plane(gp).W
                                                                 : (index_t)Geo::plane(gp).C * geo.channel_stride()),
          group_off(0), stepk(BK, geo.P, geo.Q, depth_outputs(gp)) {
        // Pixel m = 0 (image 0, group 0): its first tap's input row / column (3-D: and depth), the only
        // place the padding and flip enter the index math; every pixel's is ih_base + p*sh, iw_base + q*sw
        // (id_base + od*sd).
        if constexpr (ND == 2) {
            geo.pixel_origin(0, 0, ih_base, iw_base);
        } else if constexpr (ND == 1) {
            ih_base = 0;  // (no row in 1-D: never read)
            geo.pixel_origin(0, 0, iw_base);
        } else {
            geo.pixel_origin(0, 0, this->id_base, ih_base, iw_base);
        }
    }

    __device__ __forceinline__ static int depth_outputs(const typename Geo::Params& gp) {
        if constexpr (ND == 3) return gp.OD;
        else return 1;
    }

    __device__ __forceinline__ void begin_tile(index_t col_first, int g, int k_start) {
        const int RS = geo.R * geo.S;
        group_off = (index_t)g * geo.Cg * geo.channel_stride();
        GPUCONV_UNROLL
        for (int j = 0; j < LOADS; ++j) {
            const index_t col = col_first + col0 + j * CW;
            tap_off[j] = 0;
            diw[j] = 0;
            dih[j] = -1 - (ih_base + (geo.P - 1) * geo.sh);  // the sentinel (above)
            if constexpr (ND == 3) this->did[j] = 0;  // (the sentinel row alone keeps such a column out)
            if constexpr (ND == 1) {
                // 1-D has no row compare: the sentinel is the column's instead, -1 - (iw_base + (Q-1)*sw),
                // so that every pixel's column iw_base + q*sw lands at -1 or above it (reads nothing)
                diw[j] = -1 - (iw_base + (geo.Q - 1) * geo.sw);
                if (col >= geo.kred) continue;
                const int c = (int)col / geo.S;  // once per tile and column: the tap walk is (c, s)
                diw[j] = ((int)col - c * geo.S) * geo.tap_dw;
                tap_off[j] = c * geo.W + diw[j];
                continue;
            }
            if (col >= geo.kred) continue;  // past the last tap (partial last column tile)
            if constexpr (ND == 2) {
                const int c = (int)col / RS;  // once per tile and column
                const int rs = (int)col - c * RS;
                const int r = rs / geo.S;
                const int s = rs - r * geo.S;
                dih[j] = r * geo.tap_dh;  // signed: negative steps with flip (Im2colGeometry)
                diw[j] = s * geo.tap_dw;
                tap_off[j] = c * (int)geo.HW + dih[j] * geo.W + diw[j];
            } else if constexpr (ND == 3) {
                const int TRS = geo.KD * RS;
                const int c = (int)col / TRS;  // once per tile and column
                const int trs = (int)col - c * TRS;
                const int t = trs / RS;
                const int rs = trs - t * RS;
                const int r = rs / geo.S;
                const int s = rs - r * geo.S;
                this->did[j] = t * geo.tap_dd;
                dih[j] = r * geo.tap_dh;
                diw[j] = s * geo.tap_dw;
                tap_off[j] = c * (int)geo.DHW + this->did[j] * (int)geo.HW + dih[j] * geo.W + diw[j];
            }
        }
        if constexpr (ND == 3) cur.init((index_t)k_start + kk, geo.P, geo.Q, geo.OD);
        else cur.init((index_t)k_start + kk, geo.P, geo.Q);
    }

    __device__ __forceinline__ void fetch(int k0) {
        const bool ok = (index_t)kk < geo.M - k0;  // the pixel exists (past M: the reduction tail)
        if constexpr (ND == 1) {
            // 1-D: the pixel's first-tap column only; one compare per gathered element (the column's)
            const int iw = iw_base + cur.q * geo.sw;
            const index_t origin = (index_t)cur.n * CHW + group_off + iw;
            GPUCONV_UNROLL
            for (int j = 0; j < LOADS; ++j) {
                A v = A(0);
                const int w = iw + diw[j];
                // Halo / bounds: a tap in the padding (or past the reduction: the sentinel) reads 0
                if (ok && (unsigned)w < (unsigned)geo.W) v = load<T>(geo.x + origin + (index_t)tap_off[j]);
                regs[j] = v;
            }
            cur.step(stepk, geo.P, geo.Q);  // after the A loader's fetch of this slice read it
            return;
        }
        const int ih = ih_base + cur.p * geo.sh;
        const int iw = iw_base + cur.q * geo.sw;
        index_t origin = (index_t)cur.n * CHW + group_off + (index_t)ih * geo.W + iw;
        int id = 0;
        if constexpr (ND == 3) {
            id = this->id_base + cur.od * geo.sd;
            origin += (index_t)id * geo.HW;
        }
        GPUCONV_UNROLL
        for (int j = 0; j < LOADS; ++j) {
            A v = A(0);
            const int h = ih + dih[j];
            const int w = iw + diw[j];
            // Halo / bounds: a tap in the padding reads 0 by definition; x is never read outside the
            // image (the unsigned compare rejects negative coordinates, the top / left / front padding).
            bool inside = ok && (unsigned)h < (unsigned)geo.H && (unsigned)w < (unsigned)geo.W;
            if constexpr (ND == 3) inside = inside && (unsigned)(id + this->did[j]) < (unsigned)geo.D;
            if (inside) v = load<T>(geo.x + origin + (index_t)tap_off[j]);
            regs[j] = v;
        }
        // Stepped after the A loader's fetch of this slice read it (gemm_slice_range: la.fetch, lb.fetch).
        if constexpr (ND == 2) cur.step(stepk, geo.P, geo.Q);
        else if constexpr (ND == 3) cur.step(stepk, geo.P, geo.Q, geo.OD);
    }

    __device__ __forceinline__ void stage(A (*dst)[Cfg::B_LD]) {
        GPUCONV_UNROLL
        for (int j = 0; j < LOADS; ++j) dst[kk][col0 + j * CW] = Cfg::staged(regs[j]);
    }
};

// float64 asks for one block per SM, as conv2d_igemm_splitk<double> (its 4x4 double tile and the two
// loaders' per-column state do not fit the 128 registers of two), and so do the fused-activation
// instantiations (ACT != 0: the `out` loads in flight; at 128 registers NVRTC 12.9 spilled 4 bytes of the
// float relu one on sm_100); float32 / float16 without an activation keep the tile's bound (two).
__host__ __device__ constexpr int bwf_min_blocks_per_sm(int bytes, int act, int threads, int tm, int tn) {
    return (bytes == 8 || act != 0) ? 1 : gemm_blocks_per_sm(threads, tm, tn);
}

// The 3-D instantiations: the 2-D rule, and one block per SM for float16 too (the depth digit of the cursor
// and of each column: at 128 registers the float16 one spilled 4 bytes on sm_120 with NVRTC 13.5); float32
// without an activation keeps two.
__host__ __device__ constexpr int bwf3d_min_blocks_per_sm(int bytes, int act, int threads, int tm, int tn) {
    return bytes == 2 ? 1 : bwf_min_blocks_per_sm(bytes, act, threads, tm, tn);
}

// The body of conv2d_backward_filter_igemm and conv3d_backward_filter_igemm: one kernel family, the
// geometry (Geo: Im2colGeometry<T> with a ConvParams, Im2colGeometry3d<T> with a Conv3dParams) the only
// difference. The reduction runs over M = N * outputs per image pixels (N*P*Q; 3-D N*OD*P*Q), the GEMM's
// columns over Geo::reduction (Cg*R*S; 3-D Cg*KD*R*S).
template <typename T, class Cfg, int ACT, class Geo>
__device__ __forceinline__ void backward_filter_igemm(const T* __restrict__ x, const T* __restrict__ gy,
                                                      const T* __restrict__ out,
                                                      typename acc_type<T>::type* __restrict__ ws,
                                                      const typename Geo::Params& gp, int splits, int split_slices,
                                                      GemmSmem<typename acc_type<T>::type, Cfg>& smem) {
    constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK;

    const ConvParams& cp = Geo::plane(gp);
    const int tid = threadIdx.x;
    const int Cg = cp.C / cp.groups;
    const int Kg = cp.K / cp.groups;
    const int NC = Geo::reduction(gp, Cg);  // this GEMM's columns (the forward's reduction)
    // the reduction, < 2^31 - BK (host rule); 2-D: (N*P)*Q as before the 3-D kernel existed (same code)
    const index_t M = Geo::ND == 2 ? (index_t)cp.N * cp.P * cp.Q : (index_t)cp.N * Geo::outputs_per_image(gp);
    const int slices = (int)(M / BK + (M % BK != 0));
    const index_t n_tiles = (NC + BN - 1) / BN;
    const int k_tiles = (Kg + BM - 1) / BM;
    const index_t tiles = n_tiles * k_tiles * cp.groups;
    const index_t total = tiles * splits;

    Im2colColumnLoader<T, Cfg, Geo> bl(x, gp, Cg, M, tid);
    GyRowLoader<T, Cfg, ACT, Geo> al(gy, out, gp, M, tid, &bl.cur);  // same kk per thread: one cursor for both
    static_assert(decltype(al)::ROW_STEP == decltype(bl)::CW, "both loaders must give a thread the same pixel");
    // Split slowest: block (split, tile). The trip count depends only on blockIdx / gridDim, so every
    // thread of a block reaches the same barriers (in gemm_slice_range).
    for (index_t blk = blockIdx.x; blk < total; blk += gridDim.x) {
        const int split = (int)(blk / tiles);
        const GemmBlockIndex bi = gemm_block_index(blk - (index_t)split * tiles, k_tiles, n_tiles, BM, BN);
        const int rows = Kg - bi.k_begin < BM ? Kg - bi.k_begin : BM;
        const int k_first = bi.g * Kg + bi.k_begin;
        const int s0 = split * split_slices;
        const int s1 = slices - s0 < split_slices ? slices : s0 + split_slices;
        RegisterTile<T, Cfg> acc(tid);
        al.begin_tile(k_first, rows);
        bl.begin_tile(bi.m0, bi.g, s0 * BK);  // sets the shared cursor to pixel s0 * BK + kk
        gemm_slice_range<Cfg>(al, bl, s0, s1, smem, acc);
        // Every (filter, column) of the tile that exists, once, into plane `split` (raw sums: the reduce
        // kernel adds the planes in order and rounds once).
        acc.store_partial(ws + (index_t)split * cp.K * NC, k_first, rows, bi.m0, NC);
    }
}

template <typename T, int BM, int BN, int BK, int TM, int TN, int ACT>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), bwf_min_blocks_per_sm(sizeof(T), ACT, (BM / TM) * (BN / TN), TM, TN))
conv2d_backward_filter_igemm(const T* __restrict__ x,    // (N, C, H, W)
                             const T* __restrict__ gy,   // (N, K, P, Q)
                             const T* __restrict__ out,  // (N, K, P, Q) when ACT, else unread
                             typename acc_type<T>::type* __restrict__ ws,  // [splits][K][Cg*R*S]
                             const __grid_constant__ ConvParams cp,
                             int splits,        // reduction ranges (>= 1)
                             int split_slices)  // slices (of BK pixels) per range
{
    typedef GemmTileConfig<BM, BN, BK, TM, TN> Cfg;
    __shared__ GemmSmem<typename acc_type<T>::type, Cfg> smem;
    backward_filter_igemm<T, Cfg, ACT, Im2colGeometry<T>>(x, gy, out, ws, cp, splits, split_slices, smem);
}

// The 3-D instantiation of the same body: x (N, C, D, H, W), gy / out (N, K, OD, P, Q), ws
// [splits][K][Cg*KD*R*S], the geometry as a Conv3dParams (the plane's ConvParams hw, then the depth).
template <typename T, int BM, int BN, int BK, int TM, int TN, int ACT>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), bwf3d_min_blocks_per_sm(sizeof(T), ACT, (BM / TM) * (BN / TN), TM, TN))
conv3d_backward_filter_igemm(const T* __restrict__ x, const T* __restrict__ gy, const T* __restrict__ out,
                             typename acc_type<T>::type* __restrict__ ws, const __grid_constant__ Conv3dParams cp,
                             int splits, int split_slices)
{
    typedef GemmTileConfig<BM, BN, BK, TM, TN> Cfg;
    __shared__ GemmSmem<typename acc_type<T>::type, Cfg> smem;
    backward_filter_igemm<T, Cfg, ACT, Im2colGeometry3d<T>>(x, gy, out, ws, cp, splits, split_slices, smem);
}

// The 1-D instantiation of the same body: x (N, C, W), gy / out (N, K, Q), ws [splits][K][Cg*S], the
// geometry as the ConvParams of the unit-height call (H = R = P = 1; the 1-D code reads none of the row's
// members). Same launch bounds as 2-D (less state: no row digit, no per-column row offset).
template <typename T, int BM, int BN, int BK, int TM, int TN, int ACT>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), bwf_min_blocks_per_sm(sizeof(T), ACT, (BM / TM) * (BN / TN), TM, TN))
conv1d_backward_filter_igemm(const T* __restrict__ x, const T* __restrict__ gy, const T* __restrict__ out,
                             typename acc_type<T>::type* __restrict__ ws, const __grid_constant__ ConvParams cp,
                             int splits, int split_slices)
{
    typedef GemmTileConfig<BM, BN, BK, TM, TN> Cfg;
    __shared__ GemmSmem<typename acc_type<T>::type, Cfg> smem;
    backward_filter_igemm<T, Cfg, ACT, Im2colGeometry1d<T>>(x, gy, out, ws, cp, splits, split_slices, smem);
}

// Sums red[i][0..BWF_THREADS) into red[i][0] for i < n, by a tree of fixed shape (which thread adds which
// pair depends only on indices, never on timing: the same bits in any thread order). Called by every
// thread of the block; each level's barrier orders its reads after the previous level's writes.
template <typename A, int N>
__device__ __forceinline__ void block_tree_sum(A (*red)[BWF_THREADS], int tid) {
    __syncthreads();  // every thread's own value is stored
    GPUCONV_UNROLL
    for (int half = BWF_THREADS / 2; half > 0; half >>= 1) {
        if (tid < half) {
            GPUCONV_UNROLL
            for (int i = 0; i < N; ++i) red[i][tid] += red[i][tid + half];
        }
        __syncthreads();
    }
}

// Per-tap depth offsets of the depthwise body: none in 2-D (the 2-D kernel holds what it did before the 3-D
// one existed), DW_TAPS of them in 3-D.
template <int ND>
struct DepthwiseTapDepths {};
template <>
struct DepthwiseTapDepths<3> {
    int did[DW_TAPS];
};

// The body of conv2d_backward_filter_depthwise and conv3d_backward_filter_depthwise (Geo: Im2colGeometry<T>
// with a ConvParams, or Im2colGeometry3d<T> with a Conv3dParams; the depth only under `if constexpr (ND ==
// 3)`): the taps are (r, s), or (t, r, s) in 3-D, RS = R*S or KD*R*S of them; the pixels (n, p, q) or (n,
// od, p, q).
template <typename T, class Geo>
__device__ __forceinline__ void backward_filter_depthwise(const T* __restrict__ x, const T* __restrict__ gy,
                                                          const T* __restrict__ out,
                                                          typename acc_type<T>::type* __restrict__ ws,
                                                          const typename Geo::Params& gp, int splits, int split_len,
                                                          typename acc_type<T>::type (*red)[BWF_THREADS]) {
    typedef typename acc_type<T>::type A;
    constexpr int ND = Geo::ND;
    const ConvParams& cp = Geo::plane(gp);
    const int tid = threadIdx.x;
    const int Kg = cp.K / cp.groups;
    const int RS = Geo::reduction(gp, 1);  // the filter's taps (Cg == 1)
    const index_t PQ = Geo::outputs_per_image(gp);  // (3-D: OD*P*Q)
    const index_t M = (index_t)cp.N * PQ;
    const index_t HW = (index_t)cp.H * cp.W;
    Geo geo(x, gp, 1, M);
    int ih_base, iw_base;
    DepthwiseTapDepths<ND> depth;
    int id_base = 0;  // (3-D: the input depth of pixel 0's first tap)
    // padding and flip (see Im2colColumnLoader)
    if constexpr (ND == 2) {
        geo.pixel_origin(0, 0, ih_base, iw_base);
    } else if constexpr (ND == 1) {
        ih_base = 0;  // (no row in 1-D: never read)
        geo.pixel_origin(0, 0, iw_base);
    } else {
        geo.pixel_origin(0, 0, id_base, ih_base, iw_base);
    }
    int OD = 1;
    if constexpr (ND == 3) OD = geo.OD;
    const PixelStepN<ND> stride_step(BWF_THREADS, cp.P, cp.Q, OD);

    for (index_t item = blockIdx.x; item < (index_t)cp.K * splits; item += gridDim.x) {
        const int split = (int)(item / cp.K);
        const int k = (int)(item - (index_t)split * cp.K);
        const int c = k / Kg;  // the one input channel of filter k
        const index_t m0 = (index_t)split * split_len;
        const index_t m1 = M - m0 < split_len ? M : m0 + split_len;
        for (int t0 = 0; t0 < RS; t0 += DW_TAPS) {
            int dih[DW_TAPS], diw[DW_TAPS];
            A acc[DW_TAPS];
            GPUCONV_UNROLL
            for (int i = 0; i < DW_TAPS; ++i) {
                int t = t0 + i < RS ? t0 + i : RS - 1;  // past the last tap: computed, never stored
                acc[i] = A(0);
                if constexpr (ND == 1) {
                    dih[i] = 0;  // (no row in 1-D: never read)
                    diw[i] = t * geo.tap_dw;  // the tap is s
                    continue;
                }
                if constexpr (ND == 3) {
                    const int planes = cp.R * cp.S;
                    const int td = t / planes;  // the depth tap
                    depth.did[i] = td * geo.tap_dd;
                    t -= td * planes;
                }
                const int r = t / cp.S;
                dih[i] = r * geo.tap_dh;
                diw[i] = (t - r * cp.S) * geo.tap_dw;
            }
            PixelCursorN<ND> cur;
            cur.init(m0 + tid, cp.P, cp.Q, OD);
            for (index_t m = m0 + tid; m < m1; m += BWF_THREADS) {
                if constexpr (ND == 1) {
                    // 1-D: pixel (n, q), one column compare per tap
                    const index_t goff = ((index_t)cur.n * cp.K + k) * PQ + cur.q;
                    A g = load<T>(gy + goff);
                    if (cp.act != ACT_NONE) g = act_backward<A>(g, load<T>(out + goff), cp.act);
                    const int iw = iw_base + cur.q * cp.sw;
                    const T* xc = x + ((index_t)cur.n * cp.C + c) * cp.W;
                    GPUCONV_UNROLL
                    for (int i = 0; i < DW_TAPS; ++i) {
                        const int w = iw + diw[i];
                        // Halo: taps in the padding add nothing (x is never read outside the row)
                        if ((unsigned)w < (unsigned)cp.W) acc[i] += g * load<T>(xc + w);
                    }
                    cur.step(stride_step, cp.P, cp.Q);
                    continue;
                }
                index_t goff = ((index_t)cur.n * cp.K + k) * PQ + (index_t)cur.p * cp.Q + cur.q;
                if constexpr (ND == 3) goff += (index_t)cur.od * cp.P * cp.Q;
                A g = load<T>(gy + goff);
                if (cp.act != ACT_NONE) g = act_backward<A>(g, load<T>(out + goff), cp.act);
                const int ih = ih_base + cur.p * cp.sh;
                const int iw = iw_base + cur.q * cp.sw;
                const T* xc;
                int id = 0;
                if constexpr (ND == 2) {
                    xc = x + ((index_t)cur.n * cp.C + c) * HW;
                } else if constexpr (ND == 3) {
                    id = id_base + cur.od * geo.sd;
                    xc = x + ((index_t)cur.n * cp.C + c) * geo.DHW + (index_t)id * HW;
                }
                GPUCONV_UNROLL
                for (int i = 0; i < DW_TAPS; ++i) {
                    const int h = ih + dih[i], w = iw + diw[i];
                    // Halo: taps in the padding add nothing (x is never read outside the image).
                    bool inside = (unsigned)h < (unsigned)cp.H && (unsigned)w < (unsigned)cp.W;
                    if constexpr (ND == 3) inside = inside && (unsigned)(id + depth.did[i]) < (unsigned)geo.D;
                    if (inside) {
                        if constexpr (ND == 2) {
                            acc[i] += g * load<T>(xc + (index_t)h * cp.W + w);
                        } else if constexpr (ND == 3) {
                            // int: |did*H*W + h*W + w| < the filter's depth reach * H*W + H*W, within the
                            // host's rule (Cg*D*H*W + reach < 2^31); one 32-bit multiply-add per tap
                            acc[i] += g * load<T>(xc + (depth.did[i] * (int)HW + h * cp.W + w));
                        }
                    }
                }
                cur.step(stride_step, cp.P, cp.Q, OD);
            }
            GPUCONV_UNROLL
            for (int i = 0; i < DW_TAPS; ++i) red[i][tid] = acc[i];
            block_tree_sum<A, DW_TAPS>(red, tid);
            if (tid < DW_TAPS && t0 + tid < RS) ws[((index_t)split * cp.K + k) * RS + t0 + tid] = red[tid][0];
            // Barrier: threads 0..DW_TAPS-1 read red[*][0] above before the next chunk (or item) rewrites it.
            __syncthreads();
        }
    }
}

// Two blocks per SM stated explicitly: without a minimum ptxas picked a 64-register target of its own on
// sm_86 / sm_89 and spilled the DW_TAPS accumulators.
template <typename T>
__global__ void __launch_bounds__(BWF_THREADS, 2)
conv2d_backward_filter_depthwise(const T* __restrict__ x, const T* __restrict__ gy,
                                 const T* __restrict__ out,  // when cp.act, else unread
                                 typename acc_type<T>::type* __restrict__ ws,  // [splits][K][R*S]
                                 const __grid_constant__ ConvParams cp,
                                 int splits,           // pixel ranges (>= 1)
                                 int split_len)        // pixels per range (the last may be shorter)
{
    __shared__ typename acc_type<T>::type red[DW_TAPS][BWF_THREADS];
    backward_filter_depthwise<T, Im2colGeometry<T>>(x, gy, out, ws, cp, splits, split_len, red);
}

// The 3-D instantiation: x (N, C, D, H, W), gy / out (N, K, OD, P, Q), ws [splits][K][KD*R*S], Conv3dParams.
template <typename T>
__global__ void __launch_bounds__(BWF_THREADS, 2)
conv3d_backward_filter_depthwise(const T* __restrict__ x, const T* __restrict__ gy, const T* __restrict__ out,
                                 typename acc_type<T>::type* __restrict__ ws, const __grid_constant__ Conv3dParams cp,
                                 int splits, int split_len)
{
    __shared__ typename acc_type<T>::type red[DW_TAPS][BWF_THREADS];
    backward_filter_depthwise<T, Im2colGeometry3d<T>>(x, gy, out, ws, cp, splits, split_len, red);
}

// The 1-D instantiation: x (N, C, W), gy / out (N, K, Q), ws [splits][K][S], the unit-height ConvParams.
template <typename T>
__global__ void __launch_bounds__(BWF_THREADS, 2)
conv1d_backward_filter_depthwise(const T* __restrict__ x, const T* __restrict__ gy, const T* __restrict__ out,
                                 typename acc_type<T>::type* __restrict__ ws, const __grid_constant__ ConvParams cp,
                                 int splits, int split_len)
{
    __shared__ typename acc_type<T>::type red[DW_TAPS][BWF_THREADS];
    backward_filter_depthwise<T, Im2colGeometry1d<T>>(x, gy, out, ws, cp, splits, split_len, red);
}

template <typename T>
__global__ void __launch_bounds__(BWF_THREADS, 2)
conv2d_backward_bias(const T* __restrict__ gy, const T* __restrict__ out,  // out: when act, else unread
                     T* __restrict__ gb,  // (K,)
                     int N, int K, index_t PQ, int act) {
    typedef typename acc_type<T>::type A;
    __shared__ A red[1][BWF_THREADS];
    const int tid = threadIdx.x;
    for (int k = blockIdx.x; k < K; k += gridDim.x) {
        A acc = A(0);
        for (int n = 0; n < N; ++n) {
            const index_t base = ((index_t)n * K + k) * PQ;
            for (index_t pq = tid; pq < PQ; pq += BWF_THREADS) {
                A g = load<T>(gy + base + pq);
                if (act != ACT_NONE) g = act_backward<A>(g, load<T>(out + base + pq), act);
                acc += g;
            }
        }
        red[0][tid] = acc;
        block_tree_sum<A, 1>(red, tid);
        if (tid == 0) store<T>(gb + k, red[0][0]);
        __syncthreads();  // red[0][0] read before the next filter's values overwrite it
    }
}

}  // namespace gpuconv
