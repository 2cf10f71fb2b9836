"""Gradients of the pooling ops with respect to their input (``gpuconv.grad.*_pool2d_input``): validation in
PyTorch's style, then the backend's ``pool_backward`` (NumPy: ``_numpy/pool_grad.py``; CUDA:
``_cuda/pool_grad.py`` and ``kernels/pool2d_backward.cu``). The rules: docs/pooling-gradients.md.

Every function takes the forward call's ``input_size`` (``(N, C, H, W)``, or ``(C, H, W)`` with an unbatched
``grad_output``; the 1-D and 3-D ops one spatial size fewer / more) and its arguments; ``grad_output`` must
have exactly the forward's output shape; the max ops take the forward's ``indices`` (int64, ``h*W + w`` within each plane, the shape of ``grad_output``).
The result has ``input_size`` and ``grad_output``'s dtype, C-contiguous, and is the same bitwise on every run.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import _backend
from ._pool_geometry import adaptive_geometry, pool_geometry


def _input_size(fn: str, input_size) -> tuple[int, ...]:
    """``input_size`` as a tuple of 3 or 4 non-negative ints (a tuple, list or ``torch.Size``)."""
    ok = isinstance(input_size, (tuple, list)) and all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in input_size)
    if not ok:
        raise TypeError(f"{fn}(): input_size must be a tuple of ints (N, C, H, W) or (C, H, W), got "
                        f"{input_size!r}")
    size = tuple(int(s) for s in input_size)
    if len(size) not in (3, 4) or min(size) < 0:
        raise ValueError(f"{fn}(): input_size must be (N, C, H, W) or (C, H, W) with non-negative sizes, got "
                         f"{list(size)}")
    return size


def _indices(fn: str, indices, go, backend):
    """Check the forward's indices: an array of the backend's kind (NumPy / CuPy, as grad_output), int64,
    of grad_output's shape."""
    if not isinstance(indices, backend.xp.ndarray):
        kind = "a NumPy" if backend.xp is np else "a CuPy"
        raise TypeError(f"{fn}(): indices must be {kind} array like grad_output, got "
                        f"{_backend._type_name(indices)}")
    if np.dtype(indices.dtype) != np.int64:
        raise TypeError(f"{fn}(): indices must be int64 (as the forward returns them), got indices of dtype "
                        f"{np.dtype(indices.dtype)} and shape {list(indices.shape)}")
    if tuple(indices.shape) != tuple(go.shape):
        raise ValueError(f"{fn}(): indices must have the shape of grad_output, but indices has shape "
                         f"{list(indices.shape)} and grad_output {list(go.shape)}")
    return indices


def _run(fn: str, op: str, input_size, grad_output, indices, geometry, *options):
    """Validate, run ``backend.pool_backward(op, go4, idx4, g, *options)`` unless the gradient is empty,
    record what ran, and drop the batch dimension again for an unbatched call."""
    size = _input_size(fn, input_size)
    backend, a = _backend.coerce_arrays(fn, grad_output=grad_output)
    go = a["grad_output"]
    g = geometry(size)
    expected = g.output_shape if len(size) == 4 else g.output_shape[1:]
    if tuple(go.shape) != tuple(expected):
        raise ValueError(f"{fn}(): grad_output has shape {list(go.shape)}, but the forward output for an input "
                         f"of size {list(size)} with these arguments has shape {list(expected)}")
    idx = None if indices is None else _indices(fn, indices, go, backend)
    unbatched = len(size) == 3
    if unbatched:
        go = go[None]
        idx = None if idx is None else idx[None]
    if g.N == 0:
        gi, kernel = backend.xp.empty((g.N, g.C, g.H, g.W), dtype=go.dtype), "none (empty output)"
    else:
        gi, kernel = backend.pool_backward(op, go, idx, g, *options)
    _backend.record(op, backend.name, kernel, direction="backward")
    return gi[0] if unbatched else gi


def _need_indices(fn: str, indices) -> None:
    if indices is None:
        raise TypeError(f"{fn}(): argument 'indices' must be the int64 array the forward returned "
                        "(return_indices=True), got None")


