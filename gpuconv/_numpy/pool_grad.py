"""Pooling gradients on the CPU with NumPy (rules in docs/pooling-gradients.md). Each function takes
``(grad_output, indices or None, geometry of the forward call, *options)`` with 4-D arrays and returns
``(grad_input, kernel id)``.

Max and average pooling are computed as a GATHER over blocks of the input gradient, like the CUDA kernels
(``kernels/pool2d_backward.cu``): for an input block and each window tap ``(i, j)`` in row-major order, the
outputs whose tap lands inside the block form a rectangle of ``grad_output`` and the cells they land on a
strided slice of the block (input row ``oh*sh - ph + i*dh``), so each tap is one vectorised addition of
that rectangle into that slice: max pooling adds only where the recorded index equals the cell's ``h*W +
w``, average pooling adds ``grad_output / divisor`` with the forward's divisor. Every input cell so receives
its terms in the kernels' order (tap rows, then tap columns), in the kernels' precision (float16 in a
float32 block, float32 and float64 in themselves), so this path gives bitwise the CUDA kernels' results for
max and average pooling, and the same result on every run (no scatter: one tap's slice never names a cell
twice).

Adaptive average pooling is separable: each block of input rows first receives ``grad_output / rows of the
window`` of each output row whose window covers it (output rows ascending), then each output column's
window of columns that divided by its width (ascending). Adaptive max pooling sends each output's gradient to
its recorded index with ``np.bincount`` (a sequential float64 sum, in output order) over a block of input
rows, an index outside the output's window going to a discarded slot.

Memory: besides the gradient, the temporaries of a block (the float32 block of float16, the tap's index
and mask rectangles, the separable pass of adaptive average pooling, bincount's arrays) are bounded by
``workspace_limit()`` (blocks as small as one row of one plane if need be; ``pool._blocks``), plus the
1-D per-row / per-column divisors and windows (``AXIS_BYTES`` each).
"""

from __future__ import annotations

import numpy as np

from .._geometry import AdaptiveGeometry, PoolGeometry, adaptive_window, tap_outputs
from ._workspace import workspace
from .pool import AXIS_BYTES, _blocks, _compute_dtype, _divisor_axes


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _gather_taps(g: PoolGeometry, rows, cols):
    """Yield, in row-major window order, ``(out_rect, in_rect, first_h, first_w)`` for every tap that
    lands inside the input block ``rows`` x ``cols`` (``(start, stop)`` each): ``out_rect`` indexes the
    last two axes of ``grad_output``, ``in_rect`` those of the block (a strided slice), ``first_*`` the
    input coordinates of its first cell."""
    (h0, h1), (w0, w1) = rows, cols
    for i in range(g.kh):
        o_lo, o_hi, hf = tap_outputs(0, g.OH, h0, h1, i * g.dh - g.ph, g.sh)
        if o_hi <= o_lo:
            continue
        for j in range(g.kw):
            q_lo, q_hi, wf = tap_outputs(0, g.OW, w0, w1, j * g.dw - g.pw, g.sw)
            if q_hi <= q_lo:
                continue
            in_rect = (slice(hf - h0, hf - h0 + (o_hi - o_lo - 1) * g.sh + 1, g.sh),
                       slice(wf - w0, wf - w0 + (q_hi - q_lo - 1) * g.sw + 1, g.sw))
            yield (slice(o_lo, o_hi), slice(q_lo, q_hi)), in_rect, hf, wf


def _scratch(flat: np.ndarray, shape) -> np.ndarray:
    """The first ``prod(shape)`` elements of a 1-D workspace array as a C-contiguous array of ``shape``."""
    return flat[:int(np.prod(shape))].reshape(shape)


