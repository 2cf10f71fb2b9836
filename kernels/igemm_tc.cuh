// igemm_tc.cuh — the tensor-core implicit GEMM's machinery, for 1, 2 or 3 spatial dimensions: the mma kinds
// (TcKind), the staged slices' fragment order (FragLayout), the block tile (TensorCoreTileConfig), the packed
// weight loader (PackedWeightLoader), the tap-major gather (TapIm2colLoader, its geometry a template
// parameter), the warp's mma tile and epilogue (WarpMmaTile) and the tile loop (tensor_core_conv). The
// kernels are conv2d_igemm_tc.cu (2-D; its header describes the pipeline), conv1d_igemm_tc.cu and
// conv3d_igemm_tc.cu: one body, the number of spatial dimensions in the gather geometry
// (im2col_loader.cuh's Im2colGeometry, Im2colGeometry1d, Im2colGeometry3d) and in TapIm2colLoader's tap walk
// (under `if constexpr`), nowhere else.
#pragma once

#include "common.cuh"
#include "conv_params.cuh"
#include "gemm_tile.cuh"
#include "im2col_loader.cuh"
#include "tensor_core.cuh"

namespace gpuconv {

// ---------------------------------------------------------------------------------------------------
// Per storage type: the mma shape, and how a loader holds a fetched value (Raw) until it packs it into
// the 32-bit words the mma takes. float: one TF32 word per reduction index, rounded as cvt.rna rounds
// (tensor_core.cuh tf32_operand_bits) as it is staged, once per element. half: the float16 bits as they are (products of the values themselves are
// exact), two consecutive reduction indices per word, the lower index in the low 16 bits.
// ---------------------------------------------------------------------------------------------------
template <typename T> struct TcKind;

template <> struct TcKind<float> {  // TF32, m16n8k8
    static constexpr int KSTEP = 8;  // reduction indices per mma
    static constexpr int KPW = 1;    // reduction indices per 32-bit word
    // How the gather steps its pointer per element (TapIm2colLoader::fetch), chosen by the machine code
    // (tests/sass_check.py): float, with each step hidden from the compiler, a chain of 64-bit adds (2
    // instructions per element; left to itself ptxas rebuilt each address from 64-bit products, 3); half,
    // the plain p + H*W, which ptxas turns into one IMAD.WIDE per element from the slice's pointer (for
    // float it chose 3 instructions per element that way).
    static constexpr bool OPAQUE_STEP = true;
    // Whether the gather may load by whole k-steps (TapIm2colLoader::BY_KSTEP): float, no (a compare and a
    // zero per element in the unrolled loads); half, where a thread's run is several k-steps.
    static constexpr bool KSTEP_GATHER = false;
    // Whether the gather holds its tap steps in registers (TapIm2colLoader's constructor): half, yes; float,
    // no (NVRTC 13 then took float's small tile from 5.14 to 5.7 non-mma instructions per mma on sm_90).
    static constexpr bool HOLD_TAP_STEPS = false;
    typedef float Raw;
    __device__ __forceinline__ static Raw zero() { return 0.0f; }
    // __ldg: a global, read-only load also where the compiler cannot see that p points into global memory
    // (the gather's pointer is opaque_pointer()'d, tensor_core.cuh).
    __device__ __forceinline__ static Raw load(const float* p) { return __ldg(p); }
    // Word t of a run of fetched values v (indices KPW*t ..).
    __device__ __forceinline__ static unsigned word(const Raw* v, int t) { return tf32_operand_bits(v[t]); }
    __device__ __forceinline__ static void mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
        mma_m16n8k8_tf32(d, a, b);
    }
};

template <> struct TcKind<half> {  // float16, m16n8k16
    static constexpr int KSTEP = 16;
    static constexpr int KPW = 2;
    static constexpr bool OPAQUE_STEP = false;  // (see TcKind<float>)
    static constexpr bool KSTEP_GATHER = true;    // (see TcKind<float>)
    static constexpr bool HOLD_TAP_STEPS = true;  // (see TcKind<float>)
    // The float16 bits, zero-extended: a 32-bit register zeroed as a whole (no 16-bit merge per element).
    typedef unsigned Raw;
    __device__ __forceinline__ static Raw zero() { return 0; }
    __device__ __forceinline__ static Raw load(const half* p) {
#if defined(GPUCONV_EMULATED)
        return half_bits(*p);
#else
        return __ldg(reinterpret_cast<const unsigned short*>(p));  // (half is our 2-byte struct here)
#endif
    }
    __device__ __forceinline__ static unsigned word(const Raw* v, int t) { return pack_halves(v[2 * t], v[2 * t + 1]); }
    __device__ __forceinline__ static void mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
        mma_m16n8k16_f16(d, a, b);
    }
};

