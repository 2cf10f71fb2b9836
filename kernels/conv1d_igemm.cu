// conv1d_igemm.cu — implicit-GEMM 1-D convolution: conv2d_igemm's kernel body without the row axis.
//
// Kernels in this file:
//   conv1d_igemm<T, BM, BN, BK, TM, TN>: per conv group, y is the (Kg filters) x (M = N*Q pixels) product of
//       the group's weights (Kg x Cg*S, read as stored: w is (K, Cg, S)) and the 1-D im2col matrix
//       (Cg*S x M), gathered from x (N, C, L) on the fly. The same body as conv2d_igemm and conv3d_igemm
//       (im2col_loader.cuh's implicit_gemm_conv, gemm_tile.cuh's tiles and slice loop, RegisterTile's
//       products and epilogue) instantiated with the 1-D geometry Im2colGeometry1d: the tap walk is (c, s)
//       only (one carry per slice, no row digit) and each gathered element is checked against the row's
//       length alone, where the 2-D kernel on a height-1 view carried a row digit every slice and compared
//       a row per element (issue 18: "a 1-D case must not pay for unused dimensions"). Covers every
//       geometry: stride, asymmetric padding (-> 0), dilation, groups/depthwise, flip, bias, activation.
//   conv1d_igemm_splitk<T, BM, BN, BK, TM, TN>: the same GEMM over `splits` ranges of the reduction (split-K,
//       as conv2d_igemm_splitk): partial sums into the workspace ws [splits][K][N*Q], summed in fixed order
//       by conv2d_igemm.cu's gemm_splitk_reduce<T> (the host launches it from that source).
//   Tile configs: the 2-D GEMM kernels' (gpuconv/_cuda/gemm.py): large 128x128x16, wide 64x128x16 and small
//       64x64x16, all 8x8 per thread (256, 128, 64 threads), float64's 64x64x8 4x4 (256 threads), chosen by
//       the same rule (gemm_tile_for on the call's height-1 2-D geometry; gpuconv/_cuda/conv1d_igemm.py).
//   Parameters: the pointers x, w, b, y, then the geometry as one ConvParams cp passed by value: the 1-D call
//       as a convolution of unit height (H = R = P = 1, sh = dh = 1, pt = 0; abi.py conv1d_kernel_args), of
//       which the kernel reads N, C, W (= L), K, S, groups, sw, pl, dw, Q, flip, has_bias, act; then vec_w:
//       1 when the host found Cg*S % 4 == 0 and w aligned for 4-wide loads (Vec4 in gemm_tile.cuh), else 0;
//       split-K adds splits, split_slices (slices of BK per range) and ws.
//   Launch shape: 1-D block of (BM/TM) * (BN/TN) threads; 1-D grid over [splits *] groups * ceil(M / BN) *
//       ceil(Kg / BM) tiles, walked by a 64-bit grid-stride loop.
//   Shared memory: static, as conv2d_igemm: 2 * BK * (BM + 4 + BN) * sizeof(acc_type<T>) bytes.
//   Registers: __launch_bounds__ asks for gemm_blocks_per_sm (gemm_tile.cuh) blocks per SM, as conv2d_igemm
//       (255 registers for the 8x8 tiles, 128 for float64's 4x4), except float64's split-K kernel, one block
//       per SM (conv1d_min_blocks_per_sm below). No spills on sm_75..sm_120 with NVRTC 12.9 and 13.5
//       (tests/test_nvrtc_compile.py prints every figure). sm_90, NVRTC 12.9: large 193, wide 223, small 235,
//       float64 128; conv1d_igemm_splitk 227 / 239 / 245, float64 144 (one block per SM).
//   Main loop (SASS, python -m tests.sass_check --source conv1d_igemm.cu; floors in tests/sass_floors.json):
//       float32 on sm_90, instructions per slice (FMA share), NVRTC 12.9: conv1d_igemm large / wide / small
//       1241 / 1297 / 1347 (82.5 / 79.0 / 76.0 %), float64 253 (50.6 %); conv1d_igemm_splitk 1250 / 1310 /
//       1357 (81.9 / 78.2 / 75.5 %); NVRTC 13.5: 1243 / 1297 / 1342 (82.4 / 79.0 / 76.3 %). conv2d_igemm on
//       the height-1 view (what conv1d ran before): 1271 / 1342 / 1389 (80.6 / 76.3 / 73.7 %), float64 267:
//       the 1-D loop has 2.4 / 3.4 / 3.0 % fewer instructions (5.2 % for float64), all of them the row
//       digit's carry, its offset and the row compare per gathered element.
//   Measured speed: not yet (no GPU run of this kernel so far).
//
// Semantics: exactly conv1d's (docs/semantics.md, "conv1d and conv3d"): each output is one thread's sum over
// (c, s) in slice order (split-K: per range, then the ranges in fixed order), so results are bitwise the same
// run to run and in any block / thread order. float16 is stored in shared memory and accumulated as float32.
#include "common.cuh"
#include "conv_params.cuh"
#include "im2col_loader.cuh"
// gemm_tile.cuh also comes through im2col_loader.cuh; named here because it is what the SASS check
// (tests/sass_check.py gemm_sources) looks for to list a GEMM-style source.
#include "gemm_tile.cuh"

