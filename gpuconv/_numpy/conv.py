"""conv2d on the CPU with NumPy: BLAS GEMMs over gathered columns, or per-tap multiply-adds.

Five strategies; :func:`choose_strategy` picks one (the rule is its docstring) and its name is reported
as the "kernel" that ran:

* ``numpy_matmul_1x1``: a 1x1 filter with stride 1 and no padding is a plain matmul over channels,
  ``(groups, Kg, Cg) @ (n, groups, Cg, H*W)`` straight into the output; the input is read in place (no
  copy when it is C-contiguous in the compute dtype).
* ``numpy_shift_accumulate``: one input channel and at most ``SHIFT_ACCUMULATE_MAX_KG`` filters per group
  (depthwise): every tap ``(r, s)`` adds ``w[k, r, s] * (input shifted by the tap)`` into the output,
  ``R*S`` multiply-add passes over cache-sized blocks of channels, run on the thread pool. No GEMM (its
  inner dimension would be only ``R*S``).
* ``numpy_im2col``: the general case. Per chunk of samples: the input is copied once into a zero-padded
  buffer, the columns ``(groups, Cg*R*S, n*P*Q)`` are gathered from it by one strided copy (a
  window view with stride and dilation applied), and one BLAS GEMM per group, ``(Kg, Cg*R*S) @
  (Cg*R*S, n*P*Q)``, computes all the chunk's outputs (small images still make one large GEMM). The
  result is moved into NCHW order while the bias is added (one pass, contiguous ``P*Q`` runs).
* ``numpy_im2col_chwn``: the same GEMM over a chunk stored sample-innermost, ``(C, H, W, n)``, so that
  short output rows still gather long runs (``Q*n`` values) and the GEMM has no junk columns; costs a
  transposition of the input in and of the output out.
* ``numpy_winograd``: 3x3 stride-1 layers with many channels, Winograd F(2x2, 3x3) (``winograd``): 16
  GEMMs over transformed tiles, 2.25x fewer flops than im2col.

Depthwise "phase planes": the zero-padded input of each channel split into its ``sh*sw`` stride phases
(``xp[a::sh, b::sw]``), each flattened with row length ``Wph``. Every tap is then one contiguous slice
whatever the stride, padding or dilation, and "wide" output rows of ``Wph`` values are computed (the
last ``Wph - Q`` of each row are junk that wraps into the next row and is dropped when stored), so each
multiply-add is one long contiguous loop.

What was measured on the benchmark layers and dropped (alternatives to each strategy, with figures) is
in docs/numpy-experiments.md, so the next attempt starts from the figures.

Memory: a call allocates its output and at most ``workspace_limit()`` bytes of temporaries (256 MiB
unless ``GPUCONV_NUMPY_WORKSPACE_MB`` says otherwise; the buffer kept from earlier calls counts) besides
arrays of a few hundred KiB. Chunks of samples work in a kept per-thread workspace
(``_workspace.workspace``), so calls do not page-fault on fresh megabytes; each strategy chunks the batch
so that its workspace plus the temporaries derived from the weight stay within the limit. Outputs whose
window lies wholly in the padding are the bias (NaN for filters holding inf or NaN, which the padding's
zeros multiply), written directly: huge padding builds no padded copy. When one sample does not fit, or
for float16 (computed in float32 and rounded once at the end) when the float32 output does not fit
beside the workspace, the convolution runs in tiles (``_conv_tiled``): samples, then output rows,
output columns, groups, filters, and finally the sum itself split over input channels and filter taps,
each split only as far as needed; every tile is a convolution of its own (a view of the input, the
padding it reads, a slice of the weight) run by the same strategy where it applies (``numpy_im2col``
where a split filter is not 3x3 any more), into a tile buffer that is activated and stored.

Threads: BLAS uses its own; the depthwise blocks and Winograd's transforms (channel / filter blocks) run
on ``parallel_map``.
"""

from __future__ import annotations

import math

import numpy as np

from .._geometry import ConvGeometry
from ._conv_strategies import RUN, _activation, _strategy_bytes, _weight_bytes, prime_blas
from ._conv_tiling import _active, _padding_value, conv_tiled
from ._workspace import num_threads, parallel_map, trim_workspace, workspace_limit

__all__ = ["conv2d", "choose_strategy", "compute_dtype", "prime_blas", "workspace_limit", "num_threads",
           "parallel_map"]

# Depthwise-like layers (one input channel per group, at most this many filters per group) run as
# shift-and-accumulate; with more filters per group the im2col GEMM is faster.
SHIFT_ACCUMULATE_MAX_KG = 2
# 3x3 stride-1 layers with at least this many input and output channels per group, and outputs at
# least WINOGRAD_MIN_OUTPUT high and wide, run as Winograd F(2x2, 3x3). Measured on the 2-core EPYC
# (both strategies in one process, alternating): 128 or more channels at 14x14 and up, 1.25-1.9x faster
# than im2col; with 64 channels the transforms cost about what the GEMM saves (0.8-1.3x, by image size
# and batch); 7x7 outputs lose (1.25-1.6x slower: 4x4 tiles per image make thin GEMMs, and a quarter
# of the tile columns is the junk column).
WINOGRAD_MIN_CHANNELS = 128
WINOGRAD_MIN_OUTPUT = 8
def compute_dtype(dtype) -> np.dtype:
    """float16 is computed in float32; float32 and float64 in themselves."""
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)


