"""Every kernel test that runs emulated also runs on a GPU (issue 13): for each algorithm, ``pytest
--collect-only -m gpu`` finds at least as many cases as ``-m emulated``, the emulator's self-tests
(tests/emulator) aside. Checked without a GPU: the test tree is collected once in a subprocess (a few
seconds), and each case's markers say whether ``-m emulated`` / ``-m gpu`` selects it.

A case counts for every algorithm whose name its node id holds as a word (``ALGORITHMS``; case-insensitive,
not followed by a letter, ``igemm`` not followed by ``_tc``): in the file name (tests/test_cuda_pool.py,
tests/test_cuda_depthwise.py), the test name (``test_gemm1x1_...``) or a param id (``emulated-tiled``). A
case of a file in ``FILE_ALGORITHMS`` naming none counts for that file's kernels. A case naming no
algorithm at all (the autotuner's and the benchmark's plumbing on the emulator) counts for none.

Emulator-only by design (``EMULATED_ONLY``, left out of the counts): the AddressSanitizer runs of the kernels,
whose GPU counterpart is compute-sanitizer memcheck over the ``gpu`` tests (.ci/gpu), not a test case.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALGORITHMS = ("direct", "tiled", "igemm", "igemm_tc", "depthwise", "gemm1x1", "pool", "auto")
FILE_ALGORITHMS = {"tests/test_cuda_conv.py": ("direct", "tiled")}
_ASAN = "AddressSanitizer build of the kernels; on a GPU, compute-sanitizer memcheck (.ci/gpu) is its counterpart"
EMULATED_ONLY = {
    "tests/test_cuda_conv.py::test_no_out_of_bounds_access_under_asan": _ASAN,
    "tests/test_cuda_depthwise.py::test_no_out_of_bounds_access_under_asan": _ASAN,
    "tests/test_cuda_igemm.py::test_no_out_of_bounds_access_under_asan": _ASAN,
}
_WORD = {a: re.compile(rf"(?<![a-z0-9]){a}(?![a-z])" + ("(?!_tc)" if a == "igemm" else "")) for a in ALGORITHMS}


def algorithms_of(nodeid: str) -> set[str]:
    """The algorithms a collected case counts for (see the module docstring)."""
    found = {a for a in ALGORITHMS if _WORD[a].search(nodeid.lower())}
    return found or set(FILE_ALGORITHMS.get(nodeid.split("::")[0], ()))


def test_attribution_rule():
    assert algorithms_of("tests/test_cuda_igemm_tc.py::test_igemm_tc_tile_edges[gpu-tiny-small-float16]") == \
        {"igemm_tc"}
    assert algorithms_of("tests/test_cuda_igemm.py::test_gemm1x1_matches_reference[emulated-float16]") == \
        {"igemm", "gemm1x1"}
    assert algorithms_of("tests/test_conv.py::test_conv2d_matrix[emulated-auto-case3]") == {"auto"}
    assert algorithms_of("tests/test_hypothesis.py::test_max_pool2d_random[gpu]") == {"pool"}
    assert algorithms_of("tests/test_cuda_conv.py::test_kg_not_multiple_of_filter_block[gpu]") == \
        {"direct", "tiled"}
    assert algorithms_of("tests/test_cuda_conv.py::test_auto_reports_the_chosen_kernel[gpu]") == {"auto"}
    assert algorithms_of("tests/test_autotune.py::test_measures_once_and_keeps_the_fastest") == set()
    assert algorithms_of("tests/test_cuda_depthwise.py::test_tile_rule") == {"depthwise"}


# Run in a subprocess: collect the tree once and write each case's node id and marker names (what ``-m``
# selects on) to the file named by argv[1].
_COLLECT = r"""
import json, sys
import pytest

class Markers:
    def pytest_collection_finish(self, session):
        self.items = [(item.nodeid, sorted({m.name for m in item.iter_markers()})) for item in session.items]

plugin = Markers()
# (-m "": every case, the slow ones too, whatever pyproject's addopts leave out of a plain run)
rc = pytest.main(["--collect-only", "-qq", "-p", "no:cacheprovider", "-m", "", "tests", "--ignore=tests/emulator"],
                 plugins=[plugin])
with open(sys.argv[1], "w") as f:
    json.dump({"rc": int(rc), "items": getattr(plugin, "items", [])}, f)
"""


def _collected(tmp_path):
    """``{marker: [node id, ...]}`` for ``emulated`` and ``gpu``: what ``pytest --collect-only -m MARKER``
    selects (one collection of the tree, in a subprocess)."""
    out = tmp_path / "collected.json"
    env = {k: v for k, v in os.environ.items()
           if k not in ("GPUCONV_TEST_SAMPLE", "GPUCONV_TEST_RESULT_LOG", "PYTEST_ADDOPTS")}
    proc = subprocess.run([sys.executable, "-c", _COLLECT, str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    result = json.loads(out.read_text()) if out.exists() else {"rc": proc.returncode, "items": []}
    if result["rc"] != 0 or not result["items"]:
        pytest.fail(f"collecting the test tree failed (exit {result['rc']}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    return {marker: [nodeid for nodeid, markers in result["items"] if marker in markers]
            for marker in ("emulated", "gpu")}


def test_every_algorithm_has_as_many_gpu_cases_as_emulated(tmp_path):
    ids = _collected(tmp_path)
    emulated, gpu = ids["emulated"], set(ids["gpu"])
    missing = sorted(set(EMULATED_ONLY) - set(emulated))
    assert not missing, f"EMULATED_ONLY names cases that are not collected under -m emulated: {missing}"
    assert not set(EMULATED_ONLY) & gpu
    counted = [n for n in emulated if n not in EMULATED_ONLY]
    report, short = [], []
    for algo in ALGORITHMS:
        n_emulated = sum(algo in algorithms_of(n) for n in counted)
        n_gpu = sum(algo in algorithms_of(n) for n in gpu)
        report.append(f"{algo}: {n_emulated} emulated, {n_gpu} gpu")
        assert n_emulated > 0, f"no emulated case counts for {algo}: the attribution rule is broken"
        if n_gpu < n_emulated:
            # the emulated cases of this algorithm whose node id, runner token swapped, is not a gpu case
            untwinned = [n for n in counted if algo in algorithms_of(n)
                         and re.sub(r"(?<=[\[-])emulated(?=[\]-])", "gpu", n) not in gpu]
            short.append(f"{algo}: {n_gpu} gpu < {n_emulated} emulated; emulated cases without a gpu twin "
                         f"(first 20 of {len(untwinned)}): {untwinned[:20]}")
    assert not short, "\n".join(short + ["all: " + "; ".join(report)])
