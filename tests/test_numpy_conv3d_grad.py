"""The NumPy path's own 3-D gradients (``gpuconv/_numpy/conv3d_grad.py``): ``numpy_col2im3d`` /
``numpy_depthwise_data3d`` (backward data) and ``numpy_im2col3d_filter`` (backward filter), through the public
``gpuconv.grad.conv3d_input`` / ``conv3d_weight`` / ``conv_transpose3d`` and the module's entry points (which
take the activation's derivative), against the textbook reference (tests/reference.py ``conv_nd_grads_ref``,
tolerance model of tests/tolerance.py) and PyTorch (``torch.nn.grad.conv3d_input`` / ``conv3d_weight``,
autograd through an activation); which strategy runs, chunks forced by a small workspace (bitwise equal to
the unsplit run where the module says so), the depth-tap lowering where one chunk does not fit, the memory
bound, determinism."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import gpuconv
from gpuconv import grad
from gpuconv._geometry_nd import conv_nd_geometry
from gpuconv._numpy import _workspace, conv3d_grad
from tests.reference import apply_activation, conv_nd_grads_ref, explicit_padding_nd
from tests.runners import torch
from tests.support import noncontiguous_view
from tests.tolerance import assert_close

# x shape, w shape, stride, padding, dilation, groups, flip
CASES = {
    "3x3x3-s1-p1": ((2, 3, 5, 7, 6), (4, 3, 3, 3, 3), 1, 1, 1, 1, False),
    "strided-dil-groups": ((3, 4, 7, 9, 8), (6, 2, 3, 2, 3), (2, 1, 3), (1, 0, 2), (1, 2, 1), 2, False),
    "asym-pad-flip": ((1, 3, 6, 5, 7), (5, 3, 2, 3, 2), (1, 2, 1), ((0, 2), (1, 0), (2, 1)), 1, 1, True),
    "same-s2-flip": ((2, 2, 7, 6, 5), (3, 2, 3, 3, 3), 2, "same", 1, 1, True),
    "same-dil": ((1, 3, 6, 7, 5), (2, 3, 3, 2, 3), 1, "same", (2, 1, 2), 1, False),
    "depthwise": ((3, 4, 6, 5, 7), (4, 1, 3, 3, 3), 1, 1, 1, 4, False),
    "depthwise-mult2-s2": ((2, 3, 7, 6, 5), (6, 1, 2, 3, 3), 2, 1, (2, 1, 1), 3, True),
    "depthwise-mult3": ((2, 2, 5, 5, 6), (6, 1, 3, 1, 3), (1, 2, 1), (1, 0, 1), 1, 2, False),  # Kg 3: GEMM
    "1x1x1-s2": ((2, 6, 5, 6, 7), (4, 6, 1, 1, 1), 2, 0, 1, 1, False),
    "big-stride-padding-only": ((1, 2, 5, 5, 5), (3, 2, 2, 2, 2), 4, 2, 1, 1, False),
    "n0": ((0, 3, 4, 5, 5), (2, 3, 3, 3, 3), 1, 1, 1, 1, False),
}
DATA_KERNEL = {"depthwise": "numpy_depthwise_data3d", "depthwise-mult2-s2": "numpy_depthwise_data3d"}


def _t(v):
    return (v,) * 3 if isinstance(v, int) else tuple(v)


def _data(name, dtype, layout="contiguous", seed=0):
    xs, ws, stride, padding, dilation, groups, flip = CASES[name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dtype)
    w = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(dtype)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, flip=flip)
    pad = explicit_padding_nd(padding, ws[2:], _t(stride), _t(dilation), xs[2:], flip)
    out = tuple(max(0, (s + lo + hi - d * (k - 1) - 1) // st + 1)
                for s, (lo, hi), d, k, st in zip(xs[2:], pad, _t(dilation), ws[2:], _t(stride)))
    gy = rng.standard_normal((xs[0], ws[0]) + out).astype(dtype)
    x, w, gy = (noncontiguous_view(a, layout, rng) for a in (x, w, gy))
    return x, w, gy, kw, pad


def _reference(x, w, gy, kw, pad):
    args = (_t(kw["stride"]), pad, _t(kw["dilation"]), kw["groups"], kw["flip"])
    gx, gw = conv_nd_grads_ref(x, w, gy, *args)
    mx, mw = conv_nd_grads_ref(np.abs(x), np.abs(w), np.abs(gy), *args)
    return gx, mx, gw, mw


@pytest.mark.parametrize("layout", ["contiguous", "sliced"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_match_the_reference(name, dtype, layout):
    x, w, gy, kw, pad = _data(name, dtype, "contiguous" if name == "n0" else layout)
    if x.shape[0] == 0:  # N = 0: empty gx, zero gw (the reference's einsum takes no empty batch)
        gx = grad.conv3d_input(x.shape, w, gy, **kw)
        assert gx.shape == x.shape and gx.dtype == dtype
        gw = grad.conv3d_weight(x, w.shape, gy, **kw)
        assert gw.dtype == dtype and not gw.any() and gw.shape == w.shape
        return
    gx_ref, gx_mag, gw_ref, gw_mag = _reference(x, w, gy, kw, pad)
    gx = grad.conv3d_input(x.shape, w, gy, **kw)
    assert gx.dtype == dtype and gx.shape == x.shape
    assert gpuconv.last_kernel().kernels == (DATA_KERNEL.get(name, "numpy_col2im3d"),)
    assert_close(gx, gx_ref, gx_mag, dtype, "conv3d_input")
    gw = grad.conv3d_weight(x, w.shape, gy, **kw)
    assert gw.dtype == dtype and gw.shape == w.shape
    assert gpuconv.last_kernel().kernels == ("numpy_im2col3d_filter",)
    assert_close(gw, gw_ref, gw_mag, dtype, "conv3d_weight")


def _geom(x, w, kw):
    return conv_nd_geometry(3, x.shape, w.shape, None, kw["stride"], kw["padding"], kw["dilation"], kw["groups"],
                            flip=kw["flip"])


def _plan(which, geom, x, gy, act=None):
    if which == "data":
        return conv3d_grad._data_plan(geom, x.dtype, gy.shape[2:], x.shape[2:], act)
    return conv3d_grad._filter_plan(geom, x.dtype, act)


def _split_limit(monkeypatch, which, mode, geom, x, gy, act=None):
    """Sets the largest workspace limit (of a fine geometric scan) under which ``which``'s plan splits by
    ``mode``: 'samples' (several chunks of whole samples) or 'depths' (one sample, several output depths)."""
    N, OD = x.shape[0], gy.shape[2]
    for mb in np.geomspace(2.0, 1e-4, 200):
        monkeypatch.setenv("GPUCONV_NUMPY_WORKSPACE_MB", f"{mb:.7f}")
        plan = _plan(which, geom, x, gy, act)
        if plan is None:
            break
        n, od = plan
        if (mode == "samples" and 1 < n < N and od == OD) or (mode == "depths" and n == 1 and 1 < od < OD):
            return plan
    raise AssertionError(f"no workspace limit splits {which} by {mode}")


@pytest.mark.parametrize("mode", ["samples", "depths"])
@pytest.mark.parametrize("name", ["3x3x3-s1-p1", "strided-dil-groups", "same-s2-flip", "depthwise-mult2-s2",
                                  "asym-pad-flip"])
def test_chunks_split_and_bitwise_equal(monkeypatch, name, mode):
    """A small workspace splits the work into chunks of samples, or of output depths when one sample does
    not fit; the data gradient is bitwise the unsplit one either way (depth chunks in decreasing order), the
    filter gradient where only samples split (its per-sample GEMMs summed in order), otherwise within the
    tolerance."""
    x, w, gy, kw, pad = _data(name, np.float64, seed=4)
    x, gy = np.concatenate([x] * 5), np.concatenate([gy] * 5)  # N = 5..15
    geom = _geom(x, w, kw)
    assert _plan("data", geom, x, gy) == (x.shape[0], gy.shape[2]) == _plan("filter", geom, x, gy)  # unsplit
    whole = grad.conv3d_input(x.shape, w, gy, **kw), grad.conv3d_weight(x, w.shape, gy, **kw)
    _split_limit(monkeypatch, "data", mode, geom, x, gy)
    gx = grad.conv3d_input(x.shape, w, gy, **kw)
    assert gpuconv.last_kernel().kernels == (DATA_KERNEL.get(name, "numpy_col2im3d"),)
    assert gx.tobytes() == whole[0].tobytes()
    _split_limit(monkeypatch, "filter", mode, geom, x, gy)
    gw = grad.conv3d_weight(x, w.shape, gy, **kw)
    assert gpuconv.last_kernel().kernels == ("numpy_im2col3d_filter",)
    if mode == "samples":
        assert gw.tobytes() == whole[1].tobytes()
    gx_ref, gx_mag, gw_ref, gw_mag = _reference(x, w, gy, kw, pad)
    assert_close(gw, gw_ref, gw_mag, np.float64, "split conv3d_weight")
    assert_close(gx, gx_ref, gx_mag, np.float64, "split conv3d_input")


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_lowering_where_one_depth_does_not_fit(monkeypatch, dtype):
    monkeypatch.setenv("GPUCONV_NUMPY_WORKSPACE_MB", "0.001")
    x, w, gy, kw, pad = _data("3x3x3-s1-p1", dtype)
    gx_ref, gx_mag, gw_ref, gw_mag = _reference(x, w, gy, kw, pad)
    gx = grad.conv3d_input(x.shape, w, gy, **kw)
    ks = gpuconv.last_kernel().kernels
    assert ks[0] == "conv3d depth-tap lowering (one output depth's chunk does not fit the workspace limit)"
    assert ks[1].startswith("conv3d depth tap 0/3")
    assert_close(gx, gx_ref, gx_mag, dtype, "lowered conv3d_input")
    gw = grad.conv3d_weight(x, w.shape, gy, **kw)
    assert gpuconv.last_kernel().kernels[0].startswith("conv3d depth-tap lowering (one output depth's")
    assert_close(gw, gw_ref, gw_mag, dtype, "lowered conv3d_weight")


def test_transposed_convolution_with_short_gy():
    """conv_transpose3d (output_padding >= stride: gy shorter than the forward output of gx's size) runs
    numpy_col2im3d; against torch's conv_transpose3d where installed, else the reference."""
    rng = np.random.default_rng(1)
    xin = rng.standard_normal((2, 4, 3, 4, 3))
    w = rng.standard_normal((4, 3, 3, 2, 3))
    y = gpuconv.conv_transpose3d(xin, w, None, stride=(2, 3, 2), padding=(1, 0, 1), output_padding=(1, 2, 0))
    assert gpuconv.last_kernel().kernels == ("numpy_col2im3d",)
    if torch is not None:
        ref = torch.nn.functional.conv_transpose3d(torch.tensor(xin), torch.tensor(w), None, (2, 3, 2), (1, 0, 1),
                                                   (1, 2, 0)).numpy()
        np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


def test_peak_memory_within_output_plus_workspace(monkeypatch):
    """Temporaries (tracemalloc: NumPy's allocations) beyond the result stay within the workspace limit plus
    small arrays (and, for float16, the float32 accumulator the plan counts inside the limit)."""
    limit_mb = 1
    monkeypatch.setenv("GPUCONV_NUMPY_WORKSPACE_MB", str(limit_mb))
    limit = limit_mb * 2**20
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float16):
        for ws, groups in (((8, 6, 3, 3, 3), 1), ((12, 1, 3, 3, 3), 6)):
            x = rng.standard_normal((3, 6, 8, 20, 20)).astype(dtype)
            w = rng.standard_normal(ws).astype(dtype)
            for stride in (1, 2):
                geom = conv_nd_geometry(3, x.shape, w.shape, None, stride, 1, 1, groups)
                gy = rng.standard_normal(geom.output_shape).astype(dtype)
                for call, out_bytes, kernel in (
                        (lambda: grad.conv3d_input(x.shape, w, gy, stride, 1, 1, groups), x.nbytes, None),
                        (lambda: grad.conv3d_weight(x, w.shape, gy, stride, 1, 1, groups), w.nbytes,
                         "numpy_im2col3d_filter")):
                    _workspace.release_workspace()
                    tracemalloc.start()
                    call()
                    peak = tracemalloc.get_traced_memory()[1]
                    tracemalloc.stop()
                    _workspace.release_workspace()
                    ran = gpuconv.last_kernel().kernels
                    assert ran[0].startswith("numpy_") and (kernel is None or ran == (kernel,)), ran
                    assert peak - out_bytes <= limit + 4 * w.nbytes + 2**16, (dtype, ws, stride, ran, peak)


