"""pytest hooks for the whole test tree.

``GPUCONV_TEST_CUPY_POOL=0`` turns CuPy's memory pool off for the test session (``cupy.cuda.set_allocator
(None)``), so that every CuPy array is its own ``cudaMalloc``. compute-sanitizer's memcheck reports an
access outside an *allocation*; with the pool on, one allocation is a pool chunk holding many arrays (and
each array is rounded up to 512 bytes), so a kernel reading or writing past its array's end would go
unseen. ``.ci/gpu sanitize`` sets it. Without CuPy the variable does nothing.
"""

from __future__ import annotations

import os


def pytest_configure(config):
    if os.environ.get("GPUCONV_TEST_CUPY_POOL", "1").strip() == "0":
        try:
            import cupy
        except ImportError:
            return
        cupy.cuda.set_allocator(None)
        cupy.cuda.set_pinned_memory_allocator(None)