// ---------------------------------------------------------------------------------------------------
// The staged slices in fragment order. Of one operand slice (A: DIM = BM filters; B: DIM = BN pixels; BK
// reduction indices), element (idx, k) with k = KSTEP*ks + (KSTEP/2)*hk + KPW*tig + e and idx = 16 blk +
// 8h + gid is the reduction-index half a mma fragment word of lane (gid, tig) holds (tensor_core.cuh lists
// the fragments; e: the float16 half of the word). The 4 words of lane (gid, tig), k-step ks and 16-wide
// block blk form one 16-byte quad, in the order that lane's fragment registers take:
//     A (blk = one 16-row mma tile):          word h + 2hk  = a[0], a[1], a[2], a[3]
//     B (blk = two 8-column mma tiles j, j+1): word hk + 2h  = b_j[0], b_j[1], b_j+1[0], b_j+1[1]
// so a lane reads each fragment with one 128-bit shared load (A: one per mma tile row, B: one per two mma
// tile columns) straight into the mma's operand registers (a quad in any other order costs register
// moves: ptxas's mma operands are consecutive registers). The 32 quads of one (ks, blk) are 512 contiguous
// bytes, lane (gid, tig) at slot 4 gid + (tig ^ ((gid >> 1) & 3)): then every 8 lanes of a 128-bit read
// (one phase) hit 8 different 16-byte bank groups, and the loaders' 64-bit stores (below: 16 threads of
// one phase, one tig, cover 16 different 8-byte bank pairs) are conflict-free; without the XOR, 4 ways.
// ---------------------------------------------------------------------------------------------------
template <typename T, int DIM, int BK>
struct FragLayout {
    static constexpr int KSTEP = TcKind<T>::KSTEP, KPW = TcKind<T>::KPW;
    static constexpr int BLOCKS = DIM / 16;
    static constexpr int KS_WORDS = BLOCKS * 128;  // words per k-step
    static_assert(DIM % 16 == 0 && BK % KSTEP == 0, "a slice holds whole 16-wide blocks and k-steps");
    __device__ __forceinline__ static int slot(int gid, int tig) { return 4 * gid + (tig ^ ((gid >> 1) & 3)); }
    // First word of the quad of (k-step ks, block blk, lane (gid, tig)).
    __device__ __forceinline__ static int quad(int ks, int blk, int gid, int tig) {
        return (ks * BLOCKS + blk) * 128 + 4 * slot(gid, tig);
    }
};

// The block tile: BM filters x BN pixels, BK reduction indices per slice, WARPS_M x WARPS_N warps of
// WM x WN outputs, each MT x NT mma tiles of 16 x 8. Provides what gemm_tile.cuh's GemmSmem and gemm_slices
// need (BM, BN, BK, THREADS, A_LD, B_LD: a slice is BK / KPW rows of BM or BN 32-bit words, in fragment
// order) and what TapIm2colLoader reads (BN, KSTEP, B_KSTEPS, B_LD).
// BK: as many reduction indices as 32 KB of double-buffered staging holds (TENSOR_CORE_STAGING_BYTES,
// mirrored by gpuconv/_cuda/conv_igemm_tc.py; the 48 KB of static shared memory leave no room to double
// it): float 128x128: 16 (two tf32 k-steps), float 64x64: 32, half 128x128: 32 (two f16 k-steps), half
// 64x64: 64. A larger BK spreads the per-slice work (the tap walk, the barrier) over more mma.
constexpr int TENSOR_CORE_STAGING_BYTES = 32768;

