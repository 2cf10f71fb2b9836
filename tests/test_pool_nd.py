"""1-D and 3-D max / average pooling and their gradients (gpuconv.max_pool1d / avg_pool1d / max_pool3d /
avg_pool3d, gpuconv.grad.*_pool{1,3}d_input) on every backend (NumPy, the emulated kernels, a GPU) against
the N-D textbook references (tests/reference.py) and PyTorch when installed. 1-D runs the 2-D kernels on
one-row planes; 3-D has its own kernels (the 2-D window code over depth taps)."""

from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv import grad as gp
from tests.cases import pairwise
from tests.reference import (avg_pool_nd_grad_ref, avg_pool_nd_ref, max_pool_nd_grad_ref, max_pool_nd_ref,
                             pool_out_nd, pool_pads_ref)
from tests.runners import POOL_RUNNERS, numpy_io, runtime_fixture, torch, with_thread_order
from tests.tolerance import assert_close

rt = runtime_fixture()

DIMS1 = {
    "kernel": [1, 2, 3, 5],
    "stride": [None, 1, 2, 3],
    "padding": [0, 1, 2, ((0, 2),), "same"],
    "dilation": [1, 2],
    "ceil_mode": [False, True],
    "count_include_pad": [True, False],
    "size": [1, 4, 11],
    "batch": ["N=0", "N=2", "unbatched"],
    "dtype": ["float16", "float32", "float64"],
    "data": ["normal", "nan", "ties"],
    "layout": ["contiguous", "sliced"],
}
DIMS3 = {
    "kernel": [(1, 2, 2), (2, 3, 3), (3, 1, 2)],
    "stride": [None, 1, (2, 1, 2)],
    "padding": [0, (1, 0, 1), ((0, 1), (1, 1), (1, 0)), "same"],
    "dilation": [1, (2, 1, 2)],
    "ceil_mode": [False, True],
    "count_include_pad": [True, False],
    "divisor_override": [None, 5],
    "size": [(3, 5, 4), (4, 1, 6)],
    "batch": ["N=0", "N=2", "unbatched"],
    "dtype": ["float16", "float32", "float64"],
    "data": ["normal", "nan", "ties"],
    "layout": ["contiguous", "sliced"],
}


def _norm(c, n):
    k = (c["kernel"],) * n if isinstance(c["kernel"], int) else c["kernel"]
    s = k if c["stride"] is None else ((c["stride"],) * n if isinstance(c["stride"], int) else c["stride"])
    d = (c["dilation"],) * n if isinstance(c["dilation"], int) else c["dilation"]
    size = (c["size"],) if isinstance(c["size"], int) else c["size"]
    return k, s, d, size


