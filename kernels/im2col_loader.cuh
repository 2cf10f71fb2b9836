// im2col_loader.cuh — the implicit GEMM's view of x, for 1, 2 or 3 spatial dimensions: Im2colGeometry (the 2-D
// geometry and the decomposition of an output pixel, shared with igemm_tc.cuh's own gather and the
// backward kernels), Im2colGeometry1d (a row without height: conv1d_igemm.cu) and Im2colGeometry3d (the 2-D
// one plus a depth axis: conv3d_igemm.cu); Im2colLoader, the B operand loader of the CUDA-core implicit GEMM
// for any of them (a template parameter: the number of spatial dimensions lives in the geometry and in the
// loader's tap walk, nowhere else), which gathers a BK x BN slice of the im2col matrix from x on the fly,
// with stride, asymmetric padding (read as 0), dilation and flip in its index math, and plugs into
// gemm_tile.cuh's slice loop (fetch / stage; see the operand-loader contract there); implicit_gemm_conv, the
// body of conv1d_igemm, conv2d_igemm and conv3d_igemm (and of their split-K kernels). With a derivative
// parameter DACT (any of the three geometries; default ACT_NONE: no state, no code) the loader multiplies
// each gathered element by the derivative of activation DACT computed from `out` at the same offset
// (act_backward, common.cuh): conv2d_backward_data.cu's conv{1,2,3}d_backward_data, the data gradient with
// the activation's derivative fused.
#pragma once

#include "common.cuh"
#include "conv_params.cuh"
#include "gemm_tile.cuh"

namespace gpuconv {

// The convolution's geometry as the im2col gathers see it, and the one place an output pixel m is
// decomposed into its image and the input position of its first tap (Im2colLoader below, per pixel per
// tile; igemm_tc.cuh's TapIm2colLoader, one pixel per thread).
template <typename T>
struct Im2colGeometry {
    static constexpr int ND = 2;  // spatial dimensions (Im2colGeometry1d: 1, Im2colGeometry3d: 3)
    typedef ConvParams Params;    // what the kernel receives (Im2colGeometry3d: Conv3dParams)
    const T* x;
    int C, H, W, R, S, Cg, sh, sw, pt, pl, dh, dw, P, Q, flip, kred;
    int tap_dh, tap_dw;  // input step per filter tap: (dh, dw), or (-dh, -dw) with flip (see pixel_origin)
    index_t HW, PQ, M;

    // cp: the kernel's geometry; Cg = C / groups and M = N*P*Q as the kernel computed them.
    __device__ __forceinline__ Im2colGeometry(const T* x_, const ConvParams& cp, int Cg_, index_t M_)
        : x(x_), C(cp.C), H(cp.H), W(cp.W), R(cp.R), S(cp.S), Cg(Cg_), sh(cp.sh), sw(cp.sw), pt(cp.pt),
          pl(cp.pl), dh(cp.dh), dw(cp.dw), P(cp.P), Q(cp.Q), flip(cp.flip), kred(Cg_ * cp.R * cp.S),
          tap_dh(cp.flip ? -cp.dh : cp.dh), tap_dw(cp.flip ? -cp.dw : cp.dw), HW((index_t)cp.H * cp.W),
          PQ((index_t)cp.P * cp.Q), M(M_) {}

    // Output pixel m (< M) of group g: sets (ih, iw), the input row / column of the first tap the gather
    // walks from (negative inside the top / left padding), and returns the element offset of
    // x[n, g*Cg, 0, 0] (64-bit: x may exceed 2^31 elements).
    __device__ __forceinline__ index_t pixel_origin(index_t m, int g, int& ih, int& iw) const {
        const index_t n = m / PQ;
        const index_t pq = m - n * PQ;
        const int p = (int)(pq / Q);
        const int q = (int)(pq - (index_t)p * Q);
        // int: p*sh <= H + pt + pb - 1 - (R-1)*dh, which the host's 32-bit rule keeps below 2^31.
        ih = p * sh - pt;
        iw = q * sw - pl;
        if (flip) {
            // Flip: weight tap (r, s) pairs with input tap (R-1-r, S-1-s), i.e. row
            // ih + (R-1-r)*dh = (ih + (R-1)*dh) - r*dh: start at the last tap and step backwards
            // (the gathers use the signed steps tap_dh / tap_dw), so the gather itself is flip-free.
            ih += (R - 1) * dh;
            iw += (S - 1) * dw;
        }
        return ((index_t)n * C + (index_t)g * Cg) * HW;
    }

