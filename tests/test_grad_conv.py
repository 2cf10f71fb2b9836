"""Convolution gradients (issue 17): ``gpuconv.grad.conv2d_input`` / ``conv2d_weight`` /
``conv2d_bias``, ``gpuconv.conv2d_backward`` and ``gpuconv.conv_transpose2d``, on the NumPy path and on our
CUDA kernels (emulated here, real on a GPU), against

* a textbook gradient written from the definition (``grads_ref``: one einsum scatter per group and filter
  tap over the zero-padded input, independent of gpuconv and of its lowering onto the forward convolution),
  under the one tolerance model (tests/tolerance.py; the magnitude is the same gradient of absolute values);
* ``torch.autograd`` (float64; skipped without torch), and ``F.conv_transpose2d``;
* a central finite difference, and the adjoint identities ``<conv2d(x, w), y> == <x, conv2d_input(...)>
  == <w, conv2d_weight(...)>``;

plus argument errors, what ``last_kernel()`` records, and bitwise determinism on the emulator in both
thread orders. On CUDA arrays the filter gradient runs the dedicated kernels (and, in ``conv2d_backward``
with an activation, the fused bias kernel); their own suite is tests/test_cuda_backward_filter.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv import _grad_conv as G
from gpuconv._backend import CudaBackend, use_backend
from tests.cases import pairwise, valid_for
from tests.reference import apply_activation, conv2d_ref, explicit_padding, pair
from tests.runners import (POOL_RUNNERS, RUNTIME_PARAMS, kernel_runtime, numpy_io, torch,
                           with_thread_order)
from tests.support import make_layout
from tests.tolerance import assert_close

# numpy / emulated / gpu, public functions called without an ``algo`` (the gradients take none)
GRAD_RUNNERS = POOL_RUNNERS
BACKEND_NAMES = {"numpy": "numpy", "emulated": "emulated", "gpu": "cupy"}  # Runner.kind -> record's backend
CHANNELS = {"g1": (3, 4, 1), "g2": (4, 6, 2), "dw": (3, 3, 3), "dw2": (2, 4, 2)}  # (C, K, groups)
DERIVATIVES = {  # d act / d z, from the activated value ``out`` (docs/gradients.md)
    None: lambda out: np.ones_like(out),
    "relu": lambda out: (out > 0).astype(np.float64),
    "leaky_relu": lambda out: np.where(out > 0, 1.0, 0.01),
    "sigmoid": lambda out: out * (1 - out),
    "tanh": lambda out: 1 - out * out,
}


# --------------------------------------------------------------------------------------------
# the textbook reference
# --------------------------------------------------------------------------------------------

def grads_ref(x, w, gy, stride, pad, dilation, groups, flip):
    """``(gx, gw, gb)`` in float64 from the definition of conv2d (docs/semantics.md): every output
    ``y[n, k, p, q]`` adds ``xpad[n, g*Cg + c, p*sh + r*dh, q*sw + s*dw] * w[k, c, r', s']`` (``(r', s')``
    rotated for flip), so ``gy[n, k, p, q]`` flows back to exactly those two factors' partners."""
    x, w, gy = (np.asarray(a, dtype=np.float64) for a in (x, w, gy))
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    pt, pb, pl, pr = pad
    P, Q = gy.shape[2:]
    xpad = np.zeros((N, C, H + pt + pb, W + pl + pr))
    xpad[:, :, pt:pt + H, pl:pl + W] = x
    gxpad = np.zeros_like(xpad)
    gw = np.zeros_like(w)
    rows, cols = sh * np.arange(P), sw * np.arange(Q)
    Kg = K // groups
    for g in range(groups):
        cs, ks = slice(g * Cg, (g + 1) * Cg), slice(g * Kg, (g + 1) * Kg)
        for r in range(R):
            for s in range(S):
                rr, ss = (R - 1 - r, S - 1 - s) if flip else (r, s)
                hi, wi = r * dh + rows[:, None], s * dw + cols[None, :]  # distinct positions per tap
                window = xpad[:, cs][:, :, hi, wi]  # (N, Cg, P, Q)
                gw[ks, :, rr, ss] += np.einsum("ncpq,nkpq->kc", window, gy[:, ks])
                gxpad[:, cs, hi, wi] += np.einsum("nkpq,kc->ncpq", gy[:, ks], w[ks, :, rr, ss])
    return gxpad[:, :, pt:pt + H, pl:pl + W], gw, gy.sum(axis=(0, 2, 3))


