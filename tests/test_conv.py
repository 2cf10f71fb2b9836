"""conv2d on every backend against the textbook reference (and PyTorch CPU when installed)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import gpuconv
from gpuconv._numpy import _conv_strategies as numpy_strategies
from tests.cases import ACTIVATIONS, DTYPES, pairwise
from tests.reference import conv2d_ref, explicit_padding, pair
from tests.runners import CONV_RUNNERS, torch
from tests.support import make_layout
from tests.tolerance import assert_close

GROUPINGS = ("1", "2", "depthwise", "depthwise_x2")


def conv_case(c):
    """Expand a case dict into concrete arrays and arguments."""
    C = c["C"]
    groups, K = {"1": (1, 6), "2": (2, 4), "depthwise": (C, C), "depthwise_x2": (C, 2 * C)}[c["groups"]]
    R, S = c["kernel"]
    dh, dw = pair(c["dilation"])
    H = (R - 1) * dh + 1 + c["extra"][0]
    W = (S - 1) * dw + 1 + c["extra"][1]
    return dict(N=c["N"], C=C, H=H, W=W, K=K, R=R, S=S, groups=groups)


MATRIX_DIMS = {
    "stride": [1, 2, 3, (1, 2)],
    "padding": [0, 1, 2, (1, 0), ((0, 2), (1, 0)), "valid", "same"],
    "dilation": [1, 2, (2, 1)],
    "groups": list(GROUPINGS),
    "C": [1, 3, 4, 8],
    "kernel": [(1, 1), (3, 3), (5, 5), (3, 1), (7, 7)],
    "N": [1, 3],
    "extra": [(2, 3), (5, 6), (8, 4)],
    "dtype": ["float16", "float32", "float64"],
    "layout": ["contiguous", "sliced", "transposed"],
    "activation": list(ACTIVATIONS),
    "flip": [False, True],
    "bias": [True, False],
}


def _valid(c):
    return not (c["groups"] == "2" and c["C"] % 2)


MATRIX = pairwise(MATRIX_DIMS, _valid)


def case_id(c):
    return "-".join(f"{k}={v}" for k, v in c.items()).replace(" ", "")


@functools.lru_cache(maxsize=None)
def prepared(index):
    """Inputs, arguments and the reference result (computed once per case, shared by all runners)."""
    c = MATRIX[index]
    s = conv_case(c)
    rng = np.random.default_rng(index)
    dt = np.dtype(c["dtype"])
    x = rng.standard_normal((s["N"], s["C"], s["H"], s["W"])).astype(dt)
    w = rng.standard_normal((s["K"], s["C"] // s["groups"], s["R"], s["S"])).astype(dt)
    b = rng.standard_normal(s["K"]).astype(dt) if c["bias"] else None
    kwargs = dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"], groups=s["groups"],
                  flip=c["flip"], activation=c["activation"])
    pad = explicit_padding(c["padding"], (s["R"], s["S"]), pair(c["stride"]), pair(c["dilation"]),
                           (s["H"], s["W"]), c["flip"])
    ref_kw = dict(stride=pair(c["stride"]), pad=pad, dilation=pair(c["dilation"]), groups=s["groups"],
                  flip=c["flip"])
    expected = conv2d_ref(x, w, b, activation=c["activation"], **ref_kw)
    magnitude = conv2d_ref(np.abs(x), np.abs(w), None if b is None else np.abs(b), **ref_kw)
    return dict(x=x, w=w, b=b, kwargs=kwargs, expected=expected, magnitude=magnitude, ref_kw=ref_kw,
                layout=c["layout"], rng_seed=index)


@pytest.mark.parametrize("runner", CONV_RUNNERS)
@pytest.mark.parametrize("index", range(len(MATRIX)), ids=[case_id(c) for c in MATRIX])
def test_conv2d_matrix(runner, index):
    p = prepared(index)
    rng = np.random.default_rng(1000 + index)
    x = make_layout(p["x"], p["layout"], rng)
    w = p["w"] if p["layout"] == "contiguous" else make_layout(p["w"], "sliced", rng)
    y = runner.call(gpuconv.conv2d, x, w, p["b"], **p["kwargs"])
    assert y.dtype == p["x"].dtype
    assert_close(y, p["expected"], p["magnitude"], y.dtype, f"{runner.id} case {index}")


NUMPY_GENERAL_STRATEGIES = ("numpy_im2col", "numpy_im2col_chwn")  # each runs every geometry


@pytest.mark.parametrize("strategy", NUMPY_GENERAL_STRATEGIES)
@pytest.mark.parametrize("index", range(len(MATRIX)), ids=[case_id(c) for c in MATRIX])
def test_numpy_general_strategies_on_the_matrix(monkeypatch, strategy, index):
    """The NumPy strategies that handle any geometry, each forced on every matrix case (the rule sends
    each case to one of them only)."""
    from gpuconv._numpy import conv as numpy_conv
    monkeypatch.setattr(numpy_conv, "choose_strategy", lambda g, finite=True: strategy)
    p = prepared(index)
    rng = np.random.default_rng(1000 + index)
    x = make_layout(p["x"], p["layout"], rng)
    y = gpuconv.conv2d(x, p["w"], p["b"], **p["kwargs"])
    assert gpuconv.last_kernel().kernel == strategy
    assert_close(y, p["expected"], p["magnitude"], y.dtype, f"{strategy} case {index}")


@pytest.mark.parametrize("strategy,stride", [("numpy_im2col", 1), ("numpy_im2col", 2), ("numpy_im2col_chwn", 1)])
@pytest.mark.parametrize("kg,groups", [(5, 1), (6, 1), (7, 2), (8, 1), (13, 1), (14, 2), (15, 1), (16, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_gemm_filter_padding(monkeypatch, strategy, stride, kg, groups, dtype):
    """float32 GEMMs with Kg % 8 of 5-7 (Kg < 16) run with zero filters padding Kg to a multiple of 8;
    only the real filters reach the output, with their bias."""
    from gpuconv._numpy import conv as numpy_conv
    monkeypatch.setattr(numpy_conv, "choose_strategy", lambda g, finite=True: strategy)
    rng = np.random.default_rng(kg * 10 + groups)
    x = rng.standard_normal((3, 3 * groups, 9, 7)).astype(dtype)
    w = rng.standard_normal((kg * groups, 3, 3, 2)).astype(dtype)
    b = rng.standard_normal(kg * groups).astype(dtype)
    y = gpuconv.conv2d(x, w, b, stride=stride, padding=1, groups=groups)
    assert gpuconv.last_kernel().kernel == strategy
    kw = dict(stride=(stride, stride), pad=(1, 1, 1, 1), dilation=(1, 1), groups=groups)
    magnitude = conv2d_ref(np.abs(x), np.abs(w), np.abs(b), **kw)
    assert_close(y, conv2d_ref(x, w, b, **kw), magnitude, y.dtype, f"Kg={kg}")
    wmat = numpy_strategies._gemm_weights(w.reshape(groups, kg, -1))
    padded = dtype == np.float32 and kg < 16 and kg % 8 >= 5
    assert wmat.shape == (groups, 8 * -(-kg // 8) if padded else kg, 3 * 3 * 2)
    np.testing.assert_array_equal(wmat[:, :kg], w.reshape(groups, kg, -1))
    assert not wmat[:, kg:].any()


@pytest.mark.parametrize("layout", ["contiguous", "sliced", "transposed", "reversed"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("wshape,stride,padding", [
    ((6, 4, 1, 1), 2, 0), ((5, 4, 3, 2), (2, 3), 0), ((6, 2, 3, 3), 2, ((0, 1), (0, 0))),
    ((6, 2, 3, 3), 2, ((0, 1), (0, 2))), ((5, 4, 3, 3), 2, 1)])
def test_numpy_strided_im2col_reads_the_input_in_place(monkeypatch, layout, dtype, wshape, stride, padding):
    """Strided im2col whose windows never reach the padding (none on top / left, unused bottom / right)
    gathers its columns straight from the input, whatever its strides, with no padded copy; float16
    (cast to float32) and padded layers make the copy. Values against the reference either way."""
    fills = []
    real_fill = numpy_strategies._fill_padded
    monkeypatch.setattr(numpy_strategies, "_fill_padded", lambda *a: fills.append(1) or real_fill(*a))
    rng = np.random.default_rng(11)
    groups = 4 // wshape[1]
    base = rng.standard_normal((2, 4, 11, 10)).astype(dtype)
    x = make_layout(base, layout, rng)
    w = rng.standard_normal(wshape).astype(dtype)
    b = rng.standard_normal(wshape[0]).astype(dtype)
    y = gpuconv.conv2d(x, w, b, stride=stride, padding=padding, groups=groups)
    assert gpuconv.last_kernel().kernel == "numpy_im2col"
    sh, sw = pair(stride)
    H, W = base.shape[2:]
    pt, pb, pl, pr = explicit_padding(padding, wshape[2:], (sh, sw), (1, 1), (H, W))
    rows, cols = (y.shape[2] - 1) * sh + wshape[2], (y.shape[3] - 1) * sw + wshape[3]  # read, padding included
    assert bool(fills) == (dtype == np.float16 or pt > 0 or pl > 0 or rows > H or cols > W)
    kw = dict(stride=(sh, sw), pad=(pt, pb, pl, pr), dilation=(1, 1), groups=groups)
    magnitude = conv2d_ref(np.abs(base), np.abs(w), np.abs(b), **kw)
    assert_close(y, conv2d_ref(base, w, b, **kw), magnitude, y.dtype, layout)


@pytest.mark.skipif(torch is None, reason="PyTorch not installed (second oracle)")
@pytest.mark.torch
@pytest.mark.parametrize("index", range(len(MATRIX)), ids=[case_id(c) for c in MATRIX])
def test_reference_agrees_with_torch(index):
    """The textbook reference itself against torch.nn.functional.conv2d (float64, explicit padding)."""
    p = prepared(index)
    F = torch.nn.functional
    x = torch.from_numpy(p["x"].astype(np.float64))
    w = torch.from_numpy(p["w"].astype(np.float64))
    if p["ref_kw"]["flip"]:
        w = w.flip(2, 3)
    b = None if p["b"] is None else torch.from_numpy(p["b"].astype(np.float64))
    pt, pb, pl, pr = p["ref_kw"]["pad"]
    y = F.conv2d(F.pad(x, (pl, pr, pt, pb)), w, b, stride=p["ref_kw"]["stride"],
                 dilation=p["ref_kw"]["dilation"], groups=p["ref_kw"]["groups"])
    act = p["kwargs"]["activation"]
    if act is not None:
        y = {"relu": F.relu, "leaky_relu": F.leaky_relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[act](y)
    np.testing.assert_allclose(y.numpy(), p["expected"], rtol=1e-10, atol=1e-10 * p["magnitude"].max())


@pytest.mark.parametrize("runner", CONV_RUNNERS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch(runner, dtype):
    x = np.zeros((0, 3, 8, 8), dtype)
    w = np.ones((5, 3, 3, 3), dtype)
    y = runner.call(gpuconv.conv2d, x, w, None, padding=1)
    assert y.shape == (0, 5, 8, 8) and y.dtype == dtype


@pytest.mark.parametrize("runner", CONV_RUNNERS)
def test_unbatched_input(runner):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 10, 7)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    y = runner.call(gpuconv.conv2d, x, w, None, stride=2)
    assert y.shape == (4, 4, 3)
    expected = conv2d_ref(x[None], w, stride=(2, 2))[0]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("runner", CONV_RUNNERS)
def test_nan_and_inf_propagate(runner):
    x = np.ones((1, 1, 5, 5), np.float32)
    x[0, 0, 0, 0] = np.nan
    x[0, 0, 4, 4] = np.inf
    w = np.ones((1, 1, 3, 3), np.float32)
    y = runner.call(gpuconv.conv2d, x, w, None, padding=1)
    assert np.isnan(y[0, 0, 0, 0]) and np.isnan(y[0, 0, 1, 1]) and not np.isnan(y[0, 0, 2, 2])
    assert np.isposinf(y[0, 0, 4, 4]) and np.isposinf(y[0, 0, 3, 3])
    assert y[0, 0, 2, 2] == 9
    yr = runner.call(gpuconv.conv2d, x, w, None, padding=1, activation="relu")
    assert np.isnan(yr[0, 0, 0, 0])  # relu(NaN) is NaN, as in PyTorch


@pytest.mark.parametrize("runner", CONV_RUNNERS)
@pytest.mark.parametrize("xshape,wshape,groups,stride,padding", [
    ((1, 2, 6, 7), (3, 2, 3, 3), 1, 1, 1), ((2, 3, 7, 6), (3, 1, 3, 3), 3, 1, 1),
    ((1, 3, 9, 8), (6, 1, 3, 3), 3, 2, ((1, 2), (2, 0))), ((1, 2, 5, 6), (4, 2, 1, 1), 1, 1, 1)])
def test_infinite_weight_over_padding_is_nan(runner, xshape, wshape, groups, stride, padding):
    """Padding is a zero that is multiplied, so an infinite weight that lands on it gives NaN (0 * inf)
    on every backend and kernel alike (dense, depthwise, strided, asymmetric padding, 1x1 with padding);
    elsewhere it gives +-inf by the sign of the input. The pattern of NaN and +-inf does not depend on
    the order of the sum, so it is compared exactly with the reference on an explicitly zero-padded
    input."""
    rng = np.random.default_rng(8)
    x = (rng.uniform(0.5, 1.5, xshape) * rng.choice([-1, 1], xshape)).astype(np.float32)  # no zeros
    w = rng.standard_normal(wshape).astype(np.float32)
    w[0, 0, 0, 0] = np.inf
    w[-1, 0, -1, -1] = -np.inf
    pt, pb, pl, pr = explicit_padding(padding, wshape[2:], (stride, stride), (1, 1), xshape[2:])
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    with np.errstate(all="ignore"):
        expected = conv2d_ref(xp, w, stride=(stride, stride), groups=groups)
    y = runner.call(gpuconv.conv2d, x, w, None, stride=stride, padding=padding, groups=groups)
    assert y.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(y) * np.sign(y), np.isinf(expected) * np.sign(expected))
    assert np.isnan(y).any() and np.isinf(y).any()


@pytest.mark.parametrize("runner", CONV_RUNNERS)
def test_large_values_sigmoid_saturates(runner):
    x = np.full((1, 1, 3, 3), 1e4, np.float32)
    w = np.array([[[[-1.0]]], [[[1.0]]]], np.float32)
    y = runner.call(gpuconv.conv2d, x, w, None, activation="sigmoid")
    np.testing.assert_array_equal(y[0, 0], 0.0)
    np.testing.assert_array_equal(y[0, 1], 1.0)


def test_numpy_strategies_are_reported():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    gpuconv.conv2d(x, rng.standard_normal((3, 4, 1, 1)).astype(np.float32))
    assert gpuconv.last_kernel().kernel == "numpy_matmul_1x1"
    gpuconv.conv2d(x, rng.standard_normal((4, 1, 3, 3)).astype(np.float32), groups=4)
    assert gpuconv.last_kernel().kernel == "numpy_shift_accumulate"
    gpuconv.conv2d(np.zeros((2, 4, 20, 20), np.float32), rng.standard_normal((3, 4, 3, 3)).astype(np.float32))
    assert gpuconv.last_kernel() == gpuconv.KernelRecord("conv2d", "numpy", "numpy_im2col")
    assert gpuconv.last_kernel().kernels == ("numpy_im2col",) and gpuconv.last_kernel().direction == "forward"
    gpuconv.conv2d(x, rng.standard_normal((3, 4, 3, 3)).astype(np.float32), stride=2)
    assert gpuconv.last_kernel().kernel == "numpy_im2col"
    gpuconv.conv2d(np.zeros((2, 4, 7, 7), np.float32), rng.standard_normal((3, 4, 3, 3)).astype(np.float32))
    assert gpuconv.last_kernel().kernel == "numpy_im2col_chwn"  # 5-wide rows, 2 columns of junk each
    gpuconv.conv2d(np.zeros((2, 4, 18, 18), np.float32), rng.standard_normal((3, 4, 3, 3)).astype(np.float32))
    assert gpuconv.last_kernel().kernel == "numpy_im2col"  # 16-wide rows: junk 2/16 is not more than 1/8
    gpuconv.conv2d(np.zeros((2, 4, 17, 17), np.float32), rng.standard_normal((3, 4, 3, 3)).astype(np.float32))
    assert gpuconv.last_kernel().kernel == "numpy_im2col_chwn"  # 15-wide rows
    gpuconv.conv2d(np.zeros((1, 4, 7, 7), np.float32), rng.standard_normal((3, 4, 3, 3)).astype(np.float32))
    assert gpuconv.last_kernel().kernel == "numpy_im2col"  # one sample: nothing to put innermost
    gpuconv.conv2d(np.zeros((2, 128, 10, 10), np.float32), np.zeros((128, 128, 3, 3), np.float32))
    assert gpuconv.last_kernel().kernel == "numpy_winograd"


@pytest.mark.parametrize("shape_w", [(6, 4, 3, 3), (8, 1, 3, 3), (5, 4, 1, 1)])
def test_numpy_batch_chunking_matches_unchunked(monkeypatch, shape_w):
    """A tiny workspace forces one sample per chunk; the result must not change beyond rounding (BLAS
    may block a GEMM of fewer columns differently: 1-ulp differences, where a chunking mistake would mix
    up whole samples)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 4, 9, 8)).astype(np.float32)
    w = rng.standard_normal(shape_w).astype(np.float32)
    groups = 4 // shape_w[1]
    full = gpuconv.conv2d(x, w, padding=1, groups=groups)
    monkeypatch.setenv("GPUCONV_NUMPY_WORKSPACE_MB", "0.001")
    chunked = gpuconv.conv2d(x, w, padding=1, groups=groups)
    np.testing.assert_allclose(full, chunked, rtol=1e-5, atol=1e-5)


