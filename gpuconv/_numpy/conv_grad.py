"""Convolution gradients on the NumPy path computed directly (issue 17): im2col / col2im with BLAS GEMMs,
and BLAS dot products over phase planes for depthwise filter gradients, instead of being lowered onto
forward convolution calls (``gpuconv._conv_lowering``, which keeps the cases these do not serve better).
``gpuconv._conv_lowering`` asks :func:`data_strategy` / :func:`filter_strategy` /
:func:`depthwise_filter_applies` and calls :func:`backward_data` / :func:`backward_filter` /
:func:`depthwise_filter`; the names below are what ``gpuconv.last_kernel()`` reports. docs/gradients.md
("The NumPy path's own gradients") has the rule table; notation as there.

* ``numpy_col2im`` (backward data): per chunk of samples (and of ``gy`` rows when one sample does not
  fit), ``gy`` is copied to ``(groups, Kg, n*P*Q)``, ONE GEMM per group ``w^T (Cg*R*S, Kg) @ gy`` (``w^T`` a
  view, no copy) gives the column buffer ``(C, R, S, n, P, Q)``, and col2im adds each tap's slab into
  ``gx``: at stride 1 with little junk in wide rows (``_col2im_wide``: contiguous adds into a padded
  accumulator, cropped at the end), otherwise in exact rows (``_col2im``: strided views of the outputs whose
  tap lands inside the input, ``_geometry.tap_outputs``; taps landing in the padding are dropped, as
  PyTorch's col2im does). The adds run per block of channels (cache-sized, on the thread pool: blocks
  write disjoint channels), the taps in a fixed order and the chunks in order: deterministic. No stride
  phases.
* ``numpy_im2col_filter`` (backward filter): per chunk of samples, the forward's im2col gather of ``x``
  (``_conv_strategies._fill_padded`` / ``_gather``, straight from ``x`` when no window reads padding) to
  ``(groups, Cg*R*S, n*P*Q)`` and ``gy`` copied to ``(groups, Kg, n*P*Q)``; ONE GEMM per group ``gy @
  cols^T`` (or, with many columns, ``cols @ gy^T``, the gradient transposed) gives the chunk's part, added
  to the result in chunk order (deterministic).
* ``numpy_depthwise_filter_planes`` (depthwise filter gradient): :func:`depthwise_filter`.

float16 is computed in float32 (operands cast in the copies, float32 accumulators, rounded once at the
end).

With ``conv2d_backward``'s activation the three take ``act`` (``grad_activation.Derivative``): the
derivative is applied where they copy a chunk of ``gy`` (``grad_activation.load_gy``), and the filter
gradients can sum the bias gradient from those copies (``bias``): no array of ``gy``'s size.

Memory: besides the result, one chunk's (block's) workspace (``_workspace.workspace``), plus a cast or
contiguous copy of the weight where it needs one (data), the float32 accumulator (float16, exact rows)
and the filter gradient's accumulator, all within ``workspace_limit()``; when not even one sample (data:
one output row; depthwise: one channel) fits, the strategies say no and the lowering runs (its forward
calls tile).
"""

from __future__ import annotations

import math

import numpy as np

from .._geometry import ConvGeometry, tap_outputs
from ._conv_strategies import PhasePlanes, _fill_padded, _gather, prime_blas
from .grad_activation import CHUNK_BYTES, Derivative, compute_dtype, load_gy as _load_gy, temp_bytes
from ._workspace import parallel_map, pool_threads, trim_workspace, workspace, workspace_bytes, workspace_limit

