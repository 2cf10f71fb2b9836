"""``gpuconv.dask``: convolution and pooling in 1, 2 and 3 spatial dimensions (NCL, NCHW, NCDHW), max
pooling's indices, and the convolutions' and poolings' gradients on ``dask.array`` arrays, for batches and
images larger than one device's or one machine's memory. Imported explicitly (``import gpuconv.dask``);
``import gpuconv`` never imports dask. Needs the extra ``gpuconv[dask]`` (``dask[array]``; ``distributed`` for clusters).

How an image is cut (docs/dask.md has the details and the reasons):

* Along N, chunks are independent. For conv2d, C is made one chunk (``x.rechunk({1: -1})``, a no-op when
  it is one already): every output channel needs every input channel of its group; pooling keeps C's chunks.
* Along the spatial axes (L; H, W; D, H, W) each output chunk is one task. It reads exactly the input rows and
  columns its outputs' windows cover, ``[o0*s - pad_lo, (o1-1)*s - pad_lo + d*(k-1) + 1)``, from however many
  input chunks hold them (so chunks smaller than the halo, and uneven last chunks, need no rechunking), adds
  the padding where that range leaves the array (zeros for convolution and average pooling, -inf for max
  pooling, only at the array's real borders, where the global padding and the ceil-mode overhang lie), and
  runs the single-array gpuconv call with ``padding=0`` on it. Output chunk ``i`` holds the outputs whose
  window's centre lies in input chunk ``i``: boundaries are aligned to the stride, so every output pixel is
  computed exactly once. Average pooling divides by the global divisor of each window (the
  ``count_include_pad`` / ceil-mode rules of the whole array), not the chunk's.
* Weights and bias (and ``map_layers``' function) are one node of the graph, which every task depends
  on: a distributed worker receives each once, not once per chunk.

Chunks may be NumPy or CuPy arrays: the tasks only slice, concatenate (``numpy.concatenate`` /
``numpy.pad``, which dispatch to CuPy through ``__array_function__``) and call gpuconv, so the same graph
runs our CUDA kernels on CuPy chunks (the result keeps the input's ``meta``; weights must be of the
chunks' kind). The graph machinery (per axis, for 1 to 3 axes) is ``_dask_graph``; the convolutions'
gradients (``conv{1,2,3}d_input``, ``_weight``, ``_bias``) are ``_dask_grad``'s; max pooling's
``return_indices=True`` and the pooling gradients (``{max,avg}_pool{1,2,3}d_input``) ``_dask_pool_grad``'s.
"""

from __future__ import annotations

import numpy as np

from ._dask_graph import Axis, _as_batched, _channelwise, _check_arrays, _Const, _finish, _windowed, _xp
from ._geometry_nd import explicit_padding
from ._numpy.pool import divisor_extent
from ._receptive_field import ReceptiveField
from .conv import conv2d as _conv2d
from .conv_nd import conv1d as _conv1d
from .conv_nd import conv3d as _conv3d
from .pool import avg_pool2d as _avg_pool2d
from .pool import max_pool2d as _max_pool2d
from .pool_nd import _check_divisor
from .pool_nd import avg_pool1d as _avg_pool1d
from .pool_nd import avg_pool3d as _avg_pool3d
from .pool_nd import max_pool1d as _max_pool1d
from .pool_nd import max_pool3d as _max_pool3d
from ._dask_pool_grad import max_pool_indices, pool_fields, pool_input
from ._dask_grad import (conv1d_bias, conv1d_input, conv1d_weight, conv2d_bias, conv2d_input, conv2d_weight,
                         conv3d_bias, conv3d_input, conv3d_weight, conv_axes)

__all__ = ["conv1d", "conv2d", "conv3d", "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d",
           "avg_pool3d", "map_layers", "conv1d_input", "conv1d_weight", "conv1d_bias", "conv2d_input",
           "conv2d_weight", "conv2d_bias", "conv3d_input", "conv3d_weight", "conv3d_bias",
           "max_pool1d_input", "max_pool2d_input", "max_pool3d_input", "avg_pool1d_input", "avg_pool2d_input",
           "avg_pool3d_input"]

