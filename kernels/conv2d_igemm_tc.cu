// conv2d_igemm_tc.cu — implicit-GEMM convolution with the products on tensor cores (TF32 for float32,
// float16 with float32 accumulation).
//
// Kernel in this file:
//   conv2d_igemm_tc<T, BM, BN, WARPS_M, WARPS_N>: conv2d_igemm's GEMM — per conv group, (Kg filters) x
//       (M = N*P*Q pixels), the reduction Cg*R*S gathered from x on the fly by Im2colLoader (im2col_loader.cuh)
//       — with the same double-buffered shared slices (gemm_tile.cuh: GemmWeightLoader, gemm_slices,
//       gemm_conv_tiles; BK = 16), but the block's (WARPS_M x WARPS_N) warps each compute a
//       (BM/WARPS_M) x (BN/WARPS_N) warp tile made of 16x8 mma tiles (tensor_core.cuh), whose fragments the
//       lanes read straight from the staged slices. Covers every geometry conv2d_igemm does.
//   T = float: mma m16n8k8 on TF32 operands (each weight and input value rounded to 10 mantissa bits with
//       cvt.rna as the loaders stage it into shared memory), float32 products and sums: what cuDNN and
//       PyTorch compute for float32 when TF32 is allowed. T = half: mma m16n8k16 on the float16 values
//       themselves (exact), float32 accumulation, as conv2d_igemm's float16 path.
//   Tile configs the host instantiates (gpuconv/_cuda/conv_igemm_tc.py): "large" BM = BN = 128, 2 x 4 warps
//       (64 x 32 outputs per warp: 4 x 4 mma tiles, 64 accumulators per thread); "small" BM = BN = 64, 2 x 4
//       warps (32 x 16 per warp: 2 x 2 mma tiles). Chosen by the same rule as conv2d_igemm's tiles.
//   Parameters: the pointers x, w, b, y, then the geometry as one ConvParams cp passed by value
//       (kernels/conv_params.cuh: N, C, H, W, K, R, S, groups, sh, sw, pt, pl, dh, dw, P, Q, flip, has_bias,
//       act; the host fills it with gpuconv/_cuda/abi.py conv_kernel_args), then vec_w (below).
//   Launch shape: 1-D block of 256 threads; 1-D grid over groups * ceil(M / BN) * ceil(Kg / BM) tiles with a
//       64-bit grid-stride loop. Extra parameter vec_w as conv2d_igemm (4-wide weight loads).
//   Shared memory: static, 2 * 16 * (BM + 8 + BN + 8) * 4 bytes = 34,816 (large), 18,432 (small), float for
//       both types (the float16 operands are packed back to float16 pairs, exactly, as fragments are built).
//   Registers (NVRTC 12.9 and 13.5, no spills; tests/test_nvrtc_compile.py prints them): large 202-220 on
//       sm_80..sm_90, 234-245 on sm_100 / sm_120 (__launch_bounds__ asks for 1 block per SM, as
//       conv2d_igemm's 8x8 tile), small 105-123 (2 per SM).
//   Needs compute capability 8.0 (Ampere) or newer: below sm_80 the mma bodies are __trap() and the host
//       declines the device. Under the CPU emulator the mma is emulated (tests/emulator/cuda_compat.h).
//   Measured speed: the README's Benchmarks section (bench/results/, one file per device).
//
// Semantics: conv2d_direct's (see conv2d_direct.cu and docs/semantics.md) for indexing, padding, bias,
// activation and NaN / inf, but not its float32 arithmetic: TF32 operands carry 11 significant bits, so
// float32 results agree with the float32 convolution to about 1e-3 relative to the sum of |terms|. The host
// runs this kernel only when asked for by name, or from algo='auto' when the user has allowed tensor cores.
#include "common.cuh"
#include "conv_params.cuh"
#include "gemm_tile.cuh"
#include "im2col_loader.cuh"
#include "tensor_core.cuh"