def test_matrix_covers_every_pair():
    """The pairwise generator really covers each value of each dimension (guards the generator)."""
    for name, values in MATRIX_DIMS.items():
        seen = {repr(c[name]) for c in MATRIX}
        assert seen == {repr(v) for v in values}, name


# --- NumPy path internals: workspace reuse, depthwise phase planes, chunking (appended) ---

def test_numpy_results_do_not_alias_the_workspace():
    """Every strategy works in a kept workspace; a later call must not change an earlier result."""
    rng = np.random.default_rng(3)
    x1, x2 = (rng.standard_normal((3, 4, 9, 8)).astype(np.float32) for _ in range(2))
    for shape_w, groups in [((5, 4, 3, 3), 1), ((4, 1, 3, 3), 4), ((5, 4, 1, 1), 1)]:
        w = rng.standard_normal(shape_w).astype(np.float32)
        y1 = gpuconv.conv2d(x1, w, padding=1 if shape_w[2] == 3 else 0, groups=groups)
        keep = y1.copy()
        gpuconv.conv2d(x2, w, padding=1 if shape_w[2] == 3 else 0, groups=groups)
        np.testing.assert_array_equal(y1, keep)


@pytest.mark.parametrize("specs", [
    (((7,), np.float32),), (((3, 5), np.float16), ((1000,), np.float64), ((64, 64), np.float32))])
