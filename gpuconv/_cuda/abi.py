"""The conv kernels' argument ABI: what every conv2d kernel takes after its four pointers ``x, w, b, y``
(and ``conv3d_igemm``'s 3-D extension, ``Conv3dParams``, and ``conv1d_igemm``'s unit-height ``ConvParams``,
at the end).

That is ONE parameter, ``const __grid_constant__ ConvParams cp`` (``kernels/conv_params.cuh``): a struct of
19 ``int`` fields ``N, C, H, W, K, R, S, groups, sh, sw, pt, pl, dh, dw, P, Q, flip, has_bias, act`` passed
by value, followed by the kernel's own algorithm-specific scalars (tiled's ``cb``, igemm's ``vec_w``, ...).
``CONV_PARAMS_DTYPE`` is its host-side mirror and ``conv_kernel_args(geom)`` builds the argument.
(``__grid_constant__``: see conv_params.cuh; without it the compiler kept every field in a register.)

Why a struct, and not a macro for the parameter list or a generated list of scalars:

* one definition per side: the C++ struct in ``conv_params.cuh`` and this NumPy dtype, instead of the same
  19 parameters spelled out in every kernel signature (and in every new kernel: the backward data / filter
  kernels) and 19 values listed in the launch code;
* a new kernel takes one parameter, and a new field is added in two places, not in every kernel;
* the two layouts are checked against each other by a test (``tests/test_abi.py``): the header's field
  names against this dtype's; a probe kernel run by the CPU emulator (g++) reports ``sizeof`` and every
  ``offsetof`` and copies every ``ConvParams`` field it received, through the real header, into an int
  array, compared field by field with what the host packed; NVRTC checks size, alignment and member
  order with ``static_assert``s; and ``conv2d_direct`` run by the emulator with these arguments computes
  the convolution. The emulator also rejects a struct argument whose size is not the parameter's. A macro
  or a generated list would keep the layout implicit, checked by nothing, and CuPy passes a wrong-sized
  argument silently.

How CuPy passes it: a one-element ``numpy.ndarray`` kernel argument is passed BY VALUE, its raw bytes
becoming the parameter (``cupy/cuda/function.pyx``, ``_pointer``: "All numpy.ndarray work with CNumpyArray
to pass a kernel argument by value. Here we allow only arrays of size one"). So the argument is
``numpy.zeros(1, CONV_PARAMS_DTYPE)`` filled from the geometry: 76 bytes, the fields at the offsets of the
C++ struct (plain ints, natural 4-byte alignment, no padding). CuPy checks nothing about it: a dtype of
the wrong size or order would be read as garbage by the kernel, hence the test. (A ``cupy.ndarray``
argument is a device pointer; a ``numpy.ndarray`` argument is never a pointer.)
"""

from __future__ import annotations

import numpy as np

from .._geometry import ConvGeometry

# The fields of ConvParams (kernels/conv_params.cuh), in the struct's order.
CONV_PARAMS_FIELDS: tuple[str, ...] = ("N", "C", "H", "W", "K", "R", "S", "groups", "sh", "sw", "pt", "pl",
                                       "dh", "dw", "P", "Q", "flip", "has_bias", "act")

# Host-side mirror of ConvParams: 19 native-endian int32 in the struct's order, C layout (align=True: the
# offsets a C compiler gives, here 0, 4, ..., 72).
CONV_PARAMS_DTYPE = np.dtype([(name, np.int32) for name in CONV_PARAMS_FIELDS], align=True)
assert CONV_PARAMS_DTYPE.itemsize == 76 == 4 * len(CONV_PARAMS_FIELDS), CONV_PARAMS_DTYPE.itemsize


def conv_params(geom: ConvGeometry) -> np.ndarray:
    """The ``ConvParams`` of ``geom``: a one-element array of ``CONV_PARAMS_DTYPE`` (what CuPy passes by
    value as the kernel's struct parameter)."""
    values = (geom.N, geom.C, geom.H, geom.W, geom.K, geom.R, geom.S, geom.groups, geom.sh, geom.sw, geom.pt,
              geom.pl, geom.dh, geom.dw, geom.P, geom.Q, 1 if geom.flip else 0, 1 if geom.has_bias else 0,
              geom.activation_code)
    for name, value in zip(CONV_PARAMS_FIELDS, values):
        if not -2**31 <= value < 2**31:  # NumPy might wrap it; the host's 32-bit rule should prevent this
            raise OverflowError(f"ConvParams.{name} = {value} does not fit the kernel's 32-bit int")
    return np.array([values], CONV_PARAMS_DTYPE)