    // Elements between consecutive channels of x (H*W; the 3-D geometry's is D*H*W).
    __device__ __forceinline__ index_t channel_stride() const { return HW; }
    // The plane's ConvParams of the kernel's parameter (for 2-D the parameter itself), the GEMM's reduction
    // length Cg*R*S and the outputs per image P*Q, as implicit_gemm_conv forms them.
    __device__ __forceinline__ static const ConvParams& plane(const Params& p) { return p; }
    __device__ __forceinline__ static int reduction(const Params& p, int Cg) { return Cg * p.R * p.S; }
    __device__ __forceinline__ static index_t outputs_per_image(const Params& p) { return (index_t)p.P * p.Q; }
};

// The 3-D geometry: the 2-D one of an (H, W) plane (Conv3dParams::hw, whose members keep their 2-D meaning:
// H, W, R, S, P, Q, strides, paddings, dilations of the plane; HW = H*W is the step between input depths)
// plus the depth axis: D input depths, KD filter depths, stride sd, front padding pf, dilation dd, OD output
// depths. The reduction runs over (c, t, r, s), kred = Cg*KD*R*S (w's C-contiguous (K, Cg, KD, R, S) order);
// the pixels over (n, od, p, q), OPQ = OD*P*Q per image (y's (N, K, OD, P, Q) order).
template <typename T>
struct Im2colGeometry3d : Im2colGeometry<T> {
    static constexpr int ND = 3;
    typedef Conv3dParams Params;
    int D, KD, sd, pf, dd, OD;
    int tap_dd;       // input depth step per filter depth tap: dd, or -dd with flip
    index_t DHW, OPQ;  // channel stride D*H*W; outputs per image OD*P*Q

    __device__ __forceinline__ Im2colGeometry3d(const T* x_, const Conv3dParams& cp, int Cg_, index_t M_)
        : Im2colGeometry<T>(x_, cp.hw, Cg_, M_), D(cp.D), KD(cp.KD), sd(cp.sd), pf(cp.pf), dd(cp.dd), OD(cp.OD),
          tap_dd(cp.hw.flip ? -cp.dd : cp.dd), DHW((index_t)cp.D * cp.hw.H * cp.hw.W),
          OPQ((index_t)cp.OD * cp.hw.P * cp.hw.Q) {
        this->kred = reduction(cp, Cg_);  // the base set Cg*R*S: the reduction of one depth tap
    }

    // Output pixel m (< M) of group g: sets (id, ih, iw), the input position of its first tap (with flip the
    // last one, stepped backwards by the signed tap steps: see the 2-D pixel_origin), and returns the element
    // offset of x[n, g*Cg, 0, 0, 0] (64-bit).
    __device__ __forceinline__ index_t pixel_origin(index_t m, int g, int& id, int& ih, int& iw) const {
        const index_t n = m / OPQ;
        const index_t opq = m - n * OPQ;
        const index_t od = opq / this->PQ;
        const index_t pq = opq - od * this->PQ;
        const int p = (int)(pq / this->Q);
        const int q = (int)(pq - (index_t)p * this->Q);
        // int: od*sd <= D + pf + pb - 1 - (KD-1)*dd, which the host's 32-bit rule keeps below 2^31.
        id = (int)od * sd - pf;
        ih = p * this->sh - this->pt;
        iw = q * this->sw - this->pl;
        if (this->flip) {
            id += (KD - 1) * dd;
            ih += (this->R - 1) * this->dh;
            iw += (this->S - 1) * this->dw;
        }
        return ((index_t)n * this->C + (index_t)g * this->Cg) * DHW;
    }

