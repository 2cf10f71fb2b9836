"""Adaptive pooling on the CPU with NumPy (``pool.py`` holds max and average pooling and the shared block and
NaN helpers; its docstring describes both).

Adaptive pooling is separable: reduce the columns of each output column window first, then the rows of
each output row window. For max that order also keeps PyTorch's tie and NaN rules (first maximum in
row-major order; the last NaN in row-major order wins). Adaptive average pooling whose windows all have
the same size (``H % OH == 0`` and ``W % OW == 0``: non-overlapping) is one reshape and one reduction
instead; global average pooling (1x1 output) is a BLAS matrix-vector product with a vector of ones.
"""

from __future__ import annotations

import numpy as np

from .._pool_geometry import AdaptiveGeometry, adaptive_window
from ._workspace import workspace, workspace_bytes, workspace_limit
from .pool import AXIS_BYTES, SMALL_ARRAY_BYTES, _blocks, _compute_dtype, _nan_wins_update

def _planes_flat(x: np.ndarray):
    """``x`` (n, c, H, W) as (n, c, H*W) without a copy, or None when its rows are not consecutive."""
    n, c, H, W = x.shape
    if (W == 1 or x.strides[3] == x.itemsize) and (H == 1 or x.strides[2] == W * x.itemsize):
        return x.reshape(n, c, H * W)
    return None


def _windows(o0: int, o1: int, size: int, out: int):
    """The ``[start, end)`` adaptive windows of outputs ``o0..o1-1`` along an axis of ``size``."""
    return [adaptive_window(i, size, out) for i in range(o0, o1)]