namespace gpuconv {

// Per storage type T: what a loader stages (staged) and the fragments of one mma from the staged slices:
// as[kk][row] = A[row][kk] (A^T, gemm_tile.cuh), bs[kk][col] = B[kk][col]. `row` / `col` is the mma tile's
// first row / column within the block tile, `kk` its first reduction index within the slice; layouts per
// lane as in tensor_core.cuh.
template <typename T> struct TensorCoreMma;

template <> struct TensorCoreMma<float> {  // TF32, m16n8k8
    static constexpr int K = 8;
    // Rounded to TF32 as it enters shared memory (once per element, not once per fragment read); the
    // fragments then take the staged bits as they are.
    __device__ __forceinline__ static float staged(float v) { return __uint_as_float(to_tf32(v)); }
    template <int LD>
    __device__ __forceinline__ static void load_a(unsigned (&a)[4], const float (*as)[LD], int kk, int row, int gid,
                                                  int tig) {
        a[0] = __float_as_uint(as[kk + tig][row + gid]);
        a[1] = __float_as_uint(as[kk + tig][row + gid + 8]);
        a[2] = __float_as_uint(as[kk + tig + 4][row + gid]);
        a[3] = __float_as_uint(as[kk + tig + 4][row + gid + 8]);
    }
    template <int LD>
    __device__ __forceinline__ static void load_b(unsigned (&b)[2], const float (*bs)[LD], int kk, int col, int gid,
                                                  int tig) {
        b[0] = __float_as_uint(bs[kk + tig][col + gid]);
        b[1] = __float_as_uint(bs[kk + tig + 4][col + gid]);
    }
    __device__ __forceinline__ static void mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
        mma_m16n8k8_tf32(d, a, b);
    }
};

template <> struct TensorCoreMma<half> {  // float16, m16n8k16; the staged floats are float16 values (exact)
    static constexpr int K = 16;
    __device__ __forceinline__ static float staged(float v) { return v; }
    template <int LD>
    __device__ __forceinline__ static void load_a(unsigned (&a)[4], const float (*as)[LD], int kk, int row, int gid,
                                                  int tig) {
        const int k = kk + 2 * tig;
        a[0] = pack_half2(as[k][row + gid], as[k + 1][row + gid]);
        a[1] = pack_half2(as[k][row + gid + 8], as[k + 1][row + gid + 8]);
        a[2] = pack_half2(as[k + 8][row + gid], as[k + 9][row + gid]);
        a[3] = pack_half2(as[k + 8][row + gid + 8], as[k + 9][row + gid + 8]);
    }
    template <int LD>
    __device__ __forceinline__ static void load_b(unsigned (&b)[2], const float (*bs)[LD], int kk, int col, int gid,
                                                  int tig) {
        const int k = kk + 2 * tig;
        b[0] = pack_half2(bs[k][col + gid], bs[k + 1][col + gid]);
        b[1] = pack_half2(bs[k + 8][col + gid], bs[k + 9][col + gid]);
    }
    __device__ __forceinline__ static void mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
        mma_m16n8k16_f16(d, a, b);
    }
};

// The block tile: BM filters x BN pixels, BK = 16 reduction indices per slice (two tf32 k-steps of 8, or
// one f16 k-step of 16), WARPS_M x WARPS_N warps of WM x WN outputs, each MT x NT mma tiles of 16 x 8.
// Provides what gemm_tile.cuh's loaders and GemmSmem need (BM, BN, BK, THREADS, A_LD, B_LD, staged).
template <typename T, int BM_, int BN_, int WARPS_M_, int WARPS_N_>
struct TensorCoreTileConfig {
    static constexpr int BM = BM_, BN = BN_, BK = 16;
    static constexpr int WARPS_M = WARPS_M_, WARPS_N = WARPS_N_;
    static constexpr int THREADS = 32 * WARPS_M * WARPS_N;
    static constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;
    static constexpr int MT = WM / 16, NT = WN / 8;
    // Rows padded by 8 words: a tf32 fragment read as[kk + tig][row + gid] (bs likewise) then falls in bank
    // (8*tig + gid) % 32, a different bank for each of the warp's 32 lanes; unpadded (BM, BN multiples of 32)
    // the 4 lanes of equal gid would share one bank.
    static constexpr int A_LD = BM + 8, B_LD = BN + 8;
    static_assert(BM % (16 * WARPS_M) == 0 && BN % (8 * WARPS_N) == 0, "warp tiles must be whole mma tiles");
    __device__ __forceinline__ static float staged(float v) { return TensorCoreMma<T>::staged(v); }
};

