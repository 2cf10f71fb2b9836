"""Compile CUDA C++ with NVRTC to a CUBIN, without a GPU, and report each kernel's resource usage.

Used by ``tests/test_nvrtc_compile.py`` to check that every kernel instantiation the runtime can request
compiles for the architectures we support, and that none spills registers to local memory.

How NVRTC is reached
--------------------
Plain ``ctypes`` on ``libnvrtc`` (the C API, stable since CUDA 7; no GPU or driver needed). The library is
looked for, in order, at:

1. ``$GPUCONV_NVRTC_LIBRARY`` (a full path), if set;
2. the pip wheel ``nvidia-cuda-nvrtc-cu12`` (``site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so.12``), or
   the CUDA 13 wheel layout (``nvidia/cu13/lib/libnvrtc.so.13``);
3. ``cuda.pathfinder.load_nvidia_dynamic_lib("nvrtc")`` when ``cuda-pathfinder`` is installed (it comes
   with ``cuda-bindings``), which also knows conda and system toolkits;
4. the dynamic loader's search path (``libnvrtc.so.12``, ``libnvrtc.so.13``, ``libnvrtc.so``) and
   ``$CUDA_PATH`` / ``$CUDA_HOME`` / ``/usr/local/cuda``.

CI installs ``nvidia-cuda-nvrtc-cu12``, ``nvidia-cuda-nvrtc`` 13 and ``cuda-bindings<13`` (the
``compile-check`` extra); only the first two are used by this module. The compile check runs with NVRTC 12
(first in the search), then once more with NVRTC 13 (``GPUCONV_NVRTC_LIBRARY`` set to what
``python -m tests.nvrtc_check --find 13`` prints): cupy-cuda12x compiles our kernels with the one,
cupy-cuda13x with the other. The Python API of ``cuda.bindings.nvrtc`` (12.9.x) works as well, with
the same log; it is not used so that the checker depends only on NVRTC's C ABI, not on that package's
Python signatures or version pin.

Options: whose are which
------------------------
What NVRTC receives here, in order (``CompileResult.options``):

* the caller's ``options``: for the compile check, ``gpuconv._cuda.runtime.NVRTC_OPTIONS``, exactly the
  tuple the runtime hands to ``cupy.RawModule`` (``--std=c++17``);
* ``CUPY_OPTIONS`` (``-ftz=true``), appended by the test (it passes ``NVRTC_OPTIONS + CUPY_OPTIONS``):
  ``cupy.cuda.compiler`` appends ``-ftz=true`` to every RawModule compile, and it changes the generated
  code, so registers and spills are measured as the GPU path will build them. CuPy also adds ``-I``
  paths (its own headers, the toolkit's) which only matter to ``#include <...>`` and are left out on
  purpose: our kernels must not need toolkit headers (see ``kernels/common.cuh``);
* the checker's additions: ``-arch=sm_XX`` (a real architecture, so NVRTC runs ptxas and produces a
  CUBIN; CuPy passes ``-arch=compute_XX`` (PTX, assembled by the driver's JIT) or ``-arch=sm_XX``
  depending on its version and the driver: the same front end, though a driver's ptxas may allocate
  registers slightly differently from the one inside this NVRTC) and ``PTXAS_VERBOSE``
  (``--ptxas-options=-v``) so that the program log carries ptxas's per-function resource usage.

What is reported
----------------
For each name expression: its lowered (mangled) name and, from the ptxas lines of the log::

    ptxas info    : Compiling entry function '_Z...' for 'sm_90'
    ptxas info    : Function properties for _Z...
    ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
    ptxas info    : Used 32 registers, used 1 barriers, 1024 bytes smem, 364 bytes cmem[0]

registers, static shared memory, stack frame and spill stores/loads. Non-inlined device functions get
their own "Function properties" block (``CompileResult.functions``), so a spill inside a callee is seen
too (``CompileResult.spilling``). The register count is cross-checked against the CUBIN's ELF
(``.nv.info`` register-count records, see ``cubin_resources``); if the log ever lacks a kernel's ptxas
lines, registers and shared memory come from the ELF alone and the missing figures are reported in
``CompileResult.problems`` (spills are not recorded in the ELF).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import glob
import importlib.util
import os
import re
import struct
import time
from typing import Iterable, Sequence

__all__ = [
    "ARCHS", "CUPY_OPTIONS", "PTXAS_VERBOSE", "CompileResult", "FunctionProperties", "KernelUsage",
    "NvrtcUnavailable", "compile_jobs", "compile_registry_source", "compile_source", "cubin_resources", "nvrtc_available", "nvrtc_library_path",
    "nvidia_wheel_dirs", "nvrtc_version", "parse_ptxas_log", "supported_archs",
]

# The architectures the compile check covers (Turing, Ampere A100, Ampere consumer, Ada, Hopper, Blackwell
# data-centre and consumer); NVRTC 12.8 and newer know all of them.
ALL_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120")


def _archs_from_env(all_archs=ALL_ARCHS) -> tuple[str, ...]:
    """``$GPUCONV_NVRTC_ARCHS`` (comma-separated, a subset of ``ALL_ARCHS``) or all of them: CI's second
    pass with NVRTC 13 checks a subset, its first pass with NVRTC 12 every architecture (.ci/run)."""
    env = os.environ.get("GPUCONV_NVRTC_ARCHS", "").strip()
    if not env:
        return all_archs
    wanted = tuple(a.strip() for a in env.split(",") if a.strip())
    unknown = [a for a in wanted if a not in all_archs]
    if unknown or not wanted:
        raise ValueError(f"GPUCONV_NVRTC_ARCHS={env!r}: each entry must be one of {', '.join(all_archs)}")
    return tuple(a for a in all_archs if a in wanted)


ARCHS = _archs_from_env()
# What cupy.cuda.compiler appends to every RawModule compile (besides -arch and -I paths).
CUPY_OPTIONS = ("-ftz=true",)
# ptxas verbose: NVRTC 12.x accepts this and "-Xptxas=-v" alike; the long form is the documented one.
PTXAS_VERBOSE = "--ptxas-options=-v"

_NVRTC_SUCCESS = 0
_ARCH = re.compile(r"^sm_\d+[af]?$")


class NvrtcUnavailable(RuntimeError):
    """libnvrtc could not be found or loaded."""


# --------------------------------------------------------------------------------------------------
# Loading libnvrtc


def nvidia_wheel_dirs() -> list[str]:
    """The folders of the ``nvidia`` namespace package, where NVIDIA's pip wheels (NVRTC here, the
    disassemblers for tests/sass_check.py) put their libraries and tools."""
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return list(spec.submodule_search_locations)


def compile_jobs() -> int:
    """Compile threads for a batch of NVRTC compiles: ``$GPUCONV_NVRTC_JOBS``, else one per usable CPU
    (ctypes releases the GIL during each compile)."""
    env = os.environ.get("GPUCONV_NVRTC_JOBS", "").strip()
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _wheel_candidates() -> list[str]:
    found = []
    for root in nvidia_wheel_dirs():
        for pattern in ("cuda_nvrtc/lib/libnvrtc.so.12", "cu13/lib/libnvrtc.so.13",
                        "cuda_nvrtc/lib/libnvrtc.so.*", "*/lib/libnvrtc.so*"):
            for path in sorted(glob.glob(os.path.join(root, pattern))):
                if "builtins" not in os.path.basename(path) and ".alt." not in os.path.basename(path) \
                        and path not in found:
                    found.append(path)
    return found


def _pathfinder_candidate():
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib
    except ImportError:
        return None
    try:
        loaded = load_nvidia_dynamic_lib("nvrtc")
    except Exception:  # noqa: BLE001 - any failure just means "not found this way"
        return None
    return getattr(loaded, "abs_path", None)


def _system_candidates() -> list[str]:
    names = ["libnvrtc.so.12", "libnvrtc.so.13", "libnvrtc.so"]
    found = ctypes.util.find_library("nvrtc")
    if found:
        names.insert(0, found)
    for var in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(var):
            names += sorted(glob.glob(os.path.join(os.environ[var], "lib*", "libnvrtc.so*")))
    names += sorted(glob.glob("/usr/local/cuda/lib*/libnvrtc.so*"))
    return [n for n in names if "builtins" not in n and ".alt." not in n]


def _search_candidates() -> list[str]:
    """Where libnvrtc is looked for when ``GPUCONV_NVRTC_LIBRARY`` names none, in order."""
    candidates = _wheel_candidates()
    pf = _pathfinder_candidate()
    if pf:
        candidates.append(pf)
    return candidates + _system_candidates()


def _candidates() -> list[str]:
    """Where libnvrtc is looked for, in order (see the module docstring)."""
    explicit = os.environ.get("GPUCONV_NVRTC_LIBRARY")
    return [explicit] if explicit else _search_candidates()  # an explicit choice is not second-guessed


def find_library(major: int) -> str | None:
    """The first libnvrtc of the usual search (wheels, cuda-pathfinder, system; not
    ``GPUCONV_NVRTC_LIBRARY``) whose file is ``libnvrtc.so.<major>``: CI runs the compile check once more
    with the NVRTC 13 that cupy-cuda13x compiles with (``python -m tests.nvrtc_check --find 13``)."""
    for path in _search_candidates():
        if os.path.isabs(path) and os.path.isfile(path) and os.path.basename(path) == f"libnvrtc.so.{major}":
            return path
    return None


def _open(path: str) -> ctypes.CDLL:
    """``ctypes.CDLL(path)``, after loading the ``libnvrtc-builtins`` beside it (if any) globally: libnvrtc
    opens that library by its bare soname when it compiles, and the 13.0 wheel's libnvrtc.so.13 (13.0.88;
    the 12.x and 13.5 wheels have ``$ORIGIN`` as their run path) does not look in its own folder ("failed
    to open libnvrtc-builtins.so.13.0"); one already loaded under that soname is what the loader hands back."""
    if os.path.isabs(path):
        for builtins in sorted(glob.glob(os.path.join(os.path.dirname(path), "libnvrtc-builtins.so.*"))):
            if ".alt." not in os.path.basename(builtins):
                ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
    return ctypes.CDLL(path)


@functools.lru_cache(maxsize=None)
def _library() -> tuple[ctypes.CDLL, str]:
    tried: list[str] = []
    for path in _candidates():
        try:
            lib = _open(path)
        except OSError as exc:
            tried.append(f"{path}: {exc}")
            continue
        _declare(lib)
        return lib, _loaded_path(lib, path)
    hint = ("install it with `pip install nvidia-cuda-nvrtc-cu12` (the project's `compile-check` extra) "
            "or point GPUCONV_NVRTC_LIBRARY at libnvrtc.so")
    detail = "; ".join(tried) if tried else "no candidate found"
    raise NvrtcUnavailable(f"libnvrtc not loadable ({detail}); {hint}")


def _loaded_path(lib: ctypes.CDLL, fallback: str) -> str:
    """The file the loader really opened (a bare soname resolves somewhere on the search path)."""
    if os.path.isabs(fallback):
        return fallback
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split(None, 5)[-1].strip() if line.count(" ") >= 5 else ""
                if os.path.basename(path).startswith("libnvrtc.so"):
                    return path
    except OSError:
        pass
    return fallback


def _declare(lib: ctypes.CDLL) -> None:
    c_int_p = ctypes.POINTER(ctypes.c_int)
    size_p = ctypes.POINTER(ctypes.c_size_t)
    prog_p = ctypes.POINTER(ctypes.c_void_p)
    sigs = {
        "nvrtcVersion": [c_int_p, c_int_p],
        "nvrtcGetNumSupportedArchs": [c_int_p],
        "nvrtcGetSupportedArchs": [c_int_p],
        "nvrtcCreateProgram": [prog_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
                               ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p)],
        "nvrtcDestroyProgram": [prog_p],
        "nvrtcAddNameExpression": [ctypes.c_void_p, ctypes.c_char_p],
        "nvrtcCompileProgram": [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
        "nvrtcGetProgramLogSize": [ctypes.c_void_p, size_p],
        "nvrtcGetProgramLog": [ctypes.c_void_p, ctypes.c_char_p],
        "nvrtcGetCUBINSize": [ctypes.c_void_p, size_p],
        "nvrtcGetCUBIN": [ctypes.c_void_p, ctypes.c_char_p],
        "nvrtcGetLoweredName": [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p)],
    }
    for name, argtypes in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = ctypes.c_int
    lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p


