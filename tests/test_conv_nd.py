"""conv1d / conv3d (issue 18): forward, gradients (``gpuconv.grad.conv1d_input`` ... ``conv3d_bias``) and the
transposed forms, on the NumPy path, on our CUDA kernels through the emulator (the launch code really runs:
1-D as a unit-height conv2d, the 3-D forward as conv3d_igemm -- tests/test_cuda_conv3d.py has that kernel's
own suite -- or, for another named 2-D algorithm, the depth-tap lowering, and the 3-D gradients as the
depth-tap lowering) and on a GPU where there is one, against

* the textbook N-D reference (tests/reference.py ``conv_nd_ref`` / ``conv_nd_grads_ref``, written from the
  definition, itself checked against PyTorch here) under the one tolerance model;
* PyTorch CPU (``F.conv1d`` / ``F.conv3d``, autograd, ``F.conv_transpose1d`` / ``3d``; skipped without torch);

plus what ``last_kernel()`` records, bitwise determinism of the 3-D CUDA path in both thread orders, the
1-D path passing views (no copy), non-finite weights over depth padding, and argument errors.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv._backend import CudaBackend, NumpyBackend, use_backend
from gpuconv._cuda.conv3d_igemm import SMALL_TILE_3D
from tests.cases import pairwise
from tests.reference import conv_nd_grads_ref, explicit_padding_nd, reference_conv_nd
from tests.runners import (CONV_RUNNERS, POOL_RUNNERS, RUNTIME_PARAMS, kernel_runtime, numpy_io, torch,
                           with_thread_order)
from tests.support import noncontiguous_view
from tests.tolerance import assert_close

RUNNERS = POOL_RUNNERS  # numpy / emulated / gpu, public functions without ``algo``
CHANNELS = {"g1": (3, 4, 1), "g2": (4, 6, 2), "dw": (3, 3, 3)}  # (C, K, groups)

DIMS_1D = {
    "L": (1, 7, 12), "S": (1, 3, 4), "stride": (1, 2, 3), "dilation": (1, 2),
    "padding": (0, 2, ((1, 2),), "same", "valid"), "channels": tuple(CHANNELS), "flip": (False, True),
    "activation": (None, "relu", "sigmoid"), "dtype": (np.float16, np.float32, np.float64),
    "layout": ("contiguous", "sliced"), "bias": (True, False),
}
DIMS_3D = {
    "DHW": ((1, 3, 4), (4, 5, 3), (5, 2, 6)), "TRS": ((1, 1, 1), (2, 3, 1), (3, 2, 2)),
    "stride": (1, (2, 1, 2), (1, 3, 1)), "dilation": (1, (2, 1, 1)),
    "padding": (0, (1, 0, 2), ((2, 0), (0, 1), (1, 1)), "same", "valid"), "channels": tuple(CHANNELS),
    "flip": (False, True), "activation": (None, "leaky_relu", "tanh"),
    "dtype": (np.float16, np.float32, np.float64), "layout": ("contiguous", "sliced"), "bias": (True, False),
}


def _t(v, n):
    return (v,) * n if isinstance(v, int) else tuple(v)


def _valid(n):
    def valid(c):
        size = (c["L"],) if n == 1 else c["DHW"]
        k = (c["S"],) if n == 1 else c["TRS"]
        s, d = _t(c["stride"], n), _t(c["dilation"], n)
        pad = explicit_padding_nd(c["padding"], k, s, d, size, c["flip"])
        return all(size[i] + sum(pad[i]) >= d[i] * (k[i] - 1) + 1 for i in range(n))
    return valid


CASES = {1: pairwise(DIMS_1D, _valid(1), seed=3), 3: pairwise(DIMS_3D, _valid(3), seed=4)}


def _case_id(n, i, c):
    return f"{n}d-{i}-" + "-".join(f"{k}{v if not isinstance(v, type) else v.__name__}" for k, v in c.items()
                                   if k in ("stride", "padding", "channels", "dtype", "layout"))


ALL_CASES = [pytest.param(n, c, id=_case_id(n, i, c)) for n in (1, 3) for i, c in enumerate(CASES[n])]


def case_data(n, c, seed=0):
    rng = np.random.default_rng(seed)
    C, K, groups = CHANNELS[c["channels"]]
    size = (c["L"],) if n == 1 else c["DHW"]
    k = (c["S"],) if n == 1 else c["TRS"]
    dt = c["dtype"]
    x = rng.standard_normal((2, C) + size).astype(dt)
    w = rng.standard_normal((K, C // groups) + k).astype(dt)
    b = rng.standard_normal(K).astype(dt) if c["bias"] else None
    x = noncontiguous_view(x, c["layout"], rng)
    kw = dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"], groups=groups)
    return x, w, b, kw


def conv_fn(n):
    return gpuconv.conv1d if n == 1 else gpuconv.conv3d


# --------------------------------------------------------------------------------------------
# the reference itself
# --------------------------------------------------------------------------------------------

@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.parametrize("n", [1, 3])
def test_nd_reference_matches_pytorch(n):
    import torch.nn.functional as F
    rng = np.random.default_rng(0)
    size, k = ((9,), (3,)) if n == 1 else ((5, 4, 6), (2, 3, 2))
    x = rng.standard_normal((2, 4) + size)
    w = rng.standard_normal((6, 2) + k)
    b = rng.standard_normal(6)
    s, d = (2,) * n, (1,) * (n - 1) + (2,)
    pad = tuple((1, 1) for _ in range(n))
    y, _ = reference_conv_nd(x, w, b, s, pad, d, 2)
    tf = F.conv1d if n == 1 else F.conv3d
    ref = tf(torch.tensor(x), torch.tensor(w), torch.tensor(b), s, 1, d, 2).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    gy = rng.standard_normal(ref.shape)
    tf(xt, wt, None, s, 1, d, 2).backward(torch.tensor(gy))
    gx, gw = conv_nd_grads_ref(x, w, gy, s, pad, d, 2, False)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gw, wt.grad.numpy(), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("n, case", ALL_CASES)
def test_forward_matches_reference(runner, n, case):
    x, w, b, kw = case_data(n, case)
    y = runner.call(conv_fn(n), x, w, b, **kw, flip=case["flip"], activation=case["activation"])
    ref, mag = reference_conv_nd(x, w, b, **kw, flip=case["flip"], activation=case["activation"])
    assert y.dtype == x.dtype and y.shape == ref.shape
    assert_close(y, ref, mag, x.dtype, f"{runner} conv{n}d")


@pytest.mark.parametrize("case", [pytest.param(c, id=f"3d-{i}") for i, c in enumerate(CASES[3])])
def test_numpy_depth_taps_match_reference(monkeypatch, case):
    """The NumPy forward runs ``numpy_im2col3d``; forced, the depth-tap lowering on NumPy gives the same."""
    from gpuconv._numpy import conv3d as numpy_conv3d
    monkeypatch.setattr(numpy_conv3d, "use_im2col3d", lambda geom: False)
    x, w, b, kw = case_data(3, case)
    y = gpuconv.conv3d(x, w, b, **kw, flip=case["flip"], activation=case["activation"])
    ref, mag = reference_conv_nd(x, w, b, **kw, flip=case["flip"], activation=case["activation"])
    assert_close(y, ref, mag, x.dtype, "numpy depth taps")
    assert all(k.startswith("conv3d depth tap ") for k in gpuconv.last_kernel().kernels)


@pytest.mark.parametrize("dt", [np.float16, np.float64])
def test_numpy_im2col3d_chunks_within_the_workspace(monkeypatch, dt):
    """With a workspace of a few KiB, one output depth per GEMM chunk; same values, recorded."""
    monkeypatch.setenv("GPUCONV_NUMPY_WORKSPACE_MB", "0.004")
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 4, 6, 5, 7)).astype(dt)
    w = rng.standard_normal((6, 2, 3, 2, 3)).astype(dt)
    b = rng.standard_normal(6).astype(dt)
    kw = dict(stride=(1, 2, 1), padding=((1, 2), (0, 1), (2, 0)), dilation=(2, 1, 1), groups=2)
    y = gpuconv.conv3d(x, w, b, **kw, flip=True, activation="sigmoid")
    ref, mag = reference_conv_nd(x, w, b, **kw, flip=True, activation="sigmoid")
    assert_close(y, ref, mag, dt, "numpy_im2col3d")
    assert gpuconv.last_kernel().kernels == ("numpy_im2col3d",)


@pytest.mark.parametrize("runner", [r for r in CONV_RUNNERS if r.values[0].kind != "numpy"])
@pytest.mark.parametrize("n", [1, 3])
def test_every_algorithm_runs_the_lowering(runner, n):
    """``algo=`` names the 2-D algorithm the 1-D call runs (``'auto'`` and ``'igemm'``: the one ``conv1d_igemm``
    launch). 3-D: ``'auto'`` and ``'igemm'`` run the one ``conv3d_igemm`` launch; any other name runs the depth-tap lowering with that 2-D algorithm per tap, and
    the record's first entry says so."""
    rng = np.random.default_rng(5)
    size, k = ((11,), (3,)) if n == 1 else ((4, 5, 6), (2, 3, 3))
    x = rng.standard_normal((2, 4) + size).astype(np.float32)
    w = rng.standard_normal((4, 2) + k).astype(np.float32)
    y = runner.call(conv_fn(n), x, w, None, 1, 1, 1, 2)
    ref, mag = reference_conv_nd(x, w, None, 1, 1, 1, 2)
    assert_close(y, ref, mag, x.dtype, str(runner))
    rec = gpuconv.last_kernel()
    assert rec.op == f"conv{n}d"
    algo = runner.algo
    if n == 1 and algo in ("auto", "igemm"):  # one conv1d_igemm launch (issue 18)
        assert rec.kernels == ("gpuconv::conv1d_igemm<float, 64, 64, 16, 8, 8>",), rec.kernels
    elif n == 1:
        assert all(k.startswith("conv1d as conv2d of height 1: gpuconv::conv2d_") for k in rec.kernels), rec.kernels
    elif algo in ("auto", "igemm"):
        t = SMALL_TILE_3D  # the tile small float32 layers run
        assert rec.kernels == (f"gpuconv::conv3d_igemm<float, {t.bm}, {t.bn}, {t.bk}, {t.tm}, {t.tn}>",)
    else:
        first, *taps = rec.kernels
        assert first == f"conv3d depth-tap lowering (algo={algo!r} names a 2-D algorithm, run per depth tap)"
        assert len(taps) == 2 and all(k.startswith("conv3d depth tap ") for k in taps), rec.kernels


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("n", [1, 3])
def test_forward_matches_pytorch(runner, n):
    import torch.nn.functional as F
    rng = np.random.default_rng(2)
    size, k = ((10,), (4,)) if n == 1 else ((5, 6, 7), (3, 2, 3))
    x = rng.standard_normal((3, 6) + size)[:, ::2]  # non-contiguous
    w = rng.standard_normal((6, 1) + k)
    b = rng.standard_normal(6)
    s, d = (2,) + (1,) * (n - 1), (1,) * (n - 1) + (2,)
    y = runner.call(conv_fn(n), x, w, b, s, "valid", d, 3, activation="relu")
    tf = F.conv1d if n == 1 else F.conv3d
    ref = torch.relu(tf(torch.tensor(np.ascontiguousarray(x)), torch.tensor(w), torch.tensor(b), s, 0, d, 3))
    np.testing.assert_allclose(y, ref.numpy(), rtol=1e-11, atol=1e-11)