@pytest.mark.parametrize("seed", range(4))
def test_reference_gradients_are_the_adjoint_of_the_reference_forward(seed):
    """The gradient reference itself, against tests/reference.py's textbook forward ``conv2d_ref``:
    ``<conv2d_ref(x, w), gy> == <x, gx> == <w, gw>`` and ``gb = sum(gy)``."""
    rng = np.random.default_rng(seed)
    groups = [1, 2, 3, 1][seed]
    x, w = rng.standard_normal((2, 2 * groups, 7, 6)), rng.standard_normal((2 * groups, 2, 3, 2))
    stride, pad, dilation, flip = [(1, 1), (2, 3), (3, 1), (2, 2)][seed], (1, 0, 2, 1), (1, 2), seed % 2 == 1
    y = conv2d_ref(x, w, None, stride, pad, dilation, groups, flip)
    gy = rng.standard_normal(y.shape)
    gx, gw, gb = grads_ref(x, w, gy, stride, pad, dilation, groups, flip)
    lhs = np.vdot(y, gy)
    assert np.vdot(x, gx) == pytest.approx(lhs, rel=1e-12) and np.vdot(w, gw) == pytest.approx(lhs, rel=1e-12)
    np.testing.assert_allclose(gb, gy.sum(axis=(0, 2, 3)))


def reference_grads(x, w, gy, stride=1, padding=0, dilation=1, groups=1, flip=False):
    """``grads_ref`` with gpuconv's argument forms; returns ``(grads, magnitudes)``, the magnitudes being
    the same gradients of ``|x|``, ``|w|``, ``|gy|`` (the sum of the absolute terms, tests/tolerance.py)."""
    stride, dilation = pair(stride), pair(dilation)
    pad = explicit_padding(padding, w.shape[2:], stride, dilation, x.shape[2:], flip)
    args = (stride, pad, dilation, groups, flip)
    return grads_ref(x, w, gy, *args), grads_ref(np.abs(x), np.abs(w), np.abs(gy), *args)


def forward_shape(x_shape, w_shape, stride, padding, dilation, flip):
    stride, dilation = pair(stride), pair(dilation)
    pt, pb, pl, pr = explicit_padding(padding, w_shape[2:], stride, dilation, x_shape[2:], flip)
    P = (x_shape[2] + pt + pb - dilation[0] * (w_shape[2] - 1) - 1) // stride[0] + 1
    Q = (x_shape[3] + pl + pr - dilation[1] * (w_shape[3] - 1) - 1) // stride[1] + 1
    return (x_shape[0], w_shape[0], P, Q)


# --------------------------------------------------------------------------------------------
# the matrix: every argument form on every backend, against the textbook reference
# --------------------------------------------------------------------------------------------

DIMS = {
    "hw": [(7, 9), (6, 5), (9, 4)],
    "kernel": [(1, 1), (3, 3), (2, 4), (5, 3)],
    "stride": [1, 2, 3, (1, 2)],
    "padding": [0, 1, (2, 1), ((0, 2), (1, 0)), "valid", "same"],
    "dilation": [1, 2, (2, 1)],
    "channels": list(CHANNELS),
    "N": [0, 1, 3],
    "dtype": [np.float16, np.float32, np.float64],
    "flip": [False, True],
    "layout": ["contiguous", "sliced", "transposed"],
}


