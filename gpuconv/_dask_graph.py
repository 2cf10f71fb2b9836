"""The task-graph machinery of ``gpuconv.dask`` (imported only by it: needs dask): per spatial axis the
window arithmetic (``Axis``, and ``InputAxis`` for a gradient's transposed problem), the assembly of one
task's window from the input blocks it overlaps for 1, 2 or 3 spatial axes (``_window``), and the graph of
one task per output chunk (``_tasks`` / ``_windowed``). docs/dask.md has the rules and the reasons.
"""

from __future__ import annotations

import importlib
import itertools
from dataclasses import dataclass

import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from . import _backend


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

    def readers(self, a: int, b: int) -> tuple[int, int]:
        """The transposed question: the outputs ``[o0, o1)`` whose windows overlap input ``[a, b)`` (``o0 >=
        o1`` when none does: a stride larger than the extent skips inputs). Output ``o`` overlaps it iff
        ``o*s - pad_lo + extent > a`` and ``o*s - pad_lo < b``."""
        o0 = max(-((self.pad_lo - self.extent + 1 + a) // -self.stride), 0)  # ceil((a + pad_lo - extent + 1) / s)
        o1 = min((b - 1 + self.pad_lo) // self.stride + 1, self.out)
        return o0, max(o1, o0)

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
        return _pieces(*self.window(o0, o1), self.size, in_chunks)


@dataclass(frozen=True)
class InputAxis:
    """An input gradient's axis (the transposed problem): its "input" is ``grad_output`` along ``fwd``
    (``fwd.out`` long), its outputs are the forward input's rows, cut into ``chunks``; output chunk
    ``[a, b)`` reads the ``grad_output`` rows ``fwd.readers(a, b)`` (never padded: those are exact)."""

    fwd: Axis
    chunks: tuple

    def output_chunks(self, in_chunks) -> tuple[int, ...]:
        return self.chunks

    def pieces(self, a: int, b: int, in_chunks):
        return _pieces(*self.fwd.readers(a, b), self.fwd.out, in_chunks)


def _pieces(a: int, b: int, size: int, in_chunks):
    lo, hi = max(a, 0), min(b, size)
    pads = (max(0, min(b, 0) - a), max(0, b - max(a, size)))
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


class _Blocks:
    """A ``_tasks`` constant that is, per task, the block of another dask array at the task's own index
    (``(name, n, 0, i, j, ...)``: an array chunked as the output, e.g. ``grad_output``)."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name


class _Const:
    """A value carried by the graph as data (never mistaken for a task or a key): parameters, ``fn``."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def _window(blocks, slices, pads, pad_value):
    """Assemble one task's input window from its input blocks (nested lists, one level per spatial axis,
    ``blocks[i][j]...``), slicing each to the part needed (``slices[axis][i]``) before concatenating (the
    last axis first, then outwards), and pad it where it leaves the array (``pads[axis]``)."""
    nd = len(slices)

    def assemble(b, d, idx):
        if d == nd:
            return b[(slice(None), slice(None)) + tuple(slices[a][i] for a, i in enumerate(idx))]
        parts = [assemble(sub, d + 1, idx + (i,)) for i, sub in enumerate(b)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2 + d)

    win = assemble(blocks, 0, ())
    if any(any(p) for p in pads):
        win = np.pad(win, ((0, 0), (0, 0)) + tuple(pads), constant_values=pad_value)
    return win


def _run(op, blocks, slices, pads, pad_value, params, *consts):
    return op(_window(blocks, slices, pads, pad_value), params.value, *consts)


def _tasks(x, axes, op, params, consts, label, pad_value, chunk_params=None, token=()):
    """The tasks: one per output chunk ``(n, 0, i, j, ...)`` running ``op(window, params, *consts)`` on its
    window of ``x`` (N, C, *spatial; C one chunk). ``consts`` (arrays or ``_Const``, or None) are graph nodes
    of their own, one each; a ``_Blocks`` const is the task's own block of that array;
    ``chunk_params(*ranges)``, if given, replaces ``params`` per chunk (the chunk's output range per axis as
    arguments). ``token``: every argument of the public call,
    for the output's name. Returns ``(dsk, name, output chunks per spatial axis)``."""
    nd = len(axes)
    out_chunks = tuple(ax.output_chunks(c) for ax, c in zip(axes, x.chunks[2:]))
    dsk, refs = {}, []
    for v in consts:
        if v is None or isinstance(v, _Blocks):
            refs.append(v)
            continue
        key = "gpuconv-const-" + tokenize(v.value if isinstance(v, _Const) else v)
        dsk[key] = v
        refs.append(key)
    name = f"gpuconv-{label}-" + tokenize(x.name, axes, label, token,
                                               [getattr(r, "name", r) for r in refs], pad_value)
    ranges = []
    for oc in out_chunks:
        ends = np.cumsum((0,) + oc)
        ranges.append([(int(a), int(b)) for a, b in zip(ends[:-1], ends[1:])])
    plans = [[ax.pieces(o0, o1, x.chunks[2 + d]) for o0, o1 in ranges[d]] for d, ax in enumerate(axes)]

    def nest(firsts, counts, d, idx, n):
        if d == nd:
            return (x.name, n, 0) + idx
        return [nest(firsts, counts, d + 1, idx + (firsts[d] + a,), n) for a in range(counts[d])]

    for n in range(len(x.chunks[0])):
        for ij in itertools.product(*(range(len(p)) for p in plans)):
            plan = [plans[d][i] for d, i in enumerate(ij)]
            blocks = nest([p[0] for p in plan], [len(p[1]) for p in plan], 0, (), n)
            p = params if chunk_params is None else _Const(chunk_params(*(ranges[d][i] for d, i in enumerate(ij))))
            args = [(r.name, n, 0) + ij if isinstance(r, _Blocks) else r for r in refs]
            dsk[(name, n, 0) + ij] = (_run, op, blocks, [q[1] for q in plan], tuple(q[2] for q in plan),
                                      pad_value, p, *args)
    return dsk, name, out_chunks


def _windowed(x, axes, op, params, consts, channels, dtype, label, pad_value, chunk_params=None, token=(),
              deps=()):
    """``_tasks`` as a dask array (N, channels, *output chunks); ``deps``: other arrays the tasks read."""
    dsk, name, out_chunks = _tasks(x, axes, op, params, consts, label, pad_value, chunk_params, token)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[x, *deps])
    chunks = (x.chunks[0], (channels,)) + out_chunks
    return da.Array(graph, name, chunks, meta=meta_from_array(x._meta, ndim=x.ndim, dtype=dtype))


def _channelwise(x, axes, op, params, label, pad_value, chunk_params=None, token=()):
    """``_windowed`` once per chunk of C (pooling keeps the input's channel chunks), concatenated."""
    if len(x.chunks[1]) == 1:
        return _windowed(x, axes, op, params, (), x.shape[1], x.dtype, label, pad_value, chunk_params, token)
    starts = np.cumsum((0,) + x.chunks[1])
    return da.concatenate([_windowed(x[:, int(a):int(b)], axes, op, params, (), int(b - a), x.dtype, label,
                                     pad_value, chunk_params, token) for a, b in zip(starts[:-1], starts[1:])],
                          axis=1)


def _as_batched(x, fn: str, nd: int, one_channel_chunk=True, arg="input"):
    """``x`` as an ``nd + 2``-D dask array (with one chunk along C, if asked); and whether it was unbatched."""
    if not isinstance(x, da.Array):
        raise TypeError(f"gpuconv.dask.{fn}(): argument '{arg}' must be a dask.array.Array, got "
                        f"{type(x).__module__}.{type(x).__name__} (use gpuconv.{fn} for NumPy / CuPy arrays, "
                        "or wrap it: dask.array.from_array(x, chunks=...))")
    if x.ndim not in (nd + 1, nd + 2):
        raise ValueError(f"gpuconv.dask.{fn}(): expected a {nd + 1}-D (unbatched) or {nd + 2}-D (batched) {arg}, "
                         f"but got {arg} of size: {list(x.shape)}")
    xb = x if x.ndim == nd + 2 else x[None]
    if one_channel_chunk and len(xb.chunks[1]) > 1:
        xb = xb.rechunk({1: -1})
    return xb, x.ndim == nd + 1


def _check_arrays(fn: str, x, **arrays):
    """The single-array call's checks on array kinds and dtypes, done now on the input's meta (the same
    TypeError messages), so a wrong weight fails when the graph is built, not in a worker."""
    meta = meta_from_array(x._meta, ndim=x.ndim)
    _backend.coerce_arrays(f"gpuconv.dask.{fn}", optional=("bias",), input=meta, **arrays)


def _xp(a):
    return np if isinstance(a, np.ndarray) else importlib.import_module(type(a).__module__.split(".")[0])


def _finish(y, unbatched):
    return y[0] if unbatched else y
