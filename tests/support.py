"""Helpers shared by several test files: non-contiguous views of test data (``make_layout`` for the shared
matrices, ``noncontiguous_view`` for the per-kernel suites), a runtime that must not launch
(``NoLaunch``), and ``check_conv``: one conv2d algorithm run on a kernel runtime (tests/runners.py) and
compared with a reference (tests/reference.py) under the one tolerance model (tests/tolerance.py).

The support modules: tests/reference.py (textbook references), tests/tolerance.py (the tolerance model),
tests/cases.py (case generation, case lists and test data), tests/runners.py (backends and runtimes), and
this one. Test files import helpers only from them, never from another test_*.py file.
"""

from __future__ import annotations

import numpy as np

from gpuconv._geometry import conv_geometry
from gpuconv._cuda import select
from tests.reference import reference_conv2d
from tests.runners import numpy_io
from tests.tolerance import assert_close


def make_layout(a, layout, rng):
    """The same values as the NCHW array ``a`` in a non-contiguous layout: ``'sliced'`` (every other
    channel of a bigger array, offset in H and W), ``'reversed'`` (negative strides), ``'transposed'``
    (channels-last storage seen as NCHW); ``'contiguous'`` is ``a`` itself."""
    if layout == "contiguous":
        return a
    if layout == "sliced":  # every other channel of a bigger array, offset in H and W
        n, c, h, w = a.shape
        big = rng.standard_normal((n, 2 * c, h + 1, w + 2)).astype(a.dtype)
        big[:, ::2, 1:, 1:w + 1] = a
        view = big[:, ::2, 1:, 1:w + 1]
    elif layout == "reversed":  # negative strides: channels, rows and columns stored back to front
        view = np.ascontiguousarray(a[:, ::-1, ::-1, ::-1])[:, ::-1, ::-1, ::-1]
    else:  # "transposed": channels-last storage seen as NCHW
        view = np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    assert np.array_equal(view, a)  # (with C == 1 a transposed view is still contiguous: fine)
    return view


def noncontiguous_view(a, layout, rng):
    """The same values as ``a`` (any ndim: input, weights or bias) in a non-contiguous view (or ``a`` itself
    for 'contiguous' or None): 'transposed' swaps the last two axes of a 4-D array's storage; otherwise,
    and where that view is still contiguous (1 wide), a strided slice of a bigger array, reversed along
    the first axis."""
    if layout == "contiguous" or a is None:
        return a
    v = None
    if layout == "transposed" and a.ndim == 4:
        v = np.ascontiguousarray(a.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    if v is None or v.flags.c_contiguous:
        big = rng.standard_normal(tuple(2 * s + 1 for s in a.shape)).astype(a.dtype)
        v = big[(slice(1, None, 2),) * a.ndim][::-1]
        v[...] = a
    assert not v.flags.c_contiguous and np.array_equal(v, a)
    return v


class NoLaunch:
    """A runtime for host-side rule tests: any launch fails the test."""
    xp = np

    def function(self, *a):
        raise AssertionError("must not launch")


def _launch_functions():
    from gpuconv._cuda import conv_gemm1x1, conv_igemm, conv_igemm_tc
    return {"igemm": conv_igemm.launch_igemm, "gemm1x1": conv_gemm1x1.launch_gemm1x1,
            "igemm_tc": conv_igemm_tc.launch_igemm_tc}


def check_conv(rt, algo, x, w, b, stride=1, padding=0, dilation=1, groups=1, flip=False, activation=None,
               reference=reference_conv2d, precision=None, **overrides):
    """Run ``algo`` on the runtime ``rt`` (through conv.conv2d, or, with launch ``overrides`` such as
    ``tile=``, straight through the GEMM kernels' launch function, as conv.conv2d would call it, into an
    output filled with NaN so that every element must be written) and compare with ``reference``
    (``reference_conv2d``, or ``reference_conv2d_tf32`` for tensor cores) by ``assert_close`` at
    ``precision``. Returns (geometry, kernel name, output)."""
    from gpuconv._cuda import conv
    g = conv_geometry(x.shape, w.shape, None if b is None else b.shape, stride, padding, dilation, groups,
                      flip, activation)
    if overrides:
        assert select.decline_reason(algo, g, x.dtype) is None
        xc, wc = np.ascontiguousarray(x), np.ascontiguousarray(w)
        y = np.full(g.output_shape, np.nan, dtype=x.dtype)  # every element must be written
        kid = numpy_io(rt, _launch_functions()[algo], xc, wc, wc if b is None else b, y, g, **overrides)
    else:
        y, kid = numpy_io(rt, conv.conv2d, x, w, b, g, algo)
    assert y.dtype == x.dtype and y.shape == g.output_shape and y.flags.c_contiguous
    ref, mag = reference(x, w, b, stride, padding, dilation, groups, flip, activation)
    assert_close(y, ref, mag, x.dtype, f"{kid} {overrides}", precision=precision)
    return g, kid, y
