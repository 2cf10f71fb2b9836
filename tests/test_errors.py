"""Every malformed call raises ValueError / TypeError naming the argument and the shapes involved."""

from __future__ import annotations

import numpy as np
import pytest

import gpuconv

f32 = np.float32


def x(*shape, dtype=f32):
    return np.zeros(shape, dtype)


CONV_ERRORS = [
    # (description, args, kwargs, exception, regex the message must match)
    ("input 2-D", (x(3, 8), x(4, 3, 3, 3)), {}, ValueError, r"3D \(unbatched\) or 4D .*input of size: \[3, 8\]"),
    ("input 5-D", (x(1, 1, 3, 8, 8), x(4, 3, 3, 3)), {}, ValueError, r"input of size: \[1, 1, 3, 8, 8\]"),
    ("weight 3-D", (x(1, 3, 8, 8), x(4, 3, 3)), {}, ValueError, r"weight must be 4-D.*\[4, 3, 3\]"),
    ("channels", (x(8, 112, 112, 3), x(32, 3, 3, 3)), {}, ValueError,
     r"weight of size \[32, 3, 3, 3\], expected input\[8, 112, 112, 3\] to have 3 channels, but got 112"),
    ("groups vs C", (x(1, 3, 8, 8), x(4, 1, 3, 3)), {"groups": 2}, ValueError,
     r"groups=2.*input\[1, 3, 8, 8\].*divisible by 2, but got 3 channels"),
    ("groups vs K", (x(1, 4, 8, 8), x(3, 2, 3, 3)), {"groups": 2}, ValueError,
     r"groups=2.*weight of size \[3, 2, 3, 3\]"),
    ("groups 0", (x(1, 4, 8, 8), x(4, 4, 3, 3)), {"groups": 0}, ValueError, r"non-positive groups"),
    ("kernel too big", (x(1, 1, 2, 2), x(1, 1, 5, 5)), {}, ValueError,
     r"padded input size per channel: \(2 x 2\). Kernel size: \(5 x 5\)"),
    ("kernel too big (dilation)", (x(1, 1, 5, 5), x(1, 1, 3, 3)), {"dilation": 3}, ValueError,
     r"Kernel size: \(7 x 7\)"),
    ("stride 0", (x(1, 1, 5, 5), x(1, 1, 3, 3)), {"stride": 0}, ValueError, r"stride must be positive"),
    ("stride -1 pair", (x(1, 1, 5, 5), x(1, 1, 3, 3)), {"stride": (1, -1)}, ValueError, r"stride"),
    ("dilation 0", (x(1, 1, 5, 5), x(1, 1, 3, 3)), {"dilation": 0}, ValueError, r"dilation must be positive"),
    ("negative padding", (x(1, 1, 5, 5), x(1, 1, 3, 3)), {"padding": -1}, ValueError,
     r"padding must be non-negative"),
    ("negative asymmetric padding", (x(1, 1, 5, 5), x(1, 1, 3, 3)), {"padding": ((0, -1), (0, 0))},
     ValueError, r"padding must be non-negative"),
    ("padding string", (x(1, 1, 5, 5), x(1, 1, 3, 3)), {"padding": "full"}, ValueError,
     r"Invalid padding string 'full'"),
    ("padding type", (x(1, 1, 5, 5), x(1, 1, 3, 3)), {"padding": 1.5}, TypeError,
     r"^padding must be an int, a pair of ints, \(\(top, bottom\), \(left, right\)\) of ints, 'valid' or 'same', "
     r"got 1.5$"),
    ("stride type", (x(1, 1, 5, 5), x(1, 1, 3, 3)), {"stride": (1, 2, 3)}, TypeError, r"stride must be"),
    ("activation", (x(1, 1, 5, 5), x(1, 1, 3, 3)), {"activation": "gelu"}, ValueError,
     r"Unknown activation 'gelu'"),
    ("algo", (x(1, 1, 5, 5), x(1, 1, 3, 3)), {"algo": "winograd"}, ValueError, r"unknown algo 'winograd'"),
    ("algo on numpy", (x(1, 1, 5, 5), x(1, 1, 3, 3)), {"algo": "tiled"}, ValueError,
     r"algo='tiled' selects a CUDA kernel, but the inputs are NumPy"),
    ("bias shape", (x(1, 3, 5, 5), x(4, 3, 3, 3), x(3)), {}, ValueError,
     r"expected bias to be 1-dimensional with 4 elements, but got bias of size \[3\]"),
    ("bias 2-D", (x(1, 3, 5, 5), x(4, 3, 3, 3), x(4, 1)), {}, ValueError, r"bias of size \[4, 1\]"),
    ("dtype mismatch", (x(1, 3, 5, 5), x(4, 3, 3, 3, dtype=np.float64)), {}, TypeError,
     r"same dtype.*input is float32, weight is float64"),
    ("bias dtype mismatch", (x(1, 3, 5, 5), x(4, 3, 3, 3), x(4, dtype=np.float16)), {}, TypeError,
     r"bias is float16"),
    ("integer dtype", (x(1, 3, 5, 5, dtype=np.int32), x(4, 3, 3, 3, dtype=np.int32)), {}, TypeError,
     r"input must be float16, float32 or float64, got input of dtype int32 and shape \[1, 3, 5, 5\]"),
    ("complex dtype", (x(1, 3, 5, 5, dtype=np.complex64), x(4, 3, 3, 3)), {}, TypeError, r"complex64"),
    ("bool dtype", (x(1, 3, 5, 5, dtype=bool), x(4, 3, 3, 3)), {}, TypeError, r"dtype bool"),
    ("list input", ([[[[1.0]]]], x(1, 1, 1, 1)), {}, TypeError,
     r"^conv2d\(\): argument 'input' must be a NumPy or CuPy array, got list \(convert it first"),
    ("None input", (None, x(1, 1, 3, 3)), {}, TypeError,
     r"^conv2d\(\): argument 'input' must be a NumPy or CuPy array, got NoneType$"),
    ("None weight", (x(1, 1, 5, 5), None), {}, TypeError,
     r"^conv2d\(\): argument 'weight' must be a NumPy or CuPy array, got NoneType$"),
    ("list weight", (x(1, 1, 5, 5), [[[[1.0]]]]), {}, TypeError, r"argument 'weight' must be .* got list"),
    ("tuple input", (((1.0,),), x(1, 1, 1, 1)), {}, TypeError, r"argument 'input' must be .* got tuple"),
    ("scalar input", (1.0, x(1, 1, 1, 1)), {}, TypeError, r"argument 'input' must be .* got float$"),
    ("numpy scalar input", (f32(1), x(1, 1, 1, 1)), {}, TypeError,
     r"argument 'input' must be a NumPy or CuPy array, got numpy.float32"),
    ("list bias", (x(1, 1, 5, 5), x(2, 1, 3, 3), [0.0, 0.0]), {}, TypeError,
     r"^conv2d\(\): argument 'bias' must be a NumPy or CuPy array or None, got list"),
    ("nested padding negative", (x(1, 1, 5, 5), x(1, 1, 3, 3)), {"padding": ((0, -1), (0, 0))}, ValueError,
     r"padding must be non-negative, got \(\(0, -1\), \(0, 0\)\)$"),
    ("nested padding float", (x(1, 1, 5, 5), x(1, 1, 3, 3)), {"padding": ((0, 1.5), (0, 0))}, TypeError,
     r"\(\(top, bottom\), \(left, right\)\) of ints, 'valid' or 'same', got \(\(0, 1.5\), \(0, 0\)\)$"),
    ("nested padding of three", (x(1, 1, 5, 5), x(1, 1, 3, 3)), {"padding": ((0, 1, 2), (0, 0))}, TypeError,
     r"got \(\(0, 1, 2\), \(0, 0\)\)$"),
    ("padding of one", (x(1, 1, 5, 5), x(1, 1, 3, 3)), {"padding": (1,)}, TypeError, r"got \(1,\)$"),
    ("stride of one", (x(1, 1, 5, 5), x(1, 1, 3, 3)), {"stride": (1,)}, TypeError,
     r"^stride must be an int or a pair of ints, got \(1,\)$"),
    ("dilation of three", (x(1, 1, 5, 5), x(1, 1, 3, 3)), {"dilation": [1, 2, 3]}, TypeError,
     r"^dilation must be an int or a pair of ints, got \[1, 2, 3\]$"),
    ("flip type", (x(1, 1, 5, 5), x(1, 1, 3, 3)), {"flip": "yes"}, TypeError, r"flip must be a bool"),
    ("empty weight", (x(1, 1, 5, 5), x(0, 1, 3, 3)), {}, ValueError, r"empty dimension"),
]


