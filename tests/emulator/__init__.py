"""CPU emulator for gpuconv's CUDA kernels: compiles the real ``kernels/*.cu`` with g++ (no GPU, no nvcc)
and runs every CUDA thread as a fiber on the CPU, behind the same small interface as
``gpuconv._cuda.runtime.CupyRuntime`` (``xp``, ``function(source, name_expression)``, ``synchronize()``).

Arrays are NumPy arrays; a kernel receives ``arr.ctypes.data`` where CuPy would pass a device pointer.
A struct parameter passed by value (``gpuconv::ConvParams``) receives the bytes of a one-element NumPy array
whose dtype has the struct's size, as CuPy passes a one-element ``numpy.ndarray`` by value.
Before every launch each argument is checked against the kernel's real parameter list, which the
*compiler* reports (the generated wrapper takes ``&name_expression`` and deduces the parameter types), so
the classic CuPy mistakes — a Python ``int`` (always an 8-byte ``long long`` in CuPy) for an ``int``
parameter, a float64 array for a ``float*``, a missing argument — raise ``TypeError`` here instead of
silently reading garbage on the GPU. See README.md in this folder.

Environment:

* ``GPUCONV_EMU_CACHE``: folder for compiled modules (default ``~/.cache/gpuconv-emu``);
* ``GPUCONV_EMU_WORKERS``: OS threads that run blocks in parallel (default 1);
* ``GPUCONV_EMU_POISON=0``: do not fill shared memory with 0xFF bytes before each block;
* ``GPUCONV_EMU_STACK_KB``: stack size of each fiber (default 64, 256 under ASan);
* ``CXX``: the compiler (default ``g++``).
"""

from __future__ import annotations

import ctypes
import hashlib
import operator
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy

__all__ = ["EmulatedRuntime", "EmuKernel", "EmuModule", "compile_module", "compile_count", "asan_preloaded"]

HERE = Path(__file__).resolve().parent
_HARNESS_FILES = ("cuda_compat.h", "fiber_runtime.h", "__init__.py")
_ABI = 2  # gpuemu_abi_version() in fiber_runtime.h: 2 = variable-sized argument slots

BASE_FLAGS = (
    "-O2", "-std=c++17", "-fPIC", "-shared", "-fvisibility=hidden", "-fno-gnu-unique", "-Wl,-Bsymbolic",
    "-ffp-contract=off", "-fno-strict-aliasing", "-Wno-unknown-pragmas", "-DGPUCONV_EMULATED=1",
)
SANITIZE_FLAGS = ("-fsanitize=address", "-fno-omit-frame-pointer", "-g")

# CUDA limits checked at every launch (compute capability 7.0+).
MAX_BLOCK = (1024, 1024, 64)
MAX_THREADS_PER_BLOCK = 1024
MAX_GRID = (2**31 - 1, 65535, 65535)
DEFAULT_DYNAMIC_SHARED = 48 * 1024      # without the opt-in attribute
MAX_DYNAMIC_SHARED_OPT_IN = 227 * 1024  # sm_90; the most any current GPU allows

# The scalar types CuPy's RawKernel accepts by value ('?bhilqBHILQefdFD').
_CUPY_SCALAR_TYPES = frozenset(numpy.dtype(c).type for c in "?bhilqBHILQefdFD")

_compile_lock = threading.Lock()
_loaded: dict[str, "EmuModule"] = {}
_compile_count = 0


def compile_count() -> int:
    """How many times this process has run the compiler (the on-disk cache makes reruns skip it)."""
    return _compile_count


def asan_preloaded() -> bool:
    """Whether libasan is loaded into this process (LD_PRELOAD), as sanitize mode needs."""
    try:
        ctypes.CDLL(None).__asan_init  # noqa: B018 - symbol lookup only
        return True
    except AttributeError:
        return False


def cache_dir() -> Path:
    d = os.environ.get("GPUCONV_EMU_CACHE")
    return Path(d) if d else Path.home() / ".cache" / "gpuconv-emu"


# ------------------------------------------------------------------------------------------------
# Kernel parameters as the compiler reports them (mirrors gpuemu::ParamInfo in fiber_runtime.h)
# ------------------------------------------------------------------------------------------------

class _ParamInfo(ctypes.Structure):
    _fields_ = [("size", ctypes.c_int), ("is_pointer", ctypes.c_int), ("is_float", ctypes.c_int),
                ("is_integral", ctypes.c_int), ("is_bool", ctypes.c_int), ("pointee_size", ctypes.c_int),
                ("pointee_float", ctypes.c_int), ("pointee_integral", ctypes.c_int),
                ("type_name", ctypes.c_char_p)]