def _valid(c, n, dilated):
    k, s, d, size = _norm(c, n)
    d = d if dilated else (1,) * n
    pads = pool_pads_ref(c["padding"], k, s, d, size)
    explicit = isinstance(c["padding"], str) or not all(isinstance(p, int) for p in
                                                         ((c["padding"],) if isinstance(c["padding"], int)
                                                          else c["padding"]))
    limit = [(kk - 1) * dd if explicit else kk // 2 for kk, dd in zip(k, d)]
    if any(max(p) > lim for p, lim in zip(pads, limit)):
        return False
    return all(pool_out_nd(m, kk, ss, lo, hi, dd, c["ceil_mode"]) >= 1
               for m, kk, ss, (lo, hi), dd in zip(size, k, s, pads, d))


CASES1 = pairwise(DIMS1, lambda c: _valid(c, 1, True) and _valid(c, 1, False), seed=3)
CASES3 = pairwise(DIMS3, lambda c: _valid(c, 3, True) and _valid(c, 3, False), seed=4)


def _data(c, size, seed):
    rng = np.random.default_rng(seed)
    n = {"N=0": (0,), "N=2": (2,), "unbatched": ()}[c["batch"]]
    shape = n + (3,) + size
    x = rng.integers(-2, 3, shape).astype(np.float64) if c["data"] == "ties" else rng.standard_normal(shape)
    if c["data"] == "nan":
        x[rng.random(shape) < 0.15] = np.nan
    x = x.astype(c["dtype"])
    if c["layout"] == "sliced":
        big = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
        big[..., ::2] = x
        return x, big[..., ::2]
    return x, x


def _batched(a, c):
    return a[None] if c["batch"] == "unbatched" else a


def _check(runner, c, n, fwd_max, fwd_avg, grad_max, grad_avg):
    k, s, d, size = _norm(c, n)
    x, xv = _data(c, size, 1)
    xb = _batched(x, c)
    pads = pool_pads_ref(c["padding"], k, s, d, size)
    # max: values exact, indices exact
    y, idx = runner.call(lambda a: fwd_max(a, c["kernel"], c["stride"], c["padding"], c["dilation"], c["ceil_mode"],
                                           True), xv)
    exp, exp_idx = max_pool_nd_ref(xb, k, s, pads, d, c["ceil_mode"])
    assert y.dtype == x.dtype and idx.dtype == np.int64
    np.testing.assert_array_equal(_batched(y, c).astype(np.float64), exp)
    np.testing.assert_array_equal(_batched(idx, c), exp_idx)
    rng = np.random.default_rng(2)
    go = rng.standard_normal(y.shape).astype(c["dtype"])
    gi = runner.call(lambda g, i: grad_max(x.shape, g, i, c["kernel"], c["stride"], c["padding"], c["dilation"],
                                           c["ceil_mode"]), go, idx)
    assert gi.shape == x.shape and gi.dtype == x.dtype
    ref_args = (k, s, pads, d, c["ceil_mode"])
    assert_close(_batched(gi, c), max_pool_nd_grad_ref(xb.shape, _batched(go, c), exp_idx, *ref_args),
                 max_pool_nd_grad_ref(xb.shape, np.abs(_batched(go, c).astype(np.float64)), exp_idx, *ref_args),
                 x.dtype, "max gradient")
    # average (no dilation)
    pads = pool_pads_ref(c["padding"], k, s, (1,) * n, size)
    opts = (c["ceil_mode"], c["count_include_pad"]) + ((c["divisor_override"],) if n == 3 else ())
    y = runner.call(lambda a: fwd_avg(a, c["kernel"], c["stride"], c["padding"], *opts), xv)
    with np.errstate(invalid="ignore"):
        exp = avg_pool_nd_ref(xb, k, s, pads, *opts)
        mag = avg_pool_nd_ref(np.abs(xb.astype(np.float64)), k, s, pads, *opts)
    assert_close(_batched(y, c), exp, mag, x.dtype, "avg", precision="pool")
    go = rng.standard_normal(y.shape).astype(c["dtype"])
    gi = runner.call(lambda g: grad_avg(x.shape, g, c["kernel"], c["stride"], c["padding"], *opts), go)
    assert gi.shape == x.shape and gi.dtype == x.dtype
    assert_close(_batched(gi, c), avg_pool_nd_grad_ref(xb.shape, _batched(go, c), k, s, pads, *opts),
                 avg_pool_nd_grad_ref(xb.shape, np.abs(_batched(go, c).astype(np.float64)), k, s, pads, *opts),
                 x.dtype, "avg gradient", precision="pool")


def _cid(c):
    return "-".join(str(v) for v in c.values()).replace(" ", "")


@pytest.mark.parametrize("runner", POOL_RUNNERS)
@pytest.mark.parametrize("c", CASES1, ids=[_cid(c) for c in CASES1])
def test_pool1d(runner, c):
    _check(runner, c, 1, gpuconv.max_pool1d, gpuconv.avg_pool1d, gp.max_pool1d_input, gp.avg_pool1d_input)
    record = gpuconv.last_kernel()
    assert (record.op, record.direction) == ("avg_pool1d", "backward")
    if c["batch"] != "N=0":  # 1-D runs the 2-D kernels
        assert "avg_pool" in record.kernel


@pytest.mark.parametrize("runner", POOL_RUNNERS)
@pytest.mark.parametrize("c", CASES3, ids=[_cid(c) for c in CASES3])
def test_pool3d(runner, c):
    _check(runner, c, 3, gpuconv.max_pool3d, gpuconv.avg_pool3d, gp.max_pool3d_input, gp.avg_pool3d_input)


@pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
def test_against_pytorch():
    F = torch.nn.functional
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 5, 9, 8))
    tx = torch.tensor(x, requires_grad=True)
    for args in [((2, 3, 3), 2, 1, 1, True), ((3, 2, 2), (1, 2, 3), (1, 1, 0), (2, 1, 1), False)]:
        y, idx = gpuconv.max_pool3d(x, *args, return_indices=True)
        ty, ti = F.max_pool3d(tx, *args, return_indices=True)
        np.testing.assert_array_equal(y, ty.detach().numpy())
        np.testing.assert_array_equal(idx, ti.numpy())
        go = rng.standard_normal(y.shape)
        tx.grad = None
        ty.backward(torch.tensor(go))
        np.testing.assert_allclose(gp.max_pool3d_input(x.shape, go, idx, *args), tx.grad.numpy(), rtol=1e-12,
                                   atol=1e-12)
    for args in [((2, 3, 3), 2, 1, True, False, None), ((3, 2, 2), (1, 2, 3), (1, 1, 0), False, True, 5)]:
        y = gpuconv.avg_pool3d(x, *args)
        ty = F.avg_pool3d(tx, *args)
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
        go = rng.standard_normal(y.shape)
        tx.grad = None
        ty.backward(torch.tensor(go))
        np.testing.assert_allclose(gp.avg_pool3d_input(x.shape, go, *args), tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    x1 = rng.standard_normal((2, 3, 13))
    t1 = torch.tensor(x1)
    y, idx = gpuconv.max_pool1d(x1, 3, 2, 1, 2, True, return_indices=True)
    ty, ti = F.max_pool1d(t1, 3, 2, 1, 2, True, return_indices=True)
    np.testing.assert_array_equal(y, ty.numpy())
    np.testing.assert_array_equal(idx, ti.numpy())
    np.testing.assert_allclose(gpuconv.avg_pool1d(x1, 4, 3, 2, True, False),
                               F.avg_pool1d(t1, 4, 3, 2, True, False).numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", ["max", "avg"])
def test_3d_kernels_are_deterministic(rt, op):
    """The 3-D kernels (forward, gradient) give bitwise the same result in either thread order, twice, and
    are the names the table lists."""
    from gpuconv._cuda import ops, pool, pool_grad
    from gpuconv._pool_geometry import pool_geometry_nd
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 5, 6, 7)).astype(np.float32)
    results = []
    for r in (rt, with_thread_order(rt, "reversed"), rt):
        if op == "max":
            g = pool_geometry_nd(x.shape, 3, 1, 1, 1, False, "max_pool3d", 3)
            y, idx, fwd = numpy_io(r, pool.max_pool3d, x, g, True)
            gi, bwd = numpy_io(r, pool_grad.max_pool3d, np.ones(y.shape, np.float32), idx, g)
        else:
            g = pool_geometry_nd(x.shape, (3, 2, 3), (1, 2, 1), ((1, 1), (0, 1), (2, 0)), 1, False, "avg_pool3d", 3)
            y, fwd = numpy_io(r, pool.avg_pool3d, x, g, False, None)
            gi, bwd = numpy_io(r, pool_grad.avg_pool3d, np.ones(y.shape, np.float32), None, g, False, None)
        results.append((y.tobytes(), gi.tobytes()))
    assert results[0] == results[1] == results[2]
    assert fwd in ops.INSTANTIATIONS["pool2d.cu"] and bwd in ops.INSTANTIATIONS["pool2d_backward.cu"]
    assert fwd.startswith(f"gpuconv::{op}_pool3d<") and bwd.startswith(f"gpuconv::{op}_pool3d_backward<")


