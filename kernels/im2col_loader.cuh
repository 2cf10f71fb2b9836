// im2col_loader.cuh — the implicit GEMM's view of x: Im2colGeometry (the geometry and the decomposition of
// an output pixel, shared with conv2d_igemm_tc.cu's own gather) and Im2colLoader, conv2d_igemm.cu's B operand
// loader, which gathers a BK x BN slice of the im2col matrix from x on the fly, with stride, asymmetric
// padding (read as 0), dilation and flip in its index math, and plugs into gemm_tile.cuh's slice loop
// (fetch / stage; see the operand-loader contract there); implicit_gemm_conv, the igemm kernel's body.
#pragma once

#include "common.cuh"
#include "conv_params.cuh"
#include "gemm_tile.cuh"

namespace gpuconv {

// The convolution's geometry as the im2col gathers see it, and the one place an output pixel m is
// decomposed into its image and the input position of its first tap (Im2colLoader below, per pixel per
// tile; conv2d_igemm_tc.cu's TapIm2colLoader, one pixel per thread).
template <typename T>
struct Im2colGeometry {
    const T* x;
    int C, H, W, R, S, Cg, sh, sw, pt, pl, dh, dw, P, Q, flip, kred;
    int tap_dh, tap_dw;  // input step per filter tap: (dh, dw), or (-dh, -dw) with flip (see pixel_origin)
    index_t HW, PQ, M;

    // cp: the kernel's geometry; Cg = C / groups and M = N*P*Q as the kernel computed them.
    __device__ __forceinline__ Im2colGeometry(const T* x_, const ConvParams& cp, int Cg_, index_t M_)
        : x(x_), C(cp.C), H(cp.H), W(cp.W), R(cp.R), S(cp.S), Cg(Cg_), sh(cp.sh), sw(cp.sw), pt(cp.pt),
          pl(cp.pl), dh(cp.dh), dw(cp.dw), P(cp.P), Q(cp.Q), flip(cp.flip), kred(Cg_ * cp.R * cp.S),
          tap_dh(cp.flip ? -cp.dh : cp.dh), tap_dw(cp.flip ? -cp.dw : cp.dw), HW((index_t)cp.H * cp.W),
          PQ((index_t)cp.P * cp.Q), M(M_) {}

    // Output pixel m (< M) of group g: sets (ih, iw), the input row / column of the first tap the gather
    // walks from (negative inside the top / left padding), and returns the element offset of
    // x[n, g*Cg, 0, 0] (64-bit: x may exceed 2^31 elements).
    __device__ __forceinline__ index_t pixel_origin(index_t m, int g, int& ih, int& iw) const {
        const index_t n = m / PQ;
        const index_t pq = m - n * PQ;
        const int p = (int)(pq / Q);
        const int q = (int)(pq - (index_t)p * Q);
        // int: p*sh <= H + pt + pb - 1 - (R-1)*dh, which the host's 32-bit rule keeps below 2^31.
        ih = p * sh - pt;
        iw = q * sw - pl;
        if (flip) {
            // Flip: weight tap (r, s) pairs with input tap (R-1-r, S-1-s), i.e. row
            // ih + (R-1-r)*dh = (ih + (R-1)*dh) - r*dh: start at the last tap and step backwards
            // (the gathers use the signed steps tap_dh / tap_dw), so the gather itself is flip-free.
            ih += (R - 1) * dh;
            iw += (S - 1) * dw;
        }
        return ((index_t)n * C + (index_t)g * Cg) * HW;
    }
};

// The B operand of the implicit GEMM: B[kr, m] = x[n, g*Cg + c, p*sh - pt + r'*dh, q*sw - pl + s'*dw]
// with kr = (c*R + r)*S + s, m = (n*P + p)*Q + q, (r', s') = (r, s), or (R-1-r, S-1-s) with flip (true
// convolution pairs weight tap (r, s) with the mirrored input tap), and 0 outside the image (padding).
//
// Thread t loads one row of each slice, row0 = t / CW, at LOADS pixel columns t % CW + j * CW (j < LOADS,
// CW = THREADS / BK column threads): consecutive threads read consecutive pixels (coalesced along W for
// stride 1), and the tap (c, r, s) of the row -- with its offsets -- is worked out once per slice for all
// of the thread's LOADS pixels. Each pixel's decomposition is done once per tile (begin_tile).
//
// No division in the main loop: the tap of row0 is found by one division pair per tile and then advanced
// by BK taps per slice with a constant carry step (BK as (step_c, step_r, step_s), found once per launch in
// the constructor). This is why fetch() must be called for k0 = k_start, k_start + BK, ... in that order,
// once each, after begin_tile(m0, g, k_start) (gemm_slice_range does exactly that; k_start = 0 but for
// split-K's later splits).
template <typename T, class Cfg>
struct Im2colLoader : Im2colGeometry<T> {
    typedef typename acc_type<T>::type A;
    typedef Im2colGeometry<T> Geo;
    using Geo::x; using Geo::H; using Geo::W; using Geo::R; using Geo::S; using Geo::dh; using Geo::flip;
    using Geo::kred; using Geo::tap_dh; using Geo::tap_dw; using Geo::HW; using Geo::M;
    static constexpr int BN = Cfg::BN, BK = Cfg::BK;
    static constexpr int LOADS = BK * BN / Cfg::THREADS;  // pixels per thread per slice (all in one row)
    static constexpr int CW = Cfg::THREADS / BK;          // threads per row of a slice
    static_assert(Cfg::THREADS % BK == 0 && CW * LOADS == BN, "pattern must tile BK x BN exactly");

