"""The launch the N-D implicit-GEMM kernels share (``conv1d_igemm.py``, ``conv3d_igemm.py``): tile, 4-wide
weight loads, split-K and its fixed-order reduction, all by conv2d igemm's rules, called, not copied.

Each N-D kernel family describes its GEMM as a 2-D ``ConvGeometry`` with the same GEMM sizes (its
``gemm_view``: M pixels as ``N*P*Q``, the filters and groups, the reduction as ``Cg*R*S``), which is all the
rules read: ``gemm.gemm_tile_for`` (tile), ``gemm.weights_vectorizable`` (vector loads),
``conv_igemm.splitk_for`` / ``splitk_ranges`` (split-K: ranges where the 2-D rule would split, i.e. when the
tile gives fewer blocks than an H100 has SMs and the reduction has at least 2 x 8 slices). The split kernel
(``<kernel>_splitk``, its own instantiation, as ``conv2d_igemm_splitk``) stores raw partial sums into a
workspace ``[splits, K, M]`` of the accumulation type (float32; float64 for float64) -- the call's memory is
the output plus that workspace, as in 2-D -- and conv2d_igemm.cu's ``gemm_splitk_reduce`` (launched from
that source: one reduction kernel for every dimension) sums the ranges in order 0..splits-1 per output,
adds the bias, applies the activation and writes y (``(N, K, per_image)`` layout: 1-D ``per_image = Q``,
3-D ``OD*P*Q``). Bitwise the same for any block / thread order; the kernel id reads ``<split kernel>
splitK=<n> + gpuconv::gemm_splitk_reduce<T>``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import conv_igemm
from .gemm import (GemmTile, data_pointer, gemm_blocks, gemm_kernel_name, gemm_tile_for, resolve_vectorize,
                   weights_vectorizable)
from .limits import grid_blocks


@dataclass(frozen=True)
class NdIgemm:
    """One N-D implicit-GEMM family: its source, kernel and split kernel names, and ``config(tile, dtype)``,
    the family's config of a tile chosen by name (e.g. conv3d's small tile)."""

    source: str
    kernel: str
    split_kernel: str
    tiles: dict        # dtype -> the configs instantiated
    config: object     # (tile, dtype) -> GemmTile

    def instantiations(self) -> tuple[str, ...]:
        return tuple(gemm_kernel_name(k, dt, t) for k in (self.kernel, self.split_kernel)
                     for dt, tiles in self.tiles.items() for t in tiles)

    def tile_for(self, view, dtype) -> GemmTile:
        """The rule's tile of a call (``gemm_tile_for`` on its GEMM view) as this family's config."""
        return self.config(gemm_tile_for(view, dtype), dtype)

    def splits_for(self, view, dtype, tile: GemmTile | None = None) -> int:
        """Split-K's ranges for ``tile`` (default: the rule's): ``conv_igemm.splitk_for`` on the GEMM view."""
        t = self.tile_for(view, dtype) if tile is None else self.config(tile, dtype)
        return conv_igemm.splitk_for(view, t)


def workspace_bytes(view, dtype, splits: int) -> int:
    """What split-K allocates beside the output: ``splits * K * M`` accumulation-type elements (0 unsplit)."""
    return conv_igemm.splitk_workspace_bytes(view, dtype, splits)


def launch(rt, family: NdIgemm, x, w, b, y, view, args: list, per_image: int, *, tile: GemmTile | None = None,
           vectorize_weights: bool | None = None, splits: int | None = None) -> str:
    """One call: ``family.kernel`` (unsplit) or ``family.split_kernel`` + the reduction. x, w C-contiguous,
    b the bias or any valid array (unread without one), y a new C-contiguous array the kernels fill. ``view``:
    the call's GEMM as a 2-D geometry (options included), ``args``: the kernel's parameter struct (after the
    pointers), ``per_image``: outputs per image of y. ``tile`` / ``vectorize_weights`` / ``splits`` override
    the rules (tests: forcing vector loads the rule forbids is a ValueError; ``splits`` in 1..8 is cut to the
    ranges the reduction has). Returns the kernel id."""
    dtype = np.dtype(x.dtype)
    tile = family.config(gemm_tile_for(view, dtype) if tile is None else tile, dtype)
    if tile not in family.tiles[dtype]:
        raise ValueError(f"{family.kernel}: tile {tile.name} is not instantiated for {dtype}")
    vec_w = resolve_vectorize(vectorize_weights, weights_vectorizable(view, dtype, data_pointer(w)), "weight")
    if splits is None:
        splits = conv_igemm.splitk_for(view, tile)
    elif not 1 <= int(splits) <= conv_igemm.SPLITK_MAX:
        raise ValueError(f"splits must be in 1..{conv_igemm.SPLITK_MAX}, got {splits}")
    splits, per = conv_igemm.splitk_ranges(view, tile, int(splits))
    vec = np.int32(1 if vec_w else 0)
    blocks = gemm_blocks(view, tile)
    if splits == 1:
        name = gemm_kernel_name(family.kernel, dtype, tile)
        rt.function(family.source, name)((grid_blocks(blocks), 1, 1), (tile.threads, 1, 1), [x, w, b, y] + args + [vec])
        return name
    m = view.N * view.P * view.Q
    acc = np.dtype(np.float32) if dtype == np.float16 else dtype
    ws = rt.xp.empty((splits, view.K, m), dtype=acc)  # every element written by the split kernel
    name = gemm_kernel_name(family.split_kernel, dtype, tile)
    rt.function(family.source, name)((grid_blocks(blocks * splits), 1, 1), (tile.threads, 1, 1),
                                     [x, w, b, y] + args + [vec, np.int32(splits), np.int32(per), ws])
    n = m // per_image
    red = conv_igemm.reduce_name(dtype)
    grid = (grid_blocks(per_image, conv_igemm.REDUCE_THREADS), min(view.K, conv_igemm.MAX_GRID_YZ),
            max(min(n, conv_igemm.MAX_GRID_YZ), 1))
    rt.function(conv_igemm.SOURCE, red)(grid, (conv_igemm.REDUCE_THREADS, 1, 1),
                                        [ws, b, y, np.int32(splits), np.int32(n), np.int32(view.K),
                                         np.int64(per_image), np.int32(1 if view.has_bias else 0),
                                         np.int32(view.activation_code)])
    return conv_igemm.igemm_kernel_id(name, splits, dtype)


def run(rt, algorithm, x, w, b, geom):
    """One N-D forward call of ``algorithm`` (an ``Algorithm`` of the conv1d / conv3d operation: ``igemm`` or
    ``igemm_tc``) whose decline rule has passed: C-contiguous copies of non-contiguous inputs, a new
    C-contiguous output of x's dtype, the launch. ``(y, kernel id)``."""
    xp = rt.xp
    x = xp.ascontiguousarray(x)
    w = xp.ascontiguousarray(w)
    b = w if b is None else xp.ascontiguousarray(b)  # no bias: any valid pointer, never read
    y = xp.empty(geom.output_shape, dtype=x.dtype)
    return y, algorithm.launch(rt, x, w, b, y, geom)
