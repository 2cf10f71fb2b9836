"""Which path runs a call: the one readable decision, and the record of which kernel ran.

* NumPy arrays run the NumPy fallback (``gpuconv/_numpy``).
* CuPy arrays (and any GPU array CuPy wraps zero-copy: ``__cuda_array_interface__`` or a CUDA DLPack
  capsule, e.g. a PyTorch CUDA tensor) run our CUDA kernels (``gpuconv/_cuda``, sources in ``kernels/``).

There is no silent fallback between the two: the arrays decide. ``last_kernel()`` tells which kernel
ran for the most recent call in this thread / context. Tests may force the CUDA launch code onto another
runtime (the CPU emulator) with ``use_backend``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import sys
from dataclasses import dataclass

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class KernelRecord:
    """What ran for one call: operation, backend (``'numpy'``, ``'cupy'``, ``'emulated'``), kernel id.

    A call that runs several kernels (a backward pass computing more than one gradient) records each, in
    order, in ``kernels``; ``kernel`` is then their ids joined by ``" + "``. ``direction`` is the
    operation's direction (``'forward'``, or a backward one)."""

    op: str
    backend: str
    kernel: str
    direction: str = "forward"
    kernels: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.kernels:
            object.__setattr__(self, "kernels", (self.kernel,))


_last_kernel: contextvars.ContextVar[KernelRecord | None] = contextvars.ContextVar("gpuconv_last_kernel",
                                                                                   default=None)
_forced_backend: contextvars.ContextVar = contextvars.ContextVar("gpuconv_forced_backend", default=None)


def last_kernel() -> KernelRecord | None:
    """The kernel that ran for the most recent gpuconv call in this context (None before any call)."""
    return _last_kernel.get()


def record(op: str, backend: str, *kernels: str, direction: str = "forward") -> None:
    """Record what a call ran: one kernel id, or several in the order they ran."""
    _last_kernel.set(KernelRecord(op, backend, " + ".join(kernels), direction, kernels))


# --------------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------------