def nvrtc_available() -> tuple[bool, str]:
    """``(True, "")`` when libnvrtc loads and answers, else ``(False, why)``."""
    try:
        nvrtc_version()
    except NvrtcUnavailable as exc:
        return False, str(exc)
    except (OSError, AttributeError) as exc:  # a library without the expected symbols
        return False, f"libnvrtc unusable: {exc}"
    return True, ""


def nvrtc_library_path() -> str:
    return _library()[1]


@functools.lru_cache(maxsize=None)
def nvrtc_version() -> tuple[int, int]:
    lib = _library()[0]
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(lib, lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


@functools.lru_cache(maxsize=None)
def supported_archs() -> tuple[str, ...]:
    """The real architectures this NVRTC can compile for, as ``sm_XX``."""
    lib = _library()[0]
    n = ctypes.c_int()
    _check(lib, lib.nvrtcGetNumSupportedArchs(ctypes.byref(n)), "nvrtcGetNumSupportedArchs")
    archs = (ctypes.c_int * n.value)()
    _check(lib, lib.nvrtcGetSupportedArchs(archs), "nvrtcGetSupportedArchs")
    return tuple(f"sm_{a}" for a in archs)


def _error_string(lib, code: int) -> str:
    s = lib.nvrtcGetErrorString(code)
    return s.decode() if s else f"NVRTC error {code}"


def _check(lib, code: int, what: str) -> None:
    if code != _NVRTC_SUCCESS:
        raise RuntimeError(f"{what} failed: {_error_string(lib, code)}")


# --------------------------------------------------------------------------------------------------
# Results


@dataclasses.dataclass(frozen=True)
class KernelUsage:
    """Resources of one kernel (one name expression) for one architecture, as ptxas reported them."""

    name_expression: str
    lowered_name: str
    registers: int
    shared_bytes: int  # static shared memory (dynamic shared memory is a launch parameter)
    spill_stores: int
    spill_loads: int
    stack_bytes: int  # the kernel's stack frame (local arrays, spills, call frames)

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0


@dataclasses.dataclass(frozen=True)
class FunctionProperties:
    """One "Function properties for ..." block: a kernel or a non-inlined device function it calls."""

    name: str
    stack_bytes: int
    spill_stores: int
    spill_loads: int


@dataclasses.dataclass
class CompileResult:
    ok: bool  # NVRTC compiled the program (the log has the errors otherwise)
    log: str = dataclasses.field(repr=False)
    kernels: list[KernelUsage]  # one per name expression, in the given order (empty unless ok)
    arch: str = ""
    options: tuple[str, ...] = ()  # everything NVRTC received
    status: str = ""  # NVRTC's result string, e.g. NVRTC_ERROR_COMPILATION
    functions: dict[str, FunctionProperties] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)  # the checker's own doubts
    cubin: bytes = dataclasses.field(default=b"", repr=False)
    seconds: float = 0.0

    @property
    def spilling(self) -> list[FunctionProperties]:
        """Every function in the log (kernels and their non-inlined callees) that spills."""
        return [f for f in self.functions.values() if f.spill_stores or f.spill_loads]

    @property
    def warnings(self) -> list[str]:
        return [line for line in self.log.splitlines() if re.search(r"\bwarning\b", line, re.I)]


