"""The test tree with its optional dependencies missing: the oracles (PyTorch, SciPy), hypothesis,
matplotlib, Dask / distributed and scikit-learn may each be absent, and then their tests skip; collection never breaks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ("torch", "hypothesis", "scipy", "matplotlib", "cupy", "dask", "distributed", "sklearn")


def test_collection_without_optional_dependencies(tmp_path):
    """A ``sitecustomize`` makes ``import X`` fail for every optional X (``sys.modules[X] = None``, the way
    Python marks a module as unimportable); every test module must still collect."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in OPTIONAL))
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "-m", "", str(ROOT / "tests")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          # (hypothesis's own pytest plugin, loaded by entry point, would import it)
                          env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
                               "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert "collected" in summary and "error" not in summary, proc.stdout[-2000:]
