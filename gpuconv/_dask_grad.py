"""``gpuconv.dask.conv2d_input`` / ``conv2d_weight`` / ``conv2d_bias``: the convolution's gradients on dask
arrays, on the windows of ``gpuconv.dask.conv2d`` (``_dask_graph``). Imported by ``gpuconv.dask`` only.

* ``conv2d_weight``: one task per (batch chunk, output chunk of ``conv2d``'s chunking of ``x``) computes
  ``gpuconv.grad.conv2d_weight`` of its ``x`` window (padded only at the array's borders) and its
  ``grad_output`` block (``grad_output`` is rechunked to those output chunks); one task sums the partial
  gradients in the order of their keys (sequentially, in float64), so the result does not depend on the
  scheduler.
* ``conv2d_input``: the transposed problem. The input gradient's chunk ``[a, b)`` (per axis) needs the
  ``grad_output`` rows whose windows overlap it (``Axis.readers``); its task runs
  ``gpuconv.grad.conv2d_input`` on those rows alone (``padding=0``, the input being those rows' windows)
  and keeps the part inside ``[a, b)``. Every output whose window touches the chunk is in that range, so the
  chunk is exact (to rounding).
* ``conv2d_bias``: a dask sum over N, H, W in float64, with a fixed reduction tree (``split_every``).
"""

from __future__ import annotations

import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array
from dask.highlevelgraph import HighLevelGraph

from . import _grad_conv
from ._dask_graph import (Axis, InputAxis, _as_batched, _Blocks, _check_arrays, _Const, _finish, _tasks, _windowed,
                          _xp)
from ._geometry import conv_geometry


def _size(value, name, fn, ndim):
    if not isinstance(value, (tuple, list)) or len(value) not in (ndim, ndim + 1) or \
            not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        raise TypeError(f"gpuconv.dask.{fn}(): {name} must be a tuple of {ndim} or {ndim + 1} ints, got {value!r}")
    return tuple(int(v) for v in value)


def _axes(fn, input_shape, weight_shape, gy, stride, padding, dilation, groups, flip):
    g = conv_geometry(input_shape, weight_shape, None, stride, padding, dilation, groups, flip, None)
    if tuple(gy.shape) != g.output_shape:
        raise ValueError(f"gpuconv.dask.{fn}(): grad_output of size {list(gy.shape)} does not match the forward "
                         f"call's output size {list(g.output_shape)} (input {list(input_shape)}, weight "
                         f"{list(weight_shape)})")
    axes = (Axis(g.H, g.dh * (g.R - 1) + 1, g.sh, g.pt, g.P), Axis(g.W, g.dw * (g.S - 1) + 1, g.sw, g.pl, g.Q))
    return g, axes


def _weight_op(win, p, gy):
    weight_size, stride, dilation, groups, flip = p
    return _grad_conv.conv2d_weight(win, weight_size, gy, stride, 0, dilation, groups, flip=flip)


def _sum_in_order(parts, dtype):
    total = parts[0].astype(np.float64)
    for q in parts[1:]:
        total += q
    return total.astype(dtype)


def conv2d_weight(x, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1, *, flip=False):
    """:func:`gpuconv.grad.conv2d_weight` of dask arrays ``x`` (NCHW / CHW) and ``grad_output`` (as
    ``gpuconv.dask.conv2d``'s output), lazily: a dask array of ``weight_size``, one chunk. Per-chunk weight
    gradients of matching ``x`` windows and ``grad_output`` blocks, summed by one task in a fixed order."""
    fn = "conv2d_weight"
    xb, unbatched = _as_batched(x, fn, 2)
    gy, gy_unbatched = _as_batched(grad_output, fn, 2, arg="grad_output")
    if unbatched != gy_unbatched:
        raise ValueError(f"gpuconv.dask.{fn}(): input of size {list(x.shape)} and grad_output of size "
                         f"{list(grad_output.shape)}: both batched or both unbatched")
    wsize = _size(weight_size, "weight_size", fn, 4)
    if len(wsize) != 4:
        raise ValueError(f"gpuconv.dask.{fn}(): weight_size must have 4 entries (K, C/groups, R, S), got {wsize}")
    _check_arrays(fn, xb, grad_output=meta_from_array(gy._meta, ndim=4))
    g, axes = _axes(fn, xb.shape, wsize, gy, stride, padding, dilation, groups, flip)
    out_chunks = tuple(ax.output_chunks(c) for ax, c in zip(axes, xb.chunks[2:]))
    gy = gy.rechunk((xb.chunks[0], (g.K,)) + out_chunks)
    params = _Const((wsize, g.stride, g.dilation, g.groups, g.flip))
    dsk, part, _ = _tasks(xb, axes, _weight_op, params, (_Blocks(gy.name),), fn, 0, token=(g, gy.name))
    name = "gpuconv-conv2d_weight-sum-" + part.rsplit("-", 1)[1]
    parts = sorted(k for k in dsk if isinstance(k, tuple) and k[0] == part)
    dsk[(name, 0, 0, 0, 0)] = (_sum_in_order, parts, np.dtype(xb.dtype))
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[xb, gy])
    return da.Array(graph, name, tuple((n,) for n in wsize), meta=meta_from_array(xb._meta, ndim=4))


