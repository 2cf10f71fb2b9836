"""One test body, every backend: a *runner* calls a public gpuconv function with NumPy test data on one
backend and hands back NumPy results.

* ``numpy``: the NumPy fallback.
* ``emulated-<algo>``: our CUDA kernels and their launch code, compiled with g++ and run on the CPU by
  ``tests/emulator`` (no GPU needed; marked ``emulated``).
* ``gpu-<algo>``: real CuPy arrays on a CUDA device (marked ``gpu``; skipped without CuPy or a device).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import pytest

import gpuconv
from gpuconv._backend import CudaBackend, use_backend

from gpuconv._cuda.conv import ALGORITHMS

# Every registered CUDA algorithm joins the shared matrices, except the tensor-core ones: their float32 is
# TF32, outside the matrices' float32 tolerance; tests/test_cuda_igemm_tc.py runs the same geometry matrix
# on them against a TF32-rounded reference.
CONV_ALGOS = tuple(name for name, a in ALGORITHMS.items() if not a.tensor_cores)

# Algorithms for one kind of geometry only (they decline the rest, by their rule): in the shared matrices
# their runner skips a case they decline (saying why); randomized tests (hypothesis) use the others.
SPECIALIZED_ALGOS = ("gemm1x1", "depthwise")


@functools.lru_cache(maxsize=None)
def emulated_runtime(reverse_threads=False):
    from gpuconv._cuda.registry import INSTANTIATIONS
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
    """Wraps a runtime (the emulator's) and records every launch in ``launches`` (Launch records)."""

    def __init__(self, inner):
        self.inner, self.name, self.xp, self.launches = inner, inner.name, inner.xp, []

    def function(self, source, name):
        kernel = self.inner.function(source, name)

        def launch(grid, block, args, shared_mem=0):
            self.launches.append(Launch(source, name, tuple(grid), tuple(block), list(args), shared_mem))
            return kernel(grid, block, args, shared_mem=shared_mem)
        return launch


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


def tolerance(dtype):
    """Bound on |ours - reference| relative to the sum of |terms| (see assert_close_to_terms)."""
    return {np.float16: 2e-3, np.float32: 2e-5, np.float64: 1e-12}[np.dtype(dtype).type]


def assert_close_to_terms(actual, expected, magnitude, dtype, what=""):
    """Elementwise ``|actual - expected| <= tol(dtype) * magnitude + tiny``, where ``magnitude`` is the
    reference computed on absolute values (the size of the terms that were summed); NaN must match NaN."""
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    assert np.array_equal(nan_a, nan_e), f"{what}: NaN positions differ"
    ok = ~nan_e
    with np.errstate(invalid="ignore"):
        err = np.abs(actual[ok] - expected[ok])
        err[actual[ok] == expected[ok]] = 0  # equal infinities
    bound = tolerance(dtype) * magnitude[ok] + 1e-300
    worst = np.argmax(err - bound) if err.size else 0
    assert np.all(err <= bound), (f"{what}: max error {err.flat[worst]:.3g} > bound {bound.flat[worst]:.3g} "
                                  f"(dtype {np.dtype(dtype).name})")
