// conv2d_backward_data.cu — the data gradient of conv2d as ONE implicit-GEMM launch over every stride phase
// (issue 17): deterministic, no atomics, no zero fill, no strided copy.
//
// Kernels in this file:
//   conv2d_backward_data<T, BM, BN, BK, TM, TN, ACT>: gx (N, C, H, W) from gy (N, K, Pg, Qg) and the
//       per-phase sub-filters packed by the host (wp). Input rows h = a + sh*i of row phase a (0 <= a < sh)
//       receive only the filter taps r with (a + pt - r*dh) % sh == 0, r = r0 + j*m (m = sh / gcd(sh, dh)),
//       reading gy row i + o0 - j*dd (dd = dh / gcd(sh, dh)); likewise the columns. So phase (a, b) of gx is
//       a stride-1 correlation of gy with that phase's taps (in reverse order), dilation (dd_r, dd_c) and
//       padding (pad_r, pad_c) -- possibly negative: gy rows the phase never reads -- which is exactly
//       conv2d_igemm's implicit GEMM (implicit_gemm_conv of im2col_loader.cuh: Im2colLoader gathers gy, the
//       weight loader, slice loop and RegisterTile are gemm_tile.cuh's) on the phase's ConvParams, with
//       K' = C (gx's channels are the GEMM's rows: filter g*Cg + c of the correlation is input channel
//       g*Cg + c, its channels group g's Kg filters), C' = K, reduction Kg*J*Jc. blockIdx.z selects the
//       phase (its DgradPhase in the parameter), blockIdx.x walks that phase's tiles (64-bit grid-stride),
//       and the epilogue stores pixel (n, i, j) of the phase directly at gx[n, c, a + sh*i, b + sw*j]
//       (PhaseOutput below, gemm_tile.cuh's output-mapping hook): the phases partition gx, so every element
//       is written by exactly one thread, once, in a fixed summation order. A phase no tap reaches
//       (taps_r or taps_c 0: stride > kernel, or dilation sharing a factor with the stride) writes its
//       elements' zeros itself (grid-stride over them), so gx needs no fill beforehand.
//       ACT: ACT_NONE, the plain data gradient (conv2d_input, conv_transpose2d, conv2d_backward without an
//       activation); relu..tanh: the gather multiplies each gy element by the derivative of activation ACT
//       computed from `out` (the forward's activated output, laid out as gy) at the same offset
//       (Im2colLoader's DACT, act_backward in common.cuh; padding stays 0), so conv2d_backward needs no
//       gy * act'(out) pre-pass. A template argument: no activation switch in the main loop.
//   Parameters: gy (N, K, Pg, Qg), wp (the packed sub-filters: phase by phase, each (C, Kg, J, Jc)
//       C-contiguous at its w_off, at most |w| elements in all), out (as gy; read only with ACT), gx (N, C,
//       H, W), all C-contiguous, then DgradParams p by value (below; mirrored by gpuconv/_cuda/
//       conv_backward_data.py DGRAD_PARAMS_DTYPE): the forward's ConvParams (P, Q = gy's rows / columns), the
//       phases' dilation, and up to DGRAD_MAX_PHASES = 64 phase descriptors. More phases (sh*sw > 64) take
//       several launches of 64 (the host's loop; each phase in exactly one).
//   Launch shape: 1-D block of (BM/TM) * (BN/TN) threads (gemm_tile.cuh's tiles: wide 128, small 64,
//       float64 small 256), grid (x: the most tiles a phase of the launch has -- groups * ceil(N*P_a*Q_b /
//       BN) * ceil(Cg / BM) -- capped by the host, y: 1, z: the launch's phases).
//   Tiles the host instantiates (gpuconv/_cuda/conv_backward_data.py data_tile: gemm.py's gemm_tile_for on
//       the whole gradient, N*H*W pixels x Cg channels per group, the wide tile where it says large): wide
//       64 x 128 x 16 and small 64 x 64 x 16, 8 x 8 per thread (float32 / float16), float64's 64 x 64 x 8
//       4 x 4; never split (the phases are the extra blocks).
//   Shared memory: static, 2 * BK * (BM + 4 + BN) * sizeof(acc_type<T>) = 25,088 (wide), 16,896 (small,
//       float32 / float16; float64 with BK = 8) bytes.
//   Registers (NVRTC 12.9 and 13.5, sm_75..sm_120, no spills, no stack; tests/test_nvrtc_compile.py):
//       __launch_bounds__ asks for gemm_blocks_per_sm (255 per thread for the 8x8 tiles), float64 for one
//       block per SM (dgrad_min_blocks_per_sm). Used on sm_90: wide 249-255, small 229-233, float64 164-168;
//       the 8x8 small tile with an activation is at 254-255 on sm_100 (the epilogue steps the phase's (i, j)
//       instead of dividing per pixel, see PhaseOutput: with the division it spilled 4 bytes).
//   Main loop (SASS, tests/sass_check.py; floors in tests/sass_floors.json): FMA share of one slice on
//       sm_90, NVRTC 12.9 (13.5 within 0.4 points): float32 wide 75.9% (1024 FMA / 1350) without an
//       activation, 70.6-72.6% with one (the derivative's load, convert and multiply or select per gathered
//       element); small 74.2% (1024 / 1380), 69.1-71.1%; float16 wide 74.3%, 68.6-70.5%, small 71.2%,
//       66.0-67.8%; float64 47.8%, 44.1-46.4%. (conv2d_igemm's own wide / small tiles: 76.3% / 73.7%.)
//   Measured speed: not yet (no GPU measurement; docs/gradients.md).
//
// Semantics: docs/gradients.md ("The CUDA data gradient"). float16 is stored in shared memory and
// accumulated as float32, rounded once per gx element.
#include "common.cuh"
#include "conv_params.cuh"
#include "gemm_tile.cuh"
#include "im2col_loader.cuh"

