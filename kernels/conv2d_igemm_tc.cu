// conv2d_igemm_tc.cu — implicit-GEMM convolution with the products on tensor cores (TF32 for float32,
// float16 with float32 accumulation).
//
// Kernel in this file:
//   conv2d_igemm_tc<T, BM, BN, WARPS_M, WARPS_N>: conv2d_igemm's GEMM — per conv group, (Kg filters) x
//       (M = N*P*Q pixels) over the reduction of Cg channels x R*S taps, the im2col operand gathered from x
//       on the fly — with its own pipeline for tensor cores:
//       * the reduction runs tap-major in slices of BK channels of one tap ("The reduction order" below),
//         so the gather tests a tap's bounds once per slice and loads each element at a fixed channel
//         stride (im2col_loader.cuh's Im2colGeometry::pixel_origin decomposes each thread's pixel per tile,
//         the loader then walks its taps and channel offsets incrementally, no multiply per slice but one);
//       * the weights come packed by the host (gpuconv/_cuda/conv_igemm_tc.py pack_weights: the workspace,
//         once per call) in exactly the staged slices' layout, TF32-rounded for float: a slice of A is two
//         to four 128-bit copies per thread, with no bounds, rounding or gather in the main loop;
//       * both operands are staged in mma fragment order (FragLayout): each lane reads a fragment with one
//         128-bit shared load (one per 16-row mma tile of A, one per two 8-column mma tiles of B) straight
//         into the mma's operand registers;
//       * gemm_tile.cuh's double-buffered slice loop (gemm_slices: one barrier per slice, the next slice's
//         global loads in flight while this one is computed), GemmSmem, gemm_block_index and
//         gemm_min_blocks_per_sm are reused as they are.
//       Covers every geometry conv2d_igemm does.
//       The body (TcKind, FragLayout, TensorCoreTileConfig, PackedWeightLoader, TapIm2colLoader, WarpMmaTile,
//       tensor_core_conv) is kernels/igemm_tc.cuh, shared with conv1d_igemm_tc.cu and conv3d_igemm_tc.cu (the
//       gather geometry a template parameter; this kernel's instantiation is the 2-D default, and its machine
//       code is the same as before the 1-D and 3-D kernels existed).
//   T = float: mma m16n8k8 on TF32 operands (weights rounded by the host, input values as the gather stages
//       them, cvt.rna's rounding by tensor_core.cuh's tf32_operand_bits: 10 mantissa bits, nearest, ties
//       away), float32 products and sums: what cuDNN
//       and PyTorch compute for float32 when TF32 is allowed. T = half: mma m16n8k16 on the float16 values
//       themselves (exact products), float32 accumulation, as conv2d_igemm's float16 path.
//   Tile configs the host instantiates (gpuconv/_cuda/conv_igemm_tc.py): "large" BM = BN = 128, 2 x 4 warps
//       (64 x 32 outputs per warp: 4 x 4 mma tiles, 64 accumulators per thread); "small" BM = BN = 64, 1 x 2
//       warps of the same 64 x 32 warp tile (64 threads; until issue 16's second pass 2 x 2 warps of 32 x 32,
//       which left the per-slice work and the B fragment loads spread over half as many mma per thread).
//       Chosen by conv2d_igemm's tile rule. BK (TensorCoreTileConfig): float large 16, float small 32, half
//       large 32, half small 64. The gathered operand's share per mma is 4 * KSTEP / BM elements whatever
//       the warps, so the small tile (64 filters) gathers twice the large tile's per mma: 0.5 float32 or
//       1 float16 element per mma, the bulk of its remaining non-mma instructions. So the float16 small
//       tile (runs of 4 k-steps per thread) gathers by whole k-steps (TapIm2colLoader::BY_KSTEP): one
//       predicate per k-step and no register clear per element, a run's partial k-step and zero k-steps
//       rewritten after stage() by a rolled tail path (stage_tail) that only such slices run.
//   Parameters: the pointers x, wp (the packed weights, 32-bit words), b, y, then the geometry as one
//       ConvParams cp passed by value (kernels/conv_params.cuh; the host fills it with
//       gpuconv/_cuda/abi.py conv_kernel_args).
//   Launch shape: 1-D block of 32 * WARPS_M * WARPS_N threads (256 large, 64 small); 1-D grid over
//       groups * ceil(M / BN) * ceil(Kg / BM) tiles with a 64-bit grid-stride loop.
//   Shared memory: static, 32 KB (TENSOR_CORE_STAGING_BYTES: two buffers of A and B slices) per block.
//   Main loop (tests/sass_check.py, sm_90, NVRTC 12.9 / 13.5): non-mma instructions per mma 3.81 / 3.88
//       (float large), 3.97 / 4.16 (half large), 4.94 / 5.14 (float small), 4.92 / 4.92 (half small: one
//       gathered float16 element per mma, each an address, a load, half a PRMT and a quarter of a store,
//       plus the per-k-step predicates and the tail path's rolled loops; 5.70 / 5.69 with a compare and
//       half a register clear per element). Floors in tests/sass_floors.json.
//   Registers (NVRTC 12.9 and 13.5, no spills, no stack; tests/test_nvrtc_compile.py prints them): large
//       198-201 on sm_80..sm_90 (float; half 210-214), 216-240 on sm_100 / sm_120 (half 221-238); small
//       238-248 (float), 240-254 (half) on sm_80..sm_120. Both within __launch_bounds__'s one block per SM
//       (64 accumulators per thread: 255 registers); the small tile's half instantiation has no room left.
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
// gemm_tile.cuh also comes through igemm_tc.cuh; named here because it is what the SASS check
// (tests/sass_check.py gemm_sources) looks for to list a GEMM-style source.
#include "gemm_tile.cuh"
#include "igemm_tc.cuh"

namespace gpuconv {

// 64 accumulators per thread in both tiles (BM*BN / THREADS): one block per SM at least, as conv2d_igemm's
// 8x8 tile (the small tile's 64-thread blocks still fit several per SM by registers and shared memory).
template <typename T, int BM, int BN, int WARPS_M, int WARPS_N>
__global__ void __launch_bounds__(32 * WARPS_M * WARPS_N,
                                  gemm_min_blocks_per_sm(BM * BN / (32 * WARPS_M * WARPS_N), 1))
conv2d_igemm_tc(const T* __restrict__ x,   // (N, C, H, W), C-contiguous
                const unsigned* __restrict__ wp,  // the weights packed in slices (PackedWeightLoader)
                const T* __restrict__ b,   // (K,) when has_bias, else any valid pointer (unread)
                T* __restrict__ y,         // (N, K, P, Q), C-contiguous, fully written
                const __grid_constant__ ConvParams cp) {  // the geometry, by value (conv_params.cuh)
    typedef TensorCoreTileConfig<T, BM, BN, WARPS_M, WARPS_N> Cfg;
    __shared__ GemmSmem<unsigned, Cfg> smem;
    tensor_core_conv<T, Cfg>(x, wp, b, y, cp, smem);
}

}  // namespace gpuconv