template <typename T, int BM_, int BN_, int WARPS_M_, int WARPS_N_>
struct TensorCoreTileConfig {
    static constexpr int BM = BM_, BN = BN_;
    static constexpr int BK = TENSOR_CORE_STAGING_BYTES / (2 * (BM + BN) * 4 / TcKind<T>::KPW);
    static constexpr int WARPS_M = WARPS_M_, WARPS_N = WARPS_N_;
    static constexpr int THREADS = 32 * WARPS_M * WARPS_N;
    static constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;
    static constexpr int MT = WM / 16, NT = WN / 8;
    static constexpr int KPW = TcKind<T>::KPW, KSTEP = TcKind<T>::KSTEP;
    static constexpr int A_LD = BM / KPW, B_LD = BN / KPW;
    static constexpr int A_WORDS = BK * A_LD;  // 32-bit words of one staged A slice
    typedef FragLayout<T, BM, BK> LayoutA;
    typedef FragLayout<T, BN, BK> LayoutB;
    static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tiles must be whole 16x16 fragment blocks");
    // The B loader's thread pattern (below) covers a slice exactly once: BN columns x (BK / KSTEP) k-steps,
    // B_KSTEPS consecutive k-steps of one column per thread.
    static constexpr int B_KSTEPS = BN * (BK / KSTEP) / THREADS;
    static_assert(B_KSTEPS >= 1 && B_KSTEPS * THREADS == BN * (BK / KSTEP), "B: whole k-steps of one column");
};

// ---------------------------------------------------------------------------------------------------
// The reduction order: filter tap major. The GEMM's reduction runs over (tap, channel) with the tap
// t = r*S + s outermost and the group's Cg channels innermost, in slices of BK channels of one tap (the
// last slice of a tap zero-filled past Cg): slice number sl covers tap sl / C_SLICES, channels
// (sl % C_SLICES) * BK ..., C_SLICES = ceil(Cg / BK). Within one slice every value a thread gathers for its
// pixel comes from the same input position (ih, iw) of consecutive channels, so the tap's bounds test and
// address are worked out once per slice, not per element as in the (c, r, s) order, and each element
// costs one predicated load at a fixed channel stride. The loaders walk (tap, c0) incrementally:
// gemm_slices calls fetch() for slices 0, 1, 2, ... in order (the k0 it passes, slice * BK, is that
// order's position in the padded reduction R*S*C_SLICES*BK and is not needed). Rounding follows this
// order; the result is bitwise deterministic as before.
// ---------------------------------------------------------------------------------------------------

// The A operand: the weights, packed by the host (gpuconv/_cuda/conv_igemm_tc.py, pack_weights) into
// exactly the staged slices' layout: per (group, filter tile, slice), the slice's A_WORDS 32-bit words in
// fragment order (FragLayout, A's word order), TF32-rounded (cvt.rna's rounding, NaN kept) for float,
// float16 pairs for half, zero for filters past the group's last and channels past Cg. So a slice is one
// contiguous copy: thread tid moves 16-byte chunks tid, tid + THREADS, ... (coalesced 128-bit loads and
// conflict-free 128-bit shared stores), with no bounds, no rounding and no gather in the main loop. Weights
// are read many times per call (once per pixel tile), so doing this once per call is the cheaper place.
template <typename T, class Cfg>
struct PackedWeightLoader {
    static constexpr int CHUNKS = Cfg::A_WORDS / 4 / Cfg::THREADS;  // 16-byte chunks per thread and slice
    static_assert(Cfg::A_WORDS % (4 * Cfg::THREADS) == 0, "a slice must be whole chunks per thread");
    const uint4* p;  // this thread's first chunk of the next slice
    int tid;
    uint4 v[CHUNKS];

    __device__ __forceinline__ explicit PackedWeightLoader(int tid_) : p(nullptr), tid(tid_) {}

    // wp_tile: the tile's first slice (16-byte aligned: the host aligns the packed array, A_WORDS % 4 == 0).
    __device__ __forceinline__ void begin_tile(const unsigned* wp_tile) {
        p = reinterpret_cast<const uint4*>(wp_tile) + tid;
    }

    __device__ __forceinline__ void fetch(int) {  // slices in order (see "The reduction order")
        GPUCONV_UNROLL
        for (int i = 0; i < CHUNKS; ++i) v[i] = p[i * Cfg::THREADS];
        p += Cfg::A_WORDS / 4;
    }

    __device__ __forceinline__ void stage(unsigned (*dst)[Cfg::A_LD]) {
        uint4* d = reinterpret_cast<uint4*>(&dst[0][0]) + tid;
        GPUCONV_UNROLL
        for (int i = 0; i < CHUNKS; ++i) d[i * Cfg::THREADS] = v[i];
    }
};