def test_conv1d_flip_same_is_numpy_convolve():
    """True convolution with 'same' padding (odd pixel at the low end for an even kernel) is NumPy's."""
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal(11), rng.standard_normal(4)
    y = gpuconv.conv1d(x[None, None], w[None, None], padding="same", flip=True)
    np.testing.assert_allclose(y[0, 0], np.convolve(x, w, mode="same"), rtol=1e-12, atol=1e-12)


def test_conv1d_passes_views_to_the_2d_convolution():
    """1-D runs the 2-D path on ``(N, C, 1, L)`` views of the caller's arrays: no copy."""
    seen = []

    class Spy(NumpyBackend):
        def conv2d(self, x, w, b, g, algo):
            seen.append((x, w, g))
            return super().conv2d(x, w, b, g, algo)

    x, w = np.ones((2, 3, 9)), np.ones((4, 3, 2))
    with use_backend(Spy()):
        gpuconv.conv1d(x, w, stride=2)
    (x4, w4, g), = seen
    assert np.shares_memory(x4, x) and np.shares_memory(w4, w)
    assert (x4.shape, w4.shape, g.R, g.H, g.P) == ((2, 3, 1, 9), (4, 3, 1, 2), 1, 1, 1)


@pytest.mark.parametrize("runner", RUNNERS)
def test_conv3d_infinite_weight_over_depth_padding_is_nan(runner):
    """Padding is a zero multiplied like any input (docs/semantics.md): an infinite weight on a depth tap that
    reads the depth padding gives NaN there, as the dense definition does."""
    x = np.ones((1, 1, 3, 3, 3))
    w = np.zeros((2, 1, 3, 1, 1))
    w[0, 0, 0] = np.inf  # filter 0's first depth tap: reads padding for output depth 0 only
    y = runner.call(gpuconv.conv3d, x, w, None, 1, (1, 0, 0))
    ref, mag = reference_conv_nd(x, w, None, 1, (1, 0, 0))
    assert_close(y, ref, mag, x.dtype, str(runner))
    assert np.isnan(y[0, 0, 0]).all() and np.isinf(y[0, 0, 1:]).all() and (y[0, 1] == 0).all()


