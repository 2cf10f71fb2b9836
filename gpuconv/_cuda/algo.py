"""What every conv2d CUDA algorithm provides, and the pieces their launch code shares.

An algorithm is a :class:`ConvAlgo`: its kernel source file, every template instantiation its launch
code can request (compiled together by the runtime and by the NVRTC compile check), a rule that says
when it declines a geometry (with the reason, raised as ``ValueError`` when the user asked for it by
name; ``algo='auto'`` only considers algorithms that accept), and a launch function.
``gpuconv/_cuda/conv.py`` holds the registry (``ALGORITHMS``) and the one decision of which runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .._geometry import ConvGeometry

# C++ storage type and accumulation-type size (bytes) per NumPy dtype (acc_type in kernels/common.cuh).
CTYPE = {np.dtype(np.float16): "gpuconv::half", np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
ACC_BYTES = {np.dtype(np.float16): 4, np.dtype(np.float32): 4, np.dtype(np.float64): 8}

# Kernels loop grid-stride in 64-bit, so grids can be capped; 2^20 blocks are far more than any GPU keeps
# resident at once.
MAX_GRID_BLOCKS = 1 << 20

# A launch gets this much dynamic shared memory without the opt-in attribute.
SHARED_LIMIT_BYTES = 48 * 1024

INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class ConvAlgo:
    """One conv2d CUDA algorithm.

    * ``name``: the ``algo=`` value.
    * ``source``: its file in ``kernels/``.
    * ``instantiations``: every name expression ``launch`` may request.
    * ``decline_reason(geom, dtype)``: None if it handles this call, else a sentence saying why not.
    * ``launch(rt, x, w, b, y, geom)``: runs it on runtime ``rt`` (C-contiguous ``x``, ``w``; ``b`` the
      bias or, without one, any valid array of x's dtype that the kernel must not read; ``y`` a new
      C-contiguous ``(N, K, P, Q)`` array it must fill completely); returns the name expression that ran.
    * ``idea``: one line, for docs and ``gpuconv.backend_info()``.
    * ``tensor_cores``: its float32 products are TF32 (less precise than float32), so ``algo='auto'``
      considers it only when the user allowed tensor cores (``gpuconv.set_tensor_cores``).
    * ``min_compute_capability``: the oldest GPU it runs on (``80`` = 8.0); older devices are declined.
    """

    name: str
    source: str
    instantiations: tuple[str, ...]
    decline_reason: Callable[[ConvGeometry, np.dtype], str | None]
    launch: Callable
    idea: str = ""
    tensor_cores: bool = False
    min_compute_capability: int = 0


def ctype(dtype) -> str:
    return CTYPE[np.dtype(dtype)]


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def geometry_args(geom: ConvGeometry) -> list:
    """The scalar parameters every conv2d kernel takes after its pointers, typed as the C++ ``int``s
    ``N, C, H, W, K, R, S, groups, sh, sw, pt, pl, dh, dw, P, Q, flip, has_bias, act``."""
    i32 = np.int32
    return [i32(geom.N), i32(geom.C), i32(geom.H), i32(geom.W), i32(geom.K), i32(geom.R), i32(geom.S),
            i32(geom.groups), i32(geom.sh), i32(geom.sw), i32(geom.pt), i32(geom.pl), i32(geom.dh),
            i32(geom.dw), i32(geom.P), i32(geom.Q), i32(1 if geom.flip else 0), i32(1 if geom.has_bias else 0),
            i32(geom.activation_code)]


def int32_limit_reason(geom: ConvGeometry, extra_h: int = 0, extra_w: int = 0) -> str | None:
    """Kernels take sizes as C ``int`` (offsets into x / y are 64-bit). Returns why a geometry does not
    fit that, or None. ``extra_h`` / ``extra_w``: how far past the padded extent a kernel may form input
    coordinates (e.g. a tile's halo past the last output)."""
    sizes = {"N": geom.N, "C": geom.C, "K": geom.K, "R": geom.R, "S": geom.S,
             f"H + pad_top + pad_bottom + {extra_h}": geom.H + geom.pt + geom.pb + extra_h,
             f"W + pad_left + pad_right + {extra_w}": geom.W + geom.pl + geom.pr + extra_w,
             "dilation_h * kernel_h": geom.dh * geom.R, "dilation_w * kernel_w": geom.dw * geom.S,
             "C/groups * kernel_h * kernel_w": geom.Cg * geom.R * geom.S}
    for name, v in sizes.items():
        if v > INT32_MAX:
            return f"{name} = {v} exceeds 2^31-1, the largest size the CUDA conv2d kernels take"
    return None
