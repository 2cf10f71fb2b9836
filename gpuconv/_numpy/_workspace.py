"""Shared machinery of the NumPy path: the memory budget, a reusable workspace, the thread pool.

* :func:`workspace_limit`: bytes of temporaries one call may use (``GPUCONV_NUMPY_WORKSPACE_MB``, default
  256 MiB). A call's memory beyond its inputs is at most its output + this limit + a few hundred KiB of
  small arrays: every strategy chunks its work (by samples, then output rows and columns, groups,
  filters, input channels and filter taps) to stay under it, counting the buffer kept from earlier calls.
* :func:`workspace`: typed scratch arrays carved out of one buffer that is kept between calls (one per
  calling thread, so concurrent callers never share it). A fresh multi-megabyte ``np.empty`` comes from
  ``mmap`` and is faulted in and zeroed by the kernel on first touch, every call; the kept buffer is
  not. Nothing returned to a caller is a view of it. At most ``workspace_limit()`` bytes are kept per
  thread (a call needing more gets a one-off buffer); :func:`trim_workspace` drops the kept buffer when
  a call needs its room for other temporaries, :func:`release_workspace` frees it. The thread pool's
  workers keep nothing: a task's scratch is its slot of the caller's workspace (``parallel_map(...,
  slots=True)``).
* :func:`strided_view`: ``as_strided`` for the gathers, cheaper on contiguous arrays.
* :func:`parallel_map`: a thread pool for loops whose bodies are large NumPy copies or ufunc calls
  (NumPy releases the GIL in both).
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.lib.stride_tricks import as_strided

_ALIGN = 64  # bytes; every carved array starts on a cache line
_local = threading.local()
_pool = None
_pool_lock = threading.Lock()
_CPUS = os.cpu_count() or 1
DEFAULT_WORKSPACE_MB = 256


def workspace_limit() -> int:
    """Bytes of temporary memory the NumPy path may use per call: ``GPUCONV_NUMPY_WORKSPACE_MB`` (MiB, a
    decimal number such as ``64`` or ``0.5``), default 256 MiB."""
    return int(float(os.environ.get("GPUCONV_NUMPY_WORKSPACE_MB", DEFAULT_WORKSPACE_MB)) * 2**20)


def num_threads() -> int:
    """Threads for the NumPy path's own loops (BLAS has its own): ``GPUCONV_NUMPY_THREADS`` or all cores."""
    return max(1, int(os.environ.get("GPUCONV_NUMPY_THREADS", _CPUS)))


def pool_threads(n_items: int, threads=None) -> int:
    """How many threads :func:`parallel_map` would use for ``n_items`` items (1 inside a pool worker)."""
    if getattr(_local, "in_pool", False):  # no nesting: pool threads run serially
        return 1
    return max(1, min(num_threads() if threads is None else threads, n_items))


def parallel_map(fn, items, threads=None, slots: bool = False) -> None:
    """Run ``fn`` over ``items`` on up to ``threads`` (default :func:`num_threads`) threads; NumPy
    releases the GIL in copies and ufunc loops. Items are dealt out in contiguous runs, one run per
    thread, so a thread touches neighbouring data and the pool is entered once per thread, not once
    per item. The workers use the caller's ``np.errstate``. With ``slots``, ``fn(item, slot)`` is
    called with the index (below ``pool_threads(len(items), threads)``) of the thread running it, so
    that each thread can use its own part of scratch arrays the caller allocated."""
    global _pool
    items = list(items)
    threads = pool_threads(len(items), threads)
    if threads <= 1:
        for item in items:
            fn(item, 0) if slots else fn(item)
        return
    with _pool_lock:
        if _pool is None or _pool._max_workers < threads:
            _pool = ThreadPoolExecutor(max_workers=max(threads, num_threads()), thread_name_prefix="gpuconv")
        pool = _pool
    bounds = [len(items) * t // threads for t in range(threads + 1)]
    errors = np.geterr()  # the caller's floating-point error handling (np.errstate is per thread)

    def run(t):
        _local.in_pool = True
        try:
            with np.errstate(**errors):
                for item in items[bounds[t]:bounds[t + 1]]:
                    fn(item, t) if slots else fn(item)
        finally:
            _local.in_pool = False

    for _ in pool.map(run, range(threads)):  # re-raises the first exception
        pass


def _nbytes(shape, dtype) -> int:
    return math.prod(shape) * np.dtype(dtype).itemsize


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


def workspace_bytes(*specs) -> int:
    """Bytes :func:`workspace` needs for these ``(shape, dtype)`` arrays, alignment included."""
    return sum(_aligned(_nbytes(shape, dtype)) for shape, dtype in specs)


def workspace(*specs) -> list[np.ndarray]:
    """Uninitialised C-contiguous arrays of the given ``(shape, dtype)``, carved out of the calling
    thread's kept buffer (grown when too small: the old buffer is dropped first, and freed unless the
    caller still holds arrays carved from it). Valid until the thread's next ``workspace`` call.
    (Called once per chunk, so it is kept cheap: the buffer's aligned start is computed when the buffer
    is made.)"""
    sizes = [_nbytes(shape, dtype) for shape, dtype in specs]
    need = sum(map(_aligned, sizes))
    buf = getattr(_local, "buf", None)
    if buf is None or buf.nbytes < need:
        buf = _local.buf = None  # free the old buffer before allocating the new one
        raw = np.empty(need + _ALIGN, dtype=np.uint8)
        start = -raw.__array_interface__["data"][0] % _ALIGN
        buf = raw[start:start + need]  # exactly `need` usable bytes, so the next equal call reuses it
        if need <= workspace_limit():
            _local.buf = buf
    out, start = [], 0
    for (shape, dtype), n in zip(specs, sizes):
        out.append(buf[start:start + n].view(dtype).reshape(shape))
        start += _aligned(n)
    return out


def strided_view(a: np.ndarray, shape, strides) -> np.ndarray:
    """A read-only view of ``a``'s memory with ``shape`` and byte ``strides`` counted from ``a``'s first
    element, as ``numpy.lib.stride_tricks.as_strided`` makes it; the view must lie inside ``a``'s memory.
    For a C-contiguous ``a`` it is made directly on ``a``'s buffer (2 us here instead of as_strided's 10,
    per gather of every chunk), which also checks that it stays inside; otherwise by as_strided."""
    if a.flags.c_contiguous:
        view = np.ndarray(shape, a.dtype, buffer=a, strides=strides)
        view.flags.writeable = False
        return view
    return as_strided(a, shape, strides, writeable=False)


def release_workspace() -> None:
    """Free the calling thread's kept workspace buffer."""
    _local.buf = None


def kept_bytes() -> int:
    """Bytes of the calling thread's kept workspace buffer (0 if none)."""
    buf = getattr(_local, "buf", None)
    return 0 if buf is None else buf.base.nbytes


def trim_workspace(max_bytes: int) -> None:
    """Free the calling thread's kept buffer if it is larger than ``max_bytes``: a call about to hold
    other temporaries next to its workspace makes room for them, so that kept and fresh memory together
    stay within ``workspace_limit()``."""
    if kept_bytes() > max_bytes:
        _local.buf = None
