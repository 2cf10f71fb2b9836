"""Pooling gradients on the CPU with NumPy (rules in docs/pooling-gradients.md). Each function takes
``(grad_output, indices or None, geometry of the forward call, *options)`` with 4-D arrays and returns
``(grad_input, kernel id)``.

Max pooling (``scatter_max``, any number of spatial axes) is a scatter: each output's gradient is added at
its recorded index by ``np.add.at`` (sequential, in output order, so deterministic), after a few
vectorised passes that send every index which is not an in-bounds tap of its output's window to a
discarded slot (the documented rule; the CUDA gather ignores such indices by construction). The terms
are summed in output order, the CUDA kernel sums them in tap order: the two agree within the tolerance
model, not bitwise.

Average pooling is a GATHER over blocks of the input gradient, like the CUDA kernels
(``kernels/pool2d_backward.cu``): every output's term ``grad_output / divisor`` (the forward's divisor) is
computed once, then for an input block and each window tap ``(i, j)`` in row-major order, the outputs whose
tap lands inside the block form a rectangle of terms and the cells they land on a strided slice of the
block (input row ``oh*sh - ph + i*dh``), so each tap is one vectorised addition. Every input cell so
receives its terms in the kernels' order and precision (float16 in a float32 block), so this path gives
bitwise the CUDA kernel's average-pooling gradient (no scatter: one tap's slice never names a cell twice).

Adaptive pooling (2-D and 3-D run the same code: ``adaptive_avg_pool`` / ``adaptive_max_pool`` over the
geometry's ``spatial`` / ``out``). Average is separable: each block of the first input axis first receives
``grad_output / window length`` of each output along that axis whose window covers it (ascending), then each
later axis in turn spreads the previous pass's values, divided by its windows' lengths, over its windows
(ascending); when the windows tile the input (global pooling included) that is one broadcast of each output's
term over its window. Adaptive max pooling sends each output's gradient to its recorded index with
``np.bincount`` (a sequential float64 sum, in output order) over a block of the first input axis, an index
outside the output's window going to a discarded slot.

Memory: besides the gradient (for max pooling the float32 sums of float16, and one extra element), the
temporaries of a block (max: the offsets, targets, coordinates and masks of a block of at most
``SCATTER_BLOCK`` outputs; average: the ``grad_output``-sized terms when they fit in half the workspace,
else each tap's terms; the float32 block of float16; the separable pass of adaptive average pooling,
bincount's arrays) are bounded by ``workspace_limit()`` (``pool._blocks``), plus the 1-D per-row /
per-column divisors and windows (``AXIS_BYTES`` each).
"""

from __future__ import annotations

import math

import numpy as np

from .._geometry import tap_outputs
from .._pool_geometry import PoolGeometry, adaptive_window
from ._workspace import workspace, workspace_limit
from .pool import AXIS_BYTES, _blocks, _compute_dtype, _divisor_axes


SCATTER_BLOCK = 1 << 17  # outputs per block of scatter_max: its int64 temporaries stay in the L2 cache


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
    return flat[:math.prod(shape)].reshape(shape)


def _gather_pool(go, g: PoolGeometry, add_tap, tap_specs, held_bytes: int = 0):
    """The input gradient of max / avg pooling, block by block of the input: for each tap of each block
    ``add_tap(acc_rect, out_block, first_h, first_w, scratch)`` adds the tap's terms into ``acc_rect`` (a
    strided slice of the block's accumulator); ``out_block`` indexes ``grad_output`` (and the indices) at
    the outputs whose tap lands there. ``tap_specs(n, c, m, k)``: the flat scratch it needs for an
    ``n x c x m x k`` output rectangle. ``held_bytes``: temporaries the caller holds meanwhile."""
    ct = _compute_dtype(go.dtype)
    f16 = ct != go.dtype
    gi = (np.empty if f16 else np.zeros)((g.N, g.C, g.H, g.W), dtype=go.dtype)

    def specs(n, c, bh, bw):
        acc = [((n, c, bh, bw), ct)] if f16 else []
        return acc + tap_specs(n, c, _ceil_div(bh, g.sh), _ceil_div(bw, g.sw))

    def extra(n, c, bh, bw):
        return (bh + bw) * AXIS_BYTES + held_bytes

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