    int col, row0;  // this thread's first column of the tile and its row of each slice
    int step_r, step_s;  // BK taps = step_c channels + step_r filter rows + step_s filter columns
    index_t step_c_off;  // step_c * H*W (0 <= step_r < R, 0 <= step_s < S)
    // per tile:
    index_t coff;   // c * H*W for the tap (c, r, s) of the next slice's row row0
    int r, s;
    // per tile and pixel j: the address of x[n, g*Cg, ih0, iw0] (outside x when (ih0, iw0) lies in the
    // padding; only addresses of taps inside the image are ever read), and the input row / column of tap (0, 0) (negative inside the top /
    // left padding). A pixel past M (a partial last tile) gets a row ih0 that every tap puts above the
    // image (ih0 + dih <= -1 for every tap row offset dih), so it reads nothing.
    const char* pix[LOADS];
    int ih0[LOADS], iw0[LOADS];
    A regs[LOADS];

    __device__ __forceinline__ Im2colLoader(const T* x_, const ConvParams& cp, int Cg_, index_t M_, int tid)
        : Geo(x_, cp, Cg_, M_), col(tid % CW), row0(tid / CW), coff(0), r(0), s(0) {
        const int RS = R * S;
        const int step_c = BK / RS;
        step_r = (BK - step_c * RS) / S;
        step_s = BK - step_c * RS - step_r * S;
        step_c_off = (index_t)step_c * HW;
    }

    // k_start: the reduction index of the first fetch (a multiple of BK; > 0 for split-K's later splits).
    __device__ __forceinline__ void begin_tile(index_t m0, int g, int k_start = 0) {
        GPUCONV_UNROLL
        for (int j = 0; j < LOADS; ++j) {
            // Tap row offsets dih are r * dh in [0, (R-1)*dh], or -r * dh with flip: -1 less the largest.
            // (R-1)*dh < 2^31 (the host's 32-bit rule), so this and ih0 + dih stay within int.
            ih0[j] = flip ? -1 : -(R - 1) * dh - 1;
            iw0[j] = 0;
            pix[j] = reinterpret_cast<const char*>(x);
            const index_t m = m0 + col + j * CW;
            if (m >= M) continue;  // past M: the sentinel row above, nothing is read
            int ih, iw;
            const index_t image = this->pixel_origin(m, g, ih, iw);
            ih0[j] = ih;
            iw0[j] = iw;
            const index_t off = image + (index_t)ih * W + iw;
            pix[j] = reinterpret_cast<const char*>(x) + off * (index_t)sizeof(T);
        }
        // The tap of reduction row k_start + row0 (when it is >= kred, fetch reads nothing): one division
        // pair per tile, unsigned: k_start + row0 < kred + BK <= INT_MAX + BK fits 32 unsigned bits.
        const unsigned RS = (unsigned)(R * S);
        const unsigned kr = (unsigned)k_start + (unsigned)row0;
        const unsigned c = kr / RS;
        r = (int)((kr - c * RS) / (unsigned)S);
        s = (int)(kr - c * RS - (unsigned)r * (unsigned)S);
        coff = (index_t)c * HW;
    }

