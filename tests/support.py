"""Helpers shared by several test files: non-contiguous views of test data (``make_layout`` for the shared
matrices, ``noncontiguous_view`` for the per-kernel suites), a runtime that must not launch
(``NoLaunch``), and ``check_conv``: one conv2d algorithm run on a kernel runtime (tests/runners.py) and
compared with a reference (tests/reference.py) under the one tolerance model (tests/tolerance.py). For
the N-D implicit-GEMM suites (test_cuda_conv1d.py, test_cuda_conv3d.py): ``random_conv_arrays``,
``triple`` and ``IgemmNdSuite`` (the kernel's runner, checker and rule's kernel id, bound to its host
module). For the gradient suites with a fused activation: ``ACTIVATION_DERIVATIVES`` and
``activated_output`` (an activated forward output holding the special values). For the ``gpuconv.cudnn``
suites (test_cudnn*.py): ``BACKEND_KINDS`` and ``On``, the array kinds a test runs on.

The support modules: tests/reference.py (textbook references), tests/tolerance.py (the tolerance model),
tests/cases.py (case generation, case lists and test data), tests/runners.py (backends and runtimes), and
this one. Test files import helpers only from them, never from another test_*.py file.
"""

from __future__ import annotations

import contextlib

import numpy as np

import pytest

import gpuconv
from gpuconv._backend import CudaBackend, use_backend
from gpuconv._geometry import conv_geometry
from gpuconv._geometry_nd import conv_nd_geometry
from gpuconv._cuda import conv_igemm, gemm, select
from tests.reference import apply_activation, reference_conv2d, reference_conv_nd
from tests.runners import emulated_runtime, gpu_unavailable_reason, numpy_io, on_gpu
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


# --------------------------------------------------------------------------------------------
# the N-D implicit-GEMM suites (conv1d_igemm, conv3d_igemm)
# --------------------------------------------------------------------------------------------