def _gather_pool(go, g: PoolGeometry, add_tap, tap_specs):
    """The input gradient of max / avg pooling, block by block of the input: for each tap of each block
    ``add_tap(acc_rect, out_block, first_h, first_w, scratch)`` adds the tap's terms into ``acc_rect`` (a
    strided slice of the block's accumulator); ``out_block`` indexes ``grad_output`` (and the indices) at
    the outputs whose tap lands there. ``tap_specs(n, c, m, k)``: the flat scratch it needs for an
    ``n x c x m x k`` output rectangle."""
    ct = _compute_dtype(go.dtype)
    f16 = ct != go.dtype
    gi = (np.empty if f16 else np.zeros)((g.N, g.C, g.H, g.W), dtype=go.dtype)

    def specs(n, c, bh, bw):
        acc = [((n, c, bh, bw), ct)] if f16 else []
        return acc + tap_specs(n, c, _ceil_div(bh, g.sh), _ceil_div(bw, g.sw))

    def extra(n, c, bh, bw):
        return (bh + bw) * AXIS_BYTES

    for (n0, n1), (c0, c1), rows, cols in _blocks(gi.shape, specs, extra):
        scratch = workspace(*specs(n1 - n0, c1 - c0, rows[1] - rows[0], cols[1] - cols[0]))
        block = (slice(n0, n1), slice(c0, c1), slice(*rows), slice(*cols))
        acc = scratch.pop(0) if f16 else gi[block]
        if f16:
            acc.fill(0)
        for out_rect, in_rect, hf, wf in _gather_taps(g, rows, cols):
            add_tap(acc[(Ellipsis, *in_rect)], (slice(n0, n1), slice(c0, c1), *out_rect), hf, wf, scratch)
        if f16:
            np.copyto(gi[block], acc)  # one rounding of the float32 sums
    return gi


def max_pool2d(go: np.ndarray, idx: np.ndarray, g: PoolGeometry):
    def tap_specs(n, c, m, k):
        return [((n * c * m * k,), np.bool_), ((m * k,), np.int64)]

    def add_tap(acc, out_block, hf, wf, scratch):
        mask_flat, target_flat = scratch
        gor = go[out_block]
        m, k = gor.shape[2:]
        # the cells' flat indices h*W + w: an output's gradient goes where its recorded index names the cell
        target = _scratch(target_flat, (m, k))
        np.add((np.arange(m, dtype=np.int64) * g.sh + hf)[:, None] * g.W,
               (np.arange(k, dtype=np.int64) * g.sw + wf)[None, :], out=target)
        mask = _scratch(mask_flat, gor.shape)
        np.equal(idx[out_block], target, out=mask)
        np.add(acc, gor, out=acc, where=mask)

    return _gather_pool(go, g, add_tap, tap_specs), "numpy_max_pool_backward"


def avg_pool2d(go: np.ndarray, idx, g: PoolGeometry, count_include_pad: bool, divisor_override):
    if g.dh != 1 or g.dw != 1:
        raise ValueError("avg_pool2d has no dilation; the geometry must have dilation (1, 1)")
    ct = _compute_dtype(go.dtype)
    div_h, div_w = _divisor_axes(g, (0, g.OH), (0, g.OW), count_include_pad, divisor_override)
    div_h, div_w = div_h.astype(ct), div_w.astype(ct)

    def tap_specs(n, c, m, k):
        return [((n * c * m * k,), ct), ((m * k,), ct)]

    def add_tap(acc, out_block, hf, wf, scratch):
        terms_flat, div_flat = scratch
        gor = go[out_block]
        divisor = _scratch(div_flat, gor.shape[2:])
        np.multiply(div_h[out_block[2], None], div_w[None, out_block[3]], out=divisor)  # the forward's
        terms = _scratch(terms_flat, gor.shape)
        np.divide(gor, divisor, out=terms)
        np.add(acc, terms, out=acc)

    return _gather_pool(go, g, add_tap, tap_specs), "numpy_avg_pool_backward"


# --------------------------------------------------------------------------------------------
# adaptive pooling
# --------------------------------------------------------------------------------------------

def _covering_outputs(h0: int, h1: int, size: int, out: int) -> tuple[int, int]:
    """``[lo, hi)``: the outputs whose adaptive windows meet input ``[h0, h1)``."""
    return (h0 * out) // size, _ceil_div(h1 * out, size)