def _ieee_quiet(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with NumPy's "overflow" and "invalid value" warnings off: inf and NaN are
    data, not errors (IEEE arithmetic, as on the GPU and in PyTorch), and a caller running with warnings
    as errors would get them as exceptions. ``parallel_map`` carries the setting into its workers."""
    with np.errstate(over="ignore", invalid="ignore"):
        return fn(*args, **kwargs)


class NumpyBackend:
    """The NumPy fallback."""

    name = "numpy"
    xp = np

    def conv2d(self, x, w, b, g, algo):
        if algo != "auto":
            raise ValueError(f"algo={algo!r} selects a CUDA kernel, but the inputs are NumPy arrays, which "
                             "run the NumPy path; use algo='auto' or pass CuPy arrays")
        from ._numpy import conv
        return _ieee_quiet(conv.conv2d, x, w, b, g)

    def pool_backward(self, op, go, idx, g, *options):
        """The input gradient of pooling op ``op`` (``gpuconv/_numpy/pool_grad.py``): ``(grad_input, kernel)``."""
        from ._numpy import pool_grad
        return _ieee_quiet(getattr(pool_grad, op), go, idx, g, *options)

    def __getattr__(self, op):  # pooling entry points: max_pool2d, avg_pool2d, adaptive_*
        return _quiet_numpy_pool(op)


@functools.lru_cache(maxsize=None)
def _quiet_numpy_pool(op: str):
    """The NumPy pooling entry point ``op`` wrapped in ``_ieee_quiet``, made once per op (not per call)."""
    from ._numpy import adaptive_pool, pool
    return functools.partial(_ieee_quiet, getattr(adaptive_pool if op.startswith("adaptive") else pool, op))


class CudaBackend:
    """Our CUDA kernels, launched through a runtime (CuPy, or the tests' CPU emulator)."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.name = runtime.name
        self.xp = runtime.xp

    def conv2d(self, x, w, b, g, algo):
        from ._cuda import conv
        return conv.conv2d(self.runtime, x, w, b, g, algo)

    def pool_backward(self, op, go, idx, g, *options):
        """The input gradient of pooling op ``op``: its one backward algorithm in the operation table
        (``gpuconv/_cuda/pool_grad.py``): ``(grad_input, kernel)``."""
        from ._cuda.ops import operation
        return operation(op, "backward").algorithms["direct"].launch(self.runtime, go, idx, g, *options)

    def __getattr__(self, op):  # pooling entry points: each op's one algorithm in the operation table
        from ._cuda.ops import operation
        return functools.partial(operation(op).algorithms["direct"].launch, self.runtime)


@contextlib.contextmanager
def use_backend(backend):
    """Run the calls in this block on ``backend`` whatever the arrays are (arrays must be of
    ``backend.xp``). For tests: ``use_backend(CudaBackend(EmulatedRuntime(...)))``."""
    token = _forced_backend.set(backend)
    try:
        yield backend
    finally:
        _forced_backend.reset(token)


@functools.lru_cache(maxsize=None)
def _cupy_backend():
    from ._cuda.runtime import CupyRuntime
    return CudaBackend(CupyRuntime())


# --------------------------------------------------------------------------------------------
# arrays
# --------------------------------------------------------------------------------------------

def _cupy():
    try:
        import cupy
    except Exception:  # not installed, or installed without a usable CUDA runtime
        return None
    return cupy


def _type_name(obj) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}" if t.__module__ != "builtins" else t.__qualname__


def _is_cuda_object(obj) -> bool:
    if hasattr(obj, "__cuda_array_interface__"):
        return True
    dl = getattr(obj, "__dlpack_device__", None)
    if dl is None:
        return False
    try:
        return dl()[0] in (2, 3, 13)  # kDLCUDA, kDLCUDAHost, kDLCUDAManaged
    except Exception:
        return False


def _not_an_array(fn: str, name: str, a, optional: bool) -> TypeError:
    """The TypeError for an argument ``name`` that is not an array: it names the function, the argument
    and the type received. Nothing is converted silently (PyTorch's ``F.conv2d`` refuses lists too)."""
    what = "a NumPy or CuPy array" + (" or None" if optional else "")
    hint = ""
    if _is_cuda_object(a):
        hint = (" (a GPU array: gpuconv takes those through CuPy, which is not usable here; see "
                "python -m gpuconv info)")
    elif isinstance(a, (list, tuple)) or hasattr(a, "__array__") or hasattr(a, "__array_interface__"):
        hint = " (convert it first, e.g. numpy.asarray(..., dtype=numpy.float32))"
    return TypeError(f"{fn}(): argument '{name}' must be {what}, got {_type_name(a)}{hint}")


def coerce_arrays(fn: str, /, *, optional=(), **named):
    """Check that every given array is a NumPy or CuPy array (GPU arrays of other libraries are wrapped
    zero-copy), all of one kind, with one floating dtype and, for CuPy, on the current device. An
    argument named in ``optional`` may be None (it is then skipped); any other None, and anything else
    that is not an array, is a ``TypeError`` naming the function, the argument and the type received.
    Returns ``(backend, {name: array})``."""
    cupy = None
    arrays, kinds = {}, {}
    for name, a in named.items():
        if a is None and name in optional:
            arrays[name] = None
            continue
        if isinstance(a, np.ndarray):
            kinds[name] = "numpy"
        elif a is None:
            raise _not_an_array(fn, name, a, False)
        else:
            cupy = cupy or _cupy()
            if cupy is not None and isinstance(a, cupy.ndarray):
                kinds[name] = "cupy"
            elif cupy is not None and _is_cuda_object(a):
                a = cupy.asarray(a) if hasattr(a, "__cuda_array_interface__") else cupy.from_dlpack(a)
                kinds[name] = "cupy"
            else:
                raise _not_an_array(fn, name, a, name in optional)
        arrays[name] = a
    if len(set(kinds.values())) > 1:
        desc = ", ".join(f"{n} is a {'NumPy' if k == 'numpy' else 'CuPy'} array" for n, k in kinds.items())
        raise TypeError(f"{fn}(): all arrays must be NumPy arrays or all CuPy arrays, but {desc}")
    dtypes = {}
    for name, a in arrays.items():
        if a is None:
            continue
        dt = np.dtype(a.dtype)
        if dt not in FLOAT_DTYPES:
            raise TypeError(f"{fn}(): {name} must be float16, float32 or float64, got {name} of dtype {dt} "
                            f"and shape {list(a.shape)}")
        dtypes[name] = dt
    if len(set(dtypes.values())) > 1:
        desc = ", ".join(f"{n} is {d}" for n, d in dtypes.items())
        raise TypeError(f"{fn}(): expected all arrays to have the same dtype, but {desc}")
    kind = next(iter(kinds.values()), "numpy")
    forced = _forced_backend.get()
    if forced is not None:
        return forced, arrays
    if kind == "numpy":
        return NumpyBackend(), arrays
    current = cupy.cuda.Device().id
    for name, a in arrays.items():
        if a is not None and a.device.id != current:
            raise ValueError(f"{fn}(): {name} is on CUDA device {a.device.id} but the current device is "
                             f"{current}; move it or run under `with cupy.cuda.Device({a.device.id}):`")
    return _cupy_backend(), arrays


# --------------------------------------------------------------------------------------------
# information
# --------------------------------------------------------------------------------------------

# cudaError_t codes CuPy's CUDARuntimeError carries in ``.status`` (and names in its message)
CUDA_ERROR_INSUFFICIENT_DRIVER = 35  # cudaErrorInsufficientDriver: no driver at all, or one too old
CUDA_ERROR_NO_DEVICE = 100  # cudaErrorNoDevice


def _cuda_version(v) -> str:
    """CUDA's integer version as text: 12040 -> '12.4'."""
    return f"{v // 1000}.{v % 1000 // 10}"


def _cuda_unusable_reason(exc, cupy=None) -> str:
    """Plain words for why CuPy, installed, cannot use CUDA, followed by CuPy's own text.

    CUDA's runtime reports a machine without an NVIDIA driver as "CUDA driver version is insufficient for
    CUDA runtime version" (cudaErrorInsufficientDriver, 35), which reads as if an old driver were the
    problem; ``cudaDriverGetVersion`` answers 0 when no driver is installed, which tells the two apart.
    """
    said = " ".join(f"{type(exc).__name__}: {exc}".split())  # CuPy's import errors span several lines
    status = getattr(exc, "status", None)
    text = str(exc)
    if status == CUDA_ERROR_NO_DEVICE or "cudaErrorNoDevice" in text or "CUDA_ERROR_NO_DEVICE" in text:
        plain = ("no NVIDIA GPU was found: the NVIDIA driver is installed but reports no CUDA device "
                 "(check nvidia-smi, and CUDA_VISIBLE_DEVICES or the container's GPU access)")
    elif (status == CUDA_ERROR_INSUFFICIENT_DRIVER or "cudaErrorInsufficientDriver" in text
          or "CUDA_ERROR_INSUFFICIENT_DRIVER" in text):
        driver = runtime_version = None
        try:
            driver = int(cupy.cuda.runtime.driverGetVersion())
            runtime_version = int(cupy.cuda.runtime.runtimeGetVersion())
        except Exception:
            pass
        if driver == 0:
            plain = "no NVIDIA driver was found (no NVIDIA GPU here, or its driver is not installed)"
        elif driver is not None and runtime_version is not None:
            plain = (f"the NVIDIA driver is too old: it supports CUDA {_cuda_version(driver)}, CuPy's CUDA "
                     f"runtime is {_cuda_version(runtime_version)}; update the driver or install the CuPy "
                     f"package for an older CUDA")
        else:
            plain = ("no NVIDIA driver was found, or it is too old for CuPy's CUDA runtime (no NVIDIA GPU "
                     "here, or its driver is missing or outdated)")
    elif "libcuda" in text:
        plain = ("no NVIDIA driver was found: libcuda, the driver's library, cannot be loaded (no NVIDIA "
                 "GPU here, or its driver is not installed)")
    else:
        plain = "CUDA is not usable"
    return f"CuPy is installed, but {plain}. CuPy said: {said}"


def _cupy_installed() -> bool:
    if sys.modules.get("cupy") is not None:
        return True
    try:
        return importlib.util.find_spec("cupy") is not None
    except (ImportError, ValueError):
        return False


def backend_info() -> dict:
    """Which backends are usable here, and why not where not. Keys: ``numpy`` and ``cupy``, each a dict
    with ``available`` (bool), ``version`` and ``reason`` (why unavailable, in plain words first, then
    CuPy's own message) / ``devices``."""
    info = {"numpy": {"available": True, "version": np.__version__, "reason": None}}
    cu = {"available": False, "version": None, "reason": None, "devices": []}
    if not _cupy_installed():
        cu["reason"] = "CuPy is not installed (pip install 'gpuconv[cuda12]' or 'gpuconv[cuda13]')"
    else:
        cupy = None
        try:
            import cupy
            cu["version"] = cupy.__version__
            count = cupy.cuda.runtime.getDeviceCount()
            if count == 0:
                cu["reason"] = ("CuPy is installed, but no NVIDIA GPU was found: the NVIDIA driver reports "
                                "no CUDA device")
            else:
                for i in range(count):
                    props = cupy.cuda.runtime.getDeviceProperties(i)
                    name = props["name"]
                    cu["devices"].append({"id": i, "name": name.decode() if isinstance(name, bytes) else name,
                                          "compute_capability": f"{props['major']}.{props['minor']}",
                                          "memory_bytes": int(props["totalGlobalMem"])})
                cu["available"] = True
                cu["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
                cu["driver"] = cupy.cuda.runtime.driverGetVersion()
        except Exception as exc:  # no driver, no device, a broken install, etc.
            cu["available"], cu["devices"] = False, []
            cu["reason"] = _cuda_unusable_reason(exc, cupy)
    info["cupy"] = cu
    return info
