"""Textbook references, written straight from the definitions in docs/semantics.md: the one place every
backend's tests (the shared matrices on NumPy / emulator / GPU, the per-kernel suites tests/test_cuda_*.py,
the oracles) take their expected values from.

Holds: conv2d (``conv2d_ref``; ``reference_conv2d`` with gpuconv's argument forms, returning the magnitude
that scales the error bound as well; ``reference_conv2d_tf32`` for the tensor-core kernels), the padding
forms (``explicit_padding``, ``same_padding_ref``), the output sizes (``conv_out``, ``pool_out``), the
activations, and every pooling (``max_pool2d_ref``, ``avg_pool2d_ref``, ``adaptive_pool2d_ref``; over any
number of spatial axes with per-side padding ``max_pool_nd_ref``, ``avg_pool_nd_ref`` and their gradients,
the pooling padding forms ``pool_pads_ref``).
For conv1d / conv3d: ``conv_nd_ref`` (any number of spatial dimensions), ``reference_conv_nd`` (gpuconv's N-D
argument forms, with the magnitude), ``explicit_padding_nd`` and ``conv_nd_grads_ref`` (the input and filter
gradients from the definition).

Deliberately independent of gpuconv's code (nothing here imports gpuconv): float64 arithmetic, output sizes
computed here from the formulas; convolution as one explicit einsum per filter tap over the window it reads,
pooling as loops over output positions and window cells. Slow but obviously correct; tests/test_conv.py and
tests/test_pool.py check them against PyTorch when it is installed.

Test files import helpers only from the support modules (this one, tests/tolerance.py, tests/support.py,
tests/cases.py, tests/runners.py), never from another test_*.py file.
"""

from __future__ import annotations

import itertools
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


def pair(v):
    """``(v, v)`` for an int, else ``tuple(v)``: the (height, width) form of a size argument."""
    return (v, v) if isinstance(v, int) else tuple(v)


def explicit_padding(padding, k, s, d, hw, flip=False):
    """(top, bottom, left, right) for every accepted padding form, from docs/semantics.md ("padding"): an
    int, an (h, w) pair, ((top, bottom), (left, right)), 'valid', 'same' (``k``, ``s``, ``d``, ``hw``: the
    filter's, stride's, dilation's and input's (height, width)); ``flip`` decides where an odd 'same'
    total puts its extra pixel."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        pads = []
        for size, kk, ss, dd in zip(hw, k, s, d):
            pads += same_padding_ref(size, kk, ss, dd, flip)
        return tuple(pads)
    if isinstance(padding, tuple) and isinstance(padding[0], tuple):
        return padding[0] + padding[1]
    ph, pw = pair(padding)
    return (ph, ph, pw, pw)


def conv2d_ref(x, w, b=None, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), groups=1, flip=False,
               activation=None):
    """x (N, C, H, W), w (K, C/groups, R, S), pad = (top, bottom, left, right). Returns float64::

        out[n, k, p, q] = b[k] + sum over c < Cg, r < R, s < S of
                          xpad[n, g*Cg + c, p*sh + r*dh, q*sw + s*dw] * w[k, c, r', s']

    then the activation, where Cg = C/groups, g = k // (K/groups) is filter k's group, ``xpad`` is ``x``
    with ``pad`` zeros around it (zeros that are multiplied like any input, as in docs/semantics.md: an
    infinite weight over padding gives NaN), and (r', s') = (R-1-r, S-1-s) for true convolution
    (``flip``), (r, s) for cross-correlation. Written as one explicit einsum over the channels per group
    and filter tap, on the window of ``xpad`` that tap reads; the output size comes from ``conv_out``."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    sh, sw = stride
    dh, dw = dilation
    pt, pb, pl, pr = pad
    P, Q = max(conv_out(H, R, sh, pt, pb, dh), 0), max(conv_out(W, S, sw, pl, pr, dw), 0)
    xpad = np.zeros((N, C, H + pt + pb, W + pl + pr))
    xpad[:, :, pt:pt + H, pl:pl + W] = x
    rows, cols = sh * np.arange(P), sw * np.arange(Q)  # the top-left tap of each output's window
    Kg = K // groups
    y = np.zeros((N, K, P, Q))
    for g in range(groups):
        xg = xpad[:, g * Cg:(g + 1) * Cg]
        ks = slice(g * Kg, (g + 1) * Kg)
        for r in range(R):
            for s in range(S):
                window = xg[:, :, r * dh + rows[:, None], s * dw + cols[None, :]]  # (N, Cg, P, Q)
                tap = w[ks, :, R - 1 - r, S - 1 - s] if flip else w[ks, :, r, s]  # (Kg, Cg)
                y[:, ks] += np.einsum("ncpq,kc->nkpq", window, tap)
    if b is not None:
        y += np.asarray(b, dtype=np.float64)[None, :, None, None]
    return apply_activation(y, activation)


