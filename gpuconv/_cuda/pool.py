"""Launch code for the pooling CUDA kernels (``kernels/pool2d.cu``).

One kernel per op, each one thread per output element over the flattened ``N*C*OH*OW`` outputs (1-D grid
of ``POOL_BLOCK``-thread blocks, capped at ``limits.MAX_GRID_BLOCKS`` and covered by the kernels' 64-bit
grid-stride loop):

* ``max_pool2d<T, WITH_INDEX, KH, KW>`` / ``avg_pool2d<T, KH, KW>``: ``KH, KW`` is the window size when
  it is one of ``FIXED_WINDOWS`` (loops unrolled at compile time), else ``0, 0`` (run-time size);
* ``adaptive_max_pool<T, WITH_INDEX, DIMS>`` / ``adaptive_avg_pool<T, DIMS>``: one kernel family for the 2-D and
  3-D adaptive ops (``DIMS`` 2 or 3; the 2-D instantiation folds the depth axis away);
* ``max_pool3d<T, WITH_INDEX>`` / ``avg_pool3d<T>``.

``WITH_INDEX`` is a compile-time bool, so ``return_indices=False`` allocates no index array (the kernel
gets a 1-element placeholder it never touches). Which instantiation ran is returned as its name
expression (e.g. ``"gpuconv::max_pool2d<float, false, 3, 3>"``).

Each op is one ``Algorithm`` (``ALGORITHMS``, named ``direct``) in the operation table (``ops.py``); the
block size and the fixed windows are reasoned (docs/architecture.md, "Tuning status").
"""

from __future__ import annotations

import numpy as np

from .._pool_geometry import PoolGeometry, PoolGeometryND
from . import limits
from .algo import FORWARD, Algorithm, accepts_everything
from .limits import CTYPE as _CTYPE

SOURCE = "pool2d.cu"

POOL_BLOCK = 256  # threads per block (1-D)
# Window sizes with a compile-time instantiation (2x2: the classic stride-2 downsampling; 3x3: ResNet's
# stem pooling and 3x3 average pools; 1x2 and 1x3: 1-D pooling, which runs on one-row planes, so that its
# row loop is a compile-time single pass). Every other size runs the generic (0, 0) kernel.
FIXED_WINDOWS = ((2, 2), (3, 3), (1, 2), (1, 3))

_BOOLS = (False, True)