def _axis_window(o0: int, o1: int, k: int, s: int, p: int, d: int, size: int):
    """Along one axis, for outputs ``[o0, o1)``: ``(lo, length, start)``: the window's in-bounds
    coordinates lie in ``[lo, lo + length)`` (int64, uint64), and with dilation only those with
    ``(coordinate - start) % d == 0`` (``start``: the window's first tap, int64) are taps."""
    start = np.arange(o0, o1, dtype=np.int64) * s - p
    lo = np.maximum(start, 0)
    hi = np.minimum(start + (k - 1) * d + 1, size)
    return lo, np.maximum(hi - lo, 0).astype(np.uint64), start


def scatter_max(go, idx, spatial, windows, ct):
    """The input gradient of max pooling over any number of spatial axes: each output's gradient added at
    its recorded index (flat within its plane) when that index is an in-bounds tap of its window
    (docs/pooling-gradients.md), by one sequential ``np.add.at`` per block of outputs, in output order.

    ``go``/``idx``: ``(N, C, *out)``; ``spatial``: the input's spatial sizes; ``windows``: per axis
    ``(k, s, p, d)`` (``p`` the low-side padding); ``ct``: the dtype summed in. Returns a flat ``ct``
    array of ``N*C*prod(spatial) + 1`` sums, the last a discard slot for the indices that are not taps.

    The check, in few passes: the first axis on the flat index itself (its window's rows are one range of
    flat indices, which also keeps every accepted index inside the plane), then each further axis on the
    coordinate left by dividing out the axes after it, in int32 when the plane allows (half the memory
    traffic of int64). Each cell receives its terms in output order whatever the blocking (blocks of
    planes, then of the first output axis, visited in order), so the sums are bitwise the same on every
    run."""
    N, C, *out = go.shape
    dims = len(out)
    plane = math.prod(spatial)
    acc = np.zeros(N * C * plane + 1, dtype=ct)
    dump = N * C * plane
    rest = math.prod(out[1:])  # outputs per step of the first output axis
    it = np.int32 if plane < 2**31 else np.int64

    def specs(n, c, m):  # the flat offset (int64), target (int64), coordinates (3x it), go in ct, masks
        e = (n * c * m * rest,)
        return [(e, np.int64), (e, np.int64), (e, it), (e, it), (e, it), (e, ct), (e, np.bool_), (e, np.bool_)]

    def extra(n, c, m):  # blocks of at most SCATTER_BLOCK outputs
        small = n * c * m * rest <= SCATTER_BLOCK or n * c * m == 1
        return (m + sum(out[1:])) * 4 * AXIS_BYTES + (0 if small else workspace_limit() + 1)

    def axis_arrays(axis, scale=1):  # (lo, length, start) of an axis' windows, shaped to broadcast
        k, s, p, d = windows[axis]
        shape = [1] * (dims + 2)
        shape[axis + 2] = -1
        lo, length, start = _axis_window(0, out[axis], k, s, p, d, spatial[axis])
        return d, lo.reshape(shape) * scale, length.reshape(shape) * np.uint64(scale), start.reshape(shape)

    inner = math.prod(spatial[1:])
    d0, lo0, len0, start0 = axis_arrays(0, inner)
    later = [(spatial[a], axis_arrays(a)) for a in range(dims - 1, 0, -1)]  # last axis first
    for (n0, n1), (c0, c1), (o0, o1) in _blocks((N, C, out[0]), specs, extra):
        n, c, m = n1 - n0, c1 - c0, o1 - o0
        shape = (n, c, m, *out[1:])
        rel, tgt, t, quo, tmpi, terms, bad, tmp = (_scratch(a.reshape(-1), shape)
                                                    for a in workspace(*specs(n, c, m)))
        ib = idx[n0:n1, c0:c1, o0:o1]
        rows = slice(o0, o1)
        # first axis: the window's in-bounds rows are the flat indices [lo*inner, (lo+length)*inner)
        np.subtract(ib, lo0[:, :, rows], out=rel)
        np.greater_equal(rel.view(np.uint64), len0[:, :, rows], out=bad)
        if d0 > 1:  # and a tap row: (row - start) % d == 0, row = flat // inner
            np.floor_divide(ib, inner, out=tgt)
            np.subtract(tgt, start0[:, :, rows], out=tgt)
            np.remainder(tgt, d0, out=tgt)
            np.not_equal(tgt, 0, out=tmp)
            bad |= tmp
        if dims > 1:
            np.copyto(t, rel, casting="unsafe")  # an accepted offset is below the plane size; others are bad
            if it is np.int64:
                t = rel
        for size, (d, lo, length, start) in later:  # t = rest * size + coordinate
            np.floor_divide(t, size, out=quo)
            np.multiply(quo, size, out=tmpi)
            np.subtract(t, tmpi, out=tmpi)  # the coordinate along this axis
            if d > 1:  # not a tap of the dilated window: (coordinate - start) % d != 0
                np.subtract(tmpi, start.astype(it), out=t)
                np.remainder(t, d, out=t)
                np.not_equal(t, 0, out=tmp)
                bad |= tmp
            np.subtract(tmpi, lo.astype(it), out=tmpi)
            np.greater_equal(tmpi.view(np.uint32 if it is np.int32 else np.uint64), length, out=tmp)
            bad |= tmp
            t, quo = quo, t
        # the cell's place in the flat gradient; indices that are no tap go to the discard slot
        offsets = (np.arange(n0, n1, dtype=np.int64)[:, None] * C + np.arange(c0, c1, dtype=np.int64)) * plane
        np.add(ib, offsets.reshape((n, c) + (1,) * dims), out=tgt)
        if bad.any():
            tgt[bad] = dump
        gob = go[n0:n1, c0:c1, o0:o1]
        if gob.dtype != ct or not gob.flags.c_contiguous:
            gob = terms
            np.copyto(terms, go[n0:n1, c0:c1, o0:o1])
        np.add.at(acc, tgt.reshape(-1), gob.reshape(-1))  # sequential: output order
    return acc