def choose_strategy(g: ConvGeometry, finite: bool = True) -> str:
    """The strategy for this geometry:

    1. 1x1 filter, stride 1, no padding -> ``numpy_matmul_1x1``;
    2. one input channel and at most ``SHIFT_ACCUMULATE_MAX_KG`` filters per group (depthwise) ->
       ``numpy_shift_accumulate``;
    3. 3x3 filter, stride 1, dilation 1, at least ``WINOGRAD_MIN_CHANNELS`` input and output channels
       per group, outputs at least ``WINOGRAD_MIN_OUTPUT`` high and wide, and ``finite`` (input and
       weight hold no inf or NaN: Winograd's transforms would turn an ``inf`` into NaN, see
       ``winograd``) -> ``numpy_winograd``;
    4. stride 1, a batch of at least 2, and short output rows: the wide-row junk ``(S-1)*dw`` is more
       than an eighth of ``Q`` -> ``numpy_im2col_chwn``. Measured with both forced, alternating: LeNet's
       10-wide rows 1.5x faster, 14- and 28-wide rows with junk 1/7 5-10% faster; junk 1/8 (5x5 on
       32-wide rows) 9% slower, 1/12 even; with long rows transposing in and out costs more than the
       junk saves (3x3 on 32-wide rows, 16 channels: 1.7x slower).
    5. otherwise ``numpy_im2col``.
    """
    if (g.R, g.S, g.sh, g.sw, g.pt, g.pb, g.pl, g.pr) == (1, 1, 1, 1, 0, 0, 0, 0):
        return "numpy_matmul_1x1"
    if g.Cg == 1 and g.Kg <= SHIFT_ACCUMULATE_MAX_KG:
        return "numpy_shift_accumulate"
    if winograd_applies(g) and finite:
        return "numpy_winograd"
    if g.sh == g.sw == 1 and g.N >= 2 and 8 * (g.S - 1) * g.dw > g.Q:
        return "numpy_im2col_chwn"
    return "numpy_im2col"


def winograd_applies(g: ConvGeometry) -> bool:
    """Rule 3 of :func:`choose_strategy` without the data check."""
    return ((g.R, g.S, g.sh, g.sw, g.dh, g.dw) == (3, 3, 1, 1, 1, 1)
            and min(g.Cg, g.Kg) >= WINOGRAD_MIN_CHANNELS and min(g.P, g.Q) >= WINOGRAD_MIN_OUTPUT)


def _all_finite(a: np.ndarray, ct) -> bool:
    """No inf or NaN in ``a``: its sum is finite (one reduction, no temporary). A sum that overflows
    with finite values answers False too, which only costs the faster strategy (its overflow warning is
    silenced with every other by NumpyBackend)."""
    return bool(np.isfinite(a.sum(dtype=ct)))


def conv2d(x: np.ndarray, w: np.ndarray, b, g: ConvGeometry) -> tuple[np.ndarray, str]:
    """``x`` (N, C, H, W), ``w`` (K, C/groups, R, S), ``b`` (K,) or None, any strides; returns
    ``(y, strategy)`` with ``y`` a new C-contiguous (N, K, P, Q) array of ``x``'s dtype.

    Memory: besides ``y``, at most ``workspace_limit()`` bytes of temporaries (and a few small arrays).
    Outputs whose window lies wholly in the padding (``_active``) are the constant ``bias`` (NaN where
    the filter holds an inf or NaN, which the padding's zeros multiply), written without any padded
    copy. The rest runs straight into ``y`` when one sample's temporaries fit (the strategies chunk the
    batch); otherwise, and for float16 (computed in float32), in tiles (``_conv_tiled``)."""
    ct = compute_dtype(x.dtype)
    if g.flip:
        w = w[:, :, ::-1, ::-1]
    b = None if b is None else b.astype(ct, copy=False)
    finite = not winograd_applies(g) or (_all_finite(x, ct) and _all_finite(w, ct))
    strategy = choose_strategy(g, finite)
    y = np.empty((g.N, g.K, g.P, g.Q), dtype=x.dtype)
    rows = _active(g.P, g.sh, g.pt, g.R, g.dh, g.H)
    cols = _active(g.Q, g.sw, g.pl, g.S, g.dw, g.W)
    whole = rows == (0, g.P) and cols == (0, g.Q)
    if not whole:
        _fill_padding_outputs(y, w, b, g, rows, cols, ct)
        if rows[0] == rows[1] or cols[0] == cols[1]:
            return y, strategy
    limit = workspace_limit()
    if whole:
        # one sample fits: straight into y (float16: into one float32 output, rounded once at the end)
        other = _weight_bytes(strategy, g, w.shape, ct, w.dtype != ct or not w.flags.c_contiguous)
        if x.dtype != ct:
            other += math.prod(y.shape) * ct.itemsize
        copy_1x1 = x.dtype != ct or not x.flags.c_contiguous  # _conv_1x1 copies such input per chunk
        if _strategy_bytes(strategy, g, ct, 1, copy_1x1) + other <= limit:
            trim_workspace(limit - other)
            out = y if x.dtype == ct else np.empty(y.shape, ct)
            RUN[strategy](x, w.astype(ct, copy=False), b, g, out, limit - other)
            _activation(out, g.activation)
            if out is not y:
                np.copyto(y, out)
            return y, strategy
    conv_tiled(x, w, b, g, y, strategy, ct, rows, cols, limit)
    return y, strategy

def _fill_padding_outputs(y, w, b, g, rows, cols, ct) -> None:
    """Write the outputs outside ``rows`` x ``cols`` (windows wholly in the padding): the per-filter
    constant of ``_padding_value`` after the activation."""
    c = _padding_value(w, b, ct)
    _activation(c, g.activation)
    c = c.astype(y.dtype)[None, :, None, None]
    (p0, p1), (q0, q1) = rows, cols
    y[:, :, :p0] = c
    y[:, :, p1:] = c
    y[:, :, p0:p1, :q0] = c
    y[:, :, p0:p1, q1:] = c
