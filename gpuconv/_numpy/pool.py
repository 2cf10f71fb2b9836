"""Pooling on the CPU with NumPy: one vectorised pass per window tap.

Max and average pooling loop over the ``kh*kw`` taps of the window. For tap ``(i, j)`` the outputs whose
tap lands inside the input form a rectangle (the tap's input row ``oh*sh - ph + i*dh`` grows with ``oh``),
so each pass is one strided slice of the input combined into one rectangle of the output: no padded copy
of the input is made, padding simply never takes part (which is exactly -inf for max and 0 for average).

float16 is computed in float32 without converting the input: NumPy's float16 loops are not vectorised, and
a ufunc given a float16 input and a float32 output casts the input chunk by chunk in its buffer (measured
on 8x64x112x112, 3x3/2 max pooling: 31 ms, against 45 ms converting the input first and 116 ms in
float16). Max pooling stays exact (every float16 is a float32 and max only compares) and the result is
cast back exactly. Indices are worked out only when asked for: plain max pooling finds each window's
winner from the finished maxima, adaptive max pooling tracks it during the reduction.

Adaptive pooling (``adaptive_pool.py``) is separable: reduce the columns of each output column window
first, then the rows of each output row window. For max that order also keeps PyTorch's tie and NaN rules
(first maximum in row-major order; the last NaN in row-major order wins). Adaptive average pooling whose
windows all have the same size (``H % OH == 0`` and ``W % OW == 0``: non-overlapping) is one reshape and
one reduction instead; global average pooling (1x1 output) is a BLAS matrix-vector product with a vector
of ones (planes contiguous in float32 / float64; otherwise one sum over both axes, float16 summed in
float32).

Memory: besides the output (and the indices), every temporary (float32 results of float16 input, tap
numbers and masks for the indices, divisors, the column pass of adaptive pooling) is carved from the
workspace (``_workspace``), and the output is computed in blocks (``_blocks``: samples, then channels of
one sample, then rows, then columns) small enough that a block's temporaries stay within
``workspace_limit()``; global max pooling with indices takes planes too large for it in bands of rows.
Max pooling of float32 / float64 without indices needs no temporary at all. The input is never copied
as a whole, float16 included (global max pooling with indices copies blocks of planes whose rows are not
consecutive, or float16 ones, into the workspace: ``np.argmax`` needs a flat plane).
"""

from __future__ import annotations

import itertools

import numpy as np

from .._geometry import tap_outputs
from .._pool_geometry import PoolGeometry
from ._workspace import trim_workspace, workspace, workspace_bytes, workspace_limit


SMALL_ARRAY_BYTES = 1 << 18  # arrays up to this size are allocated directly, not from the workspace
TAKE_SLAB = 1 << 16  # indices looked up per np.take call (it allocates a buffer of its output's size)
AXIS_BYTES = 64  # per output row / column of a block: the int64 1-D arrays of indices and divisors


def _ranges(size: int, step: int):
    return [(i, min(size, i + step)) for i in range(0, size, step)]


def _blocks(shape, specs, extra=None):
    """Blocks ``((a0, a1), (b0, b1), ...)`` covering an array of ``shape``, each C-contiguous in it
    (whole items of the first axis; or one item and a run of the second; ...), as large as the workspace
    limit allows: ``workspace_bytes(*specs(*sizes)) + extra(*sizes)`` (``extra``: temporaries NumPy
    allocates itself) at most ``workspace_limit()``, unless a block of one element of every axis is
    already larger. The caller's kept workspace is trimmed to leave room for ``extra``."""
    limit = workspace_limit()

    def cost(sizes):
        return workspace_bytes(*specs(*sizes)) + (extra(*sizes) if extra else 0)

    sizes = list(shape)
    for d in range(len(shape)):
        if cost(sizes) <= limit:
            break
        sizes[d] = 1
        if cost(sizes) > limit:
            continue
        lo, hi = 1, shape[d]
        while lo < hi:
            mid = (lo + hi + 1) // 2
            sizes[d] = mid
            lo, hi = (mid, hi) if cost(sizes) <= limit else (lo, mid - 1)
        sizes[d] = lo
        break
    if extra:
        trim_workspace(limit - extra(*sizes))
    return itertools.product(*(_ranges(n, k) for n, k in zip(shape, sizes)))


def _compute_dtype(dtype) -> np.dtype:
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)


