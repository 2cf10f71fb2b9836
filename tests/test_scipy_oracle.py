"""conv2d against SciPy's ``signal.correlate2d`` (``flip=False``) and ``signal.convolve2d`` (``flip=True``) in
their three modes, on every backend (NumPy, the emulated CUDA kernels, a GPU when there is one).

SciPy is a second, independent oracle (optional, like PyTorch: this module skips without it). Its modes map
onto gpuconv's padding (docs/semantics.md, "padding='same'"):

* ``'valid'``: ``padding='valid'``;
* ``'same'``: ``padding='same'``. With an even kernel the total padding is odd: correlation puts the extra
  pixel bottom/right (as ``correlate2d`` and PyTorch), true convolution top/left (as ``convolve2d``, NumPy's
  ``convolve`` and MATLAB's ``conv2``);
* ``'full'``: explicit padding ``((R-1, R-1), (S-1, S-1))`` (with dilation ``d*(k-1)`` on each side).

SciPy has neither dilation nor stride. Dilation is checked with the dilated kernel written out (zeros
between the taps), which SciPy takes as an ordinary kernel. Stride > 1 ('same' is then TensorFlow/JAX
``SAME``) is checked on SciPy's 'full' result sampled where the documented padding puts the windows, and by
the mirror identity that makes the ``flip=True`` split the right one: convolving ``x`` equals the reversed
correlation of the reversed ``x``.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from tests.reference import same_padding_ref
from tests.runners import CONV_RUNNERS, GENERAL_CONV_RUNNERS
from tests.tolerance import assert_close

signal = pytest.importorskip("scipy.signal", reason="SciPy is not installed (optional oracle)")
pytestmark = pytest.mark.scipy

# gemm1x1 computes unpadded 1x1 filters only: it would decline (skip) every case here.
RUNNERS = [r for r in CONV_RUNNERS if r.values[0].algo != "gemm1x1"]

IMAGE = (37, 29)  # the image: odd and even sizes, not multiples of any tile
KERNELS = [(3, 3), (5, 4), (4, 4), (2, 5), (6, 1), (1, 2)]  # odd and even, in each dimension
MODES = ("valid", "same", "full")


def gpuconv_padding(mode, kernel, dilation=(1, 1)):
    """gpuconv's padding argument for a SciPy mode."""
    if mode == "full":
        (R, S), (dh, dw) = kernel, dilation
        return ((dh * (R - 1), dh * (R - 1)), (dw * (S - 1), dw * (S - 1)))
    return mode


def dilated(w, dilation):
    """A 2-D kernel with ``d-1`` zeros between its taps: what dilation computes, as a plain kernel."""
    dh, dw = dilation
    R, S = w.shape
    out = np.zeros((dh * (R - 1) + 1, dw * (S - 1) + 1), w.dtype)
    out[::dh, ::dw] = w
    return out


def scipy_conv(x, w, b, mode, flip, dilation=(1, 1)):
    """SciPy's answer for a (N, C, H, W) input and a (K, C, R, S) weight (groups=1), in float64, and the
    same sum over absolute values (for the error bound)."""
    fn = signal.convolve2d if flip else signal.correlate2d
    N, C = x.shape[:2]
    K = w.shape[0]
    out, mag = [], []
    for n in range(N):
        for k in range(K):
            pairs = [(x[n, c].astype(np.float64), dilated(w[k, c].astype(np.float64), dilation)) for c in range(C)]
            out.append(sum(fn(a, v, mode=mode) for a, v in pairs) + (0 if b is None else float(b[k])))
            mag.append(sum(fn(np.abs(a), np.abs(v), mode=mode) for a, v in pairs)
                       + (0 if b is None else abs(float(b[k]))))
    shape = (N, K) + out[0].shape
    return np.reshape(out, shape), np.reshape(mag, shape)


def _data(rng, shape_x, shape_w, dtype=np.float64):
    return rng.standard_normal(shape_x).astype(dtype), rng.standard_normal(shape_w).astype(dtype)


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kernel", KERNELS, ids=[f"{r}x{s}" for r, s in KERNELS])
@pytest.mark.parametrize("flip", [False, True], ids=["correlate2d", "convolve2d"])
def test_single_channel_matches_scipy(runner, mode, kernel, flip):
    """One image, one filter: exactly SciPy's setting; 37x29 with the issue's 5x4 and 4x4 kernels among
    the others (before the fix, flip=True 'same' with an even kernel differed by up to 20)."""
    rng = np.random.default_rng(kernel[0] * 10 + kernel[1])
    x, w = _data(rng, (1, 1) + IMAGE, (1, 1) + kernel)
    expected, magnitude = scipy_conv(x, w, None, mode, flip)
    y = runner.call(gpuconv.conv2d, x, w, None, padding=gpuconv_padding(mode, kernel), flip=flip)
    assert_close(y, expected, magnitude, y.dtype, f"{runner.id} {mode} {kernel} flip={flip}")


