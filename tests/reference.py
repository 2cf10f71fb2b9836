"""Textbook references, written straight from the definitions in docs/semantics.md.

Deliberately independent of gpuconv's code: loops over output positions and window cells, float64
accumulation, output sizes computed here from the formulas. Slow but obviously correct.
"""

from __future__ import annotations

import math

import numpy as np


def conv_out(size, k, s, p_lo, p_hi, d):
    return (size + p_lo + p_hi - d * (k - 1) - 1) // s + 1


def same_padding_ref(size, k, s, d, flip=False):
    """(low, high) padding of ``padding='same'`` (docs/semantics.md, "padding='same'"): total ``d*(k-1)``
    at stride 1, TensorFlow/JAX SAME's ``max((ceil(size/s)-1)*s + d*(k-1) + 1 - size, 0)`` at stride > 1;
    an odd total puts its extra pixel at the high end (bottom / right) for cross-correlation and at the
    low end (top / left) for true convolution (``flip=True``), as SciPy's correlate2d / convolve2d."""
    total = d * (k - 1) if s == 1 else max((math.ceil(size / s) - 1) * s + d * (k - 1) + 1 - size, 0)
    extra = total - total // 2
    return (extra, total // 2) if flip else (total // 2, extra)


def conv2d_ref(x, w, b=None, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), groups=1, flip=False,
               activation=None):
    """x (N, C, H, W), w (K, C/groups, R, S), pad = (top, bottom, left, right). Returns float64."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    sh, sw = stride
    dh, dw = dilation
    pt, pb, pl, pr = pad
    P, Q = conv_out(H, R, sh, pt, pb, dh), conv_out(W, S, sw, pl, pr, dw)
    Kg = K // groups
    y = np.zeros((N, K, P, Q))
    for k in range(K):
        c0 = (k // Kg) * Cg  # first input channel of filter k's group
        for p in range(P):
            for q in range(Q):
                acc = np.zeros(N)
                for r in range(R):
                    ih = p * sh - pt + r * dh
                    if not 0 <= ih < H:
                        continue
                    for s in range(S):
                        iw = q * sw - pl + s * dw
                        if not 0 <= iw < W:
                            continue
                        wr, ws = (R - 1 - r, S - 1 - s) if flip else (r, s)
                        acc += x[:, c0:c0 + Cg, ih, iw] @ w[k, :, wr, ws]
                y[:, k, p, q] = acc
    if b is not None:
        y += np.asarray(b, dtype=np.float64)[None, :, None, None]
    return apply_activation(y, activation)


def apply_activation(y, activation):
    if activation is None:
        return y
    if activation == "relu":
        return np.where(y < 0, 0.0, y)
    if activation == "leaky_relu":
        return np.where(y < 0, 0.01 * y, y)
    if activation == "sigmoid":
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-y))
    if activation == "tanh":
        return np.tanh(y)
    raise ValueError(activation)


def pool_out(size, k, s, p, d, ceil_mode):
    out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _pool_loop(x, kernel, stride, pad, dilation, ceil_mode, visit):
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, pad, dilation
    OH, OW = pool_out(H, kh, sh, ph, dh, ceil_mode), pool_out(W, kw, sw, pw, dw, ceil_mode)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    visit(n, c, oh, ow, oh * sh - ph, ow * sw - pw)
    return OH, OW


def max_pool2d_ref(x, kernel, stride, pad, dilation, ceil_mode):
    """Returns (values, indices). -inf padding, NaN wins (last NaN), first maximum otherwise; a window
    without a larger value keeps its first in-bounds cell as index. A window with no in-bounds cell at
    all (dilation can step over the whole input) is -inf with PyTorch's initial index: its start row and
    column each stepped by the dilation until not negative (``while (hstart < 0) hstart += dilation_h``
    in PyTorch's kernels), a position outside the window."""
    N, C, H, W = x.shape
    (kh, kw), (dh, dw) = kernel, dilation
    res = {}

    def visit(n, c, oh, ow, h0, w0):
        taps = [(h0 + i * dh, w0 + j * dw) for i in range(kh) for j in range(kw)]
        taps = [(h, w) for h, w in taps if 0 <= h < H and 0 <= w < W]
        if not taps:
            hs, ws = h0, w0
            while hs < 0:
                hs += dh
            while ws < 0:
                ws += dw
            res[n, c, oh, ow] = (-math.inf, hs * W + ws)
            return
        best, arg = -math.inf, taps[0][0] * W + taps[0][1]
        for h, w in taps:
            v = float(x[n, c, h, w])
            if v > best or math.isnan(v):
                best, arg = v, h * W + w
        res[n, c, oh, ow] = (best, arg)

    OH, OW = _pool_loop(x, kernel, stride, pad, dilation, ceil_mode, visit)
    vals = np.zeros((N, C, OH, OW))
    idx = np.zeros((N, C, OH, OW), dtype=np.int64)
    for key, (v, i) in res.items():
        vals[key], idx[key] = v, i
    return vals, idx


def avg_pool2d_ref(x, kernel, stride, pad, ceil_mode, count_include_pad, divisor_override):
    N, C, H, W = x.shape
    (kh, kw), (ph, pw) = kernel, pad
    x = np.asarray(x, dtype=np.float64)
    res = {}

    def visit(n, c, oh, ow, h0, w0):
        h1, w1 = min(h0 + kh, H + ph), min(w0 + kw, W + pw)
        pool_size = (h1 - h0) * (w1 - w0)
        hs, he, ws, we = max(h0, 0), min(h1, H), max(w0, 0), min(w1, W)
        total = sum(x[n, c, h, w] for h in range(hs, he) for w in range(ws, we))
        if divisor_override:
            div = divisor_override
        elif count_include_pad:
            div = pool_size
        else:
            div = (he - hs) * (we - ws)
        res[n, c, oh, ow] = total / div

    OH, OW = _pool_loop(x, kernel, stride, pad, (1, 1), ceil_mode, visit)
    out = np.zeros((N, C, OH, OW))
    for key, v in res.items():
        out[key] = v
    return out


def adaptive_windows(in_size, out_size):
    return [((i * in_size) // out_size, math.ceil((i + 1) * in_size / out_size)) for i in range(out_size)]


def adaptive_pool2d_ref(x, out_hw, op):
    """op 'avg' -> values; op 'max' -> (values, indices) with max_pool2d_ref's rules."""
    N, C, H, W = x.shape
    OH, OW = out_hw
    vals = np.zeros((N, C, OH, OW))
    idx = np.zeros((N, C, OH, OW), dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for oh, (hs, he) in enumerate(adaptive_windows(H, OH)):
                for ow, (ws, we) in enumerate(adaptive_windows(W, OW)):
                    cells = [(h, w) for h in range(hs, he) for w in range(ws, we)]
                    if op == "avg":
                        vals[n, c, oh, ow] = sum(float(x[n, c, h, w]) for h, w in cells) / len(cells)
                        continue
                    best, arg = -math.inf, hs * W + ws
                    for h, w in cells:
                        v = float(x[n, c, h, w])
                        if v > best or math.isnan(v):
                            best, arg = v, h * W + w
                    vals[n, c, oh, ow], idx[n, c, oh, ow] = best, arg
    return vals if op == "avg" else (vals, idx)