def test_unbatched_and_empty_batch():
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((3, 2, 2, 2, 2))
    y = gpuconv.conv3d(x, w, padding=1)
    np.testing.assert_allclose(y, gpuconv.conv3d(x[None], w, padding=1)[0])
    assert y.shape == (3, 4, 5, 6)
    assert gpuconv.conv1d(np.ones((0, 2, 5)), np.ones((3, 2, 2))).shape == (0, 3, 4)
    assert gpuconv.last_kernel().kernel == "none (empty output)"


# --------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------

GRAD_CASES = {
    "1d-s2-d2-g2": (1, (2, 4, 13), (6, 2, 3), 2, ((1, 2),), 2, 2, False, np.float64),
    "1d-same-flip-dw": (1, (2, 3, 8), (3, 1, 4), 1, "same", 1, 3, True, np.float32),
    "1d-f16": (1, (1, 4, 9), (2, 4, 3), 3, 1, 1, 1, False, np.float16),
    "3d-s212-g2": (3, (2, 4, 5, 4, 6), (6, 2, 3, 2, 3), (2, 1, 2), (1, 0, 2), (1, 2, 1), 2, False, np.float64),
    "3d-same-flip": (3, (1, 3, 4, 5, 3), (2, 3, 2, 3, 2), 1, "same", 1, 1, True, np.float32),
    "3d-s3-f16": (3, (2, 2, 7, 3, 4), (2, 2, 2, 2, 1), (3, 1, 2), ((2, 0), (1, 1), (0, 1)), 1, 1, False,
                  np.float16),
}