def _span_bound(m: int, size: int, out: int) -> int:
    """Input rows read by any ``m`` consecutive adaptive windows, at most (``ceil(o1*size/out) -
    floor(o0*size/out) < m*size/out + 2``)."""
    return min(size, m * size // out + 2)


WINDOW_BYTES = 128  # a window as a Python tuple of two ints, at most (blocks count it: _windows per block)


def adaptive_avg_pool2d(x: np.ndarray, g: AdaptiveGeometry):
    ct = _compute_dtype(x.dtype)
    y = np.empty(g.output_shape, dtype=x.dtype)
    f16 = ct != x.dtype
    if g.H % g.OH == 0 and g.W % g.OW == 0:  # equal, non-overlapping windows
        kh, kw = g.H // g.OH, g.W // g.OW
        if g.OH == g.OW == 1:
            _global_avg_pool(x, y, ct)
            return y, "numpy_adaptive_avg_pool"
        xr = x.reshape(g.N, g.C, g.OH, kh, g.OW, kw)  # splitting axes: always a view

        def specs(n, c, m, k):
            return [((n, c, m, k), ct)] if f16 else []

        for (n0, n1), (c0, c1), (o0, o1), (q0, q1) in _blocks(g.output_shape, specs):
            yb = y[n0:n1, c0:c1, o0:o1, q0:q1]
            (acc,) = workspace(*specs(n1 - n0, c1 - c0, o1 - o0, q1 - q0)) or (yb,)
            np.sum(xr[n0:n1, c0:c1, o0:o1, :, q0:q1], axis=(3, 5), dtype=ct, out=acc)
            acc /= kh * kw
            if f16:
                np.copyto(yb, acc)
        return y, "numpy_adaptive_avg_pool"

    def specs(n, c, m, k):  # the column sums, the counts, the float32 block of float16
        rows = _span_bound(m, g.H, g.OH)
        return [((n, c, rows, k), ct), ((m, k), ct)] + ([((n, c, m, k), ct)] if f16 else [])

    def extra(n, c, m, k):
        return (m + k) * (WINDOW_BYTES + AXIS_BYTES)

    for (n0, n1), (c0, c1), (o0, o1), (q0, q1) in _blocks(g.output_shape, specs, extra):
        n, c, m, k = n1 - n0, c1 - c0, o1 - o0, q1 - q0
        hwin, wwin = _windows(o0, o1, g.H, g.OH), _windows(q0, q1, g.W, g.OW)
        r0, r1 = hwin[0][0], hwin[-1][1]
        cols, counts, *acc = workspace(((n, c, r1 - r0, k), ct), *specs(n, c, m, k)[1:])
        yb = y[n0:n1, c0:c1, o0:o1, q0:q1]
        acc = acc[0] if f16 else yb
        xb = x[n0:n1, c0:c1, r0:r1]
        for j, (s0, s1) in enumerate(wwin):
            np.sum(xb[..., s0:s1], axis=3, dtype=ct, out=cols[..., j])
        for i, (s0, s1) in enumerate(hwin):
            np.sum(cols[:, :, s0 - r0:s1 - r0], axis=2, dtype=ct, out=acc[:, :, i])
        np.multiply(np.array([e - s for s, e in hwin], ct)[:, None],
                    np.array([e - s for s, e in wwin], ct)[None, :], out=counts)
        acc /= counts
        if f16:
            np.copyto(yb, acc)
    return y, "numpy_adaptive_avg_pool"


def _global_avg_pool(x: np.ndarray, y: np.ndarray, ct) -> None:
    """Global average pooling into ``y`` (N, C, 1, 1): ``(N, C, H*W) @ ones``, a BLAS GEMV, when the
    planes are contiguous in the compute dtype and the ones fit the workspace; otherwise a sum over
    both axes (float16 summed in float32: NumPy casts it chunk by chunk, no copy)."""
    N, C, H, W = x.shape
    flat = _planes_flat(x) if x.dtype == ct else None
    plane = H * W
    if flat is not None and plane * ct.itemsize <= SMALL_ARRAY_BYTES:
        np.matmul(flat, np.ones(plane, ct), out=y.reshape(N, C))
        y /= plane
        return
    if flat is not None and workspace_bytes(((plane,), ct)) <= workspace_limit():
        (ones,) = workspace(((plane,), ct))
        ones.fill(1)
        np.matmul(flat, ones, out=y.reshape(N, C))
        y /= plane
        return

    def specs(n, c):
        return [((n, c), ct)] if ct != x.dtype else []

    for (n0, n1), (c0, c1) in _blocks((N, C), specs):
        yb = y[n0:n1, c0:c1, 0, 0]
        (acc,) = workspace(*specs(n1 - n0, c1 - c0)) or (yb,)
        np.sum(x[n0:n1, c0:c1], axis=(2, 3), dtype=ct, out=acc)
        acc /= plane
        if acc is not yb:
            np.copyto(yb, acc)


def adaptive_max_pool2d(x: np.ndarray, g: AdaptiveGeometry, return_indices: bool):
    y = np.empty(g.output_shape, dtype=x.dtype)
    idx = np.empty(g.output_shape, dtype=np.int64) if return_indices else None
    if g.OH == g.OW == 1:  # global max pooling: one reduction per plane
        _global_max_pool(x, y, idx)
        return y, idx, "numpy_adaptive_max_pool"
    vt = _compute_dtype(x.dtype)  # float16 compared in float32 (exact)
    f16 = vt != x.dtype

    # Columns first, then rows: see the module docstring for why this order keeps PyTorch's rule.
    def specs(n, c, m, k):
        rows = _span_bound(m, g.H, g.OH)
        sp = [((n, c, rows, k), vt)]  # column maxima
        if return_indices:  # their columns, update masks for the column and the row pass, row winners
            sp += [((n, c, rows, k), np.int64), ((n, c, rows), np.bool_), ((n, c, rows), np.bool_),
                   ((n, c, k), np.bool_), ((n, c, k), np.bool_), ((n, c, m, k), np.int64)]
        return sp + ([((n, c, m, k), vt)] if f16 else [])

    def extra(n, c, m, k):  # the windows, np.take_along_axis's result
        return (m + k) * WINDOW_BYTES + (n * c * m * k * 8 if return_indices else 0)

    for (n0, n1), (c0, c1), (o0, o1), (q0, q1) in _blocks(g.output_shape, specs, extra):
        n, c, m, k = n1 - n0, c1 - c0, o1 - o0, q1 - q0
        hwin, wwin = _windows(o0, o1, g.H, g.OH), _windows(q0, q1, g.W, g.OW)
        r0, r1 = hwin[0][0], hwin[-1][1]
        sp = specs(n, c, m, k)
        sp[0] = ((n, c, r1 - r0, k), vt)
        if return_indices:
            sp[1:4] = [((n, c, r1 - r0, k), np.int64), ((n, c, r1 - r0), np.bool_), ((n, c, r1 - r0), np.bool_)]
        scratch = workspace(*sp)
        block = (slice(n0, n1), slice(c0, c1), slice(o0, o1), slice(q0, q1))
        yb = y[block]
        acc = scratch[-1] if f16 else yb
        xb = x[n0:n1, c0:c1, r0:r1]
        colmax = scratch[0]
        if not return_indices:
            for j, (s0, s1) in enumerate(wwin):
                np.maximum.reduce(xb[..., s0:s1], axis=3, dtype=vt, out=colmax[..., j])
            for i, (s0, s1) in enumerate(hwin):
                np.maximum.reduce(colmax[:, :, s0 - r0:s1 - r0], axis=2, out=acc[:, :, i])
        else:
            colarg, upd, isnan, upd2, isnan2, rowarg = scratch[1:7]
            for j, (s0, s1) in enumerate(wwin):
                best, where = colmax[..., j], colarg[..., j]
                best.fill(-np.inf)
                where.fill(s0)
                for t in range(s0, s1):
                    _nan_wins_update(best, where, xb[..., t], t, upd, isnan)
            for i, (s0, s1) in enumerate(hwin):
                best, where = acc[:, :, i], rowarg[:, :, i]
                best.fill(-np.inf)
                where.fill(s0 - r0)
                for t in range(s0, s1):
                    _nan_wins_update(best, where, colmax[:, :, t - r0], t - r0, upd2, isnan2)
            ib = idx[block]
            col = np.take_along_axis(colarg, rowarg, axis=2)
            rowarg += r0
            np.multiply(rowarg, g.W, out=ib)
            ib += col
        if f16:
            np.copyto(yb, acc)  # exact: acc holds float16 values
    return y, idx, "numpy_adaptive_max_pool"


def _global_max_pool(x: np.ndarray, y: np.ndarray, idx) -> None:
    """Max over each whole plane into ``y`` (N, C, 1, 1), and with ``idx`` its index under PyTorch's rule
    (the first maximum; in a plane holding NaN, its last NaN). Without indices one NaN-propagating
    reduction. With indices: ``np.argmax`` over each plane flattened (the first maximum, but the first
    NaN), the planes holding NaN searched again from the end; planes whose rows are not consecutive, or
    float16 ones, are copied (in the compute dtype) into the workspace a block at a time, and planes too
    large for it are taken in bands of rows whose winners are merged by the same rule."""
    N, C, H, W = x.shape
    vt = _compute_dtype(x.dtype)
    if idx is None:
        def specs(n, c):
            return [((n, c), vt)] if vt != x.dtype else []

        for (n0, n1), (c0, c1) in _blocks((N, C), specs):
            yb = y[n0:n1, c0:c1, 0, 0]
            (acc,) = workspace(*specs(n1 - n0, c1 - c0)) or (yb,)
            np.maximum.reduce(x[n0:n1, c0:c1], axis=(2, 3), dtype=vt, out=acc)
            if acc is not yb:
                np.copyto(yb, acc)
        return
    in_place = vt == x.dtype and _planes_flat(x) is not None

    def specs(n, c, h):
        copy = [] if in_place else [((n, c, h * W), vt)]
        return copy + [((n, c), vt), ((n, c), np.int64), ((n, c), np.bool_), ((n, c), np.bool_)]

    def extra(n, c, h):  # argmax's result, take_along_axis's, the NaN mask
        return n * c * (8 + vt.itemsize + 1)

    for (n0, n1), (c0, c1), (h0, h1) in _blocks((N, C, H), specs, extra):
        n, c = n1 - n0, c1 - c0
        scratch = workspace(*specs(n, c, h1 - h0))
        if in_place:
            flat = _planes_flat(x[n0:n1, c0:c1, h0:h1])
        else:
            flat = scratch.pop(0).reshape(n, c, h1 - h0, W)
            np.copyto(flat, x[n0:n1, c0:c1, h0:h1])
            flat = flat.reshape(n, c, (h1 - h0) * W)
        best, where, upd, isnan = scratch
        arg = flat.argmax(axis=2)
        vals = np.take_along_axis(flat, arg[..., None], axis=2)[..., 0]
        nan = np.isnan(vals)
        for i, j in zip(*np.nonzero(nan)):
            arg[i, j] = _last_nan(flat[i, j])
        arg += h0 * W
        yb, ib = y[n0:n1, c0:c1, 0, 0], idx[n0:n1, c0:c1, 0, 0]
        if h0 == 0:
            np.copyto(yb, vals)
            np.copyto(ib, arg)
        else:  # a later band of rows: PyTorch's rule decides between it and the rows before
            np.copyto(best, yb)
            np.copyto(where, ib)
            _nan_wins_update(best, where, vals, arg, upd, isnan)
            np.copyto(yb, best)
            np.copyto(ib, where)


def _last_nan(v: np.ndarray) -> int:
    """Index of the last NaN of the 1-D ``v`` (which holds one), searched from the end in pieces so the
    mask stays small."""
    piece = 1 << 16
    for stop in range(v.size, 0, -piece):
        start = max(0, stop - piece)
        hits = np.flatnonzero(np.isnan(v[start:stop]))
        if hits.size:
            return start + int(hits[-1])
    raise ValueError("no NaN")
