"""``gpuconv.cudnn``: CuPy 13's ``cupy.cudnn`` convolution and pooling functions (issue 18), on the NumPy path and
on our CUDA kernels through the emulator (a GPU where there is one), against PyTorch CPU (forward, autograd,
pooling, CuPy 13's argument forms: ``dilation=None``, ``b`` of shape ``(1, K, 1, 1)``, strided views, pooling
padding beyond half the window); sigpy itself (``pip install sigpy``, skipped without it: its ``sigpy/conv.py``
with the one import changed, against sigpy's CPU results) and, where sigpy is missing, the calls its
``sigpy.conv`` makes, replicated here, against SciPy (1-D / 2-D / 3-D, strides, 'full' and 'valid' as explicit
padding, complex data split into four real convolutions by the caller); plus the argument mapping (tensor
cores, auto-tune, layouts), CuPy 13's signatures and the errors.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

try:
    import scipy.signal as scipy_signal
except ImportError:  # an optional oracle: the sigpy test skips without it
    scipy_signal = None

import gpuconv
from gpuconv import cudnn
from gpuconv._backend import CudaBackend, use_backend
from gpuconv._geometry import conv_geometry
from tests.runners import emulated_runtime, gpu_unavailable_reason, torch

KINDS = [pytest.param("numpy", id="numpy"), pytest.param("emulated", id="emulated", marks=pytest.mark.emulated),
         pytest.param("gpu", id="gpu", marks=pytest.mark.gpu)]


class On:
    """Arrays and calls of one backend: ``arr`` turns NumPy test data into its arrays, ``host`` back."""

    def __init__(self, kind):
        self.kind = kind
        if kind == "gpu":
            reason = gpu_unavailable_reason()
            if reason:
                pytest.skip(reason)
            import cupy
            self.arr, self.host = cupy.asarray, cupy.asnumpy
        else:
            self.arr, self.host = np.asarray, np.asarray

    def __enter__(self):
        self._ctx = (use_backend(CudaBackend(emulated_runtime())) if self.kind == "emulated"
                     else contextlib.nullcontext())
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def _torch_fn(nd, name):
    import torch.nn.functional as F
    return getattr(F, f"{name}{nd}d")


CONV_CASES = {  # nd, x shape, W shape, pad, stride, dilation, groups
    "1d-full-s2": (1, (2, 4, 9), (6, 2, 3), (2,), (2,), (1,), 2),
    "2d-dil": (2, (2, 3, 7, 6), (4, 3, 3, 2), (1, 0), (1, 2), (2, 1), 1),
    "2d-full-s3": (2, (1, 2, 5, 6), (3, 2, 2, 3), (1, 2), (3, 1), (1, 1), 1),
    "3d-g2": (3, (2, 4, 4, 5, 3), (4, 2, 2, 3, 2), (1, 2, 1), (1, 2, 1), (1, 1, 2), 2),
    "3d-full-s2": (3, (1, 2, 3, 4, 5), (2, 2, 3, 2, 3), (2, 1, 2), (2, 1, 2), (1, 1, 1), 1),
}


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(CONV_CASES))
def test_convolution_functions_match_pytorch(kind, name):
    nd, xs, ws, pad, stride, dil, groups = CONV_CASES[name]
    rng = np.random.default_rng(0)
    x, W, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(W, requires_grad=True)
    yt = _torch_fn(nd, "conv")(xt, wt, torch.tensor(b), stride, pad, dil, groups)
    gy = rng.standard_normal(yt.shape)
    yt.backward(torch.tensor(gy))
    bx = rng.standard_normal(xs[1])
    with On(kind) as on:
        y = on.arr(np.full(yt.shape, np.nan))
        assert cudnn.convolution_forward(on.arr(x), on.arr(W), on.arr(b), y, pad, stride, dil, groups,
                                         auto_tune=True, tensor_core="auto") is None
        np.testing.assert_allclose(on.host(y), yt.detach().numpy(), rtol=1e-11, atol=1e-11)
        gx = on.arr(np.full(xs, np.nan))
        cudnn.convolution_backward_data(on.arr(W), on.arr(gy), on.arr(bx), gx, pad, stride, dil, groups,
                                        deterministic=True, auto_tune=False, tensor_core="never")
        expected = xt.grad.numpy() + bx.reshape((1, -1) + (1,) * nd)
        np.testing.assert_allclose(on.host(gx), expected, rtol=1e-11, atol=1e-11)
        gW = on.arr(np.full(ws, np.nan))
        cudnn.convolution_backward_filter(on.arr(x), on.arr(gy), gW, pad, stride, dil, groups,
                                          deterministic=False, auto_tune=True, tensor_core="always")
        np.testing.assert_allclose(on.host(gW), wt.grad.numpy(), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_float32_and_float16(kind):
    rng = np.random.default_rng(1)
    for dt, tol in ((np.float32, 1e-5), (np.float16, 2e-2)):
        x = rng.standard_normal((2, 3, 6, 5, 4)).astype(dt)
        W = rng.standard_normal((2, 3, 2, 2, 2)).astype(dt)
        ref = gpuconv.conv3d(x.astype(np.float64), W.astype(np.float64), None, 1, 1)
        with On(kind) as on:
            y = on.arr(np.empty(ref.shape, dt))
            cudnn.convolution_forward(on.arr(x), on.arr(W), None, y, (1, 1, 1), (1, 1, 1), (1, 1, 1), 1,
                                      auto_tune=False, tensor_core="never")
            np.testing.assert_allclose(on.host(y).astype(np.float64), ref, rtol=tol, atol=tol * 4)


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_backward_float32_and_float16(kind, nd):
    """The two backward functions (backward_data with its bias) in float32 and float16 against PyTorch's
    float64 autograd of the same (rounded) data: the result is rounded to the dtype once, plus the bias'."""
    rng = np.random.default_rng(11 + nd)
    xs, ws = (2, 4) + (9, 7, 6)[:nd], (6, 2) + (3, 2, 3)[:nd]
    ones = (1,) * nd
    for dt, tol in ((np.float32, 1e-5), (np.float16, 3e-3)):
        x, W = rng.standard_normal(xs).astype(dt), rng.standard_normal(ws).astype(dt)
        b = rng.standard_normal(xs[1]).astype(dt)
        xt = torch.tensor(x.astype(np.float64), requires_grad=True)
        wt = torch.tensor(W.astype(np.float64), requires_grad=True)
        yt = _torch_fn(nd, "conv")(xt, wt, None, 1, 1, 1, 2)
        gy = rng.standard_normal(yt.shape).astype(dt)
        yt.backward(torch.tensor(gy.astype(np.float64)))
        gx_ref = xt.grad.numpy() + b.astype(np.float64).reshape((1, -1) + (1,) * nd)
        with On(kind) as on:
            gx, gW = on.arr(np.full(xs, np.nan, dt)), on.arr(np.full(ws, np.nan, dt))
            cudnn.convolution_backward_data(on.arr(W), on.arr(gy), on.arr(b), gx, ones, ones, ones, 2,
                                            deterministic=True, auto_tune=False, tensor_core="auto")
            cudnn.convolution_backward_filter(on.arr(x), on.arr(gy), gW, ones, ones, ones, 2, deterministic=True,
                                              auto_tune=False, tensor_core="auto")
            for got, ref in ((on.host(gx), gx_ref), (on.host(gW), wt.grad.numpy())):
                assert got.dtype == dt
                np.testing.assert_allclose(got.astype(np.float64), ref, rtol=tol, atol=tol * np.abs(ref).max())


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_cupy13_argument_forms_and_strided_arrays(kind, nd, dtype):
    """What CuPy 13 accepted and sigpy passes: ``dilation=None`` (ones), ``b`` of shape ``(1, K, 1, ...)``
    (CuPy reshapes it to ``(1, -1, 1, ...)``), a flipped filter view (sigpy's ``util.flip``), the real part of
    a complex array (sigpy's ``_complex``: every other element), a transposed output gradient, and out-arrays
    that are not C-contiguous; float32 and float64 against PyTorch's autograd."""
    rng = np.random.default_rng(7 + nd)
    xs, ws = (2, 4) + (7, 5, 6)[:nd], (6, 2) + (3, 2, 3)[:nd]
    pad, stride = (2, 1, 0)[:nd], (2, 1, 2)[:nd]
    x = (rng.standard_normal(xs) + 1j * rng.standard_normal(xs)).astype(np.complex128 if dtype == np.float64
                                                                          else np.complex64).real  # strided
    Wbig = rng.standard_normal(ws).astype(dtype)
    W = Wbig[(Ellipsis,) + (slice(None, None, -1),) * nd]  # negative strides
    b = rng.standard_normal((1, ws[0]) + (1,) * nd).astype(dtype)
    xt, wt = torch.tensor(np.ascontiguousarray(x), requires_grad=True), torch.tensor(W.copy(), requires_grad=True)
    yt = _torch_fn(nd, "conv")(xt, wt, torch.tensor(b.ravel()), stride, pad, 1, 2)
    gy = np.ascontiguousarray(rng.standard_normal(yt.shape[::-1]).astype(dtype)).T  # transposed view
    yt.backward(torch.tensor(np.ascontiguousarray(gy)))
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)
    with On(kind) as on:
        xa, Wa = on.arr(x), on.arr(W)  # still strided on NumPy and the emulator (cupy.asarray copies)
        y = on.arr(np.full(yt.shape[::-1], np.nan, dtype)).T  # an F-ordered out-array
        cudnn.convolution_forward(xa, Wa, on.arr(b), y, pad, stride, None, 2, auto_tune=False, tensor_core="never")
        np.testing.assert_allclose(on.host(y), yt.detach().numpy(), **tol)
        gx = on.arr(np.full(xs, np.nan, dtype))
        cudnn.convolution_backward_data(Wa, on.arr(gy), None, gx, pad, stride, None, 2, deterministic=False,
                                        auto_tune=True, tensor_core="auto")
        np.testing.assert_allclose(on.host(gx), xt.grad.numpy(), **tol)
        gW = on.arr(np.full(ws, np.nan, dtype))
        cudnn.convolution_backward_filter(xa, on.arr(gy), gW, pad, stride, None, 2, deterministic=True,
                                          auto_tune=False, tensor_core="never")
        np.testing.assert_allclose(on.host(gW), wt.grad.numpy(), **tol)