@pytest.mark.parametrize("args,kwargs,exc,pattern", [c[1:] for c in CONV_ERRORS], ids=[c[0] for c in CONV_ERRORS])
def test_conv2d_bad_input(args, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        gpuconv.conv2d(*args, **kwargs)


def test_mixing_numpy_and_cupy_is_a_type_error():
    cupy = pytest.importorskip("cupy")
    if not gpuconv.backend_info()["cupy"]["available"]:
        pytest.skip("no CUDA device")
    with pytest.raises(TypeError, match=r"all NumPy arrays or all CuPy arrays, but input is a NumPy array, "
                                        r"weight is a CuPy array"):
        gpuconv.conv2d(x(1, 1, 5, 5), cupy.zeros((1, 1, 3, 3), f32))


POOL_ERRORS = [
    ("max 2-D input", gpuconv.max_pool2d, (x(5, 5), 2), {}, ValueError, r"max_pool2d: Expected 3D or 4D input.*\[5, 5\]"),
    ("max pad > k/2", gpuconv.max_pool2d, (x(1, 1, 5, 5), 2), {"padding": 2}, ValueError,
     r"pad should be smaller than or equal to half of kernel size.*padding=\(2, 2\), kernel_size=\(2, 2\)"),
    ("max pad > k/2 with dilation", gpuconv.max_pool2d, (x(1, 1, 9, 9), 2), {"padding": 2, "dilation": 3},
     ValueError, r"pad should be smaller"),
    ("max output < 1", gpuconv.max_pool2d, (x(1, 1, 2, 2), 3), {}, ValueError,
     r"Given input size: \(1x2x2\). Calculated output size: \(1x0x0\). Output size is too small"),
    ("max kernel 0", gpuconv.max_pool2d, (x(1, 1, 5, 5), 0), {}, ValueError, r"kernel_size must be positive"),
    ("max stride 0", gpuconv.max_pool2d, (x(1, 1, 5, 5), 2), {"stride": 0}, ValueError, r"stride must be positive"),
    ("max dilation 0", gpuconv.max_pool2d, (x(1, 1, 5, 5), 2), {"dilation": 0}, ValueError, r"dilation"),
    ("max negative padding", gpuconv.max_pool2d, (x(1, 1, 5, 5), 2), {"padding": -1}, ValueError,
     r"padding must be non-negative"),
    ("max string padding", gpuconv.max_pool2d, (x(1, 1, 5, 5), 2), {"padding": "full"}, ValueError,
     r"Invalid padding string 'full'"),  # 'same' and 'valid' are pooling padding forms (issue 18)
    ("max int dtype", gpuconv.max_pool2d, (x(1, 1, 5, 5, dtype=np.int64), 2), {}, TypeError, r"int64"),
    ("max empty channels", gpuconv.max_pool2d, (x(1, 0, 5, 5), 2), {}, ValueError, r"non-batch dimensions"),
    ("avg pad > k/2", gpuconv.avg_pool2d, (x(1, 1, 5, 5), 3), {"padding": 2}, ValueError, r"pad should be"),
    ("avg divisor 0", gpuconv.avg_pool2d, (x(1, 1, 5, 5), 2), {"divisor_override": 0}, ValueError,
     r"divisor must be not zero"),
    ("avg divisor float", gpuconv.avg_pool2d, (x(1, 1, 5, 5), 2), {"divisor_override": 2.5}, TypeError,
     r"divisor_override must be an int"),
    ("avg output < 1", gpuconv.avg_pool2d, (x(1, 1, 1, 4), 2), {}, ValueError, r"Output size is too small"),
    ("adaptive 0", gpuconv.adaptive_avg_pool2d, (x(1, 1, 5, 5), 0), {}, ValueError,
     r"output_size must be positive"),
    ("adaptive bad", gpuconv.adaptive_max_pool2d, (x(1, 1, 5, 5), "big"), {}, TypeError, r"output_size"),
    ("adaptive 5-D", gpuconv.adaptive_max_pool2d, (x(1, 1, 1, 5, 5), 2), {}, ValueError, r"3D or 4D"),
    ("adaptive list input", gpuconv.adaptive_avg_pool2d, ([1.0], 2), {}, TypeError, r"NumPy or CuPy array"),
    ("max None input", gpuconv.max_pool2d, (None, 2), {}, TypeError,
     r"^max_pool2d\(\): argument 'input' must be a NumPy or CuPy array, got NoneType$"),
    ("avg None input", gpuconv.avg_pool2d, (None, 2), {}, TypeError,
     r"^avg_pool2d\(\): argument 'input' must be a NumPy or CuPy array, got NoneType$"),
    ("adaptive avg None input", gpuconv.adaptive_avg_pool2d, (None, 2), {}, TypeError,
     r"^adaptive_avg_pool2d\(\): argument 'input' must be a NumPy or CuPy array, got NoneType$"),
    ("adaptive max None input", gpuconv.adaptive_max_pool2d, (None, 2), {}, TypeError,
     r"^adaptive_max_pool2d\(\): argument 'input' must be a NumPy or CuPy array, got NoneType$"),
    ("max list input", gpuconv.max_pool2d, ([[[1.0]]], 1), {}, TypeError,
     r"^max_pool2d\(\): argument 'input' must be a NumPy or CuPy array, got list"),
    ("adaptive output_size of one", gpuconv.adaptive_avg_pool2d, (x(1, 1, 5, 5), (2,)), {}, TypeError,
     r"^adaptive_avg_pool2d: output_size must be an int or a pair of ints \(an entry None keeps that input "
     r"size\), got \(2,\)$"),
    ("adaptive output_size of three", gpuconv.adaptive_max_pool2d, (x(1, 1, 5, 5), [2, 2, 2]), {}, TypeError,
     r"got \[2, 2, 2\]$"),
    ("adaptive output_size None", gpuconv.adaptive_avg_pool2d, (x(1, 1, 5, 5), None), {}, TypeError,
     r"output_size must be .* got None$"),
    ("adaptive output_size float", gpuconv.adaptive_avg_pool2d, (x(1, 1, 5, 5), (2, 1.5)), {}, TypeError,
     r"got \(2, 1.5\)$"),
    ("adaptive output_size 0 with None", gpuconv.adaptive_avg_pool2d, (x(1, 1, 5, 5), (0, None)), {},
     ValueError, r"output_size must be positive, got \(0, None\)$"),
    ("max kernel_size of one", gpuconv.max_pool2d, (x(1, 1, 5, 5), (2,)), {}, TypeError,
     r"^kernel_size must be an int or a pair of ints, got \(2,\)$"),
    ("max stride of three", gpuconv.max_pool2d, (x(1, 1, 5, 5), 2), {"stride": (1, 1, 1)}, TypeError,
     r"^stride must be an int or a pair of ints, got \(1, 1, 1\)$"),
    ("max padding of one", gpuconv.max_pool2d, (x(1, 1, 5, 5), 2), {"padding": (1,)}, TypeError,
     r"^padding must be an int, 2 ints, 2 \(low, high\) pairs, 'valid' or 'same', got \(1,\)$"),
    ("max dilation float", gpuconv.max_pool2d, (x(1, 1, 5, 5), 2), {"dilation": 1.0}, TypeError,
     r"^dilation must be an int or a pair of ints, got 1.0$"),
]


@pytest.mark.parametrize("fn,args,kwargs,exc,pattern", [c[1:] for c in POOL_ERRORS], ids=[c[0] for c in POOL_ERRORS])
def test_pool_bad_input(fn, args, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        fn(*args, **kwargs)


SHAPE_HELPER_ERRORS = [
    ("conv input_shape None", gpuconv.conv2d_output_shape, (None, (1, 1, 3, 3)), TypeError,
     r"^conv2d_output_shape\(\): input_shape must be a shape, a tuple of ints, got None$"),
    ("conv weight_shape array", gpuconv.conv2d_output_shape, ((1, 1, 5, 5), x(1, 1, 3, 3)), TypeError,
     r"weight_shape must be a shape, a tuple of ints, got ndarray$"),
    ("pool input_shape floats", gpuconv.pool2d_output_shape, ((1, 1, 5.0, 5), 2), TypeError,
     r"^pool2d_output_shape\(\): input_shape must be .* got \(1, 1, 5.0, 5\)$"),
    ("num_params pair", gpuconv.conv2d_num_params, ((3, 3), 10, 5), TypeError,
     r"^conv2d_num_params\(\): in_channels must be an int, got \(3, 3\)$"),
    ("num_params zero", gpuconv.conv2d_num_params, (3, 0, 5), ValueError, r"out_channels must be positive, got 0"),
]


@pytest.mark.parametrize("fn,args,exc,pattern", [c[1:] for c in SHAPE_HELPER_ERRORS],
                         ids=[c[0] for c in SHAPE_HELPER_ERRORS])
def test_shape_helpers_bad_input(fn, args, exc, pattern):
    with pytest.raises(exc, match=pattern):
        fn(*args)


def test_none_bias_is_legal():
    y = gpuconv.conv2d(x(1, 1, 5, 5), x(2, 1, 3, 3), None)
    assert y.shape == (1, 2, 3, 3)


# --- why the CuPy backend is unusable (gpuconv._backend.backend_info, shown by `python -m gpuconv info`):
# a fake ``cupy`` module raises what CuPy raises on such machines; no CuPy or GPU is needed.

class FakeCUDARuntimeError(RuntimeError):
    """As cupy_backends.cuda.api.runtime.CUDARuntimeError: ``status`` and "<name>: <description>"."""

    def __init__(self, status, name, description):
        self.status = status
        super().__init__(f"{name}: {description}")


INSUFFICIENT_DRIVER = (35, "cudaErrorInsufficientDriver",
                       "CUDA driver version is insufficient for CUDA runtime version")
NO_DEVICE = (100, "cudaErrorNoDevice", "no CUDA-capable device is detected")


def _install_fake_cupy(monkeypatch, error=None, driver_version=0, runtime_version=12080, device_count=1):
    import importlib.machinery
    import sys
    import types

    def get_device_count():
        if error is not None:
            raise FakeCUDARuntimeError(*error)
        return device_count

    def device_properties(i):
        return {"name": b"Fake GPU", "major": 9, "minor": 0, "totalGlobalMem": 2**30}

    runtime = types.SimpleNamespace(getDeviceCount=get_device_count, driverGetVersion=lambda: driver_version,
                                    runtimeGetVersion=lambda: runtime_version,
                                    getDeviceProperties=device_properties)
    fake = types.ModuleType("cupy")
    fake.__spec__ = importlib.machinery.ModuleSpec("cupy", None)
    fake.__version__ = "13.6.0"
    fake.cuda = types.SimpleNamespace(runtime=runtime)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    return fake


def _info_lines(capsys):
    from gpuconv.__main__ import main as cli
    assert cli(["info"]) == 0
    return capsys.readouterr().out


def test_info_without_an_nvidia_driver_says_so(monkeypatch, capsys):
    """cupy-cuda12x on a machine with no NVIDIA driver: CUDA's runtime says "driver version is insufficient",
    which reads as an old driver; the driver version CUDA reports is 0, so the reason says no driver was
    found, then CuPy's own text."""
    _install_fake_cupy(monkeypatch, INSUFFICIENT_DRIVER, driver_version=0)
    reason = gpuconv.backend_info()["cupy"]["reason"]
    assert reason.startswith("CuPy is installed, but no NVIDIA driver was found (no NVIDIA GPU here, or its "
                             "driver is not installed). CuPy said: ")
    assert reason.endswith("cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime "
                           "version")
    assert gpuconv.backend_info()["cupy"]["available"] is False
    assert "backend cupy: unavailable: CuPy is installed, but no NVIDIA driver was found" in _info_lines(capsys)


def test_info_with_an_old_driver_names_both_versions(monkeypatch):
    _install_fake_cupy(monkeypatch, INSUFFICIENT_DRIVER, driver_version=11040, runtime_version=12080)
    reason = gpuconv.backend_info()["cupy"]["reason"]
    assert reason.startswith("CuPy is installed, but the NVIDIA driver is too old: it supports CUDA 11.4, "
                             "CuPy's CUDA runtime is 12.8")
    assert reason.endswith("CUDA driver version is insufficient for CUDA runtime version")


def test_info_when_the_driver_version_is_unknown(monkeypatch):
    fake = _install_fake_cupy(monkeypatch, INSUFFICIENT_DRIVER)

    def broken():
        raise FakeCUDARuntimeError(*INSUFFICIENT_DRIVER)
    fake.cuda.runtime.driverGetVersion = broken
    reason = gpuconv.backend_info()["cupy"]["reason"]
    assert "no NVIDIA driver was found, or it is too old for CuPy's CUDA runtime" in reason
    assert reason.endswith("CUDA driver version is insufficient for CUDA runtime version")


def test_info_without_a_gpu_says_so(monkeypatch, capsys):
    """A driver but no device (cudaErrorNoDevice, 100): say no GPU was found."""
    _install_fake_cupy(monkeypatch, NO_DEVICE, driver_version=12080)
    reason = gpuconv.backend_info()["cupy"]["reason"]
    assert reason.startswith("CuPy is installed, but no NVIDIA GPU was found: the NVIDIA driver is installed "
                             "but reports no CUDA device")
    assert reason.endswith("CuPy said: FakeCUDARuntimeError: cudaErrorNoDevice: no CUDA-capable device is detected")
    assert "no NVIDIA GPU was found" in _info_lines(capsys)


def test_info_with_zero_devices(monkeypatch):
    _install_fake_cupy(monkeypatch, device_count=0, driver_version=12080)
    cu = gpuconv.backend_info()["cupy"]
    assert cu["available"] is False and "no NVIDIA GPU was found" in cu["reason"]


def test_info_when_libcuda_cannot_be_loaded(monkeypatch, capsys):
    """Importing CuPy fails with an ImportError naming libcuda.so.1 (CuPy builds that link the driver
    library): say no driver was found, then CuPy's text (its several lines joined into one)."""
    import importlib.abc
    import importlib.machinery
    import sys

    class Loader(importlib.abc.Loader):
        def create_module(self, spec):
            return None

        def exec_module(self, module):
            raise ImportError("\n====\nFailed to import CuPy.\n\nOriginal error:\n  ImportError: libcuda.so.1: "
                              "cannot open shared object file: No such file or directory\n====\n")

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            return importlib.machinery.ModuleSpec("cupy", Loader()) if name == "cupy" else None

    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Finder()] + sys.meta_path)
    reason = gpuconv.backend_info()["cupy"]["reason"]
    assert reason.startswith("CuPy is installed, but no NVIDIA driver was found: libcuda, the driver's library, "
                             "cannot be loaded")
    assert reason.endswith("CuPy said: ImportError: ==== Failed to import CuPy. Original error: ImportError: "
                           "libcuda.so.1: cannot open shared object file: No such file or directory ====")
    assert "no NVIDIA driver was found" in _info_lines(capsys)


def test_info_with_a_working_fake_gpu(monkeypatch, capsys):
    _install_fake_cupy(monkeypatch, driver_version=12080)
    cu = gpuconv.backend_info()["cupy"]
    assert cu["available"] is True and cu["reason"] is None and cu["devices"][0]["name"] == "Fake GPU"
    assert "device 0: Fake GPU (sm_90, 1.0 GiB)" in _info_lines(capsys)


def test_info_other_cuda_errors_keep_cupys_words(monkeypatch):
    _install_fake_cupy(monkeypatch, (3, "cudaErrorInitializationError", "initialization error"))
    reason = gpuconv.backend_info()["cupy"]["reason"]
    assert reason == ("CuPy is installed, but CUDA is not usable. CuPy said: FakeCUDARuntimeError: "
                      "cudaErrorInitializationError: initialization error")
