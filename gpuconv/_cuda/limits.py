"""Facts every launch module shares: the C++ storage and accumulation types per dtype, the grid cap, the
shared-memory budget of a launch, and the one 32-bit size rule (``int32_limit_reason``).

Kept apart from the algorithms so that pooling, convolution and the GEMM host code read the same constants
(and tests lower ``MAX_GRID_BLOCKS`` in one place to force every kernel's grid-stride loop).
"""

from __future__ import annotations

import numpy as np

# C++ storage type and accumulation-type size (bytes) per NumPy dtype (acc_type in kernels/common.cuh).
CTYPE = {np.dtype(np.float16): "gpuconv::half", np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
ACC_BYTES = {np.dtype(np.float16): 4, np.dtype(np.float32): 4, np.dtype(np.float64): 8}

# Kernels loop grid-stride in 64-bit, so grids can be capped; 2^20 blocks are far more than any GPU keeps
# resident at once. Read at launch time (``grid_blocks``), so a test may lower it.
MAX_GRID_BLOCKS = 1 << 20

# A launch gets this much dynamic shared memory without the opt-in attribute.
SHARED_LIMIT_BYTES = 48 * 1024

INT32_MAX = 2**31 - 1


def ctype(dtype) -> str:
    return CTYPE[np.dtype(dtype)]


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def grid_blocks(work_items: int, per_block: int = 1) -> int:
    """Blocks to launch for ``work_items`` items of ``per_block`` each: at least one (a 0-block grid is an
    invalid launch; the kernels' grid-stride loops find no work then), at most ``MAX_GRID_BLOCKS`` (the
    grid-stride loops cover the rest)."""
    return min(max(ceil_div(work_items, per_block), 1), MAX_GRID_BLOCKS)


def int32_limit_reason(sizes: dict[str, int], kernels: str) -> str | None:
    """Kernels take sizes as C ``int`` (offsets into arrays are 64-bit). ``sizes`` names the largest values a
    kernel family forms in ``int``; returns why one does not fit, or None. ``kernels`` names the family in
    the message (``"conv2d"``, ``"pooling"``)."""
    for name, v in sizes.items():
        if v > INT32_MAX:
            return f"{name} = {v} exceeds 2^31-1, the largest size the CUDA {kernels} kernels take"
    return None


def conv_int32_limit_reason(geom, extra_h: int = 0, extra_w: int = 0) -> str | None:
    """The 32-bit rule of the conv kernels. ``extra_h`` / ``extra_w``: how far past the padded extent a
    kernel may form input coordinates (e.g. a tile's halo past the last output)."""
    return int32_limit_reason(
        {"N": geom.N, "C": geom.C, "K": geom.K, "R": geom.R, "S": geom.S,
         f"H + pad_top + pad_bottom + {extra_h}": geom.H + geom.pt + geom.pb + extra_h,
         f"W + pad_left + pad_right + {extra_w}": geom.W + geom.pl + geom.pr + extra_w,
         "dilation_h * kernel_h": geom.dh * geom.R, "dilation_w * kernel_w": geom.dw * geom.S,
         "C/groups * kernel_h * kernel_w": geom.Cg * geom.R * geom.S}, "conv2d")


def declines(algo: str, reason: str | None) -> str | None:
    """A size rule's ``reason`` as an algorithm's decline sentence ("<algo> declines this geometry because
    ..."), or None when there is none."""
    return None if reason is None else f"{algo} declines this geometry because {reason}"


def conv_decline_reason(algo: str, geom) -> str | None:
    """``conv_int32_limit_reason`` (no overhang) as ``algo``'s decline sentence, or None."""
    return declines(algo, conv_int32_limit_reason(geom))