def conv_kernel_args(geom: ConvGeometry) -> list:
    """The arguments every conv2d kernel takes after its pointers: ``[conv_params(geom)]``, one
    ``ConvParams`` passed by value (a list, so the launch code writes ``[x, w, b, y] + conv_kernel_args(geom)
    + extra``)."""
    return [conv_params(geom)]


# --------------------------------------------------------------------------------------------
# 3-D: Conv3dParams (kernels/conv_params.cuh) = the (H, W) plane's ConvParams ``hw``, then the depth axis.
# --------------------------------------------------------------------------------------------

# The depth fields of Conv3dParams after ``hw``, in the struct's order.
CONV3D_DEPTH_FIELDS: tuple[str, ...] = ("D", "KD", "sd", "pf", "dd", "OD")
CONV3D_PARAMS_DTYPE = np.dtype([("hw", CONV_PARAMS_DTYPE)] + [(n, np.int32) for n in CONV3D_DEPTH_FIELDS],
                               align=True)
assert CONV3D_PARAMS_DTYPE.itemsize == 100 == 76 + 4 * len(CONV3D_DEPTH_FIELDS), CONV3D_PARAMS_DTYPE.itemsize


def conv3d_params(geom) -> np.ndarray:
    """The ``Conv3dParams`` of a 3-D ``ConvNdGeometry``: ``hw`` is the ConvParams of the (H, W) plane (N, C,
    K, groups, the plane's sizes, stride, top / left padding, dilation, P, Q, and the call's flip, bias and
    activation), then D, KD, sd, pf (front padding), dd, OD. A one-element array of
    ``CONV3D_PARAMS_DTYPE`` (100 bytes, passed by value like ``conv_params``)."""
    assert geom.nd == 3, geom
    (D, H, W), (KD, R, S), (sd, sh, sw) = geom.input_size, geom.kernel_size, geom.stride
    ((pf, _), (pt, _), (pl, _)), (dd, dh, dw), (OD, P, Q) = geom.padding, geom.dilation, geom.output_size
    hw = (geom.N, geom.C, H, W, geom.K, R, S, geom.groups, sh, sw, pt, pl, dh, dw, P, Q, 1 if geom.flip else 0,
          1 if geom.has_bias else 0, geom.activation_code)
    depth = (D, KD, sd, pf, dd, OD)
    for name, value in zip(CONV_PARAMS_FIELDS + CONV3D_DEPTH_FIELDS, hw + depth):
        if not -2**31 <= value < 2**31:
            raise OverflowError(f"Conv3dParams.{name} = {value} does not fit the kernel's 32-bit int")
    return np.array([(hw,) + depth], CONV3D_PARAMS_DTYPE)


def conv3d_kernel_args(geom) -> list:
    """What ``conv3d_igemm`` takes after its pointers (before its own ``vec_w``): ``[conv3d_params(geom)]``."""
    return [conv3d_params(geom)]


# --------------------------------------------------------------------------------------------
# 1-D: conv1d_igemm takes a plain ConvParams, the call as a convolution of unit height.
# --------------------------------------------------------------------------------------------

def conv1d_params(geom) -> np.ndarray:
    """The ``ConvParams`` of a 1-D ``ConvNdGeometry``: the call as the 2-D convolution of unit height it is
    (``geom.as_2d()``: H = R = P = 1, sh = dh = 1, pt = 0; W, S, sw, pl, dw, Q the row's), flip, bias and
    activation included. ``conv1d_igemm`` reads the row's fields only (kernels/im2col_loader.cuh,
    Im2colGeometry1d)."""
    assert geom.nd == 1, geom
    return conv_params(geom.as_2d())


def conv1d_kernel_args(geom) -> list:
    """What ``conv1d_igemm`` takes after its pointers (before its own ``vec_w``): ``[conv1d_params(geom)]``."""
    return [conv1d_params(geom)]
