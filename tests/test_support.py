"""The support modules themselves: ``reference_conv2d`` (the kernel suites' entry to the textbook reference,
with gpuconv's argument forms and the magnitude) against PyTorch on the kernel suites' matrix, and the
tolerance model's rules (tests/tolerance.py) on made-up values. Nothing here runs gpuconv."""

from __future__ import annotations

import numpy as np
import pytest

from tests.cases import KERNEL_CASES, kernel_case_data, kernel_case_id
from tests.reference import reference_conv2d
from tests.runners import torch
from tests.tolerance import REL, assert_close, tolerance


@pytest.mark.skipif(torch is None, reason="PyTorch not installed (second oracle)")
@pytest.mark.torch
@pytest.mark.parametrize("case", KERNEL_CASES, ids=[kernel_case_id(c) for c in KERNEL_CASES])
def test_reference_conv2d_agrees_with_torch(case):
    """``reference_conv2d`` on the kernel suites' matrix (asymmetric padding, flip, every activation, bias,
    groups) against torch.nn.functional.conv2d in float64, and its magnitude against torch on |x|, |w|, |b|."""
    g, x, w, b = kernel_case_data(case)
    out, mag = reference_conv2d(x, w, b, case["stride"], case["padding"], case["dilation"], g.groups, g.flip,
                                g.activation)
    F = torch.nn.functional

    def conv(x, w, b):
        t = torch.from_numpy(x.astype(np.float64))
        tw = torch.from_numpy(w.astype(np.float64))
        if g.flip:
            tw = tw.flip(2, 3)
        tb = None if b is None else torch.from_numpy(b.astype(np.float64))
        return F.conv2d(F.pad(t, (g.pl, g.pr, g.pt, g.pb)), tw, tb, stride=(g.sh, g.sw), dilation=(g.dh, g.dw),
                        groups=g.groups)
    y = conv(x, w, b)
    if g.activation is not None:
        y = {"relu": F.relu, "leaky_relu": F.leaky_relu, "sigmoid": torch.sigmoid,
             "tanh": torch.tanh}[g.activation](y)
    m = conv(np.abs(x), np.abs(w), None if b is None else np.abs(b)).numpy()
    np.testing.assert_allclose(y.numpy(), out, rtol=1e-10, atol=1e-10 * m.max())
    np.testing.assert_allclose(m, mag, rtol=1e-10, atol=1e-10 * m.max())


@pytest.mark.parametrize("precision", list(REL))
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_assert_close_holds_at_the_bound_and_fails_past_it(dtype, precision):
    if np.dtype(dtype).type not in REL[precision]:
        with pytest.raises(ValueError, match="no tolerance"):
            tolerance(dtype, precision)
        return
    tol = tolerance(dtype, precision)
    expected = np.array([1.0, -2.0, 0.0, 0.5])
    magnitude = np.array([4.0, 2.0, 3.0, 0.25])  # the last: |expected| > magnitude (a sigmoid's output)
    scale = np.maximum(magnitude, np.abs(expected))
    assert_close(expected + 0.99 * tol * scale, expected, magnitude, dtype, precision=precision)
    for i in range(expected.size):
        wrong = expected.copy()
        wrong[i] += 1.01 * tol * scale[i]
        with pytest.raises(AssertionError, match="max error"):
            assert_close(wrong, expected, magnitude, dtype, precision=precision)


def test_assert_close_special_values():
    """NaN only where the reference has NaN; infinities, and results of an infinite magnitude, exactly."""
    expected = np.array([np.nan, np.inf, -np.inf, 1.0, 0.0])
    magnitude = np.array([np.nan, np.inf, np.inf, np.inf, 1.0])
    assert_close(expected.copy(), expected, magnitude, np.float32)
    with pytest.raises(AssertionError, match="NaN positions differ"):
        assert_close(np.array([0.0, np.inf, -np.inf, 1.0, 0.0]), expected, magnitude, np.float32)
    with pytest.raises(AssertionError, match="NaN positions differ"):
        assert_close(np.array([np.nan, np.inf, -np.inf, 1.0, np.nan]), expected, magnitude, np.float32)
    for i, v in ((1, 1e30), (2, np.inf), (3, 1.0 + 1e-7)):
        wrong = expected.copy()
        wrong[i] = v
        with pytest.raises(AssertionError, match="max error"):
            assert_close(wrong, expected, magnitude, np.float32)
    with pytest.raises(AssertionError, match="shape"):
        assert_close(np.zeros(4), expected, magnitude, np.float32)