@pytest.mark.parametrize("layout", ["contiguous", "sliced"])
@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("name", list(GRAD_CASES))
def test_gradients_match_reference(runner, name, layout):
    n, xs, ws, stride, padding, dilation, groups, flip, dt = GRAD_CASES[name]
    rng = np.random.default_rng(6)
    x, w = rng.standard_normal(xs).astype(dt), rng.standard_normal(ws).astype(dt)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y = gpuconv.conv1d(x, w, **kw, flip=flip) if n == 1 else gpuconv.conv3d(x, w, **kw, flip=flip)
    gy = rng.standard_normal(y.shape).astype(dt)
    x, w, gy = (noncontiguous_view(a, layout, rng) for a in (x, w, gy))
    s, d = _t(stride, n), _t(dilation, n)
    pad = explicit_padding_nd(padding, ws[2:], s, d, xs[2:], flip)
    gx_ref, gw_ref = conv_nd_grads_ref(x, w, gy, s, pad, d, groups, flip)
    gx_mag, gw_mag = conv_nd_grads_ref(np.abs(x), np.abs(w), np.abs(gy), s, pad, d, groups, flip)
    grad = gpuconv.grad
    gx = runner.call(getattr(grad, f"conv{n}d_input"), xs, w, gy, **kw, flip=flip)
    assert gx.dtype == dt and gx.shape == xs
    assert_close(gx, gx_ref, gx_mag, dt, f"{runner} conv{n}d_input")
    assert gpuconv.last_kernel().direction == "backward_data"
    gw = runner.call(getattr(grad, f"conv{n}d_weight"), x, ws, gy, **kw, flip=flip)
    assert gw.dtype == dt and gw.shape == ws
    assert_close(gw, gw_ref, gw_mag, dt, f"{runner} conv{n}d_weight")
    gb = runner.call(getattr(grad, f"conv{n}d_bias"), gy)
    gy64 = gy.astype(np.float64)
    assert_close(gb, gy64.sum(axis=(0,) + tuple(range(2, n + 2))),
                 np.abs(gy64).sum(axis=(0,) + tuple(range(2, n + 2))), dt, "bias")


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("n", [1, 3])
def test_gradients_match_autograd(runner, n):
    import torch.nn.functional as F
    rng = np.random.default_rng(7)
    size, k = ((12,), (3,)) if n == 1 else ((5, 4, 5), (3, 2, 2))
    x, w = rng.standard_normal((2, 4) + size), rng.standard_normal((6, 2) + k)
    s, p, d = (2,) * n, (1,) * n, (1,) * (n - 1) + (2,)
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    tf = F.conv1d if n == 1 else F.conv3d
    yt = tf(xt, wt, None, s, p, d, 2)
    gy = rng.standard_normal(yt.shape)
    yt.backward(torch.tensor(gy))
    gx = runner.call(getattr(gpuconv.grad, f"conv{n}d_input"), x.shape, w, gy, s, p, d, 2)
    gw = runner.call(getattr(gpuconv.grad, f"conv{n}d_weight"), x, w.shape, gy, s, p, d, 2)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(gw, wt.grad.numpy(), rtol=1e-11, atol=1e-11)


