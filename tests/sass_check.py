"""A performance signal without a GPU: the SASS of the GEMM-style kernels, main loop by main loop.

Compiles the GEMM-style kernel sources (every ``kernels/*.cu`` that includes ``gemm_tile.cuh``:
``conv2d_igemm.cu``, ``conv2d_gemm1x1.cu``, ``conv2d_igemm_tc.cu``, ``conv2d_backward_filter.cu``,
``conv1d_igemm.cu``, ``conv3d_igemm.cu`` (found by ``gemm_sources``, not listed); every instantiation of
``gpuconv._cuda.ops.INSTANTIATIONS``, all dtypes) with NVRTC for real architectures (``sm_90``,
``sm_80``) through ``tests/nvrtc_check.py``, disassembles the CUBIN with ``nvdisasm`` (or ``cuobjdump
-sass``), finds each kernel's main loop and reports what a profiler would show about its instruction mix.
``tests/test_sass.py`` turns the figures into a CI check against the floors committed in
``tests/sass_floors.json``.

Usage::

    python -m tests.sass_check                        # every GEMM source, sm_90 and sm_80: the table
    python -m tests.sass_check --arch sm_90 --source conv2d_igemm.cu
    python -m tests.sass_check --loop "float, 128"    # also print the main loop's SASS of matching kernels
    python -m tests.sass_check --json report.json     # every figure, machine-readable
    python -m tests.sass_check --readme               # the README's algorithm-table figures (markdown)
    python -m tests.sass_check --update-readme        # ... written into README.md between its sass markers
    python -m tests.sass_check --write-floors         # rewrite tests/sass_floors.json from today's figures
    python -m tests.sass_check --source conv2d_igemm.cu --write-floors --merge   # ... one source's only

How the main loop is found
--------------------------
The disassembly (``nvdisasm -c``: labels for branch targets, ``BRX`` jump tables annotated with their
targets) is split per function (one ``.text.<kernel>`` section; the compiler's internal subroutines such
as ``__cuda_sm20_div_s64`` live in the same section, after the kernel's ``EXIT``, and are reached by
``CALL``). Basic blocks and their edges follow from the branches (``BRA``/``BRX`` targets, fall-through
unless the block ends in an unpredicated ``BRA``/``BRX``/``EXIT``/``RET``; a ``CALL`` has an edge to its
target and, as it returns, falls through; ``RET`` has no successor; ptxas also uses a ``CALL`` to a local
label with a ``RET`` as a reconvergence idiom on sm_80, whose code is then reached through the call edge).
Dominators (Cooper-Harvey-Kennedy) give the back edges ``u -> h`` (``h`` dominates ``u``), and each back edge
its natural loop (``h`` plus every block that reaches ``u`` without passing ``h``); loops with the same
header are one loop. The **main loop** is, of the innermost loops that do work (loops with FMA-class
instructions and no such loop nested inside them), the one with the most FMA-class instructions
(tensor-core kernels: the most MMA instructions), and of those the one with the fewest instructions. In
these kernels that is the slice loop of ``gemm_slices`` in ``kernels/gemm_tile.cuh``: one iteration
computes one BK slice from shared memory and fetches / stages the next (the enclosing grid-stride tile loop
holds it and the epilogue, whose activations bring FFMAs of their own). ``versions`` counts the innermost
loops with that same count: more than one means the compiler duplicated the main loop (e.g. unswitched on
``vec_w``); the figures are then those of the smallest one.

What is reported per kernel (``KernelReport``)
----------------------------------------------
* ``instructions``: static instructions in the main loop's blocks, i.e. instructions per iteration when
  every branch inside the body is taken once (the body of these loops is one long block plus a few
  branches around the next slice's fetch / stage); ``path``: the instructions on the longest path through
  one iteration (header to a back edge, inner loops' back edges dropped), the most one iteration can
  execute when the body holds alternatives (if / else) that exclude each other;
* ``fma`` / ``fma_share``: FFMA / DFMA / HFMA2 (an ``HFMA2 Rd, -RZ, RZ, ...`` is ptxas's way to move a
  constant and is not counted) and their share of ``instructions``, in percent; ``mma`` (HMMA, IMMA, DMMA,
  HGMMA), ``mma_share`` and ``non_mma_per_mma`` = (instructions - mma) / mma for tensor-core kernels;
* ``lds``: shared-memory loads by width in bits (``LDS.U8``/``.U16`` 8/16, plain ``LDS`` 32, ``LDS.64``,
  ``LDS.128``), ``ldsm`` (``LDSM``, ldmatrix), ``sts`` (shared stores), ``ldg`` (global loads, ``LDGSTS``
  included), ``bar`` (barriers), ``idiv`` (``I2F.RP``: the reciprocal step that starts each 32-bit integer
  division or modulo by a run-time value, some 20-30 instructions each), ``calls`` (the compiler's
  subroutines that the loop calls, e.g. ``__cuda_sm20_div_s64`` for a 64-bit division: their instructions
  run per iteration too but are not in the count);
* ``categories``: every main-loop instruction in one class (``CATEGORIES``): where the non-FMA work is;
* ``local``: ``LDL``/``STL`` anywhere in the kernel's section (local memory: spills or local arrays),
  with ptxas's stack frame / spill bytes and the register count from ``nvrtc_check``.

Floors
------
``tests/sass_floors.json`` holds, per source, kernel (its name expression in the registry), architecture and
NVRTC major (``nvrtc12`` / ``nvrtc13``: CI runs the check with both, as cupy-cuda12x and cupy-cuda13x
compile with them), a floor on the main loop's FMA share (``fma_share_min``, percent) or, for tensor-core
kernels, a ceiling on its non-MMA instructions per MMA (``non_mma_per_mma_max``). ``check_floor`` fails a
kernel below its floor, with local memory, or without an entry. To raise the floors after a kernel got
faster (or to add a new kernel's)::

    python -m tests.sass_check --write-floors
    GPUCONV_NVRTC_LIBRARY=$(python -m tests.nvrtc_check --find 13) python -m tests.sass_check --write-floors --merge

(the first run, with NVRTC 12, rewrites the file; the second adds NVRTC 13's entries), then commit the file
with the new table in the README. A floor is only ever lowered on purpose, with the reason in the commit.

Tools
-----
``nvdisasm`` and ``cuobjdump`` come from the pip wheels ``nvidia-cuda-nvdisasm`` and
``nvidia-cuda-cuobjdump`` (the project's ``compile-check`` extra; CUDA 13 wheels, which disassemble the
CUBINs of NVRTC 12.9 and 13.x for sm_75..sm_120 alike; the nvdisasm warning "Disassembling Std Elf to Old
format ..." on NVRTC 12 CUBINs is harmless). They are looked for at ``$GPUCONV_NVDISASM`` /
``$GPUCONV_CUOBJDUMP`` (full paths), in the wheels' layout (``site-packages/nvidia/cu13/bin``, and the
``nvidia/cuda_nvdisasm/bin`` / ``nvidia/cuda_cuobjdump/bin`` layout of older wheels), on ``PATH``, then in
``$CUDA_PATH``/``$CUDA_HOME``/``/usr/local/cuda`` ``bin``. ``nvdisasm`` is the one used: its labels and
annotated ``BRX`` targets give the control flow exactly; ``cuobjdump -sass`` prints branch targets as
addresses and ``BRX`` without targets (blocks only reachable through a jump table become extra roots), so it
is a fallback (``--tool cuobjdump``) that finds the same main loops here.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from tests import nvrtc_check as nv

__all__ = [
    "ARCHS", "CATEGORIES", "FLOORS_PATH", "Block", "Function", "Instruction", "KernelReport",
    "Loop", "ToolUnavailable", "analyze_function", "analyze_source", "basic_blocks", "categorize",
    "check_floor", "disassemble", "find_loops", "find_tool", "floor_for", "gemm_sources", "is_fma", "is_mma",
    "is_reduction", "kernel_name", "load_floors", "main_loop", "measured_floor", "parse_sass", "shared_load_width",
    "tile_label", "update_readme",
    "tools_available",
]

ARCHS = ("sm_90", "sm_80")  # Hopper (H100/H200) and Ampere (A100): the GPUs the tiles are sized for
FLOORS_PATH = Path(__file__).with_name("sass_floors.json")
# --write-floors sets each floor this far from today's figure: FMA share less FMA_SHARE_MARGIN percentage
# points (rounded down to 0.1), non-MMA instructions per MMA times 1 + NON_MMA_PER_MMA_MARGIN (rounded up to
# 0.1; 3 % is about what 1 point of FMA share is to a loop at 35-60 %). Compiler noise (a few instructions
# between NVRTC releases) passes, a real drop does not.
FMA_SHARE_MARGIN = 1.0
NON_MMA_PER_MMA_MARGIN = 0.03


class ToolUnavailable(RuntimeError):
    """nvdisasm / cuobjdump could not be found or run."""


# --------------------------------------------------------------------------------------------------
# Finding the tools


def _tool_candidates(name: str) -> list[str]:
    env = os.environ.get(f"GPUCONV_{name.upper()}")
    if env:
        return [env]  # an explicit choice is not second-guessed
    found: list[str] = []
    for root in nv.nvidia_wheel_dirs():
        for pattern in (f"cu13/bin/{name}", f"cu1*/bin/{name}", f"cuda_{name}/bin/{name}", f"*/bin/{name}"):
            for path in sorted(glob.glob(os.path.join(root, pattern))):
                if path not in found:
                    found.append(path)
    which = shutil.which(name)
    if which:
        found.append(which)
    for var in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(var):
            found.append(os.path.join(os.environ[var], "bin", name))
    found.append(os.path.join("/usr/local/cuda/bin", name))
    return found


@functools.lru_cache(maxsize=None)
def find_tool(name: str) -> str:
    """The path of ``nvdisasm`` or ``cuobjdump`` (see the module docstring for the search order)."""
    for path in _tool_candidates(name):
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise ToolUnavailable(
        f"{name} not found (looked at: {', '.join(_tool_candidates(name))}); install it with `pip install "
        f"nvidia-cuda-{name}` (the project's `compile-check` extra) or point GPUCONV_{name.upper()} at it")


@functools.lru_cache(maxsize=None)
def tool_version(name: str) -> str:
    """``"13.5.37"``-style release of the tool (from ``--version``)."""
    out = subprocess.run([find_tool(name), "--version"], capture_output=True, text=True, timeout=60)
    m = re.search(r"V(\d+\.\d+\.\d+)", out.stdout)
    return m.group(1) if m else out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "?"


def tools_available(names: Sequence[str] = ("nvdisasm", "cuobjdump")) -> tuple[bool, str]:
    """``(True, "")`` when every tool is found and answers ``--version``, else ``(False, why)``."""
    for name in names:
        try:
            tool_version(name)
        except (ToolUnavailable, OSError, subprocess.SubprocessError) as exc:
            return False, f"{name}: {exc}"
    return True, ""


# --------------------------------------------------------------------------------------------------
# Parsing the disassembly


@dataclasses.dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str          # with modifiers: "LDS.128", "FFMA.FTZ", "HMMA.1684.F32.TF32"
    operands: str = ""   # as printed, without the trailing ';' and annotations
    predicate: str = ""  # "@P0", "@!P1", "" when none
    targets: tuple = ()  # branch targets: label names (nvdisasm) or addresses (cuobjdump), resolved later

    @property
    def base(self) -> str:
        return self.opcode.split(".", 1)[0]

    @property
    def conditional(self) -> bool:
        return bool(self.predicate) and self.predicate not in ("@PT", "@UPT")

    def __str__(self) -> str:
        pred = f"{self.predicate} " if self.predicate else ""
        return f"/*{self.address:04x}*/ {pred}{self.opcode} {self.operands}".rstrip()


@dataclasses.dataclass
class Function:
    """The code of one ``.text.<name>`` section: the kernel and the internal subroutines it calls."""

    name: str
    instructions: list[Instruction]
    labels: dict[str, int] = dataclasses.field(default_factory=dict)  # label -> address it marks

    def index_of(self, address: int) -> int | None:
        lookup = getattr(self, "_index", None)
        if lookup is None:
            lookup = self._index = {ins.address: i for i, ins in enumerate(self.instructions)}
        return lookup.get(address)


_SECTION = re.compile(r"^//-+\s*\.text\.(\S+)\s*-+\s*$")
_CUOBJDUMP_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)\s*$")
_LABEL = re.compile(r"^\s*([.$A-Za-z_][\w.$@]*):\s*(?://.*)?$")
_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-fA-F]+)\*/\s+(.*)$")
_PRED = re.compile(r"^(@!?U?P(?:T|\d+))\s+")
_OPCODE = re.compile(r"^([A-Z][A-Z0-9_]*(?:\.[A-Za-z0-9_]+)*)\s*(.*)$")
_ANNOTATION = re.compile(r"\(\*\"?([^*]*?)\"?\*\)")
_ENCODING = re.compile(r"/\*\s*0x[0-9a-fA-F]+\s*\*/")
_LABEL_REF = re.compile(r"`\(([^)]+)\)")


def _parse_instruction(address: int, rest: str) -> Instruction | None:
    annotations = _ANNOTATION.findall(rest)
    rest = _ENCODING.sub("", _ANNOTATION.sub("", rest)).strip()
    rest = rest.rstrip(";").strip()
    pred = ""
    if m := _PRED.match(rest):
        pred, rest = m.group(1), rest[m.end():]
    m = _OPCODE.match(rest)
    if not m:
        return None
    opcode, operands = m.group(1), m.group(2).strip().rstrip(";").strip()
    base = opcode.split(".", 1)[0]
    targets: tuple = ()
    if base in ("BRA", "BRX", "JMP", "JMX", "CALL", "BSSY", "BREAK", "BPT"):
        refs = _LABEL_REF.findall(operands)
        for note in annotations:
            if note.startswith("BRANCH_TARGETS"):
                refs += [t.strip() for t in note[len("BRANCH_TARGETS"):].split(",") if t.strip()]
        if not refs and base in ("BRA", "JMP", "CALL", "BSSY"):  # cuobjdump: an absolute address
            addr = re.findall(r"(?<![\w\]])0x([0-9a-fA-F]+)\b", operands)
            if addr:
                refs = [int(addr[-1], 16)]
        targets = tuple(refs)
    return Instruction(address, opcode, operands, pred, targets)


def parse_sass(text: str) -> dict[str, Function]:
    """Functions of ``nvdisasm -c`` or ``cuobjdump -sass`` output, by (mangled) name, in order.

    Label references are resolved to addresses (``Instruction.targets`` then holds ints). A label names the
    address of the next instruction; kernel and subroutine names are labels too.
    """
    functions: dict[str, Function] = {}
    current: Function | None = None
    pending: list[str] = []
    for line in text.splitlines():
        if (m := _SECTION.match(line)) or (m := _CUOBJDUMP_FUNCTION.match(line)):
            current = functions.setdefault(m.group(1), Function(m.group(1), []))
            pending = []
            continue
        if current is None:
            continue
        if m := _INSTRUCTION.match(line):
            ins = _parse_instruction(int(m.group(1), 16), m.group(2))
            if ins is None:
                continue
            for label in pending:
                current.labels[label] = ins.address
            pending = []
            current.instructions.append(ins)
        elif m := _LABEL.match(line):
            pending.append(m.group(1))
    for fn in functions.values():
        resolved = []
        for ins in fn.instructions:
            if ins.targets:
                ins = dataclasses.replace(
                    ins, targets=tuple(fn.labels.get(t, -1) if isinstance(t, str) else t for t in ins.targets))
            resolved.append(ins)
        fn.instructions = resolved
    return functions


def disassemble(cubin: bytes, tool: str = "nvdisasm") -> dict[str, Function]:
    """Disassemble a CUBIN with ``nvdisasm -c`` (default) or ``cuobjdump -sass``."""
    path = find_tool(tool)
    with tempfile.TemporaryDirectory(prefix="gpuconv-sass-") as tmp:
        cubin_path = os.path.join(tmp, "module.cubin")
        with open(cubin_path, "wb") as f:
            f.write(cubin)
        argv = [path, "-c", cubin_path] if tool == "nvdisasm" else [path, "-sass", cubin_path]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr.strip()}")
    functions = parse_sass(out.stdout)
    if not functions:
        raise RuntimeError(f"{tool} printed no function: {out.stderr.strip() or out.stdout[:500]}")
    return functions


# --------------------------------------------------------------------------------------------------
# Classifying instructions

# Classes of categorize(), in report order.
CATEGORIES = ("fma", "mma", "shared", "global", "local", "int", "uniform", "pred", "select", "move", "convert",
              "float", "control", "other")


def is_move_hfma2(ins: Instruction) -> bool:
    """``HFMA2[.MMA] Rd, -RZ, RZ, a, b``: ptxas's way to put a constant into a register (0 * 0 + constant)."""
    ops = [o.strip() for o in ins.operands.split(",")]
    return ins.base == "HFMA2" and len(ops) >= 3 and ops[1].lstrip("-|") in ("RZ",) and ops[2].lstrip("-|") == "RZ"