def case_shapes(case):
    C, K, groups = CHANNELS[case["channels"]]
    return (case["N"], C) + case["hw"], (K, C // groups) + case["kernel"], groups


def _valid_geometry(case):
    x_shape, w_shape, _ = case_shapes(case)
    P, Q = forward_shape(x_shape, w_shape, case["stride"], case["padding"], case["dilation"], case["flip"])[2:]
    if min(P, Q) < 1:
        raise ValueError("kernel larger than the padded input")


# pairwise over every dimension, a second cover of the dimensions that pick different lowerings (stride
# phases, padding crops, groups, dtype) at one size, and 'same' with every stride, flip and odd/even kernel
# (where the odd padding pixel's side matters)
EXTRA_DIMS = dict({k: DIMS[k] for k in ("kernel", "stride", "padding", "channels", "dtype", "flip")},
                  hw=[(7, 6)], dilation=[1, (1, 2)], N=[2], layout=["contiguous", "sliced"])
SAME_CASES = [dict(hw=(7, 8), kernel=k, stride=s, padding="same", dilation=d, channels="g2", N=2,
                   dtype=np.float64, flip=f, layout="contiguous")
              for k in [(3, 3), (2, 4), (5, 2)] for s in [1, 2, 3, (2, 1)] for f in [False, True]
              for d in [1 if s != 3 else 2]]
CASES = (pairwise(DIMS, valid_for(_valid_geometry), seed=3) + pairwise(EXTRA_DIMS, valid_for(_valid_geometry), seed=5)
         + SAME_CASES)


def case_id(case):
    def f(v):
        return str(v).replace(" ", "")
    return "-".join([f"{case['N']}x{case['channels']}x{case['hw'][0]}x{case['hw'][1]}",
                     f"k{case['kernel'][0]}x{case['kernel'][1]}", f"s{f(case['stride'])}",
                     f"p{f(case['padding'])}", f"d{f(case['dilation'])}", np.dtype(case["dtype"]).name,
                     "flip" if case["flip"] else "xcorr", case["layout"]])


def case_data(case, seed=0):
    rng = np.random.default_rng(seed)
    x_shape, w_shape, groups = case_shapes(case)
    dt = case["dtype"]
    x = rng.standard_normal(x_shape).astype(dt)
    w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(dt)
    y_shape = forward_shape(x_shape, w_shape, case["stride"], case["padding"], case["dilation"], case["flip"])
    gy = rng.standard_normal(y_shape).astype(dt)
    if case["layout"] != "contiguous" and case["N"] > 0:
        x, gy = make_layout(x, case["layout"], rng), make_layout(gy, case["layout"], rng)
    if case["layout"] != "contiguous":
        w = make_layout(w, case["layout"], rng)
    return x, w, gy, groups


def check_case(runner, case):
    x, w, gy, groups = case_data(case)
    args = (case["stride"], case["padding"], case["dilation"], groups)
    flip = case["flip"]
    gx = runner.call(lambda w, gy: G.conv2d_input(x.shape, w, gy, *args, flip=flip), w, gy)
    gw = runner.call(lambda x, gy: G.conv2d_weight(x, w.shape, gy, *args, flip=flip), x, gy)
    rec = gpuconv.last_kernel()
    assert (rec.op, rec.direction, rec.backend) == ("conv2d", "backward_filter", BACKEND_NAMES[runner.kind])
    gb = runner.call(G.conv2d_bias, gy)
    (ex, ew, eb), (mx, mw, mb) = reference_grads(x, w, gy, *args, flip=flip)
    dt = case["dtype"]
    for name, got, exp, mag in (("grad_input", gx, ex, mx), ("grad_weight", gw, ew, mw), ("grad_bias", gb, eb, mb)):
        assert got.dtype == dt, name
        assert_close(got, exp, mag, dt, what=f"{name} {case_id(case)}")


@pytest.mark.parametrize("runner", GRAD_RUNNERS)
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_gradients(runner, case):
    check_case(runner, case)


# --------------------------------------------------------------------------------------------
# conv2d_backward: activation, mask, unbatched; against the reference and torch.autograd
# --------------------------------------------------------------------------------------------

ACT_CASES = pairwise({
    "activation": ["relu", "leaky_relu", "sigmoid", "tanh"],
    "dtype": [np.float16, np.float32, np.float64],
    "geometry": ["s2-same-flip", "s1-pad1-g2", "s3-dil2-dw", "unbatched"],
}, seed=2)
GEOMETRIES = {  # x shape, w shape, stride, padding, dilation, groups, flip
    "s2-same-flip": ((2, 3, 8, 7), (4, 3, 4, 3), 2, "same", 1, 1, True),
    "s1-pad1-g2": ((3, 4, 6, 6), (6, 2, 3, 3), 1, 1, 1, 2, False),
    "s3-dil2-dw": ((1, 3, 11, 10), (3, 1, 3, 2), 3, ((1, 2), (0, 1)), 2, 3, False),
    "unbatched": ((3, 7, 5), (2, 3, 2, 2), (1, 2), 0, (2, 1), 1, True),
}


def _act_id(c):
    return f"{c['activation']}-{np.dtype(c['dtype']).name}-{c['geometry']}"


@pytest.mark.parametrize("runner", GRAD_RUNNERS)
@pytest.mark.parametrize("case", ACT_CASES, ids=[_act_id(c) for c in ACT_CASES])
def test_backward_with_activation(runner, case):
    xs, ws, stride, padding, dilation, groups, flip = GEOMETRIES[case["geometry"]]
    dt, act = case["dtype"], case["activation"]
    rng = np.random.default_rng(1)
    x = rng.standard_normal(xs).astype(dt)
    w = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(dt)
    b = rng.standard_normal(ws[0]).astype(dt)
    args = (stride, padding, dilation, groups)
    out = gpuconv.conv2d(x, w, b, *args, flip=flip, activation=act)  # the forward result, as a user has it
    # x64 (exact): leaky_relu's 0.01 slope would otherwise make float16 gradients subnormal (below 6.1e-5,
    # where float16 has fewer bits than the tolerance model assumes)
    gy = (64 * rng.standard_normal(out.shape)).astype(dt)
    gx, gw, gb = runner.call(lambda gy, x, w, out: G.conv2d_backward(gy, x, w, *args, flip=flip, activation=act,
                                                                     output=out), gy, x, w, out)
    gz = gy.astype(np.float64) * DERIVATIVES[act](out.astype(np.float64))  # dL/d(pre-activation)
    batched = len(xs) == 4
    x4, gz4 = (x, gz) if batched else (x[None], gz[None])
    (ex, ew, eb), (mx, mw, mb) = reference_grads(x4, w, gz4, *args, flip=flip)
    if not batched:
        ex, mx = ex[0], mx[0]
    for name, got, exp, mag in (("grad_input", gx, ex, mx), ("grad_weight", gw, ew, mw), ("grad_bias", gb, eb, mb)):
        assert got.dtype == dt
        assert_close(got, exp, mag, dt, what=name)


def _torch_grads(x, w, b, gy, stride, padding, dilation, groups, flip, activation):
    """torch.autograd's gradients of gpuconv's forward (padding made explicit with F.pad, flip as a
    rotated weight), float64."""
    F = torch.nn.functional
    stride, dilation = pair(stride), pair(dilation)
    pt, pb, pl, pr = explicit_padding(padding, w.shape[2:], stride, dilation, x.shape[-2:], flip)
    xt, wt, bt = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, w, b))
    z = F.conv2d(F.pad(xt, (pl, pr, pt, pb)), wt.flip(2, 3) if flip else wt, bt, stride, 0, dilation, groups)
    y = {None: lambda t: t, "relu": F.relu, "leaky_relu": F.leaky_relu, "sigmoid": torch.sigmoid,
         "tanh": torch.tanh}[activation](z)
    y.backward(torch.tensor(gy, dtype=torch.float64))
    return y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy()


