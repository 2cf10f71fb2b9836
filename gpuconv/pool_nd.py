"""1-D and 3-D max / average pooling (``torch.nn.functional.max_pool1d`` / ``max_pool3d`` / ``avg_pool1d`` /
``avg_pool3d``), with the padding forms of every gpuconv pooling op (docs/semantics.md, "Pooling"), and 1-D and
3-D adaptive pooling.

1-D pooling (adaptive included) runs the 2-D ops on planes of one row (``(N, C, L)`` viewed as ``(N, C, 1, L)``, window
``(1, k)``; the index ``h*W + w`` is then ``l``), on both paths; the CUDA kernels' compile-time ``(1, 2)``
and ``(1, 3)`` windows make the row loop disappear. 3-D pooling: on NumPy arrays ``_numpy/pool_nd.py``
(composed from the 2-D passes), on CuPy arrays the 3-D kernels of ``kernels/pool2d.cu`` (the 2-D window code
over each depth tap). Adaptive 3-D pooling runs the N-D adaptive code of both paths (``_numpy/adaptive_pool.py``;
the ``adaptive_*_pool<T, ..., 3>`` kernels, the 2-D ones' family).
"""

from __future__ import annotations

import numbers

import numpy as np

from . import _backend
from ._geometry import _is_int
from ._pool_geometry import adaptive_geometry, adaptive_geometry_nd, pool_geometry_nd

def _check_divisor(fn: str, divisor_override):
    if divisor_override is not None:
        if not isinstance(divisor_override, numbers.Integral) or isinstance(divisor_override, bool):
            raise TypeError(f"{fn}(): divisor_override must be an int or None, got {divisor_override!r}")
        if divisor_override == 0:
            raise ValueError(f"{fn}(): divisor must be not zero (divisor_override=0)")
        return int(divisor_override)
    return None


def _run(fn: str, input, dims: int, args, op2d, op3d, options, with_indices):
    """Validate, build the geometry, run (1-D: the backend's 2-D op ``op2d`` on one-row planes; 3-D:
    ``_numpy.pool_nd.<op3d>``), record, drop the batch dimension again for unbatched input.
    ``with_indices``: None for average pooling (no indices), else whether to return them."""
    backend, a = _backend.coerce_arrays(fn, input=input)
    x = a["input"]
    g = pool_geometry_nd(tuple(x.shape), *args, fn, dims)
    xb = x if x.ndim == dims + 2 else x[None]
    idx = None
    if g.N == 0:
        y, kernel = backend.xp.empty(g.output_shape, dtype=x.dtype), "none (empty output)"
        if with_indices:
            idx = backend.xp.empty(g.output_shape, dtype=np.int64)
    elif dims == 1:
        out = getattr(backend, op2d)(xb[:, :, None, :], g.plane, *options)
        y, idx, kernel = out if with_indices is not None else (out[0], None, out[1])
        y = y[:, :, 0]
        idx = None if idx is None else idx[:, :, 0]
    else:
        if isinstance(backend, _backend.NumpyBackend):
            from ._numpy import pool_nd
            out = _backend._ieee_quiet(getattr(pool_nd, op3d), xb, g, *options)
        else:
            out = getattr(backend, op3d)(xb, g, *options)
        y, idx, kernel = out if with_indices is not None else (out[0], None, out[1])
    _backend.record(fn, backend.name, kernel)
    if x.ndim == dims + 1:
        y = y[0]
        idx = None if idx is None else idx[0]
    return (y, idx) if with_indices else y


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """1-D max pooling of ``(N, C, L)`` (or ``(C, L)``), as ``torch.nn.functional.max_pool1d``; the rules of
    :func:`gpuconv.max_pool2d` (NaN wins, first maximum, -inf padding). Indices: ``l``."""
    return _run("max_pool1d", input, 1, (kernel_size, stride, padding, dilation, ceil_mode), "max_pool2d",
                None, (bool(return_indices),), bool(return_indices))


def avg_pool1d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """1-D average pooling, as ``torch.nn.functional.avg_pool1d`` (which has no ``divisor_override``)."""
    return _run("avg_pool1d", input, 1, (kernel_size, stride, padding, 1, ceil_mode), "avg_pool2d", None,
                (bool(count_include_pad), None), None)


def max_pool3d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """3-D max pooling of ``(N, C, D, H, W)`` (or ``(C, D, H, W)``), as ``torch.nn.functional.max_pool3d``;
    indices ``d*H*W + h*W + w``."""
    return _run("max_pool3d", input, 3, (kernel_size, stride, padding, dilation, ceil_mode), None,
                "max_pool3d", (bool(return_indices),), bool(return_indices))


def avg_pool3d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """3-D average pooling, as ``torch.nn.functional.avg_pool3d``; divisor as :func:`gpuconv.avg_pool2d`'s,
    per axis."""
    dov = _check_divisor("avg_pool3d", divisor_override)
    return _run("avg_pool3d", input, 3, (kernel_size, stride, padding, 1, ceil_mode), None, "avg_pool3d",
                (bool(count_include_pad), dov), None)


