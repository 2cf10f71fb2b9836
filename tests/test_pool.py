"""Pooling on every backend against the textbook references (and PyTorch CPU when installed)."""

from __future__ import annotations

import functools
import zlib

import numpy as np
import pytest

import gpuconv
from tests.cases import pairwise
from tests.reference import adaptive_pool2d_ref, avg_pool2d_ref, max_pool2d_ref, pair, pool_out
from tests.runners import POOL_RUNNERS, torch
from tests.tolerance import assert_close


POOL_DIMS = {
    "kernel": [(1, 1), (2, 2), (3, 3), (3, 2)],
    "stride": [None, 1, 2, 3, (1, 2)],
    "padding": [0, 1, (1, 0)],
    "dilation": [1, 2, (1, 2)],
    "ceil_mode": [False, True],
    "count_include_pad": [True, False],
    "divisor_override": [None, 3],
    "size": [(6, 6), (5, 7), (9, 4), (11, 13)],
    "NC": [(1, 1), (2, 3)],
    "dtype": ["float16", "float32", "float64"],
    "data": ["normal", "nan", "neginf", "ties"],
    "layout": ["contiguous", "sliced"],
}


def _geometry(c):
    (kh, kw), (ph, pw), (dh, dw) = c["kernel"], pair(c["padding"]), pair(c["dilation"])
    sh, sw = c["kernel"] if c["stride"] is None else pair(c["stride"])
    return (kh, kw), (sh, sw), (ph, pw), (dh, dw)


def _valid(c):
    k, s, p, d = _geometry(c)
    H, W = c["size"]
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        return False
    return (pool_out(H, k[0], s[0], p[0], d[0], c["ceil_mode"]) >= 1
            and pool_out(W, k[1], s[1], p[1], d[1], c["ceil_mode"]) >= 1
            and pool_out(H, k[0], s[0], p[0], 1, c["ceil_mode"]) >= 1
            and pool_out(W, k[1], s[1], p[1], 1, c["ceil_mode"]) >= 1)


MATRIX = pairwise(POOL_DIMS, _valid, seed=1)


def make_data(shape, dtype, kind, rng):
    x = rng.standard_normal(shape)
    if kind == "nan":
        x[rng.random(shape) < 0.15] = np.nan
    elif kind == "neginf":
        x[rng.random(shape) < 0.5] = -np.inf
    elif kind == "ties":
        x = rng.integers(-2, 3, shape).astype(np.float64)
    return x.astype(dtype)


def case_id(c):
    return "-".join(f"{k}={v}" for k, v in c.items()).replace(" ", "")


@functools.lru_cache(maxsize=None)
def prepared(index):
    c = MATRIX[index]
    rng = np.random.default_rng(index)
    x = make_data(c["NC"] + c["size"], np.dtype(c["dtype"]), c["data"], rng)
    return c, x


def _view(x, layout):
    if layout == "contiguous":
        return x
    big = np.zeros(x.shape[:2] + (x.shape[2] + 2, 2 * x.shape[3]), x.dtype)
    big[:, :, 2:, ::2] = x
    return big[:, :, 2:, ::2]


@pytest.mark.parametrize("runner", POOL_RUNNERS)
@pytest.mark.parametrize("index", range(len(MATRIX)), ids=[case_id(c) for c in MATRIX])
def test_max_pool2d_matrix(runner, index):
    c, x = prepared(index)
    k, s, p, d = _geometry(c)
    exp_vals, exp_idx = max_pool2d_ref(x, k, s, p, d, c["ceil_mode"])
    y, idx = runner.call(gpuconv.max_pool2d, _view(x, c["layout"]), c["kernel"], c["stride"], c["padding"],
                         c["dilation"], c["ceil_mode"], return_indices=True)
    assert y.dtype == x.dtype and idx.dtype == np.int64
    np.testing.assert_array_equal(y.astype(np.float64), exp_vals)  # max is exact, NaN == NaN here
    np.testing.assert_array_equal(idx, exp_idx)
    y_only = runner.call(gpuconv.max_pool2d, x, c["kernel"], c["stride"], c["padding"], c["dilation"],
                         c["ceil_mode"])
    np.testing.assert_array_equal(y_only, y)


@pytest.mark.parametrize("runner", POOL_RUNNERS)
@pytest.mark.parametrize("index", range(len(MATRIX)), ids=[case_id(c) for c in MATRIX])
def test_avg_pool2d_matrix(runner, index):
    c, x = prepared(index)
    k, s, p, _ = _geometry(c)
    args = (c["ceil_mode"], c["count_include_pad"], c["divisor_override"])
    with np.errstate(invalid="ignore"):
        expected = avg_pool2d_ref(x, k, s, p, *args)
        magnitude = np.abs(avg_pool2d_ref(np.abs(x), k, s, p, *args))
    y = runner.call(gpuconv.avg_pool2d, _view(x, c["layout"]), c["kernel"], c["stride"], c["padding"], *args)
    assert y.dtype == x.dtype
    assert_close(y, expected, magnitude, x.dtype, f"{runner.id} case {index}", precision="pool")