def random_conv_arrays(xs, ws, dt, bias=True, seed=0):
    """Standard-normal ``x`` of shape ``xs``, ``w`` of shape ``ws`` and (or None) a bias of ``ws[0]``, in
    ``dt``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dt)
    w = rng.standard_normal(ws).astype(dt)
    b = rng.standard_normal(ws[0]).astype(dt) if bias else None
    return x, w, b


def triple(v):
    """A 3-D argument as a triple: an int repeated, a sequence as it is."""
    return (v,) * 3 if isinstance(v, int) else tuple(v)


class IgemmNdSuite:
    """The helpers of an N-D implicit-GEMM kernel's suite, bound to its host module ``host``
    (``gpuconv._cuda.conv1d_igemm`` / ``conv3d_igemm``): ``nd`` spatial dimensions, the module's public-path
    entry ``forward(rt, x, w, b, g)``, its ``launch(rt, x, w, b, y, g, **overrides)``, its kernel-name
    builder ``name(dtype, tile)``, and the public function (``gpuconv.conv1d`` / ``conv3d``)."""

    def __init__(self, nd, host, forward, launch, name, public):
        self.nd, self.host, self.forward, self.launch, self.name, self.public_fn = (nd, host, forward, launch,
                                                                                     name, public)

    def geometry(self, x, w, b, stride=1, padding=0, dilation=1, groups=1, flip=False, activation=None):
        return conv_nd_geometry(self.nd, x.shape, w.shape, None if b is None else b.shape, stride, padding,
                                dilation, groups, flip, activation)

    def run(self, rt, x, w, b, g, **launch):
        """The kernel on ``rt`` (emulator or GPU): ``(y, kernel id)``; ``launch`` overrides (tile=, splits=...)
        go straight to the launch function, into an output filled with NaN; without them the module's entry
        decides."""
        def call(rt, x, w, b):
            xp = rt.xp
            xc, wc = xp.ascontiguousarray(x), xp.ascontiguousarray(w)
            bc = wc if b is None else xp.ascontiguousarray(b)
            y = xp.full(g.output_shape, np.nan, dtype=x.dtype)  # every element must be written
            return y, self.launch(rt, xc, wc, bc, y, g, **launch)
        if not launch:
            return numpy_io(rt, lambda rt, x, w, b: self.forward(rt, x, w, b, g), x, w, b)
        return numpy_io(rt, call, x, w, b)

    def check(self, rt, x, w, b, kw, what="", **launch):
        """``run`` against ``reference_conv_nd`` under the tolerance model: ``(y, kernel id, geometry)``."""
        g = self.geometry(x, w, b, **kw)
        y, kid = self.run(rt, x, w, b, g, **launch)
        ref, mag = reference_conv_nd(x, w, b, **kw)
        assert y.dtype == x.dtype and y.shape == ref.shape
        assert_close(y, ref, mag, x.dtype, f"{kid} {what}")
        return y, kid, g

    def rule_kernel_id(self, g, dtype):
        """The kernel id the rules give a call: the rule's tile, split where the split-K rule splits it."""
        tile, view = self.host.tile_for(g, dtype), self.host.gemm_view(g)
        n, _ = conv_igemm.splitk_ranges(view, tile, self.host.splitk_for(g, dtype))
        if n == 1:
            return self.name(dtype, tile)
        return conv_igemm.igemm_kernel_id(gemm.gemm_kernel_name(self.host.SPLIT_KERNEL, dtype, tile), n, dtype)

    def public(self, rt, x, w, b=None, **kw):
        """The public function on ``rt`` through the CUDA backend: ``(y, last_kernel())``."""
        def call(rt, x, w, b):
            with use_backend(CudaBackend(rt)):
                return self.public_fn(x, w, b, **kw), gpuconv.last_kernel()
        return numpy_io(rt, call, x, w, b)

    @staticmethod
    def case_data(c, channels, size, kernel, seed=0):
        """A matrix case ``c``'s ``(x, w, b, kw)``: ``channels`` its (C, K, groups), ``size`` / ``kernel`` its
        spatial sizes (tuples); x in the case's layout, the options in ``kw``."""
        rng = np.random.default_rng(seed)
        C, K, groups = channels
        x, w, b = random_conv_arrays((c["N"], C) + size, (K, C // groups) + kernel, c["dtype"], c["bias"], seed)
        x = noncontiguous_view(x, c["layout"], rng)
        kw = dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"], groups=groups, flip=c["flip"],
                  activation=c["activation"])
        return x, w, b, kw

    @staticmethod
    def case_id(i, c, keys):
        """A matrix case's test id: its number and the values of ``keys``."""
        return f"{i}-" + "-".join(str(v if not isinstance(v, type) else v.__name__).replace(" ", "")
                                  for k, v in c.items() if k in keys)

    @staticmethod
    def edge_params(names, tile_for_dtype):
        """``(name, tile, dtype)`` params: every case of ``names`` on every GEMM tile of every dtype that has
        it, the tile as ``tile_for_dtype(tile, dtype)`` gives it to the kernel."""
        params = []
        for name in names:
            for tile in (gemm.SMALL_TILE, gemm.WIDE_TILE, gemm.LARGE_TILE):
                for dt in gemm.TILES_BY_DTYPE:
                    if any(t.name == tile.name for t in gemm.TILES_BY_DTYPE[dt]):
                        params.append(pytest.param(name, tile_for_dtype(tile, dt), dt,
                                                   id=f"{name}-{tile.name}-{dt.name}"))
        return params


# --------------------------------------------------------------------------------------------
# fused activation derivatives (the gradient suites)
# --------------------------------------------------------------------------------------------

ACTIVATION_DERIVATIVES = {  # d act / d z from the activated value (docs/gradients.md); NaN > 0 is False
    "relu": lambda o: np.where(o > 0, 1.0, 0.0),
    "leaky_relu": lambda o: np.where(o > 0, 1.0, 0.01),
    "sigmoid": lambda o: (1 - o) * o,
    "tanh": lambda o: 1 - o * o,
}


def activated_output(shape, act, dtype, rng, layout, nans=True):
    """An activated forward output (``act`` of standard-normal values, in ``layout``, drawn from ``rng``) with
    the special values: 0 at every 7th element (relu 0, leaky_relu the slope) and, with ``nans``, NaN at every
    11th from the 4th (relu / leaky_relu: NaN > 0 is False, 0 or the slope as PyTorch; sigmoid / tanh: NaN
    propagates)."""
    out = noncontiguous_view(apply_activation(rng.standard_normal(shape), act).astype(dtype), layout, rng)
    out.flat[::7] = 0
    if nans:
        out.flat[3::11] = np.nan
    return out


# --------------------------------------------------------------------------------------------
# the array kinds of the gpuconv.cudnn suites
# --------------------------------------------------------------------------------------------

BACKEND_KINDS = [pytest.param("numpy", id="numpy"),
                 pytest.param("emulated", id="emulated", marks=pytest.mark.emulated),
                 pytest.param("gpu", id="gpu", marks=pytest.mark.gpu)]


class On:
    """Arrays and calls of one backend kind (``BACKEND_KINDS``): ``arr`` turns NumPy test data into its arrays,
    ``host`` back; inside ``with On(kind)``, 'emulated' runs the CUDA launch code on the CPU emulator; 'gpu'
    skips the test without a usable GPU."""

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


class PoisonedEmpty:
    """``rt`` whose ``xp.empty`` gives float arrays full of NaN: a kernel that must write every element of
    its output (the data-gradient kernels, with no zero fill) is caught leaving one."""

    def __init__(self, rt):
        self.rt, inner = rt, rt.xp

        class Xp:
            def __getattr__(self, name):
                return getattr(inner, name)

            def empty(self, shape, dtype=float):
                a = inner.empty(shape, dtype)
                if np.dtype(dtype).kind == "f":
                    a.fill(np.nan)
                return a
        self.xp = Xp()

    def function(self, source, name):
        return self.rt.function(source, name)


def fused_derivative_is_bitwise(rt, dtype, act) -> bool:
    """Whether a data-gradient kernel with the activation's derivative fused in its gather gives the bits of
    the pre-pass form (``gy * act'(out)`` first, then the plain kernel): where the gather forms the same
    products in the same order (tests/test_cuda_dgrad_activation.py's docstring): on the emulator
    (-ffp-contract=off) float32 / float64, and float16 relu (a select); on a GPU, where NVRTC may contract
    into FMAs, relu / leaky_relu outside float16 and relu in float16."""
    if on_gpu(rt):
        return act in ("relu", "leaky_relu") and np.dtype(dtype) != np.float16 or act == "relu"
    return np.dtype(dtype) != np.float16 or act == "relu"
