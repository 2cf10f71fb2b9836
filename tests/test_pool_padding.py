"""Pooling padding forms beyond PyTorch's (docs/semantics.md, "Pooling: padding forms"): per-side
``((top, bottom), (left, right))``, 'valid' and 'same' (TensorFlow SAME = ONNX SAME_UPPER) on max and average
pooling and their gradients, on every backend, against the textbook references with per-side padding
(tests/reference.py) and, where PyTorch is installed, against an explicit -inf / 0 padding followed by an
unpadded PyTorch pool: 2-D on NumPy, and 1-D / 2-D / 3-D with ceil_mode, dilation and 3-D indices on every
backend."""

from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv import grad as gp
from tests.cases import pairwise
from tests.reference import (avg_pool_nd_grad_ref, avg_pool_nd_ref, max_pool_nd_grad_ref, max_pool_nd_ref,
                             pool_out_nd, pool_pads_ref)
from tests.runners import POOL_RUNNERS, torch
from tests.tolerance import assert_close

DIMS = {
    "padding": [((0, 1), (1, 0)), ((2, 0), (0, 2)), ((1, 2), (2, 1)), "same", "valid", ((0, 0), (1, 1))],
    "kernel": [(3, 3), (2, 3), (4, 2)],
    "stride": [1, 2, (2, 3)],
    "dilation": [1, 2],
    "ceil_mode": [False, True],
    "count_include_pad": [True, False],
    "size": [(5, 7), (8, 6), (1, 9)],
    "dtype": ["float16", "float32", "float64"],
    "data": ["normal", "ties"],
}


def _args(c):
    k = c["kernel"]
    s = (c["stride"],) * 2 if isinstance(c["stride"], int) else c["stride"]
    d = (c["dilation"],) * 2
    return k, s, d


def _valid(c):
    k, s, d = _args(c)
    pads = pool_pads_ref(c["padding"], k, s, d, c["size"])
    if any(max(p) > (kk - 1) * dd for p, kk, dd in zip(pads, k, d)):
        return False
    return all(pool_out_nd(n, kk, ss, lo, hi, dd, c["ceil_mode"]) >= 1
               for n, kk, ss, (lo, hi), dd in zip(c["size"], k, s, pads, d))


CASES = pairwise(DIMS, _valid, seed=7)


def _data(shape, dtype, kind, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, shape).astype(np.float64) if kind == "ties" else rng.standard_normal(shape)
    return x.astype(dtype)


def _id(c):
    return "-".join(str(v) for v in c.values()).replace(" ", "")


@pytest.mark.parametrize("runner", POOL_RUNNERS)
@pytest.mark.parametrize("c", CASES, ids=[_id(c) for c in CASES])
def test_max_pool_padding_forms(runner, c):
    k, s, d = _args(c)
    pads = pool_pads_ref(c["padding"], k, s, d, c["size"])
    x = _data((2, 3) + c["size"], c["dtype"], c["data"], 1)
    exp, exp_idx = max_pool_nd_ref(x, k, s, pads, d, c["ceil_mode"])
    y, idx = runner.call(lambda a: gpuconv.max_pool2d(a, k, s, c["padding"], d, c["ceil_mode"], True), x)
    np.testing.assert_array_equal(y.astype(np.float64), exp)
    np.testing.assert_array_equal(idx, exp_idx)
    go = _data(y.shape, c["dtype"], "normal", 2)
    gi = runner.call(lambda g, i: gp.max_pool2d_input(x.shape, g, i, k, s, c["padding"], d, c["ceil_mode"]),
                     go, idx)
    assert gi.shape == x.shape and gi.dtype == x.dtype
    expected = max_pool_nd_grad_ref(x.shape, go, idx, k, s, pads, d, c["ceil_mode"])
    magnitude = max_pool_nd_grad_ref(x.shape, np.abs(go.astype(np.float64)), idx, k, s, pads, d, c["ceil_mode"])
    assert_close(gi, expected, magnitude, x.dtype, "max_pool2d_input, padding forms")