namespace gpuconv {

// Blocks per SM asked of __launch_bounds__: gemm_blocks_per_sm, but one for float64's split-K kernel (as
// conv2d_igemm_splitk: its bookkeeping on top of the 4x4 double tile does not fit 128 registers everywhere).
__host__ __device__ constexpr int conv1d_min_blocks_per_sm(bool split, int bytes, int threads, int tm, int tn) {
    return split && bytes == 8 ? 1 : gemm_blocks_per_sm(threads, tm, tn);
}

template <typename T, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), conv1d_min_blocks_per_sm(false, sizeof(T), (BM / TM) * (BN / TN), TM, TN))
conv1d_igemm(const T* __restrict__ x,   // (N, C, L), C-contiguous
             const T* __restrict__ w,   // (K, Cg, S), C-contiguous
             const T* __restrict__ b,   // (K,) when has_bias, else any valid pointer (unread)
             T* __restrict__ y,         // (N, K, Q), C-contiguous, fully written
             const __grid_constant__ ConvParams cp,  // the unit-height geometry, by value (conv_params.cuh)
             int vec_w) {  // 1: 4-wide weight loads (host checked Cg*S % 4 == 0 and w's alignment)
    typedef GemmTileConfig<BM, BN, BK, TM, TN> Cfg;
    typedef GemmSmem<typename acc_type<T>::type, Cfg> Smem;
    __shared__ Smem smem;

    implicit_gemm_conv<T, Cfg, RegisterTile<T, Cfg>, Smem, false, Im2colGeometry1d<T>>(x, w, b, y, cp, vec_w, smem);
}

// Split-K's first kernel: conv1d_igemm's tiles x `splits` reduction ranges, partial sums into ws (y is not
// written here: gemm_splitk_reduce in conv2d_igemm.cu does). Its own kernel, as in 2-D, so that the unsplit
// kernel's main loop carries no split bookkeeping.
template <typename T, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), conv1d_min_blocks_per_sm(true, sizeof(T), (BM / TM) * (BN / TN), TM, TN))
conv1d_igemm_splitk(const T* __restrict__ x, const T* __restrict__ w,
                    const T* __restrict__ b,  // unread (the reduce kernel adds the bias)
                    T* __restrict__ y,        // unwritten (the reduce kernel writes it)
                    const __grid_constant__ ConvParams cp, int vec_w,
                    int splits,        // reduction ranges (>= 2)
                    int split_slices,  // slices (of BK) per range: ceil(slices / splits)
                    typename acc_type<T>::type* __restrict__ ws) {  // [splits][K][N*Q] partial sums
    typedef GemmTileConfig<BM, BN, BK, TM, TN> Cfg;
    typedef GemmSmem<typename acc_type<T>::type, Cfg> Smem;
    __shared__ Smem smem;

    implicit_gemm_conv<T, Cfg, RegisterTile<T, Cfg>, Smem, true, Im2colGeometry1d<T>>(
        x, w, b, y, cp, vec_w, smem, splits, split_slices, ws);
}

}  // namespace gpuconv
