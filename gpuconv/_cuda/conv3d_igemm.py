"""``conv3d_igemm``: the implicit-GEMM 3-D convolution (``kernels/conv3d_igemm.cu``), one launch per call.

The kernel is conv2d's implicit GEMM (``conv_igemm.py``) with a depth axis: per conv group the output is
the (Kg filters) x (M = N*OD*P*Q pixels) product of the group's weights (Kg x Cg*KD*R*S, read as stored)
and the 3-D im2col matrix, gathered from x on the fly. The geometry is a 3-D ``ConvNdGeometry``
(``_geometry_nd``); the kernel receives it as one ``Conv3dParams`` (``abi.conv3d_params``).

Tiles, weight vector loads and the grid are the 2-D GEMM kernels' (``gemm.py``, whose functions are called,
not copied): ``gemm_view`` describes the 3-D GEMM as a ``ConvGeometry`` with the same GEMM sizes -- M as
``N*OD`` images of ``P x Q`` pixels, the same filters and groups, the reduction ``Cg*KD*R*S`` as a filter of
``KD*R`` rows and ``S`` columns -- which is all ``gemm_tile_for``, ``gemm_blocks`` and
``weights_vectorizable`` read. No split-K (one kernel; every block sums a full reduction). One difference:
the small tile (``SMALL_TILE_3D``) keeps 4x4 results per thread on 256 threads, where conv2d's is 8x8 on 64
threads: the depth digit's loader state on top of 64 accumulators spilled (12 bytes for float32 on sm_90
with NVRTC 12.9 at 255 registers).

Declines only what does not fit the kernel's 32-bit sizes (``conv3d_int32_limit_reason``); the caller
(``_conv_nd``) then runs the depth-tap lowering and says so in the record.
"""

from __future__ import annotations

import numpy as np

from .._geometry import ConvGeometry
from .abi import conv3d_kernel_args
from .algo import FORWARD, Algorithm
from .gemm import (SMALL_TILE, SMALL_TILE_4X4, TILES_BY_DTYPE, GemmTile, data_pointer, gemm_blocks,
                   gemm_kernel_name, gemm_tile_for, resolve_vectorize, tile_for_dtype, weights_vectorizable)
from .limits import CTYPE, declines, grid_blocks, int32_limit_reason

SOURCE = "conv3d_igemm.cu"
KERNEL = "conv3d_igemm"
# The small tile of the 3-D kernel (the module docstring): 64 x 64 x 16, 4x4 per thread, 256 threads.
SMALL_TILE_3D = SMALL_TILE_4X4
TILES_3D = {dt: tuple(SMALL_TILE_3D if t == SMALL_TILE else t for t in tiles) for dt, tiles in TILES_BY_DTYPE.items()}
INSTANTIATIONS = tuple(gemm_kernel_name(KERNEL, dt, t) for dt, tiles in TILES_3D.items() for t in tiles)


def tile_3d(tile, dtype) -> GemmTile:
    """The 3-D kernel's config of a 2-D tile (by name, for ``dtype``): ``SMALL_TILE_3D`` for float32 /
    float16's small tile, the 2-D config otherwise."""
    t = tile_for_dtype(tile, dtype)
    return SMALL_TILE_3D if t == SMALL_TILE else t


def gemm_view(geom) -> ConvGeometry:
    """The 3-D call's GEMM as a 2-D geometry with the same GEMM sizes (the module docstring): what the GEMM
    tile rules read (M = N*P*Q, Kg, groups, Cg*R*S). Not a convolution to run."""
    (D, H, W), (KD, R, S), (OD, P, Q) = geom.input_size, geom.kernel_size, geom.output_size
    return ConvGeometry(N=geom.N * OD, C=geom.C, H=D * H, W=W, K=geom.K, R=KD * R, S=S, groups=geom.groups,
                        sh=1, sw=1, pt=0, pb=0, pl=0, pr=0, dh=1, dw=1, P=P, Q=Q, options=geom.options)


