"""Pooling on dask arrays beyond the forward values (imported by ``gpuconv.dask`` only; needs dask):

* ``max_pool_indices``: ``max_pool{1,2,3}d(..., return_indices=True)``. Each chunk's task pools its window
  (padded with -inf only at the array's real borders, as the values-only path) with ``return_indices=True``
  and turns the window's local indices (flat in the window's plane) into the single call's (flat in the
  whole plane, ``(d*H + h)*W + w``) by the window's origin. A window whose maximum is a padding cell (all
  its real cells -inf) gets the single call's index for that case: its first in-bounds tap.
* ``pool_input``: ``avg_pool{1,2,3}d_input`` / ``max_pool{1,2,3}d_input``. The transposed problem, as
  ``conv{n}d_input``: input-gradient chunk ``[a, b)`` (per axis) reads the ``grad_output`` (and ``indices``)
  rows whose windows overlap it (``Axis.readers``), runs the single-array gradient on them alone
  (``padding=0``, the input being those rows' windows) and keeps the part inside ``[a, b)``. Max: the
  global indices become indices in that window (an index always lies in its own output's window, so in the
  window; one outside ``[a, b)`` lands in the discarded part and contributes nothing to the chunk). Avg:
  ``grad_output`` is divided by the whole array's divisor of each window (``divisor_extent``, in float32 for
  float16 as the single call computes) and the window's gradient taken with divisor 1.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from . import _grad_pool
from ._dask_graph import (Axis, _as_batched, _Blocks, _check_arrays, _Const, _finish, _tasks, _windowed,
                          _xp)
from ._dask_grad import input_axes
from ._numpy.pool import divisor_extent
from ._pool_geometry import pool_geometry, pool_geometry_nd
from .pool import max_pool2d as _max_pool2d
from .pool_nd import _check_divisor
from .pool_nd import max_pool1d as _max_pool1d
from .pool_nd import max_pool3d as _max_pool3d

_MAX = {1: _max_pool1d, 2: _max_pool2d, 3: _max_pool3d}
_MAX_INPUT = {1: _grad_pool.max_pool1d_input, 2: _grad_pool.max_pool2d_input, 3: _grad_pool.max_pool3d_input}
_AVG_INPUT = {2: _grad_pool.avg_pool2d_input, 3: _grad_pool.avg_pool3d_input}


def pool_fields(nd, shape, kernel_size, stride, padding, dilation, ceil_mode, fn):
    """Per axis ``(size, kernel, stride, (lo, hi), dilation, out)``, the ``Axis`` per axis and the geometry of
    a pooling call on ``shape`` (batched), checked as the single call checks it."""
    if nd == 2:
        g = pool_geometry(shape, kernel_size, stride, padding, dilation, ceil_mode, fn)
        fields = ((g.H, g.kh, g.sh, (g.ph, g.pb), g.dh, g.OH), (g.W, g.kw, g.sw, (g.pw, g.pr), g.dw, g.OW))
    else:
        g = pool_geometry_nd(shape, kernel_size, stride, padding, dilation, ceil_mode, fn, nd)
        fields = tuple(zip(g.spatial, g.kernel, g.stride, g.padding, g.dilation, g.out))
    axes = tuple(Axis(n, d * (k - 1) + 1, s, lo, o) for n, k, s, (lo, _), d, o in fields)
    return fields, axes, g


# ----------------------------------------------------------------------------------------------
# max pooling with indices
# ----------------------------------------------------------------------------------------------

def _max_indices_op(win, p):
    nd, fields, ranges = p
    y, local = _MAX[nd](win, tuple(f[1] for f in fields), tuple(f[2] for f in fields), 0,
                        tuple(f[4] for f in fields), return_indices=True)
    xp = _xp(local)
    coords, rest = [], local
    for w in reversed(win.shape[2:]):  # the window's plane, last axis fastest
        coords.insert(0, rest % w)
        rest = rest // w
    glob, padded = [], xp.zeros(local.shape, dtype=bool)
    for a, ((n, k, s, (lo, _), d, _o), (o0, o1)) in enumerate(zip(fields, ranges)):
        c = coords[a] + (o0 * s - lo)
        padded |= (c < 0) | (c >= n)
        # the first in-bounds tap of each output's window: the single call's index when no real cell beats
        # the -inf it starts from (every real cell -inf); our window's padding cells came first instead
        start = np.arange(o0, o1, dtype=np.int64) * s - lo
        first = np.where(start < 0, start + d * (-(start // d)), start)
        glob.append((c, xp.asarray(first).reshape((-1,) + (1,) * (nd - 1 - a))))
    flat = 0
    for (c, first), (n, *_rest) in zip(glob, fields):
        flat = flat * n + xp.where(padded, first, c)
    return y, flat.astype(np.int64)


def _pick(pair, i):
    return pair[i]


def max_pool_indices(nd, xb, fields, axes, g, fn):
    """``(values, indices)`` dask arrays of ``max_pool{nd}d(..., return_indices=True)`` of ``xb`` (batched)."""
    def chunk_params(*ranges):
        return nd, fields, ranges

    values, indices = [], []
    starts = np.cumsum((0,) + xb.chunks[1])
    for c0, c1 in zip(starts[:-1], starts[1:]):
        xc = xb[:, int(c0):int(c1)]
        dsk, name, out_chunks = _tasks(xc, axes, _max_indices_op, _Const(None), (), fn + "-pair", -np.inf,
                                       chunk_params, token=g)
        keys = [k for k in dsk if isinstance(k, tuple) and k[0] == name]
        chunks = (xc.chunks[0], (int(c1 - c0),)) + out_chunks
        for i, (out, dtype) in enumerate(((values, xc.dtype), (indices, np.int64))):
            part = f"gpuconv-{fn}-{('values', 'indices')[i]}-" + tokenize(name)
            layer = dict(dsk)
            layer.update({(part,) + k[1:]: (_pick, k, i) for k in keys})
            graph = HighLevelGraph.from_collections(part, layer, dependencies=[xc])
            out.append(da.Array(graph, part, chunks, meta=meta_from_array(xc._meta, ndim=xc.ndim, dtype=dtype)))
    if len(values) == 1:
        return values[0], indices[0]
    return da.concatenate(values, axis=1), da.concatenate(indices, axis=1)


# ----------------------------------------------------------------------------------------------
# pooling gradients
# ----------------------------------------------------------------------------------------------

def _size(value, fn, nd):
    if not isinstance(value, (tuple, list)) or len(value) not in (nd + 1, nd + 2) or \
            not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        raise TypeError(f"gpuconv.dask.{fn}(): input_size must be a tuple of {nd + 2} ints (N, C, ...) or "
                        f"{nd + 1} (C, ...), got {value!r}")
    return tuple(int(v) for v in value)


def _grad_window(gwin, p, idx):
    """The gradient of one input chunk from its ``grad_output`` rows (and indices): see the module doc."""
    kind, nd, ranges, fields, axes, options = p
    N, C = gwin.shape[:2]
    xp = _xp(gwin)
    gx = xp.zeros((N, C) + tuple(b - a for a, b in ranges), dtype=gwin.dtype)
    reads = [ax.readers(a, b) for ax, (a, b) in zip(axes, ranges)]
    if any(o1 <= o0 for o0, o1 in reads):  # no window reaches this chunk (stride > kernel extent): zeros
        return gx
    wins = [ax.window(o0, o1) for ax, (o0, o1) in zip(axes, reads)]
    wshape = tuple(b - a for a, b in wins)
    kernel, stride = tuple(f[1] for f in fields), tuple(f[2] for f in fields)
    if kind == "max":
        rest, local = idx, 0
        coords = []
        for n in reversed([f[0] for f in fields]):  # the whole plane's coordinates, last axis fastest
            coords.insert(0, rest % n)
            rest = rest // n
        for c, (wa, _), w in zip(coords, wins, wshape):  # in the window (an index lies in its output's window)
            local = local * w + (c - wa)
        part = _MAX_INPUT[nd]((N, C) + wshape, gwin, local.astype(np.int64), kernel, stride, 0,
                              tuple(f[4] for f in fields))
    else:
        cip, override = options
        compute = np.float32 if gwin.dtype == np.float16 else gwin.dtype
        if override is not None:
            total = override
        else:
            total = 1
            for a, ((n, k, s, (lo, hi), _d, _o), (o0, o1)) in enumerate(zip(fields, reads)):
                dv = divisor_extent(o0, o1, k, s, lo, hi, n, cip)
                total = total * xp.asarray(dv, dtype=compute).reshape((-1,) + (1,) * (nd - 1 - a))
        scaled = gwin.astype(compute) / total
        if nd == 1:  # avg_pool1d_input has no divisor_override: the 2-D gradient on one-row planes
            part = _AVG_INPUT[2]((N, C, 1) + wshape, scaled[:, :, None], (1,) + kernel, (1,) + stride, 0,
                                 divisor_override=1)[:, :, 0]
        else:
            part = _AVG_INPUT[nd]((N, C) + wshape, scaled, kernel, stride, 0, divisor_override=1)
        part = part.astype(gwin.dtype, copy=False)
    # the windows of the reading outputs cover [a, b) where any window does; they may reach past it (into
    # the neighbours, or the padding): keep the overlap
    dst, src = [slice(None)] * 2, [slice(None)] * 2
    for (a, b), (wa, wb) in zip(ranges, wins):
        dst.append(slice(max(a, wa) - a, min(b, wb) - a))
        src.append(slice(max(a, wa) - wa, min(b, wb) - wa))
    gx[tuple(dst)] = part[tuple(src)]
    return gx


def pool_input(kind, nd, input_size, grad_output, indices, kernel_size, stride, padding, dilation, ceil_mode,
               count_include_pad=True, divisor_override=None, chunks=None):
    """``{max,avg}_pool{nd}d_input`` of a dask ``grad_output`` (and ``indices``): a dask array of
    ``input_size``, chunked along N as ``grad_output``, one chunk along C, spatially as ``chunks``."""
    fn = f"{kind}_pool{nd}d_input"
    if divisor_override is not None:
        _check_divisor(f"gpuconv.dask.{fn}", divisor_override)
    gy, unbatched = _as_batched(grad_output, fn, nd, arg="grad_output")
    size = _size(input_size, fn, nd)
    if len(size) != grad_output.ndim:
        raise ValueError(f"gpuconv.dask.{fn}(): input_size {size} and grad_output of size "
                         f"{list(grad_output.shape)}: both batched ({nd + 2} entries) or both unbatched ({nd + 1})")
    size = size if len(size) == nd + 2 else (1,) + size
    _check_arrays(fn, gy)
    fields, axes, g = pool_fields(nd, size, kernel_size, stride, padding, dilation, ceil_mode, fn)
    if tuple(gy.shape) != tuple(size[:2]) + tuple(f[5] for f in fields):
        raise ValueError(f"gpuconv.dask.{fn}(): grad_output has shape {list(grad_output.shape)}, but the forward "
                         f"output for an input of size {list(input_size)} with these arguments has shape "
                         f"{list(size[:2]) + [f[5] for f in fields]}")
    consts, deps = (), []
    if kind == "max":
        if indices is None:
            raise ValueError(f"gpuconv.dask.{fn}(): indices are required (the forward's return_indices=True)")
        ib, _ = _as_batched(indices, fn, nd, arg="indices")
        if tuple(ib.shape) != tuple(gy.shape) or np.dtype(ib.dtype) != np.int64:
            raise ValueError(f"gpuconv.dask.{fn}(): indices must be int64 of grad_output's shape, got "
                             f"{ib.dtype} of shape {list(indices.shape)} and grad_output {list(grad_output.shape)}")
        ib = ib.rechunk(gy.chunks)
    chunks, iaxes = input_axes(fn, nd, axes, gy, chunks, size)
    options = (bool(count_include_pad), divisor_override or None)

    def chunk_params(*ranges):
        return kind, nd, ranges, fields, axes, options

    if kind == "max":  # the indices' windows: tasks of their own, the gradient's task takes its own one
        dsk_i, iname, _ = _tasks(ib, iaxes, _ident, _Const(None), (), fn + "-indices", 0, token=(g, chunks))
        consts, deps = (_Blocks(iname),), [_index_windows(dsk_i, iname, ib, chunks)]
    else:
        consts = (None,)
    y = _windowed(gy, iaxes, _grad_window, _Const(None), consts, size[1], gy.dtype, fn, 0, chunk_params,
                  (g, chunks, options, kind), deps=deps)
    return _finish(y, unbatched)


def _ident(win, p):
    return win


def _index_windows(dsk, name, ib, chunks):
    """The indices' window tasks as a dask array the gradient's tasks can depend on: one block per
    input-gradient chunk. Its chunk sizes are nominal (the blocks are windows, larger than the chunks): it
    is only read block by block by those tasks, never computed as an array of its own."""
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[ib])
    return da.Array(graph, name, (ib.chunks[0], (ib.shape[1],)) + chunks,
                    meta=meta_from_array(ib._meta, ndim=ib.ndim, dtype=np.int64))