def _taps(g: PoolGeometry, rows, cols, dilation=True):
    """Yield, in row-major window order, ``(i, j, out_rect, in_rect)`` for every tap that reaches the input
    from an output of the block ``rows`` x ``cols`` (``(start, stop)`` each); ``out_rect`` is relative to
    the block, ``in_rect`` indexes the input planes."""
    dh, dw = (g.dh, g.dw) if dilation else (1, 1)
    (o0, o1), (q0, q1) = rows, cols
    for i in range(g.kh):
        h_lo, h_hi, h0 = tap_outputs(o0, o1, 0, g.H, i * dh - g.ph, g.sh)
        if h_hi <= h_lo:
            continue
        for j in range(g.kw):
            w_lo, w_hi, w0 = tap_outputs(q0, q1, 0, g.W, j * dw - g.pw, g.sw)
            if w_hi <= w_lo:
                continue
            out_rect = (slice(None), slice(None), slice(h_lo - o0, h_hi - o0), slice(w_lo - q0, w_hi - q0))
            in_rect = (slice(None), slice(None),
                       slice(h0, h0 + (h_hi - h_lo - 1) * g.sh + 1, g.sh),
                       slice(w0, w0 + (w_hi - w_lo - 1) * g.sw + 1, g.sw))
            yield i, j, out_rect, in_rect


def _isnan(a, out) -> None:
    """``out = isnan(a)``. (NumPy 2.4's ``isnan`` / ``isinf`` / ``isfinite`` on float32 and float64 write
    wrong values into an ``out`` that is not contiguous, e.g. a slice of the last axis; ``a != a`` is
    the same mask, and the comparison loops take any ``out``.)"""
    np.not_equal(a, a, out=out)


def _nan_wins_update(best, arg, v, v_index, upd, isnan):
    """PyTorch's max rule: take ``v`` when ``v > best`` or ``v`` is NaN (so the last NaN wins). ``upd``
    and ``isnan``: boolean scratch of ``best``'s shape."""
    np.greater(v, best, out=upd)
    _isnan(v, isnan)
    upd |= isnan
    np.copyto(best, v, where=upd)
    np.copyto(arg, v_index, where=upd)


def max_pool2d(x: np.ndarray, g: PoolGeometry, return_indices: bool):
    y = np.empty(g.output_shape, dtype=x.dtype)
    idx = np.empty(g.output_shape, dtype=np.int64) if return_indices else None
    f16 = x.dtype == np.float16
    if not f16 and not return_indices:  # no temporaries: one block
        _max_pool_block(x, g, y, None, (0, g.OH), (0, g.OW), [])
        return y, idx, "numpy_max_pool"
    tap_type = np.min_scalar_type(max(g.kh * g.kw - 1, 0))

    def specs(n, c, m, k):
        sp = [((n, c, m, k), np.float32)] if f16 else []
        if return_indices:
            sp += [((n, c, m, k), tap_type), ((n, c, m, k), np.bool_), ((m, k), np.int64), ((m, k), np.bool_)]
        return sp

    def extra(n, c, m, k):
        return (m + k) * AXIS_BYTES

    for (n0, n1), (c0, c1), rows, cols in _blocks(g.output_shape, specs, extra):
        block = (slice(n0, n1), slice(c0, c1), slice(*rows), slice(*cols))
        scratch = workspace(*specs(n1 - n0, c1 - c0, rows[1] - rows[0], cols[1] - cols[0]))
        _max_pool_block(x[n0:n1, c0:c1], g, y[block], None if idx is None else idx[block], rows, cols, scratch)
    return y, idx, "numpy_max_pool"


def _max_pool_block(x, g: PoolGeometry, y, idx, rows, cols, scratch) -> None:
    """Max pooling of the output block ``rows`` x ``cols`` of planes ``x`` into ``y`` (and ``idx``);
    ``scratch``: a float32 block for float16 ``x``, then the index scratch (see ``max_pool2d``)."""
    scratch = list(scratch)
    acc = scratch.pop(0) if x.dtype == np.float16 else y
    acc.fill(-np.inf)
    taps = list(_taps(g, rows, cols))
    for _, _, out_rect, in_rect in taps:
        np.maximum(acc[out_rect], x[in_rect], out=acc[out_rect])  # np.maximum propagates NaN
    if idx is not None:
        _argmax_indices(x, acc, g, taps, rows, cols, idx, *scratch)
    if acc is not y:
        np.copyto(y, acc)  # exact: acc holds float16 values