def conv2d_bias(grad_output):
    """:func:`gpuconv.grad.conv2d_bias` of a dask ``grad_output`` (NKPQ / KPQ): its sum over N, P, Q in
    float64 (a fixed reduction tree), rounded once to its dtype; a dask array ``(K,)``."""
    gy, _ = _as_batched(grad_output, "conv2d_bias", 2, one_channel_chunk=False, arg="grad_output")
    _check_arrays("conv2d_bias", gy)
    return gy.astype(np.float64).sum(axis=(0, 2, 3), split_every=8).astype(gy.dtype)


def _input_op(gwin, p, weight):
    ranges, axes, (stride, dilation, groups, flip), C = p
    N = gwin.shape[0]
    gx = _xp(gwin).zeros((N, C) + tuple(b - a for a, b in ranges), dtype=gwin.dtype)
    reads = [ax.readers(a, b) for ax, (a, b) in zip(axes, ranges)]
    if any(o1 <= o0 for o0, o1 in reads):  # no output's window reaches this chunk (stride > extent): zeros
        return gx
    wins = [ax.window(o0, o1) for ax, (o0, o1) in zip(axes, reads)]
    local = _grad_conv.conv2d_input((N, C) + tuple(b - a for a, b in wins), weight, gwin, stride, 0, dilation,
                                    groups, flip=flip)
    # the windows of the reading outputs cover [a, b) where any window does; they may also reach past it
    # (into the neighbours, or the padding): keep the overlap
    dst, src = [slice(None)] * 2, [slice(None)] * 2
    for (a, b), (wa, wb) in zip(ranges, wins):
        dst.append(slice(max(a, wa) - a, min(b, wb) - a))
        src.append(slice(max(a, wa) - wa, min(b, wb) - wa))
    gx[tuple(dst)] = local[tuple(src)]
    return gx


def _default_chunks(ax: Axis, gy_chunks):
    """Input-gradient chunks matching ``grad_output``'s: a cut at output boundary ``o`` goes to the input row
    of its window's centre, ``o*s - pad_lo + (extent-1)//2`` (the inverse of ``Axis.output_chunks``)."""
    cuts, o = {0, ax.size}, 0
    for c in gy_chunks[:-1]:
        o += c
        cuts.add(min(max(o * ax.stride - ax.pad_lo + (ax.extent - 1) // 2, 0), ax.size))
    cuts = sorted(cuts)
    return tuple(hi - lo for lo, hi in zip(cuts, cuts[1:]))


def conv2d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1, *, flip=False,
                 chunks=None):
    """:func:`gpuconv.grad.conv2d_input` of a dask ``grad_output`` (NKPQ / KPQ), lazily: a dask array of
    ``input_size``, chunked along N as ``grad_output``, one chunk along C, and along H and W as ``chunks``
    (``(H chunks, W chunks)``; default: ``grad_output``'s chunk boundaries carried to the input rows of
    their windows' centres). Each chunk reads only the ``grad_output`` rows whose windows overlap it."""
    fn = "conv2d_input"
    gy, unbatched = _as_batched(grad_output, fn, 2, arg="grad_output")
    size = _size(input_size, "input_size", fn, 3)
    if len(size) != grad_output.ndim:
        raise ValueError(f"gpuconv.dask.{fn}(): input_size {size} and grad_output of size "
                         f"{list(grad_output.shape)}: both batched (4 entries) or both unbatched (3)")
    size = size if len(size) == 4 else (1,) + size
    _check_arrays(fn, gy, weight=weight)
    g, axes = _axes(fn, size, tuple(weight.shape), gy, stride, padding, dilation, groups, flip)
    if chunks is None:
        chunks = tuple(_default_chunks(ax, c) for ax, c in zip(axes, gy.chunks[2:]))
    chunks = tuple(tuple(int(c) for c in cs) for cs in chunks)
    if len(chunks) != 2 or any(sum(c) != n or min(c) < 1 for c, n in zip(chunks, size[2:])):
        raise ValueError(f"gpuconv.dask.{fn}(): chunks must be (H chunks, W chunks) of positive sizes adding up "
                         f"to {size[2:]}, got {chunks}")
    iaxes = tuple(InputAxis(ax, c) for ax, c in zip(axes, chunks))
    resolved = (g.stride, g.dilation, g.groups, g.flip)

    def chunk_params(*ranges):
        return ranges, axes, resolved, g.C

    y = _windowed(gy, iaxes, _input_op, _Const(None), (weight,), g.C, gy.dtype, fn, 0, chunk_params, (g, chunks))
    return _finish(y, unbatched)
