// conv2d_gemm1x1.cu — 1x1 convolution (zero padding) as a plain GEMM over channels.
//
// Kernel in this file:
//   conv2d_gemm1x1<T, BM, BN, BK, TM, TN>: for a 1x1 filter with zero padding, per image n and group g,
//       Y_n[k, p*Q + q] = sum_c W[k, c] * X_n[c, p*sh, q*sw]; the images are folded into the GEMM's columns
//       (M = N*P*Q pixels, as in conv2d_igemm), so small images still fill whole tiles. Same GEMM tiling as
//       conv2d_igemm (gemm_tile.cuh); only the B loader differs: no tap decomposition and no padding
//       checks, and with stride 1 (then B's rows are x's contiguous channel planes) 4-wide vector loads of 4
//       consecutive pixels. Handles stride (any), groups, bias, activation; dilation and flip do not change a
//       1x1 filter. The host declines every other geometry (gemm1x1_decline_reason).
//   Tile configs: as conv2d_igemm (same host rule, gpuconv/_cuda/gemm.py gemm_tile_for): "large"
//       128x128x16, "wide" 64x128x16, "small" 64x64x16, all 8x8 per thread (256, 128, 64 threads; float32 /
//       float16), and float64's "small" 64x64x8 4x4 (256 threads).
//   Parameters: the pointers x, w, b, y, then the geometry as one ConvParams cp passed by value
//       (kernels/conv_params.cuh: N, C, H, W, K, R, S, groups, sh, sw, pt, pl, dh, dw, P, Q, flip, has_bias,
//       act; the host fills it with gpuconv/_cuda/abi.py conv_kernel_args), then vec_w and vec_x (below).
//   Launch shape: 1-D block of (BM/TM) * (BN/TN) threads (256, 128 or 64, above); 1-D grid over groups * ceil(M / BN) *
//       ceil(Kg / BM) tiles with a 64-bit grid-stride loop. Extra parameters: vec_w (Cg % 4 == 0 and w aligned: 4-wide weight loads),
//       vec_x (stride 1, H*W % 4 == 0 and x aligned: 4-wide input loads).
//   Shared memory: static, 2 * BK * (BM + 4 + BN) * sizeof(acc_type<T>) bytes = 33,280 (large, float32 and
//       float16), 25,088 (wide), 16,896 (small, float32 and float16; float64 with BK = 8).
//   Registers (NVRTC 12.9 and 13.5, sm_75..sm_120, no spills; tests/test_nvrtc_compile.py prints them):
//       __launch_bounds__ asks for gemm_blocks_per_sm (gemm_tile.cuh) blocks per SM: 255 registers per
//       thread for the 8x8 tiles (1 block of 256 threads, 2 of 128, 4 of 64), 128 for float64's 4x4 tile
//       (2 blocks of 256). Used: large 150-167 up to sm_90, 213-247 on sm_100 / sm_120; wide 160-167 /
//       221-254; small 166-181 / 210-247; float64 124-126 / 106-128.
//   Main loop (SASS, tests/sass_check.py; floors in tests/sass_floors.json): FMA share of the instructions
//       of one slice, float32 on sm_90 with NVRTC 12.9 (13.5 the same):
//       large 81.9% (1024 FMA / 1251), wide 77.4% (1024 / 1323), small 74.7% (1024 / 1371).
//       Before the 8x8 wide / small tiles (4x8 and 4x4 on 256 threads): wide 73.0%, small 65.8%; before
//       issue 16: 67.5% (128x128x8) and 43.7% (64x64x8).
//   Measured speed: the README's Benchmarks section (bench/results/, one file per device).
//
// Semantics: exactly conv2d_direct's for these geometries (see conv2d_direct.cu and docs/semantics.md).
#include "common.cuh"
#include "conv_params.cuh"
#include "gemm_tile.cuh"