# col2im adds one block of channels at a time, all its taps, so that the block's part of gx stays in
# the cache across the R*S adds; bytes of gx per block.
COL2IM_BLOCK_BYTES = 256 * 2**10
# Wide rows at stride 1 when the junk columns, ``(S-1)*dw`` per row, are at most 1/WIDE_MAX_JUNK of the
# ``gy`` row (their GEMM columns are wasted flops): conv5's 7x7 planes with a 3x3 filter make 9-wide rows,
# whose GEMM took 8.3 ms against 6.6 for exact rows (single thread); 56-wide rows gain from the
# contiguous adds (ResNet-50 3x3, single thread: the adds 2.3 ms in exact rows, 0.9-1.1 ms in wide rows,
# which then crop the accumulator into gx, one copy of it).
WIDE_MAX_JUNK = 8
# numpy_im2col_filter computes the transposed gradient (cols @ gy^T) from this many GEMM columns (N*P*Q) on.
FILTER_TRANSPOSED_MIN_COLUMNS = 4096
# Backward data stays on the lowering (a forward call on gy, which runs Winograd F(2x2, 3x3): 2.25x
# fewer flops) for 3x3 stride-1 layers with at least this many channels (input and filters per group,
# the forward's Winograd rule) and input images at least WINOGRAD_DATA_MIN_SIZE high and wide. Measured
# (single thread, CPU time, alternating): VGG-16 conv4_2 (2x512x28x28) 65.6 ms by the lowering against
# 92.7 by col2im; conv4 (2x256x14x14) 8.4 against 7.7.
WINOGRAD_DATA_MIN_CHANNELS = 128
WINOGRAD_DATA_MIN_SIZE = 28


# --------------------------------------------------------------------------------------------
# backward data
# --------------------------------------------------------------------------------------------

def data_strategy(g: ConvGeometry, dtype, H: int, W: int, Pg: int, Qg: int):
    """``'numpy_col2im'``, or None where the lowering stays (``data_decline_reason`` says why)."""
    return None if data_decline_reason(g, dtype, H, W, Pg, Qg) else "numpy_col2im"


def data_decline_reason(g: ConvGeometry, dtype, H: int, W: int, Pg: int, Qg: int, act: Derivative | None = None):
    """None where ``numpy_col2im`` runs (with ``act``: its workspace less the derivative's temporaries), else
    why the lowering stays (docs/gradients.md, "The NumPy path"):

    * 1x1 filters without padding: the lowering's forward call is already one matmul per phase
      (``numpy_matmul_1x1``), the same GEMM without a column buffer;
    * depthwise-like layers (one input channel and at most 2 filters per group): the GEMM's inner
      dimension would be ``Kg``; the lowering's ``numpy_shift_accumulate`` multiply-adds instead;
    * 3x3 stride-1 layers with many channels and large images, where the lowering's forward call runs
      Winograd (``WINOGRAD_DATA_MIN_CHANNELS``, ``WINOGRAD_DATA_MIN_SIZE``);
    * when one output row's chunk does not fit the workspace limit (the lowering tiles).
    """
    if (g.R, g.S, g.pt, g.pb, g.pl, g.pr) == (1, 1, 0, 0, 0, 0):
        return "1x1 filter without padding: one matmul per phase"
    if g.Cg == 1 and g.Kg <= 2:
        return "depthwise-like layer: multiply-adds"
    if ((g.R, g.S, g.sh, g.sw, g.dh, g.dw) == (3, 3, 1, 1, 1, 1) and min(H, W) >= WINOGRAD_DATA_MIN_SIZE
            and min(g.Cg, g.Kg) >= WINOGRAD_DATA_MIN_CHANNELS):
        return "3x3 stride-1 layer of Winograd size"
    if _data_plan(g, dtype, H, W, Pg, Qg, wide_ok=False, act=act) is None:
        return "one output row does not fit the workspace limit"
    return None


def _wide_extent(g: ConvGeometry, H: int, W: int, Pg: int, Qg: int):
    """``(Hp, Wp, slack)`` of the stride-1 wide layout: the padded accumulator planes (every tap of every
    output lands inside, ``Hp >= Pg + (R-1)*dh`` and the input at row ``pt``), and the slack after each
    plane that the last wide row's junk reaches."""
    Hp = max(Pg + (g.R - 1) * g.dh, g.pt + H)
    Wp = max(Qg + (g.S - 1) * g.dw, g.pl + W)
    return Hp, Wp, (g.S - 1) * g.dw


