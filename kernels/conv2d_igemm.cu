// conv2d_igemm.cu — implicit-GEMM convolution (no im2col buffer in global memory).
//
// Kernels in this file:
//   conv2d_igemm<T, BM, BN, BK, TM, TN>: per conv group, y is the (Kg filters) x (M = N*P*Q pixels) product
//       of the group's weights (Kg x Cg*R*S, read as stored) and the im2col matrix (Cg*R*S x M), whose
//       elements the block gathers from x on the fly (Im2colLoader in im2col_loader.cuh: stride, asymmetric
//       padding -> 0, dilation and flip in the gather's index math); the GEMM tiling (double-buffered
//       shared slices of BK, TM x TN register tile per thread) is gemm_tile.cuh's, shared with
//       conv2d_gemm1x1.cu and conv2d_igemm_tc.cu. Covers every geometry
//       conv2d_direct does: stride, asymmetric padding, dilation, groups/depthwise, flip, bias, activation.
//   conv2d_igemm_splitk<T, BM, BN, BK, TM, TN>: the same GEMM over `splits` ranges of the reduction
//       (split-K, below), partial sums into a workspace.
//   gemm_splitk_reduce<T>: split-K's second kernel (below): sums the partial-sum planes of the workspace
//       in fixed order, adds bias, applies the activation, writes y.
//   Tile configs the host instantiates (gpuconv/_cuda/gemm.py, gemm_tile_for, documented there), every
//       float32 / float16 one with 8x8 results per thread and BK = 16: "large" BM = BN = 128, 256 threads
//       (groups with more than 64 filters and enough tiles to fill the GPU), "wide" BM = 64, BN = 128, 128
//       threads (64 or fewer filters, or too few large tiles, when the wide tiles fill the GPU), "small"
//       BM = BN = 64, 64 threads (otherwise); float64: "small" BM = BN = 64, BK = 8, TM = TN = 4, 256
//       threads (always).
//   Parameters: the pointers x, w, b, y, then the geometry as one ConvParams cp passed by value
//       (kernels/conv_params.cuh: N, C, H, W, K, R, S, groups, sh, sw, pt, pl, dh, dw, P, Q, flip, has_bias,
//       act; the host fills it with gpuconv/_cuda/abi.py conv_kernel_args), then vec_w (below).
//   Launch shape: 1-D block of (BM/TM) * (BN/TN) threads (256, 128 or 64, above); 1-D grid over
//       groups * ceil(M / BN) * ceil(Kg / BM) tiles, walked by a 64-bit grid-stride loop so the host may cap
//       the grid. Extra parameter vec_w: 1 when the host found Cg*R*S % 4 == 0 and w aligned for 4-wide
//       loads (Vec4 in gemm_tile.cuh), else 0.
//   Split-K (issue 16; conv2d_igemm_splitk's extra parameters splits, split_slices, ws): when the chosen
//       tile launches too few blocks the host cuts the reduction into `splits` ranges of split_slices
//       slices; the grid covers splits x tiles blocks, each stores its partial sums into ws (float32,
//       float64 for double: [splits][K][N*P*Q]) and gemm_splitk_reduce<T> below sums them in fixed order
//       0..splits-1, adds bias, applies the activation and writes y.
//   Shared memory: static, 2 * BK * (BM + 4 + BN) * sizeof(acc_type<T>) bytes = 33,280 (large, float32 and
//       float16), 25,088 (wide), 16,896 (small, float32 and float16; float64 with BK = 8).
//   Registers (NVRTC 12.9 and 13.5, sm_75..sm_120, no spills; tests/test_nvrtc_compile.py prints them):
//       __launch_bounds__ asks for gemm_blocks_per_sm (gemm_tile.cuh) blocks per SM: 255 registers per
//       thread for the 8x8 tiles (1 block of 256 threads, 2 of 128, 4 of 64), 128 for float64's 4x4 tile
//       (2 blocks of 256). Used, conv2d_igemm: large 186-227 up to sm_90, 241-255 on sm_100 / sm_120;
//       wide 234-251 / 242-255; small 241-255 / 241-255 (255 is the limit; ptxas reports no spill and no
//       stack); float64 128 / 108-128. conv2d_igemm_splitk: large 218-237 / 239-255, wide 235-255 /
//       250-255, small 240-255 / 240-255; float64 (one block per SM, splitk_min_blocks_per_sm) 148-158 /
//       156-180.
//   Main loop (SASS, tests/sass_check.py; floors in tests/sass_floors.json): FMA share of the instructions
//       of one slice, float32 on sm_90 with NVRTC 12.9 (13.5 within 0.3 points):
//       conv2d_igemm: large 80.6% (1024 FMA / 1271), wide 76.3% (1024 / 1342), small 73.7% (1024 / 1389);
//       conv2d_igemm_splitk: large 80.1% (1024 / 1279), wide 75.8% (1024 / 1351), small 73.3% (1024 / 1397).
//       Before the 8x8 wide / small tiles (4x8 on 256 threads, 4x4 on 256): wide 71.7%, small 63.4%
//       (split-K: 71.5%, 61.7%); before issue 16: 58.0% (128x128x8) and 34.5% (64x64x8).
//   Measured speed: the README's Benchmarks section (bench/results/, one file per device).
//
// Semantics: exactly conv2d_direct's (see conv2d_direct.cu and docs/semantics.md). float16 is stored in
// shared memory and accumulated as float32.
#include "common.cuh"
#include "conv_params.cuh"
#include "gemm_tile.cuh"
#include "im2col_loader.cuh"