def _finish(acc, shape, dtype):
    """The gradient of ``shape`` and ``dtype`` from ``scatter_max``'s sums (one rounding for float16)."""
    sums = acc[:-1].reshape(shape)
    return sums.astype(dtype) if sums.dtype != dtype else sums


def max_pool2d(go: np.ndarray, idx: np.ndarray, g: PoolGeometry):
    ct = _compute_dtype(go.dtype)
    acc = scatter_max(go, idx, (g.H, g.W), ((g.kh, g.sh, g.ph, g.dh), (g.kw, g.sw, g.pw, g.dw)), ct)
    return _finish(acc, (g.N, g.C, g.H, g.W), go.dtype), "numpy_max_pool_backward"


def avg_pool2d(go: np.ndarray, idx, g: PoolGeometry, count_include_pad: bool, divisor_override):
    if g.dh != 1 or g.dw != 1:
        raise ValueError("avg_pool2d has no dilation; the geometry must have dilation (1, 1)")
    ct = _compute_dtype(go.dtype)
    div_h, div_w = _divisor_axes(g, (0, g.OH), (0, g.OW), count_include_pad, divisor_override)
    div_h, div_w = div_h.astype(ct), div_w.astype(ct)

    if ((g.sh, g.sw) == (g.kh, g.kw) and (g.OH * g.kh, g.OW * g.kw) == (g.H, g.W)
            and not (g.ph or g.pb or g.pw or g.pr)):
        # The windows tile the input: every cell receives exactly one term, so the gradient is each term
        # written over its window, each cell once. "+ 0" as the kernel's sum from 0 (a -0.0 term gives
        # +0.0), so the bits stay the kernel's.
        terms = np.divide(go, (div_h[:, None] * div_w[None, :]), dtype=ct)
        gi = np.empty((g.N, g.C, g.H, g.W), dtype=go.dtype)
        for i in range(g.kh):  # one strided pass per tap (a broadcast over tiny inner axes is slower)
            for j in range(g.kw):
                np.add(terms, ct.type(0), out=gi[:, :, i::g.kh, j::g.kw], casting="same_kind")
        return gi, "numpy_avg_pool_backward"
    terms_bytes = math.prod(go.shape) * ct.itemsize
    if terms_bytes <= workspace_limit() // 2:  # every output's term once, then one addition per tap
        terms_all = np.empty(go.shape, dtype=ct)
        np.divide(go, div_h[:, None] * div_w[None, :], out=terms_all)  # by the forward's divisors

        def add_tap(acc, out_block, hf, wf, scratch):
            np.add(acc, terms_all[out_block], out=acc)

        gi = _gather_pool(go, g, add_tap, lambda n, c, m, k: [], terms_bytes)
        return gi, "numpy_avg_pool_backward"

    def tap_specs(n, c, m, k):  # each tap's terms computed for its rectangle
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