@pytest.mark.parametrize("runner", POOL_RUNNERS)
@pytest.mark.parametrize("dims", [1, 3])
def test_indices_outside_their_window_contribute_nothing(runner, dims):
    """The rule of docs/pooling-gradients.md on dilated, padded windows: random indices (in and out of the
    window, out of the plane) are dropped unless they name an in-bounds tap of their output's window."""
    rng = np.random.default_rng(11)
    size = (2, 3, 13) if dims == 1 else (2, 3, 5, 6, 7)
    args = ((3, 2, 1, 2, True) if dims == 1 else ((2, 3, 2), (1, 2, 2), ((1, 1), (1, 2), (0, 1)), (2, 2, 3), True))
    x = rng.standard_normal(size).astype(np.float32)
    fwd, grad = (gpuconv.max_pool1d, gp.max_pool1d_input) if dims == 1 else (gpuconv.max_pool3d, gp.max_pool3d_input)
    y, idx = fwd(x, *args, return_indices=True)
    plane = int(np.prod(size[2:]))
    bad = idx.copy()
    flat = bad.reshape(-1)
    pick = rng.random(flat.size) < 0.5
    flat[pick] = rng.integers(-3, plane + 3, int(pick.sum()))
    flat[:3] = [2**62, -(2**63), plane]
    go = rng.standard_normal(y.shape).astype(np.float32)
    gi = runner.call(lambda g, i: grad(size, g, i, *args), go, bad)
    k, s, p, d, cm = args
    n = dims
    k, s, d = ((k,) * n if isinstance(k, int) else k), ((s,) * n if isinstance(s, int) else s), \
        ((d,) * n if isinstance(d, int) else d)
    pads = pool_pads_ref(p, k, s, d, size[2:])
    expected = max_pool_nd_grad_ref(size, go, bad, k, s, pads, d, cm)
    magnitude = max_pool_nd_grad_ref(size, np.abs(go.astype(np.float64)), bad, k, s, pads, d, cm)
    assert_close(gi, expected, magnitude, np.float32, "random indices")


