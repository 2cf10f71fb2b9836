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

Measured on the benchmark layers and dropped (no gain, or a loss, on 2 cores): im2col from
channels-last patch rows (longer copy runs, but an NHWC transposition and a transposed GEMM operand),
the GEMM as ``(positions, Kg)`` (faster single-threaded, but the transposing store eats the gain),
gathering in two stages for short output rows, phase planes for strided im2col (re-measured with both
variants alternating in one process: no gain), threads for the im2col copies (split by filter rows the
AlexNet conv1 gather alone runs 1.6x faster, but inside the call, between GEMMs, the whole layer got
slower), a GEMV per channel for depthwise, the depthwise taps gathered and summed by one batched
matmul (as fast as the 17 multiply/add passes, no faster), ``einsum`` over strided tap views (8x
slower), depthwise blocks small enough for L2 (NumPy's ~2-3 us per ufunc call dominates).
Also measured and dropped, alternating in one process: strided im2col gathered straight from the
unpadded input, tap by tap with the borders zeroed (no padded copy, but the input is read once per tap:
3x3/2 128 channels 42.7 -> 44-49 ms, AlexNet conv1 28.0 -> 30.5 ms); phase planes for strided im2col
once more (3x3/2 layers 12-25% slower); depthwise rows running across a chunk's samples (longer rows
per multiply: 28x28 planes 19.6 -> 15.2 ms, but 56x56 14.2 -> 16.5, 14x14 8.2 -> 12.0, stride 2 24 ->
42); sample-innermost 5x5 layers as R GEMMs over columns gathered once per filter column, each GEMM
reading a row-shifted slice (3.6x less to gather, but R partial outputs to add: LeNet conv2 1.30-1.34
-> 1.40-1.42 ms, conv1 1.80 -> 2.49 ms); the bias as an extra GEMM row of ones (1-4%, inside the
noise); the im2col_chwn copies on two threads (LeNet 1.6-1.7x slower; OpenBLAS's worker thread probably
still spins on the second core after a GEMM), or whole half-batches on two threads (no faster, even
with single-threaded BLAS).
Measured and dropped in a later session, alternating in one process (8x144x56x56 depthwise, LeNet conv1):
depthwise taps through OpenBLAS GEMVs instead of multiply/add passes, in three layouts (3 column-shifted
copies of each plane and one GEMV per filter row, 13.1 vs 12.5 ms, or 12.8-13.4 vs 11.8 ms with the GEMV
padded to 4 rows; all 9 taps copied and one GEMV per channel block, 16.3 vs 14.5 ms at its best block
size; rows of the 3 shifted copies interleaved so that one GEMV per output row reads 9 taps in place, 350
us per 40-channel block for the GEMVs alone against 450 us for all 17 passes), and one multiply over all
9 tap views plus one ``add.reduce`` (2 ufunc calls per block, but a 9x larger temporary: 33 vs 13 ms);
every GEMV layout needs a copy (NumPy hands BLAS only matrices whose row stride is at least their row
length, which overlapping taps are not), and the copy costs what the GEMV saves. Depthwise blocks for 2
threads when N = 1 would give one task: splitting them in two was slower (1x576x14x14 1.5 -> 2.0 ms). On
this VM two threads running ufuncs on their own arrays scale 1.57x at 128 KiB per array, 1.08x at 512 KiB
and 0.62x at 2 MiB (the two vCPUs share memory bandwidth), so the thread pool pays only for cache-sized
work. For a single input channel (LeNet conv1), a GEMM over copied row windows with a banded Toeplitz
weight matrix (windows 7, 14 or 28 outputs wide) instead of im2col: 2.9-3.2 vs 1.8 ms (less to gather,
but 1.6-4.8x the flops and a transposing store). Transposing the chwn chunk through a GEMM with the
identity (BLAS packs efficiently): slower than NumPy's copy for three of the four LeNet transpositions,
and 0 * inf would spread NaN. Padded strided im2col gathered straight from the input by regions of taps
that share their valid outputs (4 copies for 3x3/2, 9 for AlexNet conv1, per block of 16 channels so the
block stays in cache, the padding entries zeroed): 3x3/2 44.8 -> 42.5 ms, AlexNet conv1 27.6 -> 28.7 ms;
not taken.
Measured and dropped later still (2026-11-24, alternating in one process): ``einsum`` over strided depthwise
tap views in three subscript orders (3.6-5.6 ms against 0.47 ms for one 40-channel block's 17 passes; the
passes cost about 2.5 us per ufunc call plus 0.6 ns per element and tap whether the block fits in L2 or
not); LeNet's chwn gather and GEMM per block of 1-7 output rows so the columns stay in L2 (5.2 / 3.0 ms
against 2.9 ms unblocked); chunks of 16 samples for LeNet conv1 (about 10% faster than 32 that day, slower
in an earlier session: the VM's phase decides, so the rule was left alone).

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

import dataclasses
import math

import numpy as np

from .._geometry import LEAKY_RELU_SLOPE, ConvGeometry
from . import winograd
from ._workspace import (num_threads, parallel_map, pool_threads, strided_view, trim_workspace, workspace,
                         workspace_bytes, workspace_limit)

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
# numpy_shift_accumulate: output values per task (a block of channels of one sample); large enough that
# each ufunc call amortises its overhead (and the GIL hand-off between threads), small enough that a
# task's arrays stay in cache.
SHIFT_ACCUMULATE_BLOCK = 1 << 17
# numpy_im2col and numpy_matmul_1x1: samples per chunk are chosen so a chunk's GEMM has about GEMM_ROWS
# output positions (enough for BLAS to run at full speed and for the per-chunk Python work to vanish),
# but a chunk's workspace stays under CHUNK_BYTES where a single sample allows; the workspace limit is
# never exceeded.
GEMM_ROWS = 65536
# numpy_im2col_chwn: at most this many samples per chunk. Transposing the chunk in and out costs per
# element about twice as much with 64 samples innermost as with 16 (the strided reads and writes touch
# that many planes at once); with fewer, the GEMMs get thin. LeNet conv2 (batch 64), alternating in one
# process: 1.58 ms in chunks of 64, 1.38 ms of 32, 1.65 ms of 16.
BATCH_INNER_CHUNK = 32
CHUNK_BYTES = 32 * 2**20
_ALIGN = 64  # bytes: the workspace's alignment of each array


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
            _RUN[strategy](x, w.astype(ct, copy=False), b, g, out, limit - other)
            _activation(out, g.activation)
            if out is not y:
                np.copyto(y, out)
            return y, strategy
    _conv_tiled(x, w, b, g, y, strategy, ct, rows, cols, limit)
    return y, strategy


def _active(P: int, s: int, pad: int, R: int, d: int, H: int) -> tuple[int, int]:
    """Outputs ``[lo, hi)`` along one axis whose window ``[p*s - pad, p*s - pad + (R-1)*d]`` meets the
    input ``[0, H)``; the others read only padding. (With dilation a window that meets the input may
    still skip it; those are computed like the rest.)"""
    lo = max(0, -(-(pad - (R - 1) * d) // s))
    hi = min(P, (H - 1 + pad) // s + 1)
    return (lo, hi) if lo < hi else (0, 0)


def _nonfinite_filters(w: np.ndarray) -> np.ndarray:
    """Per filter of ``w`` (K, Cg, R, S): does it hold an inf or NaN? (max and min reductions, no
    temporary the size of ``w``.)"""
    if w.size == 0:
        return np.zeros(w.shape[0], bool)
    return ~(np.isfinite(w.max(axis=(1, 2, 3))) & np.isfinite(w.min(axis=(1, 2, 3))))


def _padding_value(w: np.ndarray, b, ct) -> np.ndarray:
    """Per filter, conv + bias of an output whose taps all read padding: ``sum(0 * w) + b``, i.e. ``b``,
    or NaN where the filter holds an inf or NaN (``0 * inf``)."""
    c = np.zeros(w.shape[0], ct)
    c[_nonfinite_filters(w)] = np.nan
    if b is not None:
        c += b
    return c


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


# --------------------------------------------------------------------------------------------
# memory: what each strategy asks of the workspace, and tiles when one sample does not fit
# --------------------------------------------------------------------------------------------

def _accepts(strategy: str, g: ConvGeometry) -> bool:
    """Can ``strategy`` compute geometry ``g`` at all (a tile of a split filter may not be 3x3 any more)?"""
    if strategy == "numpy_matmul_1x1":
        return (g.R, g.S, g.sh, g.sw, g.pt, g.pb, g.pl, g.pr) == (1, 1, 1, 1, 0, 0, 0, 0)
    if strategy == "numpy_shift_accumulate":
        return g.Cg == 1
    if strategy == "numpy_winograd":
        return (g.R, g.S, g.sh, g.sw, g.dh, g.dw) == (3, 3, 1, 1, 1, 1)
    return True


def _im2col_layout(g: ConvGeometry, batch_inner: bool, from_input_ok: bool):
    """``(padded, wide, Qw, M, slack, from_input, plane)`` of ``_conv_im2col`` (see there)."""
    padded = ((g.P - 1) * g.sh + (g.R - 1) * g.dh + 1, (g.Q - 1) * g.sw + (g.S - 1) * g.dw + 1)
    wide = g.sh == 1 and g.sw == 1 and not batch_inner
    Qw = padded[1] if wide else g.Q  # GEMM columns per output row
    M = g.P * Qw  # GEMM columns per sample
    slack = (g.S - 1) * g.dw if wide else 0  # the last wide row of the last plane reads this far past it
    from_input = (from_input_ok and not wide and not batch_inner and g.pt == 0 and g.pl == 0
                  and padded[0] <= g.H and padded[1] <= g.W)  # every tap inside x: gather from x itself
    plane = 0 if from_input else padded[0] * padded[1]
    return padded, wide, Qw, M, slack, from_input, plane


def _gemm_rows(Kg: int, ct) -> int:
    """Filters per group in the GEMM (``_gemm_weights`` pads some float32 ``Kg`` to a multiple of 8)."""
    return -(-Kg // 8) * 8 if np.dtype(ct) == np.float32 and Kg < 16 and Kg % 8 >= 5 else Kg


def _im2col_specs(g: ConvGeometry, ct, n: int, batch_inner: bool, from_input_ok: bool = False):
    """The workspace ``_conv_im2col`` asks for a chunk of ``n`` samples."""
    _, _, _, M, slack, _, plane = _im2col_layout(g, batch_inner, from_input_ok)
    RS = g.R * g.S
    return (((n * g.C * plane + slack,), ct), ((g.groups, g.Cg * RS, n * M), ct),
            ((g.groups, _gemm_rows(g.Kg, ct), n * M), ct))


def _winograd_specs(g: ConvGeometry, ct, n: int):
    """The workspace ``_conv_winograd`` asks for a chunk of ``n`` samples."""
    TP, TQ = winograd.tile_counts(g.P, g.Q)
    size = PhasePlanes.size_for((2, 2), winograd.padded_extent(TP, TQ))
    tiles = (n, TP, TQ + 1)
    return (((n, g.C, size), ct), ((4, 2, g.C) + tiles, ct), ((4, 4, g.C) + tiles, ct),
            ((4, 4, g.K) + tiles, ct), ((2, 4, g.K) + tiles, ct), ((g.K,) + tiles, ct))


def _shift_specs(g: ConvGeometry, ct, slots: int, nb: int):
    """The workspace ``_conv_shift_accumulate`` asks for: per thread slot, ``nb`` channels' phase planes
    (``PhasePlanes.for_taps(g)``) and two wide-row accumulators."""
    used = ((g.P - 1) * g.sh + (g.R - 1) * g.dh + 1, (g.Q - 1) * g.sw + (g.S - 1) * g.dw + 1)
    size = PhasePlanes.size_for((g.sh, g.sw), used, (g.S - 1) * g.dw // g.sw)
    L = g.P * -(-used[1] // g.sw)
    return (((slots, nb, size), ct), ((slots, nb, g.Kg, L), ct), ((slots, nb, g.Kg, L), ct))


def _strategy_bytes(strategy: str, g: ConvGeometry, ct, n: int, copy_1x1: bool = False) -> int:
    """Workspace bytes ``strategy`` needs at least for ``n`` samples of ``g`` (one thread for
    ``numpy_shift_accumulate``)."""
    if strategy in ("numpy_im2col", "numpy_im2col_chwn"):
        return workspace_bytes(*_im2col_specs(g, ct, n, strategy == "numpy_im2col_chwn"))
    if strategy == "numpy_winograd":
        return workspace_bytes(*_winograd_specs(g, ct, n))
    if strategy == "numpy_shift_accumulate":
        return workspace_bytes(*_shift_specs(g, ct, 1, 1))
    if copy_1x1:
        return workspace_bytes(((n, g.C, g.H, g.W), ct))
    return 0  # numpy_matmul_1x1 reading the input in place: _conv_1x1 decides per call


def _weight_bytes(strategy: str, g: ConvGeometry, wshape, ct, copies: bool) -> int:
    """Bounds the temporaries a strategy derives from its weight of ``wshape``: a compute-dtype /
    contiguous copy (``copies``), the GEMM operand padded with zero filters, Winograd's ``U``."""
    size = math.prod(wshape) * np.dtype(ct).itemsize
    extra = size if copies else 0
    if strategy in ("numpy_im2col", "numpy_im2col_chwn"):
        if _gemm_rows(g.Kg, ct) != g.Kg:
            extra += size * _gemm_rows(g.Kg, ct) // g.Kg
    elif strategy == "numpy_winograd":
        extra += size + size * 16 // 9 + 16 * 9 * np.dtype(ct).itemsize  # reshape copy, U, kron(G, G)
    return extra + 4 * _ALIGN


def _window(p0: int, p1: int, s: int, pad: int, r0: int, r1: int, d: int, H: int):
    """Input rows ``[h0, h1)`` that outputs ``[p0, p1)`` read with filter rows ``[r0, r1)``, and the
    padding ``(top, bottom)`` around them; None when they read only padding."""
    a = p0 * s - pad + r0 * d  # first row read
    e = (p1 - 1) * s - pad + (r1 - 1) * d  # last row read
    h0, h1 = min(max(a, 0), H), max(min(e + 1, H), 0)
    if h1 <= h0:
        return None
    return h0, h1, h0 - a, e - (h1 - 1)


# Orders in which tile dimensions are split (each only if needed): output rows and columns first; or the
# filter taps first, for dilated windows so tall or wide that one output row's window alone overflows.
_TILE_ORDERS = (("n", "p", "q", "G", "k", "c", "r", "s"), ("n", "r", "s", "p", "q", "G", "k", "c"))


def _tile_geometry(g: ConvGeometry, t: dict) -> ConvGeometry:
    """The sizes of a tile of ``t`` (sizes per dimension name of ``_TILE_ORDERS``), as a geometry without
    padding whose input is the tile's whole window (what the strategies' workspace depends on; ``g``
    itself for the whole convolution)."""
    if (t["n"], t["p"], t["q"], t["G"], t["k"], t["c"], t["r"], t["s"]) == (
            g.N, g.P, g.Q, g.groups, g.Kg, g.Cg, g.R, g.S):
        return g
    groups = t["G"]
    Cc, Kc = (g.Cg, g.Kg) if groups > 1 else (t["c"], t["k"])
    R, S = t["r"], t["s"]
    return dataclasses.replace(
        g, N=t["n"], C=groups * Cc, K=groups * Kc, groups=groups, R=R, S=S, P=t["p"], Q=t["q"],
        H=(t["p"] - 1) * g.sh + (R - 1) * g.dh + 1, W=(t["q"] - 1) * g.sw + (S - 1) * g.dw + 1,
        pt=0, pb=0, pl=0, pr=0, flip=False, activation=None)


def _tile_cost(g, strategy, ct, t: dict) -> tuple[int, int]:
    """``(bytes, output buffer bytes)`` of a tile of sizes ``t``: its output buffer (and a second one
    when the sum over channels or filter taps is split), the strategy's workspace for one sample and
    the weight temporaries."""
    gt = _tile_geometry(g, t)
    split_sum = (t["c"], t["r"], t["s"]) != (g.Cg, g.R, g.S)
    buf = t["n"] * gt.K * t["p"] * t["q"] * np.dtype(ct).itemsize
    run = strategy if _accepts(strategy, gt) else "numpy_im2col"
    wshape = (gt.K, gt.Cg, gt.R, gt.S)
    total = (buf * (2 if split_sum else 1) + _strategy_bytes(run, gt, ct, 1, copy_1x1=True)
             + _weight_bytes(run, gt, wshape, ct, True))
    return total, buf * (2 if split_sum else 1)


def _plan_tiles(g, strategy, ct, rows, cols, limit) -> dict:
    """Tile sizes: the whole active region if it fits; else, for each order of ``_TILE_ORDERS``, a
    dimension is split only when the tile does not fit the limit with that dimension at 1, and the
    first one that does is made as large as fits; the plan with the fewest tiles wins (the first order
    on a tie). A tile of one output, one filter, one channel and one tap is the smallest."""
    full = dict(n=g.N, p=rows[1] - rows[0], q=cols[1] - cols[0], G=g.groups, k=g.Kg, c=g.Cg, r=g.R, s=g.S)
    if _tile_cost(g, strategy, ct, full)[0] <= limit:
        return full
    best, best_count = None, None
    for order in _TILE_ORDERS:
        t = dict(full)
        for name in order:
            if name in ("k", "c") and t["G"] > 1:
                continue  # filters and channels are split within one group
            t[name] = 1
            if _tile_cost(g, strategy, ct, t)[0] > limit:
                continue
            lo, hi = 1, full[name]
            while lo < hi:
                mid = (lo + hi + 1) // 2
                t[name] = mid
                lo, hi = (mid, hi) if _tile_cost(g, strategy, ct, t)[0] <= limit else (lo, mid - 1)
            t[name] = lo
            break
        count = 1
        for name, size in full.items():
            count *= -(-size // t[name])
        if best is None or count < best_count:
            best, best_count = t, count
    return best


def _ranges(start: int, stop: int, step: int):
    return [(i, min(stop, i + step)) for i in range(start, stop, step)]


def _conv_tiled(x, w, b, g, y, strategy, ct, rows, cols, limit) -> None:
    """The active outputs ``rows`` x ``cols`` in tiles sized by ``_plan_tiles``: each tile is a
    convolution of its own (a view of the input, the padding it reads, the weight's slice), computed in
    the compute dtype into a tile buffer (partial sums over channel / tap pieces added up in it), then
    activated and stored into ``y``."""
    t = _plan_tiles(g, strategy, ct, rows, cols, limit)
    buf_bytes = _tile_cost(g, strategy, ct, t)[1]
    budget = max(0, limit - buf_bytes)  # for the strategy's workspace and weights
    trim_workspace(budget)
    split_sum = (t["c"], t["r"], t["s"]) != (g.Cg, g.R, g.S)
    elems = t["n"] * (t["G"] * g.Kg if t["G"] > 1 else t["k"]) * t["p"] * t["q"]
    acc_flat = np.empty(elems, ct)
    part_flat = np.empty(elems, ct) if split_sum else None
    for G0, G1 in _ranges(0, g.groups, t["G"]):
        for k0, k1 in (_ranges(0, g.Kg, t["k"]) if G1 - G0 == 1 else [(0, g.Kg)]):
            f0, f1 = G0 * g.Kg + k0, (G1 - 1) * g.Kg + k1  # filters of the tile
            for n0, n1 in _ranges(0, g.N, t["n"]):
                for p0, p1 in _ranges(rows[0], rows[1], t["p"]):
                    for q0, q1 in _ranges(cols[0], cols[1], t["q"]):
                        shape = (n1 - n0, f1 - f0, p1 - p0, q1 - q0)
                        acc = acc_flat[:math.prod(shape)].reshape(shape)
                        first = True
                        for c0, c1 in (_ranges(0, g.Cg, t["c"]) if G1 - G0 == 1 else [(0, g.Cg)]):
                            for r0, r1 in _ranges(0, g.R, t["r"]):
                                for s0, s1 in _ranges(0, g.S, t["s"]):
                                    dst = acc if first else part_flat[:acc.size].reshape(shape)
                                    _conv_piece(x, w, None if b is None or not first else b[f0:f1], g, dst,
                                                strategy, ct, budget, (n0, n1), (p0, p1), (q0, q1),
                                                (G0, G1), (f0, f1), (c0, c1), (r0, r1), (s0, s1))
                                    if not first:
                                        acc += dst
                                    first = False
                        _activation(acc, g.activation)
                        y[n0:n1, f0:f1, p0:p1, q0:q1] = acc


def _conv_piece(x, w, b, g, dst, strategy, ct, budget, n, p, q, G, f, c, r, s) -> None:
    """``dst`` = conv + ``b`` over one tile (see ``_conv_tiled``): samples ``n``, output rows ``p`` and
    columns ``q``, groups ``G``, filters ``f`` (absolute), channels ``c`` within the group, filter rows
    ``r`` and columns ``s``."""
    (G0, G1), (c0, c1) = G, c
    ch0, ch1 = G0 * g.Cg + c0, (G1 - 1) * g.Cg + c1
    ws = w[f[0]:f[1], c0:c1, r[0]:r[1], s[0]:s[1]]
    rows = _window(p[0], p[1], g.sh, g.pt, r[0], r[1], g.dh, g.H)
    cols = _window(q[0], q[1], g.sw, g.pl, s[0], s[1], g.dw, g.W)
    if rows is None or cols is None:  # these taps read only padding: 0 * w
        dst[...] = _padding_value(ws, b, ct)[None, :, None, None]
        return
    (h0, h1, pt, pb), (v0, v1, pl, pr) = rows, cols
    sizes = dict(N=n[1] - n[0], C=ch1 - ch0, H=h1 - h0, W=v1 - v0, K=f[1] - f[0], R=r[1] - r[0], S=s[1] - s[0],
                 groups=G1 - G0, pt=pt, pb=pb, pl=pl, pr=pr, P=p[1] - p[0], Q=q[1] - q[0])
    if all(getattr(g, k) == v for k, v in sizes.items()):
        gs = g  # the whole convolution (the strategies read neither flip nor the activation)
    else:
        gs = dataclasses.replace(g, flip=False, activation=None, has_bias=b is not None, **sizes)
    run = strategy if _accepts(strategy, gs) else "numpy_im2col"
    wc = np.ascontiguousarray(ws, dtype=ct)  # at most one copy (the strategies' reshapes are views)
    _RUN[run](x[n[0]:n[1], ch0:ch1, h0:h1, v0:v1], wc, b, gs, dst,
              max(0, budget - _weight_bytes(run, gs, ws.shape, ct, True)))


_blas_primed = False


def prime_blas() -> None:
    """Run one 128x768x256 float32 GEMM (50 MFLOP, 1-2 ms), once per process.

    Observed with the OpenBLAS 0.3.31 that NumPy 2.4 bundles (2 threads, AMD EPYC): until the process
    has run one GEMM with both many rows and a long inner dimension, GEMMs such as AlexNet conv1's
    ``(64 x 363) @ (363 x 24200)`` take twice as long, with both threads busy (the work is not shared
    out); one such product puts OpenBLAS in the fast state for the rest of the process. Harmless where
    the quirk does not exist.
    """
    global _blas_primed
    if not _blas_primed:
        np.matmul(np.zeros((128, 768), np.float32), np.zeros((768, 256), np.float32))
        _blas_primed = True


# --------------------------------------------------------------------------------------------
# strategies: each writes conv + bias into y (compute dtype)
# --------------------------------------------------------------------------------------------

def _conv_1x1(x, w, b, g, y, budget):
    """``(groups, Kg, Cg) @ (n, groups, Cg, H*W)`` straight into y, then the bias."""
    ct = y.dtype
    prime_blas()
    plane = g.H * g.W
    wg = w.reshape(g.groups, g.Kg, g.Cg)
    copy = x.dtype != ct or not x.flags.c_contiguous
    chunk = _chunk(g, g.C * plane * ct.itemsize, plane, budget, _ALIGN) if copy else g.N
    for n0 in range(0, g.N, chunk):
        n = min(chunk, g.N - n0)
        xs = x[n0:n0 + n]
        if copy:  # float16, or a layout the GEMM cannot read in place
            (buf,) = workspace(((n, g.C, g.H, g.W), ct))
            np.copyto(buf, xs)
            xs = buf
        dst = y[n0:n0 + n].reshape(n, g.groups, g.Kg, plane)
        np.matmul(wg, xs.reshape(n, g.groups, g.Cg, plane), out=dst)
    if b is not None:
        y += b[:, None, None]


def _conv_im2col(x, w, b, g, y, budget, batch_inner=False):
    """Per chunk of samples: padded copy, columns ``(groups, Cg*R*S, GEMM columns)`` by one strided
    copy, one GEMM per group ``(Kg, Cg*R*S) @ (Cg*R*S, GEMM columns)``, then into y (NCHW) with the bias.
    The copies move contiguous runs as long as the layout allows (NumPy's per-run cost dominates short
    runs):

    * ``batch_inner`` (``numpy_im2col_chwn``, unit column stride): the padded chunk is stored
      ``(C, Hu, Wu, n)``, the sample index innermost, so tap ``(c, r, s)`` of output row ``p`` of all the
      chunk's samples is one run of ``Q*n`` values, and the GEMM columns are exactly ``(p, q, sample)``;
      the price is transposing the input in and the output out.
    * otherwise at stride 1, "wide rows" (``Qw`` = the padded width): tap ``(r, s)`` of all outputs of one
      (sample, channel) is a single run of ``P*Qw`` values of the flattened padded plane; the last ``Qw -
      Q`` columns of each output row are junk (they wrap into the next row) and are never stored.
    * strided convolutions gather exact ``Q``-wide rows, straight from ``x`` when no output reads the
      padding (no top/left padding, and the windows end inside the input) and ``x`` is in the compute
      dtype: the padded copy would be a copy of ``x`` (1x1 stride 2, 16x256x56x56 -> 512: 78 -> 70 ms)."""
    ct = y.dtype
    prime_blas()
    RS = g.R * g.S
    padded, wide, Qw, M, slack, from_input, plane = _im2col_layout(g, batch_inner, x.dtype == ct)
    wmat = _gemm_weights(w.reshape(g.groups, g.Kg, g.Cg * RS))  # rows (c, r, s), as the gathered columns
    Kp = wmat.shape[1]  # filters per group in the GEMM, zero filters included
    per_sample = (g.C * plane + g.C * RS * M + g.groups * Kp * M) * ct.itemsize
    chunk = _chunk(g, per_sample, M, budget, slack * ct.itemsize + 3 * _ALIGN)
    if batch_inner:
        chunk = min(chunk, BATCH_INNER_CHUNK)
    bias = None if b is None else b.reshape(g.groups, g.Kg, 1, 1)
    for n0 in range(0, g.N, chunk):
        n = min(chunk, g.N - n0)
        flat, cols, out = workspace(((n * g.C * plane + slack,), ct), ((g.groups, g.Cg * RS, n * M), ct),
                                    ((g.groups, Kp, n * M), ct))
        flat[n * g.C * plane:] = 0
        if batch_inner:
            xt = flat[:n * g.C * plane].reshape((g.C,) + padded + (n,))
            _fill_padded(x[n0:n0 + n], g, xt.transpose(3, 0, 1, 2))
            _gather_batch_inner(xt, cols.reshape(g.C, g.R, g.S, g.P, g.Q, n), g)
        elif from_input:
            _gather(x[n0:n0 + n], cols.reshape(g.C, g.R, g.S, n, g.P, g.Q), g)
        else:
            xp = flat[:n * g.C * plane].reshape((n, g.C) + padded)
            _fill_padded(x[n0:n0 + n], g, xp)
            if wide:
                _gather_wide(flat, cols.reshape(g.C, g.R, g.S, n, M), g, n, padded)
            else:
                _gather(xp, cols.reshape(g.C, g.R, g.S, n, g.P, g.Q), g)
        np.matmul(wmat, cols, out=out)
        if batch_inner:
            res = out.reshape(g.groups, Kp, g.P, g.Q, n)[:, :g.Kg].transpose(4, 0, 1, 2, 3)
        else:
            res = out.reshape(g.groups, Kp, n, g.P, Qw)[:, :g.Kg, ..., :g.Q].transpose(2, 0, 1, 3, 4)
        _store(y[n0:n0 + n].reshape(n, g.groups, g.Kg, g.P, g.Q), res, bias)


def _gemm_weights(wmat: np.ndarray) -> np.ndarray:
    """The GEMM's left operand ``(groups, Kg, Cg*R*S)``, in float32 with ``Kg % 8`` of 5 to 7 and ``Kg``
    below 16 padded with zero filters up to a multiple of 8 (the extra output rows are never stored).
    OpenBLAS 0.3.31's Haswell sgemm (NumPy's wheels, any AVX2 CPU) seems to run the last ``Kg % 8``
    filters as separate narrower passes over the whole column matrix. Measured on the 2-core EPYC, GEMM
    alone: ``Kg`` = 5, 6, 7 took 1.1-1.8x as long as 8 (13-15: 1.05-1.5x as long as 16) for column
    matrices of 25-576 rows and 3,200-25,088 columns; float64 only 0.9-1.2x (not padded); from 17 up
    the leftover is a small part (not padded). Whole layers, padded or not alternating in one process:
    16x32x28 with 14 3x3 filters 7.8 -> 6.8 ms, 8x16x28 with 2x7 5x5 filters 4.1 -> 3.9 ms, 16x16x32
    with 5 3x3/2 filters 1.40 -> 1.30 ms; LeNet conv1 (6 filters) unchanged within noise."""
    Kg = wmat.shape[1]
    if wmat.dtype != np.float32 or Kg >= 16 or Kg % 8 < 5:
        return wmat
    padded = np.zeros(wmat.shape[:1] + (-(-Kg // 8) * 8,) + wmat.shape[2:], wmat.dtype)
    padded[:, :Kg] = wmat
    return padded


def _conv_im2col_chwn(x, w, b, g, y, budget):
    _conv_im2col(x, w, b, g, y, budget, batch_inner=True)


def _conv_winograd(x, w, b, g, y, budget):
    """Per chunk of samples: the stride-2 phase planes of the padded input and the input transform
    ``V`` (channel blocks on the thread pool), 16 GEMMs per group ``U[a, b] (Kg, Cg) @ V[a, b] (Cg,
    n*TP*(TQ+1))``, then the output transform and the store of each output phase ``y[:, :, a::2,
    b::2]`` with the bias (filter blocks on the thread pool); see ``winograd``."""
    ct = y.dtype
    prime_blas()
    TP, TQ = winograd.tile_counts(g.P, g.Q)
    T = TP * (TQ + 1)  # tiles per image, with the junk column
    planes_of = PhasePlanes(g.H, g.W, g.pt, g.pl, (2, 2), winograd.padded_extent(TP, TQ))
    U = winograd.weight_transform(w, g.groups)
    per_sample = (g.C * planes_of.size + 24 * g.C * T + 25 * g.K * T) * ct.itemsize
    chunk = _chunk(g, per_sample, T, budget, 6 * _ALIGN)
    for n0 in range(0, g.N, chunk):
        n = min(chunk, g.N - n0)
        planes, t, V, M, s, out = workspace(
            ((n, g.C, planes_of.size), ct), ((4, 2, g.C, n, TP, TQ + 1), ct), ((4, 4, g.C, n, TP, TQ + 1), ct),
            ((4, 4, g.K, n, TP, TQ + 1), ct), ((2, 4, g.K, n, TP, TQ + 1), ct), ((g.K, n, TP, TQ + 1), ct))

        def transform_input(c):  # c: a slice of channels
            planes_of.fill(x[n0:n0 + n, c], planes[:, c])
            winograd.input_transform(planes[:, c].reshape(n, -1, 2, 2, TP + 1, TQ + 1), t[:, :, c], V[:, :, c])

        def transform_output(k):  # k: a slice of filters
            bias = None if b is None else b[None, k, None, None]
            for a, b_, res in winograd.output_transform(M[:, :, k], s[:, :, k], out[k]):
                dst = y[n0:n0 + n, k, a::2, b_::2]  # output rows 2*ty + a, columns 2*tx + b_
                _store(dst, res.transpose(1, 0, 2, 3)[:, :, :dst.shape[2], :dst.shape[3]], bias)

        parallel_map(transform_input, _slices(g.C, num_threads()))
        np.matmul(U, V.reshape(16, g.groups, g.Cg, n * T), out=M.reshape(16, g.groups, g.Kg, n * T))
        parallel_map(transform_output, _slices(g.K, num_threads()))


def _slices(size: int, parts: int) -> list[slice]:
    """``range(size)`` cut into at most ``parts`` nearly equal non-empty slices."""
    parts = max(1, min(parts, size))
    return [slice(size * i // parts, size * (i + 1) // parts) for i in range(parts)]


def _chunk(g: ConvGeometry, per_sample: int, rows: int, budget: int, fixed: int = 0) -> int:
    """Samples per chunk, for ``rows`` GEMM rows (output positions) per sample: see GEMM_ROWS. A chunk's
    workspace, ``n * per_sample + fixed`` bytes at most, stays within ``budget`` (the caller made sure
    one sample fits)."""
    per_sample = max(per_sample, 1)
    wanted = min(-(-GEMM_ROWS // rows), max(1, CHUNK_BYTES // per_sample))
    return max(1, min(g.N, wanted, (budget - fixed) // per_sample))


def _fill_padded(x: np.ndarray, g: ConvGeometry, xp: np.ndarray) -> None:
    """``xp`` (n, C, Hu, Wu) = ``x`` zero-padded, only the rows and columns some output reads."""
    Hu, Wu = xp.shape[2:]
    h1, w1 = min(g.H, Hu - g.pt), min(g.W, Wu - g.pl)  # input rows / columns that are read
    _zero_outside(xp, 2, g.pt, g.pt + h1)
    _zero_outside(xp, 3, g.pl, g.pl + w1)
    xp[:, :, g.pt:g.pt + h1, g.pl:g.pl + w1] = x[:, :, :h1, :w1]


def _gather(xp: np.ndarray, cols: np.ndarray, g: ConvGeometry) -> None:
    """``cols[c, r, s, i, p, q] = xp[i, c, p*sh + r*dh, q*sw + s*dw]``: one strided copy."""
    si, sc, sy, sx = xp.strides
    np.copyto(cols, strided_view(xp, (g.C, g.R, g.S, xp.shape[0], g.P, g.Q),
                                 (sc, g.dh * sy, g.dw * sx, si, g.sh * sy, g.sw * sx)))


def _gather_batch_inner(xt: np.ndarray, cols: np.ndarray, g: ConvGeometry) -> None:
    """``cols[c, r, s, p, q, i] = xt[c, p*sh + r*dh, q*sw + s*dw, i]``: one strided copy whose runs
    are ``(q, i)``, ``Q*n`` values, at unit column stride (``n`` values otherwise)."""
    sc, sy, sx, si = xt.strides
    np.copyto(cols, strided_view(xt, (g.C, g.R, g.S, g.P, g.Q, xt.shape[3]),
                                 (sc, g.dh * sy, g.dw * sx, g.sh * sy, g.sw * sx, si)))


def _gather_wide(flat: np.ndarray, cols: np.ndarray, g: ConvGeometry, n: int, padded) -> None:
    """Stride 1: ``cols[c, r, s, i, p*Qw + q] = flat[((i*C + c)*Hu + p + r*dh)*Qw + q + s*dw]`` for
    ``q < Qw`` (``q >= Q`` is junk): for each (c, r, s, i) one contiguous run of ``P*Qw`` values."""
    Hu, Qw = padded
    item = flat.itemsize
    np.copyto(cols, strided_view(flat, (g.C, g.R, g.S, n, g.P * Qw),
                                 (Hu * Qw * item, g.dh * Qw * item, g.dw * item, g.C * Hu * Qw * item, item)))


def _conv_shift_accumulate(x, w, b, g, y, budget):
    """Depthwise-like convolution (one input channel per group, ``Kg`` filters per group): for each
    block of channels of one sample, fill the block's phase planes, then every tap ``(r, s)`` adds
    ``w * tap`` into a wide-row accumulator; blocks run on the thread pool, each thread in its own slot
    of the caller's workspace (threads and block size reduced until the slots fit ``budget``)."""
    ct = y.dtype
    pp = PhasePlanes.for_taps(g)
    L = g.P * pp.Wph
    wg = w.reshape(g.groups, g.Kg, g.R * g.S)  # Cg == 1
    block = max(1, min(g.groups, SHIFT_ACCUMULATE_BLOCK // (g.Kg * L)))
    per_channel = (pp.size + 2 * g.Kg * L) * ct.itemsize
    block = max(1, min(block, (budget - 3 * _ALIGN) // per_channel))
    tasks = [(i, g0) for i in range(g.N) for g0 in range(0, g.groups, block)]
    slots = max(1, min(pool_threads(len(tasks)), (budget - 3 * _ALIGN) // (block * per_channel)))
    planes_s, acc_s, tmp_s = workspace(*_shift_specs(g, ct, slots, block))

    def run(task, slot):
        i, g0 = task
        g1 = min(g.groups, g0 + block)
        nb = g1 - g0
        planes, acc, tmp = planes_s[slot, :nb], acc_s[slot, :nb], tmp_s[slot, :nb]
        pp.fill(x[i, g0:g1], planes)
        for t, off in enumerate(pp.offsets):
            src = planes[:, None, off:off + L]
            wv = wg[g0:g1, :, t, None]
            if t == 0:
                np.multiply(src, wv, out=acc)
            else:
                np.multiply(src, wv, out=tmp)
                acc += tmp
        res = acc.reshape(nb * g.Kg, g.P, pp.Wph)[:, :, :g.Q]
        _store(y[i, g0 * g.Kg:g1 * g.Kg], res, None if b is None else b[g0 * g.Kg:g1 * g.Kg, None, None])

    parallel_map(run, tasks, threads=slots, slots=True)


# strategy name -> function(x, w, b, g, y, budget): y = conv + bias, its workspace within budget bytes
_RUN = {"numpy_matmul_1x1": _conv_1x1,
        "numpy_shift_accumulate": _conv_shift_accumulate,
        "numpy_winograd": _conv_winograd,
        "numpy_im2col_chwn": _conv_im2col_chwn,
        "numpy_im2col": _conv_im2col}


class PhasePlanes:
    """The zero-padded input of one (sample, channel), split into its ``sh*sw`` stride phases (phase
    ``(a, b)`` is padded rows ``a::sh``, columns ``b::sw``), each an ``Hph x Wph`` image, flattened one
    after the other, then ``slack`` zeros; ``size`` values in all. Only the first ``used = (used_h,
    used_w)`` padded rows and columns are kept (positions past the padded input are zeros too)."""

    def __init__(self, H: int, W: int, pad_top: int, pad_left: int, strides, used, slack: int = 0):
        sh, sw = strides
        used_h, used_w = used
        self.Hph, self.Wph = -(-used_h // sh), -(-used_w // sw)
        image = self.Hph * self.Wph
        self.size = sh * sw * image + slack
        self._strides = (sh, sw)
        # per phase: (start, input rows h0:h1:sh, first phase row, count, input columns, first column, count)
        self._parts = [(((a * sw + bb) * image),) + rows + cols
                       for a, rows in enumerate(_phase_ranges(H, pad_top, sh, used_h))
                       for bb, cols in enumerate(_phase_ranges(W, pad_left, sw, used_w))]

    @staticmethod
    def size_for(strides, used, slack: int = 0) -> int:
        """``size`` of ``PhasePlanes(..., strides, used, slack)``."""
        (sh, sw), (used_h, used_w) = strides, used
        return sh * sw * -(-used_h // sh) * -(-used_w // sw) + slack

    @classmethod
    def for_taps(cls, g: ConvGeometry) -> "PhasePlanes":
        """The phase planes of a strided convolution's input, with ``offsets``: tap ``(r, s)`` at output
        ``(p, q)`` reads value ``offsets[r*S + s] + p*Wph + q``, so for every output row the taps are
        contiguous slices, whatever the stride and dilation (the slack covers the last wide row)."""
        used = ((g.P - 1) * g.sh + (g.R - 1) * g.dh + 1, (g.Q - 1) * g.sw + (g.S - 1) * g.dw + 1)
        pp = cls(g.H, g.W, g.pt, g.pl, (g.sh, g.sw), used, slack=(g.S - 1) * g.dw // g.sw)
        pp.offsets = [((r * g.dh % g.sh * g.sw + s * g.dw % g.sw) * pp.Hph + r * g.dh // g.sh) * pp.Wph
                      + s * g.dw // g.sw for r in range(g.R) for s in range(g.S)]
        return pp

    def fill(self, x: np.ndarray, planes: np.ndarray) -> None:
        """``planes`` (..., size) from ``x`` (..., H, W), casting; every value is written (so the junk of
        wide rows is deterministic)."""
        (sh, sw), Hph, Wph = self._strides, self.Hph, self.Wph
        for start, h0, h1, t0, nh, w0, w1, u0, nw in self._parts:
            img = planes[..., start:start + Hph * Wph].reshape(planes.shape[:-1] + (Hph, Wph))
            _zero_outside(img, -2, t0, t0 + nh)
            _zero_outside(img, -1, u0, u0 + nw)
            if nh and nw:
                img[..., t0:t0 + nh, u0:u0 + nw] = x[..., h0:h1:sh, w0:w1:sw]
        planes[..., sh * sw * Hph * Wph:] = 0


def _phase_ranges(size: int, pad: int, stride: int, used: int):
    """For each phase ``a``: input indices ``h0:h1:stride`` whose padded index ``h + pad`` is ``a`` mod
    ``stride`` and below ``used``, their first position ``t0`` in the phase image, and their count."""
    out = []
    for a in range(stride):
        h0 = (a - pad) % stride
        h1 = max(h0, min(size, used - pad))
        out.append((h0, h1, (h0 + pad) // stride, len(range(h0, h1, stride))))
    return out


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def _zero_outside(a: np.ndarray, axis: int, lo: int, hi: int) -> None:
    """Zero ``a`` outside ``[lo, hi)`` along ``axis``."""
    idx = [slice(None)] * a.ndim
    if lo > 0:
        idx[axis] = slice(0, lo)
        a[tuple(idx)] = 0
    if hi < a.shape[axis]:
        idx[axis] = slice(hi, None)
        a[tuple(idx)] = 0


def _store(dst: np.ndarray, res: np.ndarray, bias) -> None:
    """``dst = res (+ bias)``, ``bias`` None or broadcastable to ``dst``."""
    if bias is None:
        np.copyto(dst, res)
    else:
        np.add(res, bias, out=dst)


ACTIVATION_SLAB = 1 << 18  # leaky_relu's mask covers this many values at a time


def _activation(y: np.ndarray, act) -> None:
    """In place (``y`` C-contiguous): the fused activation (NaN propagates through each)."""
    if act == "relu":
        np.maximum(y, 0, out=y)  # np.maximum propagates NaN
    elif act == "leaky_relu":
        flat = y.reshape(-1)
        mask = np.empty(min(flat.size, ACTIVATION_SLAB), bool)
        for i in range(0, flat.size, ACTIVATION_SLAB):
            part = flat[i:i + ACTIVATION_SLAB]
            m = mask[:part.size]
            np.less(part, 0, out=m)
            np.multiply(part, LEAKY_RELU_SLOPE, out=part, where=m)
    elif act == "sigmoid":
        # 1 / (1 + exp(-y)); exp overflow to inf gives the correct limit 0 (NumpyBackend silences the
        # overflow warning).
        np.negative(y, out=y)
        np.exp(y, out=y)
        y += 1
        np.reciprocal(y, out=y)
    elif act == "tanh":
        np.tanh(y, out=y)