    __device__ __forceinline__ index_t channel_stride() const { return DHW; }
    __device__ __forceinline__ static const ConvParams& plane(const Params& p) { return p.hw; }
    // int: the host's 32-bit rule keeps Cg*KD*R*S below 2^31.
    __device__ __forceinline__ static int reduction(const Params& p, int Cg) { return Cg * p.KD * p.hw.R * p.hw.S; }
    __device__ __forceinline__ static index_t outputs_per_image(const Params& p) {
        return (index_t)p.OD * p.hw.P * p.hw.Q;
    }
};

// The 1-D geometry: x (N, C, W) -> y (N, K, Q), w (K, Cg, S). The kernel receives the ConvParams of the 1-D
// call as a convolution of unit height (H = R = P = 1, sh = dh = 1, pt = 0: gpuconv/_cuda/abi.py fills it
// from the geometry's as_2d()), so the base holds the row's members; the 1-D code reads none of the height's
// (H, R, sh, pt, dh, P, tap_dh): the loader's tap walk is (c, s) and a pixel is (n, q). The reduction runs
// over (c, s), kred = Cg*S (w's (K, Cg, S) order), the pixels over (n, q), Q per image (y's (N, K, Q)).
template <typename T>
struct Im2colGeometry1d : Im2colGeometry<T> {
    static constexpr int ND = 1;
    typedef ConvParams Params;

    __device__ __forceinline__ Im2colGeometry1d(const T* x_, const ConvParams& cp, int Cg_, index_t M_)
        : Im2colGeometry<T>(x_, cp, Cg_, M_) {
        this->kred = reduction(cp, Cg_);  // Cg*S (the base's Cg*R*S with R = 1, without reading R)
    }

    // Output pixel m (< M) of group g: sets iw, the input column of its first tap (with flip the last one,
    // stepped backwards by the signed tap step: see the 2-D pixel_origin), and returns the element offset of
    // x[n, g*Cg, 0] (64-bit). One division per pixel (the 2-D one divides twice: by P*Q, then by Q).
    __device__ __forceinline__ index_t pixel_origin(index_t m, int g, int& iw) const {
        const index_t n = m / this->Q;
        const int q = (int)(m - n * this->Q);
        // int: q*sw <= W + pl + pr - 1 - (S-1)*dw, which the host's 32-bit rule keeps below 2^31.
        iw = q * this->sw - this->pl;
        if (this->flip) iw += (this->S - 1) * this->dw;
        return ((index_t)n * this->C + (index_t)g * this->Cg) * this->W;
    }