def test_numpy_workspace_is_kept_and_aligned(specs):
    """An equal second request reuses the kept buffer (a fresh multi-megabyte buffer is faulted in by the
    kernel on every call, which is what the workspace exists to avoid), every array starts on a cache line
    and none overlaps another."""
    from gpuconv._numpy import _workspace
    _workspace.release_workspace()
    _workspace.workspace(((1 << 20,), np.uint8))  # a large buffer, as the conv strategies ask for
    first = _workspace._local.buf
    for _ in range(2):
        arrays = _workspace.workspace(*specs)
        assert _workspace._local.buf is first
    _workspace.workspace(((1 << 20,), np.uint8))
    assert _workspace._local.buf is first
    ends = []
    for a, (shape, dtype) in zip(arrays, specs):
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
        start = a.__array_interface__["data"][0]
        assert start % 64 == 0
        ends.append((start, start + a.nbytes))
    ends.sort()
    assert all(e0 <= s1 for (_, e0), (s1, _) in zip(ends, ends[1:]))
    _workspace.release_workspace()
    _workspace.workspace(*specs)
    again = _workspace._local.buf
    _workspace.workspace(*specs)
    assert _workspace._local.buf is again


@pytest.mark.parametrize("stride,dilation,padding", [
    (2, 1, 1), (3, 1, 2), ((1, 2), 1, ((0, 2), (1, 0))), (2, 2, 2), ((2, 3), (2, 1), 1), (1, 3, "same")])