def is_fma(ins: Instruction) -> bool:
    """A floating-point fused multiply-add on the CUDA cores (FFMA, FFMA2, DFMA, HFMA2; not a move)."""
    return ins.base in ("FFMA", "FFMA2", "DFMA", "HFMA2", "FFMA32I", "HFMA2_32I") and not is_move_hfma2(ins)


def is_mma(ins: Instruction) -> bool:
    """A tensor-core matrix multiply-accumulate (mma.sync: HMMA / IMMA / DMMA; wgmma: HGMMA ...)."""
    return ins.base in ("HMMA", "IMMA", "DMMA", "BMMA", "HGMMA", "IGMMA", "BGMMA", "QGMMA", "UTCHMMA",
                        "UTCQMMA", "UTCIMMA", "OMMA", "QMMA")


def shared_load_width(ins: Instruction) -> int | None:
    """Bits per thread of a shared-memory load (LDS), None when it is no LDS (LDSM is counted apart)."""
    if ins.base != "LDS":
        return None
    mods = ins.opcode.split(".")[1:]
    for mod, bits in (("128", 128), ("64", 64), ("U16", 16), ("S16", 16), ("U8", 8), ("S8", 8)):
        if mod in mods:
            return bits
    return 32


_INT = {"IMAD", "IADD3", "IADD", "IADD32I", "LEA", "SHF", "SHL", "SHR", "LOP3", "LOP", "LOP32I", "IABS", "IMNMX",
        "VIADD", "VIADDMNMX", "IMUL", "IMUL32I", "XMAD", "ISCADD", "BFE", "BFI", "FLO", "POPC", "BREV", "PRMT",
        "IDP", "IDP4A", "IMAD32I", "VIMNMX", "VIMNMX3", "BMSK", "SGXT"}
