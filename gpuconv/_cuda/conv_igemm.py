"""``igemm``: implicit-GEMM conv2d (``kernels/conv2d_igemm.cu``) on the shared GEMM tiles (``gemm.py``).

Per conv group the output is the (Kg filters) x (M = N*P*Q pixels) product of the group's weights
(Kg x Cg*R*S, read as stored) and the im2col matrix (Cg*R*S x M), which the kernel gathers from x on the
fly; no im2col buffer exists in global memory. ``igemm`` accepts every geometry within the 32-bit size rule
(``limits.conv_int32_limit_reason``): stride, asymmetric padding, dilation, groups, flip, bias, activation.
Tile config and 4-wide weight loads: ``gemm.gemm_tile_for`` and ``gemm.weights_vectorizable``.

Split-K (issue 16, ``splitk_for``): when the chosen tile launches fewer than ``SPLITK_SMS`` (132, an
H100/H200's SMs) blocks, the reduction Cg*R*S (``slices`` of BK) is cut into ``splits`` contiguous ranges of
``ceil(slices / splits)`` slices, ``splits = min(ceil(2 * 132 / blocks), slices // SPLITK_MIN_SLICES, 8)``
(at least ``SPLITK_MIN_SLICES`` = 8 slices per range; then also at most slices / 4 ranges), 1 (no split)
when that is below 2. Block (split, tile) stores its partial sums into a workspace of
``splits * K * N*P*Q`` elements of the accumulation type (float32; float64 for float64) -- the documented
workspace beside the output -- and ``gemm_splitk_reduce`` sums the splits in fixed order 0..splits-1 per
output, adds the bias, applies the activation and writes y: bitwise the same in any block / thread order.
The kernel id then reads ``<conv2d_igemm_splitk name> splitK=<splits> + <reduce name>``.

Autotuning (``VARIANTS``, ``gemm.TileVariants``): ``algo='auto'`` measures igemm as ``igemm/<tile>`` for
each admissible tile and ``igemm/<tile>/split`` where the split-K rule splits that tile; the kernel id
(the name expression, whose template arguments are the tile) says which ran.

The data gradient (issue 17) is ``conv2d_backward_data.cu`` (``conv_backward_data.py``), which reuses this
kernel's implicit GEMM (``implicit_gemm_conv``) over every stride phase in one launch.
"""

from __future__ import annotations

import numpy as np

from .._geometry import ConvGeometry
from .algo import FORWARD, Algorithm
from .gemm import (TILES_BY_DTYPE, GemmTile, TileVariants, data_pointer, gemm_blocks, gemm_instantiations, gemm_kernel_name,
                   gemm_tile_for, launch_gemm, resolve_vectorize, tile_for_dtype, weights_vectorizable)
from .limits import ACC_BYTES, CTYPE, ceil_div, conv_decline_reason, grid_blocks

SOURCE = "conv2d_igemm.cu"
KERNEL = "conv2d_igemm"
SPLIT_KERNEL = "conv2d_igemm_splitk"
REDUCE_KERNEL = "gemm_splitk_reduce"
REDUCE_THREADS = 256
MAX_GRID_YZ = 65535    # CUDA's limit on gridDim.y / z (the reduce kernel's loops cover the rest)
SPLITK_SMS = 132        # SMs of an H100 / H200: fewer blocks than this leave SMs idle
SPLITK_MAX = 8          # at most 8 ranges (workspace, reduction traffic; GEMM_SPLITK_MAX in the kernel)
SPLITK_MIN_SLICES = 8   # slices per range at least: the main loop's prologue / epilogue stay amortised


def reduce_name(dtype) -> str:
    return f"gpuconv::{REDUCE_KERNEL}<{CTYPE[np.dtype(dtype)]}>"


INSTANTIATIONS = (gemm_instantiations(KERNEL) + gemm_instantiations(SPLIT_KERNEL)
                  + tuple(reduce_name(dt) for dt in TILES_BY_DTYPE))


def reduction_slices(geom: ConvGeometry, tile: GemmTile) -> int:
    return ceil_div(geom.Cg * geom.R * geom.S, tile.bk)