_CONV = {1: _conv1d, 2: _conv2d, 3: _conv3d}
_MAX = {1: _max_pool1d, 2: _max_pool2d, 3: _max_pool3d}


# ----------------------------------------------------------------------------------------------
# convolution
# ----------------------------------------------------------------------------------------------

def _conv_op(win, p, weight, bias):
    nd, (stride, dilation, groups, flip, activation) = p
    return _CONV[nd](win, weight, bias, stride, 0, dilation, groups, flip=flip, activation=activation)


def _conv(nd, x, weight, bias, stride, padding, dilation, groups, flip, activation):
    fn = f"conv{nd}d"
    xb, unbatched = _as_batched(x, fn, nd)
    _check_arrays(fn, xb, weight=weight, bias=bias)
    axes, K, resolved, g = conv_axes(nd, xb.shape, tuple(weight.shape), None if bias is None else tuple(bias.shape),
                                     stride, padding, dilation, groups, flip, activation)
    y = _windowed(xb, axes, _conv_op, _Const((nd, resolved)), (weight, bias), K, xb.dtype, fn, 0, token=g)
    return _finish(y, unbatched)


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
    return _conv(2, x, weight, bias, stride, padding, dilation, groups, flip, activation)


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, flip=False, activation=None):
    """:func:`gpuconv.conv1d` of a ``dask.array.Array`` (NCL or CL), lazily: :func:`conv2d`'s chunks, halos
    and border padding along L."""
    return _conv(1, x, weight, bias, stride, padding, dilation, groups, flip, activation)


def conv3d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, flip=False, activation=None):
    """:func:`gpuconv.conv3d` of a ``dask.array.Array`` (NCDHW or CDHW), lazily: :func:`conv2d`'s chunks,
    halos and border padding along D, H and W."""
    return _conv(3, x, weight, bias, stride, padding, dilation, groups, flip, activation)


# ----------------------------------------------------------------------------------------------
# pooling
# ----------------------------------------------------------------------------------------------

def _pool(nd, fn, x, kernel_size, stride, padding, dilation, ceil_mode):
    """``(x batched, unbatched, per axis (size, kernel, stride, (lo, hi), dilation, out), the Axis per axis,
    the geometry)`` of a {max,avg}_pool{nd}d call, checked as the single call checks it."""
    xb, unbatched = _as_batched(x, fn, nd, one_channel_chunk=False)
    _check_arrays(fn, xb)
    fields, axes, g = pool_fields(nd, xb.shape, kernel_size, stride, padding, dilation, ceil_mode, fn)
    return xb, unbatched, fields, axes, g


def _max_op(win, p):
    nd, kernel, stride, dilation = p
    return _MAX[nd](win, kernel, stride, 0, dilation)