@pytest.mark.parametrize("runner", POOL_RUNNERS)
@pytest.mark.parametrize("c", CASES, ids=[_id(c) for c in CASES])
def test_avg_pool_padding_forms(runner, c):
    k, s, _ = _args(c)
    pads = pool_pads_ref(c["padding"], k, s, (1, 1), c["size"])
    if any(max(p) > kk - 1 for p, kk in zip(pads, k)):
        pytest.skip("padding beyond the window extent without dilation")
    if any(pool_out_nd(n, kk, ss, lo, hi, 1, c["ceil_mode"]) < 1 for n, kk, ss, (lo, hi) in zip(c["size"], k, s, pads)):
        pytest.skip("no output")
    cip = c["count_include_pad"]
    x = _data((2, 3) + c["size"], c["dtype"], c["data"], 3)
    y = runner.call(lambda a: gpuconv.avg_pool2d(a, k, s, c["padding"], c["ceil_mode"], cip), x)
    expected = avg_pool_nd_ref(x, k, s, pads, c["ceil_mode"], cip)
    magnitude = avg_pool_nd_ref(np.abs(x.astype(np.float64)), k, s, pads, c["ceil_mode"], cip)
    assert_close(y, expected, magnitude, x.dtype, "avg_pool2d, padding forms", precision="pool")
    go = _data(y.shape, c["dtype"], "normal", 4)
    gi = runner.call(lambda g: gp.avg_pool2d_input(x.shape, g, k, s, c["padding"], c["ceil_mode"], cip), go)
    expected = avg_pool_nd_grad_ref(x.shape, go, k, s, pads, c["ceil_mode"], cip)
    magnitude = avg_pool_nd_grad_ref(x.shape, np.abs(go.astype(np.float64)), k, s, pads, c["ceil_mode"], cip)
    assert_close(gi, expected, magnitude, x.dtype, "avg_pool2d_input, padding forms", precision="pool")


@pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
@pytest.mark.parametrize("padding", [((0, 2), (1, 0)), ((2, 1), (0, 1)), "same"])
@pytest.mark.parametrize("stride", [1, 2])
def test_against_pytorch_on_explicitly_padded_input(padding, stride):
    """PyTorch's pooling cannot pad per side: pad explicitly (-inf for max, 0 for average with padding
    counted; the in-bounds count from a padded mask without), then pool unpadded."""
    F = torch.nn.functional
    x = _data((2, 3, 7, 6), "float64", "normal", 5)
    k = (3, 3)
    (t, b), (l, r) = pool_pads_ref(padding, k, (stride,) * 2, (1, 1), x.shape[2:])
    tx = torch.tensor(x)
    y = gpuconv.max_pool2d(x, k, stride, padding)
    ref = F.max_pool2d(F.pad(tx, (l, r, t, b), value=-np.inf), k, stride)
    np.testing.assert_array_equal(y, ref.numpy())
    y = gpuconv.avg_pool2d(x, k, stride, padding, count_include_pad=True)
    ref = F.avg_pool2d(F.pad(tx, (l, r, t, b)), k, stride)
    np.testing.assert_allclose(y, ref.numpy(), rtol=1e-12, atol=1e-12)
    y = gpuconv.avg_pool2d(x, k, stride, padding, count_include_pad=False)
    sums = F.avg_pool2d(F.pad(tx, (l, r, t, b)), k, stride, divisor_override=1)
    count = F.avg_pool2d(F.pad(torch.ones_like(tx), (l, r, t, b)), k, stride, divisor_override=1)
    np.testing.assert_allclose(y, (sums / count).numpy(), rtol=1e-12, atol=1e-12)
    # gradients: autograd through the explicit padding
    go = _data(y.shape, "float64", "normal", 6)
    tx.requires_grad_(True)
    F.avg_pool2d(F.pad(tx, (l, r, t, b)), k, stride).backward(torch.tensor(go))
    np.testing.assert_allclose(gp.avg_pool2d_input(x.shape, go, k, stride, padding), tx.grad.numpy(),
                               rtol=1e-12, atol=1e-12)
    tx.grad = None
    F.max_pool2d(F.pad(tx, (l, r, t, b), value=-np.inf), k, stride).backward(torch.tensor(go))
    _, idx = gpuconv.max_pool2d(x, k, stride, padding, return_indices=True)
    np.testing.assert_allclose(gp.max_pool2d_input(x.shape, go, idx, k, stride, padding), tx.grad.numpy(),
                               rtol=1e-12, atol=1e-12)


def test_same_is_tensorflow_same_upper():
    """Output ceil(size / stride); the odd padding cell at the bottom / right (SAME_UPPER). SAME_LOWER is
    the explicit mirror: ((odd, even), ...)."""
    x = _data((1, 1, 7, 8), "float64", "normal", 7)
    y = gpuconv.max_pool2d(x, 4, 3, "same")
    assert y.shape[2:] == (3, 3)  # ceil(7/3), ceil(8/3)
    # H: total (3-1)*3 + 4 - 7 = 3 -> (1, 2); W: (3-1)*3 + 4 - 8 = 2 -> (1, 1)
    np.testing.assert_array_equal(y, gpuconv.max_pool2d(x, 4, 3, ((1, 2), (1, 1))))
    assert gpuconv.max_pool2d(x, 3, 1, "same").shape[2:] == (7, 8)
    assert gpuconv.avg_pool2d(x, 2, 2, "valid").shape[2:] == (3, 4)