namespace gpuconv {

#define DGRAD_MAX_PHASES 64  // phases per launch (MAX_PHASES in gpuconv/_cuda/conv_backward_data.py)

// One stride phase (a, b) of gx: the correlation that computes gx[:, :, a::sh, b::sw].
struct DgradPhase {
    int a, b;            // row / column phase: gx rows a + sh*i, columns b + sw*j
    int taps_r, taps_c;  // J, Jc: filter taps of the phase (0: no tap reaches it, its elements are 0)
    int pad_r, pad_c;    // top / left padding of gy in the phase's correlation (negative: rows skipped)
    int P, Q;            // the phase's gx rows / columns: ceil((H - a) / sh), ceil((W - b) / sw)
    int w_off;           // first element of the phase's packed sub-filter (C, Kg, J, Jc) in wp
    int vec_w;           // 1: Kg*J*Jc % 4 == 0 and wp + w_off aligned (the host checked): 4-wide weight loads
};
struct DgradParams {
    ConvParams fwd;    // the forward convolution; P, Q: gy's rows / columns (fewer than the forward's
                       // output when conv_transpose2d's output_padding reaches past the stride)
    int dd_r, dd_c;    // the phases' dilation: dh / gcd(sh, dh), dw / gcd(sw, dw)
    int phases;        // descriptors in use (= gridDim.z)
    DgradPhase ph[DGRAD_MAX_PHASES];
};
static_assert(sizeof(DgradPhase) == 10 * sizeof(int) && sizeof(DgradParams) == (22 + 10 * DGRAD_MAX_PHASES) * sizeof(int),
              "DgradParams: ints only, no padding (conv_backward_data.py mirrors it)");

// The epilogue's output mapping (gemm_tile.cuh's Out): the phase's pixel pq = i*Q + j of image n and gx
// channel k_first -> gx[n, k_first, a + sh*i, b + sw*j]. (i, j) is found by one division per 4 pixels
// (begin) and stepped with a carry after each (step; pq == 0 starts the next image): a division per pixel made the 8x8 tiles spill on
// sm_100 (the epilogue holds the 64 accumulators). The phase's fields are read from the kernel parameter
// where they are used (not kept in registers across the main loop). int: the host's 32-bit rule keeps H*W
// (>= the phase's P*Q) below 2^31.
struct PhaseOutput {
    static constexpr bool CONTIGUOUS = false;
    const DgradParams& p;
    int i, j;  // the current pixel's row / column within the phase
    __device__ __forceinline__ void begin(index_t pq) {
        const int Q = p.ph[blockIdx.z].Q;
        i = (int)pq / Q;
        j = (int)pq - i * Q;
    }
    __device__ __forceinline__ void step(index_t pq) {
        if (++j == p.ph[blockIdx.z].Q) {
            j = 0;
            ++i;
        }
        if (pq == 0) i = 0;  // the next image (the epilogue stepped n)
    }
    __device__ __forceinline__ index_t offset(index_t n, index_t, int K, int k_first, index_t) const {
        const DgradPhase& ph = p.ph[blockIdx.z];
        return (n * K + k_first) * row_stride(0) + (index_t)(ph.a + p.fwd.sh * i) * p.fwd.W + ph.b + p.fwd.sw * j;
    }
    __device__ __forceinline__ index_t row_stride(index_t) const { return (index_t)p.fwd.H * p.fwd.W; }
};

// float64 asks for one block per SM, as conv2d_igemm.cu's split-K and fused-derivative kernels did: the
// 4x4 double tile's loaders plus the derivative's state do not fit 128 registers without spilling.
__host__ __device__ constexpr int dgrad_min_blocks_per_sm(int bytes, int threads, int tm, int tn) {
    return bytes == 8 ? 1 : gemm_blocks_per_sm(threads, tm, tn);
}

template <typename T, int BM, int BN, int BK, int TM, int TN, int ACT>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), dgrad_min_blocks_per_sm(sizeof(T), (BM / TM) * (BN / TN), TM, TN))
conv2d_backward_data(const T* __restrict__ gy,   // (N, K, Pg, Qg)
                     const T* __restrict__ wp,   // the packed sub-filters (see DgradPhase::w_off)
                     const T* __restrict__ out,  // (N, K, Pg, Qg): the activated forward output (ACT only)
                     T* __restrict__ gx,         // (N, C, H, W), fully written
                     const __grid_constant__ DgradParams p) {
    typedef GemmTileConfig<BM, BN, BK, TM, TN> Cfg;
    typedef GemmSmem<typename acc_type<T>::type, Cfg> Smem;
    __shared__ Smem smem;
    const int z = blockIdx.z;
    const DgradPhase& ph = p.ph[z];
    const ConvParams& f = p.fwd;

    if (ph.taps_r == 0 || ph.taps_c == 0) {
        // No tap reaches this phase: its elements are 0 (the whole block takes this branch, so no thread
        // skips a barrier of the GEMM below). Grid-stride over the phase's N*C*P*Q elements.
        const index_t PQ = (index_t)ph.P * ph.Q;
        const index_t total = (index_t)f.N * f.C * PQ;
        PhaseOutput om{p, 0, 0};
        for (index_t e = (index_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
             e += (index_t)gridDim.x * blockDim.x) {
            const index_t nc = e / PQ;
            om.begin(e - nc * PQ);
            store<T>(gx + om.offset(0, 0, 0, 0, PQ) + nc * om.row_stride(0), typename acc_type<T>::type(0));
        }
        return;
    }
    // The phase's stride-1 correlation: input gy (N, K, Pg, Qg), filters = gx's C channels (groups as the
    // forward's), taps J x Jc, output the phase's P x Q pixels. No bias, no activation, no flip (the host
    // packed the effective, flipped, taps).
    ConvParams cp;
    cp.N = f.N;
    cp.C = f.K;
    cp.H = f.P;
    cp.W = f.Q;
    cp.K = f.C;
    cp.R = ph.taps_r;
    cp.S = ph.taps_c;
    cp.groups = f.groups;
    cp.sh = 1;
    cp.sw = 1;
    cp.pt = ph.pad_r;
    cp.pl = ph.pad_c;
    cp.dh = p.dd_r;
    cp.dw = p.dd_c;
    cp.P = ph.P;
    cp.Q = ph.Q;
    cp.flip = 0;
    cp.has_bias = 0;
    cp.act = ACT_NONE;
    // b: unread (has_bias 0); out: unread without ACT.
    implicit_gemm_conv<T, Cfg, RegisterTile<T, Cfg>, Smem, false, Im2colGeometry<T>, ACT, PhaseOutput>(
        gy, wp + ph.w_off, gx, gx, cp, ph.vec_w, smem, 1, 0, nullptr, out, PhaseOutput{p, 0, 0});
}

}  // namespace gpuconv
