"""The GPU check: what CI (no GPU) cannot run, in one command that fits a short GPU window.

    python .ci/gpu_check.py OUTDIR [--phases all|env,precompile,tests,bench,sanitize] [--rehearse]
                                   [--deadline-s S] [--jobs J]

(``bash .ci/gpu all OUTDIR`` calls this.) Phases, in order, each a subprocess under its own timeout that
writes straight to its file in OUTDIR, none stopping the next:

1. ``env``: date, commit (``GPUCONV_BENCH_COMMIT`` where the tree has no ``.git``), ``nvidia-smi``,
   ``python -m gpuconv info``, CuPy / PyTorch / cuDNN / NumPy / pytest / hypothesis versions, nvcc and
   compute-sanitizer versions -> ``1-env.txt``;
2. ``precompile``: ``python -m gpuconv precompile``: every kernel source compiled for the device, in
   parallel, into CuPy's kernel cache (the test processes then compile nothing), with seconds per source
   and each kernel's registers / local memory / max threads -> ``2-precompile.txt``;
3. ``tests``: the ``gpu`` tests in groups (``TEST_GROUPS``, disjoint, together all of them), each group a
   pytest process of its own with its own timeout, ``--jobs`` at a time: a kernel fault (which poisons
   the CUDA context of its process) ends one group, not the run. Never stops at a failure; FAILED / ERROR
   lines and short tracebacks -> ``3-tests.log``; every outcome is also logged as it happens
   (``GPUCONV_TEST_RESULT_LOG``, tests/conftest.py), so a group killed at its timeout is still counted;
4. ``bench``: ``python -m gpuconv bench --device gpu`` with a time budget (``--budget-s``) from the time
   left; it rewrites its JSON after every layer -> ``4-bench.log``, ``<device>.json``, ``<device>.md``;
5. ``sanitize``: compute-sanitizer memcheck (CuPy's memory pool off) over an evenly spaced sample of the
   ``gpu`` tests, then racecheck over a sample of the shared-memory kernels' tests -> ``5-sanitize.log``.
   Where the tool refuses the device ("Device not supported") or is missing, the log says so and the
   phase is skipped;
6. ``summary.txt``, rewritten after every phase: per phase its status, exit code, duration, counts
   (passed / failed / error / skipped; bench rows) and the failures' names.

At most 8 files in OUTDIR. The whole run keeps within ``--deadline-s`` (default 530 s: the GPU machines
run one command for at most 10 minutes and start in 1-2): each phase's timeout is cut to what is left
after the later phases' minimum shares.

``--rehearse`` runs the same plumbing without a GPU: the test groups on the CPU emulator (``-m emulated``,
a sample of each group), the NVRTC compile check for sm_90 in place of the precompile (when the
compile-check extra is installed), the bench on the CPU (``--quick``, a small budget), the sanitizer
phase reported as skipped. CI runs it. Without ``--rehearse`` and without a usable GPU the script exits 3
within seconds, saying why. Exit status: 0 when every phase passed or was skipped, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = os.environ.get("PYTHON") or sys.executable
PHASES = ("env", "precompile", "tests", "bench", "sanitize")
MAX_FILES = 8
ENV_FILE, PRECOMPILE_FILE, TESTS_FILE, BENCH_FILE, SANITIZE_FILE, SUMMARY_FILE = (
    "1-env.txt", "2-precompile.txt", "3-tests.log", "4-bench.log", "5-sanitize.log", "summary.txt")

# (name, -k expression): the `gpu` tests in groups of a few minutes at most. Each group takes what its
# expression selects and no earlier group took, and the last takes the rest, so together they run every
# `gpu` test exactly once.
TEST_GROUPS = (
    ("pool", "pool"),
    ("direct-tiled", "direct or tiled"),
    ("igemm", "igemm and not igemm_tc"),
    ("gemm1x1-depthwise", "gemm1x1 or depthwise"),
    ("igemm_tc", "igemm_tc"),
    ("backward-filter-conv3d", "backward_filter or conv3d"),
    ("backward-data-conv1d", "backward_data or dgrad or conv1d"),
    ("tensor-core-nd-backward-nd", "tensor_core_nd or conv_nd_backward"),
    ("auto-and-rest", None),
)
# (phase, default timeout s, minimum share s kept for it when earlier phases run long)
BUDGET = {"env": (40, 10), "precompile": (150, 30), "tests": (200, 60), "bench": (200, 60),
          "sanitize": (150, 30)}
TEST_GROUP_TIMEOUT = 150
REHEARSAL_SAMPLE = 6  # tests per group in a rehearsal (the emulator is slow)
REHEARSAL_BENCH_BUDGET_S = 4  # about the roofline measurement and a few quick CPU layers
MEMCHECK_SAMPLE, RACECHECK_SAMPLE = 60, 24
SHARED_MEMORY_KERNELS = ("tiled or igemm or depthwise or gemm1x1 or backward_filter or conv3d or backward_data "
                         "or conv1d")
# What compute-sanitizer prints when it cannot instrument this device / driver.
SANITIZER_REFUSALS = ("device not supported", "not supported on this", "unable to find injection library",
                      "no supported devices")


@dataclass
class PhaseResult:
    name: str
    status: str = "not run"  # ok | failed | timeout | skipped | not run
    rc: int | None = None
    seconds: float = 0.0
    counts: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)
    note: str = ""


# --------------------------------------------------------------------------------------------
# running a command under a timeout, straight into a log file
# --------------------------------------------------------------------------------------------

def run_logged(cmd, log: Path, timeout: float, *, env=None, header: str | None = None) -> tuple[int, float, bool]:
    """Run ``cmd`` with stdout and stderr appended to ``log`` as they come (nothing buffered in between),
    in a process group of its own that is killed (TERM, then KILL after 5 s) at ``timeout``. Returns
    ``(exit code, seconds, timed out)``; a timed-out command's code is 124, as with timeout(1)."""
    t0 = time.monotonic()
    with open(log, "a") as f:
        if header:
            f.write(header + "\n")
            f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                                env={**os.environ, **(env or {})})
        try:
            rc = proc.wait(timeout=max(timeout, 1))
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            rc, timed_out = 124, True
        seconds = time.monotonic() - t0
        if timed_out:
            f.write(f"\n*** killed at its timeout of {timeout:.0f} s\n")
    return rc, seconds, timed_out