ADAPTIVE = [((5, 7), 1), ((5, 7), (2, 3)), ((8, 8), 4), ((3, 9), (7, 5)), ((4, 5), (10, 12)),
            ((6, 7), (None, 3)), ((7, 7), (3, None)), ((1, 1), 2)]


@pytest.mark.parametrize("runner", POOL_RUNNERS)
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("data", ["normal", "nan", "ties", "neginf"])
@pytest.mark.parametrize("size,out", ADAPTIVE, ids=[f"{s}->{o}" for s, o in ADAPTIVE])
def test_adaptive_pools(runner, dtype, data, size, out):
    rng = np.random.default_rng(zlib.crc32(repr((size, out, data)).encode()))  # (hash() is salted per run)
    x = make_data((2, 3) + size, np.dtype(dtype), data, rng)
    oh, ow = pair(out) if not isinstance(out, tuple) else out
    out_hw = (size[0] if oh is None else oh, size[1] if ow is None else ow)
    exp_vals, exp_idx = adaptive_pool2d_ref(x, out_hw, "max")
    y, idx = runner.call(gpuconv.adaptive_max_pool2d, _view(x, "sliced"), out, return_indices=True)
    np.testing.assert_array_equal(y.astype(np.float64), exp_vals)
    np.testing.assert_array_equal(idx, exp_idx)
    np.testing.assert_array_equal(runner.call(gpuconv.adaptive_max_pool2d, x, out), y)
    expected = adaptive_pool2d_ref(x, out_hw, "avg")
    magnitude = adaptive_pool2d_ref(np.abs(x), out_hw, "avg")
    ya = runner.call(gpuconv.adaptive_avg_pool2d, x, out)
    assert ya.dtype == x.dtype and ya.shape == (2, 3) + out_hw
    assert_close(ya, expected, magnitude, x.dtype, runner.id, precision="pool")


@pytest.mark.parametrize("runner", POOL_RUNNERS)
def test_semantics_examples(runner):
    """The worked examples of docs/semantics.md, "Pooling: Output size"."""
    x = np.arange(36, dtype=np.float32).reshape(1, 1, 6, 6)
    assert runner.call(gpuconv.max_pool2d, x, 1, 2, ceil_mode=True).shape == (1, 1, 3, 3)
    x5 = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
    y = runner.call(gpuconv.avg_pool2d, x5, 2, 2, 1, ceil_mode=True)
    assert y.shape == (1, 1, 3, 3)
    # last window starts at row 3 (rows 3, 4, then overhang): divisor counts 2 rows, not the overhang
    assert y[0, 0, 2, 2] == pytest.approx((18 + 19 + 23 + 24) / 4)
    # first window is half padding: with count_include_pad the divisor is 4 -> x[0,0] / 4
    assert y[0, 0, 0, 0] == pytest.approx(0 / 4)
    y2 = runner.call(gpuconv.avg_pool2d, x5 + 1, 2, 2, 1, ceil_mode=True, count_include_pad=False)
    assert y2[0, 0, 0, 0] == pytest.approx(1.0)
    assert y2[0, 0, 0, 1] == pytest.approx((2 + 3) / 2)


@pytest.mark.parametrize("runner", POOL_RUNNERS)
def test_nan_wins_and_reports_last_nan(runner):
    x = np.zeros((1, 1, 2, 2), np.float32)
    x[0, 0, 0, 1] = np.nan
    x[0, 0, 1, 0] = np.nan
    x[0, 0, 1, 1] = 5
    y, idx = runner.call(gpuconv.max_pool2d, x, 2, return_indices=True)
    assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 2  # (1, 0) is the last NaN in row-major order
    y, idx = runner.call(gpuconv.adaptive_max_pool2d, x, 1, return_indices=True)
    assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 2