def _ctype(dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype not in _CTYPE:
        raise TypeError(f"pooling CUDA kernels support float16, float32 and float64, got {dtype}")
    return _CTYPE[dtype]


def _b(v: bool) -> str:
    return "true" if v else "false"


def max_name(dtype, with_index: bool, kh: int = 0, kw: int = 0) -> str:
    return f"gpuconv::max_pool2d<{_ctype(dtype)}, {_b(with_index)}, {kh}, {kw}>"


def avg_name(dtype, kh: int = 0, kw: int = 0) -> str:
    return f"gpuconv::avg_pool2d<{_ctype(dtype)}, {kh}, {kw}>"


def adaptive_max_name(dtype, with_index: bool, dims: int = 2) -> str:
    return f"gpuconv::adaptive_max_pool<{_ctype(dtype)}, {_b(with_index)}, {dims}>"


def adaptive_avg_name(dtype, dims: int = 2) -> str:
    return f"gpuconv::adaptive_avg_pool<{_ctype(dtype)}, {dims}>"


def max3d_name(dtype, with_index: bool) -> str:
    return f"gpuconv::max_pool3d<{_ctype(dtype)}, {_b(with_index)}>"


def avg3d_name(dtype) -> str:
    return f"gpuconv::avg_pool3d<{_ctype(dtype)}>"


_WINDOWS = ((0, 0),) + FIXED_WINDOWS

# What each op's launch may request (all in SOURCE).
INSTANTIATIONS = {
    "max_pool2d": tuple(max_name(dt, wi, kh, kw) for dt in _CTYPE for wi in _BOOLS for kh, kw in _WINDOWS),
    "avg_pool2d": tuple(avg_name(dt, kh, kw) for dt in _CTYPE for kh, kw in _WINDOWS),
    "adaptive_max_pool2d": tuple(adaptive_max_name(dt, wi) for dt in _CTYPE for wi in _BOOLS),
    "adaptive_avg_pool2d": tuple(adaptive_avg_name(dt) for dt in _CTYPE),
    "max_pool3d": tuple(max3d_name(dt, wi) for dt in _CTYPE for wi in _BOOLS),
    "avg_pool3d": tuple(avg3d_name(dt) for dt in _CTYPE),
    "adaptive_max_pool3d": tuple(adaptive_max_name(dt, wi, 3) for dt in _CTYPE for wi in _BOOLS),
    "adaptive_avg_pool3d": tuple(adaptive_avg_name(dt, 3) for dt in _CTYPE),
}


# --------------------------------------------------------------------------------------------
# rules (plain functions of the geometry)
# --------------------------------------------------------------------------------------------

def window_template(geom: PoolGeometry) -> tuple[int, int]:
    """(KH, KW) template arguments: the window size if it has a compile-time instantiation, else (0, 0)."""
    return (geom.kh, geom.kw) if (geom.kh, geom.kw) in FIXED_WINDOWS else (0, 0)


def pool_int32_limit_reason(geom) -> str | None:
    """The kernels take sizes as C ``int`` and form window coordinates in ``int`` (plane offsets, flat
    indices and divisors are 64-bit). The largest coordinate a pooling kernel forms is below
    ``H + p_lo + p_hi + s + d*k`` (window start ``oh*s - p_lo < H + p_hi``, plus the window extent
    ``(k-1)*d + 1``); adaptive kernels form at most ``H`` and ``OH``. Returns why a geometry does not fit,
    or None."""
    if isinstance(geom, PoolGeometry):
        sizes = {"H + padding_top + padding_bottom + stride_h + dilation_h*kernel_h":
                 geom.H + geom.ph + geom.pb + geom.sh + geom.dh * geom.kh,
                 "W + padding_left + padding_right + stride_w + dilation_w*kernel_w":
                 geom.W + geom.pw + geom.pr + geom.sw + geom.dw * geom.kw,
                 "OH": geom.OH, "OW": geom.OW}
    elif isinstance(geom, PoolGeometryND):  # per axis, as in 2-D (depth, rows, columns)
        sizes = {}
        for name, n, k, s, (lo, hi), d, o in zip("DHW"[3 - geom.dims:], geom.spatial, geom.kernel, geom.stride,
                                                 geom.padding, geom.dilation, geom.out):
            sizes[f"{name} + padding + stride + dilation*kernel ({name} axis)"] = n + lo + hi + s + d * k
            sizes[f"O{name}"] = o
    else:  # adaptive, 2-D or 3-D: the sizes themselves
        sizes = {}
        for name, n, o in zip("DHW"[3 - geom.dims:], geom.spatial, geom.out):
            sizes[name], sizes[f"O{name}"] = n, o
    return limits.int32_limit_reason(sizes, "pooling")


def nd_args(g: PoolGeometryND, avg: bool) -> list:
    """The 3-D kernels' scalar arguments: planes, then per axis (depth, rows, columns) the sizes, outputs,
    kernel, stride, leading padding, and dilation (max) or trailing padding (avg)."""
    last = [hi for _, hi in g.padding] if avg else list(g.dilation)
    return [np.int64(g.N * g.C)] + int32_args(*g.spatial, *g.out, *g.kernel, *g.stride,
                                              *(lo for lo, _ in g.padding), *last)


# --------------------------------------------------------------------------------------------
# launch
# --------------------------------------------------------------------------------------------

def prepare(rt, a, geom, fn: str, out_shape):
    """Check ``a``'s dtype and ``geom``'s 32-bit rule (a ``ValueError`` naming ``fn``), make ``a`` C-contiguous
    and allocate the ``out_shape`` result (the kernels write every element). Shared with the backward
    launch code (``pool_grad.py``). Returns ``(a, result, dtype)``."""
    xp = rt.xp
    dtype = np.dtype(a.dtype)
    _ctype(dtype)
    reason = pool_int32_limit_reason(geom)
    if reason is not None:
        raise ValueError(f"{fn}: {reason}")
    return xp.ascontiguousarray(a), xp.empty(out_shape, dtype=dtype), dtype


def _indices(rt, geom, return_indices: bool):
    """The index output when asked for; otherwise a 1-element placeholder (the WITH_INDEX=false
    kernels never touch it, but a pointer argument needs an array of the parameter's type)."""
    if return_indices:
        return rt.xp.empty(geom.output_shape, dtype=np.int64)
    return rt.xp.empty((1,), dtype=np.int64)


def launch_1d(rt, source: str, name: str, work_items: int, args) -> None:
    """One thread per work item: 1-D blocks of ``POOL_BLOCK`` threads, the grid capped (the kernels loop
    grid-stride)."""
    grid = limits.grid_blocks(work_items, POOL_BLOCK)
    rt.function(source, name)((grid, 1, 1), (POOL_BLOCK, 1, 1), args)


def int32_args(*values) -> list:
    """Scalars for ``int`` kernel parameters (CuPy would pass a Python int as an 8-byte long long)."""
    return [np.int32(v) for v in values]


def _launch(rt, name: str, geom, args) -> None:
    launch_1d(rt, SOURCE, name, geom.N * geom.C * geom.OH * geom.OW, args)


def max_pool2d(rt, x, geom: PoolGeometry, return_indices: bool):
    """Returns ``(y, indices or None, kernel_id)``."""
    x, y, dtype = prepare(rt, x, geom, "max_pool2d", geom.output_shape)
    idx = _indices(rt, geom, return_indices)
    kh, kw = window_template(geom)
    name = max_name(dtype, bool(return_indices), kh, kw)
    g = geom
    _launch(rt, name, g, [x, y, idx, np.int64(g.N * g.C)]
            + int32_args(g.H, g.W, g.OH, g.OW, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw))
    return y, (idx if return_indices else None), name


def avg_pool2d(rt, x, geom: PoolGeometry, count_include_pad: bool, divisor_override):
    """Returns ``(y, kernel_id)``. ``geom`` must have dilation 1 (``avg_pool2d`` has none)."""
    if geom.dh != 1 or geom.dw != 1:
        raise ValueError("avg_pool2d has no dilation; the geometry must have dilation (1, 1)")
    x, y, dtype = prepare(rt, x, geom, "avg_pool2d", geom.output_shape)
    kh, kw = window_template(geom)
    name = avg_name(dtype, kh, kw)
    g = geom
    _launch(rt, name, g, [x, y, np.int64(g.N * g.C)]
            + int32_args(g.H, g.W, g.OH, g.OW, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.pb, g.pr,
                         1 if count_include_pad else 0)
            + [np.int64(divisor_override or 0)])
    return y, name


def adaptive_args(g) -> list:
    """The adaptive kernels' scalar arguments: planes, then ``D, H, W, OD, OH, OW`` (2-D: ``D = OD = 1``, which
    the ``DIMS = 2`` kernels do not read)."""
    pad = (1,) * (3 - g.dims)
    return [np.int64(g.N * g.C)] + int32_args(*pad, *g.spatial, *pad, *g.out)


def adaptive_avg_pool(rt, x, geom):
    """2-D or 3-D (``geom``: ``AdaptiveGeometry`` or ``AdaptiveGeometryND``). Returns ``(y, kernel_id)``."""
    x, y, dtype = prepare(rt, x, geom, f"adaptive_avg_pool{geom.dims}d", geom.output_shape)
    name = adaptive_avg_name(dtype, geom.dims)
    launch_1d(rt, SOURCE, name, int(np.prod(geom.output_shape)), [x, y] + adaptive_args(geom))
    return y, name


def adaptive_max_pool(rt, x, geom, return_indices: bool):
    """2-D or 3-D. Returns ``(y, indices or None, kernel_id)``."""
    x, y, dtype = prepare(rt, x, geom, f"adaptive_max_pool{geom.dims}d", geom.output_shape)
    idx = _indices(rt, geom, return_indices)
    name = adaptive_max_name(dtype, bool(return_indices), geom.dims)
    launch_1d(rt, SOURCE, name, int(np.prod(geom.output_shape)), [x, y, idx] + adaptive_args(geom))
    return y, (idx if return_indices else None), name


adaptive_avg_pool2d = adaptive_avg_pool3d = adaptive_avg_pool
adaptive_max_pool2d = adaptive_max_pool3d = adaptive_max_pool


def max_pool3d(rt, x, geom: PoolGeometryND, return_indices: bool):
    """Returns ``(y, indices or None, kernel_id)``."""
    x, y, dtype = prepare(rt, x, geom, "max_pool3d", geom.output_shape)
    idx = _indices(rt, geom, return_indices)
    name = max3d_name(dtype, bool(return_indices))
    launch_1d(rt, SOURCE, name, int(np.prod(geom.output_shape)), [x, y, idx] + nd_args(geom, False))
    return y, (idx if return_indices else None), name


def avg_pool3d(rt, x, geom: PoolGeometryND, count_include_pad: bool, divisor_override):
    """Returns ``(y, kernel_id)``."""
    x, y, dtype = prepare(rt, x, geom, "avg_pool3d", geom.output_shape)
    name = avg3d_name(dtype)
    launch_1d(rt, SOURCE, name, int(np.prod(geom.output_shape)),
              [x, y] + nd_args(geom, True) + int32_args(1 if count_include_pad else 0)
              + [np.int64(divisor_override or 0)])
    return y, name


def _pool_algorithm(op: str, launch) -> Algorithm:
    """The one kernel of a pooling op, as its table entry (its 32-bit limit is checked at launch, where
    the message names the op)."""
    return Algorithm("direct", op, FORWARD, SOURCE, INSTANTIATIONS[op], accepts_everything, launch,
                     "one thread per output element over its window")


# The op's launch signature: (rt, x, geom, *options) -> (y, [indices,] kernel_id); see each function.
ALGORITHMS = tuple(_pool_algorithm(op, launch) for op, launch in (
    ("max_pool2d", max_pool2d), ("avg_pool2d", avg_pool2d),
    ("adaptive_max_pool2d", adaptive_max_pool2d), ("adaptive_avg_pool2d", adaptive_avg_pool2d),
    ("max_pool3d", max_pool3d), ("avg_pool3d", avg_pool3d),
    ("adaptive_max_pool3d", adaptive_max_pool3d), ("adaptive_avg_pool3d", adaptive_avg_pool3d)))
