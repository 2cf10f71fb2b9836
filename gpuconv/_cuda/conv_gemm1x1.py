"""``gemm1x1``: 1x1 convolution with zero padding as a plain GEMM over channels (``kernels/conv2d_gemm1x1.cu``):
``Y_n[k, p*Q + q] = sum_c W[k, c] * X_n[c, p*sh, q*sw]`` per image n and group, the images folded into the
GEMM's columns (M = N*P*Q). Same tiling as ``igemm`` (``kernels/gemm_tile.cuh``; tile configs and the rule
that picks one live in ``gemm.py``), with a cheaper input loader: no tap decomposition, no padding
tests, and 4-wide loads of 4 consecutive pixels where the input allows them.

Rules:

* ``gemm1x1_decline_reason``: it declines every filter other than 1x1 and any non-zero padding (messages
  start "gemm1x1 declines this geometry because"), and the shared 32-bit size rule. Stride, groups,
  bias and activation are handled; dilation and flip do not change a 1x1 filter and are accepted.
* ``input_vectorizable``: 4-wide input loads when the stride is 1 (then each channel of an image is one
  contiguous row of B: P = H, Q = W), H*W % 4 == 0 (4-pixel groups never straddle two images or channels)
  and x's address is aligned for them (``gemm.VEC_ALIGN_BYTES``).
* weights: ``gemm.weights_vectorizable`` (here: Cg % 4 == 0 and w aligned).
"""

from __future__ import annotations

import numpy as np

from .._geometry import ConvGeometry
from .algo import FORWARD, Algorithm
from .gemm import (GemmTile, TileVariants, data_pointer, gemm_instantiations, gemm_kernel_name, gemm_tile_for, launch_gemm,
                   resolve_vectorize, tile_for_dtype, vec4_aligned, weights_vectorizable)
from .limits import conv_decline_reason

SOURCE = "conv2d_gemm1x1.cu"
KERNEL = "conv2d_gemm1x1"
INSTANTIATIONS = gemm_instantiations(KERNEL)


def gemm1x1_name(dtype, tile: GemmTile) -> str:
    """The kernel's name expression for ``tile`` (by name: float64's "small" is its own config)."""
    return gemm_kernel_name(KERNEL, dtype, tile_for_dtype(tile, dtype))


def gemm1x1_decline_reason(geom: ConvGeometry, dtype) -> str | None:
    """None for a 1x1 filter with zero padding (within the 32-bit size rule), else why not."""
    if (geom.R, geom.S) != (1, 1):
        return (f"gemm1x1 declines this geometry because the filter is {geom.R}x{geom.S}; it computes only "
                f"1x1 filters (use algo='igemm')")
    pads = (geom.pt, geom.pb, geom.pl, geom.pr)
    if any(pads):
        return (f"gemm1x1 declines this geometry because padding (top, bottom, left, right) = {pads} is not "
                f"zero; it computes only unpadded 1x1 convolutions (use algo='igemm')")
    return conv_decline_reason("gemm1x1", geom)


def input_vectorizable(geom: ConvGeometry, dtype, x_address: int) -> bool:
    """4-wide input loads: stride 1, H*W % 4 == 0, x aligned for Vec4 (see the module docstring)."""
    return geom.sh == 1 and geom.sw == 1 and (geom.H * geom.W) % 4 == 0 and vec4_aligned(x_address, dtype)


def launch_gemm1x1(rt, x, w, b, y, geom: ConvGeometry, *, tile: GemmTile | None = None,
                   vectorize_weights: bool | None = None, vectorize_input: bool | None = None) -> str:
    """The launch of gemm1x1; the keyword overrides are for tests (as in conv_igemm.launch_igemm)."""
    dtype = np.dtype(x.dtype)
    tile = gemm_tile_for(geom, dtype) if tile is None else tile_for_dtype(tile, dtype)
    vec_w = resolve_vectorize(vectorize_weights, weights_vectorizable(geom, dtype, data_pointer(w)), "weight")
    vec_x = resolve_vectorize(vectorize_input, input_vectorizable(geom, dtype, data_pointer(x)), "input")
    return launch_gemm(rt, SOURCE, KERNEL, x, w, b, y, geom, tile,
                       [np.int32(1 if vec_w else 0), np.int32(1 if vec_x else 0)])


# What the autotuner measures of gemm1x1 (ops.VARIANTS): each tile (no split-K here).
VARIANTS = TileVariants()

ALGO = Algorithm("gemm1x1", "conv2d", FORWARD, SOURCE, INSTANTIATIONS, gemm1x1_decline_reason,
                 launch_gemm1x1,
                 "1x1 filter, zero padding: a plain GEMM over channels (filters x N*P*Q pixels), 4-wide "
                 "loads of contiguous pixels at stride 1")
