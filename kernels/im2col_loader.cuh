// im2col_loader.cuh — the B operand loader of the implicit-GEMM conv kernels (conv2d_igemm.cu on CUDA
// cores, conv2d_igemm_tc.cu on tensor cores): gathers a BK x BN slice of the im2col matrix from x on the fly,
// with stride, asymmetric padding (read as 0), dilation and flip in its index math. Plugs into gemm_tile.cuh's
// slice loop (fetch / stage; see the operand-loader contract there).
#pragma once

#include "common.cuh"
#include "conv_params.cuh"
#include "gemm_tile.cuh"

namespace gpuconv {

// The B operand of the implicit GEMM: B[kr, m] = x[n, g*Cg + c, p*sh - pt + r'*dh, q*sw - pl + s'*dw]
// with kr = (c*R + r)*S + s, m = (n*P + p)*Q + q, (r', s') = (r, s), or (R-1-r, S-1-s) with flip (true
// convolution pairs weight tap (r, s) with the mirrored input tap), and 0 outside the image (padding).
//
// Thread t always loads column t % BN of the tile (so its pixel's decomposition is done once per tile, and
// consecutive threads read consecutive pixels: coalesced along W for stride 1) and LOADS consecutive rows
// (t / BN) * LOADS + i, i < LOADS, of each slice.
//
// No division in the main loop: the tap (c, r, s) of the thread's first row is found by one division pair
// per tile (begin_tile) and then advanced by BK taps per slice with the constant carry step (BK as
// (dc, dr, ds), found once per launch in the constructor); within a slice the rows step by one tap. This is
// why fetch() must be called for k0 = 0, BK, 2*BK, ... in that order, once each, after begin_tile()
// (gemm_slices does exactly that).
template <typename T, class Cfg>
struct Im2colLoader {
    typedef typename acc_type<T>::type A;
    static constexpr int BN = Cfg::BN, BK = Cfg::BK;
    static constexpr int LOADS = BK * BN / Cfg::THREADS;  // rows per thread per slice
    static_assert(Cfg::THREADS % BN == 0 && (BK * BN) % Cfg::THREADS == 0, "pattern must tile BK x BN exactly");

    const T* x;
    int C, H, W, R, S, Cg, sh, sw, pt, pl, dh, dw, P, Q, flip, kred;
    int tap_dh, tap_dw;  // input step per filter tap: (dh, dw), or (-dh, -dw) with flip (see begin_tile)
    index_t HW, PQ, M;
    int col, row0;  // this thread's column of the tile and first row of each slice
    int step_r, step_s;  // BK taps = step_c channels + step_r filter rows + step_s filter columns
    index_t step_c_off;  // step_c * H*W (0 <= step_r < R, 0 <= step_s < S)
    // per tile:
    const T* xc;    // x + (n*C + g*Cg + c) * H*W: channel c of this pixel's image and group, c = the tap of
                    // the next slice's first row (row0)
    int r, s;       // filter row / column of that tap
    int ih0, iw0;   // input row / column of tap (0, 0) (negative inside the top / left padding)
    bool col_ok;    // the pixel exists (a partial last tile has columns past M)
    A regs[LOADS];

    // cp: the kernel's geometry; Cg = C / groups and M = N*P*Q as the kernel computed them.
    __device__ __forceinline__ Im2colLoader(const T* x_, const ConvParams& cp, int Cg_, index_t M_, int tid)
        : x(x_), C(cp.C), H(cp.H), W(cp.W), R(cp.R), S(cp.S), Cg(Cg_), sh(cp.sh), sw(cp.sw), pt(cp.pt),
          pl(cp.pl), dh(cp.dh), dw(cp.dw), P(cp.P), Q(cp.Q), flip(cp.flip), kred(Cg_ * cp.R * cp.S),
          tap_dh(cp.flip ? -cp.dh : cp.dh), tap_dw(cp.flip ? -cp.dw : cp.dw), HW((index_t)cp.H * cp.W),
          PQ((index_t)cp.P * cp.Q), M(M_), col(tid % BN), row0((tid / BN) * LOADS),
          xc(x_), r(0), s(0), ih0(0), iw0(0), col_ok(false) {
        const int RS = R * S;
        const int step_c = BK / RS;
        step_r = (BK - step_c * RS) / S;
        step_s = BK - step_c * RS - step_r * S;
        step_c_off = (index_t)step_c * HW;
    }