def _argmax_indices(x, y, g: PoolGeometry, taps, rows, cols, idx, tap, mask, base, empty) -> None:
    """``idx`` = ``h*W + w`` of each window's winner under PyTorch's rule (a value replaces the best so
    far when it is greater or NaN): the first in-bounds cell equal to the maximum, or in a window holding
    NaN its last NaN (in row-major window order). ``tap``, ``mask`` (the block's shape), ``base``,
    ``empty`` (``rows`` x ``cols``): scratch.

    Found from the finished maxima ``y`` rather than tracked during the max passes: visiting the taps in
    reverse order and overwriting the winner's tap number wherever ``x == y`` leaves the first match; one
    forward pass over the taps, only when some maximum is NaN, leaves the last NaN. A window of ``-inf``
    matches at its first in-bounds cell, PyTorch's initial index. Tap numbers are kept in the smallest
    integer type and turned into flat indices at the end. ``taps``: ``list(_taps(g, rows, cols))``.

    With dilation a window can hold no input cell at all (every tap in the padding, e.g. W = 1, kw = 2,
    dw = 2, pw = 1: taps -1 and 1); its maximum is -inf and its index PyTorch's initial one, ``h*W + w``
    of the first tap at or after row 0 and column 0, a position outside the window (and perhaps
    outside the plane), as PyTorch's CPU and CUDA kernels and our CUDA kernel give."""
    tap.fill(0)
    for t in range(len(taps) - 1, -1, -1):
        _, _, out_rect, in_rect = taps[t]
        np.equal(x[in_rect], y[out_rect], out=mask[out_rect])
        np.copyto(tap[out_rect], t, where=mask[out_rect])
    _isnan(y, mask)
    if mask.any():
        for t, (_, _, out_rect, in_rect) in enumerate(taps):
            _isnan(x[in_rect], mask[out_rect])
            np.copyto(tap[out_rect], t, where=mask[out_rect])
    # index = (oh*sh - ph + i*dh) * W + (ow*sw - pw + j*dw) for tap t = (i, j)
    offsets = np.array([i * g.dh * g.W + j * g.dw for i, j, _, _ in taps] or [0], dtype=np.int64)
    (o0, o1), (q0, q1) = rows, cols
    flat_tap, flat_idx = tap.reshape(-1), idx.reshape(-1)  # both C-contiguous blocks
    for i in range(0, flat_idx.size, TAKE_SLAB):  # np.take buffers its output: in slabs, a small buffer
        np.take(offsets, flat_tap[i:i + TAKE_SLAB], out=flat_idx[i:i + TAKE_SLAB], mode="clip")
    np.add(((np.arange(o0, o1, dtype=np.int64) * g.sh - g.ph) * g.W)[:, None],
           (np.arange(q0, q1, dtype=np.int64) * g.sw - g.pw)[None, :], out=base)
    idx += base
    first_h, empty_h = _first_tap(o0, o1, g.sh, g.ph, g.kh, g.dh, g.H)
    first_w, empty_w = _first_tap(q0, q1, g.sw, g.pw, g.kw, g.dw, g.W)
    np.logical_or(empty_h[:, None], empty_w[None, :], out=empty)
    if empty.any():  # windows without an input cell: PyTorch's initial index
        np.add((first_h * g.W)[:, None], first_w[None, :], out=base)
        np.copyto(idx, base, where=empty)