// The B operand: the im2col matrix in (tap, channel) order, B[(tap, c)][m] = x[n, g*Cg + c, ih, iw] with
// (ih, iw) = tap (r, s)'s input position for pixel m (0 in the padding). Thread tid owns pixel (column)
// tid % BN and the B_KSTEPS k-steps from (tid / BN) * B_KSTEPS (L = KSTEP * B_KSTEPS consecutive channels)
// of each slice. Per tile, im2col_loader.cuh's Im2colGeometry::pixel_origin decomposes the pixel: its image's
// first channel xb and the input position of its first tap (the signed tap steps carry the flip); this
// loader walks the taps from there, one step per slice: the channels the tap has left, the tap's input
// position and the slice's channel offset are stepped, not recomputed (one multiply per slice, ih * W),
// and the run's L elements are loaded through one pointer stepped by H*W. Its stage() writes word tig of both k-step halves (hk = 0, 1) of the
// column as one 64-bit store per k-step; one phase's 16 threads are 16 consecutive columns (8 gid x 2 h): all banks.
// Geo, the number of spatial dimensions (im2col_loader.cuh): Im2colGeometry (2-D, the default: the code as it
// was before the 1-D and 3-D kernels, same machine code), Im2colGeometry1d (taps s only: no row, no filter
// column counter, no row compare; channel stride W) or Im2colGeometry3d (taps (t, r, s), s fastest: the filter
// row counter and the current input depth in TapDepthWalk, one more compare per slice; channel stride D*H*W).
// The per-dimension code sits under `if constexpr`; what 1-D does not use (ih, ih0, s, step_h) is never read
// and takes no register.
template <int ND>
struct TapDepthWalk {};
template <>
struct TapDepthWalk<3> {
    int id;      // the current tap's input depth (pixel_origin's first-tap depth, stepped by step_d)
    int r;       // the current tap's filter row (wraps at R: then the depth tap advances)
    int step_d;  // px.tap_dd, held (as step_h / step_w)
};

template <typename T, class Cfg, class Geo = Im2colGeometry<T>>
struct TapIm2colLoader : TapDepthWalk<Geo::ND> {
    typedef TcKind<T> Kind;
    static constexpr int ND = Geo::ND;
    static_assert(ND == 1 || ND == 2 || ND == 3, "1, 2 or 3 spatial dimensions");
    static constexpr int L = Cfg::KSTEP * Cfg::B_KSTEPS;  // channels per column and slice
    // Load by whole k-steps (fetch, stage_tail): float16 runs of several k-steps (the small tile: 4). Chosen
    // by the machine code (tests/sass_check.py, sm_90, NVRTC 12.9): it took the half small tile from 5.70 to
    // 5.00 non-mma instructions per mma (4.92 with HOLD_TAP_STEPS); the per-element path stays for the tiles
    // where it measured better (half large, one k-step per run: 4.28 against 5.0; float: 3.81 / 4.94
    // against 4.1-5.5).
    static constexpr bool BY_KSTEP = Kind::KSTEP_GATHER && Cfg::B_KSTEPS > 1;
    Geo px;                   // the geometry; pixel_origin decomposes this thread's pixel per tile
    int col;                  // this thread's pixel (column) of the tile
    // per tile: x at this pixel's image and group (channel 0), the input position of its first tap, and
    // whether the pixel exists (a partial last tile has columns past M)
    const T* xb;
    int ih0, iw0;             // (1-D: ih0 unused)
    bool col_ok;
    int HWi;                  // H*W: the channel stride (elements; 1-D: W, 3-D: D*H*W)
    int chan0;                // this thread's first channel of each slice
    int cleft;                // channels of the current tap left from this slice's first (Cg - c0)
    int ih, iw, s;            // the current tap: its input position and its filter column (1-D: iw only)
    int coff;                 // (c0 + chan0) * H*W: this slice's first channel's offset (elements)
    int woff[4];              // word tig's 64-bit store: its first word in the slice
    int step_h, step_w;       // px.tap_dh, px.tap_dw, held (see the constructor)
    bool whole;               // BY_KSTEP: this slice's run exists whole (limit() >= L)
    typename Kind::Raw v[L];  // (BY_KSTEP: past k-step live / KSTEP stale, see stage_tail)

    // The channel stride in int (the host's rule: ceil(Cg/BK)*BK times it is below 2^31).
    __device__ __forceinline__ static int channel_stride(const typename Geo::Params& cp) {
        if constexpr (ND == 1) return cp.W;
        else if constexpr (ND == 2) return cp.H * cp.W;
        else return cp.D * cp.hw.H * cp.hw.W;
    }

