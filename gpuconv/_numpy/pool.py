"""Pooling on the CPU with NumPy: one vectorised pass per window tap.

Max and average pooling loop over the ``kh*kw`` taps of the window. For tap ``(i, j)`` the outputs whose
tap lands inside the input form a rectangle (the tap's input row ``oh*sh - ph + i*dh`` grows with ``oh``),
so each pass is one strided slice of the input combined into one rectangle of the output: no padded copy
of the input is made, padding simply never takes part (which is exactly -inf for max and 0 for average).

float16 max pooling (plain and adaptive) runs in float32 (exact: every float16 is a float32 and max only
compares), chunk by chunk of samples, because NumPy's float16 loops are not vectorised; the result is
cast back exactly. Indices are worked out only when asked for: plain max pooling finds each window's
winner from the finished maxima, adaptive max pooling tracks it during the reduction.

Adaptive pooling is separable: reduce the columns of each output column window first, then the rows of
each output row window. For max that order also keeps PyTorch's tie and NaN rules (first maximum in
row-major order; the last NaN in row-major order wins). Adaptive average pooling whose windows all have
the same size (``H % OH == 0`` and ``W % OW == 0``: non-overlapping) is one reshape and one reduction
instead; global average pooling (1x1 output) is a BLAS matrix-vector product with a vector of ones.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .._geometry import AdaptiveGeometry, PoolGeometry, adaptive_window
from ._workspace import workspace, workspace_limit


def _tap_range(out_size: int, in_size: int, offset: int, stride: int) -> tuple[int, int, int]:
    """Outputs ``o`` in ``[lo, hi)`` read input ``o*stride + offset`` inside ``[0, in_size)``; returns
    ``(lo, hi, first input index)``."""
    lo = max(0, -(offset // stride)) if offset < 0 else 0  # ceil(-offset / stride) for negative offsets
    hi = min(out_size, (in_size - 1 - offset) // stride + 1) if in_size - 1 - offset >= 0 else 0
    return lo, max(lo, hi), lo * stride + offset


def _taps(g: PoolGeometry, dilation=True):
    """Yield, in row-major window order, ``(i, j, out_rect, in_rect)`` for every tap that reaches the input."""
    dh, dw = (g.dh, g.dw) if dilation else (1, 1)
    for i in range(g.kh):
        h_lo, h_hi, h0 = _tap_range(g.OH, g.H, i * dh - g.ph, g.sh)
        if h_hi <= h_lo:
            continue
        for j in range(g.kw):
            w_lo, w_hi, w0 = _tap_range(g.OW, g.W, j * dw - g.pw, g.sw)
            if w_hi <= w_lo:
                continue
            out_rect = (slice(None), slice(None), slice(h_lo, h_hi), slice(w_lo, w_hi))
            in_rect = (slice(None), slice(None),
                       slice(h0, h0 + (h_hi - h_lo - 1) * g.sh + 1, g.sh),
                       slice(w0, w0 + (w_hi - w_lo - 1) * g.sw + 1, g.sw))
            yield i, j, out_rect, in_rect


def _nan_wins_update(best, arg, v, v_index):
    """PyTorch's max rule: take ``v`` when ``v > best`` or ``v`` is NaN (so the last NaN wins)."""
    upd = v > best
    upd |= np.isnan(v)
    np.copyto(best, v, where=upd)
    np.copyto(arg, v_index, where=upd)


