"""The host side of the GEMM tile machinery (``kernels/gemm_tile.cuh``) that the GEMM-style conv kernels
share (``igemm``, ``gemm1x1``, ``igemm_tc``): the tile configs, the rule that picks one, the alignment rule
for 4-wide vector loads, and the launch.

A GEMM-style conv kernel computes, per conv group, the (Kg filters) x (M = N*P*Q pixels) product of the
group's weights (Kg x Cg*R*S, read as stored) and an input matrix its loader reads (the im2col matrix
gathered on the fly, or for 1x1 filters the input itself).

Rules (plain functions of the geometry and dtype, plus array addresses for vectorization):

* ``gemm_tile_for``: the tile config, first match of
  1. ``LARGE_TILE`` (128 filters x 128 pixels per block, 8x8 per thread, 256 threads) for float32 / float16
     when a group has more than 64 filters (``Kg >= LARGE_TILE_MIN_FILTERS``; with 64 or fewer a 128-row
     tile would be at least half zeros) and the large tiles number at least ``MIN_BLOCKS`` = 128 (about
     one block per SM on the GPUs we target: 108 SMs on A100, 132 on H100; fewer would leave SMs idle);
  2. ``WIDE_TILE`` (64 filters x 128 pixels, 8x8 per thread, 128 threads; the tile for layers with 64 or
     fewer filters, ResNet's first stage, VGG conv1) for float32 / float16 when the wide tiles number at
     least ``MIN_BLOCKS``: half the blocks of the small tile, twice its FMAs per loaded element;
  3. the small tile (64 x 64, 8x8 per thread, 64 threads; 4x the large tile's blocks) otherwise: layers
     too small to fill the GPU with bigger tiles (split-K, ``conv_igemm.splitk_for``, then adds blocks
     when even these are fewer than the SMs); always for float64 (its own ``SMALL_TILE_F64``, 4x4 per
     thread, 256 threads, BK = 8; ``tile_for_dtype`` maps a tile name to a dtype's config): 64 double
     accumulators would take 128 of a thread's 255 registers before any operand.
  The block count rule is the same as before issue 16's tiles changed (the tiles keep their BM x BN);
  what changed is the threads: every float32 / float16 tile runs the large tile's 8x8 per-thread
  micro-kernel (the one that reaches 80 % FMA in the main loop), the smaller tiles with fewer threads
  (4 and 2 warps; ``gemm_blocks_per_sm`` in gemm_tile.cuh keeps 2 and 4 such blocks per SM within the
  registers). Every float32 / float16 config: BK = 16 reduction indices per slice.
* ``TileVariants``: the tiles the autotuner measures for a GEMM algorithm
  (``TileVariants``: the dtype's tiles, the large one only for Kg > 64, each with split-K on where the
  algorithm has it and its rule splits the call), named ``<tile>`` or ``<tile>/split``.
* ``weights_vectorizable``: 4-wide weight loads (float4, 2 x double2, 4 halves) when each weight row
  (Cg*R*S elements) is a multiple of 4 and w's address is aligned to ``VEC_ALIGN_BYTES`` (16, or 8 for
  float16); then every 4-element group the kernel loads is aligned too. Otherwise scalar loads.
* ``resolve_vectorize``: a test's request for (or against) vector loads checked against the rule.

The thresholds are reasoned (docs/architecture.md, "Tuning status").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._geometry import ConvGeometry
from . import limits
from .abi import conv_kernel_args
from .limits import ACC_BYTES, CTYPE, ceil_div

# Extra words per row of the transposed A staging (GemmTileConfig::A_PAD in kernels/gemm_tile.cuh).
GEMM_A_PAD = 4


@dataclass(frozen=True)
class GemmTile:
    """A block tile of the GEMM kernels: ``bm`` filters x ``bn`` pixels, the reduction in slices of ``bk``,
    ``tm`` x ``tn`` results per thread (template arguments of the kernels, in this order); ``threads`` =
    (bm / tm) x (bn / tn) per block."""

    name: str
    bm: int
    bn: int
    bk: int
    tm: int
    tn: int

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)

    @property
    def template_args(self) -> str:
        return f"{self.bm}, {self.bn}, {self.bk}, {self.tm}, {self.tn}"

    def shared_bytes(self, dtype) -> int:
        """Static shared memory of one block: two buffers (double buffering) of the A slice (transposed,
        rows padded) and the B slice, in the accumulation type."""
        return ACC_BYTES[np.dtype(dtype)] * 2 * self.bk * (self.bm + GEMM_A_PAD + self.bn)


# Every float32 / float16 tile runs the 8x8 per-thread micro-kernel (issue 16: the 4x4 small tile reached
# 63 % FMA in its main loop, the 4x8 wide one 72 %; 8x8 with fewer threads per block, 73.7-77.4 %): 256, 128
# and 64 threads per block.
LARGE_TILE = GemmTile("large", 128, 128, 16, 8, 8)
WIDE_TILE = GemmTile("wide", 64, 128, 16, 8, 8)
SMALL_TILE = GemmTile("small", 64, 64, 16, 8, 8)
# The small tile as 4x4 results per thread on 256 threads (two blocks per SM at 128 registers): for kernels
# whose loaders keep more state than 8x8 accumulators leave room for at 255 registers (SMALL_TILE spilled
# there: the backward-filter igemm with a fused activation, 4 bytes on sm_120 with NVRTC 13; conv3d_igemm's
# depth digit, 12 bytes on sm_90, which now runs 64x64x8 8x8 instead). conv2d_igemm / gemm1x1 do not
# instantiate it.
SMALL_TILE_4X4 = GemmTile("small", 64, 64, 16, 4, 4)
# float64's small tile keeps BK = 8: with 16 its loaders' registers push the 4x4 double tile past the 128
# registers of two blocks per SM (ptxas spilled on sm_100).
SMALL_TILE_F64 = GemmTile("small", 64, 64, 8, 4, 4)
# The configs instantiated per dtype (float64 runs the small tile only).
TILES_BY_DTYPE = {np.dtype(np.float16): (LARGE_TILE, WIDE_TILE, SMALL_TILE),
                  np.dtype(np.float32): (LARGE_TILE, WIDE_TILE, SMALL_TILE),
                  np.dtype(np.float64): (SMALL_TILE_F64,)}
# A tile by its name (float64's "small" is SMALL_TILE_F64: launches map a name to the dtype's config).
TILE_BY_NAME = {t.name: t for t in TILES_BY_DTYPE[np.dtype(np.float32)]}
LARGE_TILE_MIN_FILTERS = 65   # Kg > 64: more filters than one small tile holds
MIN_BLOCKS = 128   # large (wide) tiles needed to keep a 108..132-SM GPU busy

# Address alignment (bytes) a 4-wide vector load needs (Vec4<T>::ALIGN in kernels/gemm_tile.cuh).
VEC_ALIGN_BYTES = {np.dtype(np.float16): 8, np.dtype(np.float32): 16, np.dtype(np.float64): 16}


# --------------------------------------------------------------------------------------------
# rules
# --------------------------------------------------------------------------------------------

def gemm_blocks(geom: ConvGeometry, tile) -> int:
    """Tiles of the GEMM (= blocks launched before the grid cap): groups x pixel tiles x filter tiles."""
    return geom.groups * ceil_div(geom.N * geom.P * geom.Q, tile.bn) * ceil_div(geom.Kg, tile.bm)


def tile_for_dtype(tile: GemmTile, dtype) -> GemmTile:
    """The config of ``dtype`` named like ``tile`` (a tile's name, "large" / "small", is what a caller
    chooses; float64's "small" is ``SMALL_TILE_F64``). ValueError when the dtype has no such tile."""
    dtype = np.dtype(dtype)
    for t in TILES_BY_DTYPE[dtype]:
        if t.name == tile.name:
            return t
    raise ValueError(f"tile {tile.name} is not instantiated for {dtype}")


def with_small_tile(tile: GemmTile, dtype, small: GemmTile) -> GemmTile:
    """The config of ``dtype`` named like ``tile`` (``tile_for_dtype``), with float32 / float16's 8x8 small
    tile replaced by ``small``: the one rule of the kernels whose loaders keep more state than the 8x8 small
    tile (BK = 16, 64 threads, 255 registers) leaves room for -- conv3d_igemm (its depth digit: 64x64x8 8x8,
    ``conv3d_igemm.SMALL_TILE_3D``) and the backward-filter igemm (``small_tile_4x4_for``). ValueError when
    the dtype has no such tile."""
    t = tile_for_dtype(tile, dtype)
    return small if t == SMALL_TILE else t


def small_tile_4x4_for(tile: GemmTile, dtype) -> GemmTile:
    """``with_small_tile`` with ``SMALL_TILE_4X4`` (4x4 per thread, 256 threads): the backward-filter igemm's
    tile (the 8x8 small tile spilled there with a fused activation, 4 bytes on sm_120 with NVRTC 13)."""
    return with_small_tile(tile, dtype, SMALL_TILE_4X4)


def gemm_tile_for(geom: ConvGeometry, dtype) -> GemmTile:
    """The tile config of the GEMM kernels (see the module docstring): LARGE_TILE for float32 / float16
    when Kg >= LARGE_TILE_MIN_FILTERS and there are >= MIN_BLOCKS large tiles, else WIDE_TILE when there are
    >= MIN_BLOCKS wide tiles, else the dtype's small tile."""
    dtype = np.dtype(dtype)
    if LARGE_TILE not in TILES_BY_DTYPE[dtype]:
        return tile_for_dtype(SMALL_TILE, dtype)
    if geom.Kg >= LARGE_TILE_MIN_FILTERS and gemm_blocks(geom, LARGE_TILE) >= MIN_BLOCKS:
        return LARGE_TILE
    if gemm_blocks(geom, WIDE_TILE) >= MIN_BLOCKS:
        return WIDE_TILE
    return SMALL_TILE


# --------------------------------------------------------------------------------------------
# the autotuner's variants: tiles, split-K on / off
# --------------------------------------------------------------------------------------------

SPLIT_SUFFIX = "split"


@dataclass(frozen=True)
class TileVariants:
    """What the autotuner may measure of one GEMM algorithm besides its rule (``ops.VARIANTS``): each tile
    of the dtype (``LARGE_TILE`` only when Kg >= LARGE_TILE_MIN_FILTERS: with fewer filters at least half
    of its rows are zeros), and, for an algorithm with split-K (``splitk_for``: the number of ranges its
    rule gives a tile), each tile the rule splits once more with the split. A variant is named
    ``<tile name>`` (unsplit, ``splits=1``) or ``<tile name>/split`` (the rule's ranges)."""

    splitk_for: object = None  # (geom, tile) -> ranges; None: no split-K

    def names(self, geom: ConvGeometry, dtype) -> tuple[str, ...]:
        out = []
        for t in TILES_BY_DTYPE[np.dtype(dtype)]:
            if t.name == LARGE_TILE.name and geom.Kg < LARGE_TILE_MIN_FILTERS:
                continue
            out.append(t.name)
            if self.splitk_for is not None and self.splitk_for(geom, t) > 1:
                out.append(f"{t.name}/{SPLIT_SUFFIX}")
        return tuple(out)

    def parse(self, variant: str) -> tuple[str, bool]:
        """(tile name, split) of a variant name; ValueError for a name no tile / suffix has."""
        tile, sep, suffix = variant.partition("/")
        if tile not in TILE_BY_NAME or (sep and (suffix != SPLIT_SUFFIX or self.splitk_for is None)):
            raise ValueError(f"unknown variant {variant!r}")
        return tile, bool(sep)

    def decline_reason(self, variant: str, geom: ConvGeometry, dtype) -> str | None:
        """None when ``variant`` can run this call (one of ``names``), else why not."""
        if variant not in self.names(geom, dtype):
            return (f"variant {variant} does not apply to this call (its variants: "
                    f"{', '.join(self.names(geom, dtype))})")
        return None

    def launch_options(self, variant: str) -> dict:
        """The launch function's keyword overrides for ``variant``: ``tile`` (the float32 config of that
        name; the launch maps it to the dtype's) and, with split-K, ``splits`` (1 unsplit, None the rule)."""
        tile, split = self.parse(variant)
        opts = {"tile": TILE_BY_NAME[tile]}
        if self.splitk_for is not None:
            opts["splits"] = None if split else 1
        return opts


def data_pointer(a) -> int:
    """The address of an array's first element (CuPy: device pointer; NumPy, as in the emulator: host)."""
    iface = getattr(a, "__cuda_array_interface__", None) or a.__array_interface__
    return int(iface["data"][0])


def vec4_aligned(address: int, dtype) -> bool:
    return address % VEC_ALIGN_BYTES[np.dtype(dtype)] == 0


def weights_vectorizable(geom: ConvGeometry, dtype, w_address: int) -> bool:
    """4-wide weight loads: rows of Cg*R*S elements a multiple of 4 and w aligned for Vec4. Every load then
    starts at (filter * Cg*R*S + multiple of 4) elements from an aligned base: aligned."""
    return (geom.Cg * geom.R * geom.S) % 4 == 0 and vec4_aligned(w_address, dtype)


def resolve_vectorize(requested: bool | None, allowed: bool, what: str) -> bool:
    """Whether a launch uses 4-wide ``what`` loads: the rule's answer ``allowed`` unless a test asked
    (``requested`` True / False); asking for vector loads the rule forbids is a ValueError."""
    if requested is None:
        return allowed
    if requested and not allowed:
        raise ValueError(f"4-wide {what} loads requested, but the rule does not allow them for this call")
    return bool(requested)


# --------------------------------------------------------------------------------------------
# names and launch
# --------------------------------------------------------------------------------------------

def gemm_kernel_name(kernel: str, dtype, tile) -> str:
    return f"gpuconv::{kernel}<{CTYPE[np.dtype(dtype)]}, {tile.template_args}>"


def gemm_instantiations(kernel: str) -> tuple[str, ...]:
    return tuple(gemm_kernel_name(kernel, dt, t) for dt, tiles in TILES_BY_DTYPE.items() for t in tiles)


def launch_gemm(rt, source: str, kernel: str, x, w, b, y, geom: ConvGeometry, tile, extra: list,
                tiles=None, splits: int = 1) -> str:
    """One launch of a GEMM-style kernel: 1-D blocks of ``tile.threads``, one per tile up to the grid cap
    (the kernel's grid-stride loop covers the rest; at least one block, which finds no tile when the
    output is empty). Shared memory is static, so ``shared_mem`` stays 0. ``tile`` must be one of
    ``tiles``, the configs instantiated for x's dtype (default ``TILES_BY_DTYPE``; igemm_tc passes its
    own tensor-core tiles, which have the same ``bm``, ``bn``, ``threads`` and ``template_args``).
    ``extra``: the kernel's own scalars after the shared conv parameters. ``splits``: split-K's reduction
    ranges (igemm; the grid covers splits x tiles blocks)."""
    dtype = np.dtype(x.dtype)
    if tile not in (TILES_BY_DTYPE[dtype] if tiles is None else tiles):
        raise ValueError(f"{kernel}: tile {tile.name} is not instantiated for {dtype}")
    name = gemm_kernel_name(kernel, dtype, tile)
    grid = limits.grid_blocks(gemm_blocks(geom, tile) * splits)
    rt.function(source, name)((grid, 1, 1), (tile.threads, 1, 1), [x, w, b, y] + conv_kernel_args(geom) + extra)
    return name
