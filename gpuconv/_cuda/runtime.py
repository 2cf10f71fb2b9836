"""Loading the kernel sources and compiling them, once per device, through ``cupy.RawModule``.

A *runtime* is the small interface the launch code in ``conv.py`` / ``pool.py`` needs:

* ``xp``: the array module (``cupy``; the tests' CPU emulator uses ``numpy``);
* ``function(source, name_expression)``: a kernel callable as ``k(grid, block, args, shared_mem=0)``.

Every template instantiation the launch code may request is listed in ``registry.INSTANTIATIONS`` and
compiled in one NVRTC call per source file; the compile-check test uses the same list and options.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

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


class CupyRuntime:
    """Kernels compiled by CuPy's NVRTC path, memoised per (device, source file)."""

    name = "cupy"

    def __init__(self):
        import cupy
        self.xp = cupy

    def function(self, source: str, name_expression: str):
        return _module(self.xp.cuda.Device().id, source).get_function(name_expression)

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
    from .registry import INSTANTIATIONS
    with cupy.cuda.Device(device_id):
        return cupy.RawModule(code=load_source(source), options=NVRTC_OPTIONS,
                              name_expressions=tuple(INSTANTIATIONS[source]))
