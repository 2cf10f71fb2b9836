"""conv2d on the CPU with NumPy: im2col from R*S strided slice copies, then one batched BLAS matmul.

Three strategies, chosen by :func:`choose_strategy` (the name is reported as the "kernel" that ran):

* ``numpy_matmul_1x1``: a 1x1 filter with stride 1 and no padding is a plain matmul over channels; the
  input is used in place (no copy when it is C-contiguous).
* ``numpy_shift_accumulate``: few input channels per group (depthwise and the like): for every
  (c', r, s) one strided slice of the input is multiplied by a per-filter scalar and added into the
  output. No im2col buffer; ``Cg*R*S`` passes over the output.
* ``numpy_im2col``: the general case. Columns ``(n, group, Cg*R*S, P*Q)`` are gathered by ``R*S``
  strided slice copies and ``np.matmul`` multiplies ``(group, Kg, Cg*R*S)`` by them, writing straight into
  the output, whose ``(N, K, P*Q)`` layout is exactly ``(N, groups, Kg, P*Q)``.

The batch is processed in chunks so the temporary buffers stay under ``workspace_limit()`` bytes
(256 MiB unless ``GPUCONV_NUMPY_WORKSPACE_MB`` says otherwise), whatever N is. float16 is computed in
float32 and rounded once at the end.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .._geometry import LEAKY_RELU_SLOPE, ConvGeometry

# Depthwise-like layers (one input channel per group, at most this many filters per group) run as
# shift-and-accumulate; with more filters per group the im2col GEMM is faster.
SHIFT_ACCUMULATE_MAX_KG = 2
_pool = None


def num_threads() -> int:
    """Threads for the NumPy path's own loops (BLAS has its own): ``GPUCONV_NUMPY_THREADS`` or all cores."""
    return max(1, int(os.environ.get("GPUCONV_NUMPY_THREADS", os.cpu_count() or 1)))


def parallel_map(fn, items) -> None:
    """Run ``fn`` over ``items`` on a thread pool (NumPy releases the GIL in copies and ufunc loops)."""
    global _pool
    items = list(items)
    threads = min(num_threads(), len(items))
    if threads <= 1:
        for item in items:
            fn(item)
        return
    if _pool is None or _pool._max_workers < threads:
        _pool = ThreadPoolExecutor(max_workers=num_threads(), thread_name_prefix="gpuconv")
    for _ in _pool.map(fn, items):  # re-raises the first exception
        pass


def workspace_limit() -> int:
    """Bytes of temporary memory the NumPy path may use per call (default 256 MiB)."""
    return int(float(os.environ.get("GPUCONV_NUMPY_WORKSPACE_MB", "256")) * 2**20)


def compute_dtype(dtype) -> np.dtype:
    """float16 is computed in float32; float32 and float64 in themselves."""
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)


def choose_strategy(g: ConvGeometry) -> str:
    if (g.R, g.S, g.sh, g.sw, g.pt, g.pb, g.pl, g.pr) == (1, 1, 1, 1, 0, 0, 0, 0):
        return "numpy_matmul_1x1"
    if g.Cg == 1 and g.Kg <= SHIFT_ACCUMULATE_MAX_KG:
        return "numpy_shift_accumulate"
    return "numpy_im2col"


def conv2d(x: np.ndarray, w: np.ndarray, b, g: ConvGeometry) -> tuple[np.ndarray, str]:
    """``x`` (N, C, H, W), ``w`` (K, C/groups, R, S), ``b`` (K,) or None, any strides; returns
    ``(y, strategy)`` with ``y`` a new C-contiguous (N, K, P, Q) array of ``x``'s dtype."""
    ct = compute_dtype(x.dtype)
    w = w.astype(ct, copy=False)
    if g.flip:
        w = w[:, :, ::-1, ::-1]
    strategy = choose_strategy(g)
    y = np.empty((g.N, g.K, g.P, g.Q), dtype=ct)
    per_sample, run = {
        "numpy_matmul_1x1": (0, _conv_1x1),
        "numpy_shift_accumulate": (0, _conv_shift_accumulate),  # works in small blocks
        "numpy_im2col": (_padded_bytes(g, ct) + (g.C * g.R * g.S + 2 * g.K) * g.P * g.Q * ct.itemsize,
                         _conv_im2col),
    }[strategy]
    if x.dtype != ct:  # float16 input: the float32 copy is part of each chunk's workspace
        per_sample += g.C * g.H * g.W * ct.itemsize
    chunk = max(1, workspace_limit() // max(per_sample, 1))
    for n0 in range(0, g.N, chunk):
        n1 = min(g.N, n0 + chunk)
        run(x[n0:n1].astype(ct, copy=False), w, g, y[n0:n1])
    _bias_and_activation(y, b, g, ct)
    return (y if y.dtype == x.dtype else y.astype(x.dtype)), strategy


def _padded_bytes(g: ConvGeometry, ct) -> int:
    return g.C * (g.H + g.pt + g.pb) * (g.W + g.pl + g.pr) * np.dtype(ct).itemsize


def _pad(x: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """Zero-padded copy of x (or x itself when there is no padding)."""
    if not (g.pt or g.pb or g.pl or g.pr):
        return x
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + g.pt + g.pb, w + g.pl + g.pr), dtype=x.dtype)
    xp[:, :, g.pt:g.pt + h, g.pl:g.pl + w] = x
    return xp