def conv3d_int32_limit_reason(geom) -> str | None:
    """The sizes the kernel forms in C ``int`` (offsets and pixel indices are 64-bit)."""
    sizes = {"N": geom.N, "C": geom.C, "K": geom.K}
    for axis, n, k, (lo, hi), d in zip("DHW", geom.input_size, geom.kernel_size, geom.padding, geom.dilation):
        sizes[f"{axis} + padding"] = n + lo + hi
        sizes[f"dilation_{axis.lower()} * kernel_{axis.lower()}"] = d * k
    KD, R, S = geom.kernel_size
    sizes["C/groups * kernel_d * kernel_h * kernel_w"] = geom.Cg * KD * R * S
    return int32_limit_reason(sizes, "conv3d")


def conv3d_igemm_decline_reason(geom, dtype) -> str | None:
    return declines("conv3d_igemm", conv3d_int32_limit_reason(geom))


def conv3d_igemm_name(dtype, tile) -> str:
    return gemm_kernel_name(KERNEL, dtype, tile_3d(tile, dtype))


def tile_for(geom, dtype):
    """The tile of a call: ``gemm_tile_for`` on its GEMM (``gemm_view``), as the 3-D kernel's config."""
    return tile_3d(gemm_tile_for(gemm_view(geom), dtype), dtype)


def launch_conv3d_igemm(rt, x, w, b, y, geom, *, tile=None, vectorize_weights: bool | None = None) -> str:
    """One launch: x (N, C, D, H, W) and w C-contiguous, b the bias or (without one) any valid array of x's
    dtype, y a new C-contiguous (N, K, OD, P, Q) array the kernel fills completely. ``tile`` /
    ``vectorize_weights`` override the rules (tests; forcing vector loads the rule forbids is a ValueError).
    Returns the kernel's name expression."""
    dtype = np.dtype(x.dtype)
    view = gemm_view(geom)
    tile = tile_3d(gemm_tile_for(view, dtype) if tile is None else tile, dtype)
    if tile not in TILES_3D[dtype]:
        raise ValueError(f"{KERNEL}: tile {tile.name} is not instantiated for {dtype}")
    vec_w = resolve_vectorize(vectorize_weights, weights_vectorizable(view, dtype, data_pointer(w)), "weight")
    name = gemm_kernel_name(KERNEL, dtype, tile)
    grid = grid_blocks(gemm_blocks(view, tile))
    rt.function(SOURCE, name)((grid, 1, 1), (tile.threads, 1, 1),
                              [x, w, b, y] + conv3d_kernel_args(geom) + [np.int32(1 if vec_w else 0)])
    return name


ALGO = Algorithm("igemm", "conv3d", FORWARD, SOURCE, INSTANTIATIONS, conv3d_igemm_decline_reason,
                 launch_conv3d_igemm,
                 "implicit GEMM over (c, t, r, s): conv2d's igemm body with the 3-D gather geometry, one launch")


def conv3d(rt, x, w, b, geom):
    """Run one conv3d forward on runtime ``rt``: ``(y, kernel_id)``, ``y`` a new C-contiguous (N, K, OD, P, Q)
    array of x's dtype. ValueError when the kernel declines the geometry (checked before allocating)."""
    xp = rt.xp
    dtype = np.dtype(x.dtype)
    if dtype not in CTYPE:
        raise TypeError(f"conv3d CUDA kernels support float16, float32 and float64, got {dtype}")
    reason = conv3d_igemm_decline_reason(geom, dtype)
    if reason is not None:
        raise ValueError(reason)
    x = xp.ascontiguousarray(x)
    w = xp.ascontiguousarray(w)
    b = w if b is None else xp.ascontiguousarray(b)  # no bias: any valid pointer, never read
    y = xp.empty(geom.output_shape, dtype=dtype)
    return y, launch_conv3d_igemm(rt, x, w, b, y, geom)