def _data_plan(g, dtype, H, W, Pg, Qg, wide_ok=True, act=None):
    """``(samples, rows, wide)`` per chunk, or None when one output row does not fit. ``wide``: stride 1
    and whole samples per chunk, the wide-row layout (``_col2im_wide``)."""
    ct = compute_dtype(dtype)
    item = ct.itemsize
    budget = (workspace_limit() - math.prod((g.K, g.Cg, g.R, g.S)) * item - 4 * 64  # less the transposed weight
              - temp_bytes(act, dtype))
    if wide_ok and g.sh == 1 and g.sw == 1 and WIDE_MAX_JUNK * (g.S - 1) * g.dw <= Qg:
        Hp, Wp, slack = _wide_extent(g, H, W, Pg, Qg)
        per_sample = ((g.K + g.C * g.R * g.S) * Pg * Wp + g.C * (Hp * Wp + slack)) * item
        if per_sample <= budget:
            return max(1, min(g.N, CHUNK_BYTES // per_sample, budget // per_sample)), Pg, True
    if np.dtype(dtype) != ct:
        budget -= g.N * g.C * H * W * item  # the float32 accumulator
    per_row = (g.K + g.C * g.R * g.S) * Qg * item  # gy copy + columns of one output row of one sample
    if per_row > budget or Pg == 0:
        return None
    per_sample = per_row * Pg
    if per_sample > budget:
        return 1, max(1, min(Pg, budget // per_row)), False
    return max(1, min(g.N, CHUNK_BYTES // per_sample, budget // per_sample)), Pg, False


def backward_data(gy: np.ndarray, w: np.ndarray, g: ConvGeometry, H: int, W: int, act: Derivative | None = None):
    """``gx (N, C, H, W)`` from ``gy (N, K, Pg, Qg)`` by ``numpy_col2im`` (``data_strategy`` said so);
    with ``act``, from ``gy`` times the activation's derivative, applied as each chunk of ``gy`` is
    copied (``_load_gy``)."""
    ct = compute_dtype(gy.dtype)
    N, K, Pg, Qg = gy.shape
    G, Kg, Cg, R, S = g.groups, g.Kg, g.Cg, g.R, g.S
    C = G * Cg
    prime_blas()
    # w^T as a view (BLAS reads it transposed; a copy of a large weight costs as much as the GEMM): the
    # columns' rows are w's taps, so with flip column tap (r, s) is the correlation's (R-1-r, S-1-s)
    wt = np.asarray(w, dtype=ct).reshape(G, Kg, Cg * R * S).transpose(0, 2, 1)  # (G, CgRS, Kg)
    weight_copy = 0 if np.shares_memory(wt, w) else wt.nbytes
    # wide rows add the junk columns' products of zero gy values; a non-finite weight would make them NaN
    n_chunk, p_chunk, wide = _data_plan(g, gy.dtype, H, W, Pg, Qg, bool(np.isfinite(wt.sum())), act)
    weight_copy += temp_bytes(act, gy.dtype)  # kept out of the workspace like the weight's copy
    if wide:
        gx = np.empty((N, C, H, W), gy.dtype)
        Hp, Wp, slack = _wide_extent(g, H, W, Pg, Qg)
        trim_workspace(workspace_limit() - weight_copy)
        for n0 in range(0, N, n_chunk):
            n = min(n_chunk, N - n0)
            gyt, cols, acc = workspace(((G, Kg, n, Pg, Wp), ct), ((G, Cg * R * S, n * Pg * Wp), ct),
                                       ((C, n, Hp * Wp + slack), ct))
            gyt[..., Qg:] = 0
            _load_gy(gyt[..., :Qg], lambda a: a[n0:n0 + n].reshape(n, G, Kg, Pg, Qg).transpose(1, 2, 0, 3, 4),
                     gy, act)
            np.matmul(wt, gyt.reshape(G, Kg, n * Pg * Wp), out=cols)
            _col2im_wide(cols.reshape(C, R, S, n, Pg * Wp), acc, g, Wp)
            planes = acc[:, :, :Hp * Wp].reshape(C, n, Hp, Wp)[:, :, g.pt:g.pt + H, g.pl:g.pl + W]
            np.copyto(gx[n0:n0 + n], planes.transpose(1, 0, 2, 3))
        return gx, "numpy_col2im"
    acc = np.zeros((N, C, H, W), ct)
    trim_workspace(workspace_limit() - weight_copy - (0 if acc.dtype == gy.dtype else acc.nbytes))
    for n0 in range(0, N, n_chunk):
        n = min(n_chunk, N - n0)
        for p0 in range(0, Pg, p_chunk):
            pn = min(p_chunk, Pg - p0)
            gyt, cols = workspace(((G, Kg, n, pn, Qg), ct), ((G, Cg * R * S, n * pn * Qg), ct))
            _load_gy(gyt, lambda a: a[n0:n0 + n, :, p0:p0 + pn].reshape(n, G, Kg, pn, Qg).transpose(1, 2, 0, 3, 4),
                     gy, act)
            np.matmul(wt, gyt.reshape(G, Kg, n * pn * Qg), out=cols)
            _col2im(cols.reshape(C, R, S, n, pn, Qg), acc[n0:n0 + n], g, p0, H, W)
    return (acc if acc.dtype == gy.dtype else acc.astype(gy.dtype)), "numpy_col2im"


def _weight_tap(g: ConvGeometry, r: int, s: int) -> tuple[int, int]:
    """The weight's tap that is the correlation's tap ``(r, s)`` (rotated by 180 degrees for flip)."""
    return (g.R - 1 - r, g.S - 1 - s) if g.flip else (r, s)


def _channel_blocks(C: int, plane_bytes: int) -> list[slice]:
    block = max(1, min(C, COL2IM_BLOCK_BYTES // max(1, plane_bytes)))
    return [slice(c0, min(C, c0 + block)) for c0 in range(0, C, block)]


def _col2im_wide(cols: np.ndarray, acc: np.ndarray, g: ConvGeometry, Wp: int) -> None:
    """Stride 1, wide rows: ``acc[c, i, (p + r*dh)*Wp + q + s*dw] += cols[c, r, s, i, p*Wp + q]`` for all
    ``q < Wp`` (the junk columns ``q >= Qg`` add exact zeros: their ``gy`` was zero), so each tap of a
    (channel, sample) is one contiguous run. ``acc`` (C, n, Hp*Wp + slack) is zeroed here; each plane has
    its own slack, so the channel blocks (on the thread pool) never touch each other's memory and every
    element's sum order is the fixed tap order."""
    C, R, S, n, L = cols.shape

    def run(cb):
        dst_c = acc[cb]
        dst_c[...] = 0
        for r in range(R):
            for s in range(S):
                off = r * g.dh * Wp + s * g.dw
                dst = dst_c[:, :, off:off + L]
                np.add(dst, cols[(cb,) + _weight_tap(g, r, s)], out=dst)

    blocks = _channel_blocks(C, n * acc.shape[2] * acc.itemsize)
    parallel_map(run, blocks, threads=pool_threads(len(blocks)))


def _col2im(cols: np.ndarray, gx: np.ndarray, g: ConvGeometry, p0: int, H: int, W: int) -> None:
    """``gx[i, c, p*sh - pt + r*dh, q*sw - pl + s*dw] += cols[c, r, s, i, p - p0, q]`` for the outputs
    whose tap lands inside ``gx`` (rows ``p0 .. p0 + cols.shape[4]``), tap by tap in order, per block of
    channels (disjoint blocks, so the thread pool keeps every element's sum order)."""
    C, R, S, n, pn, Qg = cols.shape
    rows = [tap_outputs(p0, p0 + pn, 0, H, r * g.dh - g.pt, g.sh) for r in range(R)]
    colsq = [tap_outputs(0, Qg, 0, W, s * g.dw - g.pl, g.sw) for s in range(S)]
    taps = [(r, s, rows[r], colsq[s]) for r in range(R) for s in range(S)
            if rows[r][1] > rows[r][0] and colsq[s][1] > colsq[s][0]]
    dst_all = gx.transpose(1, 0, 2, 3)  # (C, n, H, W): the columns' order

    def run(cb):
        dst_c = dst_all[cb]
        for r, s, (pa, pb, h0), (qa, qb, w0) in taps:
            dst = dst_c[:, :, h0:h0 + (pb - pa - 1) * g.sh + 1:g.sh, w0:w0 + (qb - qa - 1) * g.sw + 1:g.sw]
            np.add(dst, cols[(cb,) + _weight_tap(g, r, s)][:, :, pa - p0:pb - p0, qa:qb], out=dst)

    blocks = _channel_blocks(C, n * H * W * gx.itemsize)
    parallel_map(run, blocks, threads=pool_threads(len(blocks)))


# --------------------------------------------------------------------------------------------
# backward filter
# --------------------------------------------------------------------------------------------

def _filter_layout(g: ConvGeometry, x_dtype):
    """``(padded, from_input)``: the padded extent the windows read, and whether every window lies inside
    ``x`` (no padding read) and ``x`` is in the compute dtype, so the gather reads ``x`` itself."""
    padded = ((g.P - 1) * g.sh + (g.R - 1) * g.dh + 1, (g.Q - 1) * g.sw + (g.S - 1) * g.dw + 1)
    from_input = (np.dtype(x_dtype) == compute_dtype(x_dtype) and g.pt == 0 and g.pl == 0
                  and padded[0] <= g.H and padded[1] <= g.W)
    return padded, from_input


def _filter_specs(g: ConvGeometry, x_dtype, n: int):
    ct = compute_dtype(x_dtype)
    padded, from_input = _filter_layout(g, x_dtype)
    plane = 0 if from_input else padded[0] * padded[1]
    M = n * g.P * g.Q
    return (((n * g.C * plane,), ct), ((g.groups, g.Cg * g.R * g.S, M), ct),
            ((g.groups, g.Kg, M), ct), ((g.groups, g.Cg * g.R * g.S, g.Kg), ct))


def filter_strategy(g: ConvGeometry, dtype, act: Derivative | None = None):
    """``'numpy_im2col_filter'``, or None where the lowering stays: depthwise layers (one input channel per
    group and more than one group: their per-tap ``numpy_depthwise_filter_taps`` reads ``x`` in place,
    where im2col would copy it R*S times for GEMMs of inner size 1), and when one sample's chunk does not
    fit the workspace limit."""
    if g.Cg == 1 and g.groups > 1:
        return None
    acc = math.prod((g.K, g.Cg, g.R, g.S)) * 4 if np.dtype(dtype) == np.float16 else 0
    if workspace_bytes(*_filter_specs(g, dtype, 1)) + acc + temp_bytes(act, dtype) > workspace_limit():
        return None
    return "numpy_im2col_filter"


def backward_filter(x: np.ndarray, gy: np.ndarray, g: ConvGeometry, act: Derivative | None = None,
                    bias: np.ndarray | None = None):
    """``gw (K, Cg, R, S)`` by ``numpy_im2col_filter`` (``filter_strategy`` said so), ``N > 0``. With
    ``act``, of ``gy`` times the activation's derivative, applied as each chunk of ``gy`` is copied; with
    ``bias`` (a ``(K,)`` array of the compute dtype), that chunk copy is also summed per filter into it
    (the bias gradient, the chunks added in order)."""
    ct = compute_dtype(x.dtype)
    G, Kg, Cg, R, S, P, Q = g.groups, g.Kg, g.Cg, g.R, g.S, g.P, g.Q
    padded, from_input = _filter_layout(g, x.dtype)
    prime_blas()
    # with many GEMM columns, the GEMM as cols @ gy^T, the transposed result (Cg*R*S, Kg): 10-20% faster with
    # OpenBLAS than gy @ cols^T (single thread: VGG-16 conv1_2's 23-26 ms against 28-30, ResNet-50 3x3
    # 5.8-6.0 against 6.7-7.0); with few, transposing the result back costs more (conv5, 98 columns of a
    # 512x4608 gradient: 18 ms against 10)
    flipped = g.N * P * Q >= FILTER_TRANSPOSED_MIN_COLUMNS
    acc = np.empty((G, Cg * R * S, Kg) if flipped else (G, Kg, Cg * R * S), ct)
    budget = workspace_limit() - (0 if acc.dtype == gy.dtype else acc.nbytes) - temp_bytes(act, x.dtype)
    per_sample = workspace_bytes(*_filter_specs(g, x.dtype, 1))
    n_chunk = max(1, min(g.N, CHUNK_BYTES // per_sample, budget // per_sample))
    while n_chunk > 1 and workspace_bytes(*_filter_specs(g, x.dtype, n_chunk)) > budget:
        n_chunk -= 1
    trim_workspace(budget)
    for n0 in range(0, g.N, n_chunk):
        n = min(n_chunk, g.N - n0)
        M = n * P * Q
        xp, cols, gyt, part = workspace(*_filter_specs(g, x.dtype, n))
        cview = cols.reshape(g.C, R, S, n, P, Q)
        if from_input:
            _gather(x[n0:n0 + n], cview, g)
        else:
            xp = xp.reshape((n, g.C) + padded)
            _fill_padded(x[n0:n0 + n], g, xp)
            _gather(xp, cview, g)
        _load_gy(gyt.reshape(G, Kg, n, P, Q), lambda a: a[n0:n0 + n].reshape(n, G, Kg, P, Q).transpose(1, 2, 0, 3, 4),
                 gy, act)
        if bias is not None:
            part_b = gyt.sum(axis=2).reshape(g.K)
            bias[...] = part_b if n0 == 0 else bias + part_b
        if flipped:
            np.matmul(cols, gyt.transpose(0, 2, 1), out=acc if n0 == 0 else part)
        else:
            np.matmul(gyt, cols.transpose(0, 2, 1), out=acc if n0 == 0 else part.reshape(acc.shape))
        if n0 > 0:
            acc += part.reshape(acc.shape)
    gw = (acc.transpose(0, 2, 1) if flipped else acc).reshape(g.K, Cg, R, S)
    if g.flip:
        gw = gw[:, :, ::-1, ::-1]
    return np.ascontiguousarray(gw, dtype=gy.dtype), "numpy_im2col_filter"


# --------------------------------------------------------------------------------------------
# depthwise filter gradient
# --------------------------------------------------------------------------------------------

# numpy_depthwise_filter_planes: channels per block (on the thread pool), so that a block's planes and
# gy stay in the cache across the R*S dot products; bytes of planes + gy per block.
DEPTHWISE_BLOCK_BYTES = 512 * 2**10


def _dw_layout(g: ConvGeometry):
    """``(PhasePlanes, size, tail)``: every sample's phase planes are ``size`` values, and a tap reads up
    to ``tail`` values past the last sample's."""
    pp = PhasePlanes.for_taps(g)
    return pp, pp.size, max(pp.offsets)


def _dw_channel_bytes(g: ConvGeometry, dtype) -> int:
    pp, size, tail = _dw_layout(g)
    return (g.N * size + tail + g.N * g.Kg * g.P * pp.Wph) * compute_dtype(dtype).itemsize


def depthwise_filter_applies(g: ConvGeometry, dtype, act: Derivative | None = None) -> bool:
    """Depthwise-like layers (one input channel per group, more than one group) whose one channel's
    planes (and the derivative's temporaries) fit the workspace limit."""
    need = _dw_channel_bytes(g, dtype) + 2 * 64 + temp_bytes(act, dtype)
    return g.Cg == 1 and g.groups > 1 and need <= workspace_limit()


def depthwise_filter(x: np.ndarray, gy: np.ndarray, g: ConvGeometry, act: Derivative | None = None,
                     bias: np.ndarray | None = None):
    """``numpy_depthwise_filter_planes``: the filter gradient of a depthwise-like layer as BLAS dot products.
    Per block of channels: the stride-phase planes of each (channel, sample) (``PhasePlanes.for_taps``:
    tap ``(r, s)`` of output ``(p, q)`` reads ``offsets[r*S + s] + p*Wph + q``), and ``gy`` in wide rows
    (``p*Wph + q``, the junk columns ``q >= Q`` zero); then tap ``t``'s gradient of channel ``c`` is one
    dot product per sample, ``planes[c, n, offsets[t]:][:P*Wph] . gy_wide[c, n]`` (a batched ``matmul``
    over the block's channels and samples, ``Kg`` columns; the zeros cancel the junk), summed over the
    samples in order. A fixed order of products per tap (the BLAS dot of a given length), so
    deterministic.

    Non-finite inputs: a zero of ``gy`` times an infinite plane value would be NaN where the exact sum
    has no such term, so a result that is not all finite is recomputed by the per-tap ``einsum``
    (``_conv_lowering.depthwise_filter_numpy``, float32 / float64) by the caller: returns None then.

    ``act`` / ``bias`` as ``backward_filter``'s: the derivative applied as a block's ``gy`` is copied into
    its wide rows, and the bias summed from those rows (each block owns its filters' entries)."""
    ct = compute_dtype(x.dtype)
    N, C = x.shape[:2]
    Kg, R, S, P, Q = g.Kg, g.R, g.S, g.P, g.Q
    pp, size, tail = _dw_layout(g)
    L = P * pp.Wph  # a dot product's length: one sample's wide output rows
    per_channel, extra = _dw_channel_bytes(g, x.dtype), temp_bytes(act, x.dtype)  # extra: per thread
    budget = workspace_limit() - 2 * 64
    block = max(1, min(C, DEPTHWISE_BLOCK_BYTES // per_channel))
    slots = max(1, min(pool_threads(-(-C // block)), budget // (block * per_channel + extra)))
    while slots * (block * per_channel + extra) > budget and block > 1:
        block = max(1, block // 2)
    trim_workspace(budget - slots * extra)
    planes_s, gyw_s = workspace(((slots, block, N * size + tail), ct), ((slots, block, N, Kg, L), ct))
    gw = np.empty((C, Kg, R * S), ct)
    item = planes_s.itemsize

    def run(c0, slot):
        c1 = min(C, c0 + block)
        cb = c1 - c0
        planes, gyw = planes_s[slot, :cb], gyw_s[slot, :cb]
        pp.fill(x[:, c0:c1].transpose(1, 0, 2, 3), planes[:, :N * size].reshape(cb, N, size))
        planes[:, N * size:] = 0
        wide = gyw.reshape(cb, N, Kg, P, pp.Wph)
        wide[..., Q:] = 0
        _load_gy(wide[..., :Q], lambda a: a.reshape(N, C, Kg, P, Q)[:, c0:c1].transpose(1, 0, 2, 3, 4), gy, act)
        if bias is not None:  # the junk columns are zeros
            bias[c0 * Kg:c1 * Kg] = wide.sum(axis=(1, 3, 4)).reshape(-1)
        rhs = gyw.transpose(0, 1, 3, 2)  # (cb, N, L, Kg)
        for t, off in enumerate(pp.offsets):
            # (cb, N, 1, L) made directly on the contiguous block (as_strided costs 28 us a call); the
            # length-1 axis gets a stride BLAS accepts as a row stride
            view = np.ndarray((cb, N, 1, L), ct, buffer=planes, offset=off * item,
                              strides=(planes.strides[0], size * item, L * item, item))
            prod = np.matmul(view, rhs)  # (cb, N, 1, Kg)
            gw[c0:c1, :, t] = prod[:, 0, 0] if N == 1 else prod.sum(axis=(1, 2))

    parallel_map(run, range(0, C, block), threads=slots, slots=True)
    if not np.isfinite(gw).all():
        return None
    gw = gw.reshape(C * Kg, 1, R, S)
    if g.flip:
        gw = gw[:, :, ::-1, ::-1]
    return np.ascontiguousarray(gw, dtype=gy.dtype)