@pytest.mark.parametrize("kg", [1, 2])
def test_numpy_depthwise_phase_planes(stride, dilation, padding, kg):
    """numpy_shift_accumulate splits the padded input into stride phases and computes wide rows: check
    strides, dilations and asymmetric padding against the reference, in float16 too."""
    rng = np.random.default_rng(4)
    for dt in (np.float32, np.float16):
        x = rng.standard_normal((2, 5, 13, 11)).astype(dt)
        w = rng.standard_normal((5 * kg, 1, 3, 4)).astype(dt)
        b = rng.standard_normal(5 * kg).astype(dt)
        y = gpuconv.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=5)
        assert gpuconv.last_kernel().kernel == "numpy_shift_accumulate"
        s, d = pair(stride), pair(dilation)
        pad = explicit_padding(padding, (3, 4), s, d, (13, 11))
        kw = dict(stride=s, pad=pad, dilation=d, groups=5)
        magnitude = conv2d_ref(np.abs(x), np.abs(w), np.abs(b), **kw)
        assert_close(y, conv2d_ref(x, w, b, **kw), magnitude, dt, f"{stride} {dilation} {padding}")


@pytest.mark.parametrize("shape_w,groups,dtype", [
    ((6, 4, 3, 3), 1, np.float32), ((6, 2, 5, 3), 2, np.float64), ((5, 4, 1, 1), 1, np.float16),
    ((8, 1, 3, 3), 4, np.float16)])
