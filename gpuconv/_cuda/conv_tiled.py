"""``tiled``: a block computes a 16x16 output tile for a block of KB filters of one group, staging each chunk
of input channels (tile + halo) and the matching weights in shared memory (``kernels/conv2d_tiled.cu``).

It covers every geometry ``direct`` does, and declines, with a ``ValueError`` when asked for by name, only
when even a one-channel chunk needs more than 48 KiB of shared memory (``tiled_shared_limit_reason``: huge
dilated or strided filters) or a size does not fit the 32-bit rule with the tile's halo. The thresholds are
reasoned (docs/architecture.md, "Tuning status").
"""

from __future__ import annotations

import numpy as np

from .._geometry import ConvGeometry
from . import limits
from .abi import conv_kernel_args
from .algo import FORWARD, Algorithm
from .limits import ACC_BYTES, CTYPE, SHARED_LIMIT_BYTES, ceil_div

SOURCE = "conv2d_tiled.cu"

TILE_P = 16  # output rows per block tile
TILE_Q = 16  # output columns per block tile (= blockDim.x)
THREAD_ROWS = 8  # blockDim.y; must equal CONV_TILED_THREAD_ROWS in conv2d_tiled.cu
SMALL_GROUP_KG = 4  # groups with fewer filters than this use KB = 1 (KB = 8 would idle > half)
# KB (filters per block) -> filter sizes with a compile-time specialization (loops fully unrolled); every
# other size runs the generic (0, 0) instantiation. KB = 8 (ordinary convolutions): 1x1 (pointwise /
# bottleneck) and 3x3; KB = 1 (depthwise and similar): 3x3 and 5x5 (MobileNet / EfficientNet). Each
# instantiation costs about a second of NVRTC time per architecture on first use, hence not all of them.
SPECIALIZED_FILTERS = {8: ((1, 1), (3, 3)), 1: ((3, 3), (5, 5))}
FILTER_BLOCKS = tuple(SPECIALIZED_FILTERS)  # KB values instantiated
MAX_CHANNELS_PER_CHUNK = 8  # input channels staged per __syncthreads() pair, at most


def tiled_name(dtype, kb: int, fr: int, fs: int) -> str:
    return f"gpuconv::conv2d_tiled<{CTYPE[np.dtype(dtype)]}, {TILE_P}, {TILE_Q}, {kb}, {fr}, {fs}>"


INSTANTIATIONS = tuple(tiled_name(dt, kb, fr, fs) for dt in CTYPE for kb in FILTER_BLOCKS
                       for fr, fs in ((0, 0),) + SPECIALIZED_FILTERS[kb])


def tiled_int32_limit_reason(geom: ConvGeometry) -> str | None:
    """The 32-bit size rule with one tile of stride extra on the padded extents: the kernel forms halo
    coordinates up to a tile past the last output."""
    return limits.conv_int32_limit_reason(geom, TILE_P * geom.sh, TILE_Q * geom.sw)


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
    return ACC_BYTES[np.dtype(dtype)] * cb * (halo_h * halo_w + kb * geom.R * geom.S)


def tiled_channels_per_chunk(geom: ConvGeometry, dtype) -> int:
    """cb: the most input channels (at most 8, at most Cg) whose staging fits in 48 KiB; at least 1
    (a geometry where even 1 does not fit is declined, see tiled_shared_limit_reason)."""
    per_channel = tiled_shared_bytes(geom, dtype, 1)
    return max(1, min(MAX_CHANNELS_PER_CHUNK, geom.Cg, SHARED_LIMIT_BYTES // per_channel))


def tiled_shared_limit_reason(geom: ConvGeometry, dtype) -> str | None:
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
            f"{ACC_BYTES[np.dtype(dtype)]}-byte accumulation type x (input tile + halo {halo_h}x{halo_w}, "
            f"halo = (16-1)*stride + (kernel-1)*dilation + 1, plus {kb} filters x {geom.R}x{geom.S} weights); "
            f"use algo='direct'")


def tiled_decline_reason(geom: ConvGeometry, dtype) -> str | None:
    return limits.declines("tiled", tiled_int32_limit_reason(geom)) or tiled_shared_limit_reason(geom, dtype)


def launch_tiled(rt, x, w, b, y, geom: ConvGeometry) -> str:
    dtype = np.dtype(x.dtype)
    kb = tiled_filter_block(geom)
    name = tiled_name(dtype, kb, *tiled_filter_template(geom))
    cb = tiled_channels_per_chunk(geom, dtype)
    blocks = geom.N * geom.groups * ceil_div(geom.Kg, kb) * ceil_div(geom.P, TILE_P) * ceil_div(geom.Q, TILE_Q)
    rt.function(SOURCE, name)((limits.grid_blocks(blocks), 1, 1), (TILE_Q, THREAD_ROWS, 1),
                              [x, w, b, y] + conv_kernel_args(geom) + [np.int32(cb)],
                              shared_mem=tiled_shared_bytes(geom, dtype, cb))
    return name


ALGO = Algorithm("tiled", "conv2d", FORWARD, SOURCE, INSTANTIATIONS, tiled_decline_reason, launch_tiled,
                 "16x16 output tile x KB filters per block, input tile + halo and weights staged in shared "
                 "memory")
