"""The ``depthwise`` conv2d CUDA algorithm (``kernels/conv2d_depthwise.cu``): every filter reads exactly one
input channel (``C/groups == 1``: depthwise, with any channel multiplier ``K/groups >= 1``).

Depthwise convolution does R*S multiply-adds per output, so it is bound by memory traffic, not arithmetic.
A block slice computes one ``TW x (TH*ROWS)`` output tile of one ``(n, k)`` plane: it stages the tile's input
rectangle (tile + halo) of input channel ``k / Kg`` in shared memory with coalesced row reads, and writes
each output once, coalesced. Several slices (``threadIdx.z``) share a block when planes are small, so
7x7 or 14x14 planes still fill ~128-thread blocks.

Host rules (plain functions of ``(geom, dtype)``, so tests and users can ask them directly):

* ``depthwise_tile``: ``TW`` = 8, 16 or 32 columns (the smallest of those >= Q, else 32), ``TH`` thread rows
  (a power of two, at most 128 / TW, no taller than P needs); each thread owns ``ROWS = 4`` output rows.
* ``depthwise_filter_template``: 3x3 and 5x5 have compile-time specializations (taps in registers, loops
  unrolled, a stride-1 sliding window); every other size runs the generic ``(0, 0)`` instantiation.
* ``depthwise_decline_reason``: declines (``"depthwise declines this geometry because ..."``) when a filter
  reads more than one input channel, when a size does not fit a C ``int`` (the 32-bit rule, with the
  tile's overhang), or when one slice's input rectangle does not fit 48 KiB of shared memory.

The tile sizes are reasoned (docs/architecture.md, "Tuning status").
"""

from __future__ import annotations

import numpy as np

from .._geometry import ConvGeometry
from . import limits
from .abi import conv_kernel_args
from .algo import FORWARD, Algorithm
from .limits import ACC_BYTES, CTYPE, SHARED_LIMIT_BYTES, ceil_div

SOURCE = "conv2d_depthwise.cu"

ROWS = 4  # output rows per thread (kept in registers); the template's ROWS knob
# Threads per block: the tile and slice choice fill up to this, never more. Must equal
# CONV_DEPTHWISE_MAX_THREADS in the kernel (its __launch_bounds__; a bigger block would fail to launch).
MAX_THREADS = 128
TILE_WIDTHS = (8, 16, 32)  # TW candidates (threads along x = output columns per tile)
# Filter sizes with a compile-time specialization; everything else runs the generic (0, 0) kernel.
# Each instantiation costs NVRTC time on first use (x 5 architectures in the compile check), hence few.
SPECIALIZED_FILTERS = ((3, 3), (5, 5))

def depthwise_name(dtype, fr: int, fs: int) -> str:
    return f"gpuconv::conv2d_depthwise<{CTYPE[np.dtype(dtype)]}, {ROWS}, {fr}, {fs}>"


INSTANTIATIONS: tuple[str, ...] = tuple(depthwise_name(dt, fr, fs) for dt in CTYPE
                                        for fr, fs in SPECIALIZED_FILTERS + ((0, 0),))


# --------------------------------------------------------------------------------------------
# rules
# --------------------------------------------------------------------------------------------

def depthwise_filter_template(geom: ConvGeometry) -> tuple[int, int]:
    """(FR, FS) template arguments: the filter size when it is specialized, else (0, 0) (generic)."""
    return (geom.R, geom.S) if (geom.R, geom.S) in SPECIALIZED_FILTERS else (0, 0)


def depthwise_tile(geom: ConvGeometry) -> tuple[int, int]:
    """(TW, TH): block threads along x (= output columns per tile) and y (thread rows; the tile is
    TH * ROWS output rows tall). TW is the smallest of 8 / 16 / 32 that covers Q (32 when Q > 16): wide
    rows keep global reads and writes coalesced, narrow ones keep small planes from idling most threads.
    TH doubles while the tile is shorter than P and the block stays within MAX_THREADS."""
    tw = next((t for t in TILE_WIDTHS if geom.Q <= t), TILE_WIDTHS[-1])
    th = 1
    while th * ROWS < geom.P and tw * th * 2 <= MAX_THREADS:
        th *= 2
    return tw, th


def depthwise_halo(geom: ConvGeometry) -> tuple[int, int]:
    """Rows x columns of the input rectangle one tile reads: its TH*ROWS output rows start ``sh`` apart and
    each reaches ``(R-1)*dh`` further, so ``(TH*ROWS-1)*sh + (R-1)*dh + 1`` (likewise ``(TW-1)*sw +
    (S-1)*dw + 1`` columns). Same formula as the kernel's halo_h / halo_w."""
    tw, th = depthwise_tile(geom)
    return ((th * ROWS - 1) * geom.sh + (geom.R - 1) * geom.dh + 1,
            (tw - 1) * geom.sw + (geom.S - 1) * geom.dw + 1)


