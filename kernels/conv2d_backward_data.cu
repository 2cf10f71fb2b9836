// conv2d_backward_data.cu — the data gradient of conv2d (issue 17), and of conv1d and conv3d (issue 18), as ONE
// implicit-GEMM launch over every stride phase: deterministic, no atomics, no zero fill, no strided copy. One
// body (backward_data_phases<ND, ...>) for the three, the number of spatial dimensions living in the gather
// geometry (Im2colGeometry1d / Im2colGeometry / Im2colGeometry3d), the phase descriptor (DgradPhaseNd<ND>)
// and the epilogue's output mapping (PhaseOutput<ND>).
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
//   conv1d_backward_data<T, BM, BN, BK, TM, TN, ACT>: gx (N, C, L) from gy (N, K, Qg): the same with the
//       column axis only (phase b, taps Jc; Im2colGeometry1d's gather has no row digit; the epilogue's phase
//       pixel index is the column itself, no division). The parameter is DgradParamsNd<1>: the unit-height
//       ConvParams conv1d_igemm takes, dd_c, and 6-int descriptors (no row field).
//   conv3d_backward_data<T, BM, BN, BK, TM, TN, ACT>: gx (N, C, D, H, W) from gy (N, K, ODg, Pg, Qg): phases
//       (a_d, a, b) in three axes, the correlation's geometry Im2colGeometry3d (Conv3dParams: the plane plus
//       gy's depth, the phase's depth taps, padding and dilation), the epilogue storing gx[n, c, a_d + sd*d,
//       a + sh*i, b + sw*j] (d, i, j stepped with carries). DgradParamsNd<3>: Conv3dParams, dd_d, dd_r, dd_c,
//       14-int descriptors: 3,700 bytes for 64 phases, under the 4 KB of kernel parameters with the pointers.
//   Parameters: gy (N, K, Pg, Qg), wp (the packed sub-filters: phase by phase, each (C, Kg, J, Jc)
//       C-contiguous at its w_off, at most |w| elements in all), out (as gy; read only with ACT), gx (N, C,
//       H, W), all C-contiguous, then DgradParams p by value (below; mirrored by gpuconv/_cuda/
//       conv_backward_data.py DGRAD_PARAMS_DTYPE): the forward's ConvParams (P, Q = gy's rows / columns), the
//       phases' dilation, and up to DGRAD_MAX_PHASES = 64 phase descriptors. More phases (sh*sw > 64) take
//       several launches of 64 (the host's loop; each phase in exactly one).
//   Launch shape: 1-D block of (BM/TM) * (BN/TN) threads (gemm_tile.cuh's tiles: wide 128, small 64,
//       float64 small 256; conv3d: 64 for float32 / float16, 256 for float64), grid (x: the most tiles a
//       phase of the launch has -- groups * ceil(N * its pixels / BN) * ceil(Cg / BM) -- capped by the host,
//       y: 1, z: the launch's phases).
//   Tiles the host instantiates (gpuconv/_cuda/conv_backward_data.py data_tile: gemm.py's gemm_tile_for on
//       the whole gradient, N*H*W pixels x Cg channels per group, the wide tile where it says large): wide
//       64 x 128 x 16 and small 64 x 64 x 16, 8 x 8 per thread (float32 / float16), float64's 64 x 64 x 8
//       4 x 4; never split (the phases are the extra blocks). conv1d_backward_data: the same tiles;
//       conv3d_backward_data: conv3d_igemm's small tile 64 x 64 x 8 8x8 only (SMALL_TILE_3D), float64
//       64 x 64 x 8 4 x 4: the wide tile's 16 gathered pixels with their depths spilled 4-16 bytes on sm_100
//       / sm_120 (NVRTC 12.9).
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
//   conv1d_backward_data / conv3d_backward_data: main loop on sm_90, NVRTC 12.9, float32 without / with an
//       activation: 1-D wide 78.5% (1024 FMA / 1305), 72.9-74.9%, small 76.2% (1024 / 1343), 71.0-72.9%,
//       float64 50.6%; 3-D (64x64x8) 68.3% (512 / 750), 63.8-65.4%, float64 44.8% (docs/gradients.md,
//       "conv1d and conv3d data gradients on CUDA"; floors in tests/sass_floors.json). Registers on sm_90:
//       1-D 233-249, float64 148-152; 3-D 223-239, float64 176-180. No spills on sm_75..sm_120 (NVRTC 12.9 and 13.5;
//       tests/test_nvrtc_compile.py).
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