    // Elements between consecutive channels of x: W.
    __device__ __forceinline__ index_t channel_stride() const { return (index_t)this->W; }
    __device__ __forceinline__ static const ConvParams& plane(const Params& p) { return p; }
    // int: the host's 32-bit rule keeps Cg*S below 2^31.
    __device__ __forceinline__ static int reduction(const Params& p, int Cg) { return Cg * p.S; }
    __device__ __forceinline__ static index_t outputs_per_image(const Params& p) { return (index_t)p.Q; }
};

// Im2colLoader's state for the depth axis: none in 2-D, so that the 2-D loader holds exactly what it did
// before the 3-D one existed (and compiles to the same machine code).
template <int ND, int LOADS>
struct Im2colDepthState {};
template <int LOADS>
struct Im2colDepthState<3, LOADS> {
    int step_t;      // BK taps' depth-tap digit (0 <= step_t < KD)
    int t;           // per tile: the depth tap of the next slice's row
    int id0[LOADS];  // per tile and pixel: the input depth of tap 0 (negative inside the front padding)
};

// Im2colLoader's state for a fused activation derivative: none without one (DACT = ACT_NONE), so that the
// forward loaders hold exactly what they did before it existed (and compile to the same machine code).
template <int DACT>
struct Im2colDerivativeState {
    // Bytes from x to the activated forward output `out`, laid out exactly as x (same shape, C-contiguous):
    // out's element at x's address a is at a + out_shift. One 64-bit value rather than a second pointer per
    // pixel: the float16 8x8 tiles are at their 255-register bound.
    index_t out_shift;
};
template <>
struct Im2colDerivativeState<ACT_NONE> {};

// The B operand of the implicit GEMM: B[kr, m] = x[n, g*Cg + c, p*sh - pt + r'*dh, q*sw - pl + s'*dw]
// with kr = (c*R + r)*S + s, m = (n*P + p)*Q + q, (r', s') = (r, s), or (R-1-r, S-1-s) with flip (true
// convolution pairs weight tap (r, s) with the mirrored input tap), and 0 outside the image (padding).
// Geo = Im2colGeometry3d: the same with a depth, B[kr, m] = x[n, g*Cg + c, od*sd - pf + t'*dd, ...] with
// kr = ((c*KD + t)*R + r)*S + s and m = ((n*OD + od)*P + p)*Q + q. The depth exists only in the code under
// `if constexpr (ND == 3)`: with the 2-D geometry the loader is exactly the 2-D one (same machine code).
// Geo = Im2colGeometry1d: no row, B[kr, m] = x[n, g*Cg + c, q*sw - pl + s'*dw] with kr = c*S + s, m = n*Q + q;
// the row digit r, its step and carry, the per-pixel rows ih0 and the row compare exist only under
// `if constexpr (ND >= 2)` paths, so in 1-D they compile away (the members r, step_r, ih0 are never read --
// r's initial 0 is a dead store -- and take no register).
//
// Thread t loads one row of each slice, row0 = t / CW, at LOADS pixel columns t % CW + j * CW (j < LOADS,
// CW = THREADS / BK column threads): consecutive threads read consecutive pixels (coalesced along W for
// stride 1), and the tap (c, r, s) of the row -- with its offsets -- is worked out once per slice for all
// of the thread's LOADS pixels. Each pixel's decomposition is done once per tile (begin_tile).
//
// No division in the main loop: the tap of row0 is found by one division pair per tile and then advanced
// by BK taps per slice with a constant carry step (BK as (step_c, step_r, step_s), found once per launch in
// the constructor; 3-D: (step_c, step_t, step_r, step_s), one carry more; 1-D: (step_c, step_s), one carry
// less). This is why fetch() must be called for k0 = k_start, k_start + BK, ... in that order, once each,
// after begin_tile(m0, g, k_start) (gemm_slice_range does exactly that; k_start = 0 but for split-K's later
// splits).
// DACT != ACT_NONE (1-D, 2-D, 3-D): B[kr, m] = act_backward(x[...], out[...], DACT) at the same element of x and
// `out` (the data gradient's gy and the forward's output, cropped alike); padding and rows past kred stay 0
// (out is read only where x is).
template <typename T, class Cfg, class G = Im2colGeometry<T>, int DACT = ACT_NONE>
struct Im2colLoader : G, Im2colDepthState<G::ND, Cfg::BK * Cfg::BN / Cfg::THREADS>, Im2colDerivativeState<DACT> {
    typedef typename acc_type<T>::type A;
    typedef G Geo;
    static constexpr int ND = Geo::ND;
    using Geo::x; using Geo::H; using Geo::W; using Geo::R; using Geo::S; using Geo::dh; using Geo::flip;
    using Geo::kred; using Geo::tap_dh; using Geo::tap_dw; using Geo::HW; using Geo::M;
    static constexpr int BN = Cfg::BN, BK = Cfg::BK;
    static constexpr int LOADS = BK * BN / Cfg::THREADS;  // pixels per thread per slice (all in one row)
    static constexpr int CW = Cfg::THREADS / BK;          // threads per row of a slice
    static_assert(Cfg::THREADS % BK == 0 && CW * LOADS == BN, "pattern must tile BK x BN exactly");
    static_assert(ND == 1 || ND == 2 || ND == 3, "1, 2 or 3 spatial dimensions");

    int col, row0;  // this thread's first column of the tile and its row of each slice
    int step_r, step_s;  // BK taps = step_c channels + [step_t depth taps +] step_r filter rows + step_s columns
    index_t step_c_off;  // step_c * channel stride (0 <= step_t < KD, 0 <= step_r < R, 0 <= step_s < S)
    // per tile:
    index_t coff;   // c * channel stride for the tap (c, [t,] r, s) of the next slice's row row0
    int r, s;       // (3-D: t, the depth tap, in Im2colDepthState; 1-D: r unused)
    // per tile and pixel j: the address of x[n, g*Cg, [id0,] ih0, iw0] (outside x when the position lies in
    // the padding; only addresses of taps inside the image are ever read), and the input row / column (3-D:
    // depth) of tap 0 (negative inside the top / left / front padding). A pixel past M (a partial last tile)
    // gets a row ih0 that every tap puts above the image (ih0 + dih <= -1 for every tap row offset dih), so
    // it reads nothing (3-D: whatever its depth).
    const char* pix[LOADS];
    int ih0[LOADS], iw0[LOADS];  // (3-D: id0, in Im2colDepthState; 1-D: ih0 unused)
    A regs[LOADS];