namespace gpuconv {

// The B operand: B[c, m] = x[n, g*Cg + c, p*sh, q*sw], m = (n*P + p)*Q + q. With zero padding and a 1x1
// filter every such coordinate is inside the image (p*sh <= (P-1)*sh <= H-1), so there is no padding test.
//
// Scalar pattern (any stride): thread t loads column t % BN and LOADS consecutive rows (t / BN) * LOADS + i.
// Vector pattern (vec_x): slot e = t + i * THREADS loads the 4 pixels 4 * (e % V_PER_ROW) .. + 3 of row
//   e / V_PER_ROW; THREADS % V_PER_ROW == 0, so a thread's columns are the same in every slot. The host
//   enables it only when stride is 1 and H*W % 4 == 0: then M = N*H*W and the tile start m0 are multiples
//   of 4, so the 4 pixels are all in one image, contiguous (q runs along W, Q = W), and all exist or none.
template <typename T, class Cfg>
struct PointwiseLoader {
    typedef typename acc_type<T>::type A;
    static constexpr int BN = Cfg::BN, BK = Cfg::BK, THREADS = Cfg::THREADS;
    static constexpr int S_LOADS = BK * BN / THREADS;
    static constexpr int V_PER_ROW = BN / 4;
    static constexpr int V_SLOTS = BK * V_PER_ROW;
    static constexpr int V_LOADS = (V_SLOTS + THREADS - 1) / THREADS;
    static constexpr int V_ROW_STEP = THREADS / V_PER_ROW;  // rows between a thread's vector slots
    static constexpr int REGS = S_LOADS > 4 * V_LOADS ? S_LOADS : 4 * V_LOADS;
    static_assert(THREADS % BN == 0 && (BK * BN) % THREADS == 0, "scalar pattern must tile BK x BN exactly");
    static_assert(BN % 4 == 0 && THREADS % V_PER_ROW == 0, "vector pattern: fixed columns per thread");

    const T* x;
    int C, W, Cg, sh, sw, Q, vec;
    index_t HW, PQ, M;
    int col, row0;  // this thread's (first) column of the tile and first row of each slice
    const T* xk;    // per tile: x + (n*C + g*Cg + k0 + row0) * H*W + p*sh*W + q*sw, this pixel in channel
                    // k0 + row0 of its group, k0 the next fetch's first channel (advanced by BK per fetch)
    bool col_ok;    // per tile: the pixel (vector: all 4 pixels) exists
    A regs[REGS];

    // cp: the kernel's geometry; Cg = C / groups and M = N*P*Q as the kernel computed them.
    __device__ __forceinline__ PointwiseLoader(const T* x_, const ConvParams& cp, int Cg_, index_t M_, int vec_,
                                               int tid)
        : x(x_), C(cp.C), W(cp.W), Cg(Cg_), sh(cp.sh), sw(cp.sw), Q(cp.Q), vec(vec_), HW((index_t)cp.H * cp.W),
          PQ((index_t)cp.P * cp.Q), M(M_),
          col(vec_ ? 4 * (tid % V_PER_ROW) : tid % BN),
          row0(vec_ ? tid / V_PER_ROW : (tid / BN) * S_LOADS),
          xk(x_), col_ok(false) {}

    __device__ __forceinline__ void begin_tile(index_t m0, int g) {
        // Vector case: M % 4 == 0 and col % 4 == 0, so col < M - m0 means all 4 pixels exist.
        col_ok = (index_t)col < M - m0;
        if (!col_ok) return;
        const index_t m = m0 + col;
        const index_t n = m / PQ;
        const index_t pq = m - n * PQ;
        const int p = (int)(pq / Q);
        const int q = (int)(pq - (index_t)p * Q);
        // 64-bit offsets: x may exceed 2^31 elements. p*sh <= H-1 and q*sw <= W-1 (no padding). Only formed
        // for a pixel that exists; row0 < BK may be past Cg (then nothing is read).
        xk = x + ((index_t)n * C + (index_t)g * Cg + row0) * HW + (index_t)(p * sh) * W + q * sw;
    }

