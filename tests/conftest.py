"""pytest hooks for the whole test tree, each switched on by an environment variable (none is set in a
plain run, which these hooks then leave alone).

``GPUCONV_TEST_CUPY_POOL=0`` turns CuPy's memory pool off for the test session (``cupy.cuda.set_allocator
(None)``), so that every CuPy array is its own ``cudaMalloc``. compute-sanitizer's memcheck reports an
access outside an *allocation*; with the pool on, one allocation is a pool chunk holding many arrays (and
each array is rounded up to 512 bytes), so a kernel reading or writing past its array's end would go
unseen. ``.ci/gpu``'s sanitize phase sets it. Without CuPy the variable does nothing.

``GPUCONV_TEST_SAMPLE=N`` keeps N of the selected tests (after ``-m`` / ``-k``), evenly spaced over the
collection order, so that a slow tool (compute-sanitizer) or a rehearsal sees every file and kernel in a
few minutes; the rest are reported as deselected.

``GPUCONV_TEST_RESULT_LOG=PATH`` appends one line per test outcome to PATH as it happens (``passed``,
``failed``, ``error``, ``skipped``, then the node id), with the failure's short traceback indented below
it: ``.ci/gpu`` reads it to count and name results even when it had to kill a test process midway.
"""

from __future__ import annotations

import os

import pytest


def pytest_configure(config):
    if os.environ.get("GPUCONV_TEST_CUPY_POOL", "1").strip() == "0":
        try:
            import cupy
        except ImportError:
            return
        cupy.cuda.set_allocator(None)
        cupy.cuda.set_pinned_memory_allocator(None)


def sample_evenly(items: list, n: int) -> tuple[list, list]:
    """``(kept, dropped)``: ``n`` of ``items`` at evenly spaced positions (all of them if ``n`` >= len)."""
    if n <= 0 or n >= len(items):
        return list(items), []
    keep = {i * len(items) // n for i in range(n)}
    return [it for i, it in enumerate(items) if i in keep], [it for i, it in enumerate(items) if i not in keep]


@pytest.hookimpl(trylast=True)  # after -m / -k have deselected, so the sample is of what was asked for
def pytest_collection_modifyitems(config, items):
    n = os.environ.get("GPUCONV_TEST_SAMPLE", "").strip()
    if not n:
        return
    kept, dropped = sample_evenly(items, int(n))
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


RESULT_LOG_TRACEBACK_LINES = 30


def pytest_runtest_logreport(report):
    path = os.environ.get("GPUCONV_TEST_RESULT_LOG")
    if not path:
        return
    if report.when == "call" or report.failed or (report.skipped and report.when == "setup"):
        outcome = ("error" if report.when != "call" else "failed") if report.failed else report.outcome
        lines = [f"{outcome} {report.nodeid}"]
        if report.failed:
            text = report.longreprtext.splitlines()[-RESULT_LOG_TRACEBACK_LINES:]
            lines += ["    " + t for t in text]
        with open(path, "a") as f:  # one write per outcome, flushed at close: a killed run keeps them
            f.write("\n".join(lines) + "\n")