def _at(a: np.ndarray, axis: int, key) -> np.ndarray:
    """``a[..., key, ...]`` with ``key`` on ``axis``."""
    return a[(slice(None),) * axis + (key,)]


def _name(g, op: str) -> str:
    return f"numpy_adaptive_{op}_pool" + ("3d" if g.dims == 3 else "") + "_backward"


def adaptive_avg_pool(go: np.ndarray, idx, g):
    """Adaptive average pooling's input gradient over any number of spatial axes (``g``: ``AdaptiveGeometry``
    or ``AdaptiveGeometryND``), separable: per block of the first input axis, the first axis' pass spreads
    ``grad_output / window length`` of each covering output (ascending) over its window, then each later
    axis in turn spreads the previous pass's values, divided by its windows' lengths, over its windows."""
    ct = _compute_dtype(go.dtype)
    f16 = ct != go.dtype
    if all(n % o == 0 for n, o in zip(g.spatial, g.out)):  # windows tile the input (global pooling included)
        return _tiled_adaptive_avg(go, g, ct), _name(g, "avg")
    d, (H, *rest), (OH, *orest) = g.dims, g.spatial, g.out
    gi = (np.empty if f16 else np.zeros)(g.input_shape, dtype=go.dtype)
    wins = [[adaptive_window(j, n, o) for j in range(o)] for n, o in zip(g.spatial, g.out)]

    def shapes(n, c, bh):  # the passes' results: axes before a at input sizes, a and after at output sizes
        return [(n, c, bh, *rest[:a - 1], *orest[a - 1:]) for a in range(1, d + 1)]

    def specs(n, c, bh):  # each pass but the last, each pass' terms, the float32 block
        sh = shapes(n, c, bh)
        terms = [(s[:a + 2] + (1,) + s[a + 3:], ct) for a, s in enumerate(sh)]
        return [(s, ct) for s in sh[:-1]] + terms + ([(sh[-1], ct)] if f16 else [])

    def extra(n, c, bh):
        return (bh + sum(orest)) * AXIS_BYTES

    for (n0, n1), (c0, c1), (h0, h1) in _blocks((g.N, g.C, H), specs, extra):
        n, c, bh = n1 - n0, c1 - c0, h1 - h0
        bufs = workspace(*specs(n, c, bh))
        passes, terms = bufs[:d - 1], bufs[d - 1:2 * d - 1]
        block = (slice(n0, n1), slice(c0, c1), slice(h0, h1))
        acc = bufs[-1] if f16 else gi[block]
        outs = passes + [acc]
        for o in outs if f16 else passes:  # (gi itself is zeros)
            o.fill(0)
        for oh in range(*_covering_outputs(h0, h1, H, OH)):  # the first axis: only the block's rows
            s, e = wins[0][oh]
            a, b = max(s, h0), min(e, h1)
            if a < b:
                np.divide(go[n0:n1, c0:c1, oh:oh + 1], ct.type(e - s), out=terms[0])
                np.add(outs[0][:, :, a - h0:b - h0], terms[0], out=outs[0][:, :, a - h0:b - h0])
        for a in range(1, d):  # each later axis: its output windows ascending
            ax = a + 2
            for o, (s, e) in enumerate(wins[a]):
                np.divide(_at(outs[a - 1], ax, slice(o, o + 1)), ct.type(e - s), out=terms[a])
                np.add(_at(outs[a], ax, slice(s, e)), terms[a], out=_at(outs[a], ax, slice(s, e)))
        if f16:
            np.copyto(gi[block], acc)
    return gi, _name(g, "avg")


