"""The structure docs/architecture.md describes, checked: no import cycle among gpuconv's modules, no module
over the size limit, every runtime conforming to the ``Runtime`` protocol, and the operation table
consistent with what the runtime compiles."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from gpuconv._cuda import ops
from gpuconv._cuda.runtime import CupyRuntime, Runtime

PACKAGE = Path(__file__).resolve().parent.parent / "gpuconv"
MAX_MODULE_LINES = 500


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """gpuconv modules ``path`` imports, at module level or inside functions (a lazy import still makes a
    cycle a reader has to untangle)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found.update(c for c in candidates if c.startswith("gpuconv") and c != name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        # importing a submodule imports its packages' __init__ too, but those carry no logic here
        graph[name] = {m for m in _imports(path) if m in modules and not modules[m].name == "__init__.py"}
    return graph


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_checker_finds_a_cycle(monkeypatch):
    graph = {"gpuconv.a": {"gpuconv.b"}, "gpuconv.b": {"gpuconv.a"}}
    monkeypatch.setattr(__import__(__name__, fromlist=["_graph"]), "_graph", lambda: graph)
    with pytest.raises(AssertionError, match="import cycle: gpuconv.a -> gpuconv.b -> gpuconv.a"):
        test_no_import_cycle()


def test_modules_stay_small():
    sizes = {str(p.relative_to(PACKAGE.parent)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert not {p: n for p, n in sizes.items() if n > MAX_MODULE_LINES}, f"modules over {MAX_MODULE_LINES} lines"


def _protocol_members():
    return {n for n in dir(Runtime) if not n.startswith("_")} | set(Runtime.__annotations__)


@pytest.mark.parametrize("runtime_class", ["cupy", "emulated"])
def test_runtimes_conform_to_the_protocol(runtime_class):
    """Every member the launch code uses exists on both runtimes, methods with the protocol's parameters
    (checked on the classes: no GPU, no compiler needed)."""
    if runtime_class == "cupy":
        cls = CupyRuntime
    else:
        from tests.emulator import EmulatedRuntime as cls
    for member in sorted(_protocol_members()):
        annotated = {n for c in cls.__mro__ for n in getattr(c, "__annotations__", {})}
        assert hasattr(cls, member) or member in annotated, f"{cls.__name__} lacks {member}"
        proto = getattr(Runtime, member, None)
        if callable(proto):
            want = list(inspect.signature(proto).parameters)
            got = list(inspect.signature(getattr(cls, member)).parameters)
            assert got == want, f"{cls.__name__}.{member}{got} != Runtime.{member}{want}"


def test_emulated_runtime_instance_is_a_runtime():
    from tests.runners import emulated_runtime
    assert isinstance(emulated_runtime(), Runtime)


def test_operation_table():
    """Every algorithm sits under its own (op, direction), names are unique per operation, and each source
    the table lists is compiled with every instantiation its algorithms request."""
    assert ("conv2d", "forward") in ops.OPERATIONS
    for key, o in ops.OPERATIONS.items():
        assert o.key == key and o.algorithms
        for name, a in o.algorithms.items():
            assert (a.name, a.op, a.direction) == (name, *key)
            assert set(a.instantiations) <= set(ops.INSTANTIATIONS[a.source])
    assert set(ops.INSTANTIATIONS) == {a.source for o in ops.OPERATIONS.values() for a in o.algorithms.values()}


def test_a_call_may_record_several_kernels():
    """A backward call runs one kernel per gradient: the record keeps each, in order."""
    from gpuconv import _backend
    _backend.record("conv2d", "emulated", "k_data", "k_filter", direction="backward")
    rec = _backend.last_kernel()
    assert (rec.op, rec.direction, rec.kernels, rec.kernel) == (
        "conv2d", "backward", ("k_data", "k_filter"), "k_data + k_filter")


def test_gradients_are_reachable_after_import_gpuconv_and_numpy_calls_load_no_cuda_table():
    """``import gpuconv`` gives ``gpuconv.grad`` (as ``import torch`` gives ``torch.nn.grad``) and stays light:
    a NumPy call, forward or backward, loads none of the CUDA algorithm modules."""
    import subprocess
    import sys
    code = ("import sys, numpy as np, gpuconv\n"
            "x = np.ones((1, 2, 5, 5), np.float32); w = np.ones((3, 2, 3, 3), np.float32)\n"
            "y = gpuconv.conv2d(x, w)\n"
            "gpuconv.grad.conv2d_input(x.shape, w, y); gpuconv.grad.conv2d_weight(x, w.shape, y)\n"
            "print(sorted(m for m in sys.modules if m.startswith('gpuconv._cuda.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "ops" not in out and "conv_igemm" not in out and "select" not in out, out