namespace gpuconv {

template <typename T, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), gemm_blocks_per_sm((BM / TM) * (BN / TN), TM, TN))
conv2d_igemm(const T* __restrict__ x,   // (N, C, H, W), C-contiguous
             const T* __restrict__ w,   // (K, Cg, R, S), C-contiguous
             const T* __restrict__ b,   // (K,) when has_bias, else any valid pointer (unread)
             T* __restrict__ y,         // (N, K, P, Q), C-contiguous, fully written
             const __grid_constant__ ConvParams cp,  // the geometry, by value (conv_params.cuh)
             int vec_w) {  // 1: 4-wide weight loads (host checked Cg*R*S % 4 == 0 and w's alignment)
    typedef GemmTileConfig<BM, BN, BK, TM, TN> Cfg;
    __shared__ GemmSmem<typename acc_type<T>::type, Cfg> smem;

    implicit_gemm_conv<T, Cfg, RegisterTile<T, Cfg>>(x, w, b, y, cp, vec_w, smem);
}

// Split-K's first kernel: conv2d_igemm's tiles x `splits` reduction ranges, partial sums into ws (y is
// not written here: gemm_splitk_reduce does). A kernel of its own (not a runtime switch of conv2d_igemm)
// because the split bookkeeping's registers cost the 4x4 tile's main loop (at its 128-register bound)
// about 10 instructions per slice (tests/sass_check.py).
// float64 asks for one block per SM: at two (128 registers) the split bookkeeping made the 4x4 tile spill
// 12 bytes on sm_100 with NVRTC 13; float32 / float16 keep conv2d_igemm's bound.
__host__ __device__ constexpr int splitk_min_blocks_per_sm(int bytes, int threads, int tm, int tn) {
    return bytes == 8 ? 1 : gemm_blocks_per_sm(threads, tm, tn);
}

template <typename T, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), splitk_min_blocks_per_sm(sizeof(T), (BM / TM) * (BN / TN), TM, TN))
conv2d_igemm_splitk(const T* __restrict__ x, const T* __restrict__ w,
                    const T* __restrict__ b,  // unread (the reduce kernel adds the bias)
                    T* __restrict__ y,        // unwritten (the reduce kernel writes it)
                    const __grid_constant__ ConvParams cp, int vec_w,
                    int splits,        // reduction ranges (>= 2)
                    int split_slices,  // slices (of BK) per range: ceil(slices / splits)
                    typename acc_type<T>::type* __restrict__ ws) {  // [splits][K][N*P*Q] partial sums
    typedef GemmTileConfig<BM, BN, BK, TM, TN> Cfg;
    __shared__ GemmSmem<typename acc_type<T>::type, Cfg> smem;

    implicit_gemm_conv<T, Cfg, RegisterTile<T, Cfg>, GemmSmem<typename acc_type<T>::type, Cfg>, true>(
        x, w, b, y, cp, vec_w, smem, splits, split_slices, ws);
}

// The most reduction ranges split-K uses (gpuconv/_cuda/conv_igemm.py SPLITK_MAX, which tests check).
#define GEMM_SPLITK_MAX 8

// The split-K reduction: y[n, k, pq] = act(ws[0][k][m] + ws[1][k][m] + ... + ws[splits-1][k][m] + b[k]),
// m = n*P*Q + pq, summed in this fixed order by one thread per output (so the result is the same bit for
// bit whatever order the blocks of conv2d_igemm_splitk ran in). Grid-stride loops over images (z), filters
// (y) and pixels (x, innermost: coalesced reads of every plane and writes of y); no division anywhere.
template <typename T>
__global__ void gemm_splitk_reduce(const typename acc_type<T>::type* __restrict__ ws,
                                   const T* __restrict__ b,  // (K,) when has_bias, else unread
                                   T* __restrict__ y,        // (N, K, P, Q), C-contiguous
                                   int splits, int N, int K, index_t PQ, int has_bias, int act) {
    typedef typename acc_type<T>::type A;
    const index_t M = (index_t)N * PQ;
    const index_t plane = (index_t)K * M;  // elements of one split's partial sums
    for (int n = blockIdx.z; n < N; n += gridDim.z) {
        for (int k = blockIdx.y; k < K; k += gridDim.y) {
            const A* src = ws + (index_t)k * M + (index_t)n * PQ;
            T* dst = y + ((index_t)n * K + k) * PQ;
            const A bias = has_bias ? load<T>(b + k) : A(0);
            for (index_t pq = (index_t)blockIdx.x * blockDim.x + threadIdx.x; pq < PQ;
                 pq += (index_t)gridDim.x * blockDim.x) {
                A v = src[pq];
                // Unrolled to the host's largest split count (SPLITK_MAX in gpuconv/_cuda/conv_igemm.py):
                // the sum still in order 1, 2, ..., splits-1.
                GPUCONV_UNROLL
                for (int s = 1; s < GEMM_SPLITK_MAX; ++s)
                    if (s < splits) v += src[(index_t)s * plane + pq];
                if (has_bias) v += bias;  // (only when there is one: keeps -0.0 as the sum made it)
                store<T>(dst + pq, activate(v, act));
            }
        }
    }
}

}  // namespace gpuconv
