"""The runtime the launch code talks to (:class:`Runtime`), and the CuPy one: loading the kernel sources and
compiling them, once per device, through ``cupy.RawModule``.

Every template instantiation the launch code may request is listed in ``ops.INSTANTIATIONS`` and
compiled in one NVRTC call per source file; the compile-check test uses the same list and options.
"""

from __future__ import annotations

import functools
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

# Options passed to NVRTC by every runtime compile (the compile-check test uses exactly these, plus
# the architecture). CuPy adds its own architecture flag for the current device.
NVRTC_OPTIONS = ("--std=c++17",)

_LOCAL_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[ \t]*$', re.MULTILINE)


def kernels_dir() -> Path:
    """The folder with the ``.cu`` sources: inside the installed package (wheel / editable install,
    packaged as ``gpuconv.kernels``) or, from a source checkout, ``<repo>/kernels``."""
    here = Path(__file__).resolve().parent.parent  # gpuconv/
    for candidate in (here / "kernels", here.parent / "kernels"):
        if (candidate / "common.cuh").is_file():
            return candidate
    try:  # editable installs map the package elsewhere
        from importlib.resources import files
        candidate = Path(str(files("gpuconv.kernels")))
        if (candidate / "common.cuh").is_file():
            return candidate
    except (ImportError, ModuleNotFoundError, TypeError):
        pass
    raise FileNotFoundError("gpuconv kernel sources (common.cuh, *.cu) not found next to the package")


@functools.lru_cache(maxsize=None)
def load_source(source: str) -> str:
    """The text of ``kernels/<source>`` with each local ``#include "x.cuh"`` spliced in (once each),
    so the compiled text — and therefore CuPy's on-disk cache key — covers every header."""
    root = kernels_dir()
    seen: set[str] = set()

    def expand(name: str) -> str:
        if name in seen:
            return ""
        seen.add(name)
        text = (root / name).read_text()
        text = text.replace("#pragma once", "")
        return _LOCAL_INCLUDE.sub(lambda m: expand(m.group(1)), text)

    return expand(source)


@runtime_checkable
class Runtime(Protocol):
    """Everything the launch code (``conv.py``, ``pool.py``, ``autotune.py``, ``select.py``) uses of a runtime.
    :class:`CupyRuntime` is the real one; the tests' CPU emulator (``tests/emulator``) is the other, and a
    test checks both against this protocol."""

    name: str  # 'cupy' or 'emulated': the backend named in gpuconv.last_kernel()
    xp: Any  # the array module: cupy, or numpy for the emulator
    can_time: bool  # whether time_ms works (the autotuner measures only then)

    def function(self, source: str, name_expression: str) -> Callable:
        """A kernel callable as ``k(grid, block, args, shared_mem=0)``."""

    def synchronize(self) -> None:
        """Wait for every launched kernel to finish."""

    def compute_capability(self) -> int | None:
        """The current device's compute capability as an int (``90`` for 9.0); None when there is no
        device to decline algorithms for (the emulator)."""

    def device_key(self) -> str:
        """Names the current device for the autotuner's choices and cache file."""

    def time_ms(self, fn: Callable[[], Any], repeats: int) -> float:
        """Device time of ``fn()``, the minimum of ``repeats`` runs after one untimed run."""


class CupyRuntime:
    """Kernels compiled by CuPy's NVRTC path, memoised per (device, source file)."""

    name = "cupy"
    can_time = True
    xp: Any  # cupy, set on construction (importing CuPy is deferred until a CuPy array arrives)

    def __init__(self):
        import cupy
        self.xp = cupy

    def function(self, source: str, name_expression: str):
        return _function(self.xp.cuda.Device().id, source, name_expression)

    def synchronize(self):
        self.xp.cuda.get_current_stream().synchronize()

    def compute_capability(self) -> int:
        """The current device's compute capability as an int (``90`` for 9.0); read once per device
        (``'auto'`` asks on every call)."""
        return _compute_capability(self.xp.cuda.Device().id)

    def device_key(self) -> str:
        """Names the current device for the autotuner's cache: model, compute capability, gpuconv.
        Read once per device (``'auto'`` asks on every call)."""
        return _device_key(self.xp.cuda.Device().id)

    def time_ms(self, fn, repeats: int) -> float:
        """GPU time of ``fn()`` (which launches on the current stream), the minimum of ``repeats`` runs
        between CUDA events, after one untimed run (NVRTC compile, first-touch effects)."""
        stream = self.xp.cuda.get_current_stream()
        fn()
        best = float("inf")
        for _ in range(repeats):
            start, end = self.xp.cuda.Event(), self.xp.cuda.Event()
            start.record(stream)
            fn()
            end.record(stream)
            end.synchronize()
            best = min(best, self.xp.cuda.get_elapsed_time(start, end))
        return best