def _first_tap(o0: int, o1: int, stride: int, pad: int, k: int, dilation: int, size: int):
    """Along one axis, for outputs ``[o0, o1)``: the first tap at or after 0 (``start + j*dilation``,
    ``j`` not bounded by ``k``, as PyTorch steps its start), and whether the window has no tap in
    ``[0, size)``."""
    start = np.arange(o0, o1, dtype=np.int64) * stride - pad
    first = np.where(start < 0, start + (-start + dilation - 1) // dilation * dilation, start)
    return first, (first >= size) | (first > start + (k - 1) * dilation)


def _divisor_axes(g: PoolGeometry, rows, cols, count_include_pad: bool, divisor_override):
    """The divisor of output ``(oh, ow)`` is ``dh[oh] * dw[ow]``: returns ``(dh, dw)`` for the block
    ``rows`` x ``cols`` (int64), PyTorch's rule: with count_include_pad the window clipped to the padded
    input (explicit padding counts, the ceil_mode overhang does not); without it, the in-bounds cells;
    ``divisor_override`` replaces both."""
    if divisor_override:
        return (np.full(rows[1] - rows[0], divisor_override, dtype=np.int64),
                np.ones(cols[1] - cols[0], dtype=np.int64))

    return (divisor_extent(*rows, g.kh, g.sh, g.ph, g.pb, g.H, count_include_pad),
            divisor_extent(*cols, g.kw, g.sw, g.pw, g.pr, g.W, count_include_pad))


def divisor_extent(o0: int, o1: int, k: int, s: int, p_lo: int, p_hi: int, size: int, count_include_pad: bool):
    """Along one axis, outputs ``[o0, o1)``: each window's share of the average's divisor (int64), the
    divisor being the product over the axes. With count_include_pad the window clipped to the padded
    input ``[-p_lo, size + p_hi)``; without, its in-bounds cells."""
    start = np.arange(o0, o1, dtype=np.int64) * s - p_lo
    end = np.minimum(start + k, size + p_hi)
    if count_include_pad:
        return end - start
    return np.minimum(end, size) - np.maximum(start, 0)


def avg_pool_divisor(g: PoolGeometry, count_include_pad: bool, divisor_override) -> np.ndarray:
    """(OH, OW) divisor of each window (see ``_divisor_axes``)."""
    dh, dw = _divisor_axes(g, (0, g.OH), (0, g.OW), count_include_pad, divisor_override)
    return dh[:, None] * dw[None, :]


def avg_pool2d(x: np.ndarray, g: PoolGeometry, count_include_pad: bool, divisor_override):
    ct = _compute_dtype(x.dtype)
    f16 = ct != x.dtype  # float16: summed in a float32 block
    y = (np.empty if f16 else np.zeros)(g.output_shape, dtype=x.dtype)  # (zeros: calloc'ed, no pass)
    if not f16 and g.OH * g.OW * ct.itemsize <= SMALL_ARRAY_BYTES:  # no workspace needed: one block
        _avg_pool_block(x, g, y, None, np.empty((g.OH, g.OW), ct), (0, g.OH), (0, g.OW), count_include_pad,
                        divisor_override)
        return y, "numpy_avg_pool"

    def specs(n, c, m, k):
        return ([((n, c, m, k), ct)] if f16 else []) + [((m, k), ct)]

    def extra(n, c, m, k):
        return (m + k) * AXIS_BYTES

    for (n0, n1), (c0, c1), rows, cols in _blocks(g.output_shape, specs, extra):
        scratch = workspace(*specs(n1 - n0, c1 - c0, rows[1] - rows[0], cols[1] - cols[0]))
        _avg_pool_block(x[n0:n1, c0:c1], g, y[n0:n1, c0:c1, slice(*rows), slice(*cols)],
                        scratch[0] if f16 else None, scratch[-1], rows, cols, count_include_pad, divisor_override)
    return y, "numpy_avg_pool"


def _avg_pool_block(x, g: PoolGeometry, y, acc, divisor, rows, cols, count_include_pad, divisor_override):
    """Average pooling of the output block ``rows`` x ``cols`` of planes ``x`` into ``y`` (zeros), summed
    in ``acc`` (float32, for float16) or in ``y`` itself (``acc`` None); ``divisor``: scratch of
    ``rows`` x ``cols``."""
    if acc is None:
        acc = y
    else:
        acc.fill(0)
    for _, _, out_rect, in_rect in _taps(g, rows, cols, dilation=False):
        np.add(acc[out_rect], x[in_rect], out=acc[out_rect])
    dh, dw = _divisor_axes(g, rows, cols, count_include_pad, divisor_override)
    np.multiply(dh.astype(divisor.dtype)[:, None], dw.astype(divisor.dtype)[None, :], out=divisor)
    # A window with no in-bounds cell (divisor 0) averages to 0, as PyTorch; cannot occur with the
    # pad <= kernel/2 and ceil_mode rules, kept so a 0 divisor never produces NaN.
    if divisor.min() > 0:
        np.divide(acc, divisor, out=acc)
    else:
        np.divide(acc, divisor, out=acc, where=divisor != 0)
    if acc is not y:
        np.copyto(y, acc)
