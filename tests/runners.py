"""One test body, every backend.

The shared matrices (tests/test_conv.py, test_pool.py, test_hypothesis.py) call the *public* functions
through a ``Runner``, with NumPy test data on one backend, and get NumPy results back:

* ``numpy``: the NumPy fallback.
* ``emulated-<algo>``: our CUDA kernels and their launch code, compiled with g++ and run on the CPU by
  ``tests/emulator`` (no GPU needed; marked ``emulated``).
* ``gpu-<algo>``: real CuPy arrays on a CUDA device (marked ``gpu``; skipped without CuPy or a device).

The per-kernel suites (tests/test_cuda_*.py) call the *launch code* (``conv.conv2d(rt, ...)``,
``pool.max_pool2d(rt, ...)``, ``conv_igemm.launch_igemm(rt, ...)``) on a *runtime* ``rt``. Each module
declares ``rt = runtime_fixture()``: a module-scoped fixture with two params, the emulator (``emulated``,
marked ``emulated``) and ``gpuconv._cuda.runtime.CupyRuntime`` (``gpu``, marked ``gpu``; skipped with
``gpu_unavailable_reason()`` without CuPy or a device), so every test that takes ``rt`` runs on both. The
test data stays NumPy: ``numpy_io(rt, fn, *args)`` calls ``fn(rt, *args)`` with the NumPy arrays among the
arguments copied to the runtime's device and the arrays it returns copied back (on the emulator it is a
plain call). ``SpyRuntime`` wraps either runtime. A GPU has no switch for the emulator's reversed thread
order (``reverse_threads=True``); ``with_thread_order(rt, 'reversed')`` is the real GPU itself there,
whose thread order is its own, so a reversed-order case still runs once more on real hardware. Tests of
the heuristic behind ``algo='auto'`` call ``use_heuristic_auto`` (a GPU runtime would measure instead).

Emulator-only by design: the AddressSanitizer runs of the kernels (``test_no_out_of_bounds_access_under_asan``
in test_cuda_conv.py, test_cuda_depthwise.py, test_cuda_igemm.py; an ASan build in a subprocess), whose GPU
counterpart is compute-sanitizer memcheck over the ``gpu`` tests (.ci/gpu), and the emulator's self-tests
(tests/emulator). Host-side tests that launch nothing carry neither marker. tests/test_runner_parity.py
checks that for each algorithm ``-m gpu`` collects at least as many cases as ``-m emulated``.

A support module, like tests/reference.py (the textbook references), tests/tolerance.py (the one tolerance
model), tests/cases.py (case lists and test data) and tests/support.py (layouts, ``check_conv``): test
files import helpers only from these, never from another test_*.py file.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import pytest

import gpuconv
from gpuconv._backend import CudaBackend, use_backend

from gpuconv._cuda.ops import operation
from gpuconv._cuda import settings

# Every registered CUDA algorithm joins the shared matrices, except the tensor-core ones: their float32 is
# TF32, outside the matrices' float32 tolerance; tests/test_cuda_igemm_tc.py runs the same geometry matrix
# on them against a TF32-rounded reference.
CONV_ALGOS = tuple(name for name, a in operation("conv2d").algorithms.items() if not a.tensor_cores)

# Algorithms for one kind of geometry only (they decline the rest, by their rule): in the shared matrices
# their runner skips a case they decline (saying why); randomized tests (hypothesis) use the others.
SPECIALIZED_ALGOS = ("gemm1x1", "depthwise")


@functools.lru_cache(maxsize=None)
def emulated_runtime(reverse_threads=False):
    from gpuconv._cuda.ops import INSTANTIATIONS
    from gpuconv._cuda.runtime import kernels_dir
    from tests.emulator import EmulatedRuntime
    return EmulatedRuntime(kernels_dir(), INSTANTIATIONS, reverse_threads=reverse_threads)


@functools.lru_cache(maxsize=None)
def gpu_unavailable_reason():
    info = gpuconv.backend_info()["cupy"]
    return None if info["available"] else info["reason"]


class Launch(NamedTuple):
    """One kernel launch as SpyRuntime saw it."""
    source: str
    name: str
    grid: tuple
    block: tuple
    args: list
    shared_mem: int


class SpyRuntime:
    """Wraps a runtime (the emulator's or CuPy's) and records every launch in ``launches`` (Launch records;
    on a GPU their array arguments are CuPy arrays). Everything else (``compute_capability``, ``time_ms``,
    ``device_key``, ``synchronize``, where the inner runtime has them) is the inner runtime's."""

    def __init__(self, inner):
        self.inner, self.name, self.xp, self.launches = inner, inner.name, inner.xp, []

    def __getattr__(self, attr):  # only for what __init__ and the class do not define
        if attr == "inner":  # not set yet (copy, pickle): no recursion
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def function(self, source, name):
        kernel = self.inner.function(source, name)

        def launch(grid, block, args, shared_mem=0):
            self.launches.append(Launch(source, name, tuple(grid), tuple(block), list(args), shared_mem))
            return kernel(grid, block, args, shared_mem=shared_mem)
        return launch