    __device__ __forceinline__ TapIm2colLoader(const T* x, const typename Geo::Params& cp, int Cg, index_t M, int tid)
        : px(x, cp, Cg, M), col(tid % Cfg::BN), xb(x), ih0(0), iw0(0), col_ok(false), HWi(channel_stride(cp)),
          chan0((tid / Cfg::BN) * L), cleft(0), ih(0), iw(0), s(0), coff(0), step_h(px.tap_dh), step_w(px.tap_dw), whole(true) {
        if constexpr (ND == 3) {
            this->id = 0;
            this->r = 0;
            this->step_d = px.tap_dd;
        }
        // float16: held in registers; left to itself ptxas re-derives the signed steps from the parameters
        // (flip ? -d : d) at every tap change, 8 instructions in the main loop (TcKind::HOLD_TAP_STEPS).
        if constexpr (Kind::HOLD_TAP_STEPS) {
            if constexpr (ND >= 2) opaque_int(step_h);  // (1-D: no row step to hold)
            opaque_int(step_w);
            if constexpr (ND == 3) opaque_int(this->step_d);
        }
        GPUCONV_UNROLL
        for (int t = 0; t < 4; ++t)
            woff[t] = Cfg::LayoutB::quad((tid / Cfg::BN) * Cfg::B_KSTEPS, col / 16, col % 8, t) + 2 * ((col / 8) % 2);
    }

    __device__ __forceinline__ void begin_tile(index_t m0, int g) {
        col_ok = (index_t)col < px.M - m0;
        if (col_ok) {
            if constexpr (ND == 1) xb = px.x + px.pixel_origin(m0 + col, g, iw0);
            else if constexpr (ND == 2) xb = px.x + px.pixel_origin(m0 + col, g, ih0, iw0);
            else xb = px.x + px.pixel_origin(m0 + col, g, this->id, ih0, iw0);  // id: tap (0, 0, 0)'s depth
        }
        // The state of a tap "before" tap (0, 0), with no channels left: the first fetch() steps to channel
        // 0 of tap (0, 0) (s = -1 -> 0, iw0 - tap_dw -> iw0; S >= 1, so s never wraps there). 3-D: filter
        // row 0 of depth tap 0 (id as pixel_origin set it); 1-D: iw alone.
        cleft = Cfg::BK;
        coff = 0;
        ih = ih0;
        iw = iw0 - px.tap_dw;
        s = -1;
        if constexpr (ND == 3) this->r = 0;
        // BY_KSTEP stages stale values of v (then overwrites them): defined here, once per tile, so that v
        // is not live across the epilogue (ptxas spilled there when v was defined once per kernel).
        if constexpr (BY_KSTEP) {
            GPUCONV_UNROLL
            for (int i = 0; i < L; ++i) v[i] = Kind::zero();
        }
    }

    __device__ __forceinline__ void fetch(int) {
        cleft -= Cfg::BK;
        coff += Cfg::BK * HWi;
        if (cleft <= 0) {  // next tap: s fastest, then r, then t (w's order of ([t,] [r,] s))
            cleft = px.Cg;
            coff = chan0 * HWi;
            iw += step_w;
            if constexpr (ND >= 2) {  // (1-D: the taps are the filter columns; iw steps, nothing wraps)
                if (++s == px.S) {
                    s = 0;
                    iw = iw0;
                    if constexpr (ND == 3) {
                        if (++this->r == px.R) {  // next depth tap (t never wraps: the host's slice count)
                            this->r = 0;
                            ih = ih0;
                            this->id += this->step_d;
                        } else {
                            ih += step_h;
                        }
                    } else {
                        ih += step_h;
                    }
                }
            }
        }
        const int lim = limit();
        const int live = lim < 0 ? 0 : lim < L ? lim : L;
        whole = live == L;
        // BY_KSTEP: only k-steps whose KSTEP channels all exist are loaded here, one predicate per k-step
        // instead of a compare per element, and no register clear per element; the other k-steps keep
        // stale values, which stage() stages and then overwrites (stage_tail: a k-step's remaining
        // channels, zeros). Otherwise each element is loaded or zeroed here.
        const int ks_live = live / Cfg::KSTEP;
        // int offset within the image's group of channels (the host's rule: ceil(Cg/BK)*BK * H*W < 2^31).
        // Formed whether or not the tap is in the image (no select): with live = 0 nothing is read through it.
        const T* p = opaque_pointer(run_start());
        GPUCONV_UNROLL
        for (int i = 0; i < L; ++i) {
            if constexpr (BY_KSTEP) {
                if (i / Cfg::KSTEP < ks_live) v[i] = Kind::load(p);
            } else {
                v[i] = i < lim ? Kind::load(p) : Kind::zero();
            }
            p = Kind::OPAQUE_STEP ? opaque_pointer(p + HWi) : p + HWi;
        }
    }