@pytest.mark.parametrize("runner", POOL_RUNNERS)
@pytest.mark.parametrize("length, out", [(7, 1), (9, 4), (5, 5), (4, 9), (6, (3,))])
@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_adaptive_pool1d(runner, length, out, dtype):
    """Adaptive 1-D pooling and its gradients: the 2-D ops on one-row planes, against the adaptive reference
    (a plane of one row) and PyTorch."""
    from tests.reference import adaptive_pool2d_ref
    rng = np.random.default_rng(length)
    x = rng.standard_normal((2, 3, length)).astype(dtype)
    o = out[0] if isinstance(out, tuple) else out
    exp_avg = adaptive_pool2d_ref(x[:, :, None, :], (1, o), "avg")[:, :, 0]
    exp_max, exp_idx = (a[:, :, 0] for a in adaptive_pool2d_ref(x[:, :, None, :], (1, o), "max"))
    y = runner.call(lambda a: gpuconv.adaptive_avg_pool1d(a, out), x)
    assert y.shape == (2, 3, o) and y.dtype == x.dtype
    assert_close(y, exp_avg, np.abs(exp_avg) + 1, x.dtype, "adaptive avg 1-D", precision="pool")
    ym, idx = runner.call(lambda a: gpuconv.adaptive_max_pool1d(a, out, True), x)
    np.testing.assert_array_equal(ym.astype(np.float64), exp_max)
    np.testing.assert_array_equal(idx, exp_idx)
    go = rng.standard_normal(y.shape).astype(dtype)
    gi = runner.call(lambda g: gp.adaptive_avg_pool1d_input(x.shape, g), go)
    windows = [((i * length) // o, -(-((i + 1) * length) // o)) for i in range(o)]
    ref = np.zeros(x.shape)
    for i, (a, b) in enumerate(windows):
        ref[:, :, a:b] += go[:, :, i:i + 1].astype(np.float64) / (b - a)
    assert_close(gi, ref, np.abs(ref) + 1, x.dtype, "adaptive avg 1-D gradient", precision="pool")
    gm = runner.call(lambda g, i: gp.adaptive_max_pool1d_input(x.shape[1:], g, i), go[0], idx[0])
    ref = np.zeros(x.shape[1:])
    for c in range(3):
        for i in range(o):
            ref[c, idx[0, c, i]] += go[0, c, i]
    assert_close(gm, ref, np.abs(ref) + 1, x.dtype, "adaptive max 1-D gradient")
    assert (gpuconv.last_kernel().op, gpuconv.last_kernel().direction) == ("adaptive_max_pool1d", "backward")
    if torch is not None:
        t = torch.tensor(x.astype(np.float64))
        np.testing.assert_array_equal(idx, torch.nn.functional.adaptive_max_pool1d(t, o, True)[1].numpy())


def test_errors():
    x = np.zeros((2, 3, 8))
    with pytest.raises(ValueError, match=r"max_pool1d: Expected 2D or 3D input"):
        gpuconv.max_pool1d(np.zeros((1, 2, 3, 4)), 2)
    with pytest.raises(ValueError, match=r"avg_pool3d: Expected 4D or 5D input"):
        gpuconv.avg_pool3d(x, 2)
    with pytest.raises(ValueError, match="pad should be smaller than or equal to half of kernel size"):
        gpuconv.max_pool1d(x, 3, padding=2)
    with pytest.raises(TypeError, match="kernel_size must be an int or a tuple of 3 ints"):
        gpuconv.max_pool3d(np.zeros((1, 1, 4, 4, 4)), (2, 2))
    with pytest.raises(ValueError, match="Output size is too small"):
        gpuconv.avg_pool1d(x, 9)
    with pytest.raises(ValueError, match="divisor must be not zero"):
        gpuconv.avg_pool3d(np.zeros((1, 1, 4, 4, 4)), 2, divisor_override=0)
    with pytest.raises(ValueError, match=r"max_pool1d_input\(\): grad_output has shape \[2, 3, 3\]"):
        gp.max_pool1d_input(x.shape, np.zeros((2, 3, 3)), np.zeros((2, 3, 3), np.int64), 2)
    with pytest.raises(TypeError, match="indices"):
        gp.max_pool3d_input((1, 1, 4, 4, 4), np.zeros((1, 1, 2, 2, 2)), None, 2)
    with pytest.raises(TypeError, match="input_size must be a tuple of 5 ints"):
        gp.avg_pool3d_input("x", np.zeros((1, 1, 2, 2, 2)), 2)
    with pytest.raises(ValueError, match="adaptive_avg_pool1d: Expected 2D or 3D input"):
        gpuconv.adaptive_avg_pool1d(np.zeros((1, 1, 2, 2)), 2)
    with pytest.raises(TypeError, match="output_size must be an int"):
        gpuconv.adaptive_max_pool1d(x, (2, 2))
    with pytest.raises(ValueError, match="output_size must be positive"):
        gpuconv.adaptive_avg_pool1d(x, 0)
    with pytest.raises(ValueError, match=r"adaptive_avg_pool1d_input\(\): grad_output must have the shape"):
        gp.adaptive_avg_pool1d_input((2, 3, 8), np.zeros((2, 4, 3)))
    with pytest.raises(TypeError, match="indices"):
        gp.adaptive_max_pool1d_input((2, 3, 8), np.zeros((2, 3, 3)), None)
