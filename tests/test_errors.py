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
    ("padding type", (x(1, 1, 5, 5), x(1, 1, 3, 3)), {"padding": 1.5}, TypeError, r"padding must be an int"),
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
    ("list input", ([[[[1.0]]]], x(1, 1, 1, 1)), {}, TypeError, r"input must be a NumPy or CuPy array, got list"),
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
    ("max string padding", gpuconv.max_pool2d, (x(1, 1, 5, 5), 2), {"padding": "same"}, TypeError, r"padding"),
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
]


@pytest.mark.parametrize("fn,args,kwargs,exc,pattern", [c[1:] for c in POOL_ERRORS], ids=[c[0] for c in POOL_ERRORS])
def test_pool_bad_input(fn, args, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        fn(*args, **kwargs)