    __device__ __forceinline__ Im2colLoader(const T* x_, const typename Geo::Params& cp, int Cg_, index_t M_,
                                            int tid, const T* out_ = nullptr)
        : Geo(x_, cp, Cg_, M_), col(tid % CW), row0(tid / CW), coff(0), r(0), s(0) {
        if constexpr (DACT != ACT_NONE)
            this->out_shift = reinterpret_cast<const char*>(out_) - reinterpret_cast<const char*>(x_);
        if constexpr (ND == 1) {
            const int step_c = BK / S;
            step_s = BK - step_c * S;
            step_c_off = (index_t)step_c * this->channel_stride();
        } else if constexpr (ND == 2) {
            const int RS = R * S;
            const int step_c = BK / RS;
            step_r = (BK - step_c * RS) / S;
            step_s = BK - step_c * RS - step_r * S;
            step_c_off = (index_t)step_c * HW;
        } else {
            this->t = 0;
            const int RS = R * S, TRS = this->KD * RS;
            const int step_c = BK / TRS;
            const int rest = BK - step_c * TRS;  // < KD*R*S: (step_t, step_r, step_s) in the tap's radices
            this->step_t = rest / RS;
            step_r = (rest - this->step_t * RS) / S;
            step_s = rest - this->step_t * RS - step_r * S;
            step_c_off = (index_t)step_c * this->channel_stride();
        }
    }

    // k_start: the reduction index of the first fetch (a multiple of BK; > 0 for split-K's later splits).
    __device__ __forceinline__ void begin_tile(index_t m0, int g, int k_start = 0) {
        GPUCONV_UNROLL
        for (int j = 0; j < LOADS; ++j) {
            if constexpr (ND == 1) {
                // No row: the sentinel is the column. Tap column offsets diw are s * dw in [0, (S-1)*dw], or
                // -s * dw with flip: -1 less the largest keeps every tap left of the row ((S-1)*dw < 2^31).
                iw0[j] = flip ? -1 : -(S - 1) * this->dw - 1;
            } else {
                // Tap row offsets dih are r * dh in [0, (R-1)*dh], or -r * dh with flip: -1 less the largest.
                // (R-1)*dh < 2^31 (the host's 32-bit rule), so this and ih0 + dih stay within int.
                ih0[j] = flip ? -1 : -(R - 1) * dh - 1;
                iw0[j] = 0;
            }
            if constexpr (ND == 3) this->id0[j] = 0;  // (the sentinel row alone keeps such a pixel out)
            pix[j] = reinterpret_cast<const char*>(x);
            const index_t m = m0 + col + j * CW;
            if (m >= M) continue;  // past M: the sentinel row (1-D: column) above, nothing is read
            int ih, iw;
            if constexpr (ND == 1) {
                const index_t image = this->pixel_origin(m, g, iw);
                iw0[j] = iw;
                pix[j] = reinterpret_cast<const char*>(x) + (image + iw) * (index_t)sizeof(T);
            } else if constexpr (ND == 2) {
                const index_t image = this->pixel_origin(m, g, ih, iw);
                ih0[j] = ih;
                iw0[j] = iw;
                const index_t off = image + (index_t)ih * W + iw;
                pix[j] = reinterpret_cast<const char*>(x) + off * (index_t)sizeof(T);
            } else {
                int id;
                const index_t image = this->pixel_origin(m, g, id, ih, iw);
                this->id0[j] = id;
                ih0[j] = ih;
                iw0[j] = iw;
                const index_t off = image + (index_t)id * HW + (index_t)ih * W + iw;
                pix[j] = reinterpret_cast<const char*>(x) + off * (index_t)sizeof(T);
            }
        }
        // The tap of reduction row k_start + row0 (when it is >= kred, fetch reads nothing): one division
        // pair per tile (3-D: three, 1-D: one), unsigned: k_start + row0 < kred + BK <= INT_MAX + BK fits 32
        // unsigned bits.
        const unsigned RS = (unsigned)(R * S);
        const unsigned kr = (unsigned)k_start + (unsigned)row0;
        if constexpr (ND == 1) {
            const unsigned c = kr / (unsigned)S;
            s = (int)(kr - c * (unsigned)S);
            coff = (index_t)c * this->channel_stride();
        } else if constexpr (ND == 2) {
            const unsigned c = kr / RS;
            r = (int)((kr - c * RS) / (unsigned)S);
            s = (int)(kr - c * RS - (unsigned)r * (unsigned)S);
            coff = (index_t)c * HW;
        } else {
            const unsigned TRS = (unsigned)this->KD * RS;
            const unsigned c = kr / TRS;
            const unsigned rest = kr - c * TRS;
            const unsigned t = rest / RS;
            this->t = (int)t;
            r = (int)((rest - t * RS) / (unsigned)S);
            s = (int)(rest - t * RS - (unsigned)r * (unsigned)S);
            coff = (index_t)c * this->channel_stride();
        }
    }

