"""``igemm``: implicit-GEMM conv2d (``kernels/conv2d_igemm.cu``) on the shared GEMM tiles (``gemm.py``).

Per conv group the output is the (Kg filters) x (M = N*P*Q pixels) product of the group's weights
(Kg x Cg*R*S, read as stored) and the im2col matrix (Cg*R*S x M), which the kernel gathers from x on the
fly; no im2col buffer exists in global memory. ``igemm`` accepts every geometry within the 32-bit size rule
(``limits.conv_int32_limit_reason``): stride, asymmetric padding, dilation, groups, flip, bias, activation.
Tile config and 4-wide weight loads: ``gemm.gemm_tile_for`` and ``gemm.weights_vectorizable``.
"""

from __future__ import annotations

import numpy as np

from .._geometry import ConvGeometry
from .algo import FORWARD, Algorithm
from .gemm import (GemmTile, data_pointer, gemm_instantiations, gemm_kernel_name, gemm_tile_for, launch_gemm,
                   resolve_vectorize, tile_for_dtype, weights_vectorizable)
from .limits import conv_decline_reason

SOURCE = "conv2d_igemm.cu"
KERNEL = "conv2d_igemm"
INSTANTIATIONS = gemm_instantiations(KERNEL)


def igemm_name(dtype, tile: GemmTile) -> str:
    """The kernel's name expression for ``tile`` (by name: float64's "small" is its own config)."""
    return gemm_kernel_name(KERNEL, dtype, tile_for_dtype(tile, dtype))


def igemm_decline_reason(geom: ConvGeometry, dtype) -> str | None:
    """igemm covers every geometry; it declines only what does not fit its C ``int`` sizes (the shared
    32-bit rule; pixel indices, N*P*Q, and all offsets are 64-bit in the kernel)."""
    return conv_decline_reason("igemm", geom)


def launch_igemm(rt, x, w, b, y, geom: ConvGeometry, *, tile: GemmTile | None = None,
                 vectorize_weights: bool | None = None) -> str:
    """The launch of igemm. ``tile`` / ``vectorize_weights`` override the rules (tests use this to run
    every config on small shapes; forcing vector loads the rule forbids raises ValueError)."""
    dtype = np.dtype(x.dtype)
    tile = gemm_tile_for(geom, dtype) if tile is None else tile_for_dtype(tile, dtype)
    vec_w = resolve_vectorize(vectorize_weights, weights_vectorizable(geom, dtype, data_pointer(w)), "weight")
    return launch_gemm(rt, SOURCE, KERNEL, x, w, b, y, geom, tile, [np.int32(1 if vec_w else 0)])


ALGO = Algorithm("igemm", "conv2d", FORWARD, SOURCE, INSTANTIATIONS, igemm_decline_reason, launch_igemm,
                 "implicit GEMM: filters x (N*P*Q pixels) per group, input gathered on the fly into "
                 "double-buffered shared slices, 8x8 (4x4) register tile per thread")