_PRED_OPS = {"ISETP", "FSETP", "DSETP", "HSETP2", "PSETP", "PLOP3", "P2R", "R2P", "VOTE", "VOTEU", "FCHK"}
_SELECT = {"SEL", "FSEL", "ISEL", "FMNMX", "DMNMX", "HMNMX2"}
_MOVE = {"MOV", "MOV32I", "CS2R", "S2R", "S2UR", "UMOV", "R2UR", "LDC", "ULDC"}
_CONVERT = {"F2F", "F2FP", "F2I", "I2F", "I2I", "I2FP", "F2IP", "FRND", "DFRND"}
_FLOAT = {"FADD", "FMUL", "DADD", "DMUL", "HADD2", "HMUL2", "MUFU", "FMNMX", "FSWZADD", "FADD32I", "FMUL32I"}
_CONTROL = {"BRA", "BRX", "JMP", "JMX", "CALL", "RET", "EXIT", "BSSY", "BSYNC", "WARPSYNC", "BAR", "NOP",
            "DEPBAR", "BMOV", "BREAK", "YIELD", "KILL", "NANOSLEEP", "MEMBAR", "ERRBAR", "CCTL", "ACQBULK",
            "ARRIVES", "SYNCS", "ELECT", "ENDCOLLECTIVE", "WARPGROUP", "BPT"}


