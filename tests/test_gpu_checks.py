"""The tooling for the checks that need a GPU (``.ci/gpu`` and ``.ci/gpu_check.py``, and the test-session
switches of ``tests/conftest.py``), run where there is none: the refusal without a GPU, the test groups,
the timeouts, the sanitizer's refusal, the summary and the file count (the rehearsal runs the rest in CI)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from tests import conftest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "gpu"
USAGE = "usage: bash .ci/gpu all|env|precompile|tests|bench|sanitize OUTDIR"

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not found")


def _load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / ".ci" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = _load_gpu_check()


def _run(*args, env=None, timeout=300):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})})


@needs_bash
def test_script_parses():
    out = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@needs_bash
@pytest.mark.parametrize("args", [(), ("tests",), ("memcheck", "/tmp/x"), ("all", "--rehearse")])
def test_script_usage(args):
    out = _run(*args)
    assert out.returncode == 2 and USAGE in out.stderr


def _no_gpu_env(tmp_path):
    """A Python whose gpuconv reports CuPy unusable."""
    fake = tmp_path / "sitecustomize.py"
    fake.write_text("import gpuconv\n"
                    "gpuconv.backend_info = lambda: {'cupy': {'available': False, 'reason': 'no device here'}}\n")
    return {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}


@needs_bash
@pytest.mark.parametrize("phase", ["all", "tests", "bench", "sanitize"])
def test_script_refuses_without_a_gpu(phase, tmp_path):
    """Without a usable GPU (and without --rehearse) nothing runs: exit 3 within seconds, saying why,
    instead of letting the `gpu` tests all skip and "pass"."""
    out = _run(phase, str(tmp_path / "out"), env=_no_gpu_env(tmp_path), timeout=120)
    assert out.returncode == 3, (out.stdout, out.stderr)
    assert "no usable GPU (no device here)" in out.stderr and "--rehearse" in out.stderr
    assert not (tmp_path / "out").exists()


def test_test_groups_split_the_gpu_tests_exactly_once(tmp_path):
    """Every `gpu` test falls in exactly one group (the -k expressions evaluated as pytest does, on the
    collected items), and no group but the last is empty."""
    script = tmp_path / "groups.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        import pytest
        from _pytest.mark import KeywordMatcher
        from _pytest.mark.expression import Expression
        sys.path.insert(0, {str(ROOT / ".ci")!r})
        import gpu_check
        groups = gpu_check.group_expressions()
        class Collect:
            items = []
            def pytest_collection_finish(self, session):
                self.items = list(session.items)
        c = Collect()
        rc = pytest.main(["--collect-only", "-q", "-m", "gpu", "-p", "no:cacheprovider", {str(ROOT / "tests")!r}],
                         plugins=[c])
        table = {{}}
        for item in c.items:
            m = KeywordMatcher.from_item(item)
            table[item.nodeid] = [name for name, expr in groups
                                  if not expr or Expression.compile(expr).evaluate(m)]
        print("RESULT" + json.dumps(table))
    """))
    out = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, out.stdout[-3000:] + out.stderr[-3000:]
    import json
    table = json.loads(line[0][len("RESULT"):])
    assert len(table) > 100
    wrong = {nodeid: groups for nodeid, groups in table.items() if len(groups) != 1}
    assert not wrong, list(wrong.items())[:5]
    used = {groups[0] for groups in table.values()}
    assert used >= {name for name, _ in gpu_check.TEST_GROUPS[:-1]}