TORCH_CASES = pairwise({
    "geometry": list(GEOMETRIES) + ["s2-p0-asym-k", "s1-same-even-flip", "n0"],
    "activation": [None, "relu", "leaky_relu", "sigmoid", "tanh"],
    "zeros": [False, True],  # an input of exact zeros: every pre-activation 0 (the derivative at 0)
}, seed=4)
GEOMETRIES_TORCH = dict(GEOMETRIES, **{
    "s2-p0-asym-k": ((2, 2, 9, 8), (3, 2, 4, 1), 2, 0, 1, 1, False),
    "s1-same-even-flip": ((1, 2, 6, 7), (2, 2, 4, 2), 1, "same", (1, 2), 1, True),
    "n0": ((0, 2, 5, 5), (4, 1, 3, 3), (2, 1), ((1, 0), (0, 2)), 1, 2, False),
})


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.torch
@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: f"{c['geometry']}-{c['activation']}-{c['zeros']}")
def test_backward_matches_torch_autograd(case):
    xs, ws, stride, padding, dilation, groups, flip = GEOMETRIES_TORCH[case["geometry"]]
    rng = np.random.default_rng(7)
    x = np.zeros(xs) if case["zeros"] else rng.standard_normal(xs)
    w, b = rng.standard_normal(ws), np.zeros(ws[0])  # no bias: a zero input gives pre-activations of 0
    args = (stride, padding, dilation, groups)
    out = gpuconv.conv2d(x, w, b, *args, flip=flip, activation=case["activation"])
    gy = rng.standard_normal(out.shape)
    ty, tx, tw, tb = _torch_grads(x, w, b, gy, *args, flip, case["activation"])
    np.testing.assert_allclose(out, ty, rtol=1e-12, atol=1e-12)
    gx, gw, gb = G.conv2d_backward(gy, x, w, *args, flip=flip, activation=case["activation"], output=out)
    for got, exp in ((gx, tx), (gw, tw), (gb, tb)):
        assert got.shape == exp.shape
        np.testing.assert_allclose(got, exp, rtol=1e-10, atol=1e-10)


def test_backward_output_mask_and_record():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 2, 6, 6)), rng.standard_normal((3, 2, 3, 3))
    gy = rng.standard_normal((2, 3, 2, 2))
    full = G.conv2d_backward(gy, x, w, 2)
    rec = gpuconv.last_kernel()
    assert (rec.op, rec.backend, rec.direction) == ("conv2d", "numpy", "backward")
    # the NumPy path's direct gradients (tests/test_numpy_conv_grad.py), then the bias sum
    assert rec.kernels == ("numpy_col2im", "numpy_im2col_filter", "numpy.sum")
    for mask in [(True, False, False), (False, True, False), (False, False, True), (False, False, False)]:
        part = G.conv2d_backward(gy, x, w, 2, output_mask=mask)
        for m, p, f in zip(mask, part, full):
            assert (p is None) if not m else np.array_equal(p, f)
    G.conv2d_input(x.shape, w, gy, 2)
    assert gpuconv.last_kernel().direction == "backward_data"
    G.conv2d_weight(x, w.shape, gy, 2)
    assert gpuconv.last_kernel().direction == "backward_filter"
    G.conv2d_bias(gy)
    assert gpuconv.last_kernel().direction == "backward_bias"
    assert "conv2d_backward" in gpuconv.__all__ and "conv_transpose2d" in gpuconv.__all__


def test_unbatched_is_the_batch_of_one():
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((3, 7, 6)), rng.standard_normal((4, 3, 2, 3))
    kw = dict(stride=(2, 1), padding="same", dilation=(1, 2), flip=True)
    gy = rng.standard_normal(gpuconv.conv2d(x, w, **kw).shape)
    assert gy.ndim == 3
    np.testing.assert_array_equal(G.conv2d_input(x.shape, w, gy, **kw),
                                  G.conv2d_input((1,) + x.shape, w, gy[None], **kw)[0])
    np.testing.assert_array_equal(G.conv2d_weight(x, w.shape, gy, **kw),
                                  G.conv2d_weight(x[None], w.shape, gy[None], **kw))
    np.testing.assert_array_equal(G.conv2d_bias(gy), G.conv2d_bias(gy[None]))


def test_grad_namespace():
    try:
        from gpuconv import grad
    except ImportError as exc:  # gpuconv/_grad_pool.py (pooling gradients) lands separately
        pytest.skip(f"gpuconv.grad not importable yet: {exc}")
    assert grad.conv2d_input is G.conv2d_input and grad.conv2d_weight is G.conv2d_weight
    assert grad.conv2d_bias is G.conv2d_bias