def test_bitwise_deterministic(monkeypatch):
    """The same call twice, and on one thread, gives the same bytes."""
    x, w, gy, kw, _ = _data("strided-dil-groups", np.float32)
    dx, dw, dgy, dkw, _ = _data("depthwise", np.float32)
    calls = lambda: (grad.conv3d_input(x.shape, w, gy, **kw), grad.conv3d_weight(x, w.shape, gy, **kw),
                     grad.conv3d_input(dx.shape, dw, dgy, **dkw))
    runs = [calls(), calls()]
    monkeypatch.setenv("GPUCONV_NUMPY_THREADS", "1")
    runs.append(calls())
    for run in runs[1:]:
        assert all(a.tobytes() == b.tobytes() for a, b in zip(run, runs[0]))


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.torch
@pytest.mark.parametrize("name", [n for n in CASES if n != "n0"])
def test_match_torch_grad_functions(name):
    x, w, gy, kw, pad = _data(name, np.float64, seed=3)
    if kw["flip"] or not isinstance(kw["padding"], (int, tuple)) or np.ndim(kw["padding"]) > 1:
        pytest.skip("torch.nn.grad takes symmetric int padding and no flip (autograd test below)")
    args = (kw["stride"], kw["padding"], kw["dilation"], kw["groups"])
    ref_x = torch.nn.grad.conv3d_input(x.shape, torch.tensor(w), torch.tensor(gy), *args).numpy()
    ref_w = torch.nn.grad.conv3d_weight(torch.tensor(x), w.shape, torch.tensor(gy), *args).numpy()
    np.testing.assert_allclose(grad.conv3d_input(x.shape, w, gy, **kw), ref_x, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad.conv3d_weight(x, w.shape, gy, **kw), ref_w, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.torch
@pytest.mark.parametrize("split", [None, "samples", "depths"])
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("name", ["asym-pad-flip", "strided-dil-groups", "depthwise-mult2-s2"])
def test_activation_derivative_matches_torch_autograd(monkeypatch, name, activation, split):
    """The entry points with ``out`` / ``activation``: the gradients of ``act(conv3d(x, w))`` (the derivative
    applied in the chunk copies of ``gy``), against PyTorch autograd through F.pad + F.conv3d + the activation;
    with a workspace small enough to split the samples or the output depths too."""
    x, w, gy, kw, pad = _data(name, np.float64, seed=5)
    x, gy = np.concatenate([x] * 3), np.concatenate([gy] * 3)
    F = torch.nn.functional
    xt, wt = (torch.tensor(a, requires_grad=True) for a in (x, w))
    flat = tuple(p for lohi in reversed(pad) for p in lohi)
    z = F.conv3d(F.pad(xt, flat), wt.flip(2, 3, 4) if kw["flip"] else wt, None, kw["stride"], 0, kw["dilation"],
                 kw["groups"])
    act = {"relu": F.relu, "leaky_relu": lambda v: F.leaky_relu(v, 0.01), "sigmoid": torch.sigmoid,
           "tanh": torch.tanh}[activation]
    y = act(z)
    y.backward(torch.tensor(gy))
    out = y.detach().numpy()
    np.testing.assert_allclose(out, apply_activation(z.detach().numpy(), activation), rtol=1e-12, atol=1e-12)
    geom = _geom(x, w, kw)
    act = conv3d_grad.Derivative(out, activation)
    if split:
        _split_limit(monkeypatch, "data", split, geom, x, gy, act)
    gx, rec = conv3d_grad.data_gradient(gy, w, geom, x.shape[2:], out=out, activation=activation)
    assert gx is not None, rec
    if split:
        _split_limit(monkeypatch, "filter", split, geom, x, gy, act)
    gw, rec = conv3d_grad.filter_gradient(x, gy, geom, out=out, activation=activation)
    assert gw is not None, rec
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gw, wt.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_entry_points_check_out():
    x, w, gy, kw, _ = _data("3x3x3-s1-p1", np.float32)
    geom = _geom(x, w, kw)
    with pytest.raises(ValueError, match="out and activation"):
        conv3d_grad.data_gradient(gy, w, geom, x.shape[2:], out=gy)
    with pytest.raises(ValueError, match=r"out has shape \(2, 4, 5, 7\)"):
        conv3d_grad.filter_gradient(x, gy, geom, out=gy[..., 0], activation="relu")


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_filter_gradient_sums_the_bias_from_its_chunks(monkeypatch, dtype):
    """``filter_gradient(..., bias=)``: the bias gradient of ``gy * act'`` from the chunk copies, over split
    samples too."""
    x, w, gy, kw, _ = _data("strided-dil-groups", dtype, seed=7)
    rng = np.random.default_rng(8)
    out = rng.standard_normal(gy.shape).astype(dtype)
    geom = _geom(x, w, kw)
    ct = np.float32 if dtype == np.float16 else dtype
    act = conv3d_grad.Derivative(out, "leaky_relu")
    g = gy.astype(np.float64) * np.where(out.astype(np.float64) > 0, 1.0, 0.01)
    for split in (None, "samples"):
        if split:
            _split_limit(monkeypatch, "filter", split, geom, x, gy, act)
        bias = np.empty(geom.K, ct)
        gw, rec = conv3d_grad.filter_gradient(x, gy, geom, out=out, activation="leaky_relu", bias=bias)
        assert rec == ["numpy_im2col3d_filter"]
        assert_close(bias, g.sum(axis=(0, 2, 3, 4)), np.abs(g).sum(axis=(0, 2, 3, 4)), dtype, "bias")