    // Halo / bounds, once per slice: a tap in the padding (or past the padded edge) reads 0 for all the
    // run's channels, as does a column past the last pixel; x is never read outside the image. The
    // unsigned compares also reject negative coordinates (top / left padding). So of the run, the channels
    // below limit() exist (it may be negative or past L).
    __device__ __forceinline__ int limit() const {
        bool ok;
        if constexpr (ND == 1) {
            ok = col_ok && (unsigned)iw < (unsigned)px.W;  // no row
        } else if constexpr (ND == 2) {
            ok = col_ok && (unsigned)ih < (unsigned)px.H && (unsigned)iw < (unsigned)px.W;
        } else {
            ok = col_ok && (unsigned)this->id < (unsigned)px.D && (unsigned)ih < (unsigned)px.H
                 && (unsigned)iw < (unsigned)px.W;
        }
        return ok ? cleft - chan0 : 0;
    }

    // x at this slice's first channel of the run (position ([id,] [ih,] iw) of the current tap). int: within
    // one image's group of channels (the host's rule), as the 2-D offset.
    __device__ __forceinline__ const T* run_start() const {
        if constexpr (ND == 1) return xb + (coff + iw);
        else if constexpr (ND == 2) return xb + (coff + ih * px.W + iw);
        else return xb + (coff + (this->id * px.H + ih) * px.W + iw);
    }

    __device__ __forceinline__ void stage(unsigned (*dst)[Cfg::B_LD]) {
        unsigned* buf = &dst[0][0];
        GPUCONV_UNROLL
        for (int k = 0; k < Cfg::B_KSTEPS; ++k) {
            GPUCONV_UNROLL
            for (int t = 0; t < 4; ++t) {
                uint2 q;
                q.x = Kind::word(v + k * Cfg::KSTEP, t);                   // k-step half hk = 0
                q.y = Kind::word(v + k * Cfg::KSTEP + 4 * Cfg::KPW, t);    // hk = 1
                *reinterpret_cast<uint2*>(buf + woff[t] + k * Cfg::LayoutB::KS_WORDS) = q;
            }
        }
        if constexpr (BY_KSTEP) {
            if (!whole) stage_tail(buf);
        }
    }

    // BY_KSTEP, a slice whose run does not exist whole (a tap's last slice when BK does not divide Cg, a
    // tap in the padding, a column past the last pixel): from k-step live / KSTEP on, stage() wrote stale
    // values; this rewrites them: that k-step's words from the run's channels that exist (loaded here) and
    // zeros, then zeros for the later k-steps. Same thread, same words, after stage()'s stores: program
    // order makes these win, and the slice loop's barrier after stage() publishes them. Rolled loops, run
    // only for such slices: the main loop's common path carries one predicate per k-step and no clears.
    __device__ __forceinline__ void stage_tail(unsigned* buf) const {
        static_assert(Cfg::KPW == 2 && Cfg::KSTEP == 16, "float16: 8 words per k-step and column, 4 tig x 2 hk");
        const int lim = limit();
        const int live = lim < 0 ? 0 : lim;  // (< L here)
        int k = live / Cfg::KSTEP;
        if (live % Cfg::KSTEP) {  // k-step k, channel 16 k + e: its value, or 0 past the run's last
            const unsigned x2 = (unsigned)(col % 8) & 6;  // 2 * FragLayout::slot's XOR for this column
            // float16 e of the k-step: word hk + 4 * (tig ^ xg) (hk = e / 8, tig = e % 8 / 2), half e % 2
            unsigned short* halves = reinterpret_cast<unsigned short*>(buf + (woff[0] - 2 * (int)x2) +
                                                                       k * Cfg::LayoutB::KS_WORDS);
            const T* q = run_start() + 16 * k * HWi;
            const int n = live - 16 * k;
#pragma unroll 1
            for (unsigned e = 0; e < 16; ++e) {
                halves[(((e & 6u) ^ x2) << 2) | ((e & 8u) >> 2) | (e & 1u)] =
                    (unsigned short)((int)e < n ? Kind::load(q) : Kind::zero());
                q += HWi;
            }
            ++k;
        }
#pragma unroll 1
        for (; k < Cfg::B_KSTEPS; ++k) {  // the later k-steps: zeros; this column's words (hk, tig) of k-step
            uint2 zero;                      // k are woff[0] - 4 xg + k * KS_WORDS + 4j + hk, j = tig ^ xg: all j
            zero.x = zero.y = 0u;
            unsigned* z = buf + (woff[0] - 4 * (int)(((unsigned)(col % 8) >> 1) & 3)) + k * Cfg::LayoutB::KS_WORDS;
            GPUCONV_UNROLL
            for (int j = 0; j < 4; ++j) *reinterpret_cast<uint2*>(z + 4 * j) = zero;
        }
    }
};