@pytest.mark.parametrize("runner", POOL_RUNNERS)
def test_unbatched_and_empty(runner):
    x = np.arange(2 * 5 * 5, dtype=np.float64).reshape(2, 5, 5)
    y, idx = runner.call(gpuconv.max_pool2d, x, 2, return_indices=True)
    assert y.shape == idx.shape == (2, 2, 2)
    assert y[1, 1, 1] == x[1, 3, 3] and idx[1, 1, 1] == 3 * 5 + 3
    e = runner.call(gpuconv.avg_pool2d, np.zeros((0, 3, 6, 6), np.float32), 2)
    assert e.shape == (0, 3, 3, 3)
    e, ei = runner.call(gpuconv.max_pool2d, np.zeros((0, 3, 6, 6), np.float32), 3, 1, 1, return_indices=True)
    assert e.shape == ei.shape == (0, 3, 6, 6) and ei.dtype == np.int64
    assert runner.call(gpuconv.adaptive_avg_pool2d, np.zeros((0, 2, 4, 4)), 2).shape == (0, 2, 2, 2)


# Dilated max pooling whose windows hold no input cell: every tap lies in the padding (shape, kernel,
# stride, padding, dilation, ceil_mode). The first three were found by a random comparison with PyTorch
# (the NumPy path raised IndexError when asked for indices); in the last, rows -1 and 2 of a 2-row plane.
EMPTY_WINDOWS = [
    ((2, 3, 1, 1), (2, 2), (2, 1), (1, 1), (2, 2), False),
    ((2, 3, 8, 1), (4, 2), (3, 2), (0, 1), (1, 2), False),
    ((1, 1, 7, 1), (3, 2), (1, 3), (0, 1), (1, 2), True),
    ((1, 2, 2, 5), (2, 3), 1, (1, 1), (3, 1), False),
]


@pytest.mark.parametrize("runner", POOL_RUNNERS)
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("shape,kernel,stride,padding,dilation,ceil_mode", EMPTY_WINDOWS)
def test_max_pool2d_windows_without_input_cells(runner, dtype, shape, kernel, stride, padding, dilation,
                                                ceil_mode):
    """-inf, and PyTorch's initial index: ``h*W + w`` of the first tap at or after row 0 and column 0,
    which lies outside the window (PyTorch 2.13 CPU gives the same, checked when installed)."""
    x = np.random.default_rng(9).standard_normal(shape).astype(dtype)
    k, s, p, d = pair(kernel), pair(stride), pair(padding), pair(dilation)
    exp_vals, exp_idx = max_pool2d_ref(x, k, s, p, d, ceil_mode)
    y, idx = runner.call(gpuconv.max_pool2d, x, kernel, stride, padding, dilation, ceil_mode,
                         return_indices=True)
    assert np.isneginf(y).all() and y.dtype == x.dtype
    np.testing.assert_array_equal(y.astype(np.float64), exp_vals)
    np.testing.assert_array_equal(idx, exp_idx)
    if torch is not None:
        tv, ti = torch.nn.functional.max_pool2d(torch.from_numpy(x.astype(np.float64)), k, s, p, d, ceil_mode,
                                                return_indices=True)
        np.testing.assert_array_equal(tv.numpy(), exp_vals)
        np.testing.assert_array_equal(ti.numpy(), exp_idx)


