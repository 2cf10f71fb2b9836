// conv3d_igemm.cu — implicit-GEMM 3-D convolution: conv2d_igemm's kernel body with a depth axis.
//
// Kernels in this file:
//   conv3d_igemm<T, BM, BN, BK, TM, TN>: per conv group, y is the (Kg filters) x (M = N*OD*P*Q pixels)
//       product of the group's weights (Kg x Cg*KD*R*S, read as stored: w is (K, Cg, KD, R, S)) and the 3-D
//       im2col matrix (Cg*KD*R*S x M), gathered from x (N, C, D, H, W) on the fly. It is the same body as
//       conv2d_igemm (im2col_loader.cuh's implicit_gemm_conv, gemm_tile.cuh's tiles and slice loop,
//       RegisterTile's products and epilogue) instantiated with the 3-D geometry Im2colGeometry3d: the depth
//       lives only there and in Im2colLoader's tap walk ((c, t, r, s), division-free, one carry more than
//       2-D; one more bounds compare per element). Covers every geometry: stride, asymmetric padding
//       (-> 0), dilation, groups/depthwise, flip (all three axes), bias, activation.
//   conv3d_igemm_splitk<T, BM, BN, BK, TM, TN>: the same GEMM over `splits` ranges of the reduction (split-K,
//       as conv2d_igemm_splitk): partial sums into the workspace ws [splits][K][N*OD*P*Q], summed in fixed
//       order by conv2d_igemm.cu's gemm_splitk_reduce<T> (the host launches it from that source). The host
//       splits where conv2d's rule would split the same GEMM: fewer blocks than an H100 has SMs and a
//       reduction of at least 2 x 8 slices (deep layers with few outputs: C3D's conv5, a 3-D U-Net's bottom).
//   Tile configs: the 2-D GEMM kernels' large (128x128x16, 8x8 per thread, 256 threads) and wide (64x128x16,
//       8x8, 128 threads), chosen by the same rule (gemm_tile_for on the 3-D GEMM's M, filters per group and
//       reduction length; gpuconv/_cuda/conv3d_igemm.py); the small one differs: 64x64x8 with 8x8 per thread
//       on 64 threads (SMALL_TILE_3D: conv2d's 64x64x16 8x8 tile spilled with the depth digit's state, 16
//       gathered pixels per thread; BK = 8 gathers 8), float64 64x64x8 4x4 (256 threads).
//   Parameters: the pointers x, w, b, y, then the geometry as one Conv3dParams cp passed by value
//       (kernels/conv_params.cuh: the (H, W) plane's ConvParams, then D, KD, sd, pf, dd, OD; the host fills
//       it with gpuconv/_cuda/abi.py conv3d_kernel_args), then vec_w: 1 when the host found Cg*KD*R*S % 4
//       == 0 and w aligned for 4-wide loads (Vec4 in gemm_tile.cuh), else 0; split-K adds splits,
//       split_slices (slices of BK per range) and ws.
//   Launch shape: 1-D block of (BM/TM) * (BN/TN) threads (256, 128, 64; float64 256); 1-D grid over
//       [splits *] groups * ceil(M / BN) * ceil(Kg / BM) tiles, walked by a 64-bit grid-stride loop.
//   Shared memory: static, as conv2d_igemm: 2 * BK * (BM + 4 + BN) * sizeof(acc_type<T>) bytes.
//   Registers (NVRTC 12.9 and 13.5, sm_75..sm_120, no spills; tests/test_nvrtc_compile.py prints them):
//       __launch_bounds__ asks for gemm_blocks_per_sm (gemm_tile.cuh) blocks per SM, as conv2d_igemm (255
//       registers for the 8x8 tiles), except float64, one block per SM (conv3d_min_blocks_per_sm below).
//       sm_90, NVRTC 12.9: large 229, wide 252-255, small 221-225, float64 162; the small tile 200-248 on
//       sm_75..sm_120 with NVRTC 12.9 and 13.5.
//   Main loop (SASS, python -m tests.sass_check --source conv3d_igemm.cu; floors in tests/sass_floors.json):
//       float32 on sm_90, FMA share of one slice's instructions, NVRTC 12.9: large 79.1% (1024 FMA / 1295),
//       wide 73.7% (1024 / 1389), small 68.0% (512 / 753); NVRTC 13.5: 79.0%, 73.5%, 67.9%;
//       conv3d_igemm_splitk 78.6 / 73.2 / 67.5%. conv2d_igemm's: 80.6 / 76.3 / 73.7%: the depth digit's
//       carry, the depth offset and one more compare per gathered element, and the small tile's BK = 8 (the
//       4x4-on-256-threads small tile it replaces reached 59.7%, 256 / 429).
//   Measured speed: not yet (no GPU run of this kernel so far).
//
// Semantics: exactly conv3d's (docs/semantics.md, "conv1d and conv3d"): each output is one thread's sum over
// (c, t, r, s) in slice order (split-K: per range, then the ranges in fixed order), so results are bitwise
// the same run to run and in any block / thread order.
// float16 is stored in shared memory and accumulated as float32.
#include "common.cuh"
#include "conv_params.cuh"
#include "im2col_loader.cuh"
// gemm_tile.cuh also comes through im2col_loader.cuh; named here because it is what the SASS check
// (tests/sass_check.py gemm_sources) looks for to list a GEMM-style source.
#include "gemm_tile.cuh"