// ---------------------------------------------------------------------------------------------------
// The tensor-core accumulator for gemm_slices: warp w computes rows (w / WARPS_N) * WM .. + WM and columns
// (w % WARPS_N) * WN .. + WN of the block tile; this lane holds, of mma tile (i, j),
// d[i][j][2h + e] = C[row0 + 16i + gid + 8h][col0 + 8j + 2tig + e] (h, e in {0, 1}).
// ---------------------------------------------------------------------------------------------------
template <typename T, class Cfg>
struct WarpMmaTile {
    typedef TcKind<T> Kind;
    float d[Cfg::MT][Cfg::NT][4];
    int row0, col0, gid, tig;
    int fa, fb;  // this lane's first word in the A / B slice (k-step 0, the warp's first block)

    __device__ __forceinline__ explicit WarpMmaTile(int tid) {
        const int warp = tid / 32, lane = tid % 32;
        row0 = (warp / Cfg::WARPS_N) * Cfg::WM;
        col0 = (warp % Cfg::WARPS_N) * Cfg::WN;
        gid = lane >> 2;
        tig = lane & 3;
        fa = Cfg::LayoutA::quad(0, row0 / 16, gid, tig);
        fb = Cfg::LayoutB::quad(0, col0 / 16, gid, tig);
        GPUCONV_UNROLL
        for (int i = 0; i < Cfg::MT; ++i) {
            GPUCONV_UNROLL
            for (int j = 0; j < Cfg::NT; ++j) {
                GPUCONV_UNROLL
                for (int v = 0; v < 4; ++v) d[i][j][v] = 0.0f;
            }
        }
    }

    // One staged slice: per k-step one 128-bit load per mma tile row (A) and per two mma tile columns (B),
    // then MT x NT mma. Every thread calls this the same number of times (the mma is warp-collective, and
    // block-collective under the emulator); zero-filled rows / columns / channels add exact zeros.
    __device__ __forceinline__ void slice(const unsigned (*as)[Cfg::A_LD], const unsigned (*bs)[Cfg::B_LD]) {
        const unsigned* A = &as[0][0] + fa;
        const unsigned* B = &bs[0][0] + fb;
        GPUCONV_UNROLL
        for (int ks = 0; ks < Cfg::BK / Kind::KSTEP; ++ks) {
            uint4 qa[Cfg::MT], qb[Cfg::NT / 2];
            GPUCONV_UNROLL
            for (int i = 0; i < Cfg::MT; ++i)
                qa[i] = *reinterpret_cast<const uint4*>(A + ks * Cfg::LayoutA::KS_WORDS + 128 * i);
            GPUCONV_UNROLL
            for (int p = 0; p < Cfg::NT / 2; ++p)
                qb[p] = *reinterpret_cast<const uint4*>(B + ks * Cfg::LayoutB::KS_WORDS + 128 * p);
            GPUCONV_UNROLL
            for (int i = 0; i < Cfg::MT; ++i) {
                const unsigned a[4] = {qa[i].x, qa[i].y, qa[i].z, qa[i].w};
                GPUCONV_UNROLL
                for (int j = 0; j < Cfg::NT; ++j) {
                    const unsigned b[2] = {j % 2 ? qb[j / 2].z : qb[j / 2].x, j % 2 ? qb[j / 2].w : qb[j / 2].y};
                    Kind::mma(d[i][j], a, b);
                }
            }
        }
    }