@pytest.mark.skipif(torch is None, reason="PyTorch not installed (second oracle)")
@pytest.mark.torch
@pytest.mark.parametrize("index", range(len(MATRIX)), ids=[case_id(c) for c in MATRIX])
def test_references_agree_with_torch(index):
    """The textbook pooling references themselves against torch.nn.functional (float64)."""
    c, x = prepared(index)
    k, s, p, d = _geometry(c)
    F = torch.nn.functional
    t = torch.from_numpy(x.astype(np.float64))
    tv, ti = F.max_pool2d(t, k, s, p, d, c["ceil_mode"], return_indices=True)
    ev, ei = max_pool2d_ref(x, k, s, p, d, c["ceil_mode"])
    np.testing.assert_array_equal(tv.numpy(), ev)
    np.testing.assert_array_equal(ti.numpy(), ei)
    ta = F.avg_pool2d(t, k, s, p, c["ceil_mode"], c["count_include_pad"], c["divisor_override"])
    with np.errstate(invalid="ignore"):
        ea = avg_pool2d_ref(x, k, s, p, c["ceil_mode"], c["count_include_pad"], c["divisor_override"])
    np.testing.assert_allclose(ta.numpy(), ea, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(torch is None, reason="PyTorch not installed (second oracle)")
@pytest.mark.torch
@pytest.mark.parametrize("size,out", ADAPTIVE, ids=[f"{s}->{o}" for s, o in ADAPTIVE])
def test_adaptive_references_agree_with_torch(size, out):
    rng = np.random.default_rng(0)
    x = make_data((2, 3) + size, np.float64, "nan", rng)
    F = torch.nn.functional
    t = torch.from_numpy(x)
    tv, ti = F.adaptive_max_pool2d(t, out, return_indices=True)
    oh, ow = tv.shape[-2:]
    ev, ei = adaptive_pool2d_ref(x, (oh, ow), "max")
    np.testing.assert_array_equal(tv.numpy(), ev)
    np.testing.assert_array_equal(ti.numpy(), ei)
    np.testing.assert_allclose(F.adaptive_avg_pool2d(t, out).numpy(), adaptive_pool2d_ref(x, (oh, ow), "avg"),
                               rtol=1e-12)


def test_matrix_covers_every_value():
    for name, values in POOL_DIMS.items():
        assert {repr(c[name]) for c in MATRIX} == {repr(v) for v in values}, name


# --- NumPy path: float16 max pooling in float32 chunks, equal-window adaptive average (appended) ---

@pytest.mark.parametrize("workspace_mb", [None, "0.0001"])
def test_numpy_float16_max_pool_is_exact(monkeypatch, workspace_mb):
    """float16 max pooling runs in float32 chunks; values and indices (NaN: last NaN; ties: first max)
    must equal the float32 computation on the same values."""
    if workspace_mb:
        monkeypatch.setenv("GPUCONV_NUMPY_WORKSPACE_MB", workspace_mb)  # one sample per chunk
    rng = np.random.default_rng(7)
    x = make_data((3, 2, 11, 9), np.float16, "ties", rng)
    x[rng.random(x.shape) < 0.1] = np.nan
    y16, i16 = gpuconv.max_pool2d(x, 3, 2, 1, return_indices=True)
    y32, i32 = gpuconv.max_pool2d(x.astype(np.float32), 3, 2, 1, return_indices=True)
    assert y16.dtype == np.float16
    np.testing.assert_array_equal(y16, y32.astype(np.float16))
    np.testing.assert_array_equal(i16, i32)
    np.testing.assert_array_equal(gpuconv.max_pool2d(x, 3, 2, 1), y16)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("size,out", [((7, 7), 1), ((8, 6), (4, 3)), ((6, 9), (1, 3)), ((5, 5), (5, 5))])
def test_numpy_adaptive_avg_equal_windows(dtype, size, out):
    """Equal, non-overlapping windows take the reshape-and-reduce path (global pooling: a GEMV)."""
    rng = np.random.default_rng(8)
    x = make_data((2, 3) + size, np.dtype(dtype), "nan", rng)
    out_hw = pair(out)
    y = gpuconv.adaptive_avg_pool2d(_view(x, "sliced"), out)
    assert y.dtype == x.dtype and y.shape == (2, 3) + out_hw
    magnitude = adaptive_pool2d_ref(np.abs(x), out_hw, "avg")
    assert_close(y, adaptive_pool2d_ref(x, out_hw, "avg"), magnitude, x.dtype, "numpy", precision="pool")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_numpy_pooling_inf_and_nan_raise_no_warnings(dtype):
    """inf - inf and NaN are data: each pooling function runs under warnings-as-errors, and the windows
    holding them come out NaN (overflow while rounding to float16 is silent too)."""
    import warnings
    x = np.zeros((1, 1, 4, 4), dtype)
    x[0, 0, 0, 0], x[0, 0, 0, 1], x[0, 0, 3, 3] = np.inf, -np.inf, np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        avg = gpuconv.avg_pool2d(x, 2)
        avg_valid = gpuconv.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        adaptive = gpuconv.adaptive_avg_pool2d(x, 3)
        global_avg = gpuconv.adaptive_avg_pool2d(x, 1)
        mx, idx = gpuconv.max_pool2d(x, 2, return_indices=True)
        amx, aidx = gpuconv.adaptive_max_pool2d(x, 3, return_indices=True)
        big = gpuconv.avg_pool2d(np.full((1, 1, 4, 4), 60000, dtype), 2, divisor_override=1)
    assert np.isnan(avg[0, 0, 0, 0]) and np.isnan(avg[0, 0, 1, 1]) and avg[0, 0, 1, 0] == 0
    assert np.isnan(avg_valid[0, 0, 0, 0]) and np.isnan(avg_valid[0, 0, 3, 3]) and avg_valid[0, 0, 3, 0] == 0
    assert np.isnan(adaptive[0, 0, 0, 0]) and np.isnan(adaptive[0, 0, 2, 2]) and adaptive[0, 0, 2, 0] == 0
    assert np.isnan(global_avg).all()
    assert mx[0, 0, 0, 0] == np.inf and idx[0, 0, 0, 0] == 0 and np.isnan(mx[0, 0, 1, 1]) and idx[0, 0, 1, 1] == 15
    assert amx[0, 0, 0, 0] == np.inf and np.isnan(amx[0, 0, 2, 2]) and aidx[0, 0, 2, 2] == 15
    assert np.isinf(big).all() == (dtype == np.float16)