def depthwise_slice_bytes(geom: ConvGeometry, dtype) -> int:
    """Shared memory of one slice (one work item): the input rectangle, plus the R*S taps in the generic
    kernel (the specializations hold them in registers), in the accumulation type."""
    halo_h, halo_w = depthwise_halo(geom)
    taps = 0 if depthwise_filter_template(geom) != (0, 0) else geom.R * geom.S
    return ACC_BYTES[np.dtype(dtype)] * (halo_h * halo_w + taps)


def depthwise_items(geom: ConvGeometry) -> int:
    """Work items: one per (n, k, output tile)."""
    tw, th = depthwise_tile(geom)
    return geom.N * geom.K * ceil_div(geom.P, th * ROWS) * ceil_div(geom.Q, tw)


def depthwise_planes_per_block(geom: ConvGeometry, dtype) -> int:
    """PB (blockDim.z): work items per block. MAX_THREADS / (TW*TH) (1 for big planes, up to 16 for
    planes of at most 8x4 outputs), halved while PB slices would exceed 48 KiB of shared memory, and no
    more than there are items. At least 1 (a geometry where one slice does not fit is declined)."""
    tw, th = depthwise_tile(geom)
    pb = max(1, MAX_THREADS // (tw * th))
    per_slice = depthwise_slice_bytes(geom, dtype)
    while pb > 1 and pb * per_slice > SHARED_LIMIT_BYTES:
        pb //= 2
    return max(1, min(pb, depthwise_items(geom)))


def depthwise_shared_bytes(geom: ConvGeometry, dtype) -> int:
    """Dynamic shared memory of a launch: PB slices."""
    return depthwise_planes_per_block(geom, dtype) * depthwise_slice_bytes(geom, dtype)


def depthwise_int32_limit_reason(geom: ConvGeometry) -> str | None:
    """The 32-bit size rule with the tile's overhang: the kernel forms input coordinates up to one tile
    (TH*ROWS rows x TW columns, times the stride) past the last output."""
    tw, th = depthwise_tile(geom)
    return limits.conv_int32_limit_reason(geom, th * ROWS * geom.sh, tw * geom.sw)


def depthwise_decline_reason(geom: ConvGeometry, dtype) -> str | None:
    """None if the depthwise kernel handles this call, else why not (a sentence starting
    ``"depthwise declines this geometry because"``)."""
    if geom.Cg != 1:
        return (f"depthwise declines this geometry because each filter reads C/groups = {geom.Cg} input "
                f"channels (C={geom.C}, groups={geom.groups}); it handles only one input channel per filter "
                f"(groups == C, K a multiple of C); use algo='tiled' or 'direct'")
    reason = limits.declines("depthwise", depthwise_int32_limit_reason(geom))
    if reason is not None:
        return reason
    need = depthwise_slice_bytes(geom, dtype)
    if need > SHARED_LIMIT_BYTES:
        halo_h, halo_w = depthwise_halo(geom)
        tw, th = depthwise_tile(geom)
        return (f"depthwise declines this geometry because staging one output tile's input needs {need} bytes "
                f"of shared memory, more than the {SHARED_LIMIT_BYTES} (48 KiB) a launch gets without opt-in: "
                f"{ACC_BYTES[np.dtype(dtype)]}-byte accumulation type x input tile + halo {halo_h}x{halo_w} "
                f"(halo = (tile-1)*stride + (kernel-1)*dilation + 1, tile {th * ROWS}x{tw} outputs)"
                f"{'' if depthwise_filter_template(geom) != (0, 0) else f' + {geom.R}x{geom.S} taps'}; "
                f"use algo='direct'")
    return None


# --------------------------------------------------------------------------------------------
# launch
# --------------------------------------------------------------------------------------------

def _launch(rt, x, w, b, y, geom: ConvGeometry) -> str:
    dtype = np.dtype(x.dtype)
    name = depthwise_name(dtype, *depthwise_filter_template(geom))
    tw, th = depthwise_tile(geom)
    pb = depthwise_planes_per_block(geom, dtype)
    blocks = limits.grid_blocks(depthwise_items(geom), pb)
    rt.function(SOURCE, name)((blocks, 1, 1), (tw, th, pb), [x, w, b, y] + conv_kernel_args(geom),
                              shared_mem=pb * depthwise_slice_bytes(geom, dtype))
    return name


ALGO = Algorithm("depthwise", "conv2d", FORWARD, SOURCE, INSTANTIATIONS, depthwise_decline_reason, _launch,
                 "one input channel per filter: a TW x 4*TH output tile of one plane per block slice, its "
                 "input tile + halo staged in shared memory, 3x3/5x5 taps in registers")