def categorize(ins: Instruction) -> str:
    """One of ``CATEGORIES`` for an instruction."""
    op, base = ins.opcode, ins.base
    if is_fma(ins):
        return "fma"
    if is_mma(ins):
        return "mma"
    if base in ("LDS", "LDSM", "STS", "ATOMS", "STSM"):
        return "shared"
    if base in ("LDG", "STG", "LDGSTS", "LDGDEPBAR", "ATOMG", "RED", "LD", "ST", "ATOM", "UTMALDG", "UBLKCP",
                "LDGMC", "UTMASTG"):
        return "global"
    if base in ("LDL", "STL"):
        return "local"
    if op.startswith("IMAD.MOV") or base == "HFMA2" or base in _MOVE:  # (an HFMA2 here is a move)
        return "move"
    if base == "HADD2" and ".F32" in op:  # HADD2.F32 Rd, -RZ, Rh.H0_H0: float16 -> float32
        return "convert"
    if base.startswith("U") and base not in ("UMOV",):  # the uniform datapath (UIADD3, ULDC, USHF, ...)
        return "uniform"
    if base in _INT:
        return "int"
    if base in _PRED_OPS:
        return "pred"
    if base in _SELECT:
        return "select"
    if base in _CONVERT:
        return "convert"
    if base in _FLOAT:
        return "float"
    if base in _CONTROL:
        return "control"
    return "other"


# --------------------------------------------------------------------------------------------------
# Control flow: basic blocks, dominators, natural loops


@dataclasses.dataclass
class Block:
    index: int
    start: int   # first instruction (index into Function.instructions)
    end: int     # one past the last
    succs: list[int] = dataclasses.field(default_factory=list)
    preds: list[int] = dataclasses.field(default_factory=list)

    @property
    def size(self) -> int:
        return self.end - self.start


_ENDS_BLOCK = ("BRA", "BRX", "JMP", "JMX", "EXIT", "RET", "KILL")
_JUMPS = ("BRA", "BRX", "JMP", "JMX", "CALL")  # instructions whose targets are successors (CALL: and falls through)


def basic_blocks(fn: Function) -> list[Block]:
    """The basic blocks of ``fn`` with their edges (see the module docstring)."""
    ins = fn.instructions
    if not ins:
        return []
    leaders = {0}
    label_addresses = set(fn.labels.values())
    for i, x in enumerate(ins):
        if x.address in label_addresses:
            leaders.add(i)
        if (x.base in _ENDS_BLOCK or x.base == "CALL") and i + 1 < len(ins):
            leaders.add(i + 1)
        for t in x.targets:
            if x.base in _JUMPS and isinstance(t, int) and (j := fn.index_of(t)) is not None:
                leaders.add(j)
    starts = sorted(leaders)
    blocks = [Block(k, s, starts[k + 1] if k + 1 < len(starts) else len(ins)) for k, s in enumerate(starts)]
    block_of = {s: k for k, s in enumerate(starts)}
    for b in blocks:
        last = ins[b.end - 1]
        succs: list[int] = []
        if last.base in _JUMPS:
            for t in last.targets:
                j = fn.index_of(t) if isinstance(t, int) else None
                if j is not None and j in block_of:
                    succs.append(block_of[j])
        falls = last.base not in _ENDS_BLOCK or last.conditional
        if falls and b.end < len(ins):
            succs.append(block_of[b.end])
        b.succs = list(dict.fromkeys(succs))
    for b in blocks:
        for s in b.succs:
            blocks[s].preds.append(b.index)
    return blocks


def _dominators(blocks: list[Block], roots: list[int]) -> list[int]:
    """Immediate dominators (Cooper, Harvey, Kennedy: "A Simple, Fast Dominance Algorithm") with a virtual
    root (index -1 in the result's terms: idom of a root is -1) above ``roots``; -2 for unreachable blocks."""
    n = len(blocks)
    order: list[int] = []
    seen = [False] * n
    for root in roots:  # iterative DFS, post-order
        if seen[root]:
            continue
        seen[root] = True
        stack = [(root, iter(blocks[root].succs))]
        while stack:
            node, it = stack[-1]
            nxt = next((s for s in it if not seen[s]), None)
            if nxt is None:
                order.append(node)
                stack.pop()
            else:
                seen[nxt] = True
                stack.append((nxt, iter(blocks[nxt].succs)))
    VROOT = n  # the virtual root, numbered after the blocks
    post = {b: i for i, b in enumerate(order)}
    post[VROOT] = len(order)
    rpo = list(reversed(order))
    idom = [-2] * (n + 1)
    idom[VROOT] = VROOT
    root_set = set(roots)

    def intersect(a: int, b: int) -> int:
        while a != b:
            while post[a] < post[b]:
                a = idom[a]
            while post[b] < post[a]:
                b = idom[b]
        return a

    changed = True
    while changed:
        changed = False
        for b in rpo:
            preds = [p for p in blocks[b].preds if idom[p] != -2 and p in post]
            if b in root_set:
                preds.append(VROOT)
            new = -2
            for p in preds:
                new = p if new == -2 else intersect(p, new)
            if new != -2 and idom[b] != new:
                idom[b] = new
                changed = True
    return [(-1 if d == VROOT else d) for d in idom[:n]]


def _dominates(idom: list[int], a: int, b: int) -> bool:
    while b >= 0:
        if a == b:
            return True
        b = idom[b]
    return False


@dataclasses.dataclass
class Loop:
    header: int                  # block index
    blocks: frozenset[int]       # the natural loop's blocks (header included)
    latches: tuple[int, ...]     # blocks with a back edge to the header
    instructions: list[int]      # instruction indices in the loop, in address order
    fma: int = 0
    mma: int = 0


def find_loops(fn: Function, blocks: list[Block] | None = None) -> list[Loop]:
    """Natural loops of ``fn`` (one per header), with their FMA / MMA counts, in address order."""
    blocks = basic_blocks(fn) if blocks is None else blocks
    if not blocks:
        return []
    # Roots: the entry, and every block nothing branches to (subroutine entries, which CALL reaches, and
    # with cuobjdump the targets of BRX jump tables, which it does not list).
    roots = [0] + [b.index for b in blocks[1:] if not b.preds]
    idom = _dominators(blocks, roots)
    by_header: dict[int, tuple[set[int], list[int]]] = {}
    for b in blocks:
        if idom[b.index] == -2:
            continue
        for h in b.succs:
            if _dominates(idom, h, b.index):  # back edge b -> h
                body, latches = by_header.setdefault(h, ({h}, []))
                latches.append(b.index)
                stack = [b.index]
                while stack:
                    x = stack.pop()
                    if x not in body:
                        body.add(x)
                        stack.extend(blocks[x].preds)
    loops = []
    for h, (body, latches) in sorted(by_header.items(), key=lambda kv: blocks[kv[0]].start):
        idx = sorted(i for k in body for i in range(blocks[k].start, blocks[k].end))
        loop = Loop(h, frozenset(body), tuple(latches), idx)
        loop.fma = sum(is_fma(fn.instructions[i]) for i in idx)
        loop.mma = sum(is_mma(fn.instructions[i]) for i in idx)
        loops.append(loop)
    return loops


