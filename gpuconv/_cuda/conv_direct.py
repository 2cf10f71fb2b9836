"""``direct``: one thread per output element, straight from global memory, no shared memory
(``kernels/conv2d_direct.cu``). The baseline: it covers every geometry ``conv_geometry`` accepts (stride,
asymmetric padding, dilation, groups / depthwise, flip, bias, fused activation) and declines only what does
not fit the kernels' 32-bit sizes.
"""

from __future__ import annotations

import numpy as np

from .._geometry import ConvGeometry
from . import limits
from .abi import conv_kernel_args
from .algo import FORWARD, Algorithm
from .limits import CTYPE

SOURCE = "conv2d_direct.cu"
BLOCK = 256  # threads per block (1-D)


def direct_name(dtype) -> str:
    return f"gpuconv::conv2d_direct<{CTYPE[np.dtype(dtype)]}>"


INSTANTIATIONS = tuple(direct_name(dt) for dt in CTYPE)


def direct_decline_reason(geom: ConvGeometry, dtype) -> str | None:
    return limits.conv_decline_reason("direct", geom)


def launch_direct(rt, x, w, b, y, geom: ConvGeometry) -> str:
    name = direct_name(x.dtype)
    grid = limits.grid_blocks(geom.N * geom.K * geom.P * geom.Q, BLOCK)
    rt.function(SOURCE, name)((grid, 1, 1), (BLOCK, 1, 1), [x, w, b, y] + conv_kernel_args(geom))
    return name


ALGO = Algorithm("direct", "conv2d", FORWARD, SOURCE, INSTANTIATIONS, direct_decline_reason, launch_direct,
                 "one thread per output element, straight from global memory")