def test_padding_rules_and_errors():
    x = np.zeros((1, 1, 6, 6))
    # symmetric int / pair padding keeps PyTorch's pad <= kernel_size // 2
    with pytest.raises(ValueError, match="pad should be smaller than or equal to half of kernel size"):
        gpuconv.max_pool2d(x, 3, padding=2)
    # explicit per-side padding: each side below the window extent (ONNX), here (3-1)*1 = 2 at most
    assert gpuconv.max_pool2d(x, 3, 1, ((2, 0), (0, 2))).shape == (1, 1, 6, 6)
    with pytest.raises(ValueError, match="smaller than the window extent"):
        gpuconv.max_pool2d(x, 3, 1, ((3, 0), (0, 0)))
    assert gpuconv.max_pool2d(x, 3, 1, ((4, 0), (0, 0)), dilation=2).shape == (1, 1, 6, 2)
    with pytest.raises(ValueError, match="smaller than the window extent"):
        gpuconv.avg_pool2d(x, 2, 1, ((0, 2), (0, 0)))
    with pytest.raises(ValueError, match="non-negative"):
        gpuconv.max_pool2d(x, 3, 1, ((-1, 0), (0, 0)))
    with pytest.raises(ValueError, match="Invalid padding string"):
        gpuconv.max_pool2d(x, 3, 1, "full")
    with pytest.raises(TypeError, match="padding must be"):
        gpuconv.avg_pool2d(x, 3, 1, ((1, 1),))
    with pytest.raises(TypeError, match="padding must be"):
        gpuconv.avg_pool2d(x, 3, 1, 1.5)
    with pytest.raises(ValueError, match=r"avg_pool2d_input\(\): grad_output has shape"):
        gp.avg_pool2d_input(x.shape, np.zeros((1, 1, 6, 6)), 3, 2, "same")


# 1-D / 2-D / 3-D, per-side and 'same' padding with ceil_mode, dilation (max) and count_include_pad both ways:
# (shape, kernel, stride, padding, dilation, ceil_mode)
ND_TORCH_CASES = {
    "1d-pairs-ceil-dil": ((2, 3, 9), (3,), (2,), ((0, 3),), (2,), True),
    "1d-same-ceil": ((1, 2, 8), (4,), (3,), "same", (1,), True),
    "2d-pairs-ceil-dil": ((1, 2, 6, 7), (2, 3), (2, 2), ((1, 0), (0, 2)), (2, 1), True),
    "3d-pairs-ceil": ((2, 2, 4, 5, 6), (2, 3, 2), (2, 2, 3), ((1, 0), (0, 2), (1, 1)), (1, 1, 1), True),
    "3d-pairs-dil": ((1, 2, 5, 4, 7), (2, 2, 3), (1, 2, 2), ((0, 2), (1, 0), (2, 1)), (2, 1, 2), False),
    "3d-same-ceil-dil": ((1, 3, 5, 6, 4), (3, 2, 2), (2, 3, 1), "same", (1, 2, 2), True),
    # ceil_mode windows past the padded input (L = 7 + (0, 1): the last one overhangs by one and counts 2)
    "1d-ceil-overhang": ((2, 2, 7), (3,), (2,), ((0, 1),), (1,), True),
    # PyTorch keeps one more window, starting in the trailing padding: cut (depth 5 + (1, 1), k 2, s 2)
    "3d-ceil-cut": ((1, 2, 5, 4, 3), (2, 2, 2), (2, 2, 2), ((1, 1), (0, 1), (1, 0)), (1, 1, 1), True),
}


def _torch_pool(op, a, k, s, d, ceil_mode):
    """PyTorch pooling without padding in 1-D / 2-D / 3-D; ``'sum'``: window sums (1-D through 2-D, as
    avg_pool1d has no divisor_override)."""
    F = torch.nn.functional
    n = len(k)
    if op == "max":
        return getattr(F, f"max_pool{n}d")(a, k, s, 0, d, ceil_mode, return_indices=True)
    if n == 1:
        return F.avg_pool2d(a[:, :, None], (1,) + k, (1,) + s, 0, ceil_mode, True, 1)[:, :, 0]
    return getattr(F, f"avg_pool{n}d")(a, k, s, 0, ceil_mode, True, 1)


@pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
@pytest.mark.parametrize("runner", POOL_RUNNERS)
@pytest.mark.parametrize("name", list(ND_TORCH_CASES))
def test_nd_against_pytorch_on_explicitly_padded_input(runner, name):
    """max / avg pooling in 1-D, 2-D, 3-D with per-side or 'same' padding, ceil_mode and dilation, against
    PyTorch on the explicitly padded input (values, indices mapped back to ``d*H*W + h*W + w`` of the unpadded
    input, and the gradients by autograd through the padding). With ceil_mode PyTorch may keep one more
    window than gpuconv, one starting in the trailing padding (gpuconv's rule: a window starts inside the
    input or the leading padding); it is cut off, and only there."""
    shape, k, s, padding, d, ceil_mode = ND_TORCH_CASES[name]
    n = len(k)
    F = torch.nn.functional
    x = _data(shape, "float64", "ties" if n == 3 else "normal", 8)
    fn = {1: (gpuconv.max_pool1d, gpuconv.avg_pool1d, gp.max_pool1d_input, gp.avg_pool1d_input),
          2: (gpuconv.max_pool2d, gpuconv.avg_pool2d, gp.max_pool2d_input, gp.avg_pool2d_input),
          3: (gpuconv.max_pool3d, gpuconv.avg_pool3d, gp.max_pool3d_input, gp.avg_pool3d_input)}[n]
    spatial = shape[2:]

    def cut(t, pads):  # gpuconv's output size; PyTorch's is it or one more (a window starting in the trailing pad)
        outs = [pool_out_nd(m, kk, ss, lo, hi, dd, ceil_mode) for m, kk, ss, (lo, hi), dd
                in zip(spatial, k, s, pads, d if t is None else t)]
        return outs

    # max, with dilation
    pads = pool_pads_ref(padding, k, s, d, spatial)
    tp = tuple(v for lo_hi in reversed(pads) for v in lo_hi)
    outs = cut(d, pads)
    tx = torch.tensor(x, requires_grad=True)
    ty, ti = _torch_pool("max", F.pad(tx, tp, value=-np.inf), k, s, d, ceil_mode)
    assert all(a - b in (0, 1) for a, b in zip(ty.shape[2:], outs))
    sl = (slice(None), slice(None)) + tuple(slice(0, o) for o in outs)
    ty, ti = ty[sl], ti[sl]
    y, idx = runner.call(lambda a: fn[0](a, k, s, padding, d, ceil_mode, True), x)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    coords = np.unravel_index(ti.numpy(), [m + lo + hi for m, (lo, hi) in zip(spatial, pads)])
    np.testing.assert_array_equal(idx, np.ravel_multi_index([c - lo for c, (lo, _) in zip(coords, pads)], spatial))
    go = _data(y.shape, "float64", "normal", 9)
    ty.backward(torch.tensor(go))
    gi = runner.call(lambda g, i: fn[2](x.shape, g, i, k, s, padding, d, ceil_mode), go, idx)
    np.testing.assert_allclose(gi, tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    # average (no dilation), counting the padding and not; per-side pads clipped to the undilated extent
    ones = (1,) * n
    if not isinstance(padding, str):
        padding = tuple((min(lo, kk - 1), min(hi, kk - 1)) for (lo, hi), kk in zip(padding, k))
    pads = pool_pads_ref(padding, k, s, ones, spatial)
    tp = tuple(v for lo_hi in reversed(pads) for v in lo_hi)
    outs = cut(ones, pads)
    sl = (slice(None), slice(None)) + tuple(slice(0, o) for o in outs)
    for include in (True, False):
        tx = torch.tensor(x, requires_grad=True)
        sums = _torch_pool("sum", F.pad(tx, tp), k, s, ones, ceil_mode)
        if include:  # the window clipped to the padded input: PyTorch's own count on the padded input
            count = _torch_pool("sum", torch.ones_like(F.pad(tx, tp)), k, s, ones, ceil_mode)
        else:
            count = _torch_pool("sum", F.pad(torch.ones_like(tx), tp), k, s, ones, ceil_mode)
        ty = (sums / count)[sl]
        y = runner.call(lambda a: fn[1](a, k, s, padding, ceil_mode, include), x)
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
        go = _data(y.shape, "float64", "normal", 10)
        ty.backward(torch.tensor(go))
        gi = runner.call(lambda g: fn[3](x.shape, g, k, s, padding, ceil_mode, include), go)
        np.testing.assert_allclose(gi, tx.grad.numpy(), rtol=1e-12, atol=1e-12)