namespace gpuconv {

// Blocks per SM asked of __launch_bounds__: conv2d_igemm's (gemm_blocks_per_sm), but one for float64:
// at two (128 registers) the depth's extra loader state made the 4x4 double tile spill (8 bytes of stack on
// sm_90 with NVRTC 12.9).
__host__ __device__ constexpr int conv3d_min_blocks_per_sm(int bytes, int threads, int tm, int tn) {
    return bytes == 8 ? 1 : gemm_blocks_per_sm(threads, tm, tn);
}

template <typename T, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), conv3d_min_blocks_per_sm(sizeof(T), (BM / TM) * (BN / TN), TM, TN))
conv3d_igemm(const T* __restrict__ x,   // (N, C, D, H, W), C-contiguous
             const T* __restrict__ w,   // (K, Cg, KD, R, S), C-contiguous
             const T* __restrict__ b,   // (K,) when has_bias, else any valid pointer (unread)
             T* __restrict__ y,         // (N, K, OD, P, Q), C-contiguous, fully written
             const __grid_constant__ Conv3dParams cp,  // the geometry, by value (conv_params.cuh)
             int vec_w) {  // 1: 4-wide weight loads (host checked Cg*KD*R*S % 4 == 0 and w's alignment)
    typedef GemmTileConfig<BM, BN, BK, TM, TN> Cfg;
    __shared__ GemmSmem<typename acc_type<T>::type, Cfg> smem;

    implicit_gemm_conv<T, Cfg, RegisterTile<T, Cfg>, GemmSmem<typename acc_type<T>::type, Cfg>, false,
                       Im2colGeometry3d<T>>(x, w, b, y, cp, vec_w, smem);
}

// Split-K's first kernel: conv3d_igemm's tiles x `splits` reduction ranges, partial sums into ws (y is not
// written here: gemm_splitk_reduce in conv2d_igemm.cu does, one reduction kernel for every dimension). Its
// own kernel, as conv2d_igemm_splitk, so that the unsplit kernel's main loop carries no split bookkeeping;
// float64 at one block per SM as the unsplit one.
template <typename T, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), conv3d_min_blocks_per_sm(sizeof(T), (BM / TM) * (BN / TN), TM, TN))
conv3d_igemm_splitk(const T* __restrict__ x, const T* __restrict__ w,
                    const T* __restrict__ b,  // unread (the reduce kernel adds the bias)
                    T* __restrict__ y,        // unwritten (the reduce kernel writes it)
                    const __grid_constant__ Conv3dParams cp, int vec_w,
                    int splits,        // reduction ranges (>= 2)
                    int split_slices,  // slices (of BK) per range: ceil(slices / splits)
                    typename acc_type<T>::type* __restrict__ ws) {  // [splits][K][N*OD*P*Q] partial sums
    typedef GemmTileConfig<BM, BN, BK, TM, TN> Cfg;
    typedef GemmSmem<typename acc_type<T>::type, Cfg> Smem;
    __shared__ Smem smem;

    implicit_gemm_conv<T, Cfg, RegisterTile<T, Cfg>, Smem, true, Im2colGeometry3d<T>>(
        x, w, b, y, cp, vec_w, smem, splits, split_slices, ws);
}

}  // namespace gpuconv