def _row_bound(bh: int, size: int, out: int) -> int:
    """At most how many outputs' windows meet ``bh`` consecutive inputs."""
    return min(out, bh * out // size + 2)


def adaptive_avg_pool2d(go: np.ndarray, idx, g: AdaptiveGeometry):
    ct = _compute_dtype(go.dtype)
    f16 = ct != go.dtype
    gi = (np.empty if f16 else np.zeros)((g.N, g.C, g.H, g.W), dtype=go.dtype)
    wwin = [adaptive_window(j, g.W, g.OW) for j in range(g.OW)]

    def specs(n, c, bh):  # rows pass, one output row of terms, one column of terms, the float32 block
        sp = [((n, c, bh, g.OW), ct), ((n, c, 1, g.OW), ct), ((n, c, bh, 1), ct)]
        return sp + ([((n, c, bh, g.W), ct)] if f16 else [])

    def extra(n, c, bh):
        return (bh + g.OW) * AXIS_BYTES

    for (n0, n1), (c0, c1), (h0, h1) in _blocks((g.N, g.C, g.H), specs, extra):
        rows, row_terms, col_terms, *acc = workspace(*specs(n1 - n0, c1 - c0, h1 - h0))
        block = (slice(n0, n1), slice(c0, c1), slice(h0, h1))
        acc = acc[0] if f16 else gi[block]
        if f16:
            acc.fill(0)
        rows.fill(0)
        for oh in range(*_covering_outputs(h0, h1, g.H, g.OH)):
            s, e = adaptive_window(oh, g.H, g.OH)
            a, b = max(s, h0), min(e, h1)
            if a < b:
                np.divide(go[n0:n1, c0:c1, oh:oh + 1], ct.type(e - s), out=row_terms)
                np.add(rows[:, :, a - h0:b - h0], row_terms, out=rows[:, :, a - h0:b - h0])
        for ow, (s, e) in enumerate(wwin):
            np.divide(rows[..., ow:ow + 1], ct.type(e - s), out=col_terms)
            np.add(acc[..., s:e], col_terms, out=acc[..., s:e])
        if f16:
            np.copyto(gi[block], acc)
    return gi, "numpy_adaptive_avg_pool_backward"


def adaptive_max_pool2d(go: np.ndarray, idx: np.ndarray, g: AdaptiveGeometry):
    gi = np.empty((g.N, g.C, g.H, g.W), dtype=go.dtype)
    H, W = g.H, g.W
    hwin = np.array([adaptive_window(i, H, g.OH) for i in range(g.OH)], dtype=np.int64).reshape(g.OH, 2)
    wwin = np.array([adaptive_window(j, W, g.OW) for j in range(g.OW)], dtype=np.int64).reshape(g.OW, 2)

    def specs(n, c, bh):  # per output of the rows meeting the block: row, column, target; a mask
        m = (n, c, _row_bound(bh, H, g.OH), g.OW)
        return [(m, np.int64), (m, np.int64), (m, np.int64), (m, np.bool_), (m, np.bool_)]

    def extra(n, c, bh):  # the weights flattened and as float64, bincount's result
        return n * c * _row_bound(bh, H, g.OH) * g.OW * 16 + (n * c * bh * W + 1) * 8 + (bh + g.OW) * AXIS_BYTES

    for (n0, n1), (c0, c1), (h0, h1) in _blocks((g.N, g.C, H), specs, extra):
        n, c, bh = n1 - n0, c1 - c0, h1 - h0
        o_lo, o_hi = _covering_outputs(h0, h1, H, g.OH)
        shape = (n, c, o_hi - o_lo, g.OW)
        hq, wq, target, ok, tmp = (_scratch(a.reshape(-1), shape) for a in workspace(*specs(n, c, bh)))
        ib = idx[n0:n1, c0:c1, o_lo:o_hi]
        # valid: the index names a cell of its own window, inside this block's rows (docs/pooling-gradients.md)
        np.greater_equal(ib, 0, out=ok)
        np.less(ib, H * W, out=tmp)
        ok &= tmp
        np.floor_divide(ib, W, out=hq)
        np.remainder(ib, W, out=wq)
        for arr, lo_hi, axis in ((hq, hwin[o_lo:o_hi], 2), (wq, wwin, 3)):
            shape_b = [1, 1, 1, 1]
            shape_b[axis] = -1
            np.greater_equal(arr, lo_hi[:, 0].reshape(shape_b), out=tmp)
            ok &= tmp
            np.less(arr, lo_hi[:, 1].reshape(shape_b), out=tmp)
            ok &= tmp
        np.greater_equal(hq, h0, out=tmp)
        ok &= tmp
        np.less(hq, h1, out=tmp)
        ok &= tmp
        # target = ((plane in block) * bh + h - h0) * W + w; invalid ones go to the discarded last slot
        plane = (np.arange(n * c, dtype=np.int64) * (bh * W) - h0 * W).reshape(n, c, 1, 1)
        np.add(ib, plane, out=target)
        dump = n * c * bh * W
        np.logical_not(ok, out=tmp)
        np.copyto(target, dump, where=tmp)
        weights = go[n0:n1, c0:c1, o_lo:o_hi].reshape(-1)
        sums = np.bincount(target.reshape(-1), weights=weights, minlength=dump + 1)  # sequential, float64
        np.copyto(gi[n0:n1, c0:c1, h0:h1], sums[:dump].reshape(n, c, bh, W))
    return gi, "numpy_adaptive_max_pool_backward"