def main_loop(loops: Iterable[Loop]) -> tuple[Loop | None, int]:
    """``(loop, versions)``: of the innermost loops that do work (loops with FMA or MMA instructions and no
    such loop nested inside them), the one with the most MMA instructions if any has one, else the most FMA
    instructions; of those the smallest. ``versions``: how many of these innermost loops tie on that count
    (more than one: the compiler made several copies of the main loop).

    Innermost, because an enclosing loop holds all of its inner loops' FMAs and then some: the grid-stride
    tile loop of gemm_conv_tiles holds the slice loop and the epilogue, whose activation functions (expf)
    bring FFMAs of their own."""
    working = [lp for lp in loops if lp.fma or lp.mma]
    inner = [lp for lp in working if not any(o is not lp and o.blocks < lp.blocks for o in working)]
    if not inner:
        return None, 0
    key = (lambda lp: lp.mma) if any(lp.mma for lp in inner) else (lambda lp: lp.fma)
    best = max(key(lp) for lp in inner)
    tied = [lp for lp in inner if key(lp) == best]
    return min(tied, key=lambda lp: (len(lp.instructions), blocks_start(lp))), len(tied)


def blocks_start(loop: Loop) -> int:
    return loop.instructions[0] if loop.instructions else 0


def longest_path(fn: Function, blocks: list[Block], loop: Loop) -> tuple[int, int, int]:
    """``(instructions, fma, mma)`` on the path through one iteration that executes the most instructions:
    from the header to a latch, along edges inside the loop; edges back to the header and inner loops'
    back edges (to a block that appears earlier in address order) are dropped, so the path is acyclic."""
    body = loop.blocks
    ins = fn.instructions
    weight = {k: (blocks[k].size, sum(is_fma(ins[i]) for i in range(blocks[k].start, blocks[k].end)),
                  sum(is_mma(ins[i]) for i in range(blocks[k].start, blocks[k].end))) for k in body}
    order = sorted(body, key=lambda k: blocks[k].start)
    best: dict[int, tuple[int, int, int]] = {loop.header: weight[loop.header]}
    for k in order:
        if k not in best:
            continue
        for s in blocks[k].succs:
            if s in body and s != loop.header and blocks[s].start > blocks[k].start:
                cand = tuple(a + b for a, b in zip(best[k], weight[s]))
                if s not in best or cand[0] > best[s][0]:
                    best[s] = cand
    ends = [best[k] for k in loop.latches if k in best]
    return max(ends) if ends else best[loop.header]


# --------------------------------------------------------------------------------------------------
# Per-kernel report


@dataclasses.dataclass
class KernelReport:
    source: str
    name_expression: str
    label: str             # "float 128x128x8 8x8 (large)"
    arch: str
    lowered_name: str
    registers: int = -1
    stack_bytes: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    local: int = 0         # LDL / STL instructions anywhere in the kernel's section
    loop_found: bool = False
    loop_range: str = ""   # "0x1230-0x2ab0" (first and last instruction of the main loop)
    versions: int = 0
    loops: int = 0         # natural loops in the function
    instructions: int = 0
    path: int = 0
    fma: int = 0
    mma: int = 0
    lds: dict = dataclasses.field(default_factory=dict)  # width in bits -> count
    ldsm: int = 0
    sts: int = 0
    ldg: int = 0
    bar: int = 0
    idiv: int = 0          # I2F.RP: one per 32-bit integer division / modulo by a run-time value
    calls: dict = dataclasses.field(default_factory=dict)  # callee -> CALLs in the main loop
    categories: dict = dataclasses.field(default_factory=dict)
    opcodes: dict = dataclasses.field(default_factory=dict)  # base opcode -> count in the main loop
    tool: str = ""

    @property
    def tensor_core(self) -> bool:
        return self.mma > 0

    @property
    def fma_share(self) -> float:
        return 100.0 * self.fma / self.instructions if self.instructions else 0.0

    @property
    def mma_share(self) -> float:
        return 100.0 * self.mma / self.instructions if self.instructions else 0.0

    @property
    def non_mma_per_mma(self) -> float:
        return (self.instructions - self.mma) / self.mma if self.mma else float("inf")

    @property
    def lds_text(self) -> str:
        parts = [f"{n}x{w}" for w, n in sorted(self.lds.items(), key=lambda kv: -int(kv[0]))]
        if self.ldsm:
            parts.append(f"{self.ldsm}xLDSM")
        return " + ".join(parts) if parts else "-"

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(fma_share=round(self.fma_share, 2), mma_share=round(self.mma_share, 2),
                 non_mma_per_mma=round(self.non_mma_per_mma, 2) if self.mma else None)
        return d


def analyze_function(fn: Function) -> dict:
    """The main-loop figures of one disassembled function (the fields of ``KernelReport`` it determines)."""
    ins = fn.instructions
    out: dict = {"local": sum(x.base in ("LDL", "STL") for x in ins)}
    blocks = basic_blocks(fn)
    loops = find_loops(fn, blocks)
    out["loops"] = len(loops)
    loop, versions = main_loop(loops)
    if loop is None:
        return out
    body = [ins[i] for i in loop.instructions]
    path, _, _ = longest_path(fn, blocks, loop)
    lds = Counter(w for w in (shared_load_width(x) for x in body) if w)
    names = {addr: label for label, addr in fn.labels.items() if not label.startswith(".L")}
    # CALLs of the compiler's subroutines (__cuda_sm20_div_s64, ...); a CALL to a local label is sm_80's
    # reconvergence idiom (a branch), not a subroutine
    calls = Counter(names[x.targets[0]] for x in body if x.base == "CALL" and x.targets and x.targets[0] in names)
    out.update(
        loop_found=True, versions=versions, instructions=len(body), path=path, fma=loop.fma, mma=loop.mma,
        loop_range=f"0x{body[0].address:x}-0x{body[-1].address:x}",
        lds={str(k): v for k, v in sorted(lds.items(), reverse=True)},
        ldsm=sum(x.base == "LDSM" for x in body), sts=sum(x.base == "STS" for x in body),
        ldg=sum(x.base in ("LDG", "LDGSTS") for x in body), bar=sum(x.base == "BAR" for x in body),
        idiv=sum(x.base == "I2F" and ".RP" in x.opcode for x in body),
        calls=dict(calls.most_common()),
        categories={c: n for c in CATEGORIES if (n := sum(categorize(x) == c for x in body))},
        opcodes=dict(Counter(x.base for x in body).most_common()),
    )
    return out


def main_loop_listing(fn: Function) -> str:
    """The main loop's SASS, one instruction a line, block boundaries marked (for --loop)."""
    blocks = basic_blocks(fn)
    loop, _ = main_loop(find_loops(fn, blocks))
    if loop is None:
        return "(no loop with FMA / MMA instructions)"
    lines = []
    for k in sorted(loop.blocks, key=lambda k: blocks[k].start):
        b = blocks[k]
        succ = ", ".join(f"B{s}" + ("" if s in loop.blocks else " (exit)") for s in b.succs)
        lines.append(f"B{k}: {b.size} instructions -> {succ}")
        lines += [f"    {fn.instructions[i]}" for i in range(b.start, b.end)]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# The kernels


