// conv1d_igemm_tc.cu — implicit-GEMM 1-D convolution on tensor cores: conv2d_igemm_tc's body with the 1-D
// gather geometry.
//
// Kernel in this file:
//   conv1d_igemm_tc<T, BM, BN, WARPS_M, WARPS_N>: per conv group, y is the (Kg filters) x (M = N*Q pixels)
//       product of the group's packed weights and the 1-D im2col matrix, gathered from x (N, C, L) on the fly:
//       igemm_tc.cuh's tensor_core_conv (conv2d_igemm_tc.cu's header describes the pipeline: tap-major
//       reduction in slices of BK channels of one tap, host-packed TF32 / float16 weights, fragment-order
//       staging, mma.sync m16n8k8 TF32 / m16n8k16 float16 with float32 accumulation) instantiated with
//       Im2colGeometry1d. The gather's tap walk is the filter columns s alone: per tap one step of the input
//       column, no filter-column counter, no row, no row compare (what the 2-D kernel on a height-1 view
//       carried). Covers every geometry: stride, asymmetric padding (-> 0), dilation, groups/depthwise, flip,
//       bias, activation.
//   T = float as TF32 (cvt.rna's rounding of every operand), T = half exact products; float32 sums.
//   Tile configs, BK, launch shape, shared memory: conv2d_igemm_tc's (gpuconv/_cuda/conv_igemm_tc.py:
//       large 128 x 128, 2 x 4 warps; small 64 x 64, 1 x 2 warps; chosen by igemm's rule on the call's
//       unit-height geometry; 32 KB static staging).
//   Parameters: the pointers x, wp (the weights (K, Cg, S) packed by the host: pack_weights, the
//       workspace), b, y, then the 1-D call as a ConvParams of unit height (abi.py conv1d_kernel_args), of
//       which the kernel reads N, C, W (= L), K, S, groups, sw, pl, dw, Q, flip, has_bias, act.
//   Main loop (tests/sass_check.py, sm_90, NVRTC 12.9 / 13.5; floors in tests/sass_floors.json): non-mma
//       instructions per mma 3.47 / 3.44 (float large), 3.69 / 3.91 (half large), 4.73 / 4.75 (float small),
//       4.83 / 4.83 (half small); instructions per slice 143 / 150 / 367 / 373 (NVRTC 12.9). conv2d_igemm_tc on
//       the height-1 view (what a tensor-core conv1d ran before): 3.81 / 3.88, 3.97 / 4.16, 4.94 / 5.14,
//       4.92 / 4.92; 154 / 159 / 380 / 379 instructions: the filter-column counter, its wrap and the row
//       compare are gone.
//   Registers (no spills, no stack on sm_75..sm_120 with NVRTC 12.9 and 13.5, tests/test_nvrtc_compile.py):
//       sm_90 (NVRTC 12.9) 203 / 216 / 246 / 248 (float large, half large, float small, half small); sm_80
//       202 / 204 / 246 / 254.
//   Needs compute capability 8.0 or newer (the host declines older devices), as conv2d_igemm_tc.
//   Measured speed: not yet (no GPU run of this kernel so far).
//
// Semantics: conv1d's (docs/semantics.md), float32 at TF32 precision; each output is one thread's sum in
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
conv1d_igemm_tc(const T* __restrict__ x,          // (N, C, L), C-contiguous
                const unsigned* __restrict__ wp,  // the weights packed in slices (PackedWeightLoader)
                const T* __restrict__ b,          // (K,) when has_bias, else any valid pointer (unread)
                T* __restrict__ y,                // (N, K, Q), C-contiguous, fully written
                const __grid_constant__ ConvParams cp) {  // the unit-height geometry, by value
    typedef TensorCoreTileConfig<T, BM, BN, WARPS_M, WARPS_N> Cfg;
    __shared__ GemmSmem<unsigned, Cfg> smem;
    tensor_core_conv<T, Cfg, Im2colGeometry1d<T>>(x, wp, b, y, cp, smem);
}

}  // namespace gpuconv
