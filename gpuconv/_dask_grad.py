"""``gpuconv.dask.conv{1,2,3}d_input`` / ``_weight`` / ``_bias``: the convolutions' gradients on dask
arrays, on the windows of ``gpuconv.dask.conv2d`` (``_dask_graph``; per axis, for 1 to 3 spatial axes), and
``conv_axes`` (a forward call's axes). Imported by ``gpuconv.dask`` only.

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

from . import _grad_conv, conv_nd
from ._dask_graph import (Axis, InputAxis, _as_batched, _Blocks, _check_arrays, _Const, _finish, _tasks, _windowed,
                          _xp)
from ._geometry import conv_geometry
from ._geometry_nd import conv_nd_geometry

_WEIGHT = {1: conv_nd.conv1d_weight, 2: _grad_conv.conv2d_weight, 3: conv_nd.conv3d_weight}
_INPUT = {1: conv_nd.conv1d_input, 2: _grad_conv.conv2d_input, 3: conv_nd.conv3d_input}


def conv_axes(nd, shape, weight_shape, bias_shape, stride, padding, dilation, groups, flip, activation):
    """Check a conv{nd}d call as the single call does and resolve it: ``(one Axis per spatial axis, K,
    (stride, dilation, groups, flip, activation) resolved, the geometry)``."""
    if nd == 2:
        g = conv_geometry(shape, weight_shape, bias_shape, stride, padding, dilation, groups, flip, activation)
        axes = (Axis(g.H, g.dh * (g.R - 1) + 1, g.sh, g.pt, g.P), Axis(g.W, g.dw * (g.S - 1) + 1, g.sw, g.pl, g.Q))
        return axes, g.K, (g.stride, g.dilation, g.groups, g.flip, g.activation), g
    g = conv_nd_geometry(nd, shape, weight_shape, bias_shape, stride, padding, dilation, groups, flip, activation)
    axes = tuple(Axis(n, d * (k - 1) + 1, s, lo, o) for n, k, s, (lo, _), d, o in
                 zip(g.input_size, g.kernel_size, g.stride, g.padding, g.dilation, g.output_size))
    return axes, g.K, (g.stride, g.dilation, g.groups, g.flip, g.activation), g


def _size(value, name, fn, ndim):
    if not isinstance(value, (tuple, list)) or len(value) not in (ndim, ndim + 1) or \
            not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        raise TypeError(f"gpuconv.dask.{fn}(): {name} must be a tuple of {ndim} or {ndim + 1} ints, got {value!r}")
    return tuple(int(v) for v in value)


def _axes(fn, nd, input_shape, weight_shape, gy, stride, padding, dilation, groups, flip):
    axes, _, _, g = conv_axes(nd, input_shape, weight_shape, None, stride, padding, dilation, groups, flip, None)
    if tuple(gy.shape) != g.output_shape:
        raise ValueError(f"gpuconv.dask.{fn}(): grad_output of size {list(gy.shape)} does not match the forward "
                         f"call's output size {list(g.output_shape)} (input {list(input_shape)}, weight "
                         f"{list(weight_shape)})")
    return g, axes


def _weight_op(win, p, gy):
    nd, weight_size, stride, dilation, groups, flip = p
    return _WEIGHT[nd](win, weight_size, gy, stride, 0, dilation, groups, flip=flip)


def _sum_in_order(parts, dtype):
    total = parts[0].astype(np.float64)
    for q in parts[1:]:
        total += q
    return total.astype(dtype)


def conv2d_weight(x, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1, *, flip=False):
    """:func:`gpuconv.grad.conv2d_weight` of dask arrays ``x`` (NCHW / CHW) and ``grad_output`` (as
    ``gpuconv.dask.conv2d``'s output), lazily: a dask array of ``weight_size``, one chunk. Per-chunk weight
    gradients of matching ``x`` windows and ``grad_output`` blocks, summed by one task in a fixed order."""
    return _weight(2, x, weight_size, grad_output, stride, padding, dilation, groups, flip)


def conv1d_weight(x, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1, *, flip=False):
    """:func:`gpuconv.grad.conv1d_weight` of dask arrays (NCL / CL), as :func:`conv2d_weight`."""
    return _weight(1, x, weight_size, grad_output, stride, padding, dilation, groups, flip)


def conv3d_weight(x, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1, *, flip=False):
    """:func:`gpuconv.grad.conv3d_weight` of dask arrays (NCDHW / CDHW), as :func:`conv2d_weight`."""
    return _weight(3, x, weight_size, grad_output, stride, padding, dilation, groups, flip)


def _weight(nd, x, weight_size, grad_output, stride, padding, dilation, groups, flip):
    fn = f"conv{nd}d_weight"
    xb, unbatched = _as_batched(x, fn, nd)
    gy, gy_unbatched = _as_batched(grad_output, fn, nd, arg="grad_output")
    if unbatched != gy_unbatched:
        raise ValueError(f"gpuconv.dask.{fn}(): input of size {list(x.shape)} and grad_output of size "
                         f"{list(grad_output.shape)}: both batched or both unbatched")
    wsize = _size(weight_size, "weight_size", fn, nd + 2)
    if len(wsize) != nd + 2:
        raise ValueError(f"gpuconv.dask.{fn}(): weight_size must have {nd + 2} entries (K, C/groups, kernel...), "
                         f"got {wsize}")
    _check_arrays(fn, xb, grad_output=meta_from_array(gy._meta, ndim=nd + 2))
    g, axes = _axes(fn, nd, xb.shape, wsize, gy, stride, padding, dilation, groups, flip)
    out_chunks = tuple(ax.output_chunks(c) for ax, c in zip(axes, xb.chunks[2:]))
    gy = gy.rechunk((xb.chunks[0], (g.K,)) + out_chunks)
    params = _Const((nd, wsize, g.stride, g.dilation, g.groups, g.flip))
    dsk, part, _ = _tasks(xb, axes, _weight_op, params, (_Blocks(gy.name),), fn, 0, token=(g, gy.name))
    name = f"gpuconv-{fn}-sum-" + part.rsplit("-", 1)[1]
    parts = sorted(k for k in dsk if isinstance(k, tuple) and k[0] == part)
    dsk[(name,) + (0,) * (nd + 2)] = (_sum_in_order, parts, np.dtype(xb.dtype))
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[xb, gy])
    return da.Array(graph, name, tuple((n,) for n in wsize), meta=meta_from_array(xb._meta, ndim=nd + 2))


def conv2d_bias(grad_output):
    """:func:`gpuconv.grad.conv2d_bias` of a dask ``grad_output`` (NKPQ / KPQ): its sum over N, P, Q in
    float64 (a fixed reduction tree), rounded once to its dtype; a dask array ``(K,)``."""
    return _bias(2, grad_output)


def conv1d_bias(grad_output):
    """:func:`gpuconv.grad.conv1d_bias` of a dask ``grad_output`` (NKL / KL), as :func:`conv2d_bias`."""
    return _bias(1, grad_output)


def conv3d_bias(grad_output):
    """:func:`gpuconv.grad.conv3d_bias` of a dask ``grad_output`` (NK... / K...), as :func:`conv2d_bias`."""
    return _bias(3, grad_output)


def _bias(nd, grad_output):
    fn = f"conv{nd}d_bias"
    gy, _ = _as_batched(grad_output, fn, nd, one_channel_chunk=False, arg="grad_output")
    _check_arrays(fn, gy)
    return gy.astype(np.float64).sum(axis=(0,) + tuple(range(2, nd + 2)), split_every=8).astype(gy.dtype)


def _input_op(gwin, p, weight):
    nd, ranges, axes, (stride, dilation, groups, flip), C = p
    N = gwin.shape[0]
    gx = _xp(gwin).zeros((N, C) + tuple(b - a for a, b in ranges), dtype=gwin.dtype)
    reads = [ax.readers(a, b) for ax, (a, b) in zip(axes, ranges)]
    if any(o1 <= o0 for o0, o1 in reads):  # no output's window reaches this chunk (stride > extent): zeros
        return gx
    wins = [ax.window(o0, o1) for ax, (o0, o1) in zip(axes, reads)]
    local = _INPUT[nd]((N, C) + tuple(b - a for a, b in wins), weight, gwin, stride, 0, dilation,
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


def input_axes(fn: str, nd: int, axes, gy, chunks, size):
    """The input gradient's chunking per spatial axis (``chunks``, or by default ``grad_output``'s carried
    over by ``_default_chunks``), checked against the input ``size``: ``(chunks, InputAxis records)``."""
    if chunks is None:
        chunks = tuple(_default_chunks(ax, c) for ax, c in zip(axes, gy.chunks[2:]))
    chunks = tuple(tuple(int(c) for c in cs) for cs in chunks)
    if len(chunks) != nd or any(sum(c) != n or min(c) < 1 for c, n in zip(chunks, size[2:])):
        raise ValueError(f"gpuconv.dask.{fn}(): chunks must be one tuple per spatial axis of positive sizes "
                         f"adding up to {size[2:]}, got {chunks}")
    return chunks, tuple(InputAxis(ax, c) for ax, c in zip(axes, chunks))


def conv1d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1, *, flip=False,
                 chunks=None):
    """:func:`gpuconv.grad.conv1d_input` of a dask ``grad_output`` (NKL / KL), as :func:`conv2d_input`
    (``chunks``: ``(L chunks,)``)."""
    return _input(1, input_size, weight, grad_output, stride, padding, dilation, groups, flip, chunks)


def conv3d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1, *, flip=False,
                 chunks=None):
    """:func:`gpuconv.grad.conv3d_input` of a dask ``grad_output`` (NCDHW / CDHW), as :func:`conv2d_input`
    (``chunks``: ``(D chunks, H chunks, W chunks)``)."""
    return _input(3, input_size, weight, grad_output, stride, padding, dilation, groups, flip, chunks)


def conv2d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1, *, flip=False,
                 chunks=None):
    """:func:`gpuconv.grad.conv2d_input` of a dask ``grad_output`` (NKPQ / KPQ), lazily: a dask array of
    ``input_size``, chunked along N as ``grad_output``, one chunk along C, and along H and W as ``chunks``
    (``(H chunks, W chunks)``; default: ``grad_output``'s chunk boundaries carried to the input rows of
    their windows' centres). Each chunk reads only the ``grad_output`` rows whose windows overlap it."""
    return _input(2, input_size, weight, grad_output, stride, padding, dilation, groups, flip, chunks)


def _input(nd, input_size, weight, grad_output, stride, padding, dilation, groups, flip, chunks):
    fn = f"conv{nd}d_input"
    gy, unbatched = _as_batched(grad_output, fn, nd, arg="grad_output")
    size = _size(input_size, "input_size", fn, nd + 1)
    if len(size) != grad_output.ndim:
        raise ValueError(f"gpuconv.dask.{fn}(): input_size {size} and grad_output of size "
                         f"{list(grad_output.shape)}: both batched (4 entries) or both unbatched (3)")
    size = size if len(size) == nd + 2 else (1,) + size
    _check_arrays(fn, gy, weight=weight)
    g, axes = _axes(fn, nd, size, tuple(weight.shape), gy, stride, padding, dilation, groups, flip)
    chunks, iaxes = input_axes(fn, nd, axes, gy, chunks, size)
    resolved = (g.stride, g.dilation, g.groups, g.flip)

    def chunk_params(*ranges):
        return nd, ranges, axes, resolved, g.C

    y = _windowed(gy, iaxes, _input_op, _Const(None), (weight,), g.C, gy.dtype, fn, 0, chunk_params, (g, chunks))
    return _finish(y, unbatched)