@functools.lru_cache(maxsize=None)
def _device_key(device_id: int) -> str:
    import cupy
    from .. import __version__
    props = cupy.cuda.runtime.getDeviceProperties(device_id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return f"{name} sm_{cupy.cuda.Device(device_id).compute_capability} gpuconv {__version__}"


@functools.lru_cache(maxsize=None)
def _compute_capability(device_id: int) -> int:
    import cupy
    return int(cupy.cuda.Device(device_id).compute_capability)


@functools.lru_cache(maxsize=None)
def _module(device_id: int, source: str):
    import cupy
    from .ops import INSTANTIATIONS
    with cupy.cuda.Device(device_id):
        return cupy.RawModule(code=load_source(source), options=NVRTC_OPTIONS,
                              name_expressions=tuple(INSTANTIATIONS[source]))


@functools.lru_cache(maxsize=None)
def _function(device_id: int, source: str, name_expression: str):
    """The kernel handle, looked up once per (device, source, name): a launch then costs no lookup of the
    lowered name and no call into the driver."""
    return _module(device_id, source).get_function(name_expression)


# --------------------------------------------------------------------------------------------
# precompiling: every source for the current device, before the first call needs it
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KernelResources:
    """One compiled kernel's resources, read from the loaded function (``cudaFuncGetAttributes``)."""

    name: str
    registers: int
    local_bytes: int  # per thread: register spills and local arrays
    shared_bytes: int  # static shared memory (dynamic shared memory is chosen per launch)
    max_threads: int  # the most threads per block this kernel can launch with


@dataclass(frozen=True)
class SourceCompile:
    """One kernel source compiled (or loaded from CuPy's on-disk cache) for one device."""

    source: str
    seconds: float
    kernels: tuple[KernelResources, ...]
    error: str | None = None


def _kernel_resources(name: str, function) -> KernelResources:
    a = function.attributes
    return KernelResources(name, int(a["num_regs"]), int(a["local_size_bytes"]), int(a["shared_size_bytes"]),
                           int(a["max_threads_per_block"]))


def _compile_source(device_id: int, source: str, names) -> SourceCompile:
    import cupy
    t0 = time.perf_counter()
    try:
        with cupy.cuda.Device(device_id):
            kernels = tuple(_kernel_resources(n, _function(device_id, source, n)) for n in names)
    except Exception as exc:  # a compile error is reported with the other sources' results
        return SourceCompile(source, time.perf_counter() - t0, (), f"{type(exc).__name__}: {exc}")
    return SourceCompile(source, time.perf_counter() - t0, kernels)


def precompile(device=None, *, workers: int | None = None) -> list[SourceCompile]:
    """Compile every kernel source for one CUDA device (default: the current one), the sources in parallel
    threads, and load every kernel. Each source goes through the same ``cupy.RawModule`` call as a launch
    (same text, options and name expressions), so CuPy's on-disk kernel cache then holds it: later calls,
    in this process or a new one, compile nothing. Returns, per source, the seconds it took (a source
    found in the cache takes milliseconds) and each kernel's registers, local memory, static shared memory
    and maximum block size; a source that fails to compile carries its error instead of raising.
    ``python -m gpuconv precompile`` prints the same."""
    import cupy
    from .ops import INSTANTIATIONS
    device_id = cupy.cuda.Device(device).id if device is not None else cupy.cuda.Device().id
    sources = sorted(INSTANTIATIONS)
    with ThreadPoolExecutor(max_workers=workers or len(sources)) as pool:
        return list(pool.map(lambda s: _compile_source(device_id, s, INSTANTIATIONS[s]), sources))


def format_precompile(results: list[SourceCompile]) -> str:
    """The report ``python -m gpuconv precompile`` prints: a line per source, a line per kernel below it."""
    lines = []
    for r in results:
        lines.append(f"{r.source}: {r.seconds:.1f} s" + (f", FAILED: {r.error}" if r.error else
                                                          f", {len(r.kernels)} kernels"))
        lines += [f"  {k.name}: {k.registers} registers, {k.local_bytes} B local, {k.shared_bytes} B shared, "
                  f"max {k.max_threads} threads" for k in r.kernels]
    return "\n".join(lines)