// One stride phase of gx: the correlation that computes gx[:, :, a::sh, b::sw] (2-D), gx[:, :, a_d::sd, a::sh,
// b::sw] (3-D), gx[:, :, b::sw] (1-D). Per axis the phase's start, its taps, its padding and its size, then
// the packed sub-filter's place; each dimension count has exactly its axes (1-D: no row field at all).
template <int ND> struct DgradPhaseNd;
template <> struct DgradPhaseNd<2> {
    int a, b;            // row / column phase: gx rows a + sh*i, columns b + sw*j
    int taps_r, taps_c;  // J, Jc: filter taps of the phase (0: no tap reaches it, its elements are 0)
    int pad_r, pad_c;    // top / left padding of gy in the phase's correlation (negative: rows skipped)
    int P, Q;            // the phase's gx rows / columns: ceil((H - a) / sh), ceil((W - b) / sw)
    int w_off;           // first element of the phase's packed sub-filter (C, Kg, J, Jc) in wp
    int vec_w;           // 1: Kg*J*Jc % 4 == 0 and wp + w_off aligned (the host checked): 4-wide weight loads
};
template <> struct DgradPhaseNd<3> {  // the 2-D fields with the depth's before each axis triple
    int a_d, a, b;                 // depth / row / column phase: gx depths a_d + sd*d
    int taps_d, taps_r, taps_c;    // Jd, J, Jc (all 0: no tap reaches the phase)
    int pad_d, pad_r, pad_c;       // front / top / left padding of gy in the phase's correlation
    int PD, P, Q;                  // the phase's gx depths / rows / columns
    int w_off;                     // its packed sub-filter (C, Kg, Jd, J, Jc) in wp
    int vec_w;                     // 1: Kg*Jd*J*Jc % 4 == 0 and aligned
};
template <> struct DgradPhaseNd<1> {  // the column's fields only
    int b, taps_c, pad_c, Q;  // column phase, Jc (0: no tap), left padding, the phase's gx columns
    int w_off, vec_w;         // its packed sub-filter (C, Kg, Jc) in wp; 1: Kg*Jc % 4 == 0 and aligned
};
typedef DgradPhaseNd<2> DgradPhase;

// The kernel parameter: the forward convolution (its ConvParams; 3-D its Conv3dParams; 1-D the unit-height
// ConvParams conv1d_igemm takes) whose output sizes are gy's (fewer than the forward's output when
// conv_transpose's output_padding reaches past the stride), the phases' dilation per axis (d / gcd(s, d)),
// and up to DGRAD_MAX_PHASES descriptors. Bytes: 2-D 2,648, 3-D 3,700, 1-D 1,620 (+ 32 of pointers: every
// instantiation's parameters under 4 KB).
template <int ND> struct DgradParamsNd;
template <> struct DgradParamsNd<2> {
    ConvParams fwd;    // the forward convolution; P, Q: gy's rows / columns
    int dd_r, dd_c;    // the phases' dilation: dh / gcd(sh, dh), dw / gcd(sw, dw)
    int phases;        // descriptors in use (= gridDim.z)
    DgradPhase ph[DGRAD_MAX_PHASES];
};
template <> struct DgradParamsNd<3> {
    Conv3dParams fwd;        // OD, hw.P, hw.Q: gy's depths / rows / columns
    int dd_d, dd_r, dd_c;
    int phases;
    DgradPhaseNd<3> ph[DGRAD_MAX_PHASES];
};
template <> struct DgradParamsNd<1> {
    ConvParams fwd;  // unit height (H = R = P = 1); W, Q: gx's and gy's lengths
    int dd_c;
    int phases;
    DgradPhaseNd<1> ph[DGRAD_MAX_PHASES];
};
typedef DgradParamsNd<2> DgradParams;
static_assert(sizeof(DgradPhase) == 10 * sizeof(int) && sizeof(DgradParams) == (22 + 10 * DGRAD_MAX_PHASES) * sizeof(int),
              "DgradParams: ints only, no padding (conv_backward_data.py mirrors it)");
static_assert(sizeof(DgradPhaseNd<3>) == 14 * sizeof(int) &&
              sizeof(DgradParamsNd<3>) == (29 + 14 * DGRAD_MAX_PHASES) * sizeof(int) &&
              sizeof(DgradPhaseNd<1>) == 6 * sizeof(int) &&
              sizeof(DgradParamsNd<1>) == (21 + 6 * DGRAD_MAX_PHASES) * sizeof(int) &&
              sizeof(DgradParamsNd<3>) + 4 * sizeof(void*) <= 4096,
              "DgradParamsNd<1/3>: ints only, no padding, under 4 KB with the pointers (conv_backward_data.py)");