def _tap(xp: np.ndarray, g: ConvGeometry, r: int, s: int) -> np.ndarray:
    """View of the padded input seen by filter tap (r, s) at every output position: (n, C, P, Q)."""
    h0, w0 = r * g.dh, s * g.dw
    return xp[:, :, h0:h0 + (g.P - 1) * g.sh + 1:g.sh, w0:w0 + (g.Q - 1) * g.sw + 1:g.sw]


def _conv_1x1(x, w, g, y):
    n = x.shape[0]
    x = np.ascontiguousarray(x).reshape(n, g.groups, g.Cg, g.H * g.W)
    wg = w.reshape(g.groups, g.Kg, g.Cg)
    np.matmul(wg, x, out=y.reshape(n, g.groups, g.Kg, g.P * g.Q))


def _conv_im2col(x, w, g, y):
    # Columns laid out (groups, Cg*R*S, n*P*Q) so each group is ONE large GEMM (small images would
    # otherwise be n tiny GEMMs); the (K, n, P*Q) product is then transposed into y's (n, K, P*Q).
    n = x.shape[0]
    xp = _pad(x, g)
    cols = np.empty((g.C, g.R, g.S, n, g.P, g.Q), dtype=x.dtype)

    for r in range(g.R):
        for s in range(g.S):
            cols[:, r, s] = _tap(xp, g, r, s).transpose(1, 0, 2, 3)
    cols = cols.reshape(g.groups, g.Cg * g.R * g.S, n * g.P * g.Q)
    out = np.matmul(w.reshape(g.groups, g.Kg, g.Cg * g.R * g.S), cols)
    y[...] = out.reshape(g.K, n, g.P, g.Q).transpose(1, 0, 2, 3)


def _conv_shift_accumulate(x, w, g, y):
    """Depthwise-like convolution (one input channel per group, at most two filters per group): every
    (r, s) tap adds ``w * shifted input`` into the output. Work is split into blocks of
    (sample, channel range), each padded into a small flat buffer, processed on a thread pool.

    With stride 1 the padded image is flattened and the output computed on "wide" rows of the padded
    width, so a tap is a plain 1-D shift by ``r*dh*Wp + s*dw`` (long contiguous loops); the extra
    ``Wp - Q`` columns of each row are dropped at the end. With a larger stride the taps are 2-D strided
    views instead.
    """
    n = x.shape[0]
    Hp, Wp = g.H + g.pt + g.pb, g.W + g.pl + g.pr
    wide = g.sh == 1 and g.sw == 1
    row = Wp if wide else g.Q
    slack = (g.S - 1) * g.dw  # the last tap's wide row runs this far past the padded image
    wg = w.reshape(g.groups, g.Kg, g.R, g.S)  # Cg == 1
    per_group = (Hp * Wp + slack) + 2 * g.Kg * g.P * row
    block = max(1, min(g.groups, (1 << 19) // max(per_group, 1)))

    def run(task):
        i, g0 = task
        g1 = min(g.groups, g0 + block)
        buf = np.zeros((g1 - g0, Hp * Wp + slack), dtype=x.dtype)
        buf[:, :Hp * Wp].reshape(g1 - g0, Hp, Wp)[:, g.pt:g.pt + g.H, g.pl:g.pl + g.W] = x[i, g0:g1]
        acc = np.empty((g1 - g0, g.Kg, g.P * row), dtype=x.dtype)
        tmp = np.empty_like(acc)
        first = True
        for r in range(g.R):
            for s in range(g.S):
                off = r * g.dh * Wp + s * g.dw
                if wide:
                    src = buf[:, None, off:off + g.P * Wp]
                else:
                    img = buf[:, :Hp * Wp].reshape(g1 - g0, Hp, Wp)
                    src = img[:, None, r * g.dh:r * g.dh + (g.P - 1) * g.sh + 1:g.sh,
                              s * g.dw:s * g.dw + (g.Q - 1) * g.sw + 1:g.sw].reshape(g1 - g0, 1, -1)
                wv = wg[g0:g1, :, r, s, None]
                if first:
                    np.multiply(src, wv, out=acc)
                    first = False
                else:
                    np.multiply(src, wv, out=tmp)
                    acc += tmp
        y[i, g0 * g.Kg:g1 * g.Kg] = acc.reshape((g1 - g0) * g.Kg, g.P, row)[:, :, :g.Q]

    parallel_map(run, [(i, g0) for i in range(n) for g0 in range(0, g.groups, block)])


def _bias_and_activation(y: np.ndarray, b, g: ConvGeometry, ct) -> None:
    """In place: add the bias, then apply the fused activation (NaN propagates through each)."""
    if b is not None:
        y += b.astype(ct, copy=False)[None, :, None, None]
    act = g.activation
    if act == "relu":
        np.maximum(y, 0, out=y)  # np.maximum propagates NaN
    elif act == "leaky_relu":
        np.multiply(y, LEAKY_RELU_SLOPE, out=y, where=y < 0)
    elif act == "sigmoid":
        # 1 / (1 + exp(-y)); exp overflow to inf gives the correct limit 0, so silence the warning.
        with np.errstate(over="ignore"):
            np.negative(y, out=y)
            np.exp(y, out=y)
        y += 1
        np.reciprocal(y, out=y)
    elif act == "tanh":
        np.tanh(y, out=y)
