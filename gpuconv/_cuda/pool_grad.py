"""Launch code for the pooling gradients (``kernels/pool2d_backward.cu``; rules in docs/pooling-gradients.md).

One kernel per op, each one thread per INPUT-gradient element over the flattened ``N*C*H*W`` inputs (1-D grid
of ``pool.POOL_BLOCK``-thread blocks, capped at ``limits.MAX_GRID_BLOCKS`` and covered by the kernels' 64-bit
grid-stride loop). Each thread gathers, in a fixed order, the contributions of the outputs whose windows
cover its element, so the gradient is deterministic (bitwise, whatever the thread order) and needs no
atomics and no zeroed output:

* ``max_pool2d_backward<T, KH, KW>`` / ``avg_pool2d_backward<T, KH, KW>``: ``KH, KW`` as the forward's
  (``pool.FIXED_WINDOWS`` at compile time, else ``0, 0``);
* ``max_pool3d_backward<T>`` / ``avg_pool3d_backward<T>`` (``geom``: a ``PoolGeometryND``, 5-D arrays);
* ``adaptive_max_pool_backward<T, DIMS>`` / ``adaptive_avg_pool_backward<T, DIMS>``: the 2-D and 3-D adaptive
  ops (``geom``: ``AdaptiveGeometry`` / ``AdaptiveGeometryND``), one kernel family as the forward's.

Each op is one ``Algorithm`` named ``direct`` under ``(op, "backward")`` in the operation table (``ops.py``),
launched as ``(rt, grad_output, indices or None, geom, *options) -> (grad_input, kernel id)``: ``geom`` is
the FORWARD call's geometry (``PoolGeometry`` / ``AdaptiveGeometry`` / ...ND), ``grad_output`` of its output
shape, ``indices`` int64 of that shape for the max ops (None for the others); options: avg's
``(count_include_pad, divisor_override)``. Validation of shapes and dtypes is the caller's
(``gpuconv/_grad_pool.py``); this module checks the 32-bit rule and makes the inputs C-contiguous.
"""

from __future__ import annotations

import numpy as np

from .._pool_geometry import PoolGeometry, PoolGeometryND
from . import limits
from .algo import Algorithm, accepts_everything
from .pool import FIXED_WINDOWS, _ctype, adaptive_args, int32_args, launch_1d, nd_args, prepare, window_template

SOURCE = "pool2d_backward.cu"
BACKWARD = "backward"

_WINDOWS = ((0, 0),) + FIXED_WINDOWS


def max_name(dtype, kh: int = 0, kw: int = 0) -> str:
    return f"gpuconv::max_pool2d_backward<{_ctype(dtype)}, {kh}, {kw}>"


def avg_name(dtype, kh: int = 0, kw: int = 0) -> str:
    return f"gpuconv::avg_pool2d_backward<{_ctype(dtype)}, {kh}, {kw}>"


def adaptive_max_name(dtype, dims: int = 2) -> str:
    return f"gpuconv::adaptive_max_pool_backward<{_ctype(dtype)}, {dims}>"


def adaptive_avg_name(dtype, dims: int = 2) -> str:
    return f"gpuconv::adaptive_avg_pool_backward<{_ctype(dtype)}, {dims}>"


def max3d_name(dtype) -> str:
    return f"gpuconv::max_pool3d_backward<{_ctype(dtype)}>"


def avg3d_name(dtype) -> str:
    return f"gpuconv::avg_pool3d_backward<{_ctype(dtype)}>"


_DTYPES = tuple(limits.CTYPE)

# What each op's backward launch may request (all in SOURCE).
INSTANTIATIONS = {
    "max_pool2d": tuple(max_name(dt, kh, kw) for dt in _DTYPES for kh, kw in _WINDOWS),
    "avg_pool2d": tuple(avg_name(dt, kh, kw) for dt in _DTYPES for kh, kw in _WINDOWS),
    "adaptive_max_pool2d": tuple(adaptive_max_name(dt) for dt in _DTYPES),
    "adaptive_avg_pool2d": tuple(adaptive_avg_name(dt) for dt in _DTYPES),
    "max_pool3d": tuple(max3d_name(dt) for dt in _DTYPES),
    "avg_pool3d": tuple(avg3d_name(dt) for dt in _DTYPES),
    "adaptive_max_pool3d": tuple(adaptive_max_name(dt, 3) for dt in _DTYPES),
    "adaptive_avg_pool3d": tuple(adaptive_avg_name(dt, 3) for dt in _DTYPES),
}


def _prepare(rt, go, geom, fn: str):
    """``pool.prepare`` for a gradient: ``grad_output`` C-contiguous, the input-shaped gradient allocated."""
    return prepare(rt, go, geom, fn, (geom.N, geom.C, geom.H, geom.W))


