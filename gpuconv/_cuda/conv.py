"""Launch code for the conv2d CUDA kernels (``kernels/conv2d_direct.cu``, ``kernels/conv2d_tiled.cu``).

Two algorithms, both covering every valid geometry that ``gpuconv._geometry.conv_geometry`` accepts
(stride, asymmetric padding, dilation, groups / depthwise, flip, bias, fused activation):

* ``direct``: one thread per output element, no shared memory. The baseline; never declines (except
  for the 32-bit size rule below, which applies to both).
* ``tiled``: a block computes a 16x16 output tile for a block of KB filters of one group, staging each
  chunk of input channels (tile + halo) and the matching weights in shared memory. Declines, with a
  ``ValueError``, only when even a one-channel chunk needs more than 48 KiB of shared memory
  (``tiled_decline_reason``).

``choose_algo`` is the rule for ``algo='auto'``. Which instantiation ran is returned as its name
expression (e.g. ``"gpuconv::conv2d_tiled<float, 16, 16, 8, 3, 3>"``).

Timings: not yet measured on a GPU; the thresholds below are reasoned, not tuned.
"""

from __future__ import annotations

import numpy as np

from .._geometry import ConvGeometry

DIRECT_SOURCE = "conv2d_direct.cu"
TILED_SOURCE = "conv2d_tiled.cu"
ALGOS = ("direct", "tiled")

