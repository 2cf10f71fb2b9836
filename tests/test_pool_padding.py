"""Pooling padding forms beyond PyTorch's (docs/semantics.md, "Pooling: padding forms"): per-side
``((top, bottom), (left, right))``, 'valid' and 'same' (TensorFlow SAME = ONNX SAME_UPPER) on max and average
pooling and their gradients, on every backend, against the textbook references with per-side padding
(tests/reference.py) and, where PyTorch is installed, against an explicit -inf / 0 padding followed by an
unpadded PyTorch pool."""

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