    __device__ __forceinline__ void fetch(int k0) {
        // The row exists iff row0 < kred - k0 (rows past kred, the reduction tail, read 0; this form cannot
        // overflow where k0 + row0 < kred could: k0 < kred <= INT_MAX).
        const bool row_ok = row0 < kred - k0;
        const int dih = ND == 1 ? 0 : r * tap_dh, diw = s * tap_dw;  // (1-D: no row, r is never set)
        // Offset (bytes) of tap (c, [t,] r, s) from each pixel's tap 0 of channel 0: the same for every pixel.
        index_t off;
        int did;  // 3-D: the depth offset of tap t
        if constexpr (ND == 1) {
            off = (coff + diw) * (index_t)sizeof(T);  // (dih unused: no row)
        } else if constexpr (ND == 2) {
            off = (coff + (index_t)dih * W + diw) * (index_t)sizeof(T);
        } else {
            did = this->t * this->tap_dd;
            off = (coff + (index_t)did * HW + (index_t)dih * W + diw) * (index_t)sizeof(T);
        }
#if !defined(GPUCONV_EMULATED)
        // Formed once per slice: opaque to the compiler from here, so it is not re-formed (a 64-bit
        // multiply-add) inside each of the LOADS predicated loads below.
        asm("mov.b64 %0, %0;" : "+l"(off));
#endif
        index_t off_out = 0;  // (with DACT: out's offset of the same tap, formed once per slice)
        if constexpr (DACT != ACT_NONE) {
            off_out = off + this->out_shift;
#if !defined(GPUCONV_EMULATED)
            asm("mov.b64 %0, %0;" : "+l"(off_out));
#endif
        }
        GPUCONV_UNROLL
        for (int j = 0; j < LOADS; ++j) {
            A v = A(0);
            const int ih = ND == 1 ? 0 : ih0[j] + dih;
            const int iw = iw0[j] + diw;
            // Halo / bounds: taps that land in the padding (or, for a filter reaching past the padded
            // edge, beyond it) read 0 by definition; x is never read outside the image. The unsigned
            // compare also rejects negative coordinates (top / left / front padding).
            if constexpr (ND == 1) {
                (void)ih;  // no row: only the column can leave the input
                if (row_ok && (unsigned)iw < (unsigned)W) {
                    v = load<T>(reinterpret_cast<const T*>(pix[j] + off));
                    if constexpr (DACT != ACT_NONE)  // the fused derivative, as in 2-D below
                        v = act_backward<A>(v, load<T>(reinterpret_cast<const T*>(pix[j] + off_out)), DACT);
                }
            } else if constexpr (ND == 2) {
                if (row_ok && (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W) {
                    v = load<T>(reinterpret_cast<const T*>(pix[j] + off));
                    // The fused derivative: out's element at x's byte offset (same layout); a template
                    // argument, so no activation switch in the main loop. Only inside the image: the
                    // padding's 0 is gy' = 0 there (the pre-pass's zero padding of gy * act'(out)).
                    if constexpr (DACT != ACT_NONE)
                        v = act_backward<A>(v, load<T>(reinterpret_cast<const T*>(pix[j] + off_out)), DACT);
                }
            } else {
                const int id = this->id0[j] + did;
                if (row_ok && (unsigned)id < (unsigned)this->D && (unsigned)ih < (unsigned)H
                    && (unsigned)iw < (unsigned)W) {
                    v = load<T>(reinterpret_cast<const T*>(pix[j] + off));
                    if constexpr (DACT != ACT_NONE)  // the fused derivative, as in 2-D above
                        v = act_backward<A>(v, load<T>(reinterpret_cast<const T*>(pix[j] + off_out)), DACT);
                }
            }
            regs[j] = v;
        }
        // The next slice's row: BK taps further, = (step_c, [step_t,] step_r, step_s) with two carries (3-D:
        // three, 1-D: one). Each digit plus its step plus a carry stays below twice its radix: one subtraction.
        coff += step_c_off;
        s += step_s;
        if constexpr (ND == 1) {
            if (s >= S) {  // no row digit (nor depth) to carry into
                s -= S;
                coff += this->channel_stride();  // the next channel
            }
        } else {
            if (s >= S) {
                s -= S;
                ++r;
            }
            r += step_r;
            if (r >= R) {
                r -= R;
                if constexpr (ND == 2) coff += HW;  // the next channel
                else ++this->t;                         // the next depth tap
            }
            if constexpr (ND == 3) {
                this->t += this->step_t;
                if (this->t >= this->KD) {
                    this->t -= this->KD;
                    coff += this->channel_stride();  // the next channel
                }
            }
        }
    }

    // Every (row, col) of the slice is written by exactly one thread (zeros included).
    __device__ __forceinline__ void stage(A (*dst)[Cfg::B_LD]) {
        GPUCONV_UNROLL
        for (int j = 0; j < LOADS; ++j) dst[row0][col + j * CW] = Cfg::staged(regs[j]);
    }
};

// One launch of an implicit-GEMM convolution: the GEMM's sizes from the geometry, then gemm_tile.cuh's
// grid-stride loop over output tiles with Im2colLoader as the B operand and Tile doing the products
// (RegisterTile on CUDA cores in conv1d_igemm, conv2d_igemm and conv3d_igemm; conv2d_igemm_tc has a pipeline
// of its own). The host launches exactly Cfg::THREADS threads in x. Geo: the geometry (Im2colGeometry and
// Im2colGeometry1d: cp is a ConvParams; Im2colGeometry3d: a Conv3dParams), M = N * outputs per image
// pixels, kred its reduction.
// Split-K (SPLIT): `splits` ranges of `split_slices` slices each, partial sums into ws (gemm_conv_tiles).
// DACT / dout: the fused activation derivative of Im2colLoader (conv{1,2,3}d_backward_data; dout laid out as x).
// Out / out: the epilogue's output mapping (gemm_tile.cuh; default y as the forward's, C-contiguous).
template <typename T, class Cfg, class Tile, class Smem, bool SPLIT = false, class Geo = Im2colGeometry<T>,
          int DACT = ACT_NONE, class Out = GemmContiguousOutput>
__device__ __forceinline__ void implicit_gemm_conv(const T* x, const T* w, const T* b, T* y,
                                                   const typename Geo::Params& gp, int vec_w, Smem& smem,
                                                   int splits = 1, int split_slices = 0,
                                                   typename acc_type<T>::type* ws = nullptr,
                                                   const T* dout = nullptr, const Out& out = Out()) {
    const ConvParams& cp = Geo::plane(gp);
    const int tid = threadIdx.x;
    const int Cg = cp.C / cp.groups;
    const int kred = Geo::reduction(gp, Cg);  // the host's 32-bit rule keeps this below 2^31
    const index_t PQ = Geo::outputs_per_image(gp);
    const index_t M = (index_t)cp.N * PQ;  // 64-bit: N*P*Q may exceed 2^31

    Im2colLoader<T, Cfg, Geo, DACT> xl(x, gp, Cg, M, tid, dout);
    gemm_conv_tiles<T, Cfg, Tile, Im2colLoader<T, Cfg, Geo, DACT>, SPLIT, Out>(w, b, y, xl, smem, kred, cp.K,
                                                                        cp.groups, M, PQ, vec_w, cp.has_bias,
                                                                        cp.act, tid, splits, split_slices, ws,
                                                                        out);
}

}  // namespace gpuconv