def _max_in_float32(x: np.ndarray, g, return_indices: bool, run):
    """``run(x, g, return_indices) -> (y, idx)`` on ``x``, float16 ``x`` in float32 chunks of samples
    (NumPy's float16 loops are not vectorised; every float16 is a float32 and a max only compares, so
    the values and indices are exact). The chunks keep the copy within ``workspace_limit()``."""
    if x.dtype != np.float16:
        return run(x, g, return_indices)
    y = np.empty(g.output_shape, dtype=x.dtype)
    idx = np.empty(g.output_shape, dtype=np.int64) if return_indices else None
    chunk = max(1, min(g.N, workspace_limit() // (4 * g.C * g.H * g.W)))
    for n0 in range(0, g.N, chunk):
        n = min(chunk, g.N - n0)
        (x32,) = workspace(((n, g.C, g.H, g.W), np.float32))
        x32[...] = x[n0:n0 + n]
        y32, i32 = run(x32, dataclasses.replace(g, N=n), return_indices)
        y[n0:n0 + n] = y32  # exact: y32 holds float16 values
        if return_indices:
            idx[n0:n0 + n] = i32
    return y, idx


def max_pool2d(x: np.ndarray, g: PoolGeometry, return_indices: bool):
    return _max_in_float32(x, g, return_indices, _max_pool2d) + ("numpy_max_pool",)


def _max_pool2d(x: np.ndarray, g: PoolGeometry, return_indices: bool):
    y = np.full(g.output_shape, -np.inf, dtype=x.dtype)
    taps = list(_taps(g))
    for _, _, out_rect, in_rect in taps:
        np.maximum(y[out_rect], x[in_rect], out=y[out_rect])  # np.maximum propagates NaN
    return y, (_argmax_indices(x, y, g, taps) if return_indices else None)


def _argmax_indices(x: np.ndarray, y: np.ndarray, g: PoolGeometry, taps) -> np.ndarray:
    """``h*W + w`` of each window's winner under PyTorch's rule (a value replaces the best so far when
    it is greater or NaN): the first in-bounds cell equal to the maximum, or in a window holding NaN its
    last NaN (in row-major window order).

    Found from the finished maxima ``y`` rather than tracked during the max passes: visiting the taps in
    reverse order and overwriting the winner's tap number wherever ``x == y`` leaves the first match; one
    forward pass over the taps, only when some maximum is NaN, leaves the last NaN. A window of ``-inf``
    matches at its first in-bounds cell, PyTorch's initial index. Tap numbers are kept in the smallest
    integer type and turned into flat indices at the end. ``taps``: ``list(_taps(g))``.

    With dilation a window can hold no input cell at all (every tap in the padding, e.g. W = 1, kw = 2,
    dw = 2, pw = 1: taps -1 and 1); its maximum is -inf and its index PyTorch's initial one, ``h*W + w``
    of the first tap at or after row 0 and column 0, a position outside the window (and perhaps
    outside the plane), as PyTorch's CPU and CUDA kernels and our CUDA kernel give."""
    tap = np.zeros(g.output_shape, dtype=np.min_scalar_type(max(len(taps) - 1, 0)))
    for t in range(len(taps) - 1, -1, -1):
        _, _, out_rect, in_rect = taps[t]
        np.copyto(tap[out_rect], t, where=x[in_rect] == y[out_rect])
    nan = np.isnan(y)
    if nan.any():
        for t, (_, _, out_rect, in_rect) in enumerate(taps):
            np.copyto(tap[out_rect], t, where=np.isnan(x[in_rect]))
    # index = (oh*sh - ph + i*dh) * W + (ow*sw - pw + j*dw) for tap t = (i, j)
    offsets = np.array([i * g.dh * g.W + j * g.dw for i, j, _, _ in taps] or [0], dtype=np.int64)
    base = ((np.arange(g.OH, dtype=np.int64) * g.sh - g.ph)[:, None] * g.W
            + (np.arange(g.OW, dtype=np.int64) * g.sw - g.pw)[None, :])
    idx = np.take(offsets, tap)
    idx += base
    first_h, empty_h = _first_tap(g.OH, g.sh, g.ph, g.kh, g.dh, g.H)
    first_w, empty_w = _first_tap(g.OW, g.sw, g.pw, g.kw, g.dw, g.W)
    empty = empty_h[:, None] | empty_w[None, :]
    if empty.any():  # windows without an input cell: PyTorch's initial index
        np.copyto(idx, first_h[:, None] * g.W + first_w[None, :], where=empty)
    return idx


def _first_tap(out_size: int, stride: int, pad: int, k: int, dilation: int, size: int):
    """Along one axis, for each output: the first tap at or after 0 (``start + j*dilation``, ``j`` not
    bounded by ``k``, as PyTorch steps its start), and whether the window has no tap in ``[0, size)``."""
    start = np.arange(out_size, dtype=np.int64) * stride - pad
    first = np.where(start < 0, start + (-start + dilation - 1) // dilation * dilation, start)
    return first, (first >= size) | (first > start + (k - 1) * dilation)


def avg_pool_divisor(g: PoolGeometry, count_include_pad: bool, divisor_override) -> np.ndarray:
    """(OH, OW) divisor of each window, PyTorch's rule: with count_include_pad the window clipped to
    the padded input (explicit padding counts, the ceil_mode overhang does not); without it, the
    in-bounds cells; ``divisor_override`` replaces both."""
    if divisor_override:
        return np.full((g.OH, g.OW), divisor_override, dtype=np.int64)

    def extent(out_size, k, s, p, size):
        start = np.arange(out_size, dtype=np.int64) * s - p
        end = np.minimum(start + k, size + p)
        if count_include_pad:
            return end - start
        return np.minimum(end, size) - np.maximum(start, 0)

    return (extent(g.OH, g.kh, g.sh, g.ph, g.H)[:, None]
            * extent(g.OW, g.kw, g.sw, g.pw, g.W)[None, :])


def avg_pool2d(x: np.ndarray, g: PoolGeometry, count_include_pad: bool, divisor_override):
    ct = np.float32 if x.dtype == np.float16 else x.dtype
    acc = np.zeros(g.output_shape, dtype=ct)
    for _, _, out_rect, in_rect in _taps(g, dilation=False):
        acc[out_rect] += x[in_rect]
    divisor = avg_pool_divisor(g, count_include_pad, divisor_override).astype(ct)
    # A window with no in-bounds cell (divisor 0) averages to 0, as PyTorch; cannot occur with the
    # pad <= kernel/2 and ceil_mode rules, kept so a 0 divisor never produces NaN.
    np.divide(acc, divisor, out=acc, where=divisor != 0)
    return acc.astype(x.dtype, copy=False), "numpy_avg_pool"


def _global_max_pool2d(x: np.ndarray, return_indices: bool):
    """Max over each whole plane. ``np.max`` propagates NaN; ``np.argmax`` returns the first maximum
    (PyTorch's tie rule) but the first NaN, where PyTorch's rule keeps the last one, so planes holding
    NaN are searched again from the end."""
    N, C, H, W = x.shape
    if not return_indices:
        return x.max(axis=(2, 3), keepdims=True), None
    flat = x.reshape(N, C, H * W)
    idx = flat.argmax(axis=2)
    y = np.take_along_axis(flat, idx[..., None], axis=2)
    nan = np.isnan(y[..., 0])
    if nan.any():
        idx[nan] = H * W - 1 - np.isnan(flat[nan][:, ::-1]).argmax(axis=1)
    return y.reshape(N, C, 1, 1), idx.reshape(N, C, 1, 1)


def _adaptive_windows(g: AdaptiveGeometry):
    """The ``[start, end)`` windows of the output rows and of the output columns."""
    return ([adaptive_window(i, g.H, g.OH) for i in range(g.OH)],
            [adaptive_window(i, g.W, g.OW) for i in range(g.OW)])


def _adaptive_reduce(x, axis: int, windows, op: str):
    """Reduce ``x`` along ``axis`` over each ``[start, end)`` window; returns values (and, for 'max',
    the argmax position along that axis with PyTorch's NaN rule; 'max_value' is the max alone, NaN
    propagating, without the argmax bookkeeping)."""
    shape = list(x.shape)
    shape[axis] = len(windows)
    ct = np.float32 if (op == "sum" and x.dtype == np.float16) else x.dtype
    out = np.empty(shape, dtype=ct)
    arg = np.empty(shape, dtype=np.int64) if op == "max" else None  # (argmax only for 'max')
    lead = (slice(None),) * axis
    for o, (start, end) in enumerate(windows):
        dst = lead + (o,)
        if op == "sum":
            np.sum(x[lead + (slice(start, end),)], axis=axis, dtype=ct, out=out[dst])
            continue
        if op == "max_value":
            np.max(x[lead + (slice(start, end),)], axis=axis, out=out[dst])
            continue
        best, where = out[dst], arg[dst]
        best.fill(-np.inf)
        where.fill(start)
        for t in range(start, end):
            _nan_wins_update(best, where, x[lead + (t,)], t)
    return out, arg


def adaptive_avg_pool2d(x: np.ndarray, g: AdaptiveGeometry):
    ct = np.float32 if x.dtype == np.float16 else x.dtype
    if g.H % g.OH == 0 and g.W % g.OW == 0:  # equal, non-overlapping windows
        kh, kw = g.H // g.OH, g.W // g.OW
        if g.OH == g.OW == 1:  # global: (N, C, H*W) @ ones, a BLAS GEMV
            y = np.matmul(x.reshape(g.N, g.C, kh * kw).astype(ct, copy=False), np.ones(kh * kw, ct))
        else:
            y = x.reshape(g.N, g.C, g.OH, kh, g.OW, kw).sum(axis=(3, 5), dtype=ct)
        y /= kh * kw
        return y.reshape(g.output_shape).astype(x.dtype, copy=False), "numpy_adaptive_avg_pool"
    hwin, wwin = _adaptive_windows(g)
    cols, _ = _adaptive_reduce(x, 3, wwin, "sum")
    sums, _ = _adaptive_reduce(cols, 2, hwin, "sum")
    counts = (np.array([e - s for s, e in hwin])[:, None] * np.array([e - s for s, e in wwin])[None, :])
    sums /= counts.astype(sums.dtype)
    return sums.astype(x.dtype, copy=False), "numpy_adaptive_avg_pool"


def adaptive_max_pool2d(x: np.ndarray, g: AdaptiveGeometry, return_indices: bool):
    return _max_in_float32(x, g, return_indices, _adaptive_max_pool2d) + ("numpy_adaptive_max_pool",)


def _adaptive_max_pool2d(x: np.ndarray, g: AdaptiveGeometry, return_indices: bool):
    if g.OH == g.OW == 1:  # global max pooling: one reduction per plane
        return _global_max_pool2d(x, return_indices)
    hwin, wwin = _adaptive_windows(g)
    # Columns first, then rows: see the module docstring for why this order keeps PyTorch's rule.
    op = "max" if return_indices else "max_value"
    colmax, colarg = _adaptive_reduce(x, 3, wwin, op)       # (N, C, H, OW), argmax column
    y, rowarg = _adaptive_reduce(colmax, 2, hwin, op)       # (N, C, OH, OW), argmax row
    if not return_indices:
        return y, None
    col = np.take_along_axis(colarg, rowarg, axis=2)
    return y, rowarg * g.W + col
