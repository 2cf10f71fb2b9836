"""Pooling gradients (gpuconv.grad.max_pool2d_input, avg_pool2d_input, adaptive_avg_pool2d_input,
adaptive_max_pool2d_input; gpuconv/_grad_pool.py, gpuconv/_numpy/pool_grad.py, gpuconv/_cuda/pool_grad.py,
kernels/pool2d_backward.cu) against two oracles:

* a textbook reference written here from the definition (loops over the outputs, scatter-add into a float64
  gradient: an output's gradient goes to its recorded index when that index is a cell of its window; an
  average's gradient divided by the forward's divisor goes to every in-bounds cell of its window), under
  the shared tolerance model (tests/tolerance.py; magnitude: the same reference on |grad_output|);
* torch.autograd through torch.nn.functional's pooling, where PyTorch is installed.

The public-API matrices run on every backend (tests/runners.py POOL_RUNNERS: NumPy, the CUDA kernels on the
CPU emulator, a GPU) over covering arrays (tests/cases.pairwise) of geometry, ceil_mode, padding,
count_include_pad, divisor_override, dtype, batch size (0, 1, 3), odd sizes, layout (non-contiguous
grad_output and indices) and the source of the indices (gpuconv's forward or PyTorch's). The kernel tests
(launch code on ``rt``: the emulator and a GPU) check bitwise determinism across thread orders and grid caps,
and that the NumPy path gives the kernels' bits for max and average pooling.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import gpuconv
from gpuconv import _grad_pool as gp
from gpuconv._cuda import limits, ops, pool_grad
from gpuconv._pool_geometry import adaptive_geometry, pool_geometry
from tests.cases import pairwise
from tests.reference import adaptive_windows, pool_out
from tests.runners import POOL_RUNNERS, SpyRuntime, numpy_io, on_gpu, runtime_fixture, torch, with_thread_order
from tests.tolerance import assert_close

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

DTYPES = (np.float16, np.float32, np.float64)
C = 2

rt = runtime_fixture()


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


# --------------------------------------------------------------------------------------------
# the textbook references: loops over outputs, scatter-add in float64
# --------------------------------------------------------------------------------------------

def ref_max_grad(input_size, go, idx, kernel, stride, pad, dilation, ceil_mode):
    """Each output's gradient added at its recorded index when that index is one of its window's in-bounds
    cells (docs/pooling-gradients.md: otherwise dropped)."""
    N, Cc, H, W = input_size
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, pad, dilation
    OH, OW = pool_out(H, kh, sh, ph, dh, ceil_mode), pool_out(W, kw, sw, pw, dw, ceil_mode)
    gi = np.zeros(input_size)
    go = np.asarray(go, dtype=np.float64)
    for n in range(N):
        for c in range(Cc):
            for oh in range(OH):
                for ow in range(OW):
                    cells = {(oh * sh - ph + i * dh) * W + (ow * sw - pw + j * dw)
                             for i in range(kh) for j in range(kw)
                             if 0 <= oh * sh - ph + i * dh < H and 0 <= ow * sw - pw + j * dw < W}
                    k = int(idx[n, c, oh, ow])
                    if k in cells:
                        gi[n, c, k // W, k % W] += go[n, c, oh, ow]
    return gi


def ref_avg_grad(input_size, go, kernel, stride, pad, ceil_mode, count_include_pad, divisor_override):
    N, Cc, H, W = input_size
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    OH, OW = pool_out(H, kh, sh, ph, 1, ceil_mode), pool_out(W, kw, sw, pw, 1, ceil_mode)
    gi = np.zeros(input_size)
    go = np.asarray(go, dtype=np.float64)
    for oh in range(OH):
        for ow in range(OW):
            h0, w0 = oh * sh - ph, ow * sw - pw
            h1, w1 = min(h0 + kh, H + ph), min(w0 + kw, W + pw)
            hs, he, ws, we = max(h0, 0), min(h1, H), max(w0, 0), min(w1, W)
            if divisor_override:
                div = divisor_override
            elif count_include_pad:
                div = (h1 - h0) * (w1 - w0)
            else:
                div = (he - hs) * (we - ws)
            gi[:, :, hs:he, ws:we] += go[:, :, oh, ow][:, :, None, None] / div
    return gi


def ref_adaptive_grad(input_size, go, idx=None):
    """Adaptive average (idx None) or max (idx given) gradient."""
    N, Cc, H, W = input_size
    OH, OW = go.shape[2:]
    gi = np.zeros(input_size)
    go = np.asarray(go, dtype=np.float64)
    for oh, (hs, he) in enumerate(adaptive_windows(H, OH)):
        for ow, (ws, we) in enumerate(adaptive_windows(W, OW)):
            if idx is None:
                gi[:, :, hs:he, ws:we] += go[:, :, oh, ow][:, :, None, None] / ((he - hs) * (we - ws))
                continue
            for n in range(N):
                for c in range(Cc):
                    k = int(idx[n, c, oh, ow])
                    if 0 <= k < H * W and hs <= k // W < he and ws <= k % W < we:
                        gi[n, c, k // W, k % W] += go[n, c, oh, ow]
    return gi


def _torch_grad(forward, x, go):
    """torch.autograd's gradient of ``forward`` at ``x`` (float64) for ``grad_output`` ``go``."""
    t = torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    forward(t).backward(torch.tensor(np.asarray(go, dtype=np.float64)))
    return t.grad.numpy()