# --------------------------------------------------------------------------------------------
# identities: finite differences, adjoints
# --------------------------------------------------------------------------------------------

def test_finite_differences():
    """float64 central differences of L = <conv2d(x, w, b, ...act), gy> on a tiny strided, grouped, flipped
    'same' case with tanh."""
    rng = np.random.default_rng(11)
    x, w, b = rng.standard_normal((2, 2, 5, 4)), rng.standard_normal((4, 1, 2, 3)), rng.standard_normal(4)
    kw = dict(stride=2, padding="same", dilation=(1, 2), groups=2, flip=True, activation="tanh")
    out = gpuconv.conv2d(x, w, b, **kw)
    gy = rng.standard_normal(out.shape)

    def loss(x, w, b):
        return float(np.sum(gpuconv.conv2d(x, w, b, **kw) * gy))

    gx, gw, gb = G.conv2d_backward(gy, x, w, **kw, output=out)
    eps = 1e-6
    for arr, grad, i in [(x, gx, 0), (w, gw, 1), (b, gb, 2)]:
        num = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            args = [x.copy(), w.copy(), b.copy()]
            args[i][idx] += eps
            up = loss(*args)
            args[i][idx] -= 2 * eps
            num[idx] = (up - loss(*args)) / (2 * eps)
        np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-7)


def _random_conv(rng):
    groups = int(rng.choice([1, 2, 3]))
    C, K = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
    R, S = (int(v) for v in rng.integers(1, 6, 2))
    stride = tuple(int(v) for v in rng.integers(1, 4, 2))
    dilation = tuple(int(v) for v in rng.integers(1, 3, 2))
    padding = [int(rng.integers(0, 3)), ((int(rng.integers(0, 4)), int(rng.integers(0, 4))),
                                         (int(rng.integers(0, 4)), int(rng.integers(0, 4)))), "same", "valid"][
        int(rng.integers(0, 4))]
    H = int(rng.integers(dilation[0] * (R - 1) + 1, 14))
    W = int(rng.integers(dilation[1] * (S - 1) + 1, 14))
    x = rng.standard_normal((int(rng.integers(1, 4)), C, H, W))
    w = rng.standard_normal((K, C // groups, R, S))
    return x, w, dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                      flip=bool(rng.integers(0, 2)))


@pytest.mark.parametrize("runner", GRAD_RUNNERS)
@pytest.mark.parametrize("seed", range(12))
def test_adjoint_identities(runner, seed):
    """<conv2d(x, w), y> == <x, conv2d_input(x.shape, w, y)> == <w, conv2d_weight(x, w.shape, y)>."""
    rng = np.random.default_rng(100 + seed)
    x, w, kw = _random_conv(rng)
    y = rng.standard_normal(gpuconv.conv2d(x, w, **kw).shape)
    lhs = np.vdot(gpuconv.conv2d(x, w, **kw), y)
    via_x = np.vdot(x, runner.call(lambda w, y: G.conv2d_input(x.shape, w, y, **kw), w, y))
    via_w = np.vdot(w, runner.call(lambda x, y: G.conv2d_weight(x, w.shape, y, **kw), x, y))
    scale = np.vdot(gpuconv.conv2d(np.abs(x), np.abs(w), **kw), np.abs(y))
    assert abs(lhs - via_x) <= 1e-12 * scale and abs(lhs - via_w) <= 1e-12 * scale, kw


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.torch
@pytest.mark.parametrize("runner", GRAD_RUNNERS)
@pytest.mark.parametrize("seed", range(16))
def test_random_geometries_match_torch(runner, seed):
    """Random shapes, strides, dilations, groups, padding forms, flip and activations: conv2d_backward
    against torch.autograd (float64)."""
    rng = np.random.default_rng(300 + seed)
    x, w, kw = _random_conv(rng)
    b = rng.standard_normal(w.shape[0])
    act = [None, "relu", "leaky_relu", "sigmoid", "tanh"][seed % 5]
    out = gpuconv.conv2d(x, w, b, **kw, activation=act)
    gy = rng.standard_normal(out.shape)
    _, tx, tw, tb = _torch_grads(x, w, b, gy, kw["stride"], kw["padding"], kw["dilation"], kw["groups"],
                                 kw["flip"], act)
    got = runner.call(lambda gy, x, w, out: G.conv2d_backward(gy, x, w, **kw, activation=act, output=out),
                      gy, x, w, out)
    for g, e in zip(got, (tx, tw, tb)):
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-10, err_msg=str(kw))


def test_flip_weight_gradient_is_rotated():
    """With the padding written out, true convolution's filter gradient is the correlation's rotated by 180
    degrees (and the input gradients agree)."""
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((2, 2, 7, 6)), rng.standard_normal((3, 2, 4, 3))
    kw = dict(stride=(2, 1), padding=((2, 1), (1, 1)), dilation=(1, 2))
    gy = rng.standard_normal(gpuconv.conv2d(x, w, **kw).shape)
    gw_flip = G.conv2d_weight(x, w.shape, gy, **kw, flip=True)
    gw_corr = G.conv2d_weight(x, w.shape, gy, **kw)
    np.testing.assert_array_equal(gw_flip, gw_corr[:, :, ::-1, ::-1])
    np.testing.assert_allclose(G.conv2d_input(x.shape, w, gy, **kw, flip=True),
                               G.conv2d_input(x.shape, w[:, :, ::-1, ::-1].copy(), gy, **kw), rtol=1e-13)


