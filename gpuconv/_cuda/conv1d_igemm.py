"""``conv1d_igemm``: the implicit-GEMM 1-D convolution (``kernels/conv1d_igemm.cu``), one launch per call
(two with split-K).

The kernel is conv2d's implicit GEMM (``conv_igemm.py``) without the row axis: per conv group the output is
the (Kg filters) x (M = N*Q pixels) product of the group's weights (Kg x Cg*S, read as stored) and the 1-D
im2col matrix, gathered from x on the fly by ``Im2colLoader`` with the 1-D geometry (the tap walk is (c, s);
no row digit, no row compare per element: what the 2-D kernels on a height-1 view paid, issue 18). The
geometry is a 1-D ``ConvNdGeometry`` (``_geometry_nd``); the kernel receives its ``as_2d()`` (unit height) as
one ``ConvParams`` (``abi.conv1d_params``), so the GEMM view the rules read is that 2-D geometry itself.

Tiles (conv2d's: large / wide / small 8x8 per thread, float64's 4x4), 4-wide weight loads, split-K
(``conv1d_igemm_splitk`` + conv2d_igemm.cu's ``gemm_splitk_reduce``, where conv2d's rule splits the same GEMM;
workspace ``splits * K * N*Q`` accumulation-type elements) and the grid: conv2d igemm's rules, called through
``igemm_nd.launch``. Declines only what does not fit the kernel's 32-bit sizes
(``conv1d_int32_limit_reason``); the caller (``_conv_nd``) then runs the 2-D kernels on the height-1 view and
says so in the record.
"""

from __future__ import annotations

import numpy as np

from . import igemm_nd
from .abi import conv1d_kernel_args
from .algo import FORWARD, Algorithm
from .gemm import TILES_BY_DTYPE, gemm_kernel_name, tile_for_dtype
from .limits import CTYPE, declines, int32_limit_reason

SOURCE = "conv1d_igemm.cu"
KERNEL = "conv1d_igemm"
SPLIT_KERNEL = "conv1d_igemm_splitk"
FAMILY = igemm_nd.NdIgemm(SOURCE, KERNEL, SPLIT_KERNEL, TILES_BY_DTYPE, tile_for_dtype)
INSTANTIATIONS = FAMILY.instantiations()


def gemm_view(geom):
    """The 1-D call's GEMM as a 2-D geometry: the unit-height convolution itself (``as_2d``)."""
    return geom.as_2d()


def conv1d_int32_limit_reason(geom) -> str | None:
    """The sizes the kernel forms in C ``int`` (offsets and pixel indices are 64-bit): conv2d's rule for the
    row (``limits.conv_int32_limit_reason`` without the unit height), spelled for 1-D."""
    (L,), (S,), ((pl, pr),), (d,) = geom.input_size, geom.kernel_size, geom.padding, geom.dilation
    return int32_limit_reason({"N": geom.N, "C": geom.C, "K": geom.K, "kernel_l": S, "L + padding": L + pl + pr,
                               "dilation * kernel_l": d * S, "C/groups * kernel_l": geom.Cg * S}, "conv1d")


def conv1d_igemm_decline_reason(geom, dtype) -> str | None:
    return declines("conv1d_igemm", conv1d_int32_limit_reason(geom))


def conv1d_igemm_name(dtype, tile) -> str:
    return gemm_kernel_name(KERNEL, dtype, tile_for_dtype(tile, dtype))


def tile_for(geom, dtype):
    """The tile of a call: ``gemm_tile_for`` on its unit-height geometry."""
    return FAMILY.tile_for(gemm_view(geom), dtype)


def splitk_for(geom, dtype, tile=None) -> int:
    """Split-K's ranges for a call (``tile``: the rule's by default): conv2d igemm's rule."""
    return FAMILY.splits_for(gemm_view(geom), dtype, tile)


def launch_conv1d_igemm(rt, x, w, b, y, geom, *, tile=None, vectorize_weights: bool | None = None,
                        splits: int | None = None) -> str:
    """One call: x (N, C, L) and w (K, Cg, S) C-contiguous, b the bias or (without one) any valid array of x's
    dtype, y a new C-contiguous (N, K, Q) array the kernels fill completely. ``tile`` / ``vectorize_weights``
    / ``splits`` override the rules (tests; ``igemm_nd.launch``). Returns the kernel id."""
    return igemm_nd.launch(rt, FAMILY, x, w, b, y, gemm_view(geom), conv1d_kernel_args(geom), geom.output_size[0],
                           tile=tile, vectorize_weights=vectorize_weights, splits=splits)


def _decline_reason(geom, dtype) -> str | None:
    """``conv1d_igemm_decline_reason``, looked up when called (the operation table's entry follows a test's
    monkeypatch of it, as the N-D plans did when they called it by name)."""
    return conv1d_igemm_decline_reason(geom, dtype)


ALGO = Algorithm("igemm", "conv1d", FORWARD, SOURCE, INSTANTIATIONS, _decline_reason,
                 launch_conv1d_igemm,
                 "implicit GEMM over (c, s): conv2d's igemm body with the 1-D gather geometry (no row digit), one "
                 "launch; split-K with a fixed-order reduction when too few blocks")


def conv1d(rt, x, w, b, geom):
    """Run one conv1d forward on runtime ``rt``: ``(y, kernel_id)``, ``y`` a new C-contiguous (N, K, Q) array
    of x's dtype. ValueError when the kernel declines the geometry (checked before allocating)."""
    dtype = np.dtype(x.dtype)
    if dtype not in CTYPE:
        raise TypeError(f"conv1d CUDA kernels support float16, float32 and float64, got {dtype}")
    reason = conv1d_igemm_decline_reason(geom, dtype)
    if reason is not None:
        raise ValueError(reason)
    return igemm_nd.run(rt, ALGO, x, w, b, geom)
