"""The NumPy conv2d when one sample's temporaries do not fit the workspace limit: outputs whose window lies
wholly in the padding (written as the bias, no padded copy), and tiles of samples, output rows, columns,
groups, filters and finally the sum split over channels and filter taps (``conv_tiled``), each a
convolution of its own run by a strategy of ``_conv_strategies``."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .._geometry import ConvGeometry, ConvOptions
from ._conv_strategies import RUN, _accepts, _activation, _strategy_bytes, _weight_bytes
from ._workspace import trim_workspace

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
        pt=0, pb=0, pl=0, pr=0, options=ConvOptions(has_bias=g.has_bias))


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


def conv_tiled(x, w, b, g, y, strategy, ct, rows, cols, limit) -> None:
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
        gs = dataclasses.replace(g, options=ConvOptions(has_bias=b is not None), **sizes)
    run = strategy if _accepts(strategy, gs) else "numpy_im2col"
    wc = np.ascontiguousarray(ws, dtype=ct)  # at most one copy (the strategies' reshapes are views)
    RUN[run](x[n[0]:n[1], ch0:ch1, h0:h1, v0:v1], wc, b, gs, dst,
              max(0, budget - _weight_bytes(run, gs, ws.shape, ct, True)))