def test_bias_gradient_accumulates_float16_in_float32():
    gy = np.ones((2, 3, 64, 64), dtype=np.float16)  # 8192 per filter: a float16 accumulator stops at 2048
    gb = G.conv2d_bias(gy)
    assert gb.dtype == np.float16 and np.array_equal(gb, np.full(3, 8192, np.float16))
    assert np.array_equal(G.conv2d_bias(gy[0]), np.full(3, 4096, np.float16))


def test_every_tap_in_the_padding():
    """A forward whose windows read only padding: both gradients are zeros (and say so in the record)."""
    x, w, gy = np.ones((1, 1, 1, 1)), np.ones((1, 1, 1, 1)), np.ones((1, 1, 1, 1))
    kw = dict(stride=2, padding=((1, 0), (0, 0)))
    assert gpuconv.conv2d(x, w, **kw).shape == gy.shape
    (ex, ew, _), _ = reference_grads(x, w, gy, **kw)
    assert np.array_equal(G.conv2d_input(x.shape, w, gy, **kw), ex) and not ex.any()
    assert gpuconv.last_kernel().kernel.startswith("none")
    assert np.array_equal(G.conv2d_weight(x, w.shape, gy, **kw), ew) and not ew.any()
    assert gpuconv.last_kernel().kernel.startswith("none")


def test_empty_batch():
    w, x = np.ones((4, 2, 3, 3), np.float32), np.ones((0, 2, 5, 5), np.float32)
    gy = np.ones((0, 4, 3, 3), np.float32)
    gx, gw, gb = G.conv2d_backward(gy, x, w)
    assert gx.shape == (0, 2, 5, 5) and gx.dtype == np.float32
    assert np.array_equal(gw, np.zeros((4, 2, 3, 3), np.float32)) and np.array_equal(gb, np.zeros(4, np.float32))


# --------------------------------------------------------------------------------------------
# conv_transpose2d
# --------------------------------------------------------------------------------------------

# x shape, weight shape (C_in, C_out/groups, R, S), stride, padding, output_padding, groups, dilation, bias
TRANSPOSE_CASES = {
    "plain": ((2, 3, 5, 4), (3, 2, 3, 3), 1, 0, 0, 1, 1, True),
    "s2-p1-op1": ((1, 4, 4, 5), (4, 3, 3, 3), 2, 1, 1, 1, 1, True),
    "s3-op-pair": ((2, 2, 3, 4), (2, 2, 4, 2), (3, 2), (1, 0), (2, 1), 1, 1, False),
    "groups-dil": ((1, 4, 5, 5), (4, 1, 3, 2), (2, 1), (2, 1), 0, 2, (2, 3), True),
    "dil-op-ge-stride": ((1, 2, 4, 4), (2, 3, 3, 3), 1, 1, 1, 1, 2, True),
    "depthwise": ((2, 3, 6, 5), (3, 1, 5, 3), 2, 2, (1, 0), 3, 1, False),
    "unbatched": ((2, 4, 3), (2, 2, 2, 2), 2, 0, 0, 1, 1, True),
}


@pytest.mark.parametrize("runner", GRAD_RUNNERS)
@pytest.mark.parametrize("name", list(TRANSPOSE_CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_transpose2d(runner, name, dtype):
    xs, ws, stride, padding, output_padding, groups, dilation, bias = TRANSPOSE_CASES[name]
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[1] * groups).astype(dtype) if bias else None
    kw = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups, dilation=dilation)
    y = runner.call(lambda x, w, *b: gpuconv.conv_transpose2d(x, w, *b, **kw), x, w, *([b] if bias else []))
    assert y.dtype == dtype
    # the reference: the transposed convolution is the input gradient of the convolution of its output
    ho, wo = y.shape[-2:]
    x4 = x if x.ndim == 4 else x[None]
    y_shape = (x4.shape[0], ws[1] * groups, ho, wo)
    (gx, _, _), (mx, _, _) = reference_grads(np.zeros(y_shape), w, _pad_to(x4, y_shape, w.shape, kw), stride,
                                             _explicit(padding), dilation, groups)
    if bias:
        gx, mx = gx + b[None, :, None, None], mx + np.abs(b)[None, :, None, None]
    assert_close(y, gx if x.ndim == 4 else gx[0], mx if x.ndim == 4 else mx[0], dtype, what=name)
    if torch is not None and dtype == np.float64:
        F = torch.nn.functional
        ty = F.conv_transpose2d(torch.tensor(x), torch.tensor(w), None if b is None else torch.tensor(b),
                                **{k: v for k, v in kw.items() if k != "padding"}, padding=padding)
        assert ty.shape == y.shape
        np.testing.assert_allclose(y, ty.numpy(), rtol=1e-12, atol=1e-12)