// The (H, W) plane's ConvParams of the forward convolution (3-D: its hw).
__device__ __forceinline__ const ConvParams& dgrad_plane(const DgradParamsNd<1>& p) { return p.fwd; }
__device__ __forceinline__ const ConvParams& dgrad_plane(const DgradParamsNd<2>& p) { return p.fwd; }
__device__ __forceinline__ const ConvParams& dgrad_plane(const DgradParamsNd<3>& p) { return p.fwd.hw; }
// No tap reaches the phase (the host then sets every axis' taps to 0).
__device__ __forceinline__ bool dgrad_no_taps(const DgradPhaseNd<1>& ph) { return ph.taps_c == 0; }
__device__ __forceinline__ bool dgrad_no_taps(const DgradPhaseNd<2>& ph) { return ph.taps_r == 0 || ph.taps_c == 0; }
__device__ __forceinline__ bool dgrad_no_taps(const DgradPhaseNd<3>& ph) {
    return ph.taps_d == 0 || ph.taps_r == 0 || ph.taps_c == 0;
}
// The phase's gx elements per image and channel.
__device__ __forceinline__ index_t dgrad_phase_size(const DgradPhaseNd<1>& ph) { return ph.Q; }
__device__ __forceinline__ index_t dgrad_phase_size(const DgradPhaseNd<2>& ph) { return (index_t)ph.P * ph.Q; }
__device__ __forceinline__ index_t dgrad_phase_size(const DgradPhaseNd<3>& ph) {
    return (index_t)ph.PD * ph.P * ph.Q;
}

// The epilogue's output mapping (gemm_tile.cuh's Out): the phase's pixel pq of image n and gx channel
// k_first -> gx[n, k_first, a + sh*i, b + sw*j] (3-D: [a_d + sd*d, a + sh*i, b + sw*j]; 1-D: [b + sw*pq],
// pq being the column itself). (d, i, j) is found by divisions once per 4 pixels (begin) and stepped with
// carries after each (step; pq == 0 starts the next image): a division per pixel made the 8x8 tiles spill on
// sm_100 (the epilogue holds the 64 accumulators). The phase's fields are read from the kernel parameter
// where they are used (not kept in registers across the main loop). int: the host's 32-bit rule keeps the
// input's D*H*W (>= the phase's pixels) below 2^31.
template <int ND>
struct PhaseOutput {
    static constexpr bool CONTIGUOUS = false;
    const DgradParamsNd<ND>& p;
    int i, j;  // the current pixel's row / column within the phase (1-D: unused, pq is the column)
    int d;     // 3-D: its depth within the phase (unused otherwise: no register)
    __device__ __forceinline__ PhaseOutput(const DgradParamsNd<ND>& p_) : p(p_), i(0), j(0), d(0) {}
    __device__ __forceinline__ void begin(index_t pq) {
        if constexpr (ND == 2) {
            const int Q = p.ph[blockIdx.z].Q;
            i = (int)pq / Q;
            j = (int)pq - i * Q;
        } else if constexpr (ND == 3) {
            const int Q = p.ph[blockIdx.z].Q;
            const int PQ = p.ph[blockIdx.z].P * Q;
            d = (int)pq / PQ;
            const int rest = (int)pq - d * PQ;
            i = rest / Q;
            j = rest - i * Q;
        }
    }
    __device__ __forceinline__ void step(index_t pq) {
        if constexpr (ND == 2) {
            if (++j == p.ph[blockIdx.z].Q) {
                j = 0;
                ++i;
            }
            if (pq == 0) i = 0;  // the next image (the epilogue stepped n)
        } else if constexpr (ND == 3) {
            if (++j == p.ph[blockIdx.z].Q) {
                j = 0;
                if (++i == p.ph[blockIdx.z].P) {
                    i = 0;
                    ++d;
                }
            }
            if (pq == 0) d = 0;  // the next image (i and j wrapped to 0 already)
        }
    }
    __device__ __forceinline__ index_t offset(index_t n, index_t pq, int K, int k_first, index_t) const {
        const auto& ph = p.ph[blockIdx.z];
        if constexpr (ND == 1) {
            return (n * K + k_first) * row_stride(0) + ph.b + (index_t)p.fwd.sw * pq;
        } else if constexpr (ND == 2) {
            return (n * K + k_first) * row_stride(0) + (index_t)(ph.a + p.fwd.sh * i) * p.fwd.W + ph.b + p.fwd.sw * j;
        } else {
            const ConvParams& f = p.fwd.hw;
            return (n * K + k_first) * row_stride(0) + ((index_t)(ph.a_d + p.fwd.sd * d) * f.H + ph.a + f.sh * i) * f.W
                   + ph.b + f.sw * j;
        }
    }
    __device__ __forceinline__ index_t row_stride(index_t) const {
        if constexpr (ND == 1) return (index_t)p.fwd.W;
        else if constexpr (ND == 2) return (index_t)p.fwd.H * p.fwd.W;
        else return (index_t)p.fwd.D * p.fwd.hw.H * p.fwd.hw.W;
    }
};