def _tiled_adaptive_avg(go, g, ct):
    """Adaptive average pooling whose windows tile the input (every ``n % o == 0``): every cell lies in exactly
    one window, so the gradient is each output's term broadcast over its window, the term computed as the
    general path computes it (``grad_output`` divided by each axis' window length in turn, in ``ct``): the
    same bits. One pass over the gradient, the terms ``grad_output``-sized."""
    ks = [n // o for n, o in zip(g.spatial, g.out)]
    terms = np.divide(go, ct.type(ks[0]), dtype=ct)
    for k in ks[1:]:
        np.divide(terms, ct.type(k), out=terms)
    gi = np.empty(g.input_shape, dtype=go.dtype)
    split = gi.reshape(g.N, g.C, *(v for o, k in zip(g.out, ks) for v in (o, k)))
    np.copyto(split, terms[(Ellipsis,) + (slice(None), None) * g.dims], casting="same_kind")
    return gi


def adaptive_max_pool(go: np.ndarray, idx: np.ndarray, g):
    """Adaptive max pooling's input gradient over any number of spatial axes: per block of the first input
    axis, ``np.bincount`` of the covering outputs' gradients at their indices (flat in the plane), an index
    that is not a cell of its output's window going to a discarded slot."""
    gi = np.empty(g.input_shape, dtype=go.dtype)
    (H, *rest), (OH, *orest), d = g.spatial, g.out, g.dims
    inner, plane = math.prod(rest), math.prod(g.spatial)
    wins = [np.array([adaptive_window(j, n, o) for j in range(o)], dtype=np.int64).reshape(o, 2)
            for n, o in zip(g.spatial, g.out)]

    def specs(n, c, bh):  # per output of the rows meeting the block: rest, quotient, coordinate, target; masks
        m = (n, c, _row_bound(bh, H, OH), *orest)
        return [(m, np.int64)] * 4 + [(m, np.bool_), (m, np.bool_)]

    def extra(n, c, bh):  # the weights flattened and as float64, bincount's result
        return (n * c * _row_bound(bh, H, OH) * math.prod(orest) * 16 + (n * c * bh * inner + 1) * 8
                + (bh + sum(orest)) * AXIS_BYTES)

    for (n0, n1), (c0, c1), (h0, h1) in _blocks((g.N, g.C, H), specs, extra):
        n, c, bh = n1 - n0, c1 - c0, h1 - h0
        o_lo, o_hi = _covering_outputs(h0, h1, H, OH)
        shape = (n, c, o_hi - o_lo, *orest)
        t, quo, coord, target, ok, tmp = (_scratch(a.reshape(-1), shape) for a in workspace(*specs(n, c, bh)))
        ib = idx[n0:n1, c0:c1, o_lo:o_hi]
        # valid: the index names a cell of its own window, inside this block's rows (docs/pooling-gradients.md)
        np.greater_equal(ib, 0, out=ok)
        np.less(ib, plane, out=tmp)
        ok &= tmp
        np.copyto(t, ib)
        for a in range(d - 1, -1, -1):  # last axis first: coordinate = t % size, t //= size
            if a:
                np.floor_divide(t, g.spatial[a], out=quo)
                np.multiply(quo, g.spatial[a], out=coord)
                np.subtract(t, coord, out=coord)
                t, quo = quo, t
            else:  # in [0, H) for a valid index; also inside the block's rows
                coord = t
                np.greater_equal(coord, h0, out=tmp)
                ok &= tmp
                np.less(coord, h1, out=tmp)
                ok &= tmp
            lo_hi = wins[a][o_lo:o_hi] if a == 0 else wins[a]
            shape_b = [1] * (d + 2)
            shape_b[a + 2] = -1
            np.greater_equal(coord, lo_hi[:, 0].reshape(shape_b), out=tmp)
            ok &= tmp
            np.less(coord, lo_hi[:, 1].reshape(shape_b), out=tmp)
            ok &= tmp
        # target = (plane in block * bh + h - h0) * inner + rest; invalid ones go to the discarded last slot
        offsets = (np.arange(n * c, dtype=np.int64) * (bh * inner) - h0 * inner).reshape((n, c) + (1,) * d)
        np.add(ib, offsets, out=target)
        dump = n * c * bh * inner
        np.logical_not(ok, out=tmp)
        np.copyto(target, dump, where=tmp)
        weights = go[n0:n1, c0:c1, o_lo:o_hi].reshape(-1)
        sums = np.bincount(target.reshape(-1), weights=weights, minlength=dump + 1)  # sequential, float64
        np.copyto(gi[n0:n1, c0:c1, h0:h1], sums[:dump].reshape((n, c, bh, *rest)))
    return gi, _name(g, "max")


adaptive_avg_pool2d = adaptive_avg_pool3d = adaptive_avg_pool
adaptive_max_pool2d = adaptive_max_pool3d = adaptive_max_pool


# --------------------------------------------------------------------------------------------
# 3-D pooling (1-D runs as 2-D pooling of one-row planes)
# --------------------------------------------------------------------------------------------

def max_pool3d(go: np.ndarray, idx: np.ndarray, g):
    """``scatter_max`` over the three spatial axes (``g``: a ``PoolGeometryND``)."""
    ct = _compute_dtype(go.dtype)
    windows = tuple((k, s, lo, d) for k, s, (lo, _), d in zip(g.kernel, g.stride, g.padding, g.dilation))
    acc = scatter_max(go, idx, g.spatial, windows, ct)
    return _finish(acc, g.input_shape, go.dtype), "numpy_max_pool3d_backward"


def avg_pool3d(go: np.ndarray, idx, g, count_include_pad: bool, divisor_override):
    """Each output's term ``grad_output / divisor`` (the forward's 3-D divisor, ``pool_nd``) spread over its
    window: for each output depth and each of its depth taps in order, the 2-D spread of that depth slice of
    terms (``avg_pool2d`` with divisor 1) added to the tapped input slice, in the compute dtype."""
    from .pool import avg_pool_divisor, divisor_extent
    ct = _compute_dtype(go.dtype)
    g2 = g.plane
    (D, *_), (kd, *_), (sd, *_), ((pd, pd_hi), *_), (dd, *_) = (g.spatial, g.kernel, g.stride, g.padding,
                                                               g.dilation)
    if divisor_override:
        div = np.full((g.out[0], 1, 1), divisor_override, dtype=np.int64)
    else:
        div = (divisor_extent(0, g.out[0], kd, sd, pd, pd_hi, D, count_include_pad)[:, None, None]
               * avg_pool_divisor(g2, count_include_pad, None)[None])
    terms = np.divide(go, div.astype(ct), dtype=ct)
    gi = np.zeros(g.input_shape, dtype=ct)
    for od in range(g.out[0]):
        for z in (od * sd - pd + a * dd for a in range(kd)):
            if 0 <= z < D:
                spread, _ = avg_pool2d(terms[:, :, od], None, g2, True, 1)
                gi[:, :, z] += spread
    return (gi if gi.dtype == go.dtype else gi.astype(go.dtype)), "numpy_avg_pool3d_backward"