@pytest.mark.parametrize("runner", GENERAL_CONV_RUNNERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channels_bias_and_dilation_match_scipy(runner, mode, dtype):
    """A batch, several channels summed, a bias, and dilation (SciPy gets the dilated kernel written out):
    both flips, even and odd kernels."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 15, 12)).astype(dtype)
    for kernel, dilation in (((4, 3), (1, 1)), ((2, 4), (2, 3)), ((3, 3), (2, 1))):
        w = rng.standard_normal((2, 3) + kernel).astype(dtype)
        b = rng.standard_normal(2).astype(dtype)
        for flip in (False, True):
            expected, magnitude = scipy_conv(x, w, b, mode, flip, dilation)
            y = runner.call(gpuconv.conv2d, x, w, b, padding=gpuconv_padding(mode, kernel, dilation),
                            dilation=dilation, flip=flip)
            assert_close(y, expected, magnitude, dtype,
                                  f"{runner.id} {mode} {kernel} dilation={dilation} flip={flip}")


STRIDED = [((5, 4), (2, 2), (1, 1)), ((4, 4), (3, 2), (1, 1)), ((2, 5), (2, 3), (1, 1)), ((3, 2), (2, 2), (2, 3)),
           ((6, 1), (4, 1), (1, 1))]


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("kernel,stride,dilation", STRIDED, ids=[f"k{k}-s{s}-d{d}" for k, s, d in STRIDED])
def test_strided_same_samples_scipys_full_result(runner, kernel, stride, dilation):
    """Stride > 1 with 'same' (TensorFlow/JAX SAME: output ceil(H/s)): output ``o`` is SciPy's 'full'
    result at ``o*s + (e-1) - low`` (``e`` the dilated kernel size, ``low`` the top or left padding), with
    the extra pixel of an odd total bottom/right for correlation and top/left for true convolution."""
    rng = np.random.default_rng(sum(kernel) + 10 * sum(stride))
    x, w = _data(rng, (1, 1) + IMAGE, (1, 1) + kernel)
    for flip in (False, True):
        full, full_mag = scipy_conv(x, w, None, "full", flip, dilation)
        (pt, _), (pl, _) = (same_padding_ref(n, k, s, d, flip)
                            for n, k, s, d in zip(IMAGE, kernel, stride, dilation))
        eh, ew = (d * (k - 1) + 1 for k, d in zip(kernel, dilation))
        P, Q = (-(-n // s) for n, s in zip(IMAGE, stride))
        rows = slice(eh - 1 - pt, eh - 1 - pt + (P - 1) * stride[0] + 1, stride[0])
        cols = slice(ew - 1 - pl, ew - 1 - pl + (Q - 1) * stride[1] + 1, stride[1])
        y = runner.call(gpuconv.conv2d, x, w, None, stride=stride, padding="same", dilation=dilation, flip=flip)
        assert y.shape == (1, 1, P, Q)
        assert_close(y, full[..., rows, cols], full_mag[..., rows, cols], y.dtype,
                              f"{runner.id} {kernel} stride={stride} flip={flip}")


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("stride", [1, 2, 3, (2, 3)], ids=["1", "2", "3", "2x3"])
def test_flip_same_is_the_mirror_of_correlation(runner, stride):
    """``conv2d(x, w, flip=True, padding='same')`` equals ``conv2d(x[::-1, ::-1], w, padding='same')``
    reversed in rows and columns, for every stride: the rule that puts true convolution's extra pixel
    top/left (docs/semantics.md). An even kernel and sizes that leave an odd total; the windows reach the
    last row and column (TensorFlow's total is not clamped at 0), which the identity needs."""
    rng = np.random.default_rng(3)
    x, w = _data(rng, (2, 2, 18, 13), (4, 1, 4, 2))  # two groups of one channel: every algorithm takes it
    mirrored = np.ascontiguousarray(x[..., ::-1, ::-1])
    y = runner.call(gpuconv.conv2d, x, w, None, stride=stride, padding="same", groups=2, flip=True)
    ref = runner.call(gpuconv.conv2d, mirrored, w, None, stride=stride, padding="same", groups=2)[..., ::-1, ::-1]
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