def _adaptive1d(fn: str, input, output_size, op2d: str, with_indices):
    """1-D adaptive pooling as the 2-D op on one-row planes: window ``i`` of ``O`` over ``L`` is
    ``[floor(i*L/O), ceil((i+1)*L/O))``."""
    backend, a = _backend.coerce_arrays(fn, input=input)
    x = a["input"]
    if x.ndim not in (2, 3) or min(x.shape[1:] if x.ndim == 3 else x.shape) <= 0:
        raise ValueError(f"{fn}: Expected 2D or 3D input with positive non-batch sizes, but got input of size: "
                         f"{list(x.shape)}")
    if isinstance(output_size, (tuple, list)) and len(output_size) == 1:
        output_size = output_size[0]
    if not _is_int(output_size):
        raise TypeError(f"{fn}: output_size must be an int or a 1-tuple of ints, got {output_size!r}")
    xb = x if x.ndim == 3 else x[None]
    g = adaptive_geometry((xb.shape[0], xb.shape[1], 1, xb.shape[2]), (1, output_size), fn)
    idx = None
    if g.N == 0:
        y, kernel = backend.xp.empty((0, g.C, g.OW), dtype=x.dtype), "none (empty output)"
        idx = backend.xp.empty(y.shape, dtype=np.int64) if with_indices else None
    else:
        out = getattr(backend, op2d)(xb[:, :, None, :], g, *(() if with_indices is None else (with_indices,)))
        y, idx, kernel = out if with_indices is not None else (out[0], None, out[1])
        y, idx = y[:, :, 0], (None if idx is None else idx[:, :, 0])
    _backend.record(fn, backend.name, kernel)
    if x.ndim == 2:
        y, idx = y[0], (None if idx is None else idx[0])
    return (y, idx) if with_indices else y


def adaptive_avg_pool1d(input, output_size):
    """1-D adaptive average pooling, as ``torch.nn.functional.adaptive_avg_pool1d``."""
    return _adaptive1d("adaptive_avg_pool1d", input, output_size, "adaptive_avg_pool2d", None)


def adaptive_max_pool1d(input, output_size, return_indices=False):
    """1-D adaptive max pooling, as ``torch.nn.functional.adaptive_max_pool1d`` (indices ``l``)."""
    return _adaptive1d("adaptive_max_pool1d", input, output_size, "adaptive_max_pool2d", bool(return_indices))


def _adaptive3d(fn: str, input, output_size, with_indices):
    """3-D adaptive pooling: validate, run the backend's ``fn`` on ``(N, C, D, H, W)`` unless the output is
    empty, record, drop the batch dimension again for unbatched input. ``with_indices``: None for average."""
    backend, a = _backend.coerce_arrays(fn, input=input)
    x = a["input"]
    g = adaptive_geometry_nd(tuple(x.shape), output_size, fn, 3)
    xb = x if x.ndim == 5 else x[None]
    idx = None
    if g.N == 0:
        y, kernel = backend.xp.empty(g.output_shape, dtype=x.dtype), "none (empty output)"
        idx = backend.xp.empty(g.output_shape, dtype=np.int64) if with_indices else None
    else:
        out = getattr(backend, fn)(xb, g, *(() if with_indices is None else (with_indices,)))
        y, idx, kernel = out if with_indices is not None else (out[0], None, out[1])
    _backend.record(fn, backend.name, kernel)
    if x.ndim == 4:
        y, idx = y[0], (None if idx is None else idx[0])
    return (y, idx) if with_indices else y


def adaptive_avg_pool3d(input, output_size):
    """3-D adaptive average pooling of ``(N, C, D, H, W)`` (or ``(C, D, H, W)``), as
    ``torch.nn.functional.adaptive_avg_pool3d``: output ``(i, j, k)`` averages the window ``[floor(i*D/OD),
    ceil((i+1)*D/OD))`` x (likewise rows and columns). ``output_size``: an int, or a triple whose entries are
    ints or None (keep that input size); sizes must be positive (as :func:`gpuconv.adaptive_avg_pool2d`).
    float16 sums in float32."""
    return _adaptive3d("adaptive_avg_pool3d", input, output_size, None)


def adaptive_max_pool3d(input, output_size, return_indices=False):
    """3-D adaptive max pooling over :func:`adaptive_avg_pool3d`'s windows, as
    ``torch.nn.functional.adaptive_max_pool3d``, with :func:`gpuconv.max_pool2d`'s NaN and tie rules in
    (depth, row, column) order; indices (int64) ``d*H*W + h*W + w`` within each (n, c) volume. Returns ``y`` or
    ``(y, indices)``."""
    return _adaptive3d("adaptive_max_pool3d", input, output_size, bool(return_indices))