# --------------------------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------------------------

POOL_MODES = {"max": cudnn.CUDNN_POOLING_MAX, "include": cudnn.CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING,
              "exclude": cudnn.CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING}


POOL_CASES = {1: ((2, 3, 11), (3,), (2,), (1,)), 2: ((2, 3, 7, 8), (3, 2), (2, 2), (1, 1)),
              3: ((1, 2, 5, 6, 7), (3, 2, 3), (2, 2, 1), (1, 0, 1))}


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", list(POOL_MODES))
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_pooling_matches_pytorch(kind, mode, nd):
    import torch.nn.functional as F
    rng = np.random.default_rng(2)
    shape, ksize, stride, pad = POOL_CASES[nd]
    x = rng.standard_normal(shape)
    xt = torch.tensor(x, requires_grad=True)
    if mode == "max":
        yt = getattr(F, f"max_pool{nd}d")(xt, ksize, stride, pad)
    else:
        yt = getattr(F, f"avg_pool{nd}d")(xt, ksize, stride, pad, count_include_pad=mode == "include")
    gy = rng.standard_normal(yt.shape)
    yt.backward(torch.tensor(gy))
    with On(kind) as on:
        y = on.arr(np.empty(yt.shape))
        assert cudnn.pooling_forward(on.arr(x), y, ksize, stride, pad, POOL_MODES[mode]) is y
        np.testing.assert_allclose(on.host(y), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
        gx = cudnn.pooling_backward(on.arr(x), y, on.arr(gy), ksize, stride, pad, POOL_MODES[mode])
        assert gx.shape == x.shape
        np.testing.assert_allclose(on.host(gx), xt.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", list(POOL_MODES))
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_pooling_padding_beyond_half_the_window(kind, mode, nd):
    """cuDNN pads each side by ``pad`` up to ``ksize - 1`` (PyTorch's pooling stops at ``ksize // 2``):
    against PyTorch on input padded explicitly (-inf for max, 0 for the averages; excluding the padding = the
    window sum over the count of input cells), forward and autograd."""
    import torch.nn.functional as F
    rng = np.random.default_rng(20 + nd)
    shape, ksize, stride, pad = {1: ((2, 3, 6), (3,), (2,), (2,)), 2: ((1, 2, 5, 4), (3, 2), (1, 2), (2, 1)),
                                 3: ((1, 2, 3, 4, 5), (2, 3, 3), (1, 2, 2), (1, 2, 2))}[nd]
    x = rng.standard_normal(shape)
    xt = torch.tensor(x, requires_grad=True)
    tp = tuple(p for p in pad[::-1] for _ in range(2))

    def pool2(a, op):  # through 2-D / 3-D: avg_pool1d has no divisor_override
        a = a[:, :, None] if nd == 1 else a
        out = (getattr(F, f"max_pool{max(nd, 2)}d")(a, (1,) * (nd == 1) + ksize, (1,) * (nd == 1) + stride)
               if op == "max" else
               getattr(F, f"avg_pool{max(nd, 2)}d")(a, (1,) * (nd == 1) + ksize, (1,) * (nd == 1) + stride,
                                                   divisor_override=1))
        return out[:, :, 0] if nd == 1 else out

    if mode == "max":
        yt = pool2(F.pad(xt, tp, value=-np.inf), "max")
    else:
        div = pool2(F.pad(torch.ones_like(xt), tp), "sum") if mode == "exclude" else float(np.prod(ksize))
        yt = pool2(F.pad(xt, tp), "sum") / div
    gy = rng.standard_normal(yt.shape)
    yt.backward(torch.tensor(gy))
    with On(kind) as on:
        y = on.arr(np.empty(yt.shape))
        cudnn.pooling_forward(on.arr(x), y, ksize, stride, pad, POOL_MODES[mode])
        np.testing.assert_allclose(on.host(y), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
        gx = cudnn.pooling_backward(on.arr(x), y, on.arr(gy), ksize, stride, pad, POOL_MODES[mode])
        np.testing.assert_allclose(on.host(gx), xt.grad.numpy(), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# sigpy's calls (sigpy/conv.py's CUDA functions), on NumPy arrays: what a user switching the import runs
# --------------------------------------------------------------------------------------------

def _sigpy_params(data_shape, filt_shape, mode, strides):
    """sigpy's parameter arithmetic for multi-channel data ``(B, c_i, *m)`` and filters ``(c_o, c_i, *n)``."""
    D = len(filt_shape) - 2
    m, n = tuple(data_shape[-D:]), tuple(filt_shape[-D:])
    s = tuple(strides) if strides else (1,) * D
    if mode == "full":
        p = tuple((a + b - 1 + c - 1) // c for a, b, c in zip(m, n, s))
        pads = tuple(b - 1 for b in n)
    else:
        p = tuple((a - b + 1 + c - 1) // c for a, b, c in zip(m, n, s))
        pads = (0,) * D
    return D, s, p, pads


def _flip(a, D):
    return a[(Ellipsis,) + (slice(None, None, -1),) * D]


def sigpy_convolve(data, filt, mode, strides):
    """As sigpy's ``_convolve_cuda``: true convolution = cross-correlation with the flipped filter."""
    D, s, p, pads = _sigpy_params(data.shape, filt.shape, mode, strides)
    out = np.empty((data.shape[0], filt.shape[0]) + p, dtype=data.dtype)
    cudnn.convolution_forward(data, _flip(filt, D), None, out, pads, s, (1,) * D, 1, auto_tune=True,
                              tensor_core="auto")
    return out


def sigpy_adjoint_data(output, filt, data_shape, mode, strides):
    """As sigpy's ``_convolve_adjoint_data_cuda``."""
    D, s, p, pads = _sigpy_params(data_shape, filt.shape, mode, strides)
    data = np.empty(data_shape, dtype=output.dtype)
    cudnn.convolution_backward_data(_flip(filt, D), output, None, data, pads, s, (1,) * D, 1,
                                    deterministic=False, auto_tune=True, tensor_core="auto")
    return data


def sigpy_adjoint_filter(output, data, filt_shape, mode, strides):
    """As sigpy's ``_convolve_adjoint_filter_cuda``."""
    D, s, p, pads = _sigpy_params(data.shape, filt_shape, mode, strides)
    filt = np.empty(filt_shape, dtype=output.dtype)
    cudnn.convolution_backward_filter(data, output, filt, pads, s, (1,) * D, 1, deterministic=False,
                                      auto_tune=True, tensor_core="auto")
    return _flip(filt, D)


def split_complex(func, a, b, *args):
    """sigpy's ``_complex``: one complex convolution as four real ones."""
    real = func(a.real.copy(), b.real.copy(), *args) - func(a.imag.copy(), b.imag.copy(), *args)
    imag = func(a.imag.copy(), b.real.copy(), *args) + func(a.real.copy(), b.imag.copy(), *args)
    return real + 1j * imag


def scipy_convolve(data, filt, mode, strides):
    """The definition sigpy's CPU path uses: per (batch, out, in) channel ``scipy.signal.convolve``, subsampled."""
    D = filt.ndim - 2
    s = tuple(strides) if strides else (1,) * D
    out = None
    for k in range(data.shape[0]):
        for j in range(filt.shape[0]):
            for i in range(filt.shape[1]):
                r = scipy_signal.convolve(data[k, i], filt[j, i], mode=mode)[tuple(slice(None, None, c) for c in s)]
                if out is None:
                    out = np.zeros((data.shape[0], filt.shape[0]) + r.shape, dtype=np.result_type(data, filt))
                out[k, j] += r
    return out


SIGPY_CASES = {
    "1d-full": ((2, 3, 11), (2, 3, 4), "full", None),
    "1d-valid-s2": ((1, 2, 12), (3, 2, 3), "valid", (2,)),
    "2d-full-s2": ((2, 1, 7, 6), (2, 1, 3, 2), "full", (2, 1)),
    "2d-valid": ((1, 2, 8, 5), (1, 2, 3, 3), "valid", None),
    "3d-full-s": ((1, 2, 4, 5, 3), (2, 2, 2, 3, 2), "full", (1, 2, 2)),
    "3d-valid": ((2, 1, 5, 4, 6), (1, 1, 3, 2, 3), "valid", None),
}


@pytest.mark.skipif(scipy_signal is None, reason="SciPy not installed")
@pytest.mark.parametrize("kind", [k for k in KINDS if k.values[0] != "gpu"])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize("name", list(SIGPY_CASES))
def test_sigpy_calls(kind, dtype, name):
    """sigpy's forward, adjoint-data and adjoint-filter CUDA functions, run with ``gpuconv.cudnn`` on NumPy
    arrays: the forward equals SciPy's convolution (sigpy's CPU definition), and the two adjoints satisfy
    ``<A x, y> == <x, A^H y>`` (data) and ``<A_x f, y> == <f, A_x^H y>`` (filter)."""
    ds, fs, mode, strides = SIGPY_CASES[name]
    rng = np.random.default_rng(3)

    def rand(shape):
        a = rng.standard_normal(shape)
        return a + 1j * rng.standard_normal(shape) if dtype == np.complex128 else a

    data, filt = rand(ds), rand(fs)
    cplx = dtype == np.complex128
    with On(kind):
        fwd = (split_complex(sigpy_convolve, data, filt, mode, strides) if cplx
               else sigpy_convolve(data, filt, mode, strides))
        np.testing.assert_allclose(fwd, scipy_convolve(data, filt, mode, strides), rtol=1e-10, atol=1e-10)
        y = rand(fwd.shape)
        if cplx:  # sigpy conjugates the fixed operand for the adjoints
            adj_d = split_complex(lambda o, f, *a: sigpy_adjoint_data(o, f, *a), y, filt.conj(), ds, mode, strides)
            adj_f = split_complex(lambda o, d, *a: sigpy_adjoint_filter(o, d, *a), y, data.conj(), fs, mode, strides)
        else:
            adj_d = sigpy_adjoint_data(y, filt, ds, mode, strides)
            adj_f = sigpy_adjoint_filter(y, data, fs, mode, strides)
    lhs = np.vdot(fwd, y)
    np.testing.assert_allclose(np.vdot(data, adj_d), lhs, rtol=1e-10)
    np.testing.assert_allclose(np.vdot(filt, adj_f), lhs, rtol=1e-10)


# --------------------------------------------------------------------------------------------
# sigpy itself (pip install sigpy; skipped without it): its sigpy/conv.py with the one changed import
# --------------------------------------------------------------------------------------------

class _NumpyAsDevice:
    """sigpy's ``xp`` for arrays "on the device": NumPy's functions, but not the ``numpy`` module, so that
    sigpy's ``if xp == np`` takes its cuDNN branch with NumPy arrays."""

    def __getattr__(self, name):
        return getattr(np, name)


class _DeviceBackend:
    """Stands in for ``sigpy.backend`` inside the loaded module: every array is "on the device"."""

    xp = _NumpyAsDevice()

    def get_array_module(self, array):
        return self.xp


@pytest.fixture
def sigpy_conv_on_gpuconv(monkeypatch):
    """``(sigpy.conv, the same module on gpuconv.cudnn)``: sigpy's own source file, compiled with its one
    line ``from cupy import cudnn`` replaced by ``from gpuconv import cudnn`` (the migration) and its cuDNN
    branch switched on; the public functions ``convolve``, ``convolve_data_adjoint`` and
    ``convolve_filter_adjoint`` then run sigpy's CUDA code, unchanged, on NumPy arrays."""
    pytest.importorskip("sigpy")
    import pathlib

    import sigpy.config
    import sigpy.conv
    path = sigpy.conv.__file__
    src = pathlib.Path(path).read_text()
    assert src.count("from cupy import cudnn") == 1, "sigpy.conv no longer imports cupy.cudnn as expected"
    monkeypatch.setattr(sigpy.config, "cudnn_enabled", True)
    ns = {"__name__": "sigpy_conv_on_gpuconv", "__file__": path}
    exec(compile(src.replace("from cupy import cudnn", "from gpuconv import cudnn"), path, "exec"), ns)
    assert ns["cudnn"] is cudnn
    ns["backend"] = _DeviceBackend()
    return sigpy.conv, ns


SIGPY_REAL_CASES = {  # data shape, filter shape, mode, strides, multi_channel
    "1d-full": ((3, 11), (4,), "full", None, False),
    "1d-valid-s2-mc": ((2, 3, 12), (2, 3, 4), "valid", (2,), True),
    "1d-full-s3-mc": ((1, 2, 10), (3, 2, 3), "full", (3,), True),
    "2d-full-s2-mc": ((2, 2, 7, 6), (3, 2, 3, 2), "full", (2, 1), True),
    "2d-valid": ((8, 5), (3, 3), "valid", None, False),
    "2d-valid-s-batch": ((2, 3, 9, 8), (2, 3), "valid", (2, 3), False),
    "3d-full-s-mc": ((1, 2, 4, 5, 3), (2, 2, 2, 3, 2), "full", (1, 2, 2), True),
    "3d-valid": ((5, 4, 6), (3, 2, 3), "valid", None, False),
    "3d-valid-s2-mc": ((2, 1, 6, 5, 7), (2, 1, 3, 2, 3), "valid", (2, 2, 1), True),
}


@pytest.mark.parametrize("kind", [k for k in KINDS if k.values[0] != "gpu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
@pytest.mark.parametrize("name", list(SIGPY_REAL_CASES))
def test_sigpy_on_gpuconv_matches_sigpy_cpu(sigpy_conv_on_gpuconv, kind, dtype, name):
    """sigpy's ``convolve`` / ``convolve_data_adjoint`` / ``convolve_filter_adjoint``, taking their cuDNN
    branch on ``gpuconv.cudnn``, equal sigpy's own CPU results (SciPy per channel pair) on the same data: 1-D
    (sigpy reshapes it to 2-D), 2-D, 3-D, strides, 'full' / 'valid', batch axes, multi-channel, real and
    complex (four real convolutions over non-contiguous real / imaginary views)."""
    cpu, gpu = sigpy_conv_on_gpuconv
    ds, fs, mode, strides, mc = SIGPY_REAL_CASES[name]
    rng = np.random.default_rng(9)

    def rand(shape):
        a = rng.standard_normal(shape)
        return (a + 1j * rng.standard_normal(shape) if np.dtype(dtype).kind == "c" else a).astype(dtype)

    data, filt = rand(ds), rand(fs)
    kw = dict(mode=mode, strides=strides, multi_channel=mc)
    with On(kind):
        out = gpu["convolve"](data, filt, **kw)
        ref = cpu.convolve(data, filt, **kw)
        y = rand(ref.shape)
        adj_d = gpu["convolve_data_adjoint"](y, filt, data.shape, **kw)
        adj_f = gpu["convolve_filter_adjoint"](y, data, filt.shape, **kw)
    tol = 1e-4 if np.dtype(dtype) in (np.float32, np.complex64) else 1e-10
    for got, exp in ((out, ref), (adj_d, cpu.convolve_data_adjoint(y, filt, data.shape, **kw)),
                     (adj_f, cpu.convolve_filter_adjoint(y, data, filt.shape, **kw))):
        assert got.shape == exp.shape and got.dtype == exp.dtype
        np.testing.assert_allclose(got, exp, rtol=tol, atol=tol * max(1.0, float(np.abs(exp).max())))


# --------------------------------------------------------------------------------------------
# the argument mapping
# --------------------------------------------------------------------------------------------

def test_constants_and_availability():
    assert (cudnn.CUDNN_POOLING_MAX, cudnn.CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING,
            cudnn.CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING) == (0, 1, 2)
    assert (cudnn.CUDNN_CONVOLUTION, cudnn.CUDNN_CROSS_CORRELATION) == (0, 1)
    assert (cudnn.CUDNN_TENSOR_NCHW, cudnn.CUDNN_TENSOR_NHWC) == (0, 1)
    assert cudnn.is_available() == gpuconv.backend_info()["cupy"]["available"]


def test_tensor_core_policy():
    allowed = cudnn._tensor_cores_allowed
    assert [allowed(m, np.float32) for m in ("always", "auto", "never")] == [True, False, False]
    assert [allowed(m, np.float16) for m in ("always", "auto", "never")] == [True, True, False]
    assert not allowed("always", np.float64)
    with pytest.raises(ValueError, match="tensor_core must be either of 'always', 'auto', or 'never'"):
        allowed("sometimes", np.float32)


def test_algorithm_policy_on_the_cuda_path(monkeypatch):
    """auto_tune with the policy gpuconv.set_tensor_cores set: our autotuner ('auto'); otherwise the heuristic's
    order over the algorithms the policy allows (tensor-core kernels only when allowed)."""
    from gpuconv._cuda import settings
    monkeypatch.setattr(settings, "_tensor_cores", False)
    rt = emulated_runtime()
    g = conv_geometry((2, 8, 9, 9), (8, 8, 3, 3), None, 1, 1)
    assert cudnn._algo_policy(True, False)(g, np.dtype(np.float32), rt) == "auto"
    assert cudnn._algo_policy(False, False)(g, np.dtype(np.float32), rt) == "igemm"
    assert cudnn._algo_policy(True, True)(g, np.dtype(np.float32), rt) == "igemm_tc"
    assert cudnn._algo_policy(False, True)(g, np.dtype(np.float16), rt) == "igemm_tc"


@pytest.mark.parametrize("kind", [k for k in KINDS if k.values[0] != "numpy"])
def test_tensor_core_always_runs_tensor_core_kernels(kind):
    """tensor_core='always' on the CUDA path: float32 through igemm_tc (TF32), recorded."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 8, 6, 6)).astype(np.float32)
    W = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    with On(kind) as on:
        y = on.arr(np.empty((1, 8, 4, 4), np.float32))
        cudnn.convolution_forward(on.arr(x), on.arr(W), None, y, (0, 0), (1, 1), (1, 1), 1, auto_tune=False,
                                  tensor_core="always")
        assert "igemm_tc" in gpuconv.last_kernel().kernel
        ref = gpuconv.conv2d(x.astype(np.float64), W.astype(np.float64))
        np.testing.assert_allclose(on.host(y), ref, rtol=1e-2, atol=1e-2)  # TF32
        cudnn.convolution_forward(on.arr(x), on.arr(W), None, y, (0, 0), (1, 1), (1, 1), 1, auto_tune=False,
                                  tensor_core="auto")
        assert "igemm_tc" not in gpuconv.last_kernel().kernel


ERR_X, ERR_W = np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3))
CONV_KW = dict(auto_tune=False, tensor_core="auto")
ERRORS = [
    (lambda: cudnn.convolution_forward(ERR_X, ERR_W, None, np.empty((1, 3, 4, 4)), (0, 0), (1, 1), (1, 1), 1,
                                       **CONV_KW), ValueError, r"y must have shape \[1, 3, 3, 3\]"),
    (lambda: cudnn.convolution_forward(ERR_X, ERR_W, None, np.empty((1, 3, 3, 3), np.float32), (0, 0), (1, 1),
                                       (1, 1), 1, **CONV_KW), ValueError, r"y must have the inputs' dtype float64"),
    (lambda: cudnn.convolution_forward(ERR_X, ERR_W, None, np.empty((1, 3, 3, 3)), (0, 0), (1, 1), (1, 1), 1,
                                       d_layout=cudnn.CUDNN_TENSOR_NHWC, **CONV_KW), NotImplementedError,
     r"d_layout=CUDNN_TENSOR_NHWC \(channels-last\) is not supported"),
    (lambda: cudnn.convolution_forward(ERR_X, ERR_W, None, np.empty((1, 3, 3, 3)), (0,), (1, 1), (1, 1), 1,
                                       **CONV_KW), ValueError, r"must be of same length as the spatial dimensions"),
    (lambda: cudnn.convolution_forward(ERR_X, ERR_W, None, np.empty((1, 3, 3, 3)), (0, 0), (1, 1), (1, 1), 1,
                                       auto_tune=False, tensor_core=True), ValueError, r"tensor_core must be"),
    (lambda: cudnn.convolution_backward_data(ERR_W, np.ones((1, 3, 2, 3)), None, np.empty((1, 2, 5, 5)), (0, 0),
                                             (1, 1), (1, 1), 1, deterministic=True, **CONV_KW), ValueError,
     r"x \(the output gradient\) must have shape \[1, 3, 3, 3\]"),
    (lambda: cudnn.convolution_backward_filter(ERR_X, np.ones((1, 3, 3, 3)), np.empty((3, 2, 3, 3), np.float16),
                                               (0, 0), (1, 1), (1, 1), 1, deterministic=True, **CONV_KW),
     ValueError, r"gW must have the inputs' dtype float64"),
    (lambda: cudnn.pooling_forward(ERR_X, np.empty((1, 2, 4, 4)), (2, 2), (2, 2), (0, 0), cudnn.CUDNN_POOLING_MAX),
     ValueError, r"y must have shape \[1, 2, 2, 2\]"),
    (lambda: cudnn.pooling_forward(ERR_X, np.empty((1, 2, 2, 4))[..., ::2], (2, 2), (2, 2), (0, 0), 0), ValueError,
     r"pooling_forward supports c-contiguous y only"),
    (lambda: cudnn.pooling_forward(ERR_X, np.empty((1, 2, 2, 2)), (2, 2), (2,), (0, 0), 0), ValueError,
     r"ksize, stride, and pad must be of same length"),
    (lambda: cudnn.pooling_forward(ERR_X, np.empty((1, 2, 2, 2)), (2, 2), (2, 2), (0, 0), 7), ValueError,
     r"unknown pooling mode 7"),
    (lambda: cudnn.pooling_forward(ERR_X, np.empty((1, 2, 4, 4)), (2, 2), (2, 2), (2, 0), 0), ValueError,
     r"explicit padding must be smaller than the window extent"),
    (lambda: cudnn.convolution_forward(ERR_X, ERR_W, np.ones(2), np.empty((1, 3, 3, 3)), (0, 0), (1, 1), (1, 1), 1,
                                       **CONV_KW), ValueError, r"b must have 3 elements \(W's output channels\), "
                                                               r"got b of shape \[2\]"),
    (lambda: cudnn.convolution_backward_data(ERR_W, np.ones((1, 3, 3, 3)), np.ones((1, 3, 1, 1)),
                                             np.empty((1, 2, 5, 5)), (0, 0), (1, 1), (1, 1), 1, deterministic=True,
                                             **CONV_KW), ValueError, r"b must have 2 elements \(y's channels\)"),
    (lambda: cudnn.convolution_backward_data(ERR_W, np.ones((1, 3, 3, 3)), None, np.empty((1, 1, 5, 5)), (0, 0),
                                             (1, 1), (1, 1), 1, deterministic=True, **CONV_KW), ValueError,
     r"^convolution_backward_data\(\): Given groups=1, .* \(input = y, weight = W\)$"),
    (lambda: cudnn.convolution_backward_filter(ERR_X, np.ones((1, 3, 3, 3)), np.empty((3, 2, 3)), (0, 0), (1, 1),
                                               (1, 1), 1, deterministic=True, **CONV_KW), ValueError,
     r"gW must be an array of 4 dimensions"),
    (lambda: cudnn.convolution_forward(ERR_X, ERR_W, None, np.empty((1, 3, 3, 3)), (0, 0), (1, 1), [1, None], 1,
                                       **CONV_KW), TypeError, r"dilation must be a tuple of ints"),
]


@pytest.mark.parametrize("call, exc, message", ERRORS, ids=[f"e{i}" for i in range(len(ERRORS))])
def test_errors(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


# CuPy v13.6.0's cupyx/cudnn.pyx: parameter names in order, the keyword-only ones after '*', defaults
CUPY13_SIGNATURES = {
    "convolution_forward": "x, W, b, y, pad, stride, dilation, groups, *, auto_tune, tensor_core, d_layout=0, "
                           "w_layout=0",
    "convolution_backward_filter": "x, gy, gW, pad, stride, dilation, groups, *, deterministic, auto_tune, "
                                   "tensor_core, d_layout=0, w_layout=0",
    "convolution_backward_data": "W, x, b, y, pad, stride, dilation, groups, *, deterministic, auto_tune, "
                                 "tensor_core, d_layout=0, w_layout=0",
    "pooling_forward": "x, y, ksize, stride, pad, mode",
    "pooling_backward": "x, y, gy, ksize, stride, pad, mode",
}


@pytest.mark.parametrize("name", list(CUPY13_SIGNATURES))
def test_signatures_are_cupy13s(name):
    import inspect
    assert str(inspect.signature(getattr(cudnn, name)))[1:-1] == CUPY13_SIGNATURES[name]