def _max(nd, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    fn = f"max_pool{nd}d"
    xb, unbatched, f, axes, g = _pool(nd, fn, x, kernel_size, stride, padding, dilation, ceil_mode)
    if return_indices:
        y, idx = max_pool_indices(nd, xb, f, axes, g, fn)
        return _finish(y, unbatched), _finish(idx, unbatched)
    params = _Const((nd, tuple(a[1] for a in f), tuple(a[2] for a in f), tuple(a[4] for a in f)))
    return _finish(_channelwise(xb, axes, _max_op, params, fn, -np.inf, token=g), unbatched)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """:func:`gpuconv.max_pool2d` of a ``dask.array.Array`` (NCHW or CHW), lazily; chunks and halos as
    :func:`conv2d` (C keeps its chunks: pooling is per channel). Each chunk's window is padded with -inf
    only where it leaves the array (the padding, and with ``ceil_mode`` the last window's overhang), so
    results equal the single call's exactly, NaN rules included. ``return_indices=True``: ``(values,
    indices)``, two dask arrays; each chunk's window-local indices are made the single call's (flat in the
    whole plane, ``h*W + w``) by its window's origin, so they equal the single call's exactly."""
    return _max(2, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool1d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """:func:`gpuconv.max_pool1d` of a ``dask.array.Array`` (NCL or CL), lazily, as :func:`max_pool2d`."""
    return _max(1, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool3d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """:func:`gpuconv.max_pool3d` of a ``dask.array.Array`` (NCDHW or CDHW), lazily, as :func:`max_pool2d`."""
    return _max(3, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def _avg_op(win, p):
    nd, kernel, stride, override, divisor = p
    if divisor is None:  # every window of this chunk has the single call's divisor: kernel size or override
        if nd == 1:
            return _avg_pool1d(win, kernel, stride, 0)
        return (_avg_pool2d if nd == 2 else _avg_pool3d)(win, kernel, stride, 0, divisor_override=override)
    # Windows at the array's border whose divisor is not the kernel size: window sums (divisor 1, in float32
    # for float16 input, as the single call sums), divided by the whole array's divisor of each window (the
    # product of one factor per axis, as the single call's).
    compute = np.float32 if win.dtype == np.float16 else win.dtype
    w = win.astype(compute, copy=False)
    if nd == 3:
        sums = _avg_pool3d(w, kernel, stride, 0, divisor_override=1)
    elif nd == 2:
        sums = _avg_pool2d(w, kernel, stride, 0, divisor_override=1)
    else:  # avg_pool1d has no divisor_override; it is the 2-D op on one-row planes, which has
        sums = _avg_pool2d(w[:, :, None], (1,) + kernel, (1,) + stride, 0, divisor_override=1)[:, :, 0]
    xp = _xp(sums)
    total = 1
    for a, v in enumerate(divisor):
        total = total * xp.asarray(v, dtype=compute).reshape((-1,) + (1,) * (nd - 1 - a))
    return (sums / total).astype(win.dtype, copy=False)


def _avg(nd, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    fn = f"avg_pool{nd}d"
    if divisor_override is not None:  # the single call's checks and messages
        _check_divisor(f"gpuconv.dask.{fn}", divisor_override)
    xb, unbatched, f, axes, g = _pool(nd, fn, x, kernel_size, stride, padding, 1, ceil_mode)
    kernel, strides, override, cip = tuple(a[1] for a in f), tuple(a[2] for a in f), divisor_override or None, \
        bool(count_include_pad)

    def chunk_params(*ranges):
        divisor = None
        if override is None:
            ds = [divisor_extent(o0, o1, k, s, lo, hi, n, cip) for (o0, o1), (n, k, s, (lo, hi), _, _) in
                  zip(ranges, f)]
            if any((dv != k).any() for dv, k in zip(ds, kernel)):
                divisor = tuple(ds)
        return nd, kernel, strides, override, divisor

    return _finish(_channelwise(xb, axes, _avg_op, _Const(None), fn, 0, chunk_params, (g, cip, override)), unbatched)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """:func:`gpuconv.avg_pool2d` of a ``dask.array.Array`` (NCHW or CHW), lazily; chunks and halos as
    :func:`max_pool2d`. Each chunk's window is zero-padded only at the array's borders, and windows there
    are divided by the single call's divisor (``count_include_pad``: explicit padding counts, the ceil-mode
    overhang does not; ``divisor_override`` replaces it), so border chunks average exactly as the whole
    array does."""
    return _avg(2, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


def avg_pool1d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """:func:`gpuconv.avg_pool1d` of a ``dask.array.Array`` (NCL or CL), lazily, as :func:`avg_pool2d`
    (no ``divisor_override``, as ``avg_pool1d``)."""
    return _avg(1, x, kernel_size, stride, padding, ceil_mode, count_include_pad, None)


def avg_pool3d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """:func:`gpuconv.avg_pool3d` of a ``dask.array.Array`` (NCDHW or CDHW), lazily, as :func:`avg_pool2d`."""
    return _avg(3, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


# ----------------------------------------------------------------------------------------------
# pooling gradients (``_dask_pool_grad``)
# ----------------------------------------------------------------------------------------------

def max_pool2d_input(input_size, grad_output, indices, kernel_size, stride=None, padding=0, dilation=1,
                     ceil_mode=False, *, chunks=None):
    """:func:`gpuconv.grad.max_pool2d_input` of dask ``grad_output`` and ``indices`` (as
    :func:`max_pool2d`'s ``return_indices=True`` gives them: flat in the whole plane), lazily: a dask array of
    ``input_size``, chunked along N as ``grad_output``, one chunk along C, along H and W as ``chunks``
    (default: ``grad_output``'s boundaries carried to the input rows of their windows' centres). Each chunk
    reads the ``grad_output`` and ``indices`` rows whose windows overlap it; an index outside the chunk
    contributes nothing to it."""
    return pool_input("max", 2, input_size, grad_output, indices, kernel_size, stride, padding, dilation,
                      ceil_mode, chunks=chunks)


def max_pool1d_input(input_size, grad_output, indices, kernel_size, stride=None, padding=0, dilation=1,
                     ceil_mode=False, *, chunks=None):
    """:func:`gpuconv.grad.max_pool1d_input` on dask arrays, as :func:`max_pool2d_input`."""
    return pool_input("max", 1, input_size, grad_output, indices, kernel_size, stride, padding, dilation,
                      ceil_mode, chunks=chunks)


def max_pool3d_input(input_size, grad_output, indices, kernel_size, stride=None, padding=0, dilation=1,
                     ceil_mode=False, *, chunks=None):
    """:func:`gpuconv.grad.max_pool3d_input` on dask arrays, as :func:`max_pool2d_input`."""
    return pool_input("max", 3, input_size, grad_output, indices, kernel_size, stride, padding, dilation,
                      ceil_mode, chunks=chunks)


def avg_pool2d_input(input_size, grad_output, kernel_size, stride=None, padding=0, ceil_mode=False,
                     count_include_pad=True, divisor_override=None, *, chunks=None):
    """:func:`gpuconv.grad.avg_pool2d_input` of a dask ``grad_output``, lazily, chunked as
    :func:`max_pool2d_input`. Each window's gradient is divided by the whole array's divisor of that window
    (``count_include_pad``, ceil mode, per-side padding, ``divisor_override``), not the chunk's."""
    return pool_input("avg", 2, input_size, grad_output, None, kernel_size, stride, padding, 1, ceil_mode,
                      count_include_pad, divisor_override, chunks)


def avg_pool1d_input(input_size, grad_output, kernel_size, stride=None, padding=0, ceil_mode=False,
                     count_include_pad=True, *, chunks=None):
    """:func:`gpuconv.grad.avg_pool1d_input` on a dask array, as :func:`avg_pool2d_input`."""
    return pool_input("avg", 1, input_size, grad_output, None, kernel_size, stride, padding, 1, ceil_mode,
                      count_include_pad, None, chunks)


def avg_pool3d_input(input_size, grad_output, kernel_size, stride=None, padding=0, ceil_mode=False,
                     count_include_pad=True, divisor_override=None, *, chunks=None):
    """:func:`gpuconv.grad.avg_pool3d_input` on a dask array, as :func:`avg_pool2d_input`."""
    return pool_input("avg", 3, input_size, grad_output, None, kernel_size, stride, padding, 1, ceil_mode,
                      count_include_pad, divisor_override, chunks)


# ----------------------------------------------------------------------------------------------
# a chain of layers in one pass
# ----------------------------------------------------------------------------------------------

def _layers_op(win, p, fn):
    expected = p
    y = fn.value(win)
    if tuple(y.shape[2:]) != expected or y.shape[0] != win.shape[0]:
        raise ValueError(f"gpuconv.dask.map_layers(): fn returned shape {tuple(y.shape)} for a window of shape "
                         f"{tuple(win.shape)}; the receptive field says (N, K, {', '.join(map(str, expected))}): "
                         "it does not describe fn (fn's layers must be unpadded, without ceil_mode)")
    return y


def map_layers(x, fn, field: ReceptiveField, *, padding=0, out_channels=None, dtype=None):
    """Run ``fn``, a chain of gpuconv calls (conv -> relu -> pool -> conv ...), over a ``dask.array.Array``
    (N, C and the field's 1, 2 or 3 spatial axes, or unbatched) with one halo exchange for the whole chain:
    each output chunk's task assembles the input window its outputs need (``field.input_window``) and calls
    ``fn`` on it once. The result equals ``fn`` applied to the whole (padded) array.

    Args:
        fn: array -> array of the same kind and rank, made of sliding-window layers with no padding
            (``padding=0`` / ``'valid'``) and no ``ceil_mode``, and pointwise steps. A layer's padding would pad
            every window, not just the image's border; pad the chain's input instead (``padding``), or
            chain :func:`conv2d` / :func:`max_pool2d` calls (one halo exchange each) for per-layer padding.
            ``fn`` is one node of the graph: weights it captures travel to each worker once.
        field: ``gpuconv.receptive_field(layers)`` of ``fn``'s sliding-window layers (their padding must be
            0; checked: a chunk whose output does not have the size the field gives raises ``ValueError``);
            its number of spatial axes is the array's.
        padding: zeros added around ``x`` (int, one int per spatial axis, or ``(low, high)`` per axis) at the
            array's real borders before the chain, as ``fn(pad(x))``.
        out_channels, dtype: of ``fn``'s output; when omitted, found by calling ``fn`` once on a zero window
            of one receptive field (shape ``(1, C) + field.size``).
    """
    if not isinstance(field, ReceptiveField):
        raise TypeError(f"gpuconv.dask.map_layers(): field must be a gpuconv.receptive_field(...) result, got "
                        f"{type(field).__name__}")
    nd = field.ndim
    if any(field.padding[a] != (0, 0) for a in range(nd)):
        raise ValueError(f"gpuconv.dask.map_layers(): the field's layers are padded ({field.padding}); fn's layers "
                         "must be unpadded, since a layer's padding would pad every chunk's window and not "
                         "only the image's border. Pad the input instead (padding=...)")
    if isinstance(padding, str):
        raise TypeError(f"gpuconv.dask.map_layers(): padding must be ints, got {padding!r}")
    x4, unbatched = _as_batched(x, "map_layers", nd)
    pads = explicit_padding(padding, nd, field.size, field.stride, (1,) * nd, x4.shape[2:])
    out = [(n + lo + hi - e) // s + 1 for n, e, s, (lo, hi) in zip(x4.shape[2:], field.size, field.stride, pads)]
    if min(out) < 1:
        raise ValueError(f"gpuconv.dask.map_layers(): input of size {list(x4.shape)} with padding "
                         f"{pads} is smaller than the receptive field {field.size}")
    if out_channels is None or dtype is None:
        probe = fn(_xp(x4._meta).zeros((1, x4.shape[1]) + field.size, dtype=x4.dtype))
        if tuple(probe.shape) != (1, probe.shape[1]) + (1,) * nd:
            raise ValueError(f"gpuconv.dask.map_layers(): fn returned shape {tuple(probe.shape)} for one receptive "
                             f"field {(1, x4.shape[1]) + field.size}, expected {(1, 'K') + (1,) * nd}: the field "
                             "does not describe fn")
        out_channels = probe.shape[1] if out_channels is None else out_channels
        dtype = probe.dtype if dtype is None else dtype
    axes = tuple(Axis(n, e, s, lo, o) for n, e, s, (lo, _), o in
                 zip(x4.shape[2:], field.size, field.stride, pads, out))

    def chunk_params(*ranges):
        return tuple(b - a for a, b in ranges)

    y = _windowed(x4, axes, _layers_op, _Const(None), (_Const(fn),), int(out_channels), np.dtype(dtype),
                  "map_layers", 0, chunk_params, (field, out_channels, str(dtype)))
    return _finish(y, unbatched)