_TYPE_NAME = re.compile(r"\[with T = (.*)\]$")


class Param:
    """One kernel parameter: size and kind from the compiler's view of the function type."""

    __slots__ = ("size", "is_pointer", "kind", "pointee_size", "pointee_kind", "type")

    def __init__(self, info: _ParamInfo):
        self.size = info.size
        self.is_pointer = bool(info.is_pointer)
        # 'f' floating point, 'i' integral (bool and enums too), 'o' other (structs...), 'p' pointer
        self.kind = "p" if info.is_pointer else "f" if info.is_float else "i" if info.is_integral else "o"
        self.pointee_size = info.pointee_size
        self.pointee_kind = "f" if info.pointee_float else "i" if info.pointee_integral else None
        m = _TYPE_NAME.search((info.type_name or b"").decode())
        self.type = m.group(1) if m else "?"

    def describe(self) -> str:
        if self.is_pointer:
            return "a pointer"
        art = "an" if self.size in (8, 11, 18) else "a"
        what = {"f": "float", "i": "integer", "o": "value"}[self.kind]
        if self.type == "bool":
            what = "bool"
        return f"{art} {self.size}-byte {what}"

    def __repr__(self):
        return f"Param({self.type}, {self.size} bytes)"


_ARRAY_KIND = {"f": "f", "i": "i", "u": "i", "b": "i"}  # numpy dtype.kind -> Param kind
_pack_q = struct.Struct("<Q").pack_into
_pack_q_signed = struct.Struct("<q").pack_into
_pack_d = struct.Struct("<d").pack_into


def _describe(a) -> str:
    """What CuPy would make of a kernel argument, for messages."""
    if isinstance(a, numpy.ndarray):
        return f"numpy.ndarray of dtype {a.dtype} (passed as a pointer)"
    if isinstance(a, numpy.generic):
        return f"numpy.{a.dtype.name} ({a.dtype.itemsize} bytes)"
    if isinstance(a, int):
        return f"Python {type(a).__name__} (passed as 8-byte long long by CuPy)"
    if isinstance(a, float):
        return "Python float (passed as 8-byte double by CuPy)"
    if isinstance(a, complex):
        return "Python complex (passed as 16-byte complex128 by CuPy)"
    return type(a).__name__