# --------------------------------------------------------------------------------------------------
# Parsing


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '([^']+)'")
_PROPERTIES = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas_log(log: str) -> tuple[dict[str, dict[str, int]], dict[str, FunctionProperties]]:
    """``(entries, functions)`` from ptxas verbose output.

    ``entries[lowered_name] = {"registers": ..., "shared_bytes": ...}`` for each entry function (kernel);
    ``functions[name]`` for each "Function properties" block (kernels and non-inlined callees; a callee
    listed under several kernels keeps its largest figures).
    """
    entries: dict[str, dict[str, int]] = {}
    functions: dict[str, FunctionProperties] = {}
    entry = props = None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            entry, props = m.group(1), None
            entries.setdefault(entry, {})
        elif m := _PROPERTIES.search(line):
            props = m.group(1)
        elif (m := _FRAME.search(line)) and props is not None:
            new = FunctionProperties(props, *(int(g) for g in m.groups()))
            old = functions.get(props)
            if old is not None:
                new = FunctionProperties(props, max(old.stack_bytes, new.stack_bytes),
                                         max(old.spill_stores, new.spill_stores),
                                         max(old.spill_loads, new.spill_loads))
            functions[props] = new
            props = None
        elif (m := _USED.search(line)) and entry is not None:
            smem = _SMEM.search(line)
            entries[entry] = {"registers": int(m.group(1)), "shared_bytes": int(smem.group(1)) if smem else 0}
    return entries, functions