# --------------------------------------------------------------------------------------------
# test data
# --------------------------------------------------------------------------------------------

def _data(shape, dtype, seed, kind="normal"):
    rng = np.random.default_rng(seed)
    if kind == "ties":  # small integers: many equal values, so the first-maximum rule decides
        return rng.integers(-2, 3, size=shape).astype(dtype)
    x = rng.standard_normal(shape).astype(dtype)
    if kind == "nan" and x.size:
        x.reshape(-1)[rng.choice(x.size, size=max(1, x.size // 6), replace=False)] = np.nan
    return x


def _layout(a, layout):
    """``a`` as a non-contiguous array with the same values when asked ('strided': every other column of a
    wider array; 'transposed': a transposed copy transposed back)."""
    if layout == "contiguous" or a.size == 0:
        return a
    if layout == "strided":
        wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
        wide[..., ::2] = a
        out = wide[..., ::2]
    else:
        out = np.ascontiguousarray(a.swapaxes(-1, -2)).swapaxes(-1, -2)
    np.testing.assert_array_equal(out, a)
    return out


def _check_result(gi, input_size, dtype):
    assert gi.shape == tuple(input_size) and gi.dtype == np.dtype(dtype) and gi.flags.c_contiguous


# --------------------------------------------------------------------------------------------
# max pooling
# --------------------------------------------------------------------------------------------

# (kernel, stride, padding, dilation): fixed 3x3 and 2x2 windows, overlapping (stride < kernel),
# rectangular, dilated, a generic size with the largest padding
MAX_GEOMS = (((3, 3), (2, 2), (1, 1), (1, 1)), ((2, 2), (2, 2), (0, 0), (1, 1)), ((3, 3), (1, 1), (1, 1), (1, 1)),
             ((3, 2), (1, 2), (1, 0), (2, 1)), ((2, 3), (2, 1), (1, 1), (2, 2)), ((4, 4), (3, 3), (2, 2), (1, 1)))
SIZES = ((7, 9), (6, 5), (3, 8))


def _pool_valid(case, dilation=True):
    k, s, p = case["geom"][:3]
    d = case["geom"][3] if dilation else (1, 1)
    H, W = case["size"]
    return all(pool_out(n, k[a], s[a], p[a], d[a], case["ceil_mode"]) >= 1 for a, n in enumerate((H, W)))


MAX_CASES = pairwise({"geom": MAX_GEOMS, "ceil_mode": (False, True), "dtype": DTYPES, "N": (1, 3, 0),
                      "size": SIZES, "layout": ("contiguous", "strided", "transposed"),
                      "indices": ("gpuconv", "torch"), "data": ("normal", "ties", "nan")},
                     valid=_pool_valid, seed=1)


def _case_id(case):
    def text(v):
        return v.__name__ if isinstance(v, type) else str(v).replace(" ", "")
    return "-".join(text(v) for v in case.values())


@pytest.mark.parametrize("runner", POOL_RUNNERS)
@pytest.mark.parametrize("case", MAX_CASES, ids=[_case_id(c) for c in MAX_CASES])
def test_max_pool2d_input_matrix(runner, case):
    k, s, p, d = case["geom"]
    dtype, cm = case["dtype"], case["ceil_mode"]
    size = (case["N"], C) + case["size"]
    x = _data(size, dtype, seed=3, kind=case["data"])
    y, idx = gpuconv.max_pool2d(x, k, s, p, d, cm, return_indices=True)
    if case["indices"] == "torch":
        if torch is None:
            pytest.skip("PyTorch is not installed (indices from its forward)")
        _, t_idx = torch.nn.functional.max_pool2d(torch.tensor(x.astype(np.float64)), k, s, p, d, cm,
                                                  return_indices=True)
        idx = t_idx.numpy()
    go = _data(y.shape, dtype, seed=4)
    gi = runner.call(lambda g, i: gp.max_pool2d_input(size, g, i, k, s, p, d, cm),
                     _layout(go, case["layout"]), _layout(idx, case["layout"]))
    _check_result(gi, size, dtype)
    assert gpuconv.last_kernel().direction == "backward" and gpuconv.last_kernel().op == "max_pool2d"
    expected = ref_max_grad(size, go, idx, k, s, p, d, cm)
    magnitude = ref_max_grad(size, np.abs(go.astype(np.float64)), idx, k, s, p, d, cm)
    assert_close(gi, expected, magnitude, dtype, "max_pool2d_input vs reference")
    if torch is not None and case["N"] > 0 and not np.isneginf(y).any():  # (empty dilated windows: see below)
        tg = _torch_grad(lambda t: torch.nn.functional.max_pool2d(t, k, s, p, d, cm), x, go)
        assert_close(gi, tg, magnitude, dtype, "max_pool2d_input vs torch.autograd")


def test_overlapping_windows_accumulate():
    # one maximum in the middle of 3x3: all four 2x2 windows of stride 1 pick it
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 5.0
    y, idx = gpuconv.max_pool2d(x, 2, 1, return_indices=True)
    go = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    gi = gp.max_pool2d_input(x.shape, go, idx, 2, 1)
    expected = np.zeros((1, 1, 3, 3))
    expected[0, 0, 1, 1] = 10.0
    np.testing.assert_array_equal(gi, expected)
    gi = gp.avg_pool2d_input(x.shape, go, 2, 1)  # the centre is in every window: (1+2+3+4)/4
    assert gi[0, 0, 1, 1] == 2.5 and gi[0, 0, 0, 0] == 0.25


@pytest.mark.parametrize("runner", POOL_RUNNERS)
def test_max_index_outside_its_window_contributes_nothing(runner):
    """Out of [0, H*W) (negative, H*W, huge) or another cell of the plane: dropped, no crash, no write
    outside the gradient (docs/pooling-gradients.md)."""
    x = _data((2, 3, 5, 7), np.float32, seed=5)
    y, idx = gpuconv.max_pool2d(x, 3, 2, 1, return_indices=True)
    go = _data(y.shape, np.float32, seed=6)
    bad = idx.copy()
    bad[0, 0, 0, 0] = -1
    bad[0, 1, 1, 1] = 35
    bad[1, 2, 2, 3] = 2**62
    bad[1, 0, 0, 0] = 34  # the plane's last cell, far from window (0, 0)
    bad[1, 1, 2, 3] = -(2**63)
    gi = runner.call(lambda g, i: gp.max_pool2d_input(x.shape, g, i, 3, 2, 1), go, bad)
    expected = ref_max_grad(x.shape, go, bad, (3, 3), (2, 2), (1, 1), (1, 1), False)
    magnitude = ref_max_grad(x.shape, np.abs(go), bad, (3, 3), (2, 2), (1, 1), (1, 1), False)
    assert_close(gi, expected, magnitude, np.float32, "out-of-window indices")
    # adaptive: the same rule over adaptive windows
    ya, ia = gpuconv.adaptive_max_pool2d(x, (3, 4), return_indices=True)
    ia = ia.copy()
    ia[0, 0, 0, 0], ia[1, 2, 2, 3], ia[0, 1, 0, 0] = -5, 35, 34
    goa = _data(ya.shape, np.float32, seed=7)
    gi = runner.call(lambda g, i: gp.adaptive_max_pool2d_input(x.shape, g, i), goa, ia)
    assert_close(gi, ref_adaptive_grad(x.shape, goa, ia), ref_adaptive_grad(x.shape, np.abs(goa), ia),
                 np.float32, "adaptive out-of-window indices")


def test_empty_dilated_window_differs_from_pytorch_as_documented():
    """W = 1, kw = 2, dw = 2, pw = 1: every window has taps -1 and 1 only, holds no input cell, and
    returns -inf with a placeholder index (``h*W + 1``: 1 and 3 here, rows 0 and 2 with stride 2). PyTorch
    adds the gradient at the placeholders; gpuconv drops it: the output does not depend on the input.
    (Placeholders inside the plane only: for the last row, ``H*W``, PyTorch's CPU kernel writes past the
    plane.)"""
    x = _data((1, 1, 4, 1), np.float64, seed=8)
    args = ((1, 2), (2, 1), (0, 1), (1, 2))
    y, idx = gpuconv.max_pool2d(x, *args, return_indices=True)
    assert np.isneginf(y).all() and idx.reshape(-1).tolist() == [1, 3]
    gi = gp.max_pool2d_input(x.shape, np.ones_like(y), idx, *args)
    np.testing.assert_array_equal(gi, 0.0)
    if torch is not None:
        tg = _torch_grad(lambda t: torch.nn.functional.max_pool2d(t, *args), x, np.ones_like(y))
        assert tg.reshape(-1).tolist() == [0.0, 1.0, 0.0, 1.0]


# --------------------------------------------------------------------------------------------
# average pooling
# --------------------------------------------------------------------------------------------

AVG_GEOMS = (((3, 3), (2, 2), (1, 1)), ((2, 2), (2, 2), (0, 0)), ((3, 3), (1, 1), (1, 1)),
             ((3, 2), (1, 2), (1, 0)), ((4, 4), (3, 3), (2, 2)), ((5, 3), (2, 2), (2, 1)))
AVG_CASES = pairwise({"geom": AVG_GEOMS, "ceil_mode": (False, True), "count_include_pad": (True, False),
                      "divisor_override": (None, 5), "dtype": DTYPES, "N": (1, 3, 0), "size": SIZES,
                      "layout": ("contiguous", "strided", "transposed")},
                     valid=lambda c: _pool_valid(c, dilation=False), seed=2)


@pytest.mark.parametrize("runner", POOL_RUNNERS)
@pytest.mark.parametrize("case", AVG_CASES, ids=[_case_id(c) for c in AVG_CASES])
def test_avg_pool2d_input_matrix(runner, case):
    k, s, p = case["geom"]
    dtype, cm, cip, dov = case["dtype"], case["ceil_mode"], case["count_include_pad"], case["divisor_override"]
    size = (case["N"], C) + case["size"]
    y = gpuconv.avg_pool2d(np.zeros(size, dtype), k, s, p, cm, cip, dov)
    go = _data(y.shape, dtype, seed=9)
    gi = runner.call(lambda g: gp.avg_pool2d_input(size, g, k, s, p, cm, cip, dov), _layout(go, case["layout"]))
    _check_result(gi, size, dtype)
    assert gpuconv.last_kernel().direction == "backward" and gpuconv.last_kernel().op == "avg_pool2d"
    args = (k, s, p, cm, cip, dov)
    expected = ref_avg_grad(size, go, *args)
    magnitude = ref_avg_grad(size, np.abs(go.astype(np.float64)), *args)
    assert_close(gi, expected, magnitude, dtype, "avg_pool2d_input vs reference", precision="pool")
    if torch is not None and case["N"] > 0:
        tg = _torch_grad(lambda t: torch.nn.functional.avg_pool2d(t, k, s, p, cm, cip, dov), np.zeros(size), go)
        assert_close(gi, tg, magnitude, dtype, "avg_pool2d_input vs torch.autograd", precision="pool")


def test_avg_ceil_mode_overhang_divisor():
    # H=6, k=3, s=2, p=1, ceil_mode: the last window holds cell 5, padding 6 and the overhang 7; with
    # count_include_pad it divides by 2 (cell and padding), not 3
    go = np.ones((1, 1, 4, 4))
    gi = gp.avg_pool2d_input((1, 1, 6, 6), go, 3, 2, 1, ceil_mode=True)
    per_axis = np.array([1 / 3, 2 / 3, 1 / 3, 2 / 3, 1 / 3, 1 / 3 + 1 / 2])  # windows -1, 1, 3, 5
    np.testing.assert_allclose(gi[0, 0], np.outer(per_axis, per_axis), rtol=1e-15)


# --------------------------------------------------------------------------------------------
# adaptive pooling
# --------------------------------------------------------------------------------------------

# output sizes: global, not dividing the input, equal to it, larger than it (overlapping windows)
ADAPTIVE_CASES = pairwise({"out": ((1, 1), (3, 4), "same", (13, 5), (4, 20)), "op": ("avg", "max"),
                           "dtype": DTYPES, "N": (1, 3, 0), "size": SIZES,
                           "layout": ("contiguous", "strided", "transposed"), "data": ("normal", "ties", "nan")},
                          seed=3)


@pytest.mark.parametrize("runner", POOL_RUNNERS)
@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=[_case_id(c) for c in ADAPTIVE_CASES])
def test_adaptive_pool2d_input_matrix(runner, case):
    dtype = case["dtype"]
    size = (case["N"], C) + case["size"]
    out = case["size"] if case["out"] == "same" else case["out"]
    x = _data(size, dtype, seed=10, kind=case["data"])
    go = _data((case["N"], C) + out, dtype, seed=11)
    if case["op"] == "avg":
        gi = runner.call(lambda g: gp.adaptive_avg_pool2d_input(size, g), _layout(go, case["layout"]))
        expected, magnitude = ref_adaptive_grad(size, go), ref_adaptive_grad(size, np.abs(go.astype(np.float64)))
        precision, forward = "pool", torch and (lambda t: torch.nn.functional.adaptive_avg_pool2d(t, out))
    else:
        _, idx = gpuconv.adaptive_max_pool2d(x, out, return_indices=True)
        gi = runner.call(lambda g, i: gp.adaptive_max_pool2d_input(size, g, i), _layout(go, case["layout"]),
                         _layout(idx, case["layout"]))
        expected = ref_adaptive_grad(size, go, idx)
        magnitude = ref_adaptive_grad(size, np.abs(go.astype(np.float64)), idx)
        precision, forward = None, torch and (lambda t: torch.nn.functional.adaptive_max_pool2d(t, out))
    _check_result(gi, size, dtype)
    assert gpuconv.last_kernel().op == f"adaptive_{case['op']}_pool2d"
    assert_close(gi, expected, magnitude, dtype, "adaptive vs reference", precision=precision)
    if torch is not None and case["N"] > 0:
        assert_close(gi, _torch_grad(forward, x, go), magnitude, dtype, "adaptive vs torch", precision=precision)


@pytest.mark.parametrize("runner", POOL_RUNNERS)
def test_unbatched(runner):
    x = _data((3, 7, 6), np.float32, seed=12)
    y, idx = gpuconv.max_pool2d(x, 3, 2, 1, return_indices=True)
    go = _data(y.shape, np.float32, seed=13)
    gi = runner.call(lambda g, i: gp.max_pool2d_input(x.shape, g, i, 3, 2, 1), go, idx)
    batched = runner.call(lambda g, i: gp.max_pool2d_input((1,) + x.shape, g, i, 3, 2, 1), go[None], idx[None])
    _check_result(gi, x.shape, np.float32)
    np.testing.assert_array_equal(gi, batched[0])
    ya = gpuconv.avg_pool2d(x, 2, ceil_mode=True)
    gi = runner.call(lambda g: gp.avg_pool2d_input(list(x.shape), g, 2, ceil_mode=True), ya)
    np.testing.assert_allclose(gi, ref_avg_grad((1,) + x.shape, ya[None], (2, 2), (2, 2), (0, 0), True, True,
                                                None)[0], rtol=1e-6)
    ya, ia = gpuconv.adaptive_max_pool2d(x, (2, 5), return_indices=True)
    assert runner.call(lambda g, i: gp.adaptive_max_pool2d_input(x.shape, g, i), ya, ia).shape == x.shape
    assert runner.call(lambda g: gp.adaptive_avg_pool2d_input(x.shape, g), ya).shape == x.shape


def _random_case(rng):
    """One random valid max / avg / adaptive call: (op, input size, pooling arguments)."""
    while True:
        size = (int(rng.integers(1, 3)), int(rng.integers(1, 3)), int(rng.integers(1, 12)), int(rng.integers(1, 12)))
        op = str(rng.choice(["max", "avg", "adaptive_max", "adaptive_avg"]))
        if op.startswith("adaptive"):
            return op, size, (int(rng.integers(1, 15)), int(rng.integers(1, 15)))
        k = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
        s = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        p = (int(rng.integers(0, k[0] // 2 + 1)), int(rng.integers(0, k[1] // 2 + 1)))
        d = (int(rng.integers(1, 4)), int(rng.integers(1, 4))) if op == "max" else (1, 1)
        cm = bool(rng.integers(0, 2))
        if all(pool_out(n, k[a], s[a], p[a], d[a], cm) >= 1 for a, n in enumerate(size[2:])):
            return op, size, (k, s, p, d, cm, bool(rng.integers(0, 2)), [None, 3][int(rng.integers(0, 2))])


@pytest.mark.parametrize("runner", POOL_RUNNERS)
def test_random_geometries(runner):
    """200 random calls (sizes 1..11, windows 1..5, strides 1..4, any legal padding, dilation 1..3,
    adaptive outputs 1..14) against the textbook references, float32."""
    rng = np.random.default_rng(2024)
    for _ in range(200):
        op, size, args = _random_case(rng)
        x = _data(size, np.float32, seed=int(rng.integers(1 << 30)), kind=str(rng.choice(["normal", "ties"])))
        if op == "max":
            k, s, p, d, cm = args[:5]
            y, idx = gpuconv.max_pool2d(x, k, s, p, d, cm, return_indices=True)
            go = _data(y.shape, np.float32, seed=1)
            gi = runner.call(lambda g, i: gp.max_pool2d_input(size, g, i, k, s, p, d, cm), go, idx)
            ref = (ref_max_grad(size, go, idx, k, s, p, d, cm), ref_max_grad(size, np.abs(go), idx, k, s, p, d, cm))
        elif op == "avg":
            k, s, p, _, cm, cip, dov = args
            go = _data(gpuconv.avg_pool2d(x, k, s, p, cm, cip, dov).shape, np.float32, seed=1)
            gi = runner.call(lambda g: gp.avg_pool2d_input(size, g, k, s, p, cm, cip, dov), go)
            ref = (ref_avg_grad(size, go, k, s, p, cm, cip, dov), ref_avg_grad(size, np.abs(go), k, s, p, cm, cip, dov))
        else:
            go = _data(size[:2] + args, np.float32, seed=1)
            idx = gpuconv.adaptive_max_pool2d(x, args, return_indices=True)[1] if op == "adaptive_max" else None
            if idx is None:
                gi = runner.call(lambda g: gp.adaptive_avg_pool2d_input(size, g), go)
            else:
                gi = runner.call(lambda g, i: gp.adaptive_max_pool2d_input(size, g, i), go, idx)
            ref = (ref_adaptive_grad(size, go, idx), ref_adaptive_grad(size, np.abs(go), idx))
        assert_close(gi, *ref, np.float32, f"{op} {size} {args}", precision="pool" if "avg" in op else None)


# --------------------------------------------------------------------------------------------
# kernels: determinism, the NumPy path's bits, launch shape, the 32-bit rule
# --------------------------------------------------------------------------------------------

def _kernel_inputs(op, dtype, seed=20):
    """(launch function, grad_output, indices or None, geometry, options) of one case per op: overlapping
    windows, so most input cells sum several terms."""
    x = _data((3, 4, 11, 10), dtype, seed)
    if op == "max_pool2d":
        g = pool_geometry(x.shape, 3, 1, 1, 1, True)
        y, idx = gpuconv.max_pool2d(x, 3, 1, 1, 1, True, return_indices=True)
        return pool_grad.max_pool2d, _data(y.shape, dtype, seed + 1), idx, g, ()
    if op == "avg_pool2d":
        g = pool_geometry(x.shape, (4, 3), (2, 1), (2, 1), 1, True)
        return pool_grad.avg_pool2d, _data(g.output_shape, dtype, seed + 1), None, g, (False, None)
    g = adaptive_geometry(x.shape, (17, 4))
    go = _data(g.output_shape, dtype, seed + 1)
    if op == "adaptive_max_pool2d":
        _, idx = gpuconv.adaptive_max_pool2d(x, (17, 4), return_indices=True)
        return pool_grad.adaptive_max_pool2d, go, idx, g, ()
    return pool_grad.adaptive_avg_pool2d, go, None, g, ()


OPS = ("max_pool2d", "avg_pool2d", "adaptive_max_pool2d", "adaptive_avg_pool2d")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_kernels_are_deterministic(rt, op, dtype, monkeypatch):
    """Bitwise the same gradient in either thread order, with any grid (a 3-block grid strides over every
    input), twice; the NumPy path's within the tolerance model."""
    launch, go, idx, g, options = _kernel_inputs(op, dtype)
    first, name = numpy_io(rt, launch, go, idx, g, *options)
    assert name in ops.INSTANTIATIONS[pool_grad.SOURCE]
    reversed_rt = with_thread_order(rt, "reversed")
    again, _ = numpy_io(reversed_rt, launch, go, idx, g, *options)
    monkeypatch.setattr(limits, "MAX_GRID_BLOCKS", 3)
    capped, _ = numpy_io(reversed_rt, launch, go, idx, g, *options)
    for other in (again, capped):
        assert other.tobytes() == first.tobytes()
    from gpuconv._numpy import pool_grad as numpy_pool_grad
    on_numpy, _ = getattr(numpy_pool_grad, op)(go, idx, g, *options)
    # Cross-path agreement is the tolerance model's, not bitwise (each path is deterministic on its own):
    # NumPy sums max-pool terms in output order, the gather kernel in tap order; adaptive max in float64.
    if op == "max_pool2d":
        magnitude = ref_max_grad(g.output_shape[:2] + (g.H, g.W), np.abs(go.astype(np.float64)), idx,
                                 (g.kh, g.kw), (g.sh, g.sw), (g.ph, g.pw), (g.dh, g.dw), g.ceil_mode)
    elif op == "avg_pool2d":
        magnitude = ref_avg_grad(g.output_shape[:2] + (g.H, g.W), np.abs(go.astype(np.float64)), (g.kh, g.kw),
                                 (g.sh, g.sw), (g.ph, g.pw), g.ceil_mode, *options)
    else:
        magnitude = ref_adaptive_grad(g.output_shape[:2] + (g.H, g.W), np.abs(go.astype(np.float64)), idx)
    assert_close(first, on_numpy.astype(np.float64), magnitude, dtype,
                 precision="pool" if "avg" in op else None)
    if op == "avg_pool2d":  # same terms, same order, same precision
        assert on_numpy.tobytes() == first.tobytes()


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("count_include_pad, divisor_override", [(True, None), (False, 3)])
def test_tiling_avg_windows_keep_the_kernels_bits(rt, dtype, count_include_pad, divisor_override):
    """Windows that tile the input (stride = kernel, no padding) take the NumPy path's one-term-per-cell pass;
    its bits are still the kernel's, a -0.0 term included (the kernel sums from +0.0)."""
    from gpuconv._numpy import pool_grad as numpy_pool_grad
    g = pool_geometry((2, 3, 6, 9), (2, 3))
    go = _data(g.output_shape, dtype, seed=40)
    go[0, 0, 0, 0] = -0.0
    first, _ = numpy_io(rt, pool_grad.avg_pool2d, go, None, g, count_include_pad, divisor_override)
    on_numpy, _ = numpy_pool_grad.avg_pool2d(go, None, g, count_include_pad, divisor_override)
    assert on_numpy.tobytes() == first.tobytes()
    assert not np.signbit(on_numpy[0, 0, 0, 0])


def test_numpy_blocks_do_not_change_the_bits(monkeypatch):
    """Every input cell sums its terms in one fixed order however the NumPy path blocks the work."""
    for op in OPS:
        for dtype in (np.float16, np.float32):
            launch, go, idx, g, options = _kernel_inputs(op, dtype, seed=30)
            from gpuconv._numpy import pool_grad as numpy_pool_grad
            fn = getattr(numpy_pool_grad, op)
            whole, _ = fn(go, idx, g, *options)
            monkeypatch.setenv("GPUCONV_NUMPY_WORKSPACE_MB", "0.002")  # a few rows per block
            blocked, _ = fn(go, idx, g, *options)
            monkeypatch.delenv("GPUCONV_NUMPY_WORKSPACE_MB")
            assert blocked.tobytes() == whole.tobytes(), (op, dtype)


def test_launch_shape_and_name(rt):
    spy = SpyRuntime(rt)
    launch, go, idx, g, options = _kernel_inputs("max_pool2d", np.float32)
    _, name = numpy_io(spy, launch, go, idx, g, *options)
    assert name == pool_grad.max_name(np.float32, 3, 3)
    (call,) = spy.launches
    assert call.block == (256, 1, 1) and call.grid == (math.ceil(3 * 4 * 11 * 10 / 256), 1, 1)
    assert call.shared_mem == 0
    assert [type(a) for a in call.args[3:]] == [np.int64] + [np.int32] * 12


def test_32bit_rule_refuses_before_allocating():
    from gpuconv._pool_geometry import PoolGeometry
    g = PoolGeometry(N=1, C=1, H=2**31, W=2, kh=2, kw=2, sh=2, sw=2, ph=0, pw=0, dh=1, dw=1, OH=2**30, OW=1)

    class NoRuntime:
        xp = np

    with pytest.raises(ValueError, match=r"max_pool2d_input: H \+ padding_top \+ padding_bottom .* exceeds 2\^31-1"):
        pool_grad.max_pool2d(NoRuntime(), np.zeros((1, 1, 1, 1), np.float32), None, g)


def test_operation_table_lists_the_backward_ops():
    for op in OPS:
        o = ops.operation(op, "backward")
        assert list(o.algorithms) == ["direct"] and o.algorithms["direct"].source == "pool2d_backward.cu"
    assert set(pool_grad.INSTANTIATIONS["max_pool2d"]) <= set(ops.INSTANTIATIONS["pool2d_backward.cu"])


# --------------------------------------------------------------------------------------------
# arguments
# --------------------------------------------------------------------------------------------

def test_empty_batch_and_record():
    go = np.zeros((0, 2, 4, 5), np.float32)
    gi = gp.max_pool2d_input((0, 2, 7, 9), go, np.zeros(go.shape, np.int64), 3, 2, 1)
    assert gi.shape == (0, 2, 7, 9) and gi.dtype == np.float32
    rec = gpuconv.last_kernel()
    assert (rec.op, rec.backend, rec.kernel, rec.direction) == ("max_pool2d", "numpy", "none (empty output)",
                                                                 "backward")
    gp.avg_pool2d_input((1, 2, 7, 9), np.zeros((1, 2, 4, 5)), 3, 2, 1)
    rec = gpuconv.last_kernel()
    assert (rec.op, rec.kernel, rec.direction) == ("avg_pool2d", "numpy_avg_pool_backward", "backward")


def test_errors():
    go = np.zeros((1, 2, 4, 5), np.float32)
    idx = np.zeros(go.shape, np.int64)
    with pytest.raises(ValueError, match=r"grad_output has shape \[1, 2, 4, 4\], but the forward output for an "
                                         r"input of size \[1, 2, 7, 9\] with these arguments has shape \[1, 2, 4, 5\]"):
        gp.max_pool2d_input((1, 2, 7, 9), go[..., :4], idx[..., :4], 3, 2, 1)
    with pytest.raises(ValueError, match=r"grad_output has shape \[1, 2, 4, 5\].*has shape \[2, 4, 5\]"):
        gp.avg_pool2d_input((2, 7, 9), go, 3, 2, 1)  # unbatched input_size, batched grad_output
    with pytest.raises(TypeError, match=r"indices must be int64 .* got indices of dtype int32 and shape "
                                        r"\[1, 2, 4, 5\]"):
        gp.max_pool2d_input((1, 2, 7, 9), go, idx.astype(np.int32), 3, 2, 1)
    with pytest.raises(ValueError, match=r"indices must have the shape of grad_output, but indices has shape "
                                         r"\[1, 2, 4, 4\] and grad_output \[1, 2, 4, 5\]"):
        gp.max_pool2d_input((1, 2, 7, 9), go, idx[..., :4], 3, 2, 1)
    with pytest.raises(TypeError, match=r"indices must be a NumPy array like grad_output, got list"):
        gp.adaptive_max_pool2d_input((1, 2, 7, 9), go, idx.tolist())
    with pytest.raises(TypeError, match=r"argument 'indices' must be the int64 array the forward returned"):
        gp.max_pool2d_input((1, 2, 7, 9), go, None, 3, 2, 1)
    with pytest.raises(TypeError, match=r"grad_output must be float16, float32 or float64"):
        gp.adaptive_avg_pool2d_input((1, 2, 7, 9), idx)
    with pytest.raises(TypeError, match=r"argument 'grad_output' must be a NumPy or CuPy array, got list"):
        gp.adaptive_avg_pool2d_input((1, 2, 7, 9), go.tolist())
    with pytest.raises(TypeError, match=r"input_size must be a tuple of ints"):
        gp.avg_pool2d_input(np.zeros((1, 2, 7, 9)), go, 3, 2, 1)
    with pytest.raises(ValueError, match=r"input_size must be \(N, C, H, W\) or \(C, H, W\)"):
        gp.avg_pool2d_input((7, 9), go, 3, 2, 1)
    with pytest.raises(ValueError, match=r"divisor must be not zero"):
        gp.avg_pool2d_input((1, 2, 7, 9), go, 3, 2, 1, divisor_override=0)
    with pytest.raises(TypeError, match=r"divisor_override must be an int or None, got 2.0"):
        gp.avg_pool2d_input((1, 2, 7, 9), go, 3, 2, 1, divisor_override=2.0)
    with pytest.raises(ValueError, match=r"max_pool2d_input: pad should be smaller than or equal to half"):
        gp.max_pool2d_input((1, 2, 7, 9), go, idx, 3, 2, 2)
    with pytest.raises(ValueError, match=r"adaptive_avg_pool2d_input\(\): grad_output has shape \[1, 2, 4, 0\]"):
        gp.adaptive_avg_pool2d_input((1, 2, 7, 9), go[..., :0])


@pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
def test_torch_size_is_an_input_size():
    x = _data((1, 2, 6, 6), np.float64, seed=40)
    y, idx = gpuconv.max_pool2d(x, 2, return_indices=True)
    gi = gp.max_pool2d_input(torch.Size(x.shape), np.ones_like(y), idx, 2)
    assert gi.shape == x.shape and gi.sum() == y.size


# --------------------------------------------------------------------------------------------
# memory safety: an AddressSanitizer build of the backward kernels (emulator); the same cases on a GPU
# --------------------------------------------------------------------------------------------

_EDGE_CASES = r"""
import numpy as np
from gpuconv._cuda import limits, pool_grad
from gpuconv._pool_geometry import adaptive_geometry, adaptive_geometry_nd, pool_geometry, pool_geometry_nd
from gpuconv._numpy import pool_grad as numpy_pool_grad


def edge_cases():
    # (op, input shape, geometry args, options, dtype): odd sizes, the ceil_mode overhang, dilation stepping
    # over the plane, adaptive O > H, and indices outside [0, H*W) (negative, H*W, huge) for the max ops
    rng = np.random.default_rng(0)
    cases = [("max_pool2d", (2, 3, 5, 7), (3, 2, 1, 1, True), ()), ("max_pool2d", (1, 2, 4, 1), ((1, 2), (2, 1),
             (0, 1), (1, 2), False), ()), ("max_pool2d", (1, 1, 9, 8), ((2, 3), 1, (1, 1), (3, 2), True), ()),
             ("avg_pool2d", (2, 3, 6, 7), (3, 2, 1, 1, True), (True, None)),
             ("avg_pool2d", (1, 2, 5, 9), ((2, 4), (3, 1), (1, 2), 1, True), (False, 3)),
             ("adaptive_max_pool2d", (2, 2, 3, 5), (7, 11), ()), ("adaptive_avg_pool2d", (1, 3, 7, 2), (3, 5), ()),
             # per-side padding, 3-D (dilation stepping over the volume, trailing padding, ceil_mode)
             ("avg_pool2d", (1, 2, 5, 6), (3, 2, ((0, 2), (2, 1)), 1, True), (True, None)),
             ("max_pool2d", (1, 2, 5, 6), (3, 2, ((2, 0), (1, 2)), 1, True), ()),
             ("max_pool3d", (2, 2, 3, 5, 4), ((2, 3, 2), (1, 2, 2), ((1, 1), (1, 2), (0, 1)), (2, 2, 3), True), ()),
             ("avg_pool3d", (1, 2, 4, 3, 5), ((3, 2, 3), (2, 1, 2), ((2, 0), (0, 1), (1, 1)), 1, True), (False, 5)),
             # adaptive 3-D: an output larger than the input on some axes, not dividing on others
             ("adaptive_max_pool3d", (2, 2, 3, 5, 4), (7, 2, 9), ()),
             ("adaptive_avg_pool3d", (1, 3, 7, 2, 5), (3, 5, 2), ())]
    for op, shape, args, options in cases:
        for dtype in (np.float16, np.float32, np.float64):
            if op.startswith("adaptive") and len(shape) == 5:
                g = adaptive_geometry_nd(shape, args, op, 3)
            elif op.endswith("3d"):
                g = pool_geometry_nd(shape, *args, op, 3)
            else:
                g = adaptive_geometry(shape, args) if op.startswith("adaptive") else pool_geometry(shape, *args)
            go = rng.standard_normal(g.output_shape).astype(dtype)
            idx = None
            if "max_pool" in op:
                idx = rng.integers(-3, int(np.prod(shape[2:])) + 3, size=g.output_shape)
                idx.reshape(-1)[::5] = 2**62
                idx.reshape(-1)[1::7] = -(2**63)
            yield op, go, idx, g, options


def check_edge_cases(rt, numpy_io=lambda rt, fn, *a: fn(rt, *a)):
    for op, go, idx, g, options in edge_cases():
        ours, _ = numpy_io(rt, getattr(pool_grad, op), go, idx, g, *options)
        ref, _ = getattr(numpy_pool_grad, op)(go, idx, g, *options)
        assert ours.shape == ref.shape, op
        assert np.allclose(ours.astype(np.float64), ref.astype(np.float64), rtol=2e-3, atol=2e-3), op
        limits.MAX_GRID_BLOCKS, saved = 1, limits.MAX_GRID_BLOCKS  # one block strides over everything
        try:
            capped, _ = numpy_io(rt, getattr(pool_grad, op), go, idx, g, *options)
        finally:
            limits.MAX_GRID_BLOCKS = saved
        assert capped.tobytes() == ours.tobytes(), op
"""

_ASAN_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
from gpuconv._cuda import ops
from gpuconv._cuda.runtime import kernels_dir
from tests.emulator import EmulatedRuntime
""" + _EDGE_CASES + r"""
check_edge_cases(EmulatedRuntime(kernels_dir(), ops.INSTANTIATIONS, sanitize=True))
print("asan ok")
"""


@pytest.mark.slow  # emulator: a g++ AddressSanitizer build in a subprocess (CI runs -m slow)
def test_no_out_of_bounds_access(rt):
    """Every backward kernel on edge geometries and on indices outside [0, H*W): on the emulator compiled with
    -fsanitize=address (any read or write past go, idx or gi fails); on a GPU the same cases (compute-sanitizer
    memcheck over the gpu tests, .ci/gpu, is the check there)."""
    if on_gpu(rt):
        namespace = {}
        exec(_EDGE_CASES, namespace)
        namespace["check_edge_cases"](rt, numpy_io)
        return
    from tests.emulator import run_script_under_asan
    proc = run_script_under_asan(_ASAN_SCRIPT, Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0 and "asan ok" in proc.stdout, (proc.stdout + proc.stderr)[-6000:]
