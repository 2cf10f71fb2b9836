"""Every kernel instantiation compiles with NVRTC for each supported architecture, without spills.

No GPU is needed: ``tests/nvrtc_check.py`` drives libnvrtc through ctypes (``pip install
".[compile-check]"``, i.e. ``nvidia-cuda-nvrtc-cu12``). For each source file in
``gpuconv._cuda.ops.INSTANTIATIONS`` and each architecture in ``nvrtc_check.ARCHS`` the test compiles
``load_source(source)`` -- the text the runtime hands to ``cupy.RawModule`` -- with every name expression of
that file in one program (as the runtime does), with the runtime's ``NVRTC_OPTIONS`` plus what CuPy and
the checker add (see ``nvrtc_check``'s docstring), and asserts: NVRTC succeeds (the full log otherwise),
every name expression is lowered, and no kernel or non-inlined callee spills registers.

Without NVRTC the module is skipped, unless ``GPUCONV_REQUIRE_NVRTC=1`` (CI) makes that a failure.
``test_resource_report`` prints registers / static shared memory / stack per kernel and architecture
(``pytest -s`` or ``-rA`` shows it) and writes them as JSON to ``$GPUCONV_NVRTC_REPORT`` when set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gpuconv._cuda import runtime
from tests import nvrtc_check as nv

# Every kernel for seven architectures takes minutes on 2 cores: left out of the default run, run by CI
# (`-m slow`, and `-m nvrtc` once more with NVRTC 13).
pytestmark = [pytest.mark.nvrtc, pytest.mark.slow]

_REQUIRED = os.environ.get("GPUCONV_REQUIRE_NVRTC", "").strip().lower() in ("1", "true", "yes", "on")
_NVRTC_OK, _NVRTC_WHY = nv.nvrtc_available()
if not _NVRTC_OK and not _REQUIRED:
    pytest.skip(f"NVRTC not available: {_NVRTC_WHY} (set GPUCONV_REQUIRE_NVRTC=1 to fail instead)",
                allow_module_level=True)

# The options of the compile check: exactly the runtime's, then what CuPy's RawModule appends; the
# checker adds -arch=sm_XX and the ptxas verbose flag itself.
OPTIONS = tuple(runtime.NVRTC_OPTIONS) + nv.CUPY_OPTIONS


def _load_registry():
    try:
        from gpuconv._cuda.ops import INSTANTIATIONS
    except Exception as exc:  # noqa: BLE001 - reported by test_registry, not a collection error
        return {}, f"{type(exc).__name__}: {exc}"
    return dict(INSTANTIATIONS), ""


INSTANTIATIONS, _REGISTRY_ERROR = _load_registry()
SOURCES = sorted(INSTANTIATIONS)


def _need_nvrtc() -> None:
    """First line of every test that compiles: only reached without NVRTC when GPUCONV_REQUIRE_NVRTC=1
    (otherwise the module is skipped), where it is a test failure."""
    if not _NVRTC_OK:
        pytest.fail(f"GPUCONV_REQUIRE_NVRTC=1 but NVRTC is not available: {_NVRTC_WHY}", pytrace=False)


@pytest.fixture(scope="module")
def compiled(request):
    """``compiled(source, arch) -> CompileResult``. The (source, arch) pairs the selected tests need are
    compiled in a thread pool (ctypes releases the GIL; NVRTC is thread-safe across programs), one
    worker per CPU (``$GPUCONV_NVRTC_JOBS`` overrides), in test order; each test waits for its own."""
    if not _NVRTC_OK:  # the tests fail through _need_nvrtc()
        yield None
        return
    wanted: list[tuple[str, str]] = []
    for item in request.session.items:
        if getattr(item, "module", None) is not request.module:
            continue
        name = getattr(item, "originalname", None)
        if name == "test_resource_report":
            wanted += [(s, a) for s in SOURCES for a in nv.ARCHS]
        elif name == "test_compiles_without_spills":
            wanted.append((item.callspec.params["source"], item.callspec.params["arch"]))
    supported = set(nv.supported_archs())
    wanted = [t for t in dict.fromkeys(wanted) if t[1] in supported]
    pool = ThreadPoolExecutor(max_workers=nv.compile_jobs(), thread_name_prefix="nvrtc")
    futures = {t: pool.submit(nv.compile_registry_source, *t) for t in wanted}

    def get(source: str, arch: str) -> nv.CompileResult:
        if (source, arch) not in futures:
            futures[source, arch] = pool.submit(nv.compile_registry_source, source, arch)
        return futures[source, arch].result()

    yield get
    pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------------------
# The registry


def test_registry():
    assert not _REGISTRY_ERROR, f"gpuconv._cuda.ops does not import: {_REGISTRY_ERROR}"
    assert INSTANTIATIONS, "ops.INSTANTIATIONS is empty: nothing would be compile-checked"
    root = runtime.kernels_dir()
    for source, exprs in INSTANTIATIONS.items():
        assert (root / source).is_file(), f"{source} is in INSTANTIATIONS but not in {root}"
        assert exprs, f"{source} has no name expressions"
        assert len(set(exprs)) == len(exprs), f"{source} lists a name expression twice"
    unlisted = sorted(p.name for p in root.glob("*.cu") if p.name not in INSTANTIATIONS)
    assert not unlisted, f"kernel sources the runtime never compiles (not in INSTANTIATIONS): {unlisted}"


# --------------------------------------------------------------------------------------------------
# Every source x architecture


@pytest.mark.parametrize("arch", nv.ARCHS)
@pytest.mark.parametrize("source", SOURCES)
def test_compiles_without_spills(compiled, source, arch):
    _need_nvrtc()
    if arch not in nv.supported_archs():
        pytest.fail(f"NVRTC {nv.nvrtc_version()} ({nv.nvrtc_library_path()}) cannot target {arch}; "
                    f"it supports {', '.join(nv.supported_archs())}", pytrace=False)
    result = compiled(source, arch)
    where = f"{source} for {arch}"
    if not result.ok:
        pytest.fail(f"NVRTC failed on {where} ({result.status}); options: {' '.join(result.options)}\n"
                    f"--- NVRTC log ---\n{result.log}", pytrace=False)
    if result.warnings:
        print(f"{where}: NVRTC warnings:\n  " + "\n  ".join(result.warnings))
    not_lowered = [k.name_expression for k in result.kernels if not k.lowered_name]
    if not_lowered:
        pytest.fail(f"{where}: name expressions not lowered: {not_lowered}", pytrace=False)
    if result.problems:
        pytest.fail(f"{where}: the checker could not read every kernel's resource usage:\n  "
                    + "\n  ".join(result.problems) + f"\n--- NVRTC log ---\n{result.log}", pytrace=False)
    by_lowered = {k.lowered_name: k.name_expression for k in result.kernels}
    spilling = [f"{by_lowered.get(f.name, '(a non-inlined device function)')} [{f.name}]: "
                f"{f.spill_stores} bytes spill stores, {f.spill_loads} bytes spill loads, "
                f"{f.stack_bytes} bytes stack frame" for f in result.spilling]
    if spilling:
        pytest.fail(f"{where}: register spills:\n  " + "\n  ".join(spilling), pytrace=False)


# --------------------------------------------------------------------------------------------------
# The table / JSON report


def _cell(result: nv.CompileResult, expr: str) -> str:
    if not result.ok:
        return "FAILED"
    k = next(k for k in result.kernels if k.name_expression == expr)
    cell = f"{k.registers}/{k.shared_bytes}/{k.stack_bytes}"
    return cell + (" SPILL" if k.spills else "")


def test_resource_report(compiled):
    _need_nvrtc()
    if not INSTANTIATIONS:
        pytest.skip(f"no instantiations to report ({_REGISTRY_ERROR or 'registry empty'})")
    start = time.perf_counter()
    results = {(s, a): compiled(s, a) for s in SOURCES for a in nv.ARCHS if a in nv.supported_archs()}
    archs = [a for a in nv.ARCHS if a in nv.supported_archs()]
    major, minor = nv.nvrtc_version()

    header = ["source", "kernel"] + archs
    rows = [[s, e] + [_cell(results[s, a], e) for a in archs] for s in SOURCES for e in INSTANTIATIONS[s]]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = [f"NVRTC {major}.{minor} ({nv.nvrtc_library_path()}); options: {' '.join(OPTIONS)} "
             f"-arch=sm_XX {nv.PTXAS_VERBOSE}",
             "per kernel and architecture: registers/static shared memory bytes/stack frame bytes",
             "  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    total = sum(r.seconds for r in results.values())
    lines.append(f"{len(results)} NVRTC compiles, {total:.1f} s of compile time summed over "
                 f"{nv.compile_jobs()} worker thread(s); this test waited {time.perf_counter() - start:.1f} s")
    print("\n" + "\n".join(lines))

    path = os.environ.get("GPUCONV_NVRTC_REPORT")
    if path:
        report = {
            "nvrtc_version": f"{major}.{minor}",
            "nvrtc_library": nv.nvrtc_library_path(),
            "runtime_options": list(runtime.NVRTC_OPTIONS),
            "cupy_options": list(nv.CUPY_OPTIONS),
            "checker_options": ["-arch=sm_XX", nv.PTXAS_VERBOSE],
            "archs": archs,
            "compiles": [
                {"source": s, "arch": a, "ok": r.ok, "status": r.status, "seconds": round(r.seconds, 3),
                 "log": r.log if not r.ok else "", "problems": r.problems,
                 "kernels": [
                     {"name_expression": k.name_expression, "lowered_name": k.lowered_name,
                      "registers": k.registers, "shared_bytes": k.shared_bytes, "stack_bytes": k.stack_bytes,
                      "spill_stores": k.spill_stores, "spill_loads": k.spill_loads}
                     for k in r.kernels],
                 "spilling_functions": [f.name for f in r.spilling]}
                for (s, a), r in results.items()],
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------
# The checker itself can fail


_USAGE_SNIPPET = """
template <typename T> __global__ void copy_shifted(const T* x, T* y) {
    __shared__ T tile[128];
    tile[threadIdx.x] = x[blockIdx.x * 128 + threadIdx.x];
    __syncthreads();
    y[blockIdx.x * 128 + threadIdx.x] = tile[(threadIdx.x + 1) % 128];
}
"""

_SPILL_SNIPPET = """
__global__ void many_live_values(const float* x, float* y, int n) {
    float a[64];
#pragma unroll
    for (int i = 0; i < 64; i++) a[i] = x[i * n + threadIdx.x];
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < 64; j++) s += a[j] * a[63 - j] + a[(j * 7) % 64];
#pragma unroll
    for (int i = 0; i < 64; i++) y[i * n + threadIdx.x] = a[i] * s;
}
"""


@pytest.mark.parametrize("arch", [nv.ARCHS[0], nv.ARCHS[-1]])
def test_checker_reports_usage(arch):
    _need_nvrtc()
    exprs = ["copy_shifted<float>", "copy_shifted<double>"]
    result = nv.compile_source(_USAGE_SNIPPET, exprs, arch, OPTIONS)
    assert result.ok, result.log
    assert not result.problems, result.problems
    f32, f64 = result.kernels
    assert f32.lowered_name == "_Z12copy_shiftedIfEvPKT_PS0_"
    assert f64.lowered_name == "_Z12copy_shiftedIdEvPKT_PS0_"
    assert (f32.shared_bytes, f64.shared_bytes) == (512, 1024)
    assert f32.registers > 0 and f64.registers > 0
    assert (f32.spill_stores, f32.spill_loads, f32.stack_bytes) == (0, 0, 0)
    assert not result.spilling


def test_checker_sees_spills():
    _need_nvrtc()
    # A register cap far below what 64 live floats need forces ptxas to spill.
    result = nv.compile_source(_SPILL_SNIPPET, ["many_live_values"], nv.ARCHS[-1],
                               OPTIONS + ("--maxrregcount=32",))
    assert result.ok, result.log
    (k,) = result.kernels
    assert k.registers <= 32 and k.spill_stores > 0 and k.spill_loads > 0, (k, result.log)
    assert [f.name for f in result.spilling] == [k.lowered_name]


def test_checker_sees_compile_errors():
    _need_nvrtc()
    # NVRTC has no <math.h> macros: INFINITY is an undefined identifier there (kernels use
    # gpuconv::negative_infinity instead).
    snippet = "__global__ void k(float* x) { x[0] = INFINITY; }\n"
    result = nv.compile_source(snippet, ["k"], nv.ARCHS[0], OPTIONS)
    assert not result.ok
    assert result.status == "NVRTC_ERROR_COMPILATION"
    assert "INFINITY" in result.log and "error" in result.log
    assert result.kernels == []


def test_find_library_opens_each_major():
    """``find_library`` finds each NVRTC major the compile-check extra installs (12 and 13; in CI both must be
    there), and each compiles when named by ``GPUCONV_NVRTC_LIBRARY``: the 13.0 wheel's libnvrtc.so.13 needs
    its libnvrtc-builtins loaded beside it (``nvrtc_check._open``), or every compile fails with "failed to
    open libnvrtc-builtins.so.13.0". A fresh process per library: the loaded one is cached."""
    _need_nvrtc()
    snippet = "__global__ void k(float* x) { x[threadIdx.x] *= 2.0f; }\n"
    probe = ("from tests import nvrtc_check as nv; import sys; "
             f"r = nv.compile_source({snippet!r}, ['k'], 'sm_80', ()); "
             "print(nv.nvrtc_version()[0], r.ok, r.status); sys.stdout.flush()")
    for major in (12, 13):
        path = nv.find_library(major)
        if path is None:
            if _REQUIRED:
                pytest.fail(f"GPUCONV_REQUIRE_NVRTC=1 but no libnvrtc.so.{major} was found", pytrace=False)
            continue
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                             cwd=Path(__file__).resolve().parents[1],
                             env={**os.environ, "GPUCONV_NVRTC_LIBRARY": path, "LD_LIBRARY_PATH": ""})
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == [str(major), "True", "NVRTC_SUCCESS"], (path, out.stdout, out.stderr)