def reference_conv2d(x, w, b, stride=1, padding=0, dilation=1, groups=1, flip=False, activation=None):
    """``conv2d_ref`` with gpuconv's argument forms (``stride`` / ``dilation`` an int or a pair, ``padding``
    any form ``explicit_padding`` reads). Returns float64 ``(out, magnitude)``: ``magnitude`` is the same
    convolution of ``|x|``, ``|w|`` and ``|b|`` without the activation, the sum of the absolute values of
    the terms each output adds up, which scales the error bound (tests/tolerance.py)."""
    stride, dilation = pair(stride), pair(dilation)
    pad = explicit_padding(padding, np.shape(w)[2:], stride, dilation, np.shape(x)[2:], flip)
    kw = dict(stride=stride, pad=pad, dilation=dilation, groups=groups, flip=flip)
    with np.errstate(invalid="ignore", over="ignore"):
        out = conv2d_ref(x, w, b, activation=activation, **kw)
        magnitude = conv2d_ref(np.abs(x), np.abs(w), None if b is None else np.abs(b), **kw)
    return out, magnitude


def tf32_round(a):
    """``a`` as float32 rounded to TF32 as cvt.rna.tf32.f32 does: 10 mantissa bits, to nearest, ties away
    from zero (add half of the dropped part's range to the magnitude bits, then truncate); inf / NaN kept."""
    out = np.array(a, dtype=np.float32, copy=True)
    bits = out.view(np.uint32)
    finite = np.isfinite(out)
    bits[finite] = (bits[finite] + np.uint32(0x1000)) & np.uint32(0xFFFFE000)
    return out


def reference_conv2d_tf32(x, w, b, stride=1, padding=0, dilation=1, groups=1, flip=False, activation=None):
    """``reference_conv2d`` as a TF32 tensor-core kernel computes it: float32 input and weights rounded to
    TF32 first (``tf32_round``; the bias is added after the products, unrounded); float16 as is."""
    if np.dtype(x.dtype) == np.float32:
        x, w = tf32_round(x), tf32_round(w)
    return reference_conv2d(x, w, b, stride, padding, dilation, groups, flip, activation)


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


# --------------------------------------------------------------------------------------------
# N-D convolution (conv1d, conv3d): the same definition for any number of spatial dimensions
# --------------------------------------------------------------------------------------------

def explicit_padding_nd(padding, k, s, d, size, flip=False):
    """``((low, high), ...)`` per spatial dimension for gpuconv's N-D padding forms: an int, a tuple of ints,
    a tuple of ``(low, high)`` pairs, 'valid', 'same' (``same_padding_ref`` per dimension)."""
    n = len(k)
    if padding == "valid":
        return ((0, 0),) * n
    if padding == "same":
        return tuple(same_padding_ref(size[i], k[i], s[i], d[i], flip) for i in range(n))
    if isinstance(padding, int):
        return ((padding, padding),) * n
    if isinstance(padding[0], (tuple, list)):
        return tuple(tuple(p) for p in padding)
    return tuple((p, p) for p in padding)


def conv_nd_ref(x, w, b=None, stride=None, pad=None, dilation=None, groups=1, flip=False, activation=None):
    """x (N, C, *size), w (K, C/groups, *k), pad ``((low, high), ...)``. Returns float64::

        out[n, k, o...] = b[k] + sum over c < Cg and taps t... of
                          xpad[n, g*Cg + c, o_i*s_i + t_i*d_i ...] * w[k, c, t'...]

    then the activation; ``t' = k - 1 - t`` per dimension for true convolution (``flip``). One explicit
    einsum per group and filter tap (``itertools.product`` over the taps) on the window of ``xpad`` the tap
    reads; output sizes from ``conv_out``. Independent of gpuconv, as ``conv2d_ref``."""
    import itertools
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n = x.ndim - 2
    stride = stride or (1,) * n
    dilation = dilation or (1,) * n
    pad = pad or ((0, 0),) * n
    N, size = x.shape[0], x.shape[2:]
    K, Cg, ks = w.shape[0], w.shape[1], w.shape[2:]
    out = tuple(max(conv_out(size[i], ks[i], stride[i], pad[i][0], pad[i][1], dilation[i]), 0) for i in range(n))
    xpad = np.pad(x, ((0, 0), (0, 0)) + tuple(pad))
    Kg = K // groups
    y = np.zeros((N, K) + out)
    for g in range(groups):
        xg = xpad[:, g * Cg:(g + 1) * Cg]
        kg = slice(g * Kg, (g + 1) * Kg)
        for taps in itertools.product(*(range(k) for k in ks)):
            window = xg[(slice(None), slice(None)) + tuple(
                slice(t * d, t * d + (o - 1) * s + 1, s) for t, d, o, s in zip(taps, dilation, out, stride))]
            wt = tuple(k - 1 - t for k, t in zip(ks, taps)) if flip else taps
            y[:, kg] += np.einsum("nc...,kc->nk...", window, w[(kg, slice(None)) + wt])
    if b is not None:
        y += np.asarray(b, dtype=np.float64).reshape((1, -1) + (1,) * n)
    return apply_activation(y, activation)