def max_pool2d_input(input_size, grad_output, indices, kernel_size, stride=None, padding=0, dilation=1,
                     ceil_mode=False):
    """Gradient of ``max_pool2d`` with respect to its input: each output's gradient is added at its
    recorded index ``indices`` (``h*W + w`` within its plane); overlapping windows add. An index that is not
    a cell of its output's window (outside ``[0, H*W)`` included) contributes nothing; every index the
    forward records is one, except the placeholder of a dilated window holding no input cell, whose
    output is -inf whatever the input (PyTorch adds there; docs/pooling-gradients.md)."""
    fn = "max_pool2d_input"
    _need_indices(fn, indices)
    return _run(fn, "max_pool2d", input_size, grad_output, indices,
                lambda s: pool_geometry(s, kernel_size, stride, padding, dilation, ceil_mode, fn))


def avg_pool2d_input(input_size, grad_output, kernel_size, stride=None, padding=0, ceil_mode=False,
                     count_include_pad=True, divisor_override=None):
    """Gradient of ``avg_pool2d`` with respect to its input: each output's gradient divided by the forward's
    divisor of its window (padding, ceil_mode overhang, ``count_include_pad``, ``divisor_override``) is
    added to every in-bounds cell of the window."""
    fn = "avg_pool2d_input"
    if divisor_override is not None:
        if not isinstance(divisor_override, numbers.Integral) or isinstance(divisor_override, bool):
            raise TypeError(f"{fn}(): divisor_override must be an int or None, got {divisor_override!r}")
        if divisor_override == 0:
            raise ValueError(f"{fn}(): divisor must be not zero (divisor_override=0)")
        divisor_override = int(divisor_override)
    return _run(fn, "avg_pool2d", input_size, grad_output, None,
                lambda s: pool_geometry(s, kernel_size, stride, padding, 1, ceil_mode, fn),
                bool(count_include_pad), divisor_override)


def adaptive_avg_pool2d_input(input_size, grad_output):
    """Gradient of ``adaptive_avg_pool2d``: output ``(i, j)``'s gradient divided by its window's cell count
    is added to every cell of its window ``[floor(i*H/OH), ceil((i+1)*H/OH))`` x (likewise columns). The
    output size is grad_output's."""
    fn = "adaptive_avg_pool2d_input"
    return _run(fn, "adaptive_avg_pool2d", input_size, grad_output, None,
                lambda s: adaptive_geometry(s, _output_size(grad_output), fn))


def adaptive_max_pool2d_input(input_size, grad_output, indices):
    """Gradient of ``adaptive_max_pool2d``: as :func:`max_pool2d_input` over the adaptive windows (whose
    every forward index is a cell of its window). The output size is grad_output's."""
    fn = "adaptive_max_pool2d_input"
    _need_indices(fn, indices)
    return _run(fn, "adaptive_max_pool2d", input_size, grad_output, indices,
                lambda s: adaptive_geometry(s, _output_size(grad_output), fn))


def _output_size(grad_output) -> tuple[int, int]:
    """The adaptive output size a grad_output asks for: its last two sizes (its rank is checked against
    input_size afterwards, with the shape message)."""
    shape = tuple(getattr(grad_output, "shape", ()))
    return (shape[-2], shape[-1]) if len(shape) >= 2 and min(shape[-2:]) > 0 else (1, 1)


# --------------------------------------------------------------------------------------------
# 1-D and 3-D pooling (1-D: the 2-D gradients on one-row planes)
# --------------------------------------------------------------------------------------------