// The phase's stride-1 correlation as the implicit GEMM's geometry parameter: input gy, filters = gx's C
// channels (groups as the forward's), the phase's taps, output the phase's pixels. No bias, no activation,
// no flip (the host packed the effective, flipped, taps).
__device__ __forceinline__ ConvParams dgrad_correlation(const ConvParams& f, int dd_r, int dd_c, int taps_r,
                                                        int taps_c, int pad_r, int pad_c, int P, int Q) {
    ConvParams cp;
    cp.N = f.N;
    cp.C = f.K;
    cp.H = f.P;
    cp.W = f.Q;
    cp.K = f.C;
    cp.R = taps_r;
    cp.S = taps_c;
    cp.groups = f.groups;
    cp.sh = 1;
    cp.sw = 1;
    cp.pt = pad_r;
    cp.pl = pad_c;
    cp.dh = dd_r;
    cp.dw = dd_c;
    cp.P = P;
    cp.Q = Q;
    cp.flip = 0;
    cp.has_bias = 0;
    cp.act = ACT_NONE;
    return cp;
}
// 2-D: the plane itself; 1-D: a unit-height plane (constants the 1-D gather never reads: H = R = P = 1);
// 3-D: the plane plus gy's depth as the input depth, the depth taps, padding and dilation, stride 1.
__device__ __forceinline__ ConvParams dgrad_phase_params(const DgradParamsNd<2>& p, const DgradPhaseNd<2>& ph) {
    return dgrad_correlation(p.fwd, p.dd_r, p.dd_c, ph.taps_r, ph.taps_c, ph.pad_r, ph.pad_c, ph.P, ph.Q);
}
__device__ __forceinline__ ConvParams dgrad_phase_params(const DgradParamsNd<1>& p, const DgradPhaseNd<1>& ph) {
    return dgrad_correlation(p.fwd, 1, p.dd_c, 1, ph.taps_c, 0, ph.pad_c, 1, ph.Q);
}
__device__ __forceinline__ Conv3dParams dgrad_phase_params(const DgradParamsNd<3>& p, const DgradPhaseNd<3>& ph) {
    Conv3dParams cp;
    cp.hw = dgrad_correlation(p.fwd.hw, p.dd_r, p.dd_c, ph.taps_r, ph.taps_c, ph.pad_r, ph.pad_c, ph.P, ph.Q);
    cp.D = p.fwd.OD;
    cp.KD = ph.taps_d;
    cp.sd = 1;
    cp.pf = ph.pad_d;
    cp.dd = p.dd_d;
    cp.OD = ph.PD;
    return cp;
}

// The gather geometry of each dimension count (im2col_loader.cuh).
template <int ND, typename T> struct DgradGeometry { typedef Im2colGeometry<T> type; };
template <typename T> struct DgradGeometry<1, T> { typedef Im2colGeometry1d<T> type; };
template <typename T> struct DgradGeometry<3, T> { typedef Im2colGeometry3d<T> type; };

// float64 asks for one block per SM, as conv2d_igemm.cu's split-K and fused-derivative kernels did: the
// 4x4 double tile's loaders plus the derivative's state do not fit 128 registers without spilling.
__host__ __device__ constexpr int dgrad_min_blocks_per_sm(int bytes, int threads, int tm, int tn) {
    return bytes == 8 ? 1 : gemm_blocks_per_sm(threads, tm, tn);
}