def _launch(rt, name: str, geom, args) -> None:
    launch_1d(rt, SOURCE, name, geom.N * geom.C * geom.H * geom.W, args)


def _index_array(rt, idx):
    return rt.xp.ascontiguousarray(idx, dtype=np.int64)


def max_pool2d(rt, go, idx, geom: PoolGeometry):
    """Returns ``(grad_input, kernel_id)``."""
    go, gi, dtype = _prepare(rt, go, geom, "max_pool2d_input")
    name = max_name(dtype, *window_template(geom))
    g = geom
    _launch(rt, name, g, [go, _index_array(rt, idx), gi, np.int64(g.N * g.C)]
            + int32_args(g.H, g.W, g.OH, g.OW, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw))
    return gi, name


def avg_pool2d(rt, go, idx, geom: PoolGeometry, count_include_pad: bool, divisor_override):
    """Returns ``(grad_input, kernel_id)``; ``idx`` is unused (None). ``geom`` has dilation 1."""
    if geom.dh != 1 or geom.dw != 1:
        raise ValueError("avg_pool2d has no dilation; the geometry must have dilation (1, 1)")
    go, gi, dtype = _prepare(rt, go, geom, "avg_pool2d_input")
    name = avg_name(dtype, *window_template(geom))
    g = geom
    _launch(rt, name, g, [go, gi, np.int64(g.N * g.C)]
            + int32_args(g.H, g.W, g.OH, g.OW, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.pb, g.pr,
                         1 if count_include_pad else 0)
            + [np.int64(divisor_override or 0)])
    return gi, name


def adaptive_max_pool(rt, go, idx, geom):
    """2-D or 3-D. Returns ``(grad_input, kernel_id)``."""
    go, gi, dtype = prepare(rt, go, geom, f"adaptive_max_pool{geom.dims}d_input", geom.input_shape)
    name = adaptive_max_name(dtype, geom.dims)
    launch_1d(rt, SOURCE, name, int(np.prod(geom.input_shape)), [go, _index_array(rt, idx), gi] + adaptive_args(geom))
    return gi, name


def adaptive_avg_pool(rt, go, idx, geom):
    """2-D or 3-D. Returns ``(grad_input, kernel_id)``; ``idx`` is unused (None)."""
    go, gi, dtype = prepare(rt, go, geom, f"adaptive_avg_pool{geom.dims}d_input", geom.input_shape)
    name = adaptive_avg_name(dtype, geom.dims)
    launch_1d(rt, SOURCE, name, int(np.prod(geom.input_shape)), [go, gi] + adaptive_args(geom))
    return gi, name


adaptive_avg_pool2d = adaptive_avg_pool3d = adaptive_avg_pool
adaptive_max_pool2d = adaptive_max_pool3d = adaptive_max_pool


def max_pool3d(rt, go, idx, geom: PoolGeometryND):
    """Returns ``(grad_input, kernel_id)``."""
    go, gi, dtype = prepare(rt, go, geom, "max_pool3d_input", geom.input_shape)
    name = max3d_name(dtype)
    launch_1d(rt, SOURCE, name, int(np.prod(geom.input_shape)),
              [go, _index_array(rt, idx), gi] + nd_args(geom, False))
    return gi, name


def avg_pool3d(rt, go, idx, geom: PoolGeometryND, count_include_pad: bool, divisor_override):
    """Returns ``(grad_input, kernel_id)``; ``idx`` is unused (None)."""
    go, gi, dtype = prepare(rt, go, geom, "avg_pool3d_input", geom.input_shape)
    name = avg3d_name(dtype)
    launch_1d(rt, SOURCE, name, int(np.prod(geom.input_shape)),
              [go, gi] + nd_args(geom, True) + int32_args(1 if count_include_pad else 0)
              + [np.int64(divisor_override or 0)])
    return gi, name


def _algorithm(op: str, launch) -> Algorithm:
    return Algorithm("direct", op, BACKWARD, SOURCE, INSTANTIATIONS[op], accepts_everything, launch,
                     "one thread per input element gathers the outputs whose windows cover it")


ALGORITHMS = tuple(_algorithm(op, launch) for op, launch in (
    ("max_pool2d", max_pool2d), ("avg_pool2d", avg_pool2d),
    ("adaptive_max_pool2d", adaptive_max_pool2d), ("adaptive_avg_pool2d", adaptive_avg_pool2d),
    ("max_pool3d", max_pool3d), ("avg_pool3d", avg_pool3d),
    ("adaptive_max_pool3d", adaptive_max_pool3d), ("adaptive_avg_pool3d", adaptive_avg_pool3d)))
