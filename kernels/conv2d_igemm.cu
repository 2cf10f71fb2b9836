// conv2d_igemm.cu — implicit-GEMM convolution (no im2col buffer in global memory).
//
// Kernel in this file:
//   conv2d_igemm<T, BM, BN, BK, TM, TN>: per conv group, y is the (Kg filters) x (M = N*P*Q pixels) product
//       of the group's weights (Kg x Cg*R*S, read as stored) and the im2col matrix (Cg*R*S x M), whose
//       elements the block gathers from x on the fly (stride, asymmetric padding -> 0, dilation and flip in
//       the gather's index math); the GEMM tiling (double-buffered shared slices of BK, TM x TN register
//       tile per thread) is gemm_tile.cuh's, shared with conv2d_gemm1x1.cu. Covers every geometry
//       conv2d_direct does: stride, asymmetric padding, dilation, groups/depthwise, flip, bias, activation.
//   Tile configs the host instantiates (gpuconv/_cuda/conv_igemm.py, gemm_tile_for): "large" BM = BN = 128,
//       BK = 8, TM = TN = 8 (float32 / float16, groups with more than 64 filters and enough tiles to fill the
//       GPU), "small" BM = BN = 64, BK = 8, TM = TN = 4 (float64 always, everything else otherwise).
//   Launch shape: 1-D block of (BM/TM) * (BN/TN) = 256 threads (both configs); 1-D grid over
//       groups * ceil(M / BN) * ceil(Kg / BM) tiles, walked by a 64-bit grid-stride loop so the host may cap
//       the grid. Extra parameter vec_w: 1 when the host found Cg*R*S % 4 == 0 and w aligned for 4-wide
//       loads (Vec4 in gemm_tile.cuh), else 0.
//   Shared memory: static, 2 * BK * (BM + 4 + BN) * sizeof(acc_type<T>) bytes = 16,640 (large, float32 and
//       float16), 8,448 (small, float32 and float16), 16,896 (small, float64).
//   Registers (NVRTC 12.9, sm_75..sm_90, no spills; tests/test_nvrtc_compile.py prints them): __launch_bounds__
//       asks for 1 block per SM with the 8x8 thread tile (150-220 registers) and 2 with the 4x4 tile
//       (<= 128), see gemm_min_blocks_per_sm in gemm_tile.cuh.
//   Measured speed: not yet measured on a GPU.
//
// Semantics: exactly conv2d_direct's (see conv2d_direct.cu and shared/semantics.md). float16 is stored in
// shared memory and accumulated as float32.
#include "common.cuh"
#include "gemm_tile.cuh"

namespace gpuconv {

// The B operand of the implicit GEMM: B[kr, m] = x[n, g*Cg + c, p*sh - pt + r'*dh, q*sw - pl + s'*dw]
// with kr = (c*R + r)*S + s, m = (n*P + p)*Q + q, (r', s') = (r, s), or (R-1-r, S-1-s) with flip (true
// convolution pairs weight tap (r, s) with the mirrored input tap), and 0 outside the image (padding).
//
// Thread t always loads column t % BN of the tile (so its pixel's decomposition is done once per tile, and
// consecutive threads read consecutive pixels: coalesced along W for stride 1) and LOADS consecutive rows
// (t / BN) * LOADS + i, i < LOADS, of each slice: one division pair per slice finds the first row's
// (c, r, s), the following ones step by one tap.
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
    // per tile:
    const T* xb;    // x + (n*C + g*Cg) * H*W: the first channel of this pixel's image and group
    int ih0, iw0;   // input row / column of tap (0, 0) (negative inside the top / left padding)
    bool col_ok;    // the pixel exists (a partial last tile has columns past M)
    A regs[LOADS];

    __device__ __forceinline__ Im2colLoader(const T* x_, int C_, int H_, int W_, int R_, int S_, int Cg_, int sh_,
                                            int sw_, int pt_, int pl_, int dh_, int dw_, int P_, int Q_,
                                            int flip_, index_t M_, int tid)
        : x(x_), C(C_), H(H_), W(W_), R(R_), S(S_), Cg(Cg_), sh(sh_), sw(sw_), pt(pt_), pl(pl_), dh(dh_),
          dw(dw_), P(P_), Q(Q_), flip(flip_), kred(Cg_ * R_ * S_), tap_dh(flip_ ? -dh_ : dh_),
          tap_dw(flip_ ? -dw_ : dw_), HW((index_t)H_ * W_),
          PQ((index_t)P_ * Q_), M(M_), col(tid % BN), row0((tid / BN) * LOADS),
          xb(x_), ih0(0), iw0(0), col_ok(false) {}

