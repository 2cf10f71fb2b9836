"""Public pooling entry points (shared by the NumPy and CUDA paths); PyTorch's semantics, written out with
their traps and gpuconv's few differences in docs/semantics.md ("Pooling"). ``input`` must be a NumPy or CuPy
array: anything else, None included, is a ``TypeError`` naming the argument."""

from __future__ import annotations

import numbers

import numpy as np

from . import _backend
from ._pool_geometry import adaptive_geometry, pool_geometry


def _run(fn, input, geometry, call, with_indices=False):
    """Validate the array, build the geometry, run ``call(backend, x4, g)`` unless the output is empty,
    record the kernel, and drop the batch dimension again for unbatched input."""
    backend, a = _backend.coerce_arrays(fn, input=input)
    x = a["input"]
    g = geometry(x.shape)
    x4 = x if x.ndim == 4 else x[None]
    if g.N == 0:
        y = backend.xp.empty(g.output_shape, dtype=x.dtype)
        idx = backend.xp.empty(g.output_shape, dtype=np.int64) if with_indices else None
        kernel = "none (empty output)"
    elif with_indices is None:  # average pooling: no indices at all
        (y, kernel), idx = call(backend, x4, g), None
    else:
        y, idx, kernel = call(backend, x4, g)
    _backend.record(fn, backend.name, kernel)
    if x.ndim == 3:
        y = y[0]
        idx = None if idx is None else idx[0]
    return (y, idx) if with_indices else y


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """2-D max pooling, as ``torch.nn.functional.max_pool2d``.

    Output size per axis: ``floor((H + 2p - d*(k-1) - 1 + (s-1 if ceil_mode else 0)) / s) + 1``, one less
    with ``ceil_mode`` when the last window would start at or past ``H + p``. ``stride=None`` means
    ``kernel_size``. ``0 <= padding <= kernel_size // 2``. Padding acts as -inf. NaN wins: a NaN in a window
    makes its output NaN, and its index is that of the last NaN in row-major window order; otherwise the
    index is the first maximum's. Indices (int64) are ``h * W + w`` within each (n, c) plane; a window
    with only -inf values returns -inf and its first in-bounds cell. With dilation a window can hold no
    input cell at all (every tap in the padding); it returns -inf and, as PyTorch does, ``h * W + w`` of
    its start row and column each stepped by the dilation until not negative: a position outside the
    window, possibly outside the plane, so not usable as an index into it.
    Returns ``y``, or ``(y, indices)`` with ``return_indices=True``.
    """
    return _run("max_pool2d", input,
                lambda s: pool_geometry(s, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d"),
                lambda be, x, g: be.max_pool2d(x, g, return_indices), with_indices=bool(return_indices))


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """2-D average pooling, as ``torch.nn.functional.avg_pool2d``.

    Output size as :func:`max_pool2d` (no dilation). Divisor of each window: with
    ``count_include_pad=True`` (default) ``(min(h0+kh, H+ph) - h0) * (min(w0+kw, W+pw) - w0)`` where
    ``h0 = oh*sh - ph`` (explicit padding counts, the ceil_mode overhang past the padding does not); with
    ``count_include_pad=False`` the number of in-bounds cells; a non-zero ``divisor_override`` replaces both.
    float16 sums in float32.
    """
    if divisor_override is not None:
        if not isinstance(divisor_override, numbers.Integral) or isinstance(divisor_override, bool):
            raise TypeError(f"avg_pool2d(): divisor_override must be an int or None, got {divisor_override!r}")
        if divisor_override == 0:
            raise ValueError("avg_pool2d(): divisor must be not zero (divisor_override=0)")
    return _run("avg_pool2d", input,
                lambda s: pool_geometry(s, kernel_size, stride, padding, 1, ceil_mode, "avg_pool2d"),
                lambda be, x, g: be.avg_pool2d(x, g, bool(count_include_pad), divisor_override),
                with_indices=None)


def adaptive_avg_pool2d(input, output_size):
    """Adaptive average pooling: output ``i`` of ``O`` averages input ``[floor(i*H/O), ceil((i+1)*H/O))``
    (likewise for columns). ``output_size``: int, ``(oh, ow)``, an entry ``None`` keeps the input size;
    ``1`` is global average pooling. ``O`` may exceed ``H``. Sizes must be positive: PyTorch also takes
    ``0`` and returns an empty output, which here is a ``ValueError``, as a zero output size is for
    :func:`max_pool2d` and :func:`avg_pool2d` in both libraries."""
    return _run("adaptive_avg_pool2d", input,
                lambda s: adaptive_geometry(s, output_size, "adaptive_avg_pool2d"),
                lambda be, x, g: be.adaptive_avg_pool2d(x, g), with_indices=None)


def adaptive_max_pool2d(input, output_size, return_indices=False):
    """Adaptive max pooling over the windows of :func:`adaptive_avg_pool2d`, with :func:`max_pool2d`'s
    NaN and index rules. Returns ``y`` or ``(y, indices)``."""
    return _run("adaptive_max_pool2d", input,
                lambda s: adaptive_geometry(s, output_size, "adaptive_max_pool2d"),
                lambda be, x, g: be.adaptive_max_pool2d(x, g, return_indices),
                with_indices=bool(return_indices))
