"""The conv2d CUDA algorithms: their registry, the rule for ``algo='auto'``, and the launch code of the
first two (``kernels/conv2d_direct.cu``, ``kernels/conv2d_tiled.cu``).

``ALGORITHMS`` maps each ``algo=`` name to its :class:`~gpuconv._cuda.algo.ConvAlgo` (source, instantiations,
decline rule, launch); later algorithms live in modules of their own and are listed in ``_PLUGINS``:
``depthwise`` (conv_depthwise.py: one input channel per filter, memory-bound tiles), ``igemm``
(conv_igemm.py: implicit GEMM over (N*P*Q) x Kg, reduction Cg*R*S gathered on the fly), ``gemm1x1``
(conv_gemm1x1.py: a 1x1 filter without padding as a plain GEMM over channels) and ``igemm_tc``
(conv_igemm_tc.py: igemm on tensor cores, float32 as TF32; opt-in for ``'auto'``, sm_80+).
``conv2d`` is the one place that decides what runs: the named algorithm (``ValueError`` if it declines,
never a fallback), or for ``'auto'`` the autotuner's measured choice (``autotune.py``) where the runtime can
time kernels, else ``choose_algo``'s documented heuristic.

Direct and tiled both cover every valid geometry that ``gpuconv._geometry.conv_geometry`` accepts
(stride, asymmetric padding, dilation, groups / depthwise, flip, bias, fused activation):

* ``direct``: one thread per output element, no shared memory. The baseline; never declines (except
  for the 32-bit size rule below, which applies to both).
* ``tiled``: a block computes a 16x16 output tile for a block of KB filters of one group, staging each
  chunk of input channels (tile + halo) and the matching weights in shared memory. Declines, with a
  ``ValueError``, only when even a one-channel chunk needs more than 48 KiB of shared memory
  (``tiled_decline_reason``).

Which instantiation ran is returned as its name expression (e.g.
``"gpuconv::conv2d_tiled<float, 16, 16, 8, 3, 3>"``).

Timings: not yet measured on a GPU; the thresholds below are reasoned, not tuned.
"""

from __future__ import annotations

import importlib

import numpy as np

from .._geometry import ConvGeometry
from . import algo as _algo
from .algo import ACC_BYTES as _ACC_BYTES
from .algo import CTYPE as _CTYPE
from .algo import MAX_GRID_BLOCKS, SHARED_LIMIT_BYTES, ConvAlgo, ceil_div, geometry_args

DIRECT_SOURCE = "conv2d_direct.cu"
TILED_SOURCE = "conv2d_tiled.cu"

# Modules (in gpuconv/_cuda/) that each define ``ALGO``, a ConvAlgo, after direct and tiled.
_PLUGINS: tuple[str, ...] = ("conv_depthwise", "conv_igemm", "conv_gemm1x1", "conv_igemm_tc")

# --- direct ----------------------------------------------------------------------------------------
DIRECT_BLOCK = 256  # threads per block (1-D)

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

# --- 'auto' ----------------------------------------------------------------------------------------
# Below this many output pixels per plane, a 16x16 tile would leave more than 3/4 of its threads idle.
AUTO_MIN_TILED_PIXELS = (TILE_P * TILE_Q) // 4


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
    """Direct and tiled take sizes as C ``int`` (offsets into x / y are 64-bit). Returns why a geometry
    does not fit that, or None. Padded extents get one tile of stride extra: the tiled kernel forms halo
    coordinates up to a tile past the last output."""
    return _algo.int32_limit_reason(geom, TILE_P * geom.sh, TILE_Q * geom.sw)


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


def direct_decline_reason(geom: ConvGeometry, dtype) -> str | None:
    reason = int32_limit_reason(geom)
    return None if reason is None else f"direct declines this geometry because {reason}"


def tiled_decline_reason_any(geom: ConvGeometry, dtype) -> str | None:
    reason = int32_limit_reason(geom)
    if reason is not None:
        return f"tiled declines this geometry because {reason}"
    return tiled_decline_reason(geom, dtype)


# --------------------------------------------------------------------------------------------
# launch
# --------------------------------------------------------------------------------------------

def _launch_direct(rt, x, w, b, y, geom: ConvGeometry) -> str:
    name = direct_name(x.dtype)
    total = geom.N * geom.K * geom.P * geom.Q
    grid = min(ceil_div(total, DIRECT_BLOCK), MAX_GRID_BLOCKS)
    rt.function(DIRECT_SOURCE, name)((grid, 1, 1), (DIRECT_BLOCK, 1, 1), [x, w, b, y] + geometry_args(geom))
    return name


def _launch_tiled(rt, x, w, b, y, geom: ConvGeometry) -> str:
    dtype = np.dtype(x.dtype)
    kb = tiled_filter_block(geom)
    name = tiled_name(dtype, kb, *tiled_filter_template(geom))
    cb = tiled_channels_per_chunk(geom, dtype)
    blocks = geom.N * geom.groups * ceil_div(geom.Kg, kb) * ceil_div(geom.P, TILE_P) * ceil_div(geom.Q, TILE_Q)
    rt.function(TILED_SOURCE, name)((min(blocks, MAX_GRID_BLOCKS), 1, 1), (TILE_Q, TILED_THREAD_ROWS, 1),
                                    [x, w, b, y] + geometry_args(geom) + [np.int32(cb)],
                                    shared_mem=tiled_shared_bytes(geom, dtype, cb))
    return name


DIRECT = ConvAlgo("direct", DIRECT_SOURCE, tuple(INSTANTIATIONS[DIRECT_SOURCE]), direct_decline_reason,
                  _launch_direct, "one thread per output element, straight from global memory")
