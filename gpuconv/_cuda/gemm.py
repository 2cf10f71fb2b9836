"""The host side of the GEMM tile machinery (``kernels/gemm_tile.cuh``) that the GEMM-style conv kernels
share (``igemm``, ``gemm1x1``, ``igemm_tc``): the tile configs, the rule that picks one, the alignment rule
for 4-wide vector loads, and the launch.

A GEMM-style conv kernel computes, per conv group, the (Kg filters) x (M = N*P*Q pixels) product of the
group's weights (Kg x Cg*R*S, read as stored) and an input matrix its loader reads (the im2col matrix
gathered on the fly, or for 1x1 filters the input itself).

Rules (plain functions of the geometry and dtype, plus array addresses for vectorization):

* ``gemm_tile_for``: the tile config, first match of
  1. ``LARGE_TILE`` (128 filters x 128 pixels per block, 8x8 per thread) for float32 / float16 when a group
     has more than 64 filters (``Kg >= LARGE_TILE_MIN_FILTERS``; with 64 or fewer a 128-row tile would be at
     least half zeros) and the large tiles number at least ``MIN_BLOCKS`` = 128 (about one block per SM on
     the GPUs we target: 108 SMs on A100, 132 on H100; fewer would leave SMs idle);
  2. ``WIDE_TILE`` (64 filters x 128 pixels, 4x8 per thread; issue 16: the tile for layers with 64 or fewer
     filters, ResNet's first stage, VGG conv1) for float32 / float16 when the wide tiles number at least
     ``MIN_BLOCKS``: half the blocks of the small tile, twice its FMAs per loaded element;
  3. the small tile (64 x 64, 4x4 per thread, 4x the large tile's blocks) otherwise: layers too small to
     fill the GPU with bigger tiles; always for float64 (its own ``SMALL_TILE_F64``, BK = 8;
     ``tile_for_dtype`` maps a tile name to a dtype's config): 64 double accumulators would take 128 of a
     thread's 255 registers before any operand.
  Every config: BK = 16 reduction indices per slice (8 for float64), 256 threads.
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
    ``tm`` x ``tn`` results per thread (template arguments of the kernels, in this order)."""

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


LARGE_TILE = GemmTile("large", 128, 128, 16, 8, 8)
SMALL_TILE = GemmTile("small", 64, 64, 16, 4, 4)
WIDE_TILE = GemmTile("wide", 64, 128, 16, 4, 8)
# float64's small tile keeps BK = 8: with 16 its loaders' registers push the 4x4 double tile past the 128
# registers of two blocks per SM (ptxas spilled on sm_100).
SMALL_TILE_F64 = GemmTile("small", 64, 64, 8, 4, 4)
# The configs instantiated per dtype (float64 runs the small tile only).
TILES_BY_DTYPE = {np.dtype(np.float16): (LARGE_TILE, WIDE_TILE, SMALL_TILE),
                  np.dtype(np.float32): (LARGE_TILE, WIDE_TILE, SMALL_TILE),
                  np.dtype(np.float64): (SMALL_TILE_F64,)}
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
