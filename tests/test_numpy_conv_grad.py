"""The NumPy path's direct convolution gradients (``gpuconv/_numpy/conv_grad.py``): ``numpy_col2im`` (backward
data, wide rows at stride 1 or exact rows, chunked by samples or by ``gy`` rows) and ``numpy_im2col_filter``
(backward filter, gathered from ``x`` itself or from a padded copy, accumulated over sample chunks), against
the textbook reference of tests/test_grad_conv.py (tolerance model of tests/tolerance.py) and PyTorch
autograd; which strategy runs (``last_kernel()``), what stays on the lowering, chunk edges under a small
workspace limit, the memory bound, bitwise determinism, non-finite weights.

(The backend-parametrized matrix of tests/test_grad_conv.py runs these strategies too, wherever the rules
pick them.)"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import gpuconv
from gpuconv import _grad_conv as G
from gpuconv._geometry import conv_geometry
from gpuconv._numpy import _workspace, conv_grad
from tests.reference import explicit_padding, pair
from tests.runners import torch
from tests.support import make_layout
from tests.test_grad_conv import forward_shape, reference_grads
from tests.tolerance import assert_close

# x shape, w shape, stride, padding, dilation, groups, flip
GEOMETRIES = {
    "3x3-s1-pad1": ((3, 5, 9, 16), (6, 5, 3, 3), 1, 1, 1, 1, False),
    "wide-flip-dil": ((2, 4, 9, 20), (5, 4, 3, 3), 1, "same", (2, 1), 1, True),  # stride 1: wide rows
    "3x3-s2-same-flip": ((2, 4, 9, 10), (5, 4, 3, 3), 2, "same", 1, 1, True),
    "7x7-s2-p3-stem": ((2, 3, 17, 15), (4, 3, 7, 7), 2, 3, 1, 1, False),
    "11x11-s4-p2": ((1, 3, 27, 30), (5, 3, 11, 11), 4, 2, 1, 1, False),
    "asym-pad-dil": ((3, 4, 11, 9), (4, 2, 2, 4), (1, 2), ((0, 2), (3, 1)), (2, 1), 2, True),
    "groups3-5x3": ((2, 6, 8, 9), (9, 2, 5, 3), (2, 1), 2, (1, 2), 3, False),
    "single-channel": ((4, 1, 12, 12), (6, 1, 5, 5), 1, 0, 1, 1, False),  # LeNet conv1's shape class
    "1x1-s2": ((2, 6, 9, 8), (4, 6, 1, 1), 2, 0, 1, 1, False),
    "1x1-pad1": ((2, 3, 5, 6), (4, 3, 1, 1), 1, 1, 1, 1, False),
    "valid-no-padding-read": ((3, 3, 10, 11), (4, 3, 3, 2), (3, 2), 0, 1, 1, False),
    "dw-mult2": ((2, 3, 8, 7), (6, 1, 3, 3), 1, 1, 1, 3, False),  # Kg = 2: data stays on the lowering
    "n1-odd": ((1, 7, 13, 5), (3, 7, 4, 2), (3, 1), (1, 0), 1, 1, True),
}
EXPECTED = {  # (data kernels, filter kernel) on the default workspace
    "1x1-s2": (("numpy_matmul_1x1",) * 1, "numpy_im2col_filter"),
    "dw-mult2": (None, "numpy_depthwise_filter_planes"),  # data: the lowering's forward calls
}


def _data(name, dtype, layout="contiguous", seed=0):
    xs, ws, stride, padding, dilation, groups, flip = GEOMETRIES[name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dtype)
    w = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(dtype)
    gy = rng.standard_normal(forward_shape(xs, ws, stride, padding, dilation, flip)).astype(dtype)
    if layout != "contiguous":
        x, w, gy = (make_layout(a, layout, rng) for a in (x, w, gy))
    return x, w, gy, dict(stride=stride, padding=padding, dilation=dilation, groups=groups, flip=flip)


def _check(name, dtype, layout="contiguous"):
    x, w, gy, kw = _data(name, dtype, layout)
    gx = G.conv2d_input(x.shape, w, gy, **kw)
    data_kernels = gpuconv.last_kernel().kernels
    gw = G.conv2d_weight(x, w.shape, gy, **kw)
    filter_kernel = gpuconv.last_kernel().kernel
    (ex, ew, _), (mx, mw, _) = reference_grads(x, w, gy, **kw)
    assert gx.dtype == dtype and gw.dtype == dtype
    assert_close(gx, ex, mx, dtype, what=f"grad_input {name}")
    assert_close(gw, ew, mw, dtype, what=f"grad_weight {name}")
    return data_kernels, filter_kernel


LAYOUT_CASES = [(np.float16, "contiguous"), (np.float32, "contiguous"), (np.float64, "contiguous"),
                (np.float32, "sliced"), (np.float64, "transposed")]


@pytest.mark.parametrize("dtype,layout", LAYOUT_CASES, ids=[f"{np.dtype(d).name}-{l}" for d, l in LAYOUT_CASES])
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_direct_gradients_match_the_reference(name, dtype, layout):
    if name in ("3x3-s1-pad1", "wide-flip-dil"):
        xs, ws, stride, padding, dilation, groups, flip = GEOMETRIES[name]
        g = conv_geometry(xs, ws, None, stride, padding, dilation, groups, flip)
        assert conv_grad._data_plan(g, dtype, g.H, g.W, g.P, g.Q)[2]  # these two run the wide rows
    data_kernels, filter_kernel = _check(name, dtype, layout)
    exp_data, exp_filter = EXPECTED.get(name, (("numpy_col2im",), "numpy_im2col_filter"))
    assert filter_kernel == exp_filter
    assert ("numpy_col2im" not in data_kernels) if exp_data is None else data_kernels == exp_data


# workspace limits (MiB) that force: sample chunks of 1-2 (wide rows), exact rows chunked by gy rows,
# and (data) the lowering, when not even one row fits
@pytest.mark.parametrize("workspace_mb", ["0.075", "0.04", "0.015"])
@pytest.mark.parametrize("name,dtype", [("3x3-s1-pad1", np.float16), ("3x3-s1-pad1", np.float32),
                                        ("3x3-s2-same-flip", np.float64), ("asym-pad-dil", np.float32),
                                        ("single-channel", np.float16), ("groups3-5x3", np.float64),
                                        ("valid-no-padding-read", np.float32)])
def test_chunk_edges_under_a_small_workspace(monkeypatch, name, dtype, workspace_mb):
    monkeypatch.setenv("GPUCONV_NUMPY_WORKSPACE_MB", workspace_mb)
    _workspace.release_workspace()
    try:
        _check(name, dtype)
    finally:
        _workspace.release_workspace()


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_falls_back_to_the_lowering_when_one_row_does_not_fit(monkeypatch, dtype):
    monkeypatch.setenv("GPUCONV_NUMPY_WORKSPACE_MB", "0.0015")
    _workspace.release_workspace()
    try:
        data_kernels, filter_kernel = _check("3x3-s1-pad1", dtype)
    finally:
        _workspace.release_workspace()
    assert "numpy_col2im" not in data_kernels and filter_kernel != "numpy_im2col_filter"


def test_the_plans_cover_every_chunking(monkeypatch):
    """The limits of the previous test reach each plan: wide rows in several sample chunks, exact rows
    chunked by gy rows, and no plan (the lowering) for the data gradient; several sample chunks and no
    plan for the filter gradient."""
    xs, ws, stride, padding, dilation, groups, flip = GEOMETRIES["3x3-s1-pad1"]
    g = conv_geometry(xs, ws, None, stride, padding, dilation, groups, flip)
    seen = {}
    for mb in ["0.075", "0.04", "0.015", "0.0015"]:
        monkeypatch.setenv("GPUCONV_NUMPY_WORKSPACE_MB", mb)
        seen[mb] = (conv_grad._data_plan(g, np.float32, g.H, g.W, g.P, g.Q),
                    conv_grad.filter_strategy(g, np.float32))
    assert seen["0.075"][0] == (2, g.P, True)  # wide rows, chunks of 2 and 1 samples
    assert seen["0.04"][0] == (1, g.P, True)
    assert seen["0.015"][0][0] == 1 and 1 < seen["0.015"][0][1] < g.P and not seen["0.015"][0][2]  # row chunks
    assert seen["0.0015"][0] is None  # the lowering
    assert [seen[mb][1] for mb in ("0.075", "0.04", "0.015")] == ["numpy_im2col_filter"] * 2 + [None]
    assert _workspace.workspace_bytes(*conv_grad._filter_specs(g, np.float32, 2)) <= 0.075 * 2**20 < \
        _workspace.workspace_bytes(*conv_grad._filter_specs(g, np.float32, 3))  # chunks of 2 and 1


def test_peak_memory_within_output_plus_workspace(monkeypatch):
    """Temporaries (tracemalloc: NumPy's allocations) beyond the result stay within the workspace limit
    plus the transposed weight and a few small arrays."""
    monkeypatch.setenv("GPUCONV_NUMPY_WORKSPACE_MB", "2")
    limit = 2 * 2**20
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float16):
        x = rng.standard_normal((6, 16, 40, 40)).astype(dtype)
        w = rng.standard_normal((24, 16, 3, 3)).astype(dtype)
        for stride in (1, 2):
            gy = rng.standard_normal(forward_shape(x.shape, w.shape, stride, 1, 1, False)).astype(dtype)
            for call, out_bytes in ((lambda: G.conv2d_input(x.shape, w, gy, stride, 1), x.nbytes),
                                    (lambda: G.conv2d_weight(x, w.shape, gy, stride, 1), w.nbytes)):
                _workspace.release_workspace()
                tracemalloc.start()
                call()
                kernel = gpuconv.last_kernel().kernel
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                _workspace.release_workspace()
                assert kernel in ("numpy_col2im", "numpy_im2col_filter")
                assert peak - out_bytes <= limit + 4 * w.nbytes + 2**16, (dtype, stride, kernel, peak)
        wd = rng.standard_normal((32, 1, 3, 3)).astype(dtype)  # depthwise, 2 filters per channel
        for stride in (1, 2):
            gy = rng.standard_normal(forward_shape(x.shape, wd.shape, stride, 1, 1, False)).astype(dtype)
            _workspace.release_workspace()
            tracemalloc.start()
            G.conv2d_weight(x, wd.shape, gy, stride, 1, 1, 16)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            _workspace.release_workspace()
            assert gpuconv.last_kernel().kernel == "numpy_depthwise_filter_planes"
            assert peak <= limit + 8 * wd.nbytes + 2**16, (dtype, stride, peak)


@pytest.mark.parametrize("name", ["3x3-s1-pad1", "7x7-s2-p3-stem", "groups3-5x3", "single-channel"])
def test_bitwise_deterministic(monkeypatch, name):
    """The same call twice (and on one thread) gives the same bytes; with the workspace forcing chunks too."""
    for mb in (None, "0.04"):
        if mb:
            monkeypatch.setenv("GPUCONV_NUMPY_WORKSPACE_MB", mb)
        x, w, gy, kw = _data(name, np.float32)
        runs = [(G.conv2d_input(x.shape, w, gy, **kw), G.conv2d_weight(x, w.shape, gy, **kw)) for _ in range(2)]
        monkeypatch.setenv("GPUCONV_NUMPY_THREADS", "1")
        runs.append((G.conv2d_input(x.shape, w, gy, **kw), G.conv2d_weight(x, w.shape, gy, **kw)))
        monkeypatch.delenv("GPUCONV_NUMPY_THREADS")
        for gx, gw in runs[1:]:
            assert gx.tobytes() == runs[0][0].tobytes() and gw.tobytes() == runs[0][1].tobytes()


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.torch
@pytest.mark.parametrize("workspace_mb", [None, "0.015"])
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_match_torch_autograd(monkeypatch, name, workspace_mb):
    if workspace_mb:
        monkeypatch.setenv("GPUCONV_NUMPY_WORKSPACE_MB", workspace_mb)
    x, w, gy, kw = _data(name, np.float64, seed=3)
    F = torch.nn.functional
    pt, pb, pl, pr = explicit_padding(kw["padding"], w.shape[2:], pair(kw["stride"]), pair(kw["dilation"]),
                                      x.shape[2:], kw["flip"])
    xt, wt = (torch.tensor(a, requires_grad=True) for a in (x, w))
    y = F.conv2d(F.pad(xt, (pl, pr, pt, pb)), wt.flip(2, 3) if kw["flip"] else wt, None, kw["stride"], 0,
                 kw["dilation"], kw["groups"])
    y.backward(torch.tensor(gy))
    np.testing.assert_allclose(G.conv2d_input(x.shape, w, gy, **kw), xt.grad.numpy(), rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(G.conv2d_weight(x, w.shape, gy, **kw), wt.grad.numpy(), rtol=1e-11, atol=1e-11)


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.torch
@pytest.mark.parametrize("stride", [1, 2])
def test_non_finite_weight_as_torch(stride):
    """An infinite weight: col2im drops the taps that land in the padding, as PyTorch's col2im does, so
    the infinities and NaN sit where PyTorch's do (the stride-1 wide rows step aside: their junk columns
    would turn 0 * inf into NaN)."""
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((2, 3, 7, 8)), rng.standard_normal((4, 3, 3, 3))
    w[1, 2, 0, 2] = np.inf
    w[3, 0, 1, 1] = -np.inf
    gy = rng.standard_normal(forward_shape(x.shape, w.shape, stride, 1, 1, False))
    gx = G.conv2d_input(x.shape, w, gy, stride, 1)
    assert gpuconv.last_kernel().kernels == ("numpy_col2im",)
    ref = torch.nn.grad.conv2d_input(x.shape, torch.tensor(w), torch.tensor(gy), stride, 1).numpy()
    assert np.array_equal(np.isnan(gx), np.isnan(ref)) and np.array_equal(np.isinf(gx), np.isinf(ref))
    fin = np.isfinite(ref)
    assert fin.any() and not fin.all()
    np.testing.assert_allclose(gx[fin], ref[fin], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(gx[~fin & ~np.isnan(ref)], ref[~fin & ~np.isnan(ref)])


def test_transposed_convolution_with_short_gy_rows():
    """conv_transpose2d with output_padding >= stride (a larger dilation allows it): the data gradient of
    an input whose gy has fewer rows than the forward output; wide rows and exact rows agree with torch."""
    if torch is None:
        pytest.skip("PyTorch not installed")
    rng = np.random.default_rng(1)
    for stride, dil in ((1, 2), (2, 3)):
        x, w = rng.standard_normal((2, 4, 5, 6)), rng.standard_normal((4, 3, 3, 3))
        kw = dict(stride=stride, padding=1, output_padding=1 if stride == 1 else 2, dilation=dil)
        y = gpuconv.conv_transpose2d(x, w, **kw)
        assert gpuconv.last_kernel().kernels == ("numpy_col2im",)
        ty = torch.nn.functional.conv_transpose2d(torch.tensor(x), torch.tensor(w), **kw).numpy()
        np.testing.assert_allclose(y, ty, rtol=1e-12, atol=1e-12)


DW_GEOMETRIES = {  # x shape, w shape, stride, padding, dilation, groups, flip
    "mobilenet-s1": ((2, 6, 11, 9), (6, 1, 3, 3), 1, 1, 1, 6, False),
    "mobilenet-s2": ((3, 5, 12, 13), (5, 1, 3, 3), 2, 1, 1, 5, False),
    "mult3-s(2,3)-dil-flip": ((2, 4, 13, 17), (12, 1, 3, 2), (2, 3), ((2, 0), (1, 3)), (2, 3), 4, True),
    "5x5-same-n1": ((1, 3, 7, 6), (3, 1, 5, 5), 1, "same", 1, 3, True),
}


@pytest.mark.parametrize("workspace_mb", [None, "0.025"])  # 0.025: blocks of one channel
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("name", list(DW_GEOMETRIES))
def test_depthwise_filter_planes(monkeypatch, name, dtype, workspace_mb):
    if workspace_mb:
        monkeypatch.setenv("GPUCONV_NUMPY_WORKSPACE_MB", workspace_mb)
    xs, ws, stride, padding, dilation, groups, flip = DW_GEOMETRIES[name]
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, flip=flip)
    rng = np.random.default_rng(4)
    x = make_layout(rng.standard_normal(xs).astype(dtype), "sliced", rng)
    gy = rng.standard_normal(forward_shape(xs, ws, stride, padding, dilation, flip)).astype(dtype)
    runs = [G.conv2d_weight(x, ws, gy, **kw) for _ in range(2)]
    assert gpuconv.last_kernel().kernels == ("numpy_depthwise_filter_planes",)
    assert runs[0].tobytes() == runs[1].tobytes() and runs[0].dtype == dtype
    (_, ew, _), (_, mw, _) = reference_grads(x, np.zeros(ws), gy, **kw)
    assert_close(runs[0], ew, mw, dtype, what=name)


@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_depthwise_filter_with_non_finite_input_recomputed_by_taps(value):
    """A zero of gy times an infinite plane value would be NaN where the exact sum has no such term: the
    result is not all finite, so the per-tap einsum recomputes it (and says so)."""
    xs, ws, stride, padding, dilation, groups, flip = DW_GEOMETRIES["mobilenet-s2"]
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, flip=flip)
    rng = np.random.default_rng(5)
    x = rng.standard_normal(xs)
    x[1, 2, 11, 12] = value  # read by few taps only (the last row and column)
    gy = rng.standard_normal(forward_shape(xs, ws, stride, padding, dilation, flip))
    got = G.conv2d_weight(x, ws, gy, **kw)
    assert gpuconv.last_kernel().kernels == ("numpy_depthwise_filter_taps",)
    (_, ew, _), (_, mw, _) = reference_grads(x, np.zeros(ws), gy, **kw)
    assert np.isfinite(got).sum() == np.isfinite(ew).sum() > 0
    assert_close(got, ew, mw, np.float64)
