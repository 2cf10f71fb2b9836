"""The tooling for the checks that need a GPU (``.ci/gpu`` and the CuPy memory-pool switch of
``tests/conftest.py``), run where there is none: what it does before any GPU work."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from tests import conftest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "gpu"

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not found")


def _run(*args, env=None):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@needs_bash
def test_script_parses():
    out = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@needs_bash
@pytest.mark.parametrize("args", [(), ("tests",), ("sanitize", "/tmp/x"), ("bench-all", "/tmp/x")])
def test_script_usage(args):
    out = _run(*args)
    assert out.returncode == 2 and "usage: bash .ci/gpu tests|memcheck|racecheck|bench OUTDIR" in out.stderr


@needs_bash
@pytest.mark.parametrize("stage", ["tests", "memcheck", "racecheck", "bench"])
def test_script_refuses_without_a_gpu(stage, tmp_path):
    """Without a usable GPU every stage stops (exit 3, saying why) instead of letting the `gpu` tests all
    skip and pass. Simulated with a Python whose gpuconv reports CuPy unusable."""
    fake = tmp_path / "sitecustomize.py"
    fake.write_text("import gpuconv\n"
                    "gpuconv.backend_info = lambda: {'cupy': {'available': False, 'reason': 'no device here'}}\n")
    out = _run(stage, str(tmp_path / "out"), env={"PYTHON": sys.executable,
                                                   "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert out.returncode == 3, (out.stdout, out.stderr)
    assert "no device here" in out.stderr and f"{stage}: no usable GPU" in out.stderr
    assert list((tmp_path / "out").iterdir()) == []  # nothing ran


@pytest.mark.parametrize("value, disabled", [("0", True), ("1", False), (None, False)])
def test_conftest_cupy_pool_switch(monkeypatch, value, disabled):
    calls = []
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(set_allocator=lambda a: calls.append(("device", a)),
                                      set_pinned_memory_allocator=lambda a: calls.append(("pinned", a)))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    if value is None:
        monkeypatch.delenv("GPUCONV_TEST_CUPY_POOL", raising=False)
    else:
        monkeypatch.setenv("GPUCONV_TEST_CUPY_POOL", value)
    conftest.pytest_configure(None)
    assert calls == ([("device", None), ("pinned", None)] if disabled else [])