    __device__ __forceinline__ void fetch(int k0) {
        // The row exists iff row0 < kred - k0 (rows past kred, the reduction tail, read 0; this form cannot
        // overflow where k0 + row0 < kred could: k0 < kred <= INT_MAX).
        const bool row_ok = row0 < kred - k0;
        const int dih = r * tap_dh, diw = s * tap_dw;
        // Offset (bytes) of tap (c, r, s) from each pixel's tap (0, 0) of channel 0: the same for every pixel.
        index_t off = (coff + (index_t)dih * W + diw) * (index_t)sizeof(T);
#if !defined(GPUCONV_EMULATED)
        // Formed once per slice: opaque to the compiler from here, so it is not re-formed (a 64-bit
        // multiply-add) inside each of the LOADS predicated loads below.
        asm("mov.b64 %0, %0;" : "+l"(off));
#endif
        GPUCONV_UNROLL
        for (int j = 0; j < LOADS; ++j) {
            A v = A(0);
            const int ih = ih0[j] + dih;
            const int iw = iw0[j] + diw;
            // Halo / bounds: taps that land in the padding (or, for a filter reaching past the padded
            // edge, beyond it) read 0 by definition; x is never read outside the image. The unsigned
            // compare also rejects negative coordinates (top / left padding).
            if (row_ok && (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W)
                v = load<T>(reinterpret_cast<const T*>(pix[j] + off));
            regs[j] = v;
        }
        // The next slice's row: BK taps further, = (step_c, step_r, step_s) with two carries.
        coff += step_c_off;
        s += step_s;
        if (s >= S) {
            s -= S;
            ++r;
        }
        r += step_r;
        if (r >= R) {
            r -= R;
            coff += HW;
        }
    }

    // Every (row, col) of the slice is written by exactly one thread (zeros included).
    __device__ __forceinline__ void stage(A (*dst)[Cfg::B_LD]) {
        GPUCONV_UNROLL
        for (int j = 0; j < LOADS; ++j) dst[row0][col + j * CW] = Cfg::staged(regs[j]);
    }
};

// One launch of an implicit-GEMM convolution: the GEMM's sizes from the geometry, then gemm_tile.cuh's
// grid-stride loop over output tiles with Im2colLoader as the B operand and Tile doing the products
// (RegisterTile on CUDA cores in conv2d_igemm; conv2d_igemm_tc has a pipeline of its own). The host
// launches exactly Cfg::THREADS threads in x.
// Split-K (SPLIT): `splits` ranges of `split_slices` slices each, partial sums into ws (gemm_conv_tiles).
template <typename T, class Cfg, class Tile, class Smem, bool SPLIT = false>
__device__ __forceinline__ void implicit_gemm_conv(const T* x, const T* w, const T* b, T* y, const ConvParams& cp,
                                                   int vec_w, Smem& smem, int splits = 1, int split_slices = 0,
                                                   typename acc_type<T>::type* ws = nullptr) {
    const int tid = threadIdx.x;
    const int Cg = cp.C / cp.groups;
    const int kred = Cg * cp.R * cp.S;  // the host's 32-bit rule keeps this below 2^31
    const index_t PQ = (index_t)cp.P * cp.Q;
    const index_t M = (index_t)cp.N * PQ;  // 64-bit: N*P*Q may exceed 2^31

    Im2colLoader<T, Cfg> xl(x, cp, Cg, M, tid);
    gemm_conv_tiles<T, Cfg, Tile, Im2colLoader<T, Cfg>, SPLIT>(w, b, y, xl, smem, kred, cp.K, cp.groups, M, PQ,
                                                              vec_w, cp.has_bias, cp.act, tid, splits,
                                                              split_slices, ws);
}

}  // namespace gpuconv