# --------------------------------------------------------------------------------------------
# the per-kernel suites: one test body on the emulator and on a GPU (see the module docstring)
# --------------------------------------------------------------------------------------------

RUNTIME_PARAMS = [pytest.param("emulated", id="emulated", marks=pytest.mark.emulated),
                  pytest.param("gpu", id="gpu", marks=pytest.mark.gpu)]


def kernel_runtime(kind, algo=None):
    """The runtime of one of ``RUNTIME_PARAMS``: the emulator (every kernel source), or CuPy's on the
    current device. The GPU one skips the test without CuPy or a usable device, and, with ``algo``, on a
    device that algorithm's device rule declines (``select.device_reason``: ``igemm_tc`` below compute
    capability 8.0), with the rule's own words."""
    if kind == "emulated":
        return emulated_runtime()
    reason = gpu_unavailable_reason()
    if reason:
        pytest.skip(reason)
    from gpuconv._cuda.runtime import CupyRuntime
    rt = CupyRuntime()
    if algo is not None:
        from gpuconv._cuda.select import device_reason
        reason = device_reason(algo, rt)
        if reason:
            pytest.skip(reason)
    return rt


def runtime_fixture(algo=None):
    """A module-scoped fixture over ``RUNTIME_PARAMS`` (``kernel_runtime(kind, algo)``). A test module
    declares it at its top level as ``rt = runtime_fixture()``; pytest names the fixture after that name,
    and every test that takes ``rt`` runs twice, ``[emulated-...]`` and ``[gpu-...]``."""
    @pytest.fixture(scope="module", params=RUNTIME_PARAMS)
    def rt(request):
        return kernel_runtime(request.param, algo)
    return rt


def on_gpu(rt) -> bool:
    """Whether ``rt`` (or the runtime a SpyRuntime wraps) works on a GPU (its arrays are not NumPy's)."""
    return rt.xp is not np


def with_thread_order(rt, order):
    """``rt`` with the threads of each block started in ``order``: ``'forward'`` is ``rt`` itself;
    ``'reversed'`` is the emulator with ``reverse_threads=True`` (a missing barrier then reads shared memory
    before it is staged, which the emulator poisons with NaN bytes). A GPU has no such switch: there the
    order is the hardware's own, arbitrary, and ``'reversed'`` is ``rt`` itself, so the case runs once
    more on real hardware (a check still, of a different kind)."""
    if order not in ("forward", "reversed"):
        raise ValueError(f"thread order {order!r}: expected 'forward' or 'reversed'")
    if order == "forward" or on_gpu(rt):
        return rt
    return emulated_runtime(reverse_threads=True)


def use_heuristic_auto(monkeypatch):
    """For the rest of the test, ``algo='auto'`` takes ``select.choose_algo``'s heuristic on a GPU too (where
    it would otherwise measure the candidates and keep the fastest), as it always does on the emulator,
    which cannot time kernels: for tests of the heuristic's choice."""
    monkeypatch.setattr(settings, "_enabled", False)


# Host arrays keep their address modulo this on the device (CuPy's allocations are aligned to it).
DEVICE_ALIGN = 256


def numpy_io(rt, fn, *args, **kwargs):
    """``fn(rt, *args, **kwargs)`` on NumPy test data, whatever the runtime.

    On the emulator (``rt.xp`` is NumPy) it is the plain call. On a GPU, each NumPy array among the
    arguments (or inside a tuple / list argument) is copied to the device for the call, and copied back
    into the host array afterwards (so an output buffer the test passed in holds what the kernel wrote,
    as on the emulator); CuPy arrays in what ``fn`` returns (or inside a returned tuple / list) come back as
    NumPy arrays.

    Kept on the device: shape, dtype, strides (a transposed, sliced or reversed view becomes the same view
    of a device copy of every byte it spans, the gaps' values included), and the address modulo
    ``DEVICE_ALIGN`` (an array that starts one element past an aligned address is just as misaligned on the
    device, so the launch code's vector-load rules decide the same way there). Each array's device buffer
    ends at its last byte, so compute-sanitizer memcheck (CuPy's pool off) sees a read past the end; up to
    255 bytes before the first byte are part of the buffer. A result comes back with its strides (and thus
    its flags) as they were on the device. Lost: aliasing between distinct arrays (two views of one host
    buffer become two device buffers); one array object passed twice is copied once.
    """
    if not on_gpu(rt):
        return fn(rt, *args, **kwargs)
    cp = rt.xp
    copies = {}  # id(host array) -> _DeviceCopy

    def to_device(v):
        if isinstance(v, np.ndarray):
            if id(v) not in copies:
                copies[id(v)] = _DeviceCopy(cp, v)
            return copies[id(v)].view
        if isinstance(v, (tuple, list)):
            return type(v)(to_device(e) for e in v)
        return v

    out = fn(rt, *to_device(args), **{k: to_device(v) for k, v in kwargs.items()})
    for c in copies.values():
        c.write_back()
    host_of = {id(c.view): c.host for c in copies.values()}

    def to_host(v):
        if isinstance(v, cp.ndarray):
            return host_of[id(v)] if id(v) in host_of else _device_to_host(cp, v)
        if isinstance(v, (tuple, list)):
            return type(v)(to_host(e) for e in v)
        return v
    return to_host(out)