TRANSPOSE_CASES = {
    "1d": (1, (2, 4, 6), (4, 3, 3), 3, 1, 2, 2, 1),
    "1d-dil-op": (1, (1, 2, 5), (2, 2, 2), 2, ((0, 1),), 2, 1, 3),
    "3d": (3, (2, 4, 3, 4, 2), (4, 3, 3, 2, 3), (2, 3, 1), (1, 0, 1), (1, 2, 0), 2, (1, 1, 2)),
}


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("name", list(TRANSPOSE_CASES))
def test_conv_transpose_matches_pytorch(runner, name):
    import torch.nn.functional as F
    n, xs, ws, stride, padding, output_padding, groups, dilation = TRANSPOSE_CASES[name]
    rng = np.random.default_rng(8)
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[1] * groups)
    fn = getattr(gpuconv, f"conv_transpose{n}d")
    y = runner.call(fn, x, w, b, stride, padding, output_padding, groups, dilation)
    tp = padding
    xt = torch.tensor(x)
    ref = getattr(F, f"conv_transpose{n}d")
    if isinstance(padding, tuple) and isinstance(padding[0], tuple):  # asymmetric: crop PyTorch's output
        full = ref(xt, torch.tensor(w), torch.tensor(b), stride, 0, output_padding, groups, dilation).numpy()
        (lo, hi), = padding
        expected = full[..., lo:full.shape[-1] - hi]
    else:
        expected = ref(xt, torch.tensor(w), torch.tensor(b), stride, tp, output_padding, groups, dilation).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-11, atol=1e-11)
    assert gpuconv.last_kernel().op == f"conv{n}d"


@pytest.mark.parametrize("kind", [p.values[0] for p in RUNTIME_PARAMS])
def test_conv3d_lowering_is_bitwise_deterministic(kind):
    """Forward (conv3d_igemm) and both gradients (the depth-tap lowering) give the same bytes on the emulator
    with the threads of each block started in both orders (on a GPU in the hardware's own order), with the
    same kernels."""
    rt = kernel_runtime(kind)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 5, 4, 5)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 2, 3)).astype(np.float32)
    gy = rng.standard_normal((2, 4, 3, 5, 3)).astype(np.float32)
    kw = dict(stride=(2, 1, 2), padding=1)

    def run(rt, x, w, gy):
        with use_backend(CudaBackend(rt)):
            y = gpuconv.conv3d(x, w, None, **kw)
            gx = gpuconv.grad.conv3d_input(x.shape, w, gy, **kw)
            gw = gpuconv.grad.conv3d_weight(x, w.shape, gy, **kw)
            return y, gx, gw, gpuconv.last_kernel().kernels

    results = [numpy_io(with_thread_order(rt, o), run, x, w, gy) for o in ("forward", "reversed", "forward")]
    assert results[0][0].shape == gy.shape
    for other in results[1:]:
        for a, b in zip(results[0][:3], other[:3]):
            assert a.tobytes() == b.tobytes()
        assert other[3] == results[0][3]


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------