// The body of the three kernels: block (x, z) is tile x of phase z (grid-stride), or the zeros of a phase no
// tap reaches.
template <int ND, typename T, class Cfg, int ACT>
__device__ __forceinline__ void backward_data_phases(const T* __restrict__ gy, const T* __restrict__ wp,
                                                     const T* __restrict__ out, T* __restrict__ gx,
                                                     const DgradParamsNd<ND>& p,
                                                     GemmSmem<typename acc_type<T>::type, Cfg>& smem) {
    typedef GemmSmem<typename acc_type<T>::type, Cfg> Smem;
    const int z = blockIdx.z;
    const auto& ph = p.ph[z];
    const ConvParams& f = dgrad_plane(p);

    if (dgrad_no_taps(ph)) {
        // No tap reaches this phase: its elements are 0 (the whole block takes this branch, so no thread
        // skips a barrier of the GEMM below). Grid-stride over the phase's N*C*(its pixels) elements.
        const index_t PQ = dgrad_phase_size(ph);
        const index_t total = (index_t)f.N * f.C * PQ;
        PhaseOutput<ND> om(p);
        for (index_t e = (index_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
             e += (index_t)gridDim.x * blockDim.x) {
            const index_t nc = e / PQ;
            om.begin(e - nc * PQ);
            store<T>(gx + om.offset(0, e - nc * PQ, 0, 0, PQ) + nc * om.row_stride(0), typename acc_type<T>::type(0));
        }
        return;
    }
    // b: unread (has_bias 0); out: unread without ACT.
    implicit_gemm_conv<T, Cfg, RegisterTile<T, Cfg>, Smem, false, typename DgradGeometry<ND, T>::type, ACT,
                       PhaseOutput<ND>>(gy, wp + ph.w_off, gx, gx, dgrad_phase_params(p, ph), ph.vec_w, smem, 1, 0,
                                        nullptr, out, PhaseOutput<ND>(p));
}

#define GPUCONV_DGRAD_BOUNDS(T, BM, BN, TM, TN) \
    __launch_bounds__((BM / TM) * (BN / TN), dgrad_min_blocks_per_sm(sizeof(T), (BM / TM) * (BN / TN), TM, TN))

template <typename T, int BM, int BN, int BK, int TM, int TN, int ACT>
__global__ void GPUCONV_DGRAD_BOUNDS(T, BM, BN, TM, TN)
conv2d_backward_data(const T* __restrict__ gy,   // (N, K, Pg, Qg)
                     const T* __restrict__ wp,   // the packed sub-filters (see DgradPhase::w_off)
                     const T* __restrict__ out,  // (N, K, Pg, Qg): the activated forward output (ACT only)
                     T* __restrict__ gx,         // (N, C, H, W), fully written
                     const __grid_constant__ DgradParams p) {
    typedef GemmTileConfig<BM, BN, BK, TM, TN> Cfg;
    __shared__ GemmSmem<typename acc_type<T>::type, Cfg> smem;
    backward_data_phases<2, T, Cfg, ACT>(gy, wp, out, gx, p, smem);
}

template <typename T, int BM, int BN, int BK, int TM, int TN, int ACT>
__global__ void GPUCONV_DGRAD_BOUNDS(T, BM, BN, TM, TN)
conv1d_backward_data(const T* __restrict__ gy,   // (N, K, Qg)
                     const T* __restrict__ wp,   // the packed sub-filters, phase by phase (C, Kg, Jc)
                     const T* __restrict__ out,  // (N, K, Qg) (ACT only)
                     T* __restrict__ gx,         // (N, C, L), fully written
                     const __grid_constant__ DgradParamsNd<1> p) {
    typedef GemmTileConfig<BM, BN, BK, TM, TN> Cfg;
    __shared__ GemmSmem<typename acc_type<T>::type, Cfg> smem;
    backward_data_phases<1, T, Cfg, ACT>(gy, wp, out, gx, p, smem);
}

template <typename T, int BM, int BN, int BK, int TM, int TN, int ACT>
__global__ void GPUCONV_DGRAD_BOUNDS(T, BM, BN, TM, TN)
conv3d_backward_data(const T* __restrict__ gy,   // (N, K, ODg, Pg, Qg)
                     const T* __restrict__ wp,   // the packed sub-filters, phase by phase (C, Kg, Jd, J, Jc)
                     const T* __restrict__ out,  // (N, K, ODg, Pg, Qg) (ACT only)
                     T* __restrict__ gx,         // (N, C, D, H, W), fully written
                     const __grid_constant__ DgradParamsNd<3> p) {
    typedef GemmTileConfig<BM, BN, BK, TM, TN> Cfg;
    __shared__ GemmSmem<typename acc_type<T>::type, Cfg> smem;
    backward_data_phases<3, T, Cfg, ACT>(gy, wp, out, gx, p, smem);
}

#undef GPUCONV_DGRAD_BOUNDS

}  // namespace gpuconv