    // Epilogue: y[n, k_first + row, p, q] = act(C + bias) for this lane's rows / columns that exist (as
    // RegisterTile::epilogue: rows < rows, columns < M - m0; 64-bit offsets). Lanes 4*gid .. 4*gid + 3 store 8
    // consecutive pixels of one filter row per mma tile.
    __device__ __forceinline__ void epilogue(const T* __restrict__ b, T* __restrict__ y, int has_bias, int act, int K,
                                          int k_first, int rows, index_t m0, index_t M, index_t PQ) const {
        float bias[Cfg::MT][2];
        GPUCONV_UNROLL
        for (int i = 0; i < Cfg::MT; ++i) {
            GPUCONV_UNROLL
            for (int h = 0; h < 2; ++h) {
                // b is read only for rows that exist and only when there is a bias (else the host passed w).
                const int row = row0 + 16 * i + gid + 8 * h;
                bias[i][h] = (has_bias && row < rows) ? load<T>(b + k_first + row) : 0.0f;
            }
        }
        GPUCONV_UNROLL
        for (int j = 0; j < Cfg::NT; ++j) {
            GPUCONV_UNROLL
            for (int e = 0; e < 2; ++e) {
                const int col = col0 + 8 * j + 2 * tig + e;
                // Columns past the last pixel (partial last tile) came from zero-filled B: not stored.
                if ((index_t)col >= M - m0) continue;
                const index_t n = (m0 + col) / PQ;
                const index_t pq = m0 + col - n * PQ;
                T* yc = y + (n * K + k_first) * PQ + pq;  // 64-bit: y may exceed 2^31 elements
                GPUCONV_UNROLL
                for (int i = 0; i < Cfg::MT; ++i) {
                    GPUCONV_UNROLL
                    for (int h = 0; h < 2; ++h) {
                        const int row = row0 + 16 * i + gid + 8 * h;
                        if (row < rows) {
                            float v = d[i][j][2 * h + e];
                            if (has_bias) v += bias[i][h];  // (only when there is one: keeps -0.0)
                            store<T>(yc + (index_t)row * PQ, activate(v, act));
                        }
                    }
                }
            }
        }
    }
};

// The tile loop: a 64-bit grid-stride walk over (group, pixel tile, filter tile) in gemm_tile.cuh's order
// (gemm_block_index), per tile the two tap-major loaders pointed at it, gemm_tile.cuh's double-buffered
// slice loop (gemm_slices) over the padded reduction of R*S*C_SLICES slices, then the epilogue. The trip
// counts depend only on blockIdx / gridDim and the geometry, so every thread reaches the same barriers.
template <typename T, class Cfg, class Geo = Im2colGeometry<T>>
__device__ __forceinline__ void tensor_core_conv(const T* __restrict__ x, const unsigned* __restrict__ wp,
                                                 const T* __restrict__ b, T* __restrict__ y,
                                                 const typename Geo::Params& gp, GemmSmem<unsigned, Cfg>& smem) {
    const ConvParams& cp = Geo::plane(gp);  // (3-D: the plane's; N, C, K, groups, bias and activation are there)
    const int tid = threadIdx.x;
    const int Cg = cp.C / cp.groups, Kg = cp.K / cp.groups;
    const int c_slices = Cg / Cfg::BK + (Cg % Cfg::BK != 0);
    const int slices = Geo::reduction(gp, 1) * c_slices;  // per tile: filter taps ([KD*][R*]S) x channel slices
    const index_t PQ = Geo::outputs_per_image(gp);  // (3-D: OD*P*Q)
    const index_t M = (index_t)cp.N * PQ;  // 64-bit: N*P*Q may exceed 2^31
    const index_t m_tiles = (M + Cfg::BN - 1) / Cfg::BN;
    const int k_tiles = (Kg + Cfg::BM - 1) / Cfg::BM;
    const index_t total = m_tiles * k_tiles * cp.groups;
    PackedWeightLoader<T, Cfg> wl(tid);
    TapIm2colLoader<T, Cfg, Geo> xl(x, gp, Cg, M, tid);
    for (index_t blk = blockIdx.x; blk < total; blk += gridDim.x) {
        const GemmBlockIndex bi = gemm_block_index(blk, k_tiles, m_tiles, Cfg::BM, Cfg::BN);
        const int rows = Kg - bi.k_begin < Cfg::BM ? Kg - bi.k_begin : Cfg::BM;
        const int k_first = bi.g * Kg + bi.k_begin;
        // The packed weights of (group g, filter tile k_begin / BM): slices * A_WORDS words each, in order.
        wl.begin_tile(wp + ((index_t)bi.g * k_tiles + bi.k_begin / Cfg::BM) * slices * Cfg::A_WORDS);
        xl.begin_tile(bi.m0, bi.g);
        WarpMmaTile<T, Cfg> acc(tid);
        // gemm_slices' reduction length: slices * BK (the host's rule keeps it below 2^31).
        gemm_slices<Cfg>(wl, xl, slices * Cfg::BK, smem, acc);
        acc.epilogue(b, y, cp.has_bias, cp.act, cp.K, k_first, rows, bi.m0, M, PQ);
    }
}

}  // namespace gpuconv