def _byte_extent(address, shape, strides, itemsize):
    """``(lo, hi)``: the addresses of the first byte and one past the last byte a strided array spans."""
    lo = hi = address
    for n, s in zip(shape, strides):
        if s < 0:
            lo += (n - 1) * s
        else:
            hi += (n - 1) * s
    return lo, hi + itemsize


class _HostBytes:
    """Bytes ``[lo, hi)`` of a host array's buffer, for ``np.asarray`` (which keeps this object, and so
    ``owner``, alive)."""

    def __init__(self, owner, lo, hi):
        self.owner = owner
        self.__array_interface__ = {"version": 3, "shape": (hi - lo,), "typestr": "|u1",
                                    "data": (lo, not owner.flags.writeable)}


class _DeviceCopy:
    """One NumPy array's device copy for ``numpy_io``: ``view`` has the host array's shape, dtype, strides
    and address modulo DEVICE_ALIGN, over a device buffer holding every byte the host array spans."""

    def __init__(self, cp, host):
        self.host = host
        if host.size == 0:
            self.view, self.bytes, self.device_bytes = cp.empty(host.shape, host.dtype), None, None
            return
        address = host.__array_interface__["data"][0]
        lo, hi = _byte_extent(address, host.shape, host.strides, host.itemsize)
        shift = lo % DEVICE_ALIGN
        raw = cp.empty(shift + hi - lo, dtype=np.uint8)
        if raw.data.ptr % DEVICE_ALIGN:
            raise AssertionError(f"numpy_io expects {DEVICE_ALIGN}-byte aligned CuPy allocations, got "
                                 f"{raw.data.ptr:#x}")
        self.bytes = np.asarray(_HostBytes(host, lo, hi))
        self.device_bytes = raw[shift:]
        self.device_bytes.set(self.bytes)
        self.view = cp.ndarray(host.shape, host.dtype, memptr=raw.data + (shift + address - lo),
                               strides=host.strides)

    def write_back(self):
        if self.device_bytes is not None and self.host.flags.writeable:
            self.bytes[...] = self.device_bytes.get()


def _device_to_host(cp, d):
    """A CuPy array as a NumPy array with the same strides (C-contiguous ones through ``cupy.asnumpy``)."""
    if d.flags.c_contiguous or d.size == 0:
        return cp.asnumpy(d)
    lo, hi = _byte_extent(d.data.ptr, d.shape, d.strides, d.itemsize)
    span = cp.ndarray((hi - lo,), np.uint8, memptr=d.data + (lo - d.data.ptr)).get()
    return np.ndarray(d.shape, d.dtype, buffer=span, offset=d.data.ptr - lo, strides=d.strides)


class Runner:
    def __init__(self, kind, algo=None):
        self.kind, self.algo = kind, algo
        self.id = kind if algo is None else f"{kind}-{algo}"

    def __repr__(self):
        return self.id

    def call(self, fn, *arrays, **kwargs):
        """``fn(*arrays, **kwargs)`` on this backend; NumPy in, NumPy out (tuples kept)."""
        if self.algo is not None:
            kwargs["algo"] = self.algo
        if self.kind == "numpy":
            return fn(*arrays, **kwargs)
        if self.kind == "emulated":
            with use_backend(CudaBackend(emulated_runtime())):
                return self._unless_declined(fn, arrays, kwargs)
        reason = gpu_unavailable_reason()
        if reason:
            pytest.skip(reason)
        import cupy
        out = self._unless_declined(fn, [None if a is None else cupy.asarray(a) for a in arrays], kwargs)
        if isinstance(out, tuple):
            return tuple(cupy.asnumpy(o) for o in out)
        return cupy.asnumpy(out)


    def _unless_declined(self, fn, arrays, kwargs):
        """Call ``fn``; a specialized algorithm that declines the case by its rule skips the test."""
        try:
            return fn(*arrays, **kwargs)
        except ValueError as exc:
            if self.algo in SPECIALIZED_ALGOS and f"{self.algo} declines" in str(exc):
                pytest.skip(str(exc))
            raise


def _param(runner):
    marks = {"emulated": [pytest.mark.emulated], "gpu": [pytest.mark.gpu]}.get(runner.kind, [])
    return pytest.param(runner, id=runner.id, marks=marks)


CONV_RUNNERS = [_param(Runner("numpy"))] + [_param(Runner(k, a)) for k in ("emulated", "gpu")
                                            for a in CONV_ALGOS + ("auto",)]
GENERAL_CONV_RUNNERS = [r for r in CONV_RUNNERS if r.values[0].algo not in SPECIALIZED_ALGOS]
POOL_RUNNERS = [_param(Runner(k)) for k in ("numpy", "emulated", "gpu")]

try:
    import torch
except ImportError:  # the oracle is optional; tests that use it skip that comparison only
    torch = None