def _run_nd(fn: str, op2d: str, dims: int, input_size, grad_output, indices, args, *options):
    """As ``_run`` for ``dims``-D pooling: ``input_size`` ``(N, C, *spatial)`` or ``(C, *spatial)``."""
    from ._pool_geometry import pool_geometry_nd
    ok = isinstance(input_size, (tuple, list)) and all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in input_size)
    if not ok or len(input_size) not in (dims + 1, dims + 2) or min(input_size) < 0:
        raise (ValueError if ok else TypeError)(
            f"{fn}(): input_size must be a tuple of {dims + 2} ints (N, C, ...) or {dims + 1} (C, ...) with "
            f"non-negative sizes, got {input_size!r}")
    size = tuple(int(s) for s in input_size)
    backend, a = _backend.coerce_arrays(fn, grad_output=grad_output)
    go = a["grad_output"]
    g = pool_geometry_nd(size, *args, fn, dims)
    expected = g.output_shape if len(size) == dims + 2 else g.output_shape[1:]
    if tuple(go.shape) != tuple(expected):
        raise ValueError(f"{fn}(): grad_output has shape {list(go.shape)}, but the forward output for an input "
                         f"of size {list(size)} with these arguments has shape {list(expected)}")
    idx = None if indices is None else _indices(fn, indices, go, backend)
    if len(size) == dims + 1:
        go, idx = go[None], (None if idx is None else idx[None])
    if g.N == 0:
        gi, kernel = backend.xp.empty(g.input_shape, dtype=go.dtype), "none (empty output)"
    elif dims == 1:
        gi, kernel = backend.pool_backward(op2d, go[:, :, None, :], None if idx is None else idx[:, :, None, :],
                                           g.plane, *options)
        gi = gi[:, :, 0]
    else:
        gi, kernel = backend.pool_backward(op2d.replace("2d", "3d"), go, idx, g, *options)
    _backend.record(fn.replace("_input", ""), backend.name, kernel, direction="backward")
    return gi[0] if len(size) == dims + 1 else gi


def _divisor(fn: str, divisor_override):
    from .pool_nd import _check_divisor
    return _check_divisor(fn, divisor_override)


def max_pool1d_input(input_size, grad_output, indices, kernel_size, stride=None, padding=0, dilation=1,
                     ceil_mode=False):
    """Gradient of ``max_pool1d``: as :func:`max_pool2d_input` (indices ``l``)."""
    _need_indices("max_pool1d_input", indices)
    return _run_nd("max_pool1d_input", "max_pool2d", 1, input_size, grad_output, indices,
                   (kernel_size, stride, padding, dilation, ceil_mode))


def avg_pool1d_input(input_size, grad_output, kernel_size, stride=None, padding=0, ceil_mode=False,
                     count_include_pad=True):
    """Gradient of ``avg_pool1d``: as :func:`avg_pool2d_input`."""
    return _run_nd("avg_pool1d_input", "avg_pool2d", 1, input_size, grad_output, None,
                   (kernel_size, stride, padding, 1, ceil_mode), bool(count_include_pad), None)


def max_pool3d_input(input_size, grad_output, indices, kernel_size, stride=None, padding=0, dilation=1,
                     ceil_mode=False):
    """Gradient of ``max_pool3d`` (indices ``d*H*W + h*W + w``): as :func:`max_pool2d_input`."""
    _need_indices("max_pool3d_input", indices)
    return _run_nd("max_pool3d_input", "max_pool2d", 3, input_size, grad_output, indices,
                   (kernel_size, stride, padding, dilation, ceil_mode))


def avg_pool3d_input(input_size, grad_output, kernel_size, stride=None, padding=0, ceil_mode=False,
                     count_include_pad=True, divisor_override=None):
    """Gradient of ``avg_pool3d``: as :func:`avg_pool2d_input`."""
    dov = _divisor("avg_pool3d_input", divisor_override)
    return _run_nd("avg_pool3d_input", "avg_pool2d", 3, input_size, grad_output, None,
                   (kernel_size, stride, padding, 1, ceil_mode), bool(count_include_pad), dov)


def _adaptive1d_input(fn: str, op: str, input_size, grad_output, indices):
    """1-D adaptive pooling gradients: the 2-D ones on one-row planes; the output size is grad_output's."""
    ok = isinstance(input_size, (tuple, list)) and all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in input_size)
    if not ok or len(input_size) not in (2, 3) or min(input_size) < 0:
        raise (ValueError if ok else TypeError)(
            f"{fn}(): input_size must be a tuple of 3 ints (N, C, L) or 2 (C, L) with non-negative sizes, got "
            f"{input_size!r}")
    size = tuple(int(s) for s in input_size)
    shape = tuple(getattr(grad_output, "shape", ()))
    if len(shape) != len(size) or shape[:-1] != size[:-1] or shape[-1] < 1:
        raise ValueError(f"{fn}(): grad_output must have the shape of input_size {list(size)} with its last size "
                         f"replaced by the output size, got grad_output of shape {list(shape)}")
    go4 = grad_output[..., None, :]
    idx4 = indices[..., None, :] if hasattr(indices, "ndim") else indices  # not an array: _indices names it
    size4 = size[:-1] + (1, size[-1])
    gi = _run(fn, op, size4, go4, idx4, lambda s: adaptive_geometry(s, (1, shape[-1]), fn))
    rec = _backend.last_kernel()
    _backend.record(fn.replace("_input", ""), rec.backend, *rec.kernels, direction="backward")
    return gi[..., 0, :]