def gemm_sources(instantiations: dict | None = None) -> list[str]:
    """The sources in the registry whose kernel file includes ``gemm_tile.cuh`` (the GEMM-style ones)."""
    from gpuconv._cuda import runtime
    if instantiations is None:
        from gpuconv._cuda.ops import INSTANTIATIONS as instantiations
    root = runtime.kernels_dir()
    return sorted(s for s in instantiations
                  if re.search(r'#include\s+"gemm_tile\.cuh"', (root / s).read_text()))


_TEMPLATE = re.compile(r"<\s*(?:gpuconv::)?(\w+)\s*,\s*([\d,\s]+)>")
_KERNEL = re.compile(r"(?:\w+::)*(\w+)\s*<")
_DTYPE_ONLY = re.compile(r"<\s*(?:gpuconv::)?(\w+)\s*>")
# Kernels of a GEMM source that have no GEMM main loop: split-K's reduction (one pass over the partial sums).
REDUCTION_KERNELS = ("gemm_splitk_reduce",)


def kernel_name(name_expression: str) -> str:
    """The kernel's function name: ``"conv2d_igemm_splitk"`` for ``gpuconv::conv2d_igemm_splitk<float, ...>``."""
    m = _KERNEL.match(name_expression.strip())
    return m.group(1) if m else name_expression


def is_reduction(name_expression: str) -> bool:
    return kernel_name(name_expression) in REDUCTION_KERNELS


def tile_label(name_expression: str) -> str:
    """``"float 128x128x8 8x8 (large)"`` for ``gpuconv::conv2d_igemm<float, 128, 128, 8, 8, 8>``,
    ``"half 128x128 2x4 warps (large)"`` for the tensor-core kernel; the host's tile name in parentheses
    (a SIMT tile's by its block shape BM x BN x BK); ``"float (reduction)"`` for split-K's reduction."""
    m = _TEMPLATE.search(name_expression)
    if not m:
        d = _DTYPE_ONLY.search(name_expression)
        if d and is_reduction(name_expression):
            return f"{d.group(1)} (reduction)"
        return name_expression
    dtype, args = m.group(1), [int(a) for a in m.group(2).split(",") if a.strip()]
    if len(args) == 5:
        bm, bn, bk, tm, tn = args
        host = _host_tile_names().get((bm, bn, bk), "")
        return f"{dtype} {bm}x{bn}x{bk} {tm}x{tn}" + (f" ({host})" if host else "")
    host = _host_tile_names().get(tuple(args), "")
    suffix = f" ({host})" if host else ""
    if len(args) == 4:
        bm, bn, wm, wn = args
        return f"{dtype} {bm}x{bn} {wm}x{wn} warps{suffix}"
    return f"{dtype} {'x'.join(map(str, args))}{suffix}"


@functools.lru_cache(maxsize=None)
def _host_tile_names() -> dict[tuple, str]:
    """The host's tile names: SIMT tiles by block shape (bm, bn, bk), tensor-core tiles by (bm, bn, warps)."""
    names: dict[tuple, str] = {}
    try:
        from gpuconv._cuda import conv_igemm_tc, gemm
        tiles = list(gemm.TILES_BY_DTYPE.values())
        for group in tiles:
            for t in group:
                names[(t.bm, t.bn, t.bk)] = t.name
        for t in conv_igemm_tc.TILES:
            names[(t.bm, t.bn, t.warps_m, t.warps_n)] = t.name
    except Exception:  # noqa: BLE001 - labels are cosmetic
        pass
    return names


def analyze_source(source: str, arch: str, result, tool: str = "nvdisasm") -> list[KernelReport]:
    """One ``KernelReport`` per name expression of ``result`` (an ``nvrtc_check.CompileResult`` of
    ``source`` for ``arch``)."""
    if not result.ok:
        raise RuntimeError(f"NVRTC failed on {source} for {arch}: {result.status}\n{result.log}")
    functions = disassemble(result.cubin, tool)
    reports = []
    for k in result.kernels:
        rep = KernelReport(source, k.name_expression, tile_label(k.name_expression), arch, k.lowered_name,
                           k.registers, k.stack_bytes, k.spill_stores, k.spill_loads, tool=tool)
        fn = functions.get(k.lowered_name)
        if fn is not None:
            for key, value in analyze_function(fn).items():
                setattr(rep, key, value)
        reports.append(rep)
    return reports


