"""``gpuconv.dask``: conv2d and pooling on ``dask.array`` arrays (NCHW), for batches and images larger than
one device's or one machine's memory. Imported explicitly (``import gpuconv.dask``); ``import gpuconv``
never imports dask. Needs the extra ``gpuconv[dask]`` (``dask[array]``; ``distributed`` for clusters).

How an image is cut (docs/dask.md has the details and the reasons):

* Along N, chunks are independent. For conv2d, C is made one chunk (``x.rechunk({1: -1})``, a no-op when
  it is one already): every output channel needs every input channel of its group; pooling keeps C's chunks.
* Along H and W each output chunk is one task. It reads exactly the input rows and columns its outputs'
  windows cover, ``[o0*s - pad_lo, (o1-1)*s - pad_lo + d*(k-1) + 1)``, from however many input chunks hold
  them (so chunks smaller than the halo, and uneven last chunks, need no rechunking), adds the padding
  where that range leaves the array (zeros for convolution and average pooling, -inf for max pooling,
  only at the array's real borders, where the global padding and the ceil-mode overhang lie), and runs
  the single-array gpuconv call with ``padding=0`` on it. Output chunk ``i`` holds the outputs whose
  window's centre lies in input chunk ``i``: boundaries are aligned to the stride, so every output pixel
  is computed exactly once. Average pooling divides by the global divisor of each window (the
  ``count_include_pad`` / ceil-mode rules of the whole array), not the chunk's.
* Weights and bias (and ``map_layers``' function) are one node of the graph, which every task depends
  on: a distributed worker receives each once, not once per chunk.

Chunks may be NumPy or CuPy arrays: the tasks only slice, concatenate (``numpy.concatenate`` /
``numpy.pad``, which dispatch to CuPy through ``__array_function__``) and call gpuconv, so the same graph
runs our CUDA kernels on CuPy chunks (the result keeps the input's ``meta``; weights must be of the
chunks' kind). Gradients on dask arrays are not provided yet.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from . import _backend
from ._geometry import conv_geometry, resolve_conv_padding
from ._pool_geometry import pool_geometry
from ._numpy.pool import _divisor_axes
from ._receptive_field import ReceptiveField
from .conv import conv2d as _conv2d
from .pool import avg_pool2d as _avg_pool2d
from .pool import max_pool2d as _max_pool2d

__all__ = ["conv2d", "max_pool2d", "avg_pool2d", "map_layers"]


@dataclass(frozen=True)
class Axis:
    """One spatial axis of a sliding-window operation over the whole array: input ``size``, window
    ``extent`` (``d*(k-1) + 1``, or a chain's receptive field), ``stride``, padding before the input
    ``pad_lo`` and the number of outputs ``out``. Output ``o`` reads input ``[o*stride - pad_lo, ... +
    extent)``; what lies outside ``[0, size)`` is padding (the high side's padding, and pooling's ceil-mode
    overhang, are whatever lies past ``size``)."""

    size: int
    extent: int
    stride: int
    pad_lo: int
    out: int

    def window(self, o0: int, o1: int) -> tuple[int, int]:
        """Input range ``[a, b)`` read by outputs ``[o0, o1)``; ``a < 0`` / ``b > size`` where it leaves the array."""
        return o0 * self.stride - self.pad_lo, (o1 - 1) * self.stride - self.pad_lo + self.extent

    def output_chunks(self, in_chunks) -> tuple[int, ...]:
        """Output chunk ``i``: the outputs whose window's centre (row ``start + (extent-1)//2``) lies in input
        chunk ``i`` (empty ones dropped), i.e. cuts at ``ceil((boundary + pad_lo - (extent-1)//2) / stride)``:
        stride-aligned, each output in exactly one chunk, and a stride-1 'same' convolution keeps the
        input's chunks (the next layer finds the chunks it was given)."""
        cuts, b, centre = {0, self.out}, 0, (self.extent - 1) // 2
        for c in in_chunks[:-1]:
            b += c
            cuts.add(min(max(-(-(b + self.pad_lo - centre) // self.stride), 0), self.out))
        cuts = sorted(cuts)
        return tuple(hi - lo for lo, hi in zip(cuts, cuts[1:]))

    def pieces(self, o0: int, o1: int, in_chunks):
        """What output chunk ``[o0, o1)`` takes from the input chunks along this axis: ``(first block, [slice in
        each block from the first on], (pad before, pad after))``. A window wholly in the padding reads an
        empty slice of the nearest block."""
        a, b = self.window(o0, o1)
        lo, hi = max(a, 0), min(b, self.size)
        pads = (max(0, min(b, 0) - a), max(0, b - max(a, self.size)))
        starts = np.cumsum((0,) + tuple(in_chunks))
        if lo >= hi:  # nothing of the input: an empty slice of the block at the nearer end
            blk = 0 if a < 0 else len(in_chunks) - 1
            return blk, [slice(0, 0)], pads
        first = int(np.searchsorted(starts, lo, side="right")) - 1
        slices, blk = [], first
        while blk < len(in_chunks) and starts[blk] < hi:
            slices.append(slice(max(lo, starts[blk]) - starts[blk], min(hi, starts[blk + 1]) - starts[blk]))
            blk += 1
        return first, slices, pads


class _Const:
    """A value carried by the graph as data (never mistaken for a task or a key): parameters, ``fn``."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def _window(blocks, rows, cols, pads, pad_value):
    """Assemble one output chunk's input window from its input blocks (a row-major list of lists), slicing
    each to the rows/columns needed before concatenating, and pad it where it leaves the array."""
    strips = []
    for r, row in enumerate(blocks):
        parts = [blk[:, :, rows[r], cols[c]] for c, blk in enumerate(row)]
        strips.append(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=3))
    win = strips[0] if len(strips) == 1 else np.concatenate(strips, axis=2)
    if any(pads[0]) or any(pads[1]):
        win = np.pad(win, ((0, 0), (0, 0), pads[0], pads[1]), constant_values=pad_value)
    return win


def _run(op, blocks, rows, cols, pads, pad_value, params, *consts):
    return op(_window(blocks, rows, cols, pads, pad_value), params.value, *consts)


def _windowed(x4, axes, op, params, consts, channels, dtype, label, pad_value, chunk_params=None, token=()):
    """The graph: one task per output chunk ``(n, 0, i, j)`` running ``op(window, params, *consts)`` on its
    window of ``x4`` (N, C, H, W; C one chunk). ``consts`` (arrays or None) are graph nodes of their own, one
    each; ``chunk_params(rows, cols)``, if given, replaces ``params`` per chunk (output ranges as arguments).
    ``token``: every argument of the public call, for the output's name."""
    out_chunks = tuple(ax.output_chunks(c) for ax, c in zip(axes, x4.chunks[2:]))
    dsk, refs = {}, []
    for v in consts:
        if v is None:
            refs.append(None)
            continue
        key = "gpuconv-const-" + tokenize(v.value if isinstance(v, _Const) else v)
        dsk[key] = v
        refs.append(key)
    name = f"gpuconv-{label}-" + tokenize(x4.name, axes, label, token, refs, pad_value)
    ranges = []
    for oc in out_chunks:
        ends = np.cumsum((0,) + oc)
        ranges.append([(int(a), int(b)) for a, b in zip(ends[:-1], ends[1:])])
    plans = [[ax.pieces(o0, o1, x4.chunks[2 + d]) for o0, o1 in ranges[d]] for d, ax in enumerate(axes)]
    for n in range(len(x4.chunks[0])):
        for i, (r0, rsl, rpad) in enumerate(plans[0]):
            for j, (c0, csl, cpad) in enumerate(plans[1]):
                blocks = [[(x4.name, n, 0, r0 + a, c0 + b) for b in range(len(csl))] for a in range(len(rsl))]
                p = params if chunk_params is None else _Const(chunk_params(ranges[0][i], ranges[1][j]))
                dsk[(name, n, 0, i, j)] = (_run, op, blocks, rsl, csl, (rpad, cpad), pad_value, p, *refs)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[x4])
    chunks = (x4.chunks[0], (channels,)) + out_chunks
    return da.Array(graph, name, chunks, meta=meta_from_array(x4._meta, ndim=4, dtype=dtype))


def _as_nchw(x, fn: str, one_channel_chunk=True):
    """``x`` as a 4-D dask array (with one chunk along C, if asked); and whether it was unbatched (CHW)."""
    if not isinstance(x, da.Array):
        raise TypeError(f"gpuconv.dask.{fn}(): argument 'input' must be a dask.array.Array, got "
                        f"{type(x).__module__}.{type(x).__name__} (use gpuconv.{fn} for NumPy / CuPy arrays, "
                        "or wrap it: dask.array.from_array(x, chunks=...))")
    if x.ndim not in (3, 4):
        raise ValueError(f"gpuconv.dask.{fn}(): expected a 3-D (unbatched) or 4-D (batched) input, but got "
                         f"input of size: {list(x.shape)}")
    x4 = x if x.ndim == 4 else x[None]
    if one_channel_chunk and len(x4.chunks[1]) > 1:
        x4 = x4.rechunk({1: -1})
    return x4, x.ndim == 3


def _check_arrays(fn: str, x4, **arrays):
    """The single-array call's checks on array kinds and dtypes, done now on the input's meta (the same
    TypeError messages), so a wrong weight fails when the graph is built, not in a worker."""
    meta = meta_from_array(x4._meta, ndim=4)
    _backend.coerce_arrays(f"gpuconv.dask.{fn}", optional=("bias",), input=meta, **arrays)


def _xp(a):
    return np if isinstance(a, np.ndarray) else importlib.import_module(type(a).__module__.split(".")[0])


def _finish(y, unbatched):
    return y[0] if unbatched else y


# ----------------------------------------------------------------------------------------------
# convolution
# ----------------------------------------------------------------------------------------------

def _conv_op(win, p, weight, bias):
    stride, dilation, groups, flip, activation = p
    return _conv2d(win, weight, bias, stride, 0, dilation, groups, flip=flip, activation=activation)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, flip=False, activation=None):
    """:func:`gpuconv.conv2d` of a ``dask.array.Array`` ``x`` (NCHW, or unbatched CHW), lazily.

    The result equals ``gpuconv.conv2d`` on the whole array (to rounding: each chunk is a separate call,
    whose summation order may differ) and has the same arguments and meaning, 'same' and asymmetric padding
    included. Chunks along N are computed independently; ``x`` is rechunked to one chunk along C when it
    has several. Along H and W any chunking works: each output chunk reads the input rows and columns its
    windows need from the neighbouring chunks (the halo, ``d*(k-1) + 1 - s`` per side, however small the
    chunks), the global padding is added only at the array's borders, and output chunk boundaries are
    aligned to the stride (output chunk ``i`` holds the outputs whose window's centre lies in input chunk
    ``i``: a stride-1 'same' convolution keeps the input's chunks).
    The output has one chunk along K.

    ``weight`` and ``bias`` are NumPy arrays for NumPy chunks, CuPy arrays for CuPy chunks (then every
    task runs gpuconv's CUDA kernels on its worker's device); each is one node of the graph, sent to each
    worker once. Checked now, as ``gpuconv.conv2d`` would: shapes, dtypes, arguments.
    """
    x4, unbatched = _as_nchw(x, "conv2d")
    _check_arrays("conv2d", x4, weight=weight, bias=bias)
    g = conv_geometry(x4.shape, tuple(weight.shape), None if bias is None else tuple(bias.shape), stride,
                      padding, dilation, groups, flip, activation)
    axes = (Axis(g.H, g.dh * (g.R - 1) + 1, g.sh, g.pt, g.P), Axis(g.W, g.dw * (g.S - 1) + 1, g.sw, g.pl, g.Q))
    params = _Const((g.stride, g.dilation, g.groups, g.flip, g.activation))
    y = _windowed(x4, axes, _conv_op, params, (weight, bias), g.K, x4.dtype, "conv2d", 0, token=g)
    return _finish(y, unbatched)


# ----------------------------------------------------------------------------------------------
# pooling
# ----------------------------------------------------------------------------------------------

def _pool_axes(g):
    return (Axis(g.H, g.dh * (g.kh - 1) + 1, g.sh, g.ph, g.OH), Axis(g.W, g.dw * (g.kw - 1) + 1, g.sw, g.pw, g.OW))


def _max_op(win, p):
    kernel, stride, dilation = p
    return _max_pool2d(win, kernel, stride, 0, dilation)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """:func:`gpuconv.max_pool2d` of a ``dask.array.Array`` (NCHW or CHW), lazily; chunks and halos as
    :func:`conv2d` (C keeps its chunks: pooling is per channel). Each chunk's window is padded with -inf
    only where it leaves the array (the padding, and with ``ceil_mode`` the last window's overhang), so
    results equal the single call's exactly, NaN rules included. ``return_indices=True`` is not supported
    (a chunk's indices would be local to its window)."""
    if return_indices:
        raise ValueError("gpuconv.dask.max_pool2d(): return_indices=True is not supported on dask arrays")
    x4, unbatched = _as_nchw(x, "max_pool2d", one_channel_chunk=False)
    _check_arrays("max_pool2d", x4)
    g = pool_geometry(x4.shape, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d")
    params = _Const(((g.kh, g.kw), (g.sh, g.sw), (g.dh, g.dw)))
    return _finish(_channelwise(x4, _pool_axes(g), _max_op, params, "max_pool2d", -np.inf, token=g), unbatched)


def _avg_op(win, p):
    kernel, stride, override, divisor = p
    if divisor is None:  # every window of this chunk has the single call's divisor: kernel area or override
        return _avg_pool2d(win, kernel, stride, 0, divisor_override=override)
    # Windows at the array's border whose divisor is not the kernel area: window sums (divisor 1, in float32
    # for float16 input, as the single call sums), divided by the whole array's divisor of each window.
    compute = np.float32 if win.dtype == np.float16 else win.dtype
    sums = _avg_pool2d(win.astype(compute, copy=False), kernel, stride, 0, divisor_override=1)
    dh, dw = (_xp(sums).asarray(v, dtype=compute) for v in divisor)
    return (sums / (dh[:, None] * dw[None, :])).astype(win.dtype, copy=False)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """:func:`gpuconv.avg_pool2d` of a ``dask.array.Array`` (NCHW or CHW), lazily; chunks and halos as
    :func:`max_pool2d`. Each chunk's window is zero-padded only at the array's borders, and windows there
    are divided by the single call's divisor (``count_include_pad``: explicit padding counts, the ceil-mode
    overhang does not; ``divisor_override`` replaces it), so border chunks average exactly as the whole
    array does."""
    x4, unbatched = _as_nchw(x, "avg_pool2d", one_channel_chunk=False)
    _check_arrays("avg_pool2d", x4)
    if divisor_override is not None:  # the single call's checks and messages
        _avg_pool2d(np.zeros((1, 1, 1, 1), np.float32), 1, divisor_override=divisor_override)
    g = pool_geometry(x4.shape, kernel_size, stride, padding, 1, ceil_mode, "avg_pool2d")
    kernel, strides, override = (g.kh, g.kw), (g.sh, g.sw), divisor_override or None

    def chunk_params(rows, cols):
        divisor = None
        if override is None:
            dh, dw = _divisor_axes(g, rows, cols, bool(count_include_pad), None)
            if (dh != g.kh).any() or (dw != g.kw).any():
                divisor = (dh, dw)
        return kernel, strides, override, divisor

    return _finish(_channelwise(x4, _pool_axes(g), _avg_op, _Const(None), "avg_pool2d", 0, chunk_params,
                                (g, bool(count_include_pad), override)),
                   unbatched)


def _channelwise(x4, axes, op, params, label, pad_value, chunk_params=None, token=()):
    """``_windowed`` once per chunk of C (pooling keeps the input's channel chunks), concatenated."""
    if len(x4.chunks[1]) == 1:
        return _windowed(x4, axes, op, params, (), x4.shape[1], x4.dtype, label, pad_value, chunk_params, token)
    starts = np.cumsum((0,) + x4.chunks[1])
    return da.concatenate([_windowed(x4[:, int(a):int(b)], axes, op, params, (), int(b - a), x4.dtype, label,
                                     pad_value, chunk_params, token) for a, b in zip(starts[:-1], starts[1:])],
                          axis=1)


# ----------------------------------------------------------------------------------------------
# a chain of layers in one pass
# ----------------------------------------------------------------------------------------------

def _layers_op(win, p, fn):
    expected = p
    y = fn.value(win)
    if tuple(y.shape[2:]) != expected or y.shape[0] != win.shape[0]:
        raise ValueError(f"gpuconv.dask.map_layers(): fn returned shape {tuple(y.shape)} for a window of shape "
                         f"{tuple(win.shape)}; the receptive field says (N, K, {expected[0]}, {expected[1]}): "
                         "it does not describe fn (fn's layers must be unpadded, without ceil_mode)")
    return y


def map_layers(x, fn, field: ReceptiveField, *, padding=0, out_channels=None, dtype=None):
    """Run ``fn``, a chain of gpuconv calls (conv -> relu -> pool -> conv ...), over a ``dask.array.Array``
    (NCHW or CHW) with one halo exchange for the whole chain: each output chunk's task assembles the input
    window its outputs need (``field.input_window``) and calls ``fn`` on it once. The result equals
    ``fn`` applied to the whole (padded) array.

    Args:
        fn: NCHW array -> NCHW array of the same kind, made of sliding-window layers with no padding
            (``padding=0`` / ``'valid'``) and no ``ceil_mode``, and pointwise steps. A layer's padding would pad
            every window, not just the image's border; pad the chain's input instead (``padding``), or
            chain :func:`conv2d` / :func:`max_pool2d` calls (one halo exchange each) for per-layer padding.
            ``fn`` is one node of the graph: weights it captures travel to each worker once.
        field: ``gpuconv.receptive_field(layers)`` of ``fn``'s sliding-window layers (their padding must be
            0; checked: a chunk whose output does not have the size the field gives raises ``ValueError``).
        padding: zeros added around ``x`` (int, ``(h, w)`` or ``((top, bottom), (left, right))``) at the
            array's real borders before the chain, as ``fn(pad(x))``.
        out_channels, dtype: of ``fn``'s output; when omitted, found by calling ``fn`` once on a zero window
            of one receptive field (shape ``(1, C) + field.size``).
    """
    if not isinstance(field, ReceptiveField):
        raise TypeError(f"gpuconv.dask.map_layers(): field must be a gpuconv.receptive_field(...) result, got "
                        f"{type(field).__name__}")
    if field.padding != ((0, 0), (0, 0)):
        raise ValueError(f"gpuconv.dask.map_layers(): the field's layers are padded ({field.padding}); fn's layers "
                         "must be unpadded, since a layer's padding would pad every chunk's window and not "
                         "only the image's border. Pad the input instead (padding=...)")
    if isinstance(padding, str):
        raise TypeError(f"gpuconv.dask.map_layers(): padding must be ints, got {padding!r}")
    x4, unbatched = _as_nchw(x, "map_layers")
    pt, pb, pl, pr = resolve_conv_padding(padding, field.size, field.stride, (1, 1), x4.shape[2:])
    out = [(n + lo + hi - e) // s + 1 for n, e, s, (lo, hi) in
           zip(x4.shape[2:], field.size, field.stride, ((pt, pb), (pl, pr)))]
    if min(out) < 1:
        raise ValueError(f"gpuconv.dask.map_layers(): input of size {list(x4.shape)} with padding "
                         f"{((pt, pb), (pl, pr))} is smaller than the receptive field {field.size}")
    if out_channels is None or dtype is None:
        probe = fn(_xp(x4._meta).zeros((1, x4.shape[1]) + field.size, dtype=x4.dtype))
        if tuple(probe.shape) != (1, probe.shape[1], 1, 1):
            raise ValueError(f"gpuconv.dask.map_layers(): fn returned shape {tuple(probe.shape)} for one receptive "
                             f"field {(1, x4.shape[1]) + field.size}, expected (1, K, 1, 1): the field does not "
                             "describe fn")
        out_channels = probe.shape[1] if out_channels is None else out_channels
        dtype = probe.dtype if dtype is None else dtype
    axes = tuple(Axis(n, e, s, lo, o) for n, e, s, lo, o in
                 zip(x4.shape[2:], field.size, field.stride, (pt, pl), out))

    def chunk_params(rows, cols):
        return rows[1] - rows[0], cols[1] - cols[0]

    y = _windowed(x4, axes, _layers_op, _Const(None), (_Const(fn),), int(out_channels), np.dtype(dtype),
                  "map_layers", 0, chunk_params, (field, out_channels, str(dtype)))
    return _finish(y, unbatched)
