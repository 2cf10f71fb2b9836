"""The NumPy path's Winograd F(2x2, 3x3) strategy (``numpy_winograd``): its transforms against the
matrices' definition, whole convolutions against the textbook reference (every padding form, groups,
odd sizes, dtypes, layouts, activations; small channel counts with the channel threshold lowered), the
rule that picks it, and the non-finite inputs it must leave to im2col."""

from __future__ import annotations

import numpy as np
import pytest
try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # optional: only the randomized test needs it (it skips below); the rest runs
    st = None

import gpuconv
from gpuconv._numpy import conv as numpy_conv
from gpuconv._numpy import winograd
from tests.cases import ACTIVATIONS, DTYPES, pairwise
from tests.reference import conv2d_ref, explicit_padding
from tests.runners import torch
from tests.support import make_layout
from tests.tolerance import assert_close

B_T, G, A_T = (np.array(m, np.float64) for m in (winograd.B_T, winograd.G, winograd.A_T))


@pytest.fixture
def force_winograd(monkeypatch):
    """Winograd for every 3x3 stride-1 undilated layer, whatever its channel counts and output size."""
    monkeypatch.setattr(numpy_conv, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(numpy_conv, "WINOGRAD_MIN_OUTPUT", 1)


def test_transform_matrices_compute_a_3x3_correlation():
    """``Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A`` is the 2x2 valid cross-correlation of a 4x4 tile with g (the
    matrices as published, checked on random data)."""
    rng = np.random.default_rng(0)
    d, g = rng.standard_normal((4, 4)), rng.standard_normal((3, 3))
    y = A_T @ ((G @ g @ G.T) * (B_T @ d @ B_T.T)) @ A_T.T
    direct = np.array([[np.sum(d[i:i + 3, j:j + 3] * g) for j in range(2)] for i in range(2)])
    np.testing.assert_allclose(y, direct, rtol=1e-12, atol=1e-12)


def test_weight_transform_is_g_g_gt():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 5, 3, 3))
    U = winograd.weight_transform(w, groups=2)
    assert U.shape == (16, 2, 3, 5) and U.flags.c_contiguous
    expected = np.einsum("ar,kcrs,bs->abkc", G, w, G).reshape(16, 2, 3, 5)
    np.testing.assert_allclose(U, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("TP,TQ", [(1, 1), (2, 3), (4, 1), (3, 5)])
def test_input_and_output_transforms_match_the_matrices(TP, TQ):
    """The pass-by-pass transforms over the phase-plane layout equal ``Bᵀ d B`` per tile and ``Aᵀ M A``
    per tile (junk tile column excluded)."""
    rng = np.random.default_rng(2)
    n, C = 2, 3
    padded = rng.standard_normal((n, C, 2 * TP + 2, 2 * TQ + 2))
    planes = np.ascontiguousarray(
        padded.reshape(n, C, TP + 1, 2, TQ + 1, 2).transpose(0, 1, 3, 5, 2, 4))  # (n, C, 2, 2, TP+1, TQ+1)
    t = np.empty((4, 2, C, n, TP, TQ + 1))
    V = np.full((4, 4, C, n, TP, TQ + 1), np.nan)
    winograd.input_transform(planes, t, V)
    for ty in range(TP):
        for tx in range(TQ):
            tile = padded[:, :, 2 * ty:2 * ty + 4, 2 * tx:2 * tx + 4]
            expected = np.einsum("ai,ncij,bj->abcn", B_T, tile, B_T)
            np.testing.assert_allclose(V[:, :, :, :, ty, tx], expected, rtol=1e-12, atol=1e-12)
    assert not np.isnan(V).any()  # the junk column is written too (it enters the GEMM)

    K = 4
    M = rng.standard_normal((4, 4, K, n, TP, TQ + 1))
    s, out = np.empty((2, 4, K, n, TP, TQ + 1)), np.empty((K, n, TP, TQ + 1))
    expected = np.einsum("ia,abkntq,jb->ijkntq", A_T, M, A_T)
    seen = set()
    for a, b, res in winograd.output_transform(M, s, out):
        np.testing.assert_allclose(res[..., :TQ], expected[a, b, ..., :TQ], rtol=1e-12, atol=1e-12)
        seen.add((a, b))
    assert seen == {(0, 0), (0, 1), (1, 0), (1, 1)}


WINOGRAD_DIMS = {
    "padding": [0, 1, 2, (1, 0), ((0, 2), (1, 0)), ((2, 0), (0, 1)), "valid", "same"],
    "groups": [1, 2],
    "channels": [(2, 2), (4, 6), (8, 3)],  # (C, K) per group
    "size": [(3, 3), (4, 5), (5, 4), (7, 6), (9, 12), (13, 11)],  # (3, 3) unpadded: one output
    "N": [1, 3],
    "dtype": ["float16", "float32", "float64"],
    "layout": ["contiguous", "sliced", "transposed"],
    "activation": list(ACTIVATIONS),
    "flip": [False, True],
    "bias": [True, False],
}
WINOGRAD_MATRIX = pairwise(WINOGRAD_DIMS)


def _check(x, w, b, padding, groups, flip=False, activation=None, expect="numpy_winograd"):
    y = gpuconv.conv2d(x, w, b, padding=padding, groups=groups, flip=flip, activation=activation)
    assert gpuconv.last_kernel().kernel == expect
    pad = explicit_padding(padding, (3, 3), (1, 1), (1, 1), x.shape[2:])
    kw = dict(pad=pad, groups=groups, flip=flip)
    magnitude = conv2d_ref(np.abs(x), np.abs(w), None if b is None else np.abs(b), **kw)
    assert_close(y, conv2d_ref(x, w, b, activation=activation, **kw), magnitude, x.dtype,
                          f"padding={padding} groups={groups} x{x.shape}")
    assert y.dtype == x.dtype
    return y


@pytest.mark.parametrize("index", range(len(WINOGRAD_MATRIX)),
                         ids=["-".join(f"{k}={v}" for k, v in c.items()) for c in WINOGRAD_MATRIX])
def test_winograd_matrix(force_winograd, index):
    case = WINOGRAD_MATRIX[index]
    rng = np.random.default_rng(index)
    dt = np.dtype(case["dtype"])
    groups = case["groups"]
    cg, kg = case["channels"]
    H, W = case["size"]
    x = rng.standard_normal((case["N"], cg * groups, H, W)).astype(dt)
    w = rng.standard_normal((kg * groups, cg, 3, 3)).astype(dt)
    b = rng.standard_normal(kg * groups).astype(dt) if case["bias"] else None
    x = make_layout(x, case["layout"], rng)
    _check(x, w, b, case["padding"], groups, case["flip"], case["activation"])


if st is not None:
    @settings(max_examples=30, deadline=None, derandomize=True)
    @given(groups=st.integers(1, 3), cg=st.integers(1, 5), kg=st.integers(1, 5), H=st.integers(1, 16),
           W=st.integers(1, 16), pad=st.tuples(*[st.integers(0, 3)] * 4), N=st.integers(1, 3),
           seed=st.integers(0, 2**31))
    def test_winograd_random_shapes(groups, cg, kg, H, W, pad, N, seed):
        pt, pb, pl, pr = pad
        if H + pt + pb < 3 or W + pl + pr < 3:
            return  # no output: conv2d refuses the call (tested in test_errors)
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((N, groups * cg, H, W))
        w = rng.standard_normal((groups * kg, cg, 3, 3))
        b = rng.standard_normal(groups * kg)
        old = numpy_conv.WINOGRAD_MIN_CHANNELS, numpy_conv.WINOGRAD_MIN_OUTPUT
        numpy_conv.WINOGRAD_MIN_CHANNELS = numpy_conv.WINOGRAD_MIN_OUTPUT = 1  # (a fixture is not reset
        try:                                                                    # between hypothesis examples)
            _check(x, w, b, ((pt, pb), (pl, pr)), groups)
        finally:
            numpy_conv.WINOGRAD_MIN_CHANNELS, numpy_conv.WINOGRAD_MIN_OUTPUT = old
else:
    def test_winograd_random_shapes():
        pytest.skip("hypothesis is not installed (pip install hypothesis)")


def test_winograd_empty_batch(force_winograd):
    y = gpuconv.conv2d(np.zeros((0, 4, 7, 7), np.float32), np.ones((5, 4, 3, 3), np.float32), padding=1)
    assert y.shape == (0, 5, 7, 7) and y.dtype == np.float32


@pytest.mark.parametrize("shape_w,kw,hw,winograd_expected", [
    ((128, 128, 3, 3), {}, (11, 10), True),
    ((128, 64, 3, 3), dict(groups=2), (11, 10), False),  # 64 channels per group: below the threshold
    ((64, 128, 3, 3), {}, (11, 10), False),
    ((128, 128, 3, 3), {}, (7, 10), False),  # 7 output rows: below WINOGRAD_MIN_OUTPUT
    ((128, 128, 3, 3), dict(padding=0), (10, 9), False),  # 8 x 7 outputs
    ((128, 128, 3, 3), dict(padding=0), (10, 10), True),  # 8 x 8 outputs
    ((128, 128, 3, 3), dict(stride=2), (11, 10), False),
    ((128, 128, 3, 3), dict(dilation=2), (11, 10), False),
    ((128, 128, 5, 5), {}, (11, 10), False),
    ((128, 128, 3, 1), {}, (11, 10), False),
    ((256, 128, 3, 3), dict(groups=2, padding="same"), (11, 10), True),
])
def test_winograd_rule(shape_w, kw, hw, winograd_expected):
    rng = np.random.default_rng(3)
    C = shape_w[1] * kw.get("groups", 1)
    x = rng.standard_normal((2, C) + hw).astype(np.float32)
    w = (rng.standard_normal(shape_w) / np.sqrt(9 * C)).astype(np.float32)
    y = gpuconv.conv2d(x, w, **{"padding": 1, **kw})
    assert (gpuconv.last_kernel().kernel == "numpy_winograd") == winograd_expected
    g, s, d = kw.get("groups", 1), kw.get("stride", 1), kw.get("dilation", 1)
    pad = explicit_padding(kw.get("padding", 1), shape_w[2:], (s, s), (d, d), hw)
    ref_kw = dict(stride=(s, s), pad=pad, dilation=(d, d), groups=g)
    assert_close(y, conv2d_ref(x, w, **ref_kw), conv2d_ref(np.abs(x), np.abs(w), **ref_kw), np.float32)


@pytest.mark.parametrize("where", ["input", "weight"])
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_non_finite_data_runs_im2col(where, value):
    """Winograd would turn an inf into NaN; with any inf or NaN the call runs im2col and propagates them
    as the direct sum does."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 128, 8, 9)).astype(np.float32)
    w = rng.standard_normal((128, 128, 3, 3)).astype(np.float32)
    if where == "input":
        x[0, 5, 2, 3] = value
    else:
        w[7, 5, 1, 1] = value
    y = _check(x, np.abs(w) if value == np.inf and where == "input" else w, None, 1, 1,
               expect="numpy_im2col")
    if where == "input" and value == np.inf:
        assert np.isposinf(y[0, :, 1:4, 2:5]).all()  # |w| > 0: +inf, where Winograd would give NaN


def test_finite_values_whose_sum_overflows_run_im2col():
    """The finiteness check is a sum; finite values that overflow it are treated as non-finite (safe: the
    result is the im2col one)."""
    x = np.full((1, 128, 8, 8), 3e38, np.float32)
    w = np.full((128, 128, 3, 3), 1e-38, np.float32)
    _check(x, w, None, 1, 1, expect="numpy_im2col")


@pytest.mark.parametrize("dtype", DTYPES)
def test_winograd_chunks_and_threads_match(monkeypatch, dtype):
    """A workspace far below one sample's needs (50 KB: the call runs in tiles of output rows, each a
    Winograd convolution of its own) and one or two threads (channel and filter blocks) give the same result
    as the whole call. (A smaller limit still works, in far more tiles: tests/test_memory.py.)"""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 128, 9, 10)).astype(dtype)
    w = (rng.standard_normal((130, 128, 3, 3)) / 34).astype(dtype)
    b = rng.standard_normal(130).astype(dtype)
    full = _check(x, w, b, "same", 1)
    monkeypatch.setenv("GPUCONV_NUMPY_WORKSPACE_MB", "0.05")
    for threads in ("1", "2"):
        monkeypatch.setenv("GPUCONV_NUMPY_THREADS", threads)
        y = gpuconv.conv2d(x, w, b, padding="same")
        assert gpuconv.last_kernel().kernel == "numpy_winograd"
        # BLAS may sum in another order for thinner GEMMs: float16 can round 1 ulp apart, float32 a few
        tol = {np.float16: 1e-3, np.float32: 1e-5, np.float64: 1e-12}[dtype]
        np.testing.assert_allclose(y, full, rtol=tol, atol=tol)


@pytest.mark.skipif(torch is None, reason="PyTorch not installed (second oracle)")
@pytest.mark.torch
def test_winograd_against_torch():
    """A ResNet-like layer at its real channel count, against PyTorch CPU."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 128, 23, 17)).astype(np.float32)
    w = (rng.standard_normal((160, 128, 3, 3)) / 34).astype(np.float32)
    b = rng.standard_normal(160).astype(np.float32)
    y = gpuconv.conv2d(x, w, b, padding=1, activation="relu")
    assert gpuconv.last_kernel().kernel == "numpy_winograd"
    F = torch.nn.functional
    expected = F.relu(F.conv2d(*(torch.from_numpy(a).double() for a in (x, w, b)), padding=1)).numpy()
    magnitude = conv2d_ref(np.abs(x), np.abs(w), np.abs(b), pad=(1, 1, 1, 1))
    assert_close(y, expected, magnitude, np.float32)