def _explicit(padding):
    ph, pw = pair(padding)
    return ((ph, ph), (pw, pw))


def _pad_to(x4, y_shape, w_shape, kw):
    """``x4`` as the grad_output of the forward convolution of a ``y_shape`` input (with output_padding >=
    stride that convolution has more outputs than ``x4`` rows: those are zeros)."""
    P, Q = forward_shape(y_shape, w_shape, kw["stride"], _explicit(kw["padding"]), kw["dilation"], False)[2:]
    out = np.zeros(x4.shape[:2] + (P, Q))
    out[:, :, :x4.shape[2], :x4.shape[3]] = x4
    return out


def test_conv_transpose2d_errors():
    x, w = np.ones((1, 4, 5, 5)), np.ones((4, 2, 3, 3))
    with pytest.raises(ValueError, match="output padding must be smaller than either stride or dilation, but got "
                                         "output_padding_height: 2 output_padding_width: 2 stride_height: 2"):
        gpuconv.conv_transpose2d(x, w, stride=2, output_padding=2)
    with pytest.raises(ValueError, match=r"expected input\[1, 3, 5, 5\] to have 4 channels, but got 3"):
        gpuconv.conv_transpose2d(np.ones((1, 3, 5, 5)), w)
    with pytest.raises(ValueError, match="expected bias to be 1-dimensional with 2 elements"):
        gpuconv.conv_transpose2d(x, w, np.ones(3))
    with pytest.raises(ValueError, match=r"Calculated output size per channel: \(-3 x -3\). Output size is too small"):
        gpuconv.conv_transpose2d(x, w, padding=5)
    with pytest.raises(ValueError, match="expected weight to be divisible by 3 at dimension 0"):
        gpuconv.conv_transpose2d(x, w, groups=3)
    with pytest.raises(TypeError, match="'padding' must be an int"):
        gpuconv.conv_transpose2d(x, w, padding="same")
    with pytest.raises(TypeError, match="argument 'weight' must be a NumPy or CuPy array, got list"):
        gpuconv.conv_transpose2d(x, [[1.0]])


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------

def test_errors():
    x, w = np.ones((2, 3, 8, 8)), np.ones((4, 3, 3, 3))
    gy = np.ones((2, 4, 6, 6))
    with pytest.raises(ValueError, match=r"expected grad_output of size \[2, 4, 3, 3\] \(the forward output of "
                                         r"input_size=\[2, 3, 8, 8\] and weight of size \[4, 3, 3, 3\]\), but got "
                                         r"grad_output of size \[2, 4, 6, 6\]"):
        G.conv2d_input(x.shape, w, gy, stride=2)
    with pytest.raises(ValueError, match=r"expected grad_output of size \[2, 4, 6, 6\].*weight_size=\[4, 3, 3, 3\]"
                                         r"\), but got grad_output of size \[2, 4, 3, 3\]"):
        G.conv2d_weight(x, w.shape, np.ones((2, 4, 3, 3)))
    with pytest.raises(ValueError, match=r"expected grad_output of size \[4, 6, 6\]"):
        G.conv2d_input(x.shape[1:], w, gy)  # unbatched input_size, batched grad_output
    with pytest.raises(ValueError, match="activation='relu' needs output, the forward result"):
        G.conv2d_backward(gy, x, w, activation="relu")
    with pytest.raises(ValueError, match=r"expected output of size \[2, 4, 6, 6\].*but got output of size \[2, 4, 6\]"):
        G.conv2d_backward(gy, x, w, activation="relu", output=np.ones((2, 4, 6)))
    with pytest.raises(ValueError, match="Unknown activation 'gelu'"):
        G.conv2d_backward(gy, x, w, activation="gelu", output=gy)
    with pytest.raises(ValueError, match="output_mask must have 3 entries"):
        G.conv2d_backward(gy, x, w, output_mask=(True, True))
    with pytest.raises(TypeError, match="output_mask must be a sequence of 3 bools"):
        G.conv2d_backward(gy, x, w, output_mask=(1, 1, 1))
    with pytest.raises(TypeError, match="output_mask must be a sequence of 3 bools"):
        G.conv2d_backward(gy, x, w, output_mask=None)
    with pytest.raises(TypeError, match="input_size must be a tuple of ints, got 8"):
        G.conv2d_input(8, w, gy)
    with pytest.raises(ValueError, match=r"input_size must have 3 or 4 entries, got input_size=\[8, 8\]"):
        G.conv2d_input((8, 8), w, gy)
    with pytest.raises(ValueError, match=r"weight_size must have 4 entries"):
        G.conv2d_weight(x, (4, 3, 3), gy)
    with pytest.raises(ValueError, match="expected input.* to have 3 channels, but got 2 channels"):
        G.conv2d_input((2, 2, 8, 8), w, gy)
    with pytest.raises(TypeError, match=r"conv2d_input\(\): argument 'grad_output' must be a NumPy or CuPy array, "
                                        "got NoneType"):
        G.conv2d_input(x.shape, w, None)
    with pytest.raises(TypeError, match=r"conv2d_weight\(\): expected all arrays to have the same dtype"):
        G.conv2d_weight(x.astype(np.float32), w.shape, gy)
    with pytest.raises(TypeError, match=r"conv2d_bias\(\): grad_output must be float16, float32 or float64"):
        G.conv2d_bias(np.ones((1, 2, 3, 3), dtype=np.int32))
    with pytest.raises(ValueError, match=r"conv2d_bias\(\): expected grad_output of 3 \(unbatched\) or 4"):
        G.conv2d_bias(np.ones((2, 3)))
    with pytest.raises(ValueError, match="padding must be non-negative"):
        G.conv2d_input(x.shape, w, gy, padding=-1)