def splitk_for(geom: ConvGeometry, tile: GemmTile) -> int:
    """Split-K's number of reduction ranges for ``tile`` (the module docstring's rule): 1 when the tile
    gives >= SPLITK_SMS blocks or the reduction is too short for 2 ranges of SPLITK_MIN_SLICES slices."""
    blocks = gemm_blocks(geom, tile)
    if blocks == 0 or blocks >= SPLITK_SMS:
        return 1
    splits = min(ceil_div(2 * SPLITK_SMS, blocks), reduction_slices(geom, tile) // SPLITK_MIN_SLICES, SPLITK_MAX)
    return splits if splits >= 2 else 1


def splitk_ranges(geom: ConvGeometry, tile: GemmTile, splits: int) -> tuple[int, int]:
    """(ranges, slices per range) for a requested ``splits``: ceil(slices / splits) slices each, and only as
    many ranges as that takes (none empty; e.g. 18 slices in 4 -> 4 ranges of 5, 5, 5, 3)."""
    slices = reduction_slices(geom, tile)
    if splits <= 1 or slices <= 1:
        return 1, slices
    per = ceil_div(slices, splits)
    return ceil_div(slices, per), per


def splitk_workspace_bytes(geom: ConvGeometry, dtype, splits: int) -> int:
    """The workspace split-K allocates: splits x K x N*P*Q elements of the accumulation type (0 unsplit)."""
    if splits <= 1:
        return 0
    return splits * geom.K * geom.N * geom.P * geom.Q * ACC_BYTES[np.dtype(dtype)]


def igemm_name(dtype, tile: GemmTile) -> str:
    """The kernel's name expression for ``tile`` (by name: float64's "small" is its own config)."""
    return gemm_kernel_name(KERNEL, dtype, tile_for_dtype(tile, dtype))


def igemm_decline_reason(geom: ConvGeometry, dtype) -> str | None:
    """igemm covers every geometry; it declines only what does not fit its C ``int`` sizes (the shared
    32-bit rule; pixel indices, N*P*Q, and all offsets are 64-bit in the kernel)."""
    return conv_decline_reason("igemm", geom)


def launch_igemm(rt, x, w, b, y, geom: ConvGeometry, *, tile: GemmTile | None = None,
                 vectorize_weights: bool | None = None, splits: int | None = None) -> str:
    """The launch of igemm. ``tile`` / ``vectorize_weights`` / ``splits`` override the rules (tests use this
    to run every config on small shapes; forcing vector loads the rule forbids raises ValueError; ``splits``
    is cut to the ranges the reduction has, see ``splitk_ranges``)."""
    dtype = np.dtype(x.dtype)
    tile = gemm_tile_for(geom, dtype) if tile is None else tile_for_dtype(tile, dtype)
    vec_w = resolve_vectorize(vectorize_weights, weights_vectorizable(geom, dtype, data_pointer(w)), "weight")
    if splits is None:
        splits = splitk_for(geom, tile)
    elif not 1 <= int(splits) <= SPLITK_MAX:
        raise ValueError(f"splits must be in 1..{SPLITK_MAX}, got {splits}")
    splits, per = splitk_ranges(geom, tile, int(splits))
    vec = np.int32(1 if vec_w else 0)
    if splits == 1:
        return launch_gemm(rt, SOURCE, KERNEL, x, w, b, y, geom, tile, [vec])
    acc = np.dtype(np.float32) if dtype == np.float16 else dtype
    m = geom.N * geom.P * geom.Q
    ws = rt.xp.empty((splits, geom.K, m), dtype=acc)  # every element written by conv2d_igemm_splitk
    name = launch_gemm(rt, SOURCE, SPLIT_KERNEL, x, w, b, y, geom, tile, [vec, np.int32(splits), np.int32(per), ws],
                       splits=splits)
    red = reduce_name(dtype)
    pq = geom.P * geom.Q
    grid = (grid_blocks(pq, REDUCE_THREADS), min(geom.K, MAX_GRID_YZ), max(min(geom.N, MAX_GRID_YZ), 1))
    rt.function(SOURCE, red)(grid, (REDUCE_THREADS, 1, 1),
                             [ws, b, y, np.int32(splits), np.int32(geom.N), np.int32(geom.K), np.int64(pq),
                              np.int32(1 if geom.has_bias else 0), np.int32(geom.activation_code)])
    return igemm_kernel_id(name, splits, dtype)


def igemm_kernel_id(split_name: str, splits: int, dtype) -> str:
    """The kernel id of a split-K call: both kernels, and the number of ranges."""
    return f"{split_name} splitK={splits} + {reduce_name(dtype)}"


# What the autotuner measures of igemm (ops.VARIANTS): each tile, unsplit and (where splitk_for splits) split.
VARIANTS = TileVariants(splitk_for)

ALGO = Algorithm("igemm", "conv2d", FORWARD, SOURCE, INSTANTIATIONS, igemm_decline_reason,
                 launch_igemm,
                 "implicit GEMM: filters x (N*P*Q pixels) per group, input gathered on the fly into "
                 "double-buffered shared slices, 8x8 register tile per thread (4x4 for float64); split-K with a "
                 "fixed-order reduction when too few blocks")