_EIATTR_REGCOUNT = 0x2F  # .nv.info attribute: (symbol index, register count)


def cubin_resources(cubin: bytes) -> dict[str, dict[str, int]]:
    """``{kernel: {"registers": n, "shared_bytes": n}}`` from a CUBIN's ELF (64-bit little-endian).

    Registers: the ``EIATTR_REGCOUNT`` records of the ``.nv.info`` section (the same on every
    architecture; the top byte of ``.text.<kernel>``'s ``sh_info``, used by older tools, is 0 on sm_90).
    Shared: the size of ``.nv.shared.<kernel>``, which on sm_90 includes the 1 KiB the system reserves
    per block, so it is an upper bound on what ptxas calls "smem" rather than the same figure.
    """
    if len(cubin) < 64 or cubin[:4] != b"\x7fELF" or cubin[4] != 2 or cubin[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF (CUBIN)")
    shoff, = struct.unpack_from("<Q", cubin, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", cubin, 0x3A)
    # (sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info, sh_addralign, sh_entsize)
    sections = [struct.unpack_from("<IIQQQQIIQQ", cubin, shoff + i * shentsize) for i in range(shnum)]

    def cstr(table_offset: int, index: int) -> str:
        start = table_offset + index
        return cubin[start:cubin.index(b"\0", start)].decode()

    names = [cstr(sections[shstrndx][4], sec[0]) for sec in sections]
    symbols: list[str] = []
    for sec in sections:
        if sec[1] == 2:  # SHT_SYMTAB; entries: st_name, st_info, st_other, st_shndx, st_value, st_size
            strtab = sections[sec[6]][4]
            symbols = [cstr(strtab, struct.unpack_from("<I", cubin, sec[4] + off)[0])
                       for off in range(0, sec[5], 24)]
            break

    out: dict[str, dict[str, int]] = {}
    for name, sec in zip(names, sections):
        if name.startswith(".text."):
            out.setdefault(name[len(".text."):], {}).setdefault("registers", sec[7] >> 24)
    for name, sec in zip(names, sections):
        if name.startswith(".nv.shared.") and name[len(".nv.shared."):] in out:
            out[name[len(".nv.shared."):]]["shared_bytes"] = sec[5]
        elif name == ".nv.info":  # records: format byte, attribute byte, then u16 (size or value)
            data, i = cubin[sec[4]:sec[4] + sec[5]], 0
            while i + 4 <= len(data):
                fmt, attr, size = data[i], data[i + 1], struct.unpack_from("<H", data, i + 2)[0]
                if fmt == 4:  # EIFMT_SVAL: `size` bytes follow
                    if attr == _EIATTR_REGCOUNT and size >= 8:
                        sym, regs = struct.unpack_from("<II", data, i + 4)
                        if sym < len(symbols) and symbols[sym] in out:
                            out[symbols[sym]]["registers"] = regs
                    i += 4 + size
                else:
                    i += 4
    for usage in out.values():
        usage.setdefault("shared_bytes", 0)
    return out


# --------------------------------------------------------------------------------------------------
# Compiling


def compile_source(code: str, name_expressions: Iterable[str], arch: str,
                   options: Sequence[str] = (), *, program_name: str = "gpuconv.cu") -> CompileResult:
    """Compile ``code`` with NVRTC for ``arch`` (``"sm_90"``) to a CUBIN with ptxas verbose output.

    NVRTC receives ``options`` followed by ``-arch=<arch>`` and ``PTXAS_VERBOSE``. Each name expression
    is added to the program and looked up after the compile; ``kernels`` has one entry per expression.
    Raises ``NvrtcUnavailable`` when there is no libnvrtc; a failed compile is ``ok=False`` with the log.
    """
    if not _ARCH.match(arch):
        raise ValueError(f"arch must look like 'sm_90', got {arch!r}")
    lib = _library()[0]
    exprs = list(name_expressions)
    opts = tuple(options) + (f"-arch={arch}", PTXAS_VERBOSE)
    result = CompileResult(ok=False, log="", kernels=[], arch=arch, options=opts)

    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), code.encode(), program_name.encode(), 0,
                                       None, None), "nvrtcCreateProgram")
    try:
        for expr in exprs:
            _check(lib, lib.nvrtcAddNameExpression(prog, expr.encode()), f"nvrtcAddNameExpression({expr})")
        argv = (ctypes.c_char_p * len(opts))(*(o.encode() for o in opts))
        start = time.perf_counter()
        status = lib.nvrtcCompileProgram(prog, len(opts), argv)
        result.seconds = time.perf_counter() - start
        result.status = _error_string(lib, status)

        size = ctypes.c_size_t()
        _check(lib, lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
        buf = ctypes.create_string_buffer(max(size.value, 1))
        _check(lib, lib.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
        result.log = buf.value.decode(errors="replace")
        if status != _NVRTC_SUCCESS:
            return result
        result.ok = True

        _check(lib, lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
        cubin = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        result.cubin = cubin.raw

        lowered: dict[str, str] = {}
        for expr in exprs:
            name = ctypes.c_char_p()
            code_ = lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(name))
            if code_ != _NVRTC_SUCCESS or not name.value:
                result.problems.append(f"{expr}: no lowered name ({_error_string(lib, code_)})")
                lowered[expr] = ""
            else:
                lowered[expr] = name.value.decode()
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))

    entries, result.functions = parse_ptxas_log(result.log)
    try:
        elf = cubin_resources(result.cubin)
    except (ValueError, struct.error) as exc:
        elf = {}
        result.problems.append(f"could not read the CUBIN's ELF sections: {exc}")
    for expr in exprs:
        low = lowered[expr]
        entry, props, sec = entries.get(low), result.functions.get(low), elf.get(low)
        if low and (not entry or props is None):
            result.problems.append(f"{expr} ({low}): no ptxas resource lines in the log"
                                   + ("; registers/shared memory taken from the CUBIN" if sec else ""))
        if entry and sec and entry["registers"] != sec["registers"]:
            result.problems.append(f"{expr} ({low}): {entry['registers']} registers in the log, "
                                   f"{sec['registers']} in the CUBIN")
        usage = entry or sec or {}
        result.kernels.append(KernelUsage(
            name_expression=expr, lowered_name=low,
            registers=usage.get("registers", -1), shared_bytes=usage.get("shared_bytes", -1),
            spill_stores=props.spill_stores if props else -1, spill_loads=props.spill_loads if props else -1,
            stack_bytes=props.stack_bytes if props else -1))
    return result


def compile_registry_source(source: str, arch: str) -> CompileResult:
    """``compile_source`` of one kernel source as the GPU path builds it: the text the runtime loads
    (headers spliced in), every name expression ``gpuconv._cuda.ops.INSTANTIATIONS`` lists for it, and
    the runtime's options plus ``CUPY_OPTIONS``. Used by the compile check, the machine-code check and the
    GPU check's rehearsal."""
    from gpuconv._cuda import runtime
    from gpuconv._cuda.ops import INSTANTIATIONS
    return compile_source(runtime.load_source(source), INSTANTIATIONS[source], arch,
                          tuple(runtime.NVRTC_OPTIONS) + CUPY_OPTIONS, program_name=source)


if __name__ == "__main__":
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m tests.nvrtc_check",
                                     description="Print the path of an installed libnvrtc of one major version.")
    parser.add_argument("--find", type=int, required=True, metavar="MAJOR", help="e.g. 13")
    major = parser.parse_args().find
    found = find_library(major)
    if found is None:
        sys.exit(f"no libnvrtc.so.{major} found (the compile-check extra installs "
                 "nvidia-cuda-nvrtc-cu12 and nvidia-cuda-nvrtc 13)")
    print(found)
