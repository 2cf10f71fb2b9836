"""conv3d gradients on the NumPy path (issue 18): the 2-D gradients' col2im / im2col GEMMs (``conv_grad``) in
N spatial dimensions, instead of the depth-tap lowering's per-tap 2-D gradients (``gpuconv._conv_nd``, which
keeps the cases these decline). Written for any number of spatial dimensions; ``_conv_nd`` runs it for 3-D
(the 2-D call keeps ``conv_grad``, measured and tuned per layer class there). Notation: ``x (N, C, *In)``,
``w (K, Cg, *Kr)``, ``gy (N, K, *Out)``, ``taps = prod(Kr)``, groups ``G``, ``Kg = K / G``.

* ``numpy_col2im3d`` (data): per chunk of whole samples, ``gy`` is copied to ``(G, Kg, n*prod(Out))`` (the
  activation's derivative applied in that copy, ``grad_activation.load_gy``), ONE GEMM per group ``w^T
  (Cg*taps, Kg) @ gy`` (``w^T`` a view) gives the columns ``(C, *Kr, n, *Out)``, and col2im adds each tap's
  slab into ``gx`` (the outputs whose tap lands inside the input, ``_geometry.tap_outputs`` per axis; taps in
  the padding are dropped), taps in a fixed order, per block of channels on the thread pool (blocks write
  disjoint channels). When one sample does not fit the workspace, chunks of output depths, taken in
  DECREASING order: input depth ``d`` gets depth tap ``t`` from output depth ``(d + pd - t*dd) / sd``, so a
  later chunk brings later taps and every element of ``gx`` still sums its taps in the order ``(t, r, s)``.
  Split and unsplit runs (samples or depths) so give the same bits (tested).
* ``numpy_depthwise_data3d`` (data, one input channel and at most 2 filters per group, where the GEMM's
  inner dimension would be ``Kg``): the same chunks, no columns: per tap and filter of the group
  ``gx[tap's slab] += w[k, tap] * gy[k]`` (a multiply into a per-thread slab, then the add).
* ``numpy_im2col3d_filter`` (filter): per chunk of samples, the im2col gather of ``x`` (from a zero-padded copy
  of the chunk, or from ``x`` itself when no window reads padding and ``x`` is in the compute dtype) to
  ``(G, Cg*taps, n*prod(Out))`` and ``gy`` copied to ``(G, Kg, n*prod(Out))`` (derivative applied there); then
  ONE GEMM per group and SAMPLE (views of the chunk's buffers, ``gy @ cols^T``, or ``cols @ gy^T`` with many
  columns as in 2-D), summed in sample order: the reduction's grouping is the sample, whatever the chunk, so
  split and unsplit runs give the same bits. When one sample does not fit, chunks of output depths, summed
  in order (deterministic; not the unsplit run's bits, a different grouping of the sum). Depthwise-like
  layers take this path too: the GEMM's inner dimension is ``n*prod(Out)``, not ``Kg`` (no wasted GEMM; the
  gather copies ``x`` ``taps`` times, as 2-D's im2col does; 2-D's phase-plane dot products are not ported).

float16 is computed in float32 (operands cast in the copies, float32 accumulators) and rounded once. Memory:
besides the result, one chunk's workspace (``_workspace.workspace``), the derivative's block temporaries,
a cast copy of the weight where ``w`` is not in the compute dtype, the float32 ``gx`` accumulator (float16) and
the filter gradient's accumulator and per-sample part, all within ``workspace_limit()``; when not even one
output depth's chunk fits, :func:`data_decline_reason` /
:func:`filter_decline_reason` say why and the depth-tap lowering runs.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from .._geometry import tap_outputs
from ._conv_strategies import prime_blas
from .conv_grad import COL2IM_BLOCK_BYTES, FILTER_TRANSPOSED_MIN_COLUMNS, _channel_blocks
from .grad_activation import CHUNK_BYTES, Derivative, compute_dtype, load_gy, temp_bytes
from ._workspace import (parallel_map, pool_threads, strided_view, trim_workspace, workspace, workspace_bytes,
                         workspace_limit)

_SMALL = 8 * 64  # alignment slack of a few carved arrays


def _taps(kr):
    return list(itertools.product(*(range(k) for k in kr)))


def _weight_tap(geom, tap):
    """The weight's tap that is the correlation's ``tap`` (all axes reversed for flip)."""
    return tuple(k - 1 - t for k, t in zip(geom.kernel_size, tap)) if geom.flip else tap


def is_depthwise_data(geom) -> bool:
    """One input channel and at most 2 filters per group: multiply-adds instead of a GEMM of inner size Kg."""
    return geom.Cg == 1 and geom.Kg <= 2


# --------------------------------------------------------------------------------------------
# entry points (``_conv_nd.backward_data`` / ``backward_filter`` on NumPy arrays)
# --------------------------------------------------------------------------------------------

def _derivative(gy, out, activation):
    if (out is None) != (activation is None):
        raise ValueError("conv3d gradient: out and activation are given together or not at all")
    if out is None:
        return None
    if out.shape != gy.shape:
        raise ValueError(f"conv3d gradient: out has shape {out.shape}, grad_output {gy.shape}: they must match")
    return Derivative(out, activation)


def data_gradient(gy, w, geom, size, out=None, activation=None):
    """``(gx, [record])``, or ``(None, [why the depth-tap lowering runs])``. With ``out`` (the activated
    forward output, ``gy``'s shape) and ``activation``, the gradient of ``gy * act'``, the derivative applied
    in the chunk copies; where this declines, the caller applies it before the lowering."""
    act = _derivative(gy, out, activation)
    why = data_decline_reason(geom, gy.dtype, gy.shape[2:], size, act)
    if why is not None:
        return None, [f"conv3d depth-tap lowering ({why})"]
    gx, name = backward_data(gy, w, geom, size, act)
    return gx, [name]


def filter_gradient(x, gy, geom, out=None, activation=None, bias=None):
    """``(gw, [record])``, or ``(None, [why the depth-tap lowering runs])``; ``out`` / ``activation`` as
    :func:`data_gradient`'s, ``bias`` as :func:`backward_filter`'s."""
    act = _derivative(gy, out, activation)
    why = filter_decline_reason(geom, x.dtype, act)
    if why is not None:
        return None, [f"conv3d depth-tap lowering ({why})"]
    gw, name = backward_filter(x, gy, geom, act, bias)
    return gw, [name]


# --------------------------------------------------------------------------------------------
# backward data
# --------------------------------------------------------------------------------------------

def _dw_block(geom, n, size, item) -> int:
    """Channels per block of the depthwise multiply-adds (``_channel_blocks``' rule)."""
    return max(1, min(geom.C, COL2IM_BLOCK_BYTES // max(1, n * math.prod(size) * item)))


def _data_specs(geom, dtype, n, on, out, size):
    """The workspace of one data chunk of ``n`` samples and ``on`` output depths: the ``gy`` copy, and the
    columns (GEMM) or one product slab per thread (depthwise)."""
    ct = compute_dtype(dtype)
    plane = math.prod(out[1:])
    gyt = ((geom.groups, geom.Kg, n, on) + tuple(out[1:]), ct)
    if is_depthwise_data(geom):
        slots = pool_threads(-(-geom.C // _dw_block(geom, n, size, ct.itemsize)))
        return gyt, ((slots, _dw_block(geom, n, size, ct.itemsize) * n * on * plane), ct)
    return gyt, ((geom.groups, geom.Cg * math.prod(geom.kernel_size), n * on * plane), ct)


def _data_plan(geom, dtype, out, size, act):
    """``(samples, output depths)`` per chunk (``depths == out[0]``: whole samples, as many as
    ``CHUNK_BYTES`` holds, at least one), or None when one output depth's chunk does not fit."""
    item = compute_dtype(dtype).itemsize
    budget = (workspace_limit() - geom.K * geom.Cg * math.prod(geom.kernel_size) * item - _SMALL
              - temp_bytes(act, dtype)
              - (0 if np.dtype(dtype) == compute_dtype(dtype) else geom.N * geom.C * math.prod(size) * item))
    OD = out[0]
    per_sample = max(1, workspace_bytes(*_data_specs(geom, dtype, 1, OD, out, size)))
    if per_sample <= budget:
        n = max(1, min(geom.N, CHUNK_BYTES // per_sample, budget // per_sample))
        while n > 1 and workspace_bytes(*_data_specs(geom, dtype, n, OD, out, size)) > budget:
            n -= 1
        return n, max(1, OD)  # (OD = 0: no chunk runs; a nonzero range step)
    per_depth = workspace_bytes(*_data_specs(geom, dtype, 1, 1, out, size))
    depths = min(OD, budget // max(1, per_depth))
    while depths > 0 and workspace_bytes(*_data_specs(geom, dtype, 1, depths, out, size)) > budget:
        depths -= 1
    return (1, depths) if depths > 0 else None


def data_decline_reason(geom, dtype, out, size, act: Derivative | None = None):
    """None where :func:`backward_data` runs, else why the depth-tap lowering stays."""
    if geom.nd != 3:
        return "the N-D strategies run 3-D calls (2-D: conv_grad)"
    if _data_plan(geom, dtype, out, size, act) is None:
        return "one output depth's chunk does not fit the workspace limit"
    return None


def backward_data(gy, w, geom, size, act: Derivative | None = None):
    """``(gx (N, C, *size), kernel id)`` from ``gy (N, K, *Out)`` (``data_decline_reason`` said None)."""
    ct = compute_dtype(gy.dtype)
    N, K, *out = gy.shape
    G, Kg, Cg, C = geom.groups, geom.Kg, geom.Cg, geom.C
    kr, taps = geom.kernel_size, math.prod(geom.kernel_size)
    plane = math.prod(out[1:])
    dw = is_depthwise_data(geom)
    prime_blas()
    wt = np.asarray(w, dtype=ct).reshape(G, Kg, Cg * taps)
    kept = (0 if np.shares_memory(wt, w) else wt.nbytes) + temp_bytes(act, gy.dtype) + _SMALL
    n_chunk, o_chunk = _data_plan(geom, gy.dtype, out, size, act)
    gx = np.zeros((N, C) + tuple(size), ct)
    trim_workspace(workspace_limit() - kept - (0 if gx.dtype == gy.dtype else gx.nbytes))
    for n0 in range(0, N, n_chunk):
        n = min(n_chunk, N - n0)
        # output depths in DECREASING order: gx[d] gets depth tap t from output depth (d + pd - t*dd) / sd, so
        # later chunks bring later taps, and every element sums its taps in the unsplit order (t, r, s)
        for o1 in range(out[0], 0, -o_chunk):  # the first chunk full: the workspace's size is set once
            o0 = max(0, o1 - o_chunk)
            on = o1 - o0
            sl = (slice(n0, n0 + n), slice(None), slice(o0, o1))
            gyt, buf = workspace(*_data_specs(geom, gy.dtype, n, on, out, size))
            load_gy(gyt, lambda a: a[sl].reshape((n, G, Kg, on) + tuple(out[1:])).transpose(1, 2, 0, 3, 4, 5),
                    gy, act)
            if dw:
                _depthwise_add(gyt.reshape((C, Kg, n, on) + tuple(out[1:])), wt.reshape((C, Kg) + tuple(kr)),
                               gx[n0:n0 + n], geom, o0, size, buf)
            else:
                np.matmul(wt.transpose(0, 2, 1), gyt.reshape(G, Kg, n * on * plane), out=buf)
                _col2im(buf.reshape((C,) + tuple(kr) + (n, on) + tuple(out[1:])), gx[n0:n0 + n], geom, o0, size)
    name = "numpy_depthwise_data3d" if dw else "numpy_col2im3d"
    return (gx if gx.dtype == gy.dtype else gx.astype(gy.dtype)), name


def _tap_slabs(geom, o0, on, out_rest, size):
    """Per correlation tap in order: ``(tap, src, dst)`` index tuples, ``src`` into the chunk's output extent
    ``(on, *out_rest)`` (depths from ``o0``) and ``dst`` into ``gx``'s spatial axes, for the outputs whose tap
    lands inside the input; taps landing nowhere are left out."""
    lo_hi = [(0, s) for s in size]
    first = [(o0, o0 + on)] + [(0, o) for o in out_rest]
    slabs = []
    for tap in _taps(geom.kernel_size):
        src, dst = [], []
        for i, t in enumerate(tap):
            (a, b, i0), s = tap_outputs(*first[i], *lo_hi[i], t * geom.dilation[i] - geom.padding[i][0],
                                        geom.stride[i]), geom.stride[i]
            if b <= a:
                break
            src.append(slice(a - first[i][0], b - first[i][0]))
            dst.append(slice(i0, i0 + (b - a - 1) * s + 1, s))
        else:
            slabs.append((tap, tuple(src), tuple(dst)))
    return slabs


def _col2im(cols, gx, geom, o0, size):
    """``gx[i, c, tap's input] += cols[c, weight tap, i, outputs]`` for every tap in order, per block of
    channels on the thread pool (disjoint blocks: each element's sum order is the tap order)."""
    nd = geom.nd
    C, n, on = cols.shape[0], cols.shape[1 + nd], cols.shape[2 + nd]
    slabs = _tap_slabs(geom, o0, on, cols.shape[3 + nd:], size)
    dst_all = gx.transpose((1, 0) + tuple(range(2, 2 + nd)))  # (C, n, *size)

    def run(cb):
        dst_c, src_c = dst_all[cb], cols[cb]
        for tap, src, dst in slabs:
            d = dst_c[(slice(None), slice(None)) + dst]
            np.add(d, src_c[(slice(None),) + _weight_tap(geom, tap) + (slice(None),) + src], out=d)

    blocks = _channel_blocks(C, n * math.prod(size) * gx.itemsize)
    parallel_map(run, blocks, threads=pool_threads(len(blocks)))


def _depthwise_add(gyt, wc, gx, geom, o0, size, slabs_buf):
    """Depthwise-like data gradient of one chunk: ``gyt (C, Kg, n, on, *Out[1:])``, ``wc (C, Kg, *Kr)``; per
    block of channels (``_dw_block``, on the thread pool), per tap in order and filter ``k`` in order,
    ``gx[slab] += wc[c, k, weight tap] * gyt[c, k, outputs]``, the product in the thread's row of
    ``slabs_buf`` (``(threads, block * n * on * plane)``)."""
    nd = geom.nd
    C, Kg, n, on = gyt.shape[:4]
    slabs = _tap_slabs(geom, o0, on, gyt.shape[4:], size)
    dst_all = gx.transpose((1, 0) + tuple(range(2, 2 + nd)))
    block = _dw_block(geom, n, size, gx.itemsize)

    def run(c0, slot):
        cb = slice(c0, min(C, c0 + block))
        dst_c, src_c, scale = dst_all[cb], gyt[cb], wc[cb]
        for tap, src, dst in slabs:
            d = dst_c[(slice(None), slice(None)) + dst]
            w_tap = scale[(slice(None), slice(None)) + _weight_tap(geom, tap)]  # (cb, Kg)
            for k in range(Kg):
                s = src_c[(slice(None), k, slice(None)) + src]
                t = slabs_buf[slot, :s.size].reshape(s.shape)
                np.multiply(s, w_tap[:, k].reshape((-1,) + (1,) * (s.ndim - 1)), out=t)
                np.add(d, t, out=d)

    parallel_map(run, range(0, C, block), threads=slabs_buf.shape[0], slots=True)


# --------------------------------------------------------------------------------------------
# backward filter
# --------------------------------------------------------------------------------------------

def _windows(geom, od):
    """The extent the windows of ``od`` output depths read (per axis), and whether ``x`` itself holds it."""
    ext = [((o - 1) * s + (k - 1) * d + 1) for o, s, k, d in
           zip((od,) + geom.output_size[1:], geom.stride, geom.kernel_size, geom.dilation)]
    inside = all(lo == 0 for lo, _ in geom.padding[1:]) and all(e <= s for e, s in zip(ext[1:], geom.input_size[1:]))
    return ext, inside


def _filter_specs(geom, dtype, n, od, from_input):
    ct = compute_dtype(dtype)
    ext, _ = _windows(geom, od)
    taps = math.prod(geom.kernel_size)
    M = n * od * math.prod(geom.output_size[1:])
    return (((0 if from_input else n * geom.C * math.prod(ext),), ct), ((geom.groups, geom.Cg * taps, M), ct),
            ((geom.groups, geom.Kg, M), ct))


def _from_input(geom, dtype):
    """Gather straight from ``x``: no window reads padding and ``x`` is in the compute dtype."""
    (pd, _), D = geom.padding[0], geom.input_size[0]
    ext, inside = _windows(geom, geom.output_size[0])
    return np.dtype(dtype) == compute_dtype(dtype) and inside and pd == 0 and ext[0] <= D


def _filter_plan(geom, dtype, act):
    """``(samples, output depths)`` per chunk, or None when one output depth's chunk does not fit."""
    item = compute_dtype(dtype).itemsize
    acc = 2 * geom.K * geom.Cg * math.prod(geom.kernel_size) * item  # the accumulator and a sample's part
    budget = workspace_limit() - acc - temp_bytes(act, dtype) - _SMALL
    OD, fi = geom.output_size[0], _from_input(geom, dtype)
    per_sample = max(1, workspace_bytes(*_filter_specs(geom, dtype, 1, OD, fi)))
    if per_sample <= budget:
        n = max(1, min(geom.N, CHUNK_BYTES // per_sample, budget // per_sample))
        while n > 1 and workspace_bytes(*_filter_specs(geom, dtype, n, OD, fi)) > budget:
            n -= 1
        return n, max(1, OD)
    od = OD
    while od > 0 and workspace_bytes(*_filter_specs(geom, dtype, 1, od, False)) > budget:
        od -= 1
    return (1, od) if od else None


def filter_decline_reason(geom, dtype, act: Derivative | None = None):
    """None where :func:`backward_filter` runs, else why the depth-tap lowering stays."""
    if geom.nd != 3:
        return "the N-D strategies run 3-D calls (2-D: conv_grad)"
    if _filter_plan(geom, dtype, act) is None:
        return "one output depth's chunk does not fit the workspace limit"
    return None


def backward_filter(x, gy, geom, act: Derivative | None = None, bias: np.ndarray | None = None):
    """``(gw (K, Cg, *Kr), kernel id)`` (``filter_decline_reason`` said None; ``N > 0``). With ``bias`` (a
    ``(K,)`` array of the compute dtype), the chunks' ``gy`` copies (derivative applied) are summed into it
    per filter, in chunk order."""
    ct = compute_dtype(x.dtype)
    nd, G, Kg, Cg, C = geom.nd, geom.groups, geom.Kg, geom.Cg, geom.C
    kr, taps = geom.kernel_size, math.prod(geom.kernel_size)
    OD, rest = geom.output_size[0], tuple(geom.output_size[1:])
    plane = math.prod(rest)
    n_chunk, od_chunk = _filter_plan(geom, x.dtype, act)
    fi = od_chunk == OD and _from_input(geom, x.dtype)
    flipped = plane * od_chunk >= FILTER_TRANSPOSED_MIN_COLUMNS  # one GEMM's columns: a sample's (piece's)
    shape = (G, Cg * taps, Kg) if flipped else (G, Kg, Cg * taps)
    acc, part = np.zeros(shape, ct), np.empty(shape, ct)
    prime_blas()
    trim_workspace(workspace_limit() - acc.nbytes - part.nbytes - temp_bytes(act, x.dtype) - _SMALL)
    first = True
    for n0 in range(0, geom.N, n_chunk):
        n = min(n_chunk, geom.N - n0)
        for o0 in range(0, OD, od_chunk):
            on = min(od_chunk, OD - o0)
            xpad, cols, gyt = workspace(*_filter_specs(geom, x.dtype, n, on, fi))
            _gather(x[n0:n0 + n], xpad, cols.reshape((C,) + tuple(kr) + (n, on) + rest), geom, o0, on, fi)
            sl = (slice(n0, n0 + n), slice(None), slice(o0, o0 + on))
            load_gy(gyt.reshape((G, Kg, n, on) + rest),
                    lambda a: a[sl].reshape((n, G, Kg, on) + rest).transpose(1, 2, 0, 3, 4, 5), gy, act)
            if bias is not None:
                part_b = gyt.sum(axis=2).reshape(geom.K)
                bias[...] = part_b if first else bias + part_b
            M1 = on * plane  # one sample's columns: the GEMM per sample, summed in order
            for i in range(n):
                c, g = cols[:, :, i * M1:(i + 1) * M1], gyt[:, :, i * M1:(i + 1) * M1]
                if flipped:
                    np.matmul(c, g.transpose(0, 2, 1), out=part)
                else:
                    np.matmul(g, c.transpose(0, 2, 1), out=part)
                if first:
                    acc, part, first = part, acc, False
                else:
                    acc += part
    gw = (acc.transpose(0, 2, 1) if flipped else acc).reshape((geom.K, Cg) + tuple(kr))
    if geom.flip:
        gw = gw[(slice(None), slice(None)) + (slice(None, None, -1),) * nd]
    return np.ascontiguousarray(gw, dtype=gy.dtype), "numpy_im2col3d_filter"


def _gather(x, xpad, cols, geom, o0, on, from_input):
    """im2col of ``on`` output depths from ``o0`` of the chunk's samples ``x (n, C, *In)``: ``cols[c, *tap, i,
    *outputs] = x_padded[i, c, outputs*stride + tap*dilation]``, from ``x`` itself (``from_input``: whole
    samples only, ``o0 == 0``) or via
    ``xpad`` (the window extent of the chunk, zeros where the windows read padding). Per block of channels
    on the thread pool."""
    nd, n, C = geom.nd, x.shape[0], geom.C
    ext, _ = _windows(geom, on)
    if from_input:
        src = x
    else:
        src = xpad.reshape((n, C) + tuple(ext))
        start = [o0 * geom.stride[0] - geom.padding[0][0]] + [-lo for lo, _ in geom.padding[1:]]
        inner_src, inner_dst = [], []
        for a, e, s in zip(start, ext, geom.input_size):
            lo, hi = max(0, a), min(s, a + e)
            inner_src.append(slice(lo, max(lo, hi)))
            inner_dst.append(slice(lo - a, max(lo, hi) - a))
        src[...] = 0
        if all(s.stop > s.start for s in inner_src):
            src[(slice(None), slice(None)) + tuple(inner_dst)] = x[(slice(None), slice(None)) + tuple(inner_src)]
    es = src.strides
    view = strided_view(src, (n, C) + tuple(geom.kernel_size) + (on,) + tuple(geom.output_size[1:]),
                        es[:2] + tuple(d * s for d, s in zip(geom.dilation, es[2:]))
                        + tuple(st * s for st, s in zip(geom.stride, es[2:])))
    perm = (1,) + tuple(range(2, 2 + nd)) + (0,) + tuple(range(2 + nd, 2 + 2 * nd))  # (C, *Kr, n, *Out)

    def run(cb):
        np.copyto(cols[cb], view[:, cb].transpose(perm))

    blocks = _channel_blocks(C, max(1, cols[0].nbytes))
    parallel_map(run, blocks, threads=pool_threads(len(blocks)))