def compile_all(pairs: Sequence[tuple[str, str]]) -> list:
    """``nvrtc_check.compile_registry_source`` for each (source, arch), in a thread pool (ctypes releases
    the GIL)."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=nv.compile_jobs(), thread_name_prefix="nvrtc") as pool:
        return list(pool.map(lambda pair: nv.compile_registry_source(*pair), pairs))


# --------------------------------------------------------------------------------------------------
# Floors


def nvrtc_key() -> str:
    """``"nvrtc12"`` / ``"nvrtc13"``: floors are kept per NVRTC major (cupy-cuda12x compiles with 12, cupy-cuda13x
    with 13, and their code differs)."""
    return f"nvrtc{nv.nvrtc_version()[0]}"


def load_floors(path: Path = FLOORS_PATH) -> dict:
    return json.loads(Path(path).read_text())


def floor_for(floors: dict, source: str, name_expression: str, arch: str, nvrtc: str) -> dict | None:
    """The floor entry ``{"fma_share_min": ...}`` / ``{"non_mma_per_mma_max": ...}`` or None."""
    return (floors.get("floors", {}).get(source, {}).get(name_expression, {}).get(arch, {}).get(nvrtc))


def check_floor(rep: KernelReport, floor: dict | None) -> list[str]:
    """What is wrong with ``rep`` against its floor entry (empty: fine). Local memory always fails."""
    where = f"{rep.source} {rep.name_expression} [{rep.label}] for {rep.arch}"
    problems = []
    if rep.local or rep.spill_stores > 0 or rep.spill_loads > 0:
        problems.append(f"{where}: local memory: {rep.local} LDL/STL instructions, {rep.spill_stores} bytes "
                        f"spill stores, {rep.spill_loads} bytes spill loads, {rep.stack_bytes} bytes stack")
    if not rep.loop_found:
        problems.append(f"{where}: no main loop found (no loop with FMA or MMA instructions)")
        return problems
    if floor is None:
        problems.append(f"{where}: no floor in {FLOORS_PATH.name} (run `python -m tests.sass_check "
                        f"--write-floors` and commit the file)")
        return problems
    if "fma_share_min" in floor:
        if rep.tensor_core:
            problems.append(f"{where}: the floor is an FMA share but the main loop has {rep.mma} MMA")
        elif rep.fma_share < floor["fma_share_min"]:
            problems.append(f"{where}: FMA share of the main loop {rep.fma_share:.1f}% ({rep.fma} FMA / "
                            f"{rep.instructions} instructions) is below its floor {floor['fma_share_min']}%")
    if "non_mma_per_mma_max" in floor:
        if not rep.tensor_core:
            problems.append(f"{where}: the floor is for a tensor-core loop but the main loop has no MMA")
        elif rep.non_mma_per_mma > floor["non_mma_per_mma_max"]:
            problems.append(f"{where}: {rep.non_mma_per_mma:.2f} non-MMA instructions per MMA in the main loop "
                            f"({rep.mma} MMA / {rep.instructions} instructions) is above its ceiling "
                            f"{floor['non_mma_per_mma_max']}")
    if not {"fma_share_min", "non_mma_per_mma_max"} & set(floor):
        problems.append(f"{where}: the floor entry {floor} has neither fma_share_min nor non_mma_per_mma_max")
    return problems


def measured_floor(rep: KernelReport) -> dict:
    """The floor entry --write-floors commits for a measurement (today's figure less / plus the margin)."""
    if rep.tensor_core:
        ceiling = math.ceil(rep.non_mma_per_mma * (1 + NON_MMA_PER_MMA_MARGIN) * 10 - 1e-9) / 10
        return {"non_mma_per_mma_max": ceiling,
                "measured": f"{rep.mma} MMA / {rep.instructions} instructions = "
                            f"{rep.non_mma_per_mma:.2f} non-MMA per MMA"}
    return {"fma_share_min": math.floor((rep.fma_share - FMA_SHARE_MARGIN) * 10 + 1e-9) / 10,
            "measured": f"{rep.fma} FMA / {rep.instructions} instructions = {rep.fma_share:.2f}%"}


_FLOORS_DOC = [
    "Floors of the SASS check (tests/test_sass.py, figures by tests/sass_check.py): per GEMM source, kernel",
    "(name expression of gpuconv._cuda.ops.INSTANTIATIONS), architecture and NVRTC major, either",
    "fma_share_min (percent: FMA instructions / instructions of the main loop; CUDA-core kernels) or",
    "non_mma_per_mma_max (instructions of the main loop that are not MMA, per MMA; tensor-core kernels).",
    "'measured' is what the figure was when the floor was set (information only). A kernel below its floor",
    "fails the check, as does any local memory (LDL/STL, spills). Raise the floors as kernels improve:",
    "`python -m tests.sass_check --write-floors` (with NVRTC 12 first in the search, then once more with",
    "GPUCONV_NVRTC_LIBRARY=$(python -m tests.nvrtc_check --find 13) --write-floors --merge) sets every floor",
    "to today's figure less 1 percentage point (FMA share) or plus 3 % (non-MMA per MMA); or edit one entry",
    "by hand. Lowering a floor needs a reason in the commit message (a slower main loop).",
]


def write_floors(reports: list[KernelReport], nvrtc: str, path: Path = FLOORS_PATH, merge: bool = False) -> dict:
    """Floors from ``reports`` under NVRTC major ``nvrtc``. ``merge``: keep the file's other entries (the
    other NVRTC major's, other sources'), except kernels of a reported source that the reports no longer
    name (an instantiation the registry dropped), which are removed, and never lower a floor the file has."""
    floors = load_floors(path) if (merge and Path(path).exists()) else {}
    out = {"_doc": _FLOORS_DOC, "fma_share_margin": FMA_SHARE_MARGIN,
           "non_mma_per_mma_margin": NON_MMA_PER_MMA_MARGIN, "floors": floors.get("floors", {})}
    for source in dict.fromkeys(r.source for r in reports):
        old = out["floors"].get(source, {})
        names = dict.fromkeys(r.name_expression for r in reports if r.source == source)  # the reports' order
        out["floors"][source] = {e: old.get(e, {}) for e in names}
    for rep in reports:
        entry = out["floors"].setdefault(rep.source, {}).setdefault(rep.name_expression, {})
        entry.setdefault("label", rep.label)
        floor, before = measured_floor(rep), entry.get(rep.arch, {}).get(nvrtc, {})
        # merging never lowers a floor (that is done by hand, with the reason in the commit): a kernel whose
        # figure drifted down by less than the margin keeps the floor it had
        if merge and floor.get("fma_share_min", -1) < before.get("fma_share_min", -1):
            floor["fma_share_min"] = before["fma_share_min"]
        if merge and floor.get("non_mma_per_mma_max", -1) > before.get("non_mma_per_mma_max", float("inf")):
            floor["non_mma_per_mma_max"] = before["non_mma_per_mma_max"]
        entry.setdefault(rep.arch, {})[nvrtc] = floor
    Path(path).write_text(dump_floors(out))
    return out


def dump_floors(floors: dict) -> str:
    """The floors file's text: one line per kernel, architecture and NVRTC major (diffs stay readable)."""
    head = {k: v for k, v in floors.items() if k != "floors"}
    lines = ["{"]
    for k, v in head.items():
        if isinstance(v, list):
            lines.append(f" {json.dumps(k)}: [\n" + ",\n".join(f"  {json.dumps(x)}" for x in v) + "\n ],")
        else:
            lines.append(f" {json.dumps(k)}: {json.dumps(v)},")
    lines.append(' "floors": {')
    sources = list(floors.get("floors", {}).items())
    for si, (source, kernels) in enumerate(sources):
        lines.append(f"  {json.dumps(source)}: {{")
        items = list(kernels.items())
        for ki, (expr, entry) in enumerate(items):
            lines.append(f"   {json.dumps(expr)}: {{")
            fields = list(entry.items())
            for fi, (key, value) in enumerate(fields):
                if isinstance(value, dict):
                    inner = [f"     {json.dumps(major)}: {json.dumps(v)}" for major, v in value.items()]
                    lines.append(f"    {json.dumps(key)}: {{\n" + ",\n".join(inner) + "\n    }"
                                 + ("," if fi + 1 < len(fields) else ""))
                else:
                    lines.append(f"    {json.dumps(key)}: {json.dumps(value)}" + ("," if fi + 1 < len(fields) else ""))
            lines.append("   }" + ("," if ki + 1 < len(items) else ""))
        lines.append("  }" + ("," if si + 1 < len(sources) else ""))
    lines += [" }", "}"]
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == floors
    return text


# --------------------------------------------------------------------------------------------------
# The table


def format_table(reports: list[KernelReport]) -> str:
    header = ["source", "kernel", "tile", "arch", "regs", "local", "loop instr", "path", "FMA", "FMA %", "MMA",
              "other/MMA", "LDS (count x bits)", "LDG", "STS", "BAR", "idiv", "calls", "ver"]
    rows = []
    for r in reports:
        if not r.loop_found:
            rows.append([r.source, kernel_name(r.name_expression), r.label, r.arch, str(r.registers),
                         str(r.local)] + ["-"] * 13)
            continue
        rows.append([r.source, kernel_name(r.name_expression), r.label, r.arch, str(r.registers),
                     f"{r.local}" + (f" (stack {r.stack_bytes})" if r.stack_bytes > 0 else ""),
                     str(r.instructions), str(r.path), str(r.fma), f"{r.fma_share:.1f}",
                     str(r.mma) if r.mma else "-", f"{r.non_mma_per_mma:.1f}" if r.mma else "-",
                     r.lds_text, str(r.ldg), str(r.sts), str(r.bar), str(r.idiv), str(sum(r.calls.values())),
                     str(r.versions)])
    widths = [max(len(x[i]) for x in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def format_categories(reports: list[KernelReport]) -> str:
    header = ["source", "kernel", "arch"] + list(CATEGORIES)
    rows = [[r.source, r.label, r.arch] + [str(r.categories.get(c, 0)) for c in CATEGORIES]
            for r in reports if r.loop_found]
    widths = [max(len(x[i]) for x in [header] + rows) for i in range(len(header))]
    lines = ["main-loop instructions by class (sass_check.categorize):",
             "  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


README_START = "<!-- sass:start -->"
README_END = "<!-- sass:end -->"


def format_readme(reports: list[KernelReport]) -> str:
    """The README's markdown table: per kernel and tile, each architecture's main-loop figures side by side.
    Split-K's reduction (``REDUCTION_KERNELS``) has no GEMM main loop: its row says what one iteration of
    its loop over outputs is (instructions, global loads) instead of an FMA share."""
    archs = list(dict.fromkeys(r.arch for r in reports))
    by = {(r.source, r.name_expression, r.arch): r for r in reports}
    kernels = list(dict.fromkeys((r.source, r.name_expression, r.label) for r in reports))
    head = ["kernel", "tile"] + [f"{a}: FMA share (FMA / instructions per iteration)" for a in archs]
    head.append("shared loads per iteration")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def lds(r: KernelReport) -> str:
        parts = [f"{n} x {w}-bit" for w, n in sorted(r.lds.items(), key=lambda kv: -int(kv[0]))]
        return " + ".join(parts + ([f"{r.ldsm} x LDSM"] if r.ldsm else [])) or "-"

    for source, expr, label in kernels:
        cells = [kernel_name(expr), label]
        found = [r for a in archs if (r := by.get((source, expr, a))) is not None and r.loop_found]
        for a in archs:
            r = by.get((source, expr, a))
            if r is None or not r.loop_found:
                cells.append("-")
            elif is_reduction(expr):
                cells.append(f"reduction, no GEMM loop: {r.instructions} instructions, {r.ldg} global loads "
                             "per output")
            elif r.mma:
                cells.append(f"{r.mma} MMA / {r.instructions}: {r.non_mma_per_mma:.1f} other per MMA")
            else:
                cells.append(f"{r.fma_share:.1f}% ({r.fma} / {r.instructions})")
        texts = list(dict.fromkeys(lds(r) for r in found))
        cells.append(texts[0] if len(texts) == 1 else "; ".join(f"{r.arch}: {lds(r)}" for r in found))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def update_readme(reports: list[KernelReport], path: Path) -> None:
    """Replace the table between README_START and README_END in ``path`` with ``format_readme``'s."""
    text = path.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{path}: no {README_START} ... {README_END} block")
    major, minor = nv.nvrtc_version()
    block = (f"{README_START}\n<!-- Generated by `python -m tests.sass_check --update-readme` (NVRTC {major}.{minor}); "
             f"do not edit by hand. -->\n{format_readme(reports)}\n")
    path.write_text(text[:start] + block + text[end:])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sass_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", action="append", help=f"sm_XX (repeatable; default {' '.join(ARCHS)})")
    parser.add_argument("--source", action="append", help="kernel source (repeatable; default every GEMM source)")
    parser.add_argument("--tool", choices=("nvdisasm", "cuobjdump"), default="nvdisasm")
    parser.add_argument("--loop", metavar="SUBSTRING", help="print the main loop SASS of kernels whose name "
                        "expression or label contains SUBSTRING")
    parser.add_argument("--categories", action="store_true", help="also print the main loop's instruction classes")
    parser.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    parser.add_argument("--readme", action="store_true", help="print the README's markdown table")
    parser.add_argument("--update-readme", metavar="PATH", nargs="?", const=str(Path(__file__).parents[1] / "README.md"),
                        help="rewrite the table between the sass markers of the README (default: the repository's)")
    parser.add_argument("--write-floors", action="store_true", help=f"rewrite {FLOORS_PATH.name} from today's "
                        "figures (this NVRTC major's entries)")
    parser.add_argument("--merge", action="store_true", help="with --write-floors: keep the other entries")
    parser.add_argument("--check", action="store_true", help="exit 1 when a kernel fails its floor")
    args = parser.parse_args(argv)

    archs = args.arch or list(ARCHS)
    sources = args.source or gemm_sources()
    reports: list[KernelReport] = []
    listings: list[str] = []
    start = time.perf_counter()
    pairs = [(source, arch) for source in sources for arch in archs]
    for (source, arch), result in zip(pairs, compile_all(pairs)):
        reports += analyze_source(source, arch, result, args.tool)
        if args.loop:
            functions = disassemble(result.cubin, args.tool)
            for k in result.kernels:
                if args.loop in k.name_expression or args.loop in tile_label(k.name_expression):
                    listings.append(f"--- {source} {k.name_expression} {arch}: main loop ---\n"
                                    + main_loop_listing(functions[k.lowered_name]))
    major, minor = nv.nvrtc_version()
    print(f"NVRTC {major}.{minor} ({nv.nvrtc_library_path()}), {args.tool} {tool_version(args.tool)}; "
          f"{time.perf_counter() - start:.1f} s")
    print("main loop per kernel: instructions (static: every block of the loop once), path (longest path through "
          "one iteration), FMA, FMA share %, MMA, non-MMA instructions per MMA, shared loads (count x bits), "
          "global loads, shared stores, barriers, integer divisions (I2F.RP), CALLs, versions (innermost loops "
          "with as many FMA / MMA)")
    print(format_table(reports))
    if args.categories:
        print()
        print(format_categories(reports))
    if args.readme:
        print()
        print(format_readme(reports))
    for listing in listings:
        print()
        print(listing)
    if args.json:
        Path(args.json).write_text(json.dumps({"nvrtc": f"{major}.{minor}", "tool": args.tool,
                                               "tool_version": tool_version(args.tool),
                                               "kernels": [r.as_dict() for r in reports]}, indent=1) + "\n")
    if args.update_readme:
        update_readme(reports, Path(args.update_readme))
        print(f"\nupdated {args.update_readme}")
    if args.write_floors:
        write_floors(reports, nvrtc_key(), merge=args.merge)
        print(f"\nwrote {FLOORS_PATH}")
    failed = 0
    if args.check:
        floors = load_floors()
        for rep in reports:
            for problem in check_floor(rep, floor_for(floors, rep.source, rep.name_expression, rep.arch,
                                                      nvrtc_key())):
                print("FAIL:", problem)
                failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