def _kill_group(proc) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Clock:
    """The run's deadline, shared out among the phases still to come."""

    def __init__(self, deadline_s: float, phases):
        self.end = time.monotonic() + deadline_s
        self.phases = list(phases)

    def timeout_for(self, phase: str) -> float:
        """The phase's own timeout, cut so that every later phase keeps its minimum share."""
        later = self.phases[self.phases.index(phase) + 1:]
        left = self.end - time.monotonic() - sum(BUDGET[p][1] for p in later)
        return max(5.0, min(BUDGET[phase][0], left))


# --------------------------------------------------------------------------------------------
# the phases
# --------------------------------------------------------------------------------------------

ENV_SCRIPT = r"""
import importlib, platform
print("python", platform.python_version())
for name in ("numpy", "cupy", "torch", "pytest", "hypothesis", "matplotlib"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"))
    except Exception as exc:
        print(name, "unavailable:", type(exc).__name__, exc)
try:
    import torch
    print("torch CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version(),
          "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
except Exception as exc:
    print("torch CUDA: unavailable:", type(exc).__name__, exc)
"""


def phase_env(out: Path, clock: Clock, rehearse: bool) -> PhaseResult:
    log = out / ENV_FILE
    commit = _git("rev-parse", "HEAD") or f"not a git checkout; GPUCONV_BENCH_COMMIT=" \
                                          f"{os.environ.get('GPUCONV_BENCH_COMMIT', 'unset')}"
    log.write_text(f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}\ncommit {commit}\n"
                   f"rehearsal: {rehearse}\n")
    cmds = [[PY, "-m", "gpuconv", "info"], [PY, "-c", ENV_SCRIPT]]
    for tool, args in (("nvidia-smi", ["--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                       "--format=csv"]), ("nvcc", ["--version"]),
                       ("compute-sanitizer", ["--version"])):
        cmds.append([tool, *args] if shutil.which(tool) else ["echo", f"{tool}: not found"])
    result, t0 = PhaseResult("env", status="ok", rc=0), time.monotonic()
    for cmd in cmds:
        shown = cmd[:2] + ["ENV_SCRIPT"] if cmd[1] == "-c" else cmd
        rc, _, timed_out = run_logged(cmd, log, min(20, clock.timeout_for("env")), header=f"$ {' '.join(shown)}")
        if rc and cmd[0] == PY:
            result.status, result.rc = ("timeout" if timed_out else "failed"), rc
    result.seconds = time.monotonic() - t0
    return result


REHEARSAL_COMPILE = r"""
# The precompile's plumbing without a GPU: NVRTC (the compile-check extra) for sm_90, the sources in
# parallel threads (ctypes releases the GIL), the same report lines as `python -m gpuconv precompile`.
import sys, time
from concurrent.futures import ThreadPoolExecutor
from gpuconv._cuda.ops import INSTANTIATIONS
from tests import nvrtc_check
ok, why = nvrtc_check.nvrtc_available()
if not ok:
    print("rehearsal precompile skipped:", why)
    sys.exit(0)
def build(source):
    t0 = time.perf_counter()
    r = nvrtc_check.compile_registry_source(source, "sm_90")
    return source, time.perf_counter() - t0, r
t0 = time.perf_counter()
with ThreadPoolExecutor(len(INSTANTIATIONS)) as pool:
    for source, secs, r in pool.map(build, sorted(INSTANTIATIONS)):
        print(f"{source}: {secs:.1f} s, {len(r.kernels)} kernels (NVRTC, sm_90)")
        for k in r.kernels:
            print(f"  {k.name_expression}: {k.registers} registers, {k.spill_stores} B spill stores")
print(f"{len(INSTANTIATIONS)} sources in {time.perf_counter() - t0:.1f} s")
"""


def phase_precompile(out: Path, clock: Clock, rehearse: bool) -> PhaseResult:
    cmd = [PY, "-c", REHEARSAL_COMPILE] if rehearse else [PY, "-m", "gpuconv", "precompile"]
    rc, secs, timed_out = run_logged(cmd, out / PRECOMPILE_FILE, clock.timeout_for("precompile"))
    text = (out / PRECOMPILE_FILE).read_text()
    status = "timeout" if timed_out else "failed" if rc else "skipped" if "precompile skipped" in text else "ok"
    return PhaseResult("precompile", status, rc, secs, failures=re.findall(r"^(\S+): .*FAILED", text, re.M))


def group_expressions() -> list[tuple[str, str]]:
    """``(name, -k expression)`` per test group, each excluding what the groups before it take."""
    out, taken = [], []
    for name, expr in TEST_GROUPS:
        parts = ([f"({expr})"] if expr else []) + [f"not ({t})" for t in taken]
        out.append((name, " and ".join(parts) if parts else ""))
        if expr:
            taken.append(expr)
    return out


def read_results(path: Path) -> tuple[dict, list]:
    """Counts per outcome and the failed / errored node ids from a GPUCONV_TEST_RESULT_LOG file."""
    counts, failures = {}, []
    if path.exists():
        for line in path.read_text().splitlines():
            m = re.match(r"^(passed|failed|error|skipped) (.+)$", line)
            if m:
                counts[m.group(1)] = counts.get(m.group(1), 0) + 1
                if m.group(1) in ("failed", "error"):
                    failures.append(f"{m.group(1).upper()} {m.group(2)}")
    return counts, failures


def _pytest(marker: str, expr: str, result_log: Path, sample: int | None = None, extra=()) -> tuple[list, dict]:
    cmd = [PY, "-m", "pytest", "-m", marker, "-q", "-rfE", "--tb=short", "-p", "no:cacheprovider", *extra]
    if expr:
        cmd += ["-k", expr]
    env = {"GPUCONV_TEST_RESULT_LOG": str(result_log), "PYTHONPATH": f"{ROOT}{os.pathsep}"
           + os.environ.get("PYTHONPATH", ""), "PYTHONUNBUFFERED": "1"}
    if sample:
        env["GPUCONV_TEST_SAMPLE"] = str(sample)
    return cmd, env


def phase_tests(out: Path, clock: Clock, rehearse: bool, jobs: int,
                group_timeout: float = TEST_GROUP_TIMEOUT) -> PhaseResult:
    """The groups, ``jobs`` at a time; each group's output goes to a scratch file and is appended to the
    log in one piece when the group ends (groups run concurrently), its outcomes counted as they come."""
    t0, deadline = time.monotonic(), time.monotonic() + clock.timeout_for("tests")
    log = out / TESTS_FILE
    log.write_text(f"gpu tests in groups ({'rehearsal: -m emulated, a sample of each' if rehearse else '-m gpu'}),"
                   f" {jobs} at a time\n")
    result = PhaseResult("tests", status="ok", rc=0)
    scratch = Path(tempfile.mkdtemp(prefix="gpuconv-gpu-tests-"))
    pending = list(group_expressions())
    running = []  # (name, expr, proc, started, scratch log, result log, own deadline)
    statuses = []
    while pending or running:
        while pending and len(running) < jobs:
            name, expr = pending.pop(0)
            if time.monotonic() > deadline - 5:  # the phase's time is up: say so rather than start and kill
                statuses.append("timeout")
                with open(log, "a") as f:
                    f.write(f"\n=== group {name}: -k {expr!r}: not started, the phase's time was up\n")
                continue
            glog, rlog = scratch / f"{name}.log", scratch / f"{name}.results"
            cmd, env = _pytest("emulated" if rehearse else "gpu", expr, rlog,
                               sample=REHEARSAL_SAMPLE if rehearse else None)
            f = open(glog, "w")
            f.write(f"$ {' '.join(cmd)}\n")
            f.flush()
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                                    env={**os.environ, **env})
            f.close()
            own = min(deadline, time.monotonic() + group_timeout)
            running.append((name, expr, proc, time.monotonic(), glog, rlog, own))
        time.sleep(0.2)
        for entry in list(running):
            name, expr, proc, started, glog, rlog, own = entry
            timed_out = proc.poll() is None and time.monotonic() > own
            if timed_out:
                _kill_group(proc)
            if proc.poll() is None:
                continue
            running.remove(entry)
            rc = 124 if timed_out else proc.returncode
            counts, failures = read_results(rlog)
            # pytest exit 5: nothing selected (a group whose tests all belong to earlier groups)
            status = "timeout" if timed_out else "ok" if rc in (0, 5) else "failed"
            statuses.append(status)
            for k, v in counts.items():
                result.counts[k] = result.counts.get(k, 0) + v
            result.failures += failures
            with open(log, "a") as f:
                f.write(f"\n=== group {name}: -k {expr!r}: {status}, exit {rc}, {time.monotonic() - started:.0f} s, "
                        + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + "\n")
                f.write(glog.read_text())
                if timed_out:  # pytest printed no summary: the failures' tracebacks come from the result log
                    f.write("\n*** killed at its timeout; outcomes logged before that:\n")
                    f.write(rlog.read_text() if rlog.exists() else "(none)\n")
    shutil.rmtree(scratch, ignore_errors=True)
    result.seconds = time.monotonic() - t0
    if "timeout" in statuses:
        result.status, result.rc = "timeout", 124
    elif "failed" in statuses:
        result.status, result.rc = "failed", 1
    return result


def phase_bench(out: Path, clock: Clock, rehearse: bool) -> PhaseResult:
    timeout = clock.timeout_for("bench")
    # On the GPU most of the phase's time (the rest covers start-up and the last layer's overrun); in a
    # rehearsal a budget that stops the quick suite early, so that the budget path itself is exercised.
    budget = max(5, int(timeout * 0.7)) if not rehearse else REHEARSAL_BENCH_BUDGET_S
    device = ["--device", "cpu", "--quick"] if rehearse else ["--device", "gpu"]
    before = set(out.glob("*.json"))
    cmd = [PY, "-m", "gpuconv", "bench", *device, "--no-plot", "--budget-s", str(budget), "--out", str(out)]
    rc, secs, timed_out = run_logged(cmd, out / BENCH_FILE, timeout, header=f"$ {' '.join(cmd[2:])}")
    result = PhaseResult("bench", "timeout" if timed_out else "failed" if rc else "ok", rc, secs)
    written = sorted(set(out.glob("*.json")) - before) or sorted(out.glob("*.json"))
    if not written:
        result.note = "no results file"
        if result.status == "ok":
            result.status = "failed"
        return result
    try:
        results = json.loads(written[-1].read_text())
    except ValueError as exc:
        result.status, result.note = "failed", f"{written[-1].name} is not valid JSON: {exc}"
        return result
    for row in results["rows"]:
        result.counts[row["status"]] = result.counts.get(row["status"], 0) + 1
        if row["status"] in ("wrong", "error"):
            result.failures.append(f"{row['layer']} ({row['dtype']}) {row['algo']}: {row['status']}: "
                                   f"{(row.get('message') or '')[:200]}")
    result.note = (f"{written[-1].name}: state {results.get('state')}, {results.get('cases_done')} of "
                   f"{results.get('cases_total')} cases")
    return result


def phase_sanitize(out: Path, clock: Clock, rehearse: bool) -> PhaseResult:
    log = out / SANITIZE_FILE
    t0 = time.monotonic()
    if rehearse:
        log.write_text("rehearsal: no GPU, compute-sanitizer not run\n")
        return PhaseResult("sanitize", "skipped", None, 0.0, note="rehearsal")
    tool = shutil.which("compute-sanitizer")
    if tool is None:
        log.write_text("compute-sanitizer not found: phase skipped\n")
        return PhaseResult("sanitize", "skipped", None, 0.0, note="compute-sanitizer not found")
    timeout = clock.timeout_for("sanitize")
    log.write_text("")
    # A one-kernel probe first: some machines' drivers refuse the tool for the device.
    probe = [tool, "--tool", "memcheck", PY, "-c", "import cupy; print(int(cupy.arange(8).sum()))"]
    rc, _, _ = run_logged(probe, log, min(60, timeout), header="$ compute-sanitizer probe")
    text = log.read_text().lower()
    refused = next((r for r in SANITIZER_REFUSALS if r in text), None)
    if refused or rc:
        why = f"it says {refused!r}" if refused else f"the probe exited {rc}"
        with open(log, "a") as f:
            f.write(f"\ncompute-sanitizer cannot run here ({why}; output above): phase skipped\n")
        return PhaseResult("sanitize", "skipped", rc, time.monotonic() - t0, note=f"tool unusable: {why}")
    result = PhaseResult("sanitize", "ok", 0)
    scratch = Path(tempfile.mkdtemp(prefix="gpuconv-sanitize-"))
    runs = (("memcheck", "", MEMCHECK_SAMPLE, {"GPUCONV_TEST_CUPY_POOL": "0"}),
            ("racecheck", SHARED_MEMORY_KERNELS, RACECHECK_SAMPLE, {}))
    for i, (name, expr, sample, extra_env) in enumerate(runs):
        left = timeout - (time.monotonic() - t0)
        share = left / (len(runs) - i)
        rlog = scratch / f"{name}.results"
        cmd, env = _pytest("gpu", expr, rlog, sample=sample)
        cmd = [tool, "--tool", name, "--error-exitcode", "97", "--print-limit", "20", *cmd]
        rc, _, timed_out = run_logged(cmd, log, share, env={**env, **extra_env},
                                      header=f"\n=== {name}: a sample of {sample} `gpu` tests"
                                             + (f" (-k {expr!r})" if expr else "") + f", timeout {share:.0f} s")
        counts, failures = read_results(rlog)
        for k, v in counts.items():
            result.counts[f"{name} {k}"] = v
        result.failures += [f"{name}: {f}" for f in failures]
        if rc == 97:
            result.failures.append(f"{name}: compute-sanitizer reported errors (exit 97; see the log)")
        if timed_out:
            result.status, result.rc = "timeout", 124
        elif rc not in (0, 5) and result.status == "ok":
            result.status, result.rc = "failed", rc
    shutil.rmtree(scratch, ignore_errors=True)
    result.seconds = time.monotonic() - t0
    return result


# --------------------------------------------------------------------------------------------
# the summary and the driver
# --------------------------------------------------------------------------------------------

def write_summary(out: Path, results: list[PhaseResult], started: float, rehearse: bool) -> None:
    lines = [f"gpuconv GPU check{' (REHEARSAL: no GPU)' if rehearse else ''}: "
             f"{time.monotonic() - started:.0f} s so far, commit "
             f"{_git('rev-parse', '--short', 'HEAD') or os.environ.get('GPUCONV_BENCH_COMMIT', 'unknown')}", ""]
    for r in results:
        counts = ", ".join(f"{v} {k}" for k, v in sorted(r.counts.items()))
        lines.append(f"{r.name:<11} {r.status:<8} exit {r.rc if r.rc is not None else '-':<4} {r.seconds:6.0f} s"
                     + (f"  {counts}" if counts else "") + (f"  ({r.note})" if r.note else ""))
    failures = [(r.name, f) for r in results for f in r.failures]
    if failures:
        lines += ["", f"failures ({len(failures)}):"]
        lines += [f"  [{name}] {f}" for name, f in failures[:200]]
        if len(failures) > 200:
            lines.append(f"  ... and {len(failures) - 200} more (see the logs)")
    lines += ["", "files: " + ", ".join(sorted(p.name for p in out.iterdir()))]
    tmp = out / (SUMMARY_FILE + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out / SUMMARY_FILE)


def _git(*args) -> str | None:
    try:
        p = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() if p.returncode == 0 and p.stdout.strip() else None


def gpu_unusable_reason() -> str | None:
    """Why CuPy cannot use a GPU here (None when it can), asked of gpuconv in a subprocess."""
    code = ("import sys, gpuconv; c = gpuconv.backend_info()['cupy']; "
            "print('' if c['available'] else c['reason'])")
    p = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}" + os.environ.get("PYTHONPATH", "")})
    if p.returncode:
        return f"gpuconv could not be imported: {p.stderr.strip()[-500:]}"
    return p.stdout.strip() or None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bash .ci/gpu all", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--phases", default="all", help="comma-separated subset of " + ",".join(PHASES))
    ap.add_argument("--rehearse", action="store_true", help="no GPU: the plumbing on the emulator and the CPU")
    ap.add_argument("--deadline-s", type=float, default=530.0, help="the whole run's wall-time limit")
    ap.add_argument("--jobs", type=int, default=None, help="test groups at a time (default: cores / 4, 1 to 4)")
    ap.add_argument("--group-timeout-s", type=float, default=TEST_GROUP_TIMEOUT,
                    help="each test group's own timeout")
    args = ap.parse_args(argv)
    phases = PHASES if args.phases == "all" else tuple(p.strip() for p in args.phases.split(","))
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        ap.error(f"unknown phase(s) {', '.join(unknown)}; expected {', '.join(PHASES)} or all")
    started = time.monotonic()
    if not args.rehearse:
        why = gpu_unusable_reason()
        if why:
            print(f"gpu check: no usable GPU ({why}); nothing run. Without a GPU use --rehearse.", file=sys.stderr)
            return 3
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = args.jobs or max(1, min(4, (os.cpu_count() or 1) // 4))
    clock = Clock(args.deadline_s, phases)
    runners = {"env": phase_env, "precompile": phase_precompile, "bench": phase_bench,
               "sanitize": phase_sanitize,
               "tests": lambda o, c, r: phase_tests(o, c, r, jobs, args.group_timeout_s)}
    results = []
    for name in phases:
        print(f"gpu check: {name} ...", file=sys.stderr, flush=True)
        try:
            r = runners[name](out, clock, args.rehearse)
        except Exception as exc:  # the phase's own plumbing broke: say so, go on with the next
            r = PhaseResult(name, "failed", None, note=f"{type(exc).__name__}: {exc}")
        results.append(r)
        print(f"gpu check: {name}: {r.status} ({r.seconds:.0f} s)", file=sys.stderr, flush=True)
        write_summary(out, results, started, args.rehearse)
    files = list(out.iterdir())
    if len(files) > MAX_FILES:
        print(f"gpu check: {len(files)} files in {out}, more than {MAX_FILES}", file=sys.stderr)
        return 1
    print((out / SUMMARY_FILE).read_text())
    return 0 if all(r.status in ("ok", "skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
