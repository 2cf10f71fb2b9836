"""``conv3d_igemm``: the implicit-GEMM 3-D convolution (``kernels/conv3d_igemm.cu``), one launch per call
(two with split-K).

The kernel is conv2d's implicit GEMM (``conv_igemm.py``) with a depth axis: per conv group the output is
the (Kg filters) x (M = N*OD*P*Q pixels) product of the group's weights (Kg x Cg*KD*R*S, read as stored)
and the 3-D im2col matrix, gathered from x on the fly. The geometry is a 3-D ``ConvNdGeometry``
(``_geometry_nd``); the kernel receives it as one ``Conv3dParams`` (``abi.conv3d_params``).

Tiles, weight vector loads, split-K and the grid are the 2-D GEMM kernels' (``gemm.py``, ``conv_igemm.py``,
whose functions are called, not copied, through ``igemm_nd.launch``): ``gemm_view`` describes the 3-D GEMM
as a ``ConvGeometry`` with the same GEMM sizes -- M as ``N*OD`` images of ``P x Q`` pixels, the same filters
and groups, the reduction ``Cg*KD*R*S`` as a filter of ``KD*R`` rows and ``S`` columns -- which is all
``gemm_tile_for``, ``gemm_blocks``, ``weights_vectorizable`` and ``splitk_for`` read. Split-K
(``conv3d_igemm_splitk`` + conv2d_igemm.cu's ``gemm_splitk_reduce``) runs where the 2-D rule would split the
same GEMM: deep layers with few output pixels (C3D's conv5a, 512 filters at 2 x 7 x 7 outputs: 8 ranges at batch
1-2, 5 at 4, 3 at 8, none at 16; a 3-D U-Net's 4^3 bottleneck);
its workspace is ``splits * K * N*OD*P*Q`` accumulation-type elements (``igemm_nd``). One difference from
2-D: the float32 / float16 small tile (``SMALL_TILE_3D``, ``gemm.with_small_tile``) is 64 x 64 x 8 with 8x8
results per thread on 64 threads, where conv2d's is 64 x 64 x 16: with BK = 16 the depth digit's loader
state (16 pixels per thread) on top of 64 accumulators spilled at 255 registers (12 bytes for float32 on
sm_90 with NVRTC 12.9 before issue 18's changes, 4 after); BK = 8 halves the gathered pixels per thread
(8) and fits (200-248 registers, sm_75..sm_120, NVRTC 12.9 and 13.5). Its main loop: 68.0 % FMA (sm_90,
float32), against 59.7 % for the 4x4-on-256-threads tile it replaces (the backward-filter igemm's,
``gemm.small_tile_4x4_for``).

Declines only what does not fit the kernel's 32-bit sizes (``conv3d_int32_limit_reason``); the caller
(``_conv_nd``) then runs the depth-tap lowering and says so in the record.
"""

from __future__ import annotations

import numpy as np

from .._geometry import ConvGeometry
from . import igemm_nd
from .abi import conv3d_kernel_args
from .algo import FORWARD, Algorithm
from .gemm import TILES_BY_DTYPE, GemmTile, gemm_kernel_name, with_small_tile
from .limits import CTYPE, declines, int32_limit_reason

SOURCE = "conv3d_igemm.cu"
KERNEL = "conv3d_igemm"
SPLIT_KERNEL = "conv3d_igemm_splitk"
# The float32 / float16 small tile of the 3-D kernel (the module docstring): 64 x 64 x 8, 8x8 per thread,
# 64 threads (four blocks per SM at 255 registers, gemm_blocks_per_sm, as conv2d's small tile).
SMALL_TILE_3D = GemmTile("small", 64, 64, 8, 8, 8)
TILES_3D = {dt: tuple(with_small_tile(t, dt, SMALL_TILE_3D) for t in tiles) for dt, tiles in TILES_BY_DTYPE.items()}


def tile_3d(tile, dtype) -> GemmTile:
    """The 3-D kernel's config of a 2-D tile (by name, for ``dtype``): ``SMALL_TILE_3D`` for float32 /
    float16's small tile, the 2-D config otherwise (``gemm.with_small_tile``)."""
    return with_small_tile(tile, dtype, SMALL_TILE_3D)


FAMILY = igemm_nd.NdIgemm(SOURCE, KERNEL, SPLIT_KERNEL, TILES_3D, tile_3d)
INSTANTIATIONS = FAMILY.instantiations()


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
    return FAMILY.tile_for(gemm_view(geom), dtype)


def splitk_for(geom, dtype, tile=None) -> int:
    """Split-K's ranges for a call (``tile``: the rule's by default): conv2d igemm's rule on ``gemm_view``."""
    return FAMILY.splits_for(gemm_view(geom), dtype, tile)


def launch_conv3d_igemm(rt, x, w, b, y, geom, *, tile=None, vectorize_weights: bool | None = None,
                        splits: int | None = None) -> str:
    """One call: x (N, C, D, H, W) and w C-contiguous, b the bias or (without one) any valid array of x's
    dtype, y a new C-contiguous (N, K, OD, P, Q) array the kernels fill completely. ``tile`` /
    ``vectorize_weights`` / ``splits`` override the rules (tests; ``igemm_nd.launch``). Returns the kernel
    id (``conv3d_igemm<...>``, or with split-K ``conv3d_igemm_splitk<...> splitK=<n> + gemm_splitk_reduce<T>``)."""
    OD, P, Q = geom.output_size
    return igemm_nd.launch(rt, FAMILY, x, w, b, y, gemm_view(geom), conv3d_kernel_args(geom), OD * P * Q, tile=tile,
                           vectorize_weights=vectorize_weights, splits=splits)


def _decline_reason(geom, dtype) -> str | None:
    """``conv3d_igemm_decline_reason``, looked up when called (the operation table's entry follows a test's
    monkeypatch of it, as the N-D plans did when they called it by name)."""
    return conv3d_igemm_decline_reason(geom, dtype)


ALGO = Algorithm("igemm", "conv3d", FORWARD, SOURCE, INSTANTIATIONS, _decline_reason,
                 launch_conv3d_igemm,
                 "implicit GEMM over (c, t, r, s): conv2d's igemm body with the 3-D gather geometry, one launch; "
                 "split-K with a fixed-order reduction when too few blocks")


def conv3d(rt, x, w, b, geom):
    """Run one conv3d forward on runtime ``rt``: ``(y, kernel_id)``, ``y`` a new C-contiguous (N, K, OD, P, Q)
    array of x's dtype. ValueError when the kernel declines the geometry (checked before allocating)."""
    dtype = np.dtype(x.dtype)
    if dtype not in CTYPE:
        raise TypeError(f"conv3d CUDA kernels support float16, float32 and float64, got {dtype}")
    reason = conv3d_igemm_decline_reason(geom, dtype)
    if reason is not None:
        raise ValueError(reason)
    return igemm_nd.run(rt, ALGO, x, w, b, geom)