def reference_conv_nd(x, w, b, stride=1, padding=0, dilation=1, groups=1, flip=False, activation=None):
    """``conv_nd_ref`` with gpuconv's argument forms; returns float64 ``(out, magnitude)`` as
    ``reference_conv2d``."""
    n = np.ndim(x) - 2
    stride = (stride,) * n if isinstance(stride, int) else tuple(stride)
    dilation = (dilation,) * n if isinstance(dilation, int) else tuple(dilation)
    pad = explicit_padding_nd(padding, np.shape(w)[2:], stride, dilation, np.shape(x)[2:], flip)
    kw = dict(stride=stride, pad=pad, dilation=dilation, groups=groups, flip=flip)
    with np.errstate(invalid="ignore", over="ignore"):
        out = conv_nd_ref(x, w, b, activation=activation, **kw)
        magnitude = conv_nd_ref(np.abs(x), np.abs(w), None if b is None else np.abs(b), **kw)
    return out, magnitude


def conv_nd_grads_ref(x, w, gy, stride, pad, dilation, groups, flip):
    """``(gx, gw)`` in float64 from the definition (the adjoint of ``conv_nd_ref``): each output adds
    ``xpad[window] * w[tap]``, so ``gy`` flows back to the partner of each factor, tap by tap."""
    import itertools
    x, w, gy = (np.asarray(a, dtype=np.float64) for a in (x, w, gy))
    Cg, ks, out = w.shape[1], w.shape[2:], gy.shape[2:]
    K = w.shape[0]
    Kg = K // groups
    xpad = np.pad(x, ((0, 0), (0, 0)) + tuple(pad))
    gxpad = np.zeros_like(xpad)
    gw = np.zeros_like(w)
    for g in range(groups):
        cs, kg = slice(g * Cg, (g + 1) * Cg), slice(g * Kg, (g + 1) * Kg)
        for taps in itertools.product(*(range(k) for k in ks)):
            sl = (slice(None), cs) + tuple(slice(t * d, t * d + (o - 1) * s + 1, s)
                                           for t, d, o, s in zip(taps, dilation, out, stride))
            wt = (kg, slice(None)) + (tuple(k - 1 - t for k, t in zip(ks, taps)) if flip else taps)
            xs, gs = xpad[sl], gy[:, kg]
            gw[wt] += np.einsum("ncp,nkp->kc", xs.reshape(xs.shape[:2] + (-1,)), gs.reshape(gs.shape[:2] + (-1,)))
            gxpad[sl] += np.einsum("nk...,kc->nc...", gy[:, kg], w[wt])
    inner = (slice(None), slice(None)) + tuple(slice(lo, lo + s) for (lo, _), s in zip(pad, x.shape[2:]))
    return gxpad[inner], gw


# --------------------------------------------------------------------------------------------
# pooling over any number of spatial axes, with per-side padding (1-D, 2-D, 3-D; padding forms)
# --------------------------------------------------------------------------------------------