def adaptive_avg_pool1d_input(input_size, grad_output):
    """Gradient of ``adaptive_avg_pool1d`` (as :func:`adaptive_avg_pool2d_input`)."""
    return _adaptive1d_input("adaptive_avg_pool1d_input", "adaptive_avg_pool2d", input_size, grad_output, None)


def adaptive_max_pool1d_input(input_size, grad_output, indices):
    """Gradient of ``adaptive_max_pool1d`` (as :func:`adaptive_max_pool2d_input`; indices ``l``)."""
    _need_indices("adaptive_max_pool1d_input", indices)
    return _adaptive1d_input("adaptive_max_pool1d_input", "adaptive_max_pool2d", input_size, grad_output, indices)


# --------------------------------------------------------------------------------------------
# 3-D adaptive pooling
# --------------------------------------------------------------------------------------------

def _adaptive3d_input(fn: str, op: str, input_size, grad_output, indices):
    """3-D adaptive pooling gradients: the output size is grad_output's last three sizes; ``input_size``
    ``(N, C, D, H, W)`` or ``(C, D, H, W)`` (then an unbatched grad_output)."""
    from ._pool_geometry import adaptive_geometry_nd
    ok = isinstance(input_size, (tuple, list)) and all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in input_size)
    if not ok or len(input_size) not in (4, 5) or min(input_size) < 0:
        raise (ValueError if ok else TypeError)(
            f"{fn}(): input_size must be a tuple of 5 ints (N, C, D, H, W) or 4 (C, D, H, W) with non-negative "
            f"sizes, got {input_size!r}")
    size = tuple(int(s) for s in input_size)
    backend, a = _backend.coerce_arrays(fn, grad_output=grad_output)
    go = a["grad_output"]
    shape = tuple(go.shape)
    if len(shape) != len(size) or shape[:-3] != size[:-3] or min(shape[-3:]) < 1:
        raise ValueError(f"{fn}(): grad_output must have the shape of input_size {list(size)} with its last three "
                         f"sizes replaced by the output size, got grad_output of shape {list(shape)}")
    g = adaptive_geometry_nd(size, shape[-3:], fn, 3)
    idx = None if indices is None else _indices(fn, indices, go, backend)
    if len(size) == 4:
        go, idx = go[None], (None if idx is None else idx[None])
    if g.N == 0:
        gi, kernel = backend.xp.empty(g.input_shape, dtype=go.dtype), "none (empty output)"
    else:
        gi, kernel = backend.pool_backward(op, go, idx, g)
    _backend.record(op, backend.name, kernel, direction="backward")
    return gi[0] if len(size) == 4 else gi


def adaptive_avg_pool3d_input(input_size, grad_output):
    """Gradient of ``adaptive_avg_pool3d``: output ``(i, j, k)``'s gradient divided by its window's cell count is
    added to every cell of its window. The output size is grad_output's."""
    return _adaptive3d_input("adaptive_avg_pool3d_input", "adaptive_avg_pool3d", input_size, grad_output, None)


def adaptive_max_pool3d_input(input_size, grad_output, indices):
    """Gradient of ``adaptive_max_pool3d``: each output's gradient added at its recorded index (``d*H*W + h*W +
    w``) when that index is a cell of its window (every forward index is), as :func:`max_pool2d_input`."""
    _need_indices("adaptive_max_pool3d_input", indices)
    return _adaptive3d_input("adaptive_max_pool3d_input", "adaptive_max_pool3d", input_size, grad_output, indices)