    __device__ __forceinline__ void begin_tile(index_t m0, int g) {
        col_ok = (index_t)col < M - m0;
        if (!col_ok) return;  // fetch() reads nothing for this column; the other members stay unused
        const index_t m = m0 + col;
        const index_t n = m / PQ;
        const index_t pq = m - n * PQ;
        const int p = (int)(pq / Q);
        const int q = (int)(pq - (index_t)p * Q);
        // The tap of row row0 (< BK <= any kred it is used with, else fetch reads nothing).
        const int RS = R * S;
        const int c = row0 / RS;
        r = (row0 - c * RS) / S;
        s = row0 - c * RS - r * S;
        xc = x + ((index_t)n * C + (index_t)g * Cg + c) * HW;  // 64-bit: x may exceed 2^31 elements
        // int: p*sh <= H + pt + pb - 1 - (R-1)*dh, which the host's 32-bit rule keeps below 2^31.
        ih0 = p * sh - pt;
        iw0 = q * sw - pl;
        if (flip) {
            // Flip: weight tap (r, s) pairs with input tap (R-1-r, S-1-s), i.e. row
            // ih0 + (R-1-r)*dh = (ih0 + (R-1)*dh) - r*dh: start at the last tap and step backwards
            // (fetch() uses the signed steps tap_dh / tap_dw), so the gather itself is flip-free.
            ih0 += (R - 1) * dh;
            iw0 += (S - 1) * dw;
        }
    }

    __device__ __forceinline__ void fetch(int k0) {
        // Rows at or past kred (the reduction tail of the last slice) read 0: row i exists iff i < rem
        // (`kred - k0` cannot overflow where `k0 + row0 < kred` could; k0 < kred <= INT_MAX). A column
        // past M reads nothing at all.
        const int rem = col_ok ? kred - k0 - row0 : 0;
        const T* p = xc;
        int rr = r, ss = s;
        GPUCONV_UNROLL
        for (int i = 0; i < LOADS; ++i) {
            A v = A(0);
            const int ih = ih0 + rr * tap_dh;
            const int iw = iw0 + ss * tap_dw;
            // Halo / bounds: taps that land in the padding (or, for a filter reaching past the padded
            // edge, beyond it) read 0 by definition; x is never read outside the image. The unsigned
            // compare also rejects negative coordinates (top / left padding).
            // Inside the image ih and iw are >= 0: the offset is formed unsigned (one wide multiply-add,
            // exact in 64 bits), cheaper than a signed 64-bit product.
            if (i < rem && (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W)
                v = load<T>(p + ((unsigned long long)(unsigned)ih * (unsigned)W + (unsigned)iw));
            regs[i] = v;
            // Next tap: s fastest, then r, then c (the order of kr and of w's layout).
            if (++ss == S) {
                ss = 0;
                if (++rr == R) {
                    rr = 0;
                    p += HW;
                }
            }
        }
        // The next slice's first row: BK taps further, = (step_c, step_r, step_s) with two carries.
        xc += step_c_off;
        s += step_s;
        if (s >= S) {
            s -= S;
            ++r;
        }
        r += step_r;
        if (r >= R) {
            r -= R;
            xc += HW;
        }
    }

    // Every (row, col) of the slice is written by exactly one thread (zeros included).
    __device__ __forceinline__ void stage(A (*dst)[Cfg::B_LD]) {
        GPUCONV_UNROLL
        for (int i = 0; i < LOADS; ++i) dst[row0 + i][col] = Cfg::staged(regs[i]);
    }
};

// One launch of an implicit-GEMM convolution: the GEMM's sizes from the geometry, then gemm_tile.cuh's
// grid-stride loop over output tiles with Im2colLoader as the B operand and Tile doing the products
// (RegisterTile on CUDA cores in conv2d_igemm, WarpMmaTile on tensor cores in conv2d_igemm_tc). The host
// launches exactly Cfg::THREADS threads in x.
template <typename T, class Cfg, class Tile, class Smem>
__device__ __forceinline__ void implicit_gemm_conv(const T* x, const T* w, const T* b, T* y, const ConvParams& cp,
                                                   int vec_w, Smem& smem) {
    const int tid = threadIdx.x;
    const int Cg = cp.C / cp.groups;
    const int kred = Cg * cp.R * cp.S;  // the host's 32-bit rule keeps this below 2^31
    const index_t PQ = (index_t)cp.P * cp.Q;
    const index_t M = (index_t)cp.N * PQ;  // 64-bit: N*P*Q may exceed 2^31

    Im2colLoader<T, Cfg> xl(x, cp, Cg, M, tid);
    gemm_conv_tiles<T, Cfg, Tile>(w, b, y, xl, smem, kred, cp.K, cp.groups, M, PQ, vec_w, cp.has_bias, cp.act,
                                  tid);
}

}  // namespace gpuconv
