"""Adaptive pooling on the CPU with NumPy, over any number of spatial axes: 2-D and 3-D run the same code (the
geometry's ``spatial`` / ``out`` say how many axes; 1-D is the 2-D code on one-row planes). ``pool.py`` holds
max and average pooling and the shared block and NaN helpers; its docstring describes both.

Adaptive pooling is separable: reduce the last axis over each of its output windows first, then the axis
before it, ..., the first spatial axis last. For max that order also keeps PyTorch's tie and NaN rules (the
first maximum in row-major (depth, row, column) order; the last NaN in that order wins): each pass keeps, per
line, the first maximum or the last NaN of its window, so the later passes see each line's winner and pick,
by the same rule, the first line holding the maximum or the last line holding a NaN. The winners' coordinates
(one per pass) are composed into the flat index at the end. A pass does not reduce each window on its
own (NumPy is slow at many short reductions over strided elements: 3x PyTorch): it gathers every window's
``t``-th element at once (``np.take``, or a strided view where they are evenly spaced; windows shorter than
the longest repeat their last element) and updates the running maxima elementwise, one gather and one update
per tap of the longest window.
Adaptive average pooling whose windows all have the same size (every ``n % o == 0``: non-overlapping) is one
reshape and one reduction instead; global average pooling (output 1 on every axis) is a BLAS matrix-vector
product with a vector of ones.

Memory: the output (and indices), plus per block of outputs (``pool._blocks``, bounded by
``workspace_limit()``) each pass's partial result (the first axes still at the span of input the block's
windows read), for max one pass's gathered values at one tap, with indices each pass's winners and one
pass's two masks and tap numbers, and for float16 a float32 block; NumPy's own temporaries (the gather from
a non-contiguous input, the tap coordinates, the index composition) are counted in each block's ``extra``.
"""

from __future__ import annotations

import math

import numpy as np

from .._pool_geometry import AdaptiveGeometry, adaptive_window
from ._workspace import workspace, workspace_bytes, workspace_limit
from .pool import AXIS_BYTES, SMALL_ARRAY_BYTES, _blocks, _compute_dtype, _isnan, _nan_wins_update


def _planes_flat(x: np.ndarray):
    """``x`` (n, c, *spatial) as (n, c, prod(spatial)) without a copy, or None when its planes are not each
    one contiguous run."""
    n, c, *spatial = x.shape
    step = x.itemsize
    for size, stride in zip(reversed(spatial), reversed(x.strides[2:])):
        if size != 1 and stride != step:
            return None
        step *= size
    return x.reshape(n, c, math.prod(spatial))


def _windows(o0: int, o1: int, size: int, out: int):
    """The ``[start, end)`` adaptive windows of outputs ``o0..o1-1`` along an axis of ``size``."""
    return [adaptive_window(i, size, out) for i in range(o0, o1)]