def _slot_size(size: int) -> int:
    """Bytes of one argument slot: the parameter's size rounded up to 16 (at least 16)."""
    return max(16, (size + 15) // 16 * 16)


def slot_layout(sizes) -> tuple[list[int], int]:
    """Where each argument goes in the launch buffer, from the parameter sizes: (offsets, total bytes).
    Each parameter starts at a multiple of 16 and takes its size rounded up to 16; the buffer holds at least
    one slot. gpuemu_launch in fiber_runtime.h computes the same layout from the same sizes (and rejects a
    buffer of another length)."""
    offsets, off = [], 0
    for size in sizes:
        offsets.append(off)
        off += _slot_size(size)
    return offsets, max(16, off)


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------

def _dims(value, what: str, limits) -> tuple[int, int, int]:
    if type(value) is int and 1 <= value <= limits[0]:  # fast path
        return value, 1, 1
    if isinstance(value, (tuple, list)):
        if not 1 <= len(value) <= 3:
            raise ValueError(f"{what} must have 1 to 3 dimensions, got {value!r}")
        items = list(value)
    else:
        items = [value]
    try:
        dims = [operator.index(v) for v in items]
    except TypeError:
        raise TypeError(f"{what} must be an int or a tuple of 1-3 ints, got {value!r}") from None
    dims += [1] * (3 - len(dims))
    for axis, (d, lim) in enumerate(zip(dims, limits)):
        if not 1 <= d <= lim:
            raise ValueError(f"invalid configuration argument (cudaErrorInvalidConfiguration): {what} "
                             f"{tuple(dims)}: dimension {'xyz'[axis]} = {d} is outside [1, {lim}]")
    return dims[0], dims[1], dims[2]


class EmuKernel:
    """A compiled kernel, callable like ``cupy.RawKernel`` / ``cupy.cuda.Function``:
    ``k(grid, block, args, shared_mem=0, stream=None)``."""

    max_threads_per_block = MAX_THREADS_PER_BLOCK  # __launch_bounds__ is not seen by the emulator

    def __init__(self, module: "EmuModule", index: int, *, reverse_threads: bool = False):
        self.module = module
        self.index = index
        self.name: str = module.name_expressions[index]
        self.params: list[Param] = module._params[index]
        self._offsets, self._argbytes = slot_layout(p.size for p in self.params)
        self.reverse_threads = reverse_threads
        self.max_dynamic_shared_size_bytes = DEFAULT_DYNAMIC_SHARED

    def __repr__(self):
        return f"<EmuKernel {self.name}({', '.join(p.type for p in self.params)})>"

    def __setattr__(self, key, value):
        if key == "max_dynamic_shared_size_bytes" and not 0 <= value <= MAX_DYNAMIC_SHARED_OPT_IN:
            raise ValueError(f"max_dynamic_shared_size_bytes={value} exceeds the {MAX_DYNAMIC_SHARED_OPT_IN} "
                             "bytes any GPU allows")
        object.__setattr__(self, key, value)

    # -- argument marshalling (CuPy's rules, then a check against the real parameter) -------------
    def _marshal(self, args) -> bytearray:
        """The argument values packed in their slots (``slot_layout``), after checking each against its
        parameter."""
        if type(args) is not tuple and not isinstance(args, (tuple, list)):
            raise TypeError(f"{self.name}: args must be a tuple, got {type(args).__name__}")
        params = self.params
        if len(args) != len(params):
            sig = ", ".join(p.type for p in params)
            raise TypeError(f"{self.name}: kernel takes {len(params)} argument(s) ({sig}), got {len(args)}")
        buf = bytearray(self._argbytes)
        offsets = self._offsets
        for i, a in enumerate(args):
            p = params[i]
            off = offsets[i]
            t = type(a)
            if t is numpy.ndarray or isinstance(a, numpy.ndarray):
                if p.kind == "o":
                    # A struct parameter: CuPy passes a one-element numpy.ndarray BY VALUE, its raw bytes
                    # becoming the parameter, without looking at the dtype; a wrong size is garbage on a GPU.
                    self._struct_bytes(i, p, a, buf, off)
                    continue
                if not p.is_pointer:
                    self._bad(i, p, f"numpy.ndarray of dtype {a.dtype} (passed as a pointer)")
                if a.dtype.names is not None:
                    raise TypeError(f"{self.name} argument {i}: kernel takes a pointer ({p.type}), got numpy.ndarray "
                                    f"of structured dtype {a.dtype} (a struct passed by value, not an array)")
                if p.pointee_size:
                    dt = a.dtype
                    if dt.itemsize != p.pointee_size or _ARRAY_KIND.get(dt.kind) != p.pointee_kind:
                        raise TypeError(f"{self.name} argument {i}: kernel takes a pointer to {p.pointee_size}-byte "
                                        f"{'float' if p.pointee_kind == 'f' else 'integer'} elements ({p.type}), "
                                        f"got numpy.ndarray of dtype {dt}")
                _pack_q(buf, off, a.ctypes.data)
            elif a is None:
                raise TypeError(f"{self.name} argument {i}: None is not a NULL pointer in CuPy (it passes an "
                                "arbitrary address, cupy/cupy#9046); pass a real array")
            elif p.is_pointer:
                self._bad(i, p, _describe(a))
            elif t in _CUPY_SCALAR_TYPES:
                dt = a.dtype
                if dt.itemsize != p.size or (p.kind != "o" and _ARRAY_KIND.get(dt.kind) != p.kind):
                    self._bad(i, p, _describe(a))
                buf[off:off + dt.itemsize] = a.tobytes()
            elif t is int or t is bool or isinstance(a, int):
                # CuPy tests isinstance(x, int) first, so bool goes this way too: numpy.int64, 8 bytes.
                if p.size != 8 or p.kind == "f":
                    self._bad(i, p, _describe(a))
                try:
                    _pack_q_signed(buf, off, a)
                except struct.error:
                    raise OverflowError(f"{self.name} argument {i}: Python int {a} does not fit the 64-bit "
                                        "long long CuPy passes it as") from None
            elif t is float or isinstance(a, float):
                if p.size != 8 or p.kind == "i":
                    self._bad(i, p, _describe(a))
                _pack_d(buf, off, a)
            elif isinstance(a, complex):
                if p.size != 16 or p.kind != "o":
                    self._bad(i, p, _describe(a))
                struct.pack_into("<dd", buf, off, a.real, a.imag)
            else:
                raise TypeError(f"{self.name} argument {i}: CuPy cannot pass {t.__module__}.{t.__name__} to a kernel")
        return buf

    def _struct_bytes(self, i: int, p: Param, a: numpy.ndarray, buf: bytearray, off: int) -> None:
        """Copy a one-element array's bytes into struct parameter i's slot, after checking its size."""
        dt = a.dtype
        what = f"numpy.ndarray of dtype {dt} ({dt.itemsize} bytes per element, {a.size} element(s))"
        if a.size != 1:
            raise TypeError(f"{self.name} argument {i}: kernel takes a {p.size}-byte struct by value (C++ parameter "
                            f"type: {p.type}), got {what}; CuPy passes only a one-element numpy.ndarray by value")
        if dt.hasobject or dt.itemsize != p.size:
            raise TypeError(f"{self.name} argument {i}: kernel takes a {p.size}-byte struct by value (C++ parameter "
                            f"type: {p.type}), got {what}: CuPy would pass its {dt.itemsize} bytes unchecked and "
                            "the kernel would read garbage")
        buf[off:off + p.size] = a.tobytes()

    def _bad(self, i, p: Param, got: str):
        raise TypeError(f"{self.name} argument {i}: kernel takes {p.describe()}, got {got} "
                        f"(C++ parameter type: {p.type})")

    def __call__(self, grid, block, args, shared_mem=0, stream=None, enable_cooperative_groups=False):
        if enable_cooperative_groups:
            raise NotImplementedError("cooperative launches are not supported by the emulator")
        g = _dims(grid, "grid", MAX_GRID)
        b = _dims(block, "block", MAX_BLOCK)
        if b[0] * b[1] * b[2] > MAX_THREADS_PER_BLOCK:
            raise ValueError(f"invalid configuration argument (cudaErrorInvalidConfiguration): block {b} has "
                             f"{b[0] * b[1] * b[2]} threads, more than {MAX_THREADS_PER_BLOCK}")
        shared_mem = operator.index(shared_mem)
        if shared_mem < 0:
            raise ValueError(f"shared_mem={shared_mem} is negative")
        if shared_mem > self.max_dynamic_shared_size_bytes:
            raise ValueError(f"{self.name}: shared_mem={shared_mem} bytes exceeds max_dynamic_shared_size_bytes="
                             f"{self.max_dynamic_shared_size_bytes} (a GPU launch fails with "
                             "CUDA_ERROR_INVALID_VALUE)")
        buf = self._marshal(args)
        lib = self.module._lib
        if lib.gpuemu_launch(self.index, g[0], g[1], g[2], b[0], b[1], b[2], shared_mem, bytes(buf), len(buf),
                             1 if self.reverse_threads else 0) != 0:
            raise RuntimeError(f"{self.name} grid {g} block {b}: {lib.gpuemu_last_error().decode(errors='replace')}")


# ------------------------------------------------------------------------------------------------
# Modules: compile (or find in the cache) and load
# ------------------------------------------------------------------------------------------------

class EmuModule:
    """One kernel source compiled with all its name expressions (a ``cupy.RawModule`` look-alike)."""

    def __init__(self, path: Path, source: Path, name_expressions, from_cache: bool):
        self.path = path
        self.source = source
        self.name_expressions = list(name_expressions)
        self.from_cache = from_cache
        lib = ctypes.CDLL(str(path), mode=os.RTLD_LOCAL | getattr(os, "RTLD_NOW", 2))
        lib.gpuemu_abi_version.restype = ctypes.c_int
        if lib.gpuemu_abi_version() != _ABI:
            raise RuntimeError(f"{path}: emulator ABI mismatch")
        lib.gpuemu_count.restype = ctypes.c_int
        lib.gpuemu_name.restype = ctypes.c_char_p
        lib.gpuemu_name.argtypes = [ctypes.c_int]
        lib.gpuemu_nparams.restype = ctypes.c_int
        lib.gpuemu_nparams.argtypes = [ctypes.c_int]
        lib.gpuemu_params.restype = ctypes.POINTER(_ParamInfo)
        lib.gpuemu_params.argtypes = [ctypes.c_int]
        lib.gpuemu_config.restype = ctypes.c_char_p
        lib.gpuemu_launch.restype = ctypes.c_int
        lib.gpuemu_launch.argtypes = [ctypes.c_int] + [ctypes.c_uint] * 6 + [ctypes.c_size_t, ctypes.c_char_p,
                                                                              ctypes.c_size_t, ctypes.c_int]
        lib.gpuemu_last_error.restype = ctypes.c_char_p
        lib.gpuemu_bench_switch.restype = ctypes.c_double
        lib.gpuemu_bench_switch.argtypes = [ctypes.c_int, ctypes.c_int]
        self._lib = lib
        if lib.gpuemu_count() != len(self.name_expressions):
            raise RuntimeError(f"{path}: holds {lib.gpuemu_count()} kernels, expected {len(self.name_expressions)}")
        self._params = []
        for k in range(len(self.name_expressions)):
            infos = lib.gpuemu_params(k)
            self._params.append([Param(infos[i]) for i in range(lib.gpuemu_nparams(k))])
        self.config = lib.gpuemu_config().decode()
        self._kernels: dict[str, EmuKernel] = {}

    def get_function(self, name_expression: str, *, reverse_threads: bool = False) -> EmuKernel:
        try:
            index = self.name_expressions.index(name_expression)
        except ValueError:
            raise KeyError(f"{name_expression!r} is not among the name expressions {self.source.name} was "
                           f"compiled with: {self.name_expressions}") from None
        return EmuKernel(self, index, reverse_threads=reverse_threads)

    def bench_switch(self, nfibers: int = 256, rounds: int = 2000) -> float:
        """Nanoseconds per fiber switch: nfibers fibers of one block passing `rounds` barriers."""
        return self._lib.gpuemu_bench_switch(nfibers, rounds)


_WRAPPER = """\
// Generated by tests/emulator (compile_module) for {source_name}; do not edit.
// Compiled with -include cuda_compat.h; one translation unit: kernel source, runtime, kernel table.
#include "{source}"
#include "fiber_runtime.h"

const gpuemu::Entry gpuemu_entries[] = {{
{entries}
}};
const int gpuemu_nentries = {count};
"""


def _c_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _compiler() -> tuple[str, str]:
    cxx = os.environ.get("CXX", "g++")
    exe = shutil.which(cxx)
    if exe is None:
        raise RuntimeError(f"the emulator needs a C++ compiler: {cxx!r} not found (set CXX)")
    st = os.stat(exe)  # follows symlinks: a compiler upgrade changes the key
    return exe, f"{os.path.realpath(exe)}:{st.st_size}:{st.st_mtime_ns}"


def _key_files(dirs) -> list[Path]:
    files = []
    for d in dirs:
        for pat in ("*.cu", "*.cuh", "*.h", "*.hpp", "*.inc"):
            files.extend(sorted(Path(d).glob(pat)))
    return files


def compile_module(source_path, name_expressions, include_dirs=(), flags=()) -> EmuModule:
    """Compile one ``.cu`` file with g++ for the emulator, instantiating each name expression, or load it
    from the on-disk cache (keyed by every header/source in the source's folder and the include dirs,
    the harness's own files, the flags, the name expressions and the compiler)."""
    global _compile_count
    source = Path(source_path).resolve()
    names = list(name_expressions)
    if not names:
        raise ValueError(f"{source.name}: no name expressions to compile")
    if not source.is_file():
        raise FileNotFoundError(source)
    inc = [Path(d).resolve() for d in include_dirs]
    exe, compiler_id = _compiler()
    all_flags = list(BASE_FLAGS) + [str(f) for f in flags]

    h = hashlib.sha256()
    for part in (f"abi{_ABI}", source.name, compiler_id, "\0".join(all_flags), "\0".join(names)):
        h.update(part.encode() + b"\1")
    for f in _key_files([source.parent, *inc]) + [HERE / n for n in _HARNESS_FILES]:
        h.update(f.name.encode() + b"\2" + f.read_bytes() + b"\3")
    digest = h.hexdigest()[:24]
    cache = cache_dir()
    so_path = cache / f"{source.stem}-{digest}.so"

    with _compile_lock:
        mod = _loaded.get(str(so_path))
        if mod is not None:
            return mod
        from_cache = so_path.is_file()
        if not from_cache:
            cache.mkdir(parents=True, exist_ok=True)
            entries = ",\n".join(f"    gpuemu::describe({_c_string(n)}, &{n})" for n in names)
            text = _WRAPPER.format(source_name=source.name, source=str(source).replace("\\", "\\\\").replace('"', '\\"'),
                                   entries=entries, count=len(names))
            tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            cpp = cache / f"{source.stem}-{digest}.cpp"
            tmp_cpp = cache / f".{source.stem}-{digest}.{tag}.cpp"
            tmp_so = cache / f".{source.stem}-{digest}.{tag}.so"
            tmp_cpp.write_text(text)
            os.replace(tmp_cpp, cpp)  # kept next to the .so for debugging
            cmd = [exe, *all_flags, *[f"-I{d}" for d in inc], f"-I{HERE}", "-include", str(HERE / "cuda_compat.h"),
                   "-o", str(tmp_so), str(cpp)]
            _compile_count += 1
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tmp_so.unlink(missing_ok=True)
                raise RuntimeError(f"g++ failed to compile {source} for the CPU emulator:\n$ {shlex.join(cmd)}\n"
                                   f"{proc.stderr}")
            os.replace(tmp_so, so_path)  # atomic: concurrent pytest workers see all or nothing
        mod = EmuModule(so_path, source, names, from_cache)
        _loaded[str(so_path)] = mod
        return mod


# ------------------------------------------------------------------------------------------------
# The runtime the launch code talks to
# ------------------------------------------------------------------------------------------------

class EmulatedRuntime:
    """Stands in for gpuconv._cuda.runtime.CupyRuntime: arrays are NumPy arrays, kernels run on the CPU."""

    xp = numpy
    name = "emulated"

    def __init__(self, kernels_dir, instantiations, *, reverse_threads=False, sanitize=False, extra_flags=()):
        self.kernels_dir = Path(kernels_dir).resolve()
        self.instantiations = {src: list(names) for src, names in instantiations.items()}
        self.reverse_threads = bool(reverse_threads)
        self.sanitize = bool(sanitize)
        if self.sanitize and not asan_preloaded():
            raise RuntimeError(
                "EmulatedRuntime(sanitize=True) loads AddressSanitizer-instrumented kernels, which needs libasan "
                "in the process from the start; run e.g.\n"
                "  LD_PRELOAD=$(g++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 "
                "python3 -m pytest ...")
        self.flags = tuple(extra_flags) + (SANITIZE_FLAGS if self.sanitize else ())
        self._lock = threading.Lock()
        self._modules: dict[str, EmuModule] = {}
        self._kernels: dict[tuple[str, str], EmuKernel] = {}

    def module(self, source: str) -> EmuModule:
        with self._lock:
            mod = self._modules.get(source)
            if mod is None:
                if source not in self.instantiations:
                    raise KeyError(f"no instantiations listed for kernel source {source!r}")
                mod = compile_module(self.kernels_dir / source, self.instantiations[source],
                                     include_dirs=(self.kernels_dir,), flags=self.flags)
                self._modules[source] = mod
            return mod

    def function(self, source: str, name_expression: str) -> EmuKernel:
        k = self._kernels.get((source, name_expression))
        if k is None:
            k = self.module(source).get_function(name_expression, reverse_threads=self.reverse_threads)
            self._kernels[(source, name_expression)] = k
        return k

    def synchronize(self):
        pass

    # The rest of gpuconv._cuda.runtime.Runtime: no device to describe and no clock to time kernels by.
    can_time = False  # algo='auto' takes the documented heuristic (the autotuner never measures)

    def compute_capability(self):
        """None: no GPU, so no algorithm is declined for the device (every kernel runs on the CPU)."""
        return None

    def device_key(self) -> str:
        return self.name

    def time_ms(self, fn, repeats: int) -> float:
        raise NotImplementedError("the emulator cannot time kernels (can_time is False)")


def run_script_under_asan(script: str, root, timeout: int = 900):
    """Run ``python -c script root`` in a child process with AddressSanitizer preloaded (an ASan build can
    only be loaded into a process that started with libasan), for ``sanitize=True`` runtimes. Skips the
    calling test where g++ or libasan is missing; returns the CompletedProcess (text stdout/stderr)."""
    import pytest
    try:
        lib = subprocess.run([os.environ.get("CXX", "g++"), "-print-file-name=libasan.so"], capture_output=True,
                             text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"no compiler to ask for libasan: {exc}")
    if not os.path.isabs(lib) or not os.path.exists(lib):
        pytest.skip("libasan.so not found (g++ -print-file-name=libasan.so)")
    env = dict(os.environ, LD_PRELOAD=lib, ASAN_OPTIONS="detect_leaks=0")
    return subprocess.run([sys.executable, "-c", script, str(root)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=timeout)
