"""The NumPy conv2d strategies (``_conv.py`` chooses among them, ``_conv_tiling.py`` runs them on tiles) and
what each asks of the workspace. Each strategy writes conv + bias into ``y`` (compute dtype) and keeps its
temporaries within the ``budget`` it is given; ``RUN`` maps the strategy names ``last_kernel()`` reports to
them."""

from __future__ import annotations

import math

import numpy as np

from .._geometry import LEAKY_RELU_SLOPE, ConvGeometry
from . import winograd
from ._workspace import num_threads, parallel_map, pool_threads, strided_view, workspace, workspace_bytes

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
RUN = {"numpy_matmul_1x1": _conv_1x1,
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