    // Must be called for k0 = 0, BK, 2*BK, ... in order, once each, after begin_tile (gemm_slices does):
    // xk advances by BK channels per call.
    __device__ __forceinline__ void fetch(int k0) {
        // Channels at or past Cg (the last slice's tail) read 0: row row0 + r exists iff r < left (written
        // `Cg - k0 - row0`: no overflow). A column past M reads nothing.
        const int left = col_ok ? Cg - k0 - row0 : 0;
        if (vec) {
            GPUCONV_UNROLL
            for (int i = 0; i < V_LOADS; ++i) {
                // Slot tid + i*THREADS is row row0 + i*V_ROW_STEP; it exists iff that row < BK (a small tile
                // has fewer slots than threads).
                A v0 = A(0), v1 = A(0), v2 = A(0), v3 = A(0);
                if (row0 + i * V_ROW_STEP < BK && i * V_ROW_STEP < left)
                    Vec4<T>::load(xk + (index_t)(i * V_ROW_STEP) * HW, v0, v1, v2, v3);
                regs[4 * i] = v0; regs[4 * i + 1] = v1; regs[4 * i + 2] = v2; regs[4 * i + 3] = v3;
            }
        } else {
            const T* p = xk;
            GPUCONV_UNROLL
            for (int i = 0; i < S_LOADS; ++i) {
                A v = A(0);
                if (i < left) v = load<T>(p);
                regs[i] = v;
                p += HW;  // the next channel (formed, not read, past the last one)
            }
        }
        if (col_ok) xk += BK * HW;
    }

    // Every (row, col) of the slice is written by exactly one thread (zeros included).
    __device__ __forceinline__ void stage(A (*dst)[Cfg::B_LD]) {
        if (vec) {
            GPUCONV_UNROLL
            for (int i = 0; i < V_LOADS; ++i) {
                const int row = row0 + i * V_ROW_STEP;
                if (row < BK) {  // the slot exists: surplus threads of a small tile stage nothing
                    GPUCONV_UNROLL
                    for (int v = 0; v < 4; ++v) dst[row][col + v] = Cfg::staged(regs[4 * i + v]);
                }
            }
        } else {
            GPUCONV_UNROLL
            for (int i = 0; i < S_LOADS; ++i) dst[row0 + i][col] = Cfg::staged(regs[i]);
        }
    }
};

template <typename T, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), gemm_blocks_per_sm((BM / TM) * (BN / TN), TM, TN))
conv2d_gemm1x1(const T* __restrict__ x,   // (N, C, H, W), C-contiguous
               const T* __restrict__ w,   // (K, Cg, 1, 1), C-contiguous
               const T* __restrict__ b,   // (K,) when has_bias, else any valid pointer (unread)
               T* __restrict__ y,         // (N, K, P, Q), C-contiguous, fully written
               const __grid_constant__ ConvParams cp,  // the geometry, by value (conv_params.cuh)
               int vec_w,   // 1: 4-wide weight loads (host checked Cg % 4 == 0 and w's alignment)
               int vec_x) { // 1: 4-wide input loads (host checked stride 1, H*W % 4 == 0, x's alignment)
    typedef GemmTileConfig<BM, BN, BK, TM, TN> Cfg;
    __shared__ GemmSmem<typename acc_type<T>::type, Cfg> smem;

    // R = S = 1, pt = pl = 0 (the host declines anything else); dh, dw and flip have no effect on 1x1.
    const int tid = threadIdx.x;
    const int Cg = cp.C / cp.groups;
    const index_t PQ = (index_t)cp.P * cp.Q;
    const index_t M = (index_t)cp.N * PQ;

    PointwiseLoader<T, Cfg> xl(x, cp, Cg, M, vec_x, tid);
    gemm_conv_tiles<T, Cfg, RegisterTile<T, Cfg>>(w, b, y, xl, smem, Cg, cp.K, cp.groups, M, PQ, vec_w,
                                                  cp.has_bias, cp.act, tid);
}

}  // namespace gpuconv