ERRORS = [
    (lambda: gpuconv.conv1d(np.ones((2, 3, 4, 5)), np.ones((2, 3, 1))), ValueError,
     r"Expected 2D \(unbatched\) or 3D \(batched\) input to conv1d, but got input of size: \[2, 3, 4, 5\]"),
    (lambda: gpuconv.conv3d(np.ones((2, 3, 4, 5)), np.ones((2, 3, 1, 1, 1))), ValueError,
     r"Given groups=1, weight of size \[2, 3, 1, 1, 1\], expected input\[1, 2, 3, 4, 5\] to have 3 channels"),
    (lambda: gpuconv.conv3d(np.ones((1, 2, 4, 4, 4)), np.ones((2, 2, 3, 3))), ValueError,
     r"weight must be 5-D \(out_channels, in_channels/groups, kD, kH, kW\)"),
    (lambda: gpuconv.conv1d(np.ones((1, 4, 5)), np.ones((3, 2, 1)), groups=2), ValueError,
     r"expected weight to be divisible by 2 at dimension 0"),
    (lambda: gpuconv.conv1d(np.ones((1, 2, 5)), np.ones((3, 2, 1)), padding=(1, 2)), TypeError,
     r"padding must be an int, a tuple of 1 ints, \(\(left, right\),\) of ints, 'valid' or 'same'"),
    (lambda: gpuconv.conv3d(np.ones((1, 2, 5, 5, 5)), np.ones((3, 2, 1, 1, 1)), stride=(1, 2)), TypeError,
     r"stride must be an int or a tuple of 3 ints, got \(1, 2\)"),
    (lambda: gpuconv.conv3d(np.ones((1, 2, 5, 5, 5)), np.ones((3, 2, 1, 1, 1)), dilation=0), ValueError,
     r"dilation must be positive"),
    (lambda: gpuconv.conv3d(np.ones((1, 2, 2, 5, 5)), np.ones((3, 2, 3, 1, 1))), ValueError,
     r"Calculated padded input size per channel: \(2 x 5 x 5\). Kernel size: \(3 x 1 x 1\)"),
    (lambda: gpuconv.conv1d(np.ones((1, 2, 5)), np.ones((3, 2, 1)), padding="full"), ValueError,
     r"Invalid padding string 'full'"),
    (lambda: gpuconv.conv1d(np.ones((1, 2, 5)), np.ones((3, 2, 1)), np.ones(2)), ValueError,
     r"expected bias to be 1-dimensional with 3 elements"),
    (lambda: gpuconv.conv1d(np.ones((1, 2, 5)), np.ones((3, 2, 1), np.float32)), TypeError,
     r"conv1d\(\): expected all arrays to have the same dtype"),
    (lambda: gpuconv.conv3d([1.0], np.ones((3, 2, 1, 1, 1))), TypeError,
     r"conv3d\(\): argument 'input' must be a NumPy or CuPy array, got list"),
    (lambda: gpuconv.conv1d(np.ones((1, 2, 5)), np.ones((3, 2, 1)), algo="igemm"), ValueError,
     r"selects a CUDA kernel, but the inputs are NumPy arrays"),
    (lambda: gpuconv.grad.conv3d_input((1, 2, 4, 4, 4), np.ones((3, 2, 1, 1, 1)), np.ones((1, 3, 4, 4, 3))),
     ValueError, r"conv3d_input\(\): expected grad_output of size \[1, 3, 4, 4, 4\]"),
    (lambda: gpuconv.grad.conv1d_weight(np.ones((1, 2, 5)), (3, 2), np.ones((1, 3, 5))), ValueError,
     r"conv1d_weight\(\): weight_size must have 3 entries"),
    (lambda: gpuconv.grad.conv3d_bias(np.ones((3, 4))), ValueError, r"conv3d_bias\(\): expected grad_output of 4"),
    (lambda: gpuconv.conv_transpose3d(np.ones((1, 2, 3, 3, 3)), np.ones((2, 2, 2, 2, 2)), stride=2,
                                      output_padding=2), ValueError,
     r"output padding must be smaller than either stride or dilation"),
    (lambda: gpuconv.conv_transpose1d(np.ones((1, 2, 3)), np.ones((2, 2, 2)), padding="same"), TypeError,
     r"conv_transpose1d\(\): argument 'padding' must be"),
    (lambda: gpuconv.conv_transpose1d(np.ones((1, 3, 3)), np.ones((2, 2, 2))), ValueError,
     r"Given transposed=1, weight of size \[2, 2, 2\], expected input\[1, 3, 3\] to have 2 channels"),
]


