// conv3d_igemm_tc.cu — implicit-GEMM 3-D convolution on tensor cores: conv2d_igemm_tc's body with the 3-D
// gather geometry.
//
// Kernel in this file:
//   conv3d_igemm_tc<T, BM, BN, WARPS_M, WARPS_N>: per conv group, y is the (Kg filters) x (M = N*OD*P*Q
//       pixels) product of the group's packed weights and the 3-D im2col matrix, gathered from x
//       (N, C, D, H, W) on the fly: igemm_tc.cuh's tensor_core_conv (conv2d_igemm_tc.cu's header describes the
//       pipeline: tap-major reduction in slices of BK channels of one tap, host-packed TF32 / float16
//       weights, fragment-order staging, mma.sync m16n8k8 TF32 / m16n8k16 float16 with float32 accumulation)
//       instantiated with Im2colGeometry3d. The gather's tap walk is (t, r, s), s fastest: at a filter row's
//       end the row counter wraps into the next depth tap (one compare per tap change, not per element); each
//       slice tests its tap's depth as well as its row and column (one more compare per slice) and forms the
//       run's offset (id*H + ih)*W + iw. Covers every geometry: stride, asymmetric padding (-> 0), dilation,
//       groups/depthwise, flip (all three axes), bias, activation.
//   T = float as TF32 (cvt.rna's rounding of every operand), T = half exact products; float32 sums.
//   Tile configs, BK, launch shape, shared memory: conv2d_igemm_tc's (gpuconv/_cuda/conv_igemm_tc.py:
//       large 128 x 128, 2 x 4 warps; small 64 x 64, 1 x 2 warps; chosen by igemm's rule on the call's GEMM
//       view, conv3d_igemm.gemm_view; 32 KB static staging).
//   Parameters: the pointers x, wp (the weights (K, Cg, KD, R, S) packed by the host: pack_weights, the
//       workspace; taps in (t, r, s) order), b, y, then the geometry as one Conv3dParams (conv_params.cuh;
//       abi.py conv3d_kernel_args).
//   Main loop (tests/sass_check.py, sm_90, NVRTC 12.9 / 13.5; floors in tests/sass_floors.json): non-mma
//       instructions per mma 4.28 / 4.28 (float large), 4.25 / 4.31 (half large), 5.19 / 5.17 (float small),
//       5.17 / 5.14 (half small); instructions per slice 169 / 168 / 396 / 395 (NVRTC 12.9), against
//       conv2d_igemm_tc's 154 / 159 / 380 / 379: the row counter's wrap into the depth, the depth compare and
//       the depth's term of the run's offset. (What a tensor-core conv3d ran before: per depth tap one
//       conv2d_igemm_tc call over gathered planes, added into an accumulator.)
//   Registers (no spills, no stack on sm_75..sm_120 with NVRTC 12.9 and 13.5, tests/test_nvrtc_compile.py):
//       sm_90 (NVRTC 12.9) 198 / 212 / 250 / 248 (float large, half large, float small, half small); sm_80
//       192 / 212 / 248 / 254.
//   Needs compute capability 8.0 or newer (the host declines older devices), as conv2d_igemm_tc.
//   Measured speed: not yet (no GPU run of this kernel so far).
//
// Semantics: conv3d's (docs/semantics.md), float32 at TF32 precision; each output is one thread's sum in
// slice order: bitwise the same run to run and in any block / thread order.
#include "common.cuh"
#include "conv_params.cuh"
// gemm_tile.cuh also comes through igemm_tc.cuh; named here because it is what the SASS check
// (tests/sass_check.py gemm_sources) looks for to list a GEMM-style source.
#include "gemm_tile.cuh"
#include "igemm_tc.cuh"

namespace gpuconv {

// Blocks per SM: conv2d_igemm_tc's (64 accumulators per thread).
template <typename T, int BM, int BN, int WARPS_M, int WARPS_N>
__global__ void __launch_bounds__(32 * WARPS_M * WARPS_N,
                                  gemm_min_blocks_per_sm(BM * BN / (32 * WARPS_M * WARPS_N), 1))
conv3d_igemm_tc(const T* __restrict__ x,          // (N, C, D, H, W), C-contiguous
                const unsigned* __restrict__ wp,  // the weights packed in slices (PackedWeightLoader)
                const T* __restrict__ b,          // (K,) when has_bias, else any valid pointer (unread)
                T* __restrict__ y,                // (N, K, OD, P, Q), C-contiguous, fully written
                const __grid_constant__ Conv3dParams cp) {  // the geometry, by value (conv_params.cuh)
    typedef TensorCoreTileConfig<T, BM, BN, WARPS_M, WARPS_N> Cfg;
    __shared__ GemmSmem<unsigned, Cfg> smem;
    tensor_core_conv<T, Cfg, Im2colGeometry3d<T>>(x, wp, b, y, cp, smem);
}

}  // namespace gpuconv
