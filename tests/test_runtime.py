"""gpuconv/_cuda/runtime.py's CuPy side without a GPU: a fake ``cupy`` module stands in for RawModule, so
what is checked is our bookkeeping (kernel handles kept per device / source / name, the precompile of
every source and its report), not CuPy's compiler, which the `gpu` tests and ``.ci/gpu`` exercise."""

from __future__ import annotations

import sys
import threading
import types

import pytest

import gpuconv
from gpuconv._cuda import runtime
from gpuconv._cuda.ops import INSTANTIATIONS
from gpuconv.__main__ import main as cli


class FakeCupy(types.ModuleType):
    """``cupy.RawModule`` compiling nothing: it counts modules built and functions looked up."""

    def __init__(self, broken_source=None):
        super().__init__("cupy")
        self.modules, self.lookups, self.lock = [], [], threading.Lock()
        fake = self

        class Device:
            current = 0

            def __init__(self, i=None):
                self.id = Device.current if i is None else i

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        class RawModule:
            def __init__(self, code, options, name_expressions):
                if broken_source and broken_source in code:
                    raise RuntimeError(f"compile error in {broken_source}")
                with fake.lock:
                    fake.modules.append(name_expressions)

            def get_function(self, name):
                with fake.lock:
                    fake.lookups.append(name)
                return types.SimpleNamespace(name=name, attributes=dict(
                    num_regs=40, local_size_bytes=0, shared_size_bytes=1024, max_threads_per_block=1024))

        self.cuda = types.SimpleNamespace(Device=Device)
        self.RawModule = RawModule


@pytest.fixture
def fake_cupy(monkeypatch):
    def install(**kwargs):
        fake = FakeCupy(**kwargs)
        monkeypatch.setitem(sys.modules, "cupy", fake)
        return fake
    for cache in (runtime._module, runtime._function):
        cache.cache_clear()
    yield install
    for cache in (runtime._module, runtime._function):
        cache.cache_clear()


def test_kernel_handles_are_looked_up_once(fake_cupy):
    """A launch asks the runtime for its kernel every time; the module is built once per (device, source)
    and each handle looked up once per (device, source, name)."""
    fake = fake_cupy()
    rt = runtime.CupyRuntime()
    source = sorted(INSTANTIATIONS)[0]
    name = INSTANTIATIONS[source][0]
    handles = [rt.function(source, name) for _ in range(5)]
    assert all(h is handles[0] for h in handles)
    assert len(fake.modules) == 1 and fake.lookups == [name]
    fake.cuda.Device.current = 1  # another device: its own module and handle
    assert rt.function(source, name) is not handles[0]
    assert len(fake.modules) == 2 and fake.lookups == [name, name]


def test_precompile_builds_every_source_and_reports_each_kernel(fake_cupy):
    fake = fake_cupy()
    results = gpuconv.precompile()
    assert [r.source for r in results] == sorted(INSTANTIATIONS)
    assert len(fake.modules) == len(INSTANTIATIONS)
    for r in results:
        assert r.error is None and [k.name for k in r.kernels] == INSTANTIATIONS[r.source]
        assert all(k.registers == 40 and k.local_bytes == 0 and k.max_threads == 1024 for k in r.kernels)
    # afterwards, a launch looks nothing up again
    before = len(fake.lookups)
    source = results[0].source
    runtime.CupyRuntime().function(source, INSTANTIATIONS[source][0])
    assert len(fake.lookups) == before
    text = runtime.format_precompile(results)
    assert f"{source}: " in text and "40 registers, 0 B local, 1024 B shared, max 1024 threads" in text


def test_precompile_reports_a_broken_source_without_raising(fake_cupy):
    broken = "pool2d.cu"
    fake_cupy(broken_source="MaxReducer")  # text found only in kernels/pool2d.cu's code
    results = {r.source: r for r in gpuconv.precompile()}
    assert results[broken].error is not None and "compile error" in results[broken].error
    assert all(r.error is None for s, r in results.items() if s != broken)
    assert f"{broken}: " in runtime.format_precompile(list(results.values()))
    assert "FAILED" in runtime.format_precompile([results[broken]])


def test_precompile_command_without_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(gpuconv, "backend_info", lambda: {"cupy": {"available": False, "reason": "no GPU here"}})
    assert cli(["precompile"]) == 2
    assert "no GPU here" in capsys.readouterr().err