@pytest.mark.parametrize("call, exc, message", ERRORS, ids=[f"e{i}" for i in range(len(ERRORS))])
def test_errors(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_2d_geometry_unchanged_by_nd_module():
    """conv2d's own validation (and messages) are untouched: the N-D geometry wraps them."""
    with pytest.raises(ValueError, match=r"Expected 3D \(unbatched\) or 4D \(batched\) input to conv2d"):
        gpuconv.conv2d(np.ones((1, 2, 5, 5, 5)), np.ones((3, 2, 1, 1)))


# --------------------------------------------------------------------------------------------
# random problems (hypothesis, an optional test dependency: these tests only exist with it)
# --------------------------------------------------------------------------------------------

try:
    from hypothesis import HealthCheck, given, settings, strategies as st
except ImportError:
    given = None

if given is not None:
    @st.composite
    def nd_problems(draw):
        n = draw(st.sampled_from([1, 3]))
        groups = draw(st.sampled_from([1, 2]))
        k = tuple(draw(st.integers(1, 3)) for _ in range(n))
        s = tuple(draw(st.integers(1, 2)) for _ in range(n))
        d = tuple(draw(st.integers(1, 2)) for _ in range(n))
        pad = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(n))
        size = tuple(draw(st.integers(max(1, (k[i] - 1) * d[i] + 1 - sum(pad[i])), 6)) for i in range(n))
        return dict(n=n, N=draw(st.integers(1, 2)), C=groups * draw(st.integers(1, 2)),
                    K=groups * draw(st.integers(1, 2)), groups=groups, k=k, s=s, d=d, pad=pad, size=size,
                    flip=draw(st.booleans()), dtype=draw(st.sampled_from([np.float32, np.float64])),
                    seed=draw(st.integers(0, 2**31)))

    @pytest.mark.parametrize("runner", RUNNERS)
    @settings(max_examples=12, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(p=nd_problems())
    def test_random_problems_forward_and_gradients(runner, p):
        rng = np.random.default_rng(p["seed"])
        n, dt = p["n"], p["dtype"]
        x = rng.standard_normal((p["N"], p["C"]) + p["size"]).astype(dt)
        w = rng.standard_normal((p["K"], p["C"] // p["groups"]) + p["k"]).astype(dt)
        kw = dict(stride=p["s"], padding=p["pad"], dilation=p["d"], groups=p["groups"])
        y = runner.call(conv_fn(n), x, w, None, **kw, flip=p["flip"])
        ref, mag = reference_conv_nd(x, w, None, **kw, flip=p["flip"])
        assert_close(y, ref, mag, dt, f"{runner} conv{n}d")
        gy = rng.standard_normal(y.shape).astype(dt)
        gx_ref, gw_ref = conv_nd_grads_ref(x, w, gy, p["s"], p["pad"], p["d"], p["groups"], p["flip"])
        gx_mag, gw_mag = conv_nd_grads_ref(np.abs(x), np.abs(w), np.abs(gy), p["s"], p["pad"], p["d"],
                                           p["groups"], p["flip"])
        gx = runner.call(getattr(gpuconv.grad, f"conv{n}d_input"), x.shape, w, gy, **kw, flip=p["flip"])
        assert_close(gx, gx_ref, gx_mag, dt, f"{runner} conv{n}d_input")
        gw = runner.call(getattr(gpuconv.grad, f"conv{n}d_weight"), x, w.shape, gy, **kw, flip=p["flip"])
        assert_close(gw, gw_ref, gw_mag, dt, f"{runner} conv{n}d_weight")