    __device__ __forceinline__ void begin_tile(index_t m0, int g) {
        col_ok = (index_t)col < M - m0;
        if (!col_ok) return;  // fetch() reads nothing for this column; the other members stay unused
        const index_t m = m0 + col;
        const index_t n = m / PQ;
        const index_t pq = m - n * PQ;
        const int p = (int)(pq / Q);
        const int q = (int)(pq - (index_t)p * Q);
        xb = x + ((index_t)n * C + (index_t)g * Cg) * HW;  // 64-bit: x may exceed 2^31 elements
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
        // Rows at or past kred (the reduction tail of the last slice) read 0; `row0 < kred - k0` cannot
        // overflow where `k0 + row0 < kred` could (k0 < kred <= INT_MAX).
        int c = 0, r = 0, s = 0;
        if (row0 < kred - k0) {
            const int kr = k0 + row0;
            const int RS = R * S;
            c = kr / RS;
            const int rs = kr - c * RS;
            r = rs / S;
            s = rs - r * S;
        }
        GPUCONV_UNROLL
        for (int i = 0; i < LOADS; ++i) {
            A v = A(0);
            if (col_ok && row0 + i < kred - k0) {
                const int ih = ih0 + r * tap_dh;
                const int iw = iw0 + s * tap_dw;
                // Halo / bounds: taps that land in the padding (or, for a filter reaching past the padded
                // edge, beyond it) read 0 by definition; x is never read outside the image. The unsigned
                // compare also rejects negative coordinates (top / left padding).
                if ((unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W)
                    v = load<T>(xb + (index_t)c * HW + (index_t)ih * W + iw);
            }
            regs[i] = v;
            // Next tap: s fastest, then r, then c (the order of kr and of w's layout).
            if (++s == S) {
                s = 0;
                if (++r == R) {
                    r = 0;
                    ++c;
                }
            }
        }
    }

    // Every (row, col) of the slice is written by exactly one thread (zeros included).
    __device__ __forceinline__ void stage(A (*dst)[Cfg::BN]) {
        GPUCONV_UNROLL
        for (int i = 0; i < LOADS; ++i) dst[row0 + i][col] = regs[i];
    }
};

template <typename T, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), gemm_min_blocks_per_sm(TM, TN))
conv2d_igemm(const T* __restrict__ x,   // (N, C, H, W), C-contiguous
             const T* __restrict__ w,   // (K, Cg, R, S), C-contiguous
             const T* __restrict__ b,   // (K,) when has_bias, else any valid pointer (unread)
             T* __restrict__ y,         // (N, K, P, Q), C-contiguous, fully written
             int N, int C, int H, int W, int K, int R, int S, int groups,
             int sh, int sw, int pt, int pl, int dh, int dw, int P, int Q,
             int flip, int has_bias, int act,
             int vec_w) {  // 1: 4-wide weight loads (host checked Cg*R*S % 4 == 0 and w's alignment)
    typedef GemmTileConfig<BM, BN, BK, TM, TN> Cfg;
    __shared__ GemmSmem<typename acc_type<T>::type, Cfg> smem;

    // The host launches exactly Cfg::THREADS threads in x.
    const int tid = threadIdx.x;
    const int Cg = C / groups;
    const int kred = Cg * R * S;  // the host's 32-bit rule keeps this below 2^31
    const index_t PQ = (index_t)P * Q;
    const index_t M = (index_t)N * PQ;  // 64-bit: N*P*Q may exceed 2^31

    Im2colLoader<T, Cfg> xl(x, C, H, W, R, S, Cg, sh, sw, pt, pl, dh, dw, P, Q, flip, M, tid);
    gemm_conv_tiles<T, Cfg>(w, b, y, xl, smem, kred, K, groups, M, PQ, vec_w, has_bias, act, tid);
}

}  // namespace gpuconv