// The tensor-core accumulator for gemm_tile.cuh's slice and tile loops: warp w computes rows
// (w / WARPS_N) * WM .. + WM and columns (w % WARPS_N) * WN .. + WN of the block tile; this lane holds, of mma
// tile (i, j), d[i][j][2h + e] = C[row0 + 16i + gid + 8h][col0 + 8j + 2tig + e] (h, e in {0, 1}).
template <typename T, class Cfg>
struct WarpMmaTile {
    typedef TensorCoreMma<T> Mma;
    static_assert(Cfg::BK % Mma::K == 0, "a slice must hold whole mma k-steps");
    float d[Cfg::MT][Cfg::NT][4];
    int row0, col0, gid, tig;

    __device__ __forceinline__ explicit WarpMmaTile(int tid) {
        const int warp = tid / 32, lane = tid % 32;
        row0 = (warp / Cfg::WARPS_N) * Cfg::WM;
        col0 = (warp % Cfg::WARPS_N) * Cfg::WN;
        gid = lane >> 2;
        tig = lane & 3;
        GPUCONV_UNROLL
        for (int i = 0; i < Cfg::MT; ++i) {
            GPUCONV_UNROLL
            for (int j = 0; j < Cfg::NT; ++j) {
                GPUCONV_UNROLL
                for (int v = 0; v < 4; ++v) d[i][j][v] = 0.0f;
            }
        }
    }

    // One staged slice. Every thread calls this the same number of times (the mma is warp-collective, and
    // block-collective under the emulator); zero-filled rows / columns (tails, padding) add exact zeros.
    __device__ __forceinline__ void slice(const float (*as)[Cfg::A_LD], const float (*bs)[Cfg::B_LD]) {
        GPUCONV_UNROLL
        for (int kk = 0; kk < Cfg::BK; kk += Mma::K) {
            unsigned a[Cfg::MT][4], b[Cfg::NT][2];
            GPUCONV_UNROLL
            for (int i = 0; i < Cfg::MT; ++i) Mma::load_a(a[i], as, kk, row0 + 16 * i, gid, tig);
            GPUCONV_UNROLL
            for (int j = 0; j < Cfg::NT; ++j) Mma::load_b(b[j], bs, kk, col0 + 8 * j, gid, tig);
            GPUCONV_UNROLL
            for (int i = 0; i < Cfg::MT; ++i) {
                GPUCONV_UNROLL
                for (int j = 0; j < Cfg::NT; ++j) Mma::mma(d[i][j], a[i], b[j]);
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

// 64 accumulators per thread in the large tile (BM*BN / THREADS): one block per SM, as conv2d_igemm's 8x8
// tile; the small tile's 16 allow two.
template <typename T, int BM, int BN, int WARPS_M, int WARPS_N>
__global__ void __launch_bounds__(32 * WARPS_M * WARPS_N,
                                  gemm_min_blocks_per_sm(BM * BN / (32 * WARPS_M * WARPS_N), 1))
conv2d_igemm_tc(const T* __restrict__ x,   // (N, C, H, W), C-contiguous
                const T* __restrict__ w,   // (K, Cg, R, S), C-contiguous
                const T* __restrict__ b,   // (K,) when has_bias, else any valid pointer (unread)
                T* __restrict__ y,         // (N, K, P, Q), C-contiguous, fully written
                const __grid_constant__ ConvParams cp,  // the geometry, by value (conv_params.cuh)
                int vec_w) {  // 1: 4-wide weight loads (host checked Cg*R*S % 4 == 0 and w's alignment)
    typedef TensorCoreTileConfig<T, BM, BN, WARPS_M, WARPS_N> Cfg;
    __shared__ GemmSmem<float, Cfg> smem;

    implicit_gemm_conv<T, Cfg, WarpMmaTile<T, Cfg>>(x, w, b, y, cp, vec_w, smem);
}

}  // namespace gpuconv