def test_numpy_chunking_and_threads_match(monkeypatch, shape_w, groups, dtype):
    """Chunks of one sample (tiny GEMM_ROWS / workspace) and one or two threads give the same result; a
    non-contiguous input takes the copying paths."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 8, 12, 9)).astype(dtype)[:, ::2]
    w = rng.standard_normal(shape_w).astype(dtype)
    pad = 0 if shape_w[2] == 1 else 1
    full = gpuconv.conv2d(x, w, padding=pad, groups=groups)
    monkeypatch.setattr(numpy_strategies, "GEMM_ROWS", 1)
    monkeypatch.setattr(numpy_strategies, "SHIFT_ACCUMULATE_BLOCK", 1)
    monkeypatch.setenv("GPUCONV_NUMPY_WORKSPACE_MB", "0.001")
    tol = 1e-5 if dtype == np.float32 else 1e-6  # float32 GEMMs of other sizes may round differently
    for threads in ("1", "2"):
        monkeypatch.setenv("GPUCONV_NUMPY_THREADS", threads)
        y = gpuconv.conv2d(x, w, padding=pad, groups=groups)
        np.testing.assert_allclose(y, full, rtol=tol, atol=tol)


def test_numpy_concurrent_callers():
    """The workspace is per calling thread: concurrent calls from several threads stay correct."""
    from concurrent.futures import ThreadPoolExecutor
    rng = np.random.default_rng(6)
    xs = [rng.standard_normal((2, 3, 16, 16)).astype(np.float32) for _ in range(8)]
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    expected = [gpuconv.conv2d(x, w, padding=1) for x in xs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: gpuconv.conv2d(x, w, padding=1), xs * 3))
    for i, y in enumerate(got):
        np.testing.assert_array_equal(y, expected[i % len(xs)])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("strategy,wshape,groups,padding", [
    ("numpy_im2col", (4, 3, 3, 3), 1, 1), ("numpy_im2col_chwn", (4, 3, 3, 3), 1, 1),
    ("numpy_matmul_1x1", (4, 3, 1, 1), 1, 0), ("numpy_shift_accumulate", (6, 1, 3, 3), 3, 1)])
def test_numpy_inf_and_nan_are_data_not_warnings(monkeypatch, strategy, wshape, groups, padding, dtype):
    """IEEE specials propagate without NumPy RuntimeWarnings (under warnings-as-errors, common in test
    suites, a warning would be an exception): inf*0 and inf-inf give NaN, as in the reference. Which
    outputs are NaN and which are +-inf does not depend on the order of the sum, so it is compared
    exactly; the workers of the thread pool (depthwise) must see the caller's error handling too."""
    import warnings
    from gpuconv._numpy import conv as numpy_conv
    monkeypatch.setattr(numpy_conv, "choose_strategy", lambda g, finite=True: strategy)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    x[0, 0, 2, 2], x[0, 1, 3, 4], x[1, 2, 0, 0], x[1, 0, 5, 1] = np.inf, -np.inf, np.nan, np.inf
    w = rng.standard_normal(wshape).astype(dtype)
    w[1, 0, 0, 0] = np.inf  # inf * 0 (padding, or a zero input) is NaN
    # The NumPy path multiplies the padding zeros like any input (inf * padding is NaN, as in PyTorch's
    # dense CPU convolution), so the reference gets the zeros as explicit input.
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    with np.errstate(all="ignore"):
        expected = conv2d_ref(xp, w, groups=groups)
    for activation in (None, "sigmoid"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            y = gpuconv.conv2d(x, w, padding=padding, groups=groups, activation=activation)
        assert gpuconv.last_kernel().kernel == strategy
        if activation is None:
            np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
            np.testing.assert_array_equal(np.isinf(y) * np.sign(y), np.isinf(expected) * np.sign(expected))
        else:  # sigmoid maps +inf to 1 and -inf to 0; NaN stays NaN
            np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
        assert np.isnan(y).any() and np.isfinite(y).any()
    with warnings.catch_warnings():  # overflow to inf while rounding to float16 is silent too
        warnings.simplefilter("error")
        big = gpuconv.conv2d(np.full((1, 3, 4, 4), 200, dtype), np.full(wshape, 200, dtype), groups=groups)
    assert np.isinf(big).all() == (dtype == np.float16)
