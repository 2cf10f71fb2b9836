"""``gpuconv.cudnn``: CuPy 13's ``cupy.cudnn`` convolution functions (issue 18) on the NumPy path and on our CUDA
kernels through the emulator (a GPU where there is one), against PyTorch CPU (forward and autograd in 1-D / 2-D /
3-D, float16 / float32 / float64, CuPy 13's argument forms: ``dilation=None``, ``b`` of shape ``(1, K, 1, 1)``,
strided views); plus the argument mapping (tensor cores, auto-tune, layouts), CuPy 13's signatures and the errors.
Pooling: tests/test_cudnn_pooling.py; sigpy, the downstream user: tests/test_cudnn_sigpy.py. The backends the
tests run on (``KINDS``, ``On``) are tests/support.py's.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv import cudnn
from gpuconv._geometry import conv_geometry
from tests.runners import emulated_runtime, torch
from tests.support import BACKEND_KINDS as KINDS, On


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
