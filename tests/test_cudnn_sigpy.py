"""sigpy, the downstream user of ``cupy.cudnn``, on ``gpuconv.cudnn``: the calls its ``sigpy.conv`` makes,
replicated here, against SciPy (1-D / 2-D / 3-D, strides, 'full' and 'valid' as explicit padding, complex data
split into four real convolutions by the caller; the adjoints by their inner-product identities), and sigpy
itself (``pip install sigpy``, skipped without it: its ``sigpy/conv.py`` with the one import changed, against
sigpy's CPU results), on NumPy arrays and on our CUDA kernels through the emulator. Convolutions against
PyTorch: tests/test_cudnn.py.
"""

from __future__ import annotations

import numpy as np
import pytest

try:
    import scipy.signal as scipy_signal
except ImportError:  # an optional oracle: the sigpy test skips without it
    scipy_signal = None

from gpuconv import cudnn
from tests.support import BACKEND_KINDS as KINDS, On


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