# C++ storage type and accumulation-type size (bytes) per NumPy dtype (acc_type in kernels/common.cuh).
_CTYPE = {np.dtype(np.float16): "gpuconv::half", np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_ACC_BYTES = {np.dtype(np.float16): 4, np.dtype(np.float32): 4, np.dtype(np.float64): 8}

# --- direct ----------------------------------------------------------------------------------------
DIRECT_BLOCK = 256  # threads per block (1-D)

# Both kernels loop grid-stride in 64-bit, so the grid can be capped; 2^20 blocks are far more than
# any GPU keeps resident at once.
MAX_GRID_BLOCKS = 1 << 20

# --- tiled -----------------------------------------------------------------------------------------
TILE_P = 16  # output rows per block tile
TILE_Q = 16  # output columns per block tile (= blockDim.x)
TILED_THREAD_ROWS = 8  # blockDim.y; must equal CONV_TILED_THREAD_ROWS in conv2d_tiled.cu
SMALL_GROUP_KG = 4  # groups with fewer filters than this use KB = 1 (KB = 8 would idle > half)
# KB (filters per block) -> filter sizes with a compile-time specialization (loops fully unrolled); every
# other size runs the generic (0, 0) instantiation. KB = 8 (ordinary convolutions): 1x1 (pointwise /
# bottleneck) and 3x3; KB = 1 (depthwise and similar): 3x3 and 5x5 (MobileNet / EfficientNet). Each
# instantiation costs about a second of NVRTC time per architecture on first use, hence not all of them.
SPECIALIZED_FILTERS = {8: ((1, 1), (3, 3)), 1: ((3, 3), (5, 5))}
FILTER_BLOCKS = tuple(SPECIALIZED_FILTERS)  # KB values instantiated
MAX_CHANNELS_PER_CHUNK = 8  # input channels staged per __syncthreads() pair, at most
SHARED_LIMIT_BYTES = 48 * 1024  # dynamic shared memory a launch gets without the opt-in attribute

# --- 'auto' ----------------------------------------------------------------------------------------
# Below this many output pixels per plane, a 16x16 tile would leave more than 3/4 of its threads idle.
AUTO_MIN_TILED_PIXELS = (TILE_P * TILE_Q) // 4

_INT32_MAX = 2**31 - 1


def direct_name(dtype) -> str:
    return f"gpuconv::conv2d_direct<{_CTYPE[np.dtype(dtype)]}>"


def tiled_name(dtype, kb: int, fr: int, fs: int) -> str:
    return f"gpuconv::conv2d_tiled<{_CTYPE[np.dtype(dtype)]}, {TILE_P}, {TILE_Q}, {kb}, {fr}, {fs}>"


INSTANTIATIONS: dict[str, list[str]] = {
    DIRECT_SOURCE: [direct_name(dt) for dt in _CTYPE],
    TILED_SOURCE: [tiled_name(dt, kb, fr, fs) for dt in _CTYPE for kb in FILTER_BLOCKS
                   for fr, fs in ((0, 0),) + SPECIALIZED_FILTERS[kb]],
}


# --------------------------------------------------------------------------------------------
# rules (plain functions of the geometry, so tests and users can ask them directly)
# --------------------------------------------------------------------------------------------

def int32_limit_reason(geom: ConvGeometry) -> str | None:
    """Both kernels take sizes as C ``int`` (offsets into x / y are 64-bit). Returns why a geometry does
    not fit that, or None. Padded extents get one tile of stride extra: the tiled kernel forms halo
    coordinates up to a tile past the last output."""
    sizes = {"N": geom.N, "C": geom.C, "K": geom.K, "R": geom.R, "S": geom.S,
             "H + pad_top + pad_bottom + 16*stride_h": geom.H + geom.pt + geom.pb + TILE_P * geom.sh,
             "W + pad_left + pad_right + 16*stride_w": geom.W + geom.pl + geom.pr + TILE_Q * geom.sw,
             "dilation_h * kernel_h": geom.dh * geom.R, "dilation_w * kernel_w": geom.dw * geom.S}
    for name, v in sizes.items():
        if v > _INT32_MAX:
            return f"{name} = {v} exceeds 2^31-1, the largest size the CUDA conv2d kernels take"
    return None


def tiled_filter_block(geom: ConvGeometry) -> int:
    """KB, the filters one tiled block computes: 8, or 1 when a group has fewer than 4 filters
    (depthwise and similar), where most of 8 accumulators per thread would be idle."""
    return 1 if geom.Kg < SMALL_GROUP_KG else 8


def tiled_filter_template(geom: ConvGeometry) -> tuple[int, int]:
    """(FR, FS) template arguments: the filter size when it has a specialization for this geometry's
    KB (SPECIALIZED_FILTERS), else (0, 0), the generic runtime-size kernel."""
    specialized = SPECIALIZED_FILTERS[tiled_filter_block(geom)]
    return (geom.R, geom.S) if (geom.R, geom.S) in specialized else (0, 0)


def tiled_halo(geom: ConvGeometry) -> tuple[int, int]:
    """Input rows x columns one 16x16 output tile reads per channel: the tile's TILE_P rows start
    ``sh`` apart and each reaches ``(R-1)*dh`` further, so ``(TILE_P-1)*sh + (R-1)*dh + 1`` (likewise
    columns). Same formula as the kernel's halo_h / halo_w."""
    return ((TILE_P - 1) * geom.sh + (geom.R - 1) * geom.dh + 1,
            (TILE_Q - 1) * geom.sw + (geom.S - 1) * geom.dw + 1)


def tiled_shared_bytes(geom: ConvGeometry, dtype, cb: int) -> int:
    """Dynamic shared memory of one tiled block staging ``cb`` input channels: the input tile + halo
    and the KB filters' R x S weights per channel, held in the accumulation type."""
    halo_h, halo_w = tiled_halo(geom)
    kb = tiled_filter_block(geom)
    return _ACC_BYTES[np.dtype(dtype)] * cb * (halo_h * halo_w + kb * geom.R * geom.S)


def tiled_channels_per_chunk(geom: ConvGeometry, dtype) -> int:
    """cb: the most input channels (at most 8, at most Cg) whose staging fits in 48 KiB; at least 1
    (a geometry where even 1 does not fit is declined, see tiled_decline_reason)."""
    per_channel = tiled_shared_bytes(geom, dtype, 1)
    return max(1, min(MAX_CHANNELS_PER_CHUNK, geom.Cg, SHARED_LIMIT_BYTES // per_channel))


def tiled_decline_reason(geom: ConvGeometry, dtype) -> str | None:
    """The tiled kernel's one limit: staging a single input channel (its 16x16-output tile plus halo,
    and KB filters' weights) must fit in the 48 KiB of shared memory a launch gets without opt-in.
    That fails only for huge dilated or strided filters. Returns the reason it declines, or None."""
    need = tiled_shared_bytes(geom, dtype, 1)
    if need <= SHARED_LIMIT_BYTES:
        return None
    halo_h, halo_w = tiled_halo(geom)
    kb = tiled_filter_block(geom)
    return (f"tiled declines this geometry because staging one input channel needs {need} bytes of shared "
            f"memory, more than the {SHARED_LIMIT_BYTES} (48 KiB) a launch gets without opt-in: "
            f"{_ACC_BYTES[np.dtype(dtype)]}-byte accumulation type x (input tile + halo {halo_h}x{halo_w}, "
            f"halo = (16-1)*stride + (kernel-1)*dilation + 1, plus {kb} filters x {geom.R}x{geom.S} weights); "
            f"use algo='direct'")


def choose_algo(geom: ConvGeometry, dtype) -> str:
    """The rule for ``algo='auto'``:

    1. ``direct`` if the tiled kernel declines (shared memory, see ``tiled_decline_reason``);
    2. ``direct`` if an output plane has fewer than 64 pixels (P*Q < 64): a 16x16 tile would leave more
       than three quarters of its threads idle (every block still stages a full-size halo);
    3. ``tiled`` otherwise (input reuse across KB filters and R*S taps through shared memory).
    Not yet tuned by measurement on a GPU.
    """
    if tiled_decline_reason(geom, dtype) is not None:
        return "direct"
    if geom.P * geom.Q < AUTO_MIN_TILED_PIXELS:
        return "direct"
    return "tiled"


# --------------------------------------------------------------------------------------------
# launch
# --------------------------------------------------------------------------------------------

def _geometry_args(geom: ConvGeometry) -> list:
    """The scalar parameters shared by both kernels, typed as the C++ ``int`` parameters."""
    i32 = np.int32
    return [i32(geom.N), i32(geom.C), i32(geom.H), i32(geom.W), i32(geom.K), i32(geom.R), i32(geom.S),
            i32(geom.groups), i32(geom.sh), i32(geom.sw), i32(geom.pt), i32(geom.pl), i32(geom.dh),
            i32(geom.dw), i32(geom.P), i32(geom.Q), i32(1 if geom.flip else 0), i32(1 if geom.has_bias else 0),
            i32(geom.activation_code)]


def conv2d(rt, x, w, b, geom: ConvGeometry, algo: str):
    """Run one conv2d on the runtime ``rt``. Returns ``(y, kernel_id)``: ``y`` a new C-contiguous
    ``(N, K, P, Q)`` array of x's dtype, ``kernel_id`` the name expression of the instantiation that ran.
    Raises ValueError when the requested algorithm cannot handle the geometry (never falls back)."""
    xp = rt.xp
    dtype = np.dtype(x.dtype)
    if dtype not in _CTYPE:
        raise TypeError(f"conv2d CUDA kernels support float16, float32 and float64, got {dtype}")
    if algo == "auto":
        algo = choose_algo(geom, dtype)
    if algo not in ALGOS:
        raise ValueError(f"conv2d(): unknown algo {algo!r}; expected 'auto', 'direct' or 'tiled'")
    reason = int32_limit_reason(geom)
    if reason is not None:
        raise ValueError(f"{algo} declines this geometry because {reason}")
    if algo == "tiled":
        reason = tiled_decline_reason(geom, dtype)
        if reason is not None:
            raise ValueError(reason)

    x = xp.ascontiguousarray(x)
    w = xp.ascontiguousarray(w)
    # No bias: the kernels never read b then, but need a valid pointer of the right type; pass w.
    b = w if b is None else xp.ascontiguousarray(b)
    y = xp.empty(geom.output_shape, dtype=dtype)
    args = [x, w, b, y] + _geometry_args(geom)

    if algo == "direct":
        name = direct_name(dtype)
        total = geom.N * geom.K * geom.P * geom.Q
        grid = min(-(-total // DIRECT_BLOCK), MAX_GRID_BLOCKS)
        rt.function(DIRECT_SOURCE, name)((grid, 1, 1), (DIRECT_BLOCK, 1, 1), args)
        return y, name

    kb = tiled_filter_block(geom)
    fr, fs = tiled_filter_template(geom)
    name = tiled_name(dtype, kb, fr, fs)
    cb = tiled_channels_per_chunk(geom, dtype)
    blocks = (geom.N * geom.groups * -(-geom.Kg // kb)
              * -(-geom.P // TILE_P) * -(-geom.Q // TILE_Q))
    grid = min(blocks, MAX_GRID_BLOCKS)
    rt.function(TILED_SOURCE, name)((grid, 1, 1), (TILE_Q, TILED_THREAD_ROWS, 1), args + [np.int32(cb)],
                                    shared_mem=tiled_shared_bytes(geom, dtype, cb))
    return y, name