TILED = ConvAlgo("tiled", TILED_SOURCE, tuple(INSTANTIATIONS[TILED_SOURCE]), tiled_decline_reason_any,
                 _launch_tiled, "16x16 output tile x KB filters per block, input tile + halo and weights "
                                "staged in shared memory")

ALGORITHMS: dict[str, ConvAlgo] = {a.name: a for a in
                                   (DIRECT, TILED) + tuple(importlib.import_module(f"{__package__}.{m}").ALGO
                                                           for m in _PLUGINS)}
ALGOS = tuple(ALGORITHMS)
for _a in ALGORITHMS.values():
    INSTANTIATIONS.setdefault(_a.source, list(_a.instantiations))


# --------------------------------------------------------------------------------------------
# the decision
# --------------------------------------------------------------------------------------------

def decline_reason(algo: str, geom: ConvGeometry, dtype) -> str | None:
    return ALGORITHMS[algo].decline_reason(geom, np.dtype(dtype))


def device_reason(algo: str, rt) -> str | None:
    """Why ``algo`` cannot run on the runtime's current device (compute capability too old), or None.
    Runtimes without ``compute_capability()`` (the tests' CPU emulator) run every algorithm."""
    need = ALGORITHMS[algo].min_compute_capability
    cc_of = getattr(rt, "compute_capability", None)
    if not need or cc_of is None:
        return None
    cc = cc_of()
    if cc >= need:
        return None
    return (f"{algo} needs a GPU of compute capability {need // 10}.{need % 10} or newer; the current device "
            f"is {cc // 10}.{cc % 10}")


def candidates(geom: ConvGeometry, dtype, rt=None) -> list[str]:
    """The algorithms ``'auto'`` may run for this call, in registry order (what the autotuner measures):
    those that accept the geometry and dtype, and the device of ``rt`` (when given), leaving out
    tensor-core algorithms (TF32 for float32) unless ``gpuconv.set_tensor_cores(True)``."""
    from .autotune import tensor_cores_enabled
    tensor_cores = tensor_cores_enabled()
    return [name for name in ALGOS if decline_reason(name, geom, dtype) is None
            and (tensor_cores or not ALGORITHMS[name].tensor_cores)
            and (rt is None or device_reason(name, rt) is None)]


def heuristic_order(geom: ConvGeometry) -> tuple[str, ...]:
    """Preference order of ``choose_algo`` for this geometry (names not registered are skipped):

    * one input channel per group (depthwise and similar): ``depthwise``, then ``tiled``;
    * a 1x1 filter: ``gemm1x1`` (a plain GEMM over channels), then ``igemm``, ``tiled``;
    * otherwise ``igemm`` (implicit GEMM), then ``tiled``;
    * ``direct`` last; and ``direct`` before ``tiled`` when an output plane has fewer than 64 pixels
      (P*Q < 64), where a 16x16 tile would leave more than three quarters of its threads idle.
    """
    small = geom.P * geom.Q < AUTO_MIN_TILED_PIXELS
    basic = ("direct", "tiled") if small else ("tiled", "direct")
    if geom.Cg == 1:
        return ("depthwise",) + basic
    if geom.R == 1 and geom.S == 1:
        return ("gemm1x1", "igemm") + basic
    return ("igemm",) + basic


def choose_algo(geom: ConvGeometry, dtype, rt=None) -> str:
    """The heuristic for ``algo='auto'`` where kernels are not measured (see ``autotune``): the first
    algorithm of ``heuristic_order`` that ``candidates`` allows, with ``igemm_tc`` put first for every
    layer but depthwise-like ones when tensor cores are allowed. ``direct`` accepts every geometry within
    the 32-bit size rule. Reasoned, not yet tuned by measurement on a GPU."""
    order = heuristic_order(geom)
    if geom.Cg != 1:
        order = ("igemm_tc",) + order
    allowed = candidates(geom, dtype, rt)
    for name in order:
        if name in allowed:
            return name
    return "direct"


def conv2d(rt, x, w, b, geom: ConvGeometry, algo: str):
    """Run one conv2d on the runtime ``rt``. Returns ``(y, kernel_id)``: ``y`` a new C-contiguous
    ``(N, K, P, Q)`` array of x's dtype, ``kernel_id`` the name expression of the instantiation that ran.
    Raises ValueError when the requested algorithm cannot handle the geometry (never falls back)."""
    xp = rt.xp
    dtype = np.dtype(x.dtype)
    if dtype not in _CTYPE:
        raise TypeError(f"conv2d CUDA kernels support float16, float32 and float64, got {dtype}")
    if algo != "auto" and algo not in ALGORITHMS:
        raise ValueError(f"conv2d(): unknown algo {algo!r}; expected 'auto' or one of {', '.join(ALGOS)}")
    # Decline before allocating anything: a refused call must not cost memory (or fail for lack of it).
    if algo != "auto":
        reason = decline_reason(algo, geom, dtype) or device_reason(algo, rt)
        if reason is not None:
            raise ValueError(reason)
    elif not candidates(geom, dtype, rt):
        raise ValueError("every conv2d CUDA algorithm declines this call; " + decline_reason("direct", geom, dtype))
    x = xp.ascontiguousarray(x)
    w = xp.ascontiguousarray(w)
    # No bias: the kernels never read b then, but need a valid pointer of the right type; pass w.
    b = w if b is None else xp.ascontiguousarray(b)
    y = xp.empty(geom.output_shape, dtype=dtype)

    def launch(name):
        return ALGORITHMS[name].launch(rt, x, w, b, y, geom)

    if algo == "auto":
        from . import autotune
        algo = autotune.choose(rt, geom, dtype, launch)
    return y, launch(algo)