def pool_pads_ref(padding, kernel, stride, dilation, spatial):
    """((low, high), ...) per axis for a pooling ``padding``: an int or one int per axis (symmetric), one
    (low, high) pair per axis, 'valid', or 'same' (TensorFlow SAME = ONNX SAME_UPPER: output ceil(size/s),
    total max((ceil(size/s)-1)*s + d*(k-1) + 1 - size, 0), the odd cell at the high end)."""
    n = len(kernel)
    if padding == "valid":
        return ((0, 0),) * n
    if padding == "same":
        pads = []
        for size, k, s, d in zip(spatial, kernel, stride, dilation):
            total = max((math.ceil(size / s) - 1) * s + d * (k - 1) + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    if isinstance(padding, int):
        return ((padding, padding),) * n
    if all(isinstance(p, int) for p in padding):
        return tuple((p, p) for p in padding)
    return tuple(tuple(p) for p in padding)


def pool_out_nd(size, k, s, lo, hi, d, ceil_mode):
    out = (size + lo + hi - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + lo:
        out -= 1
    return out


def _windows_nd(spatial, kernel, stride, pads, dilation, ceil_mode):
    """Yield (output position, window start, taps) for every output: taps are the in-bounds cells
    (coordinate tuples) of the dilated window in row-major order."""
    outs = [pool_out_nd(n, k, s, lo, hi, d, ceil_mode)
            for n, k, s, (lo, hi), d in zip(spatial, kernel, stride, pads, dilation)]
    for o in itertools.product(*(range(n) for n in outs)):
        start = tuple(oi * s - lo for oi, s, (lo, _) in zip(o, stride, pads))
        taps = [tuple(st + t * d for st, t, d in zip(start, tap, dilation))
                for tap in itertools.product(*(range(k) for k in kernel))]
        taps = [c for c in taps if all(0 <= ci < n for ci, n in zip(c, spatial))]
        yield o, start, taps
    return


def _flat(c, spatial):
    f = 0
    for ci, n in zip(c, spatial):
        f = f * n + ci
    return f


def max_pool_nd_ref(x, kernel, stride, pads, dilation, ceil_mode):
    """(values, indices) of max pooling over x's trailing len(kernel) axes (x: (N, C, *spatial)); pads:
    ((low, high), ...). Rules as max_pool2d_ref: -inf padding, NaN wins (last NaN), first maximum, a
    window without an input cell -inf with its start stepped by the dilation until not negative."""
    N, C, *spatial = x.shape
    outs = [pool_out_nd(n, k, s, lo, hi, d, ceil_mode)
            for n, k, s, (lo, hi), d in zip(spatial, kernel, stride, pads, dilation)]
    vals, idx = np.zeros((N, C, *outs)), np.zeros((N, C, *outs), dtype=np.int64)
    for o, start, taps in _windows_nd(spatial, kernel, stride, pads, dilation, ceil_mode):
        for n in range(N):
            for c in range(C):
                if not taps:
                    first = tuple(st if st >= 0 else st + (-st + d - 1) // d * d for st, d in zip(start, dilation))
                    vals[(n, c, *o)], idx[(n, c, *o)] = -math.inf, _flat(first, spatial)
                    continue
                best, arg = -math.inf, taps[0]
                for t in taps:
                    v = float(x[(n, c, *t)])
                    if v > best or math.isnan(v):
                        best, arg = v, t
                vals[(n, c, *o)], idx[(n, c, *o)] = best, _flat(arg, spatial)
    return vals, idx


def _avg_divisor(start, kernel, pads, spatial, taps, count_include_pad, divisor_override):
    if divisor_override:
        return divisor_override
    if not count_include_pad:
        return len(taps)
    div = 1
    for st, k, (_, hi), n in zip(start, kernel, pads, spatial):
        div *= min(st + k, n + hi) - st  # the window clipped to the padded input (ceil overhang excluded)
    return div


def avg_pool_nd_ref(x, kernel, stride, pads, ceil_mode, count_include_pad, divisor_override=None):
    N, C, *spatial = x.shape
    x = np.asarray(x, dtype=np.float64)
    outs = [pool_out_nd(n, k, s, lo, hi, 1, ceil_mode) for n, k, s, (lo, hi) in zip(spatial, kernel, stride, pads)]
    y = np.zeros((N, C, *outs))
    ones = (1,) * len(kernel)
    for o, start, taps in _windows_nd(spatial, kernel, stride, pads, ones, ceil_mode):
        div = _avg_divisor(start, kernel, pads, spatial, taps, count_include_pad, divisor_override)
        y[(slice(None), slice(None), *o)] = sum((x[(slice(None), slice(None), *t)] for t in taps), 0.0) / div
    return y


def max_pool_nd_grad_ref(input_size, go, idx, kernel, stride, pads, dilation, ceil_mode):
    """Each output's gradient added at its recorded index when it is an in-bounds tap of its window."""
    N, C, *spatial = input_size
    gi = np.zeros(input_size)
    go = np.asarray(go, dtype=np.float64)
    for o, start, taps in _windows_nd(spatial, kernel, stride, pads, dilation, ceil_mode):
        cells = {_flat(t, spatial): t for t in taps}
        for n in range(N):
            for c in range(C):
                t = cells.get(int(idx[(n, c, *o)]))
                if t is not None:
                    gi[(n, c, *t)] += go[(n, c, *o)]
    return gi


def avg_pool_nd_grad_ref(input_size, go, kernel, stride, pads, ceil_mode, count_include_pad, divisor_override=None):
    N, C, *spatial = input_size
    gi = np.zeros(input_size)
    go = np.asarray(go, dtype=np.float64)
    ones = (1,) * len(kernel)
    for o, start, taps in _windows_nd(spatial, kernel, stride, pads, ones, ceil_mode):
        div = _avg_divisor(start, kernel, pads, spatial, taps, count_include_pad, divisor_override)
        for t in taps:
            gi[(slice(None), slice(None), *t)] += go[(slice(None), slice(None), *o)] / div
    return gi