# --------------------------------------------------------------------------------------------
# determinism (docs/gradients.md): bitwise equal on every run and in either thread order
# --------------------------------------------------------------------------------------------

DETERMINISM_CASES = {  # x shape, w shape, stride, padding, dilation, groups, dtype
    "igemm-stride2": ((3, 4, 9, 8), (6, 4, 3, 3), 2, 1, 1, 1, np.float32),
    "depthwise-same": ((2, 3, 8, 8), (3, 1, 3, 3), 1, "same", 2, 3, np.float16),
    "groups-1x1": ((2, 4, 5, 5), (4, 2, 1, 1), 1, 0, 1, 2, np.float64),
}


@pytest.mark.parametrize("kind", RUNTIME_PARAMS)
@pytest.mark.parametrize("name", list(DETERMINISM_CASES))
def test_bitwise_deterministic(kind, name):
    """Four runs of conv2d_backward give the same bytes: on the emulator with the threads of each block
    started in both orders; on a GPU in the hardware's own order (tests/runners.py, with_thread_order)."""
    rt = kernel_runtime(kind)
    xs, ws, stride, padding, dilation, groups, dt = DETERMINISM_CASES[name]
    rng = np.random.default_rng(9)
    x, w = rng.standard_normal(xs).astype(dt), rng.standard_normal(ws).astype(dt)
    gy = rng.standard_normal(gpuconv.conv2d(x, w, None, stride, padding, dilation, groups).shape).astype(dt)
    out = np.tanh(gy)

    def backward(rt, gy, x, w, out):
        with use_backend(CudaBackend(rt)):
            grads = G.conv2d_backward(gy, x, w, stride, padding, dilation, groups, activation="tanh", output=out)
            return grads + (gpuconv.last_kernel().kernels,)

    results = [numpy_io(with_thread_order(rt, order), backward, gy, x, w, out)
               for order in ("forward", "reversed", "forward", "reversed")]
    for other in results[1:]:
        for a, b in zip(results[0][:3], other[:3]):
            assert a.tobytes() == b.tobytes()
        assert other[3] == results[0][3]  # the same kernels, chosen without measuring
    assert all(k.startswith("gpuconv::conv2d_") for k in results[0][3][:-1])


def test_activation_derivative_matches_definition():
    out = np.array([-2.0, -0.0, 0.0, 1e-30, 0.5, np.nan])
    gy = np.full_like(out, 3.0)
    np.testing.assert_array_equal(G.activation_derivative_times(np, gy, out, "relu"),
                                  [0, 0, 0, 3, 3, 0])
    np.testing.assert_array_equal(G.activation_derivative_times(np, gy, out, "leaky_relu"),
                                  [0.03, 0.03, 0.03, 3, 3, 0.03])
    s = apply_activation(np.array([0.3]), "sigmoid")
    assert G.activation_derivative_times(np, np.ones(1), s, "sigmoid")[0] == pytest.approx(s[0] * (1 - s[0]))
    t = np.tanh(0.3)
    assert G.activation_derivative_times(np, np.ones(1), np.array([t]), "tanh")[0] == pytest.approx(1 - t * t)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", [dict(stride=2, padding=((0, 2), (1, 0)), dilation=(2, 1), flip=True),
                                dict(stride=(1, 3), padding="same", dilation=1, flip=False),
                                dict(stride=1, padding=4, dilation=2, flip=False)])
def test_numpy_depthwise_filter_gradient_by_taps(dtype, kw):
    """The NumPy path's own depthwise filter gradient (dot products over phase planes, channel multiplier 2,
    windows partly in the padding) against the textbook reference; non-contiguous operands."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 4, 11, 20)).astype(dtype)[:, :, :, ::2]
    w = rng.standard_normal((8, 1, 3, 3)).astype(dtype)
    y = gpuconv.conv2d(x, w, groups=4, **kw)
    gy = rng.standard_normal(y.shape).astype(dtype).transpose(0, 1, 3, 2).copy().transpose(0, 1, 3, 2)
    got = G.conv2d_weight(x, w.shape, gy, groups=4, **kw)
    assert gpuconv.last_kernel().kernels == ("numpy_depthwise_filter_planes",)  # tests/test_numpy_conv_grad.py
    (_, ew, _), (_, mw, _) = reference_grads(x, w, gy, groups=4, **kw)
    assert_close(got, ew, mw, dtype, what="depthwise filter gradient")