def test_group_timeout_kills_one_group_and_the_run_goes_on(tmp_path):
    """Groups killed at a 1 s timeout: each is reported as a timeout in the log and the summary, the
    phase's status is 'timeout', and the next phase still runs (here: the sanitizer, skipped)."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / ".ci" / "gpu_check.py"), str(out), "--rehearse",
                           "--phases", "tests,sanitize", "--group-timeout-s", "1", "--jobs", "3"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr
    log = (out / gpu_check.TESTS_FILE).read_text()
    assert log.count("*** killed at its timeout") == len(gpu_check.TEST_GROUPS)
    summary = (out / gpu_check.SUMMARY_FILE).read_text()
    assert "REHEARSAL" in summary
    assert [ln.split()[:3] for ln in summary.splitlines() if ln.startswith(("tests", "sanitize"))] == \
        [["tests", "timeout", "exit"], ["sanitize", "skipped", "exit"]]


def test_rehearsal_of_the_quick_phases(tmp_path):
    """env, bench and sanitize rehearsed: the bench stops at its budget with valid JSON, the summary counts
    the rows, at most 8 files."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / ".ci" / "gpu_check.py"), str(out), "--rehearse",
                           "--phases", "env,bench,sanitize"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = sorted(p.name for p in out.iterdir())
    assert len(names) <= gpu_check.MAX_FILES
    assert {gpu_check.ENV_FILE, gpu_check.BENCH_FILE, gpu_check.SANITIZE_FILE, gpu_check.SUMMARY_FILE} <= set(names)
    assert [n for n in names if n.endswith(".json")] and [n for n in names if n.endswith(".md")]
    summary = (out / gpu_check.SUMMARY_FILE).read_text()
    bench = [ln for ln in summary.splitlines() if ln.startswith("bench")][0]
    # rows "ok" when PyTorch checked them, "unchecked" without PyTorch
    assert bench.startswith("bench       ok") and re.search(r"\d+ (ok|unchecked)", bench) and "state " in bench
    assert "commit" in (out / gpu_check.ENV_FILE).read_text()


def test_sanitizer_refusing_the_device_skips_the_phase(tmp_path, monkeypatch):
    """Some machines' drivers refuse compute-sanitizer ("Device not supported"): the log says so and the
    phase is skipped, not failed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "compute-sanitizer"
    tool.write_text("#!/bin/sh\necho '========= Error: Device not supported'\nexit 1\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "out"
    out.mkdir()
    r = gpu_check.phase_sanitize(out, gpu_check.Clock(100, ["sanitize"]), rehearse=False)
    assert r.status == "skipped" and "device not supported" in r.note
    assert "phase skipped" in (out / gpu_check.SANITIZE_FILE).read_text()


def test_clock_keeps_later_phases_their_share():
    clock = gpu_check.Clock(200, gpu_check.PHASES)
    later = sum(gpu_check.BUDGET[p][1] for p in gpu_check.PHASES[2:])
    assert clock.timeout_for("precompile") == pytest.approx(min(gpu_check.BUDGET["precompile"][0], 200 - later),
                                                           abs=1)
    assert clock.timeout_for("sanitize") <= gpu_check.BUDGET["sanitize"][0]


# --------------------------------------------------------------------------------------------
# tests/conftest.py switches
# --------------------------------------------------------------------------------------------

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


def test_sample_evenly():
    items = list(range(10))
    assert conftest.sample_evenly(items, 3) == ([0, 3, 6], [1, 2, 4, 5, 7, 8, 9])
    assert conftest.sample_evenly(items, 10) == (items, [])
    assert conftest.sample_evenly(items, 0) == (items, [])


def test_sample_and_result_log_in_a_pytest_run(tmp_path):
    """GPUCONV_TEST_SAMPLE keeps evenly spaced tests of those selected; GPUCONV_TEST_RESULT_LOG records each
    outcome as it happens, a failure with its traceback."""
    (tmp_path / "test_some.py").write_text(textwrap.dedent("""
        import pytest
        @pytest.mark.parametrize("i", range(9))
        def test_n(i):
            if i == 3:
                pytest.skip("three")
            assert i != 6, "six is wrong"
        def test_other():
            pass
    """))
    results = tmp_path / "results.log"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
                           "-c", os.devnull, "--rootdir", str(tmp_path), "-k", "test_n", str(tmp_path / "test_some.py")],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "GPUCONV_TEST_SAMPLE": "3",
                               "GPUCONV_TEST_RESULT_LOG": str(results)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "7 deselected" in proc.stdout  # of test_n's 9 (test_other is not selected): i = 0, 3, 6 run
    counts, failures = gpu_check.read_results(results)
    assert counts == {"passed": 1, "failed": 1, "skipped": 1}
    assert len(failures) == 1 and failures[0].startswith("FAILED ") and failures[0].endswith("test_n[6]")
    assert "six is wrong" in results.read_text()