def _span_bound(m: int, size: int, out: int) -> int:
    """Input rows read by any ``m`` consecutive adaptive windows, at most (``ceil(o1*size/out) -
    floor(o0*size/out) < m*size/out + 2``)."""
    return min(size, m * size // out + 2)


WINDOW_BYTES = 128  # a window as a Python tuple of two ints, at most (blocks count it: _windows per block)


def _at(a: np.ndarray, axis: int, key) -> np.ndarray:
    """``a[..., key, ...]`` with ``key`` on ``axis``."""
    return a[(slice(None),) * axis + (key,)]


def _pass_shapes(n: int, c: int, m, spans) -> list:
    """The results of the separable passes for an ``n x c x m[0] x ...`` block of outputs, in pass order (last
    axis first): the pass over axis ``a`` has reduced the axes from ``a`` on to their ``m`` windows, the axes
    before ``a`` are still the ``spans`` of input the block reads. The last one is the block's shape."""
    d = len(m)
    return [(n, c, *spans[:a], *m[a:]) for a in range(d - 1, -1, -1)]


def _bounds(g, m) -> list:
    return [_span_bound(mi, size, o) for mi, size, o in zip(m, g.spatial, g.out)]


def _block(g, block):
    """``(n, c, m, windows, spans, slices)`` of an output block ``((n0, n1), (c0, c1), (o0, o1), ...)``:
    ``windows`` per axis; ``spans`` the ``(start, stop)`` of input they read; ``slices`` index the input."""
    (n0, n1), (c0, c1), *ob = block
    wins = [_windows(o0, o1, size, o) for (o0, o1), size, o in zip(ob, g.spatial, g.out)]
    spans = [(w[0][0], w[-1][1]) for w in wins]
    slices = (slice(n0, n1), slice(c0, c1), *(slice(r0, r1) for r0, r1 in spans))
    return n1 - n0, c1 - c0, [o1 - o0 for o0, o1 in ob], wins, spans, slices


def _name(g, op: str) -> str:
    return f"numpy_adaptive_{op}_pool" + ("3d" if g.dims == 3 else "")


def adaptive_avg_pool(x: np.ndarray, g):
    """Adaptive average pooling of ``x`` (N, C, *spatial) over ``g`` (``AdaptiveGeometry`` or ``...ND``)."""
    ct = _compute_dtype(x.dtype)
    y = np.empty(g.output_shape, dtype=x.dtype)
    f16 = ct != x.dtype
    d = g.dims
    if all(n % o == 0 for n, o in zip(g.spatial, g.out)):  # equal, non-overlapping windows
        if all(o == 1 for o in g.out):
            _global_avg_pool(x, y, ct)
            return y, _name(g, "avg")
        ks = [n // o for n, o in zip(g.spatial, g.out)]
        xr = x.reshape(g.N, g.C, *(v for o, k in zip(g.out, ks) for v in (o, k)))  # splitting axes: a view

        def specs(n, c, *m):
            return [((n, c, *m), ct)] if f16 else []

        for block in _blocks(g.output_shape, specs):
            yb = y[tuple(slice(*r) for r in block)]
            (acc,) = workspace(*specs(*(r1 - r0 for r0, r1 in block))) or (yb,)
            xb = xr[(slice(*block[0]), slice(*block[1]), *(s for r in block[2:] for s in (slice(*r), slice(None))))]
            np.sum(xb, axis=tuple(range(3, 3 + 2 * d, 2)), dtype=ct, out=acc)
            acc /= math.prod(ks)
            if f16:
                np.copyto(yb, acc)
        return y, _name(g, "avg")

    def specs(n, c, *m, spans=None):  # the passes but the last, the counts, the float32 block of float16
        shapes = _pass_shapes(n, c, m, spans or _bounds(g, m))
        return [(s, ct) for s in shapes[:-1]] + [(tuple(m), ct)] + ([(shapes[-1], ct)] if f16 else [])

    def extra(n, c, *m):
        return sum(m) * (WINDOW_BYTES + AXIS_BYTES)

    for block in _blocks(g.output_shape, specs, extra):
        n, c, m, wins, spans, slices = _block(g, block)
        bufs = workspace(*specs(n, c, *m, spans=[r1 - r0 for r0, r1 in spans]))
        passes, counts = bufs[:d - 1], bufs[d - 1]
        yb = y[tuple(slice(*r) for r in block)]
        acc = bufs[d] if f16 else yb
        cur = x[slices]
        for p, a in enumerate(range(d - 1, -1, -1)):  # last axis first
            out = passes[p] if a else acc
            for j, (s0, s1) in enumerate(wins[a]):
                r0 = spans[a][0]
                np.sum(_at(cur, a + 2, slice(s0 - r0, s1 - r0)), axis=a + 2, dtype=ct, out=_at(out, a + 2, j))
            cur = out
        counts.fill(1)
        for a, w in enumerate(wins):  # the window sizes' product, each factor exact in ct
            counts *= np.array([e - s for s, e in w], ct).reshape((-1,) + (1,) * (d - 1 - a))
        acc /= counts
        if f16:
            np.copyto(yb, acc)
    return y, _name(g, "avg")


def _global_avg_pool(x: np.ndarray, y: np.ndarray, ct) -> None:
    """Global average pooling into ``y`` (N, C, 1, ...): ``(N, C, plane) @ ones``, a BLAS GEMV, when the
    planes are contiguous in the compute dtype and the ones fit the workspace; otherwise a sum over every
    spatial axis (float16 summed in float32: NumPy casts it chunk by chunk, no copy)."""
    N, C, *spatial = x.shape
    flat = _planes_flat(x) if x.dtype == ct else None
    plane = math.prod(spatial)
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

    zeros = (0,) * len(spatial)
    for (n0, n1), (c0, c1) in _blocks((N, C), specs):
        yb = y[(slice(n0, n1), slice(c0, c1)) + zeros]
        (acc,) = workspace(*specs(n1 - n0, c1 - c0)) or (yb,)
        np.sum(x[n0:n1, c0:c1], axis=tuple(range(2, 2 + len(spatial))), dtype=ct, out=acc)
        acc /= plane
        if acc is not yb:
            np.copyto(yb, acc)


def adaptive_max_pool(x: np.ndarray, g, return_indices: bool):
    """Adaptive max pooling of ``x`` (N, C, *spatial) over ``g``, indices flat within each (n, c) plane."""
    y = np.empty(g.output_shape, dtype=x.dtype)
    idx = np.empty(g.output_shape, dtype=np.int64) if return_indices else None
    if all(o == 1 for o in g.out):  # global max pooling: one reduction per plane
        _global_max_pool(x, y, idx)
        return y, idx, _name(g, "max")
    vt = _compute_dtype(x.dtype)  # float16 compared in float32 (exact)
    f16 = vt != x.dtype
    d = g.dims
    # a pass' tap numbers (below the longest window's length, at most size // out + 1): the smallest type
    tap_type = np.min_scalar_type(max(size // o + 1 for size, o in zip(g.spatial, g.out)))

    # Last axis first: see the module docstring for why this order keeps PyTorch's rule.
    def specs(n, c, *m, spans=None):  # each pass' maxima (the last: the output block, or float32 of float16)
        shapes = _pass_shapes(n, c, m, spans or _bounds(g, m))
        most = max(math.prod(s) for s in shapes)
        sp = [(s, vt) for s in shapes[:-1]] + [((most,), vt)]  # ... and one pass' values at one tap
        if return_indices:  # each pass' winners (coordinates in the span), one pass' two masks and tap numbers
            sp += [(s, np.int64) for s in shapes] + [((most,), np.bool_)] * 2 + [((most,), tap_type)] * 2
        return sp + ([(shapes[-1], vt)] if f16 else [])

    def extra(n, c, *m):  # the windows and their taps; a gather from a non-contiguous input (NumPy allocates
        # it); composing the indices: take_along_axis's results, the flat spans
        shapes = _pass_shapes(n, c, m, _bounds(g, m))
        taps = sum(mi * (size // o + 2) for mi, size, o in zip(m, g.spatial, g.out)) * 8
        return (sum(m) * WINDOW_BYTES + taps + math.prod(shapes[0]) * x.itemsize
                + (n * c * math.prod(m) * 8 * (2 * d - 3) if return_indices else 0))

    for block in _blocks(g.output_shape, specs, extra):
        n, c, m, wins, spans, slices = _block(g, block)
        sizes = [r1 - r0 for r0, r1 in spans]
        scratch = workspace(*specs(n, c, *m, spans=sizes))
        yb = y[tuple(slice(*r) for r in block)]
        acc = scratch.pop() if f16 else yb
        best = scratch[:d - 1] + [acc]
        gathered = scratch[d - 1]
        args = scratch[d:2 * d]
        masks = scratch[2 * d:]
        cur = x[slices]
        for p, a in enumerate(range(d - 1, -1, -1)):
            _window_max(cur, a + 2, wins[a], spans[a][0], best[p], gathered, args[p] if return_indices else None,
                        masks)
            cur = best[p]
        if return_indices:  # flat index = ((z + r0_0) * H + h + r0_1) * W + ...; the pass over axis a: args[d-1-a]
            ib = idx[tuple(slice(*r) for r in block)]
            flat = args[d - 1]  # the first axis' coordinate in its span, then the flat index in the spans
            np.add(flat, spans[0][0], out=ib)
            for a in range(1, d):
                q = math.prod(m[a:])
                coord = np.take_along_axis(args[d - 1 - a].reshape(n, c, -1, q), flat.reshape(n, c, -1, q),
                                           axis=2).reshape(n, c, *m)
                if a < d - 1:
                    flat = flat * sizes[a] + coord
                ib *= g.spatial[a]
                ib += coord
                ib += spans[a][0]
        if f16:
            np.copyto(yb, acc)  # exact: acc holds float16 values
    return y, idx, _name(g, "max")


def _window_taps(wins, r0: int) -> list:
    """Per tap ``t`` of the longest window, the coordinate (in the span starting at ``r0``) that each window
    reads at its ``t``-th element. A shorter window reads its last element again: neither the maximum nor
    PyTorch's rule changes (the repeat is not greater than itself, and if it is NaN it was already the
    window's last NaN, at the same coordinate)."""
    k = max(e - s for s, e in wins)
    return [np.array([min(s + t, e - 1) - r0 for s, e in wins], np.intp) for t in range(k)]


def _carve(buf: np.ndarray, shape, dtype) -> np.ndarray:
    """A C-contiguous ``shape`` array of ``dtype`` on the start of the flat scratch ``buf`` (large enough)."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    return buf.view(np.uint8)[:nbytes].view(dtype).reshape(shape)


def _gather(cur: np.ndarray, axis: int, index: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``cur``'s elements ``index`` (1-D, increasing) along ``axis``: where they are evenly spaced (equal
    windows, and others such as 13 -> 6), a strided view of ``cur``, nothing copied; otherwise gathered
    into ``out`` (C-contiguous, ``cur``'s dtype) and ``out`` returned. ``np.take`` writes into ``out``
    directly (mode 'clip': 'raise' would buffer it; the indices are in range), but copies a non-contiguous
    ``cur`` whole first; such a ``cur`` is indexed instead (its result, the size of ``out``, is allocated
    by NumPy and counted in the blocks' ``extra``)."""
    step = int(index[1] - index[0]) if index.size > 1 else 1
    if step > 0 and (index.size == 1 or np.all(np.diff(index) == step)):
        first = int(index[0])
        return cur[(slice(None),) * axis + (slice(first, first + step * (index.size - 1) + 1, step),)]
    if cur.flags.c_contiguous:
        np.take(cur, index, axis=axis, out=out, mode="clip")
    else:
        np.copyto(out, cur[(slice(None),) * axis + (index,)])
    return out


def _window_max(cur, axis: int, wins, r0: int, out, gathered, arg, scratch) -> None:
    """One separable pass: ``out`` = per window ``wins`` along ``axis`` of ``cur`` (whose span starts at
    ``r0``), the maximum of its elements, as one gather (or strided view) of every window's ``t``-th
    element per tap ``t`` and one elementwise update (a reduction per window over a few strided elements
    is far slower in NumPy), and with ``arg`` each window's winner by PyTorch's rule (the first maximum,
    or the last NaN) as a coordinate in the span.

    The update is ``maximum(new, out)``: for float32 and float64 (the compute dtypes) NumPy returns its
    second argument on equal values and its first when both are NaN, so a tie keeps the earlier element
    (+0.0 stays +0.0 against -0.0) and a NaN replaces an earlier NaN: PyTorch's values bit for bit
    (tests/test_numpy_adaptive_pool.py checks both). The winner: taps come in increasing order and an
    update always takes the latest tap, so ``best_tap = max(best_tap, t * update)`` with ``update = new >
    out or new is NaN`` (no masked copy: those are ten times slower on a mixed mask), in the smallest
    integer type that holds the taps; the tap number becomes a coordinate at the end. ``gathered``: flat
    scratch of ``out``'s size in the compute dtype; ``scratch``: two boolean and two of the tap type, the
    same size."""
    taps = _window_taps(wins, r0)
    g = _carve(gathered, out.shape, cur.dtype)  # float16 input: gathered as float16, compared in float32
    first = _gather(cur, axis, taps[0], out if out.dtype == cur.dtype and out.flags.c_contiguous else g)
    if first is not out:
        np.copyto(out, first)
    if arg is not None:
        upd, isnan = (_carve(b, out.shape, np.bool_) for b in scratch[:2])
        best_tap, tap = (_carve(b, out.shape, b.dtype) for b in scratch[2:])
        best_tap.fill(0)
    for t, index in enumerate(taps[1:], 1):
        v = _gather(cur, axis, index, g)
        if arg is not None:  # before out changes: compared with the maximum of the taps before t
            np.greater(v, out, out=upd)
            _isnan(v, isnan)
            upd |= isnan
            np.multiply(upd, tap.dtype.type(t), out=tap)
            np.maximum(best_tap, tap, out=best_tap)
        np.maximum(v, out, out=out)
    if arg is not None:  # tap number -> coordinate in the span: min(start + t, end - 1) - r0
        shape = (len(wins),) + (1,) * (out.ndim - 1 - axis)
        np.minimum(best_tap, np.array([e - 1 - s for s, e in wins]).reshape(shape), out=arg)
        arg += np.array([s - r0 for s, e in wins]).reshape(shape)


def adaptive_avg_pool2d(x: np.ndarray, g: AdaptiveGeometry):
    return adaptive_avg_pool(x, g)


def adaptive_max_pool2d(x: np.ndarray, g: AdaptiveGeometry, return_indices: bool):
    return adaptive_max_pool(x, g, return_indices)


adaptive_avg_pool3d, adaptive_max_pool3d = adaptive_avg_pool, adaptive_max_pool  # g: an AdaptiveGeometryND


def _global_max_pool(x: np.ndarray, y: np.ndarray, idx) -> None:
    """Max over each whole plane into ``y`` (N, C, 1, ...), and with ``idx`` its index under PyTorch's rule
    (the first maximum; in a plane holding NaN, its last NaN). Without indices one NaN-propagating
    reduction. With indices: ``np.argmax`` over each plane flattened (the first maximum, but the first
    NaN), the planes holding NaN searched again from the end; planes whose rows are not consecutive, or
    float16 ones, are copied (in the compute dtype) into the workspace a block at a time, and planes too
    large for it are taken in bands of the first spatial axis whose winners are merged by the same rule."""
    N, C, H, *rest = x.shape
    W = math.prod(rest)  # cells per step of the first spatial axis
    zeros = (0,) * (1 + len(rest))
    vt = _compute_dtype(x.dtype)
    if idx is None:
        def specs(n, c):
            return [((n, c), vt)] if vt != x.dtype else []

        for (n0, n1), (c0, c1) in _blocks((N, C), specs):
            yb = y[(slice(n0, n1), slice(c0, c1)) + zeros]
            (acc,) = workspace(*specs(n1 - n0, c1 - c0)) or (yb,)
            np.maximum.reduce(x[n0:n1, c0:c1], axis=tuple(range(2, x.ndim)), dtype=vt, out=acc)
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
            flat = scratch.pop(0).reshape(n, c, h1 - h0, *rest)
            np.copyto(flat, x[n0:n1, c0:c1, h0:h1])
            flat = flat.reshape(n, c, (h1 - h0) * W)
        best, where, upd, isnan = scratch
        arg = flat.argmax(axis=2)
        vals = np.take_along_axis(flat, arg[..., None], axis=2)[..., 0]
        nan = np.isnan(vals)
        for i, j in zip(*np.nonzero(nan)):
            arg[i, j] = _last_nan(flat[i, j])
        arg += h0 * W
        yb, ib = y[(slice(n0, n1), slice(c0, c1)) + zeros], idx[(slice(n0, n1), slice(c0, c1)) + zeros]
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
