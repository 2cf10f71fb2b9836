"""The SASS check (issue 16): each GEMM-style kernel's main loop against the floors in tests/sass_floors.json.

Two kinds of tests:

* the checker itself, on hand-written SASS (parsing, the instruction classes, the loop finder, the floor
  logic, the floors file): no NVRTC or disassembler needed, part of the default run;
* the kernels (marked ``nvrtc`` and ``slow``: CI's ``-m slow`` run with NVRTC 12, its ``-m nvrtc`` run with
  NVRTC 13): every instantiation of every GEMM source (``sass_check.gemm_sources()``, all dtypes), compiled
  for sm_90 and sm_80 with the compile check's options, disassembled with nvdisasm; no local memory, the main
  loop's FMA share not below its floor (tensor-core kernels: non-MMA instructions per MMA not above their
  ceiling). ``test_sass_report`` prints the table (``pytest -s`` or ``-rA``) and writes it as JSON to
  ``$GPUCONV_SASS_REPORT`` when set.

Without NVRTC or without nvdisasm / cuobjdump (``pip install ".[compile-check]"``) the kernel tests are skipped,
unless ``GPUCONV_REQUIRE_NVRTC=1`` (CI) makes that a failure. How to raise the floors: tests/sass_check.py's
docstring ("Floors").
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import nvrtc_check as nv
from tests import sass_check as sc

SLOW = [pytest.mark.nvrtc, pytest.mark.slow]  # the kernel tests (compiles: about a minute on 2 cores)

_REQUIRED = os.environ.get("GPUCONV_REQUIRE_NVRTC", "").strip().lower() in ("1", "true", "yes", "on")
NVRTC_MAJORS = ("nvrtc12", "nvrtc13")  # the NVRTC majors CI runs the check with (the compile-check extra)


def _registry():
    from gpuconv._cuda.ops import INSTANTIATIONS
    return dict(INSTANTIATIONS)


INSTANTIATIONS = _registry()
SOURCES = sc.gemm_sources(INSTANTIATIONS)


def _need_tools() -> None:
    """First line of every kernel test: skip without NVRTC or the disassemblers, fail instead under
    GPUCONV_REQUIRE_NVRTC=1."""
    for ok, why in (nv.nvrtc_available(), sc.tools_available()):
        if not ok:
            if _REQUIRED:
                pytest.fail(f"GPUCONV_REQUIRE_NVRTC=1 but {why}", pytrace=False)
            pytest.skip(f"{why} (set GPUCONV_REQUIRE_NVRTC=1 to fail instead)")


# --------------------------------------------------------------------------------------------------
# Hand-written SASS (nvdisasm -c layout)

# A kernel shaped like ours: a grid-stride tile loop (.L_x_0) around a slice loop (.L_x_1) with 4 FFMAs, an
# if / else inside the slice loop (.L_x_2 / .L_x_3), an epilogue with 2 FFMAs of its own and a while loop
# without FMA (.L_x_5), an HFMA2.MMA that is a move, a jump table (BRX) in the epilogue, and an internal
# subroutine after EXIT.
NVDISASM_KERNEL = """
\t.headerflags\t@"EF_CUDA_TEXMODE_UNIFIED EF_CUDA_64BIT_ADDRESS EF_CUDA_SM90"
//--------------------- .text._Z6kernelPf --------------------------
\t.section\t.text._Z6kernelPf,"ax",@progbits
\t.sectioninfo\t@"SHI_REGISTERS=32"
.text._Z6kernelPf:
        .type           _Z6kernelPf,@function
_Z6kernelPf:
        /*0000*/                   IMAD.MOV.U32 R1, RZ, RZ, c[0x0][0x28] ;
        /*0010*/                   S2R R0, SR_TID.X ;
        /*0020*/                   HFMA2.MMA R2, -RZ, RZ, 0, 0 ;
.L_x_0:
        /*0030*/                   ISETP.GE.AND P0, PT, R0, c[0x0][0x160], PT ;
        /*0040*/                   CS2R R4, SRZ ;
.L_x_1:
        /*0050*/                   LDS.128 R8, [R3] ;
        /*0060*/                   LDS R12, [R3+0x100] ;
        /*0070*/                   LDS.64 R14, [R3+0x200] ;
        /*0080*/                   FFMA R4, R8, R12, R4 ;
        /*0090*/                   FFMA R5, R9, R12, R5 ;
        /*00a0*/                   FFMA R6, R10, R12, R6 ;
        /*00b0*/                   FFMA.FTZ R7, R11, R12, R7 ;
        /*00c0*/              @P0 BRA `(.L_x_2) ;
        /*00d0*/                   LDG.E.128.CONSTANT R16, desc[UR4][R20.64] ;
        /*00e0*/                   BRA `(.L_x_3) ;
.L_x_2:
        /*00f0*/                   IABS R22, R23 ;
        /*0100*/                   I2F.RP R24, R22 ;
        /*0110*/                   MUFU.RCP R24, R24 ;
        /*0120*/                   LDG.E.CONSTANT R16, desc[UR4][R20.64] ;
.L_x_3:
        /*0130*/                   STS [R3+0x400], R16 ;
        /*0140*/                   IADD3 R3, R3, 0x4, RZ ;
        /*0150*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0160*/                   ISETP.NE.AND P1, PT, R3, R25, PT ;
        /*0170*/              @P1 BRA `(.L_x_1) ;
        /*0180*/                   FFMA R26, R4, R4, RZ ;
        /*0190*/                   FFMA R27, R5, R5, R26 ;
        /*01a0*/                   BRX R28 -0x1b0                       (*"BRANCH_TARGETS .L_x_6,.L_x_7"*) ;
.L_x_6:
        /*01b0*/                   FMUL R27, R27, 0.5 ;
        /*01c0*/                   BRA `(.L_x_7) ;
.L_x_7:
        /*01d0*/                   CALL.REL.NOINC `($__internal_0_$__cuda_sm20_div_s64) ;
.L_x_5:
        /*01e0*/                   IADD3 R29, R29, -R30, RZ ;
        /*01f0*/                   ISETP.GE.AND P2, PT, R29, R30, PT ;
        /*0200*/              @P2 BRA `(.L_x_5) ;
        /*0210*/                   STG.E [R32.64], R27 ;
        /*0220*/                   IADD3 R0, R0, c[0x0][0x0], RZ ;
        /*0230*/              @!P0 BRA `(.L_x_0) ;
        /*0240*/                   EXIT ;
        .type           $__internal_0_$__cuda_sm20_div_s64,@function
$__internal_0_$__cuda_sm20_div_s64:
        /*0250*/                   I2F.U64.RP R34, R36 ;
        /*0260*/                   RET.REL.NODEC R20 `(_Z6kernelPf) ;
.L_x_8:
        /*0270*/                   BRA `(.L_x_8);
        /*0280*/                   NOP;
"""

# The same control flow as cuobjdump -sass prints it: addresses for branch targets, the encodings in comments,
# BRX without its targets.
CUOBJDUMP_KERNEL = """
\tcode for sm_90
\t\tFunction : _Z6kernelPf
\t.headerflags\t@"EF_CUDA_TEXMODE_UNIFIED EF_CUDA_64BIT_ADDRESS EF_CUDA_SM90"
        /*0000*/                   IMAD.MOV.U32 R1, RZ, RZ, c[0x0][0x28] ;   /* 0x00000a00ff017624 */
                                                                             /* 0x000fc400078e00ff */
        /*0010*/                   S2R R0, SR_TID.X ;                         /* 0x0000000000007919 */
        /*0020*/                   HFMA2.MMA R2, -RZ, RZ, 0, 0 ;             /* 0x00000000ff027435 */
        /*0030*/                   ISETP.GE.AND P0, PT, R0, c[0x0][0x160], PT ;
        /*0040*/                   CS2R R4, SRZ ;
        /*0050*/                   LDS.128 R8, [R3] ;
        /*0060*/                   LDS R12, [R3+0x100] ;
        /*0070*/                   LDS.64 R14, [R3+0x200] ;
        /*0080*/                   FFMA R4, R8, R12, R4 ;
        /*0090*/                   FFMA R5, R9, R12, R5 ;
        /*00a0*/                   FFMA R6, R10, R12, R6 ;
        /*00b0*/                   FFMA.FTZ R7, R11, R12, R7 ;
        /*00c0*/              @P0 BRA 0xf0 ;                                 /* 0x0000000000088947 */
        /*00d0*/                   LDG.E.128.CONSTANT R16, desc[UR4][R20.64] ;
        /*00e0*/                   BRA 0x130 ;
        /*00f0*/                   IABS R22, R23 ;
        /*0100*/                   I2F.RP R24, R22 ;
        /*0110*/                   MUFU.RCP R24, R24 ;
        /*0120*/                   LDG.E.CONSTANT R16, desc[UR4][R20.64] ;
        /*0130*/                   STS [R3+0x400], R16 ;
        /*0140*/                   IADD3 R3, R3, 0x4, RZ ;
        /*0150*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0160*/                   ISETP.NE.AND P1, PT, R3, R25, PT ;
        /*0170*/              @P1 BRA 0x50 ;
        /*0180*/                   FFMA R26, R4, R4, RZ ;
        /*0190*/                   FFMA R27, R5, R5, R26 ;
        /*01a0*/                   BRX R28 -0x1b0 ;                           /* 0xfffffe501c007949 */
        /*01b0*/                   FMUL R27, R27, 0.5 ;
        /*01c0*/                   BRA 0x1d0 ;
        /*01d0*/                   CALL.REL.NOINC 0x250 ;
        /*01e0*/                   IADD3 R29, R29, -R30, RZ ;
        /*01f0*/                   ISETP.GE.AND P2, PT, R29, R30, PT ;
        /*0200*/              @P2 BRA 0x1e0 ;
        /*0210*/                   STG.E [R32.64], R27 ;
        /*0220*/                   IADD3 R0, R0, c[0x0][0x0], RZ ;
        /*0230*/              @!P0 BRA 0x30 ;
        /*0240*/                   EXIT ;
        /*0250*/                   I2F.U64.RP R34, R36 ;
        /*0260*/                   RET.REL.NODEC R20 0x0 ;
        /*0270*/                   BRA 0x270;
        /*0280*/                   NOP;
\t\t..........
"""


def _fn(text: str = NVDISASM_KERNEL) -> sc.Function:
    functions = sc.parse_sass(text)
    assert list(functions) == ["_Z6kernelPf"]
    return functions["_Z6kernelPf"]


def _ins(text: str) -> sc.Instruction:
    """One instruction, parsed as nvdisasm prints it."""
    functions = sc.parse_sass("//--------------------- .text.k --------------------------\n"
                              f"        /*0000*/                   {text} ;\n")
    return functions["k"].instructions[0]


def test_parse_nvdisasm():
    fn = _fn()
    assert len(fn.instructions) == 41
    assert fn.labels[".L_x_1"] == 0x50 and fn.labels["$__internal_0_$__cuda_sm20_div_s64"] == 0x250
    bra = next(i for i in fn.instructions if i.address == 0xC0)
    assert (bra.predicate, bra.opcode, bra.targets, bra.conditional) == ("@P0", "BRA", (0xF0,), True)
    brx = next(i for i in fn.instructions if i.address == 0x1A0)
    assert brx.opcode == "BRX" and brx.targets == (0x1B0, 0x1D0) and brx.operands == "R28 -0x1b0"
    call = next(i for i in fn.instructions if i.base == "CALL")
    assert call.opcode == "CALL.REL.NOINC" and call.targets == (0x250,)
    lds = fn.instructions[5]
    assert (lds.address, lds.opcode, lds.operands, lds.predicate) == (0x50, "LDS.128", "R8, [R3]", "")
    assert str(lds) == "/*0050*/ LDS.128 R8, [R3]"


def test_parse_cuobjdump():
    fn = _fn(CUOBJDUMP_KERNEL)
    assert [i.address for i in fn.instructions] == [i.address for i in _fn().instructions]
    assert [i.opcode for i in fn.instructions] == [i.opcode for i in _fn().instructions]
    first = fn.instructions[0]
    assert first.operands == "R1, RZ, RZ, c[0x0][0x28]"  # the encoding comments are gone
    assert next(i for i in fn.instructions if i.address == 0x170).targets == (0x50,)
    assert next(i for i in fn.instructions if i.base == "CALL").targets == (0x250,)
    assert next(i for i in fn.instructions if i.base == "BRX").targets == ()  # cuobjdump does not list them


@pytest.mark.parametrize("text, fma, mma", [
    ("FFMA R4, R8, R12, R4", True, False),
    ("FFMA.FTZ R175, R72, R64.reuse, R175", True, False),
    ("DFMA R4, R8, R12, R4", True, False),
    ("HFMA2 R4, R8, R12, R4", True, False),
    ("HFMA2.MMA R4, R8, R12, -RZ", True, False),
    ("HFMA2.MMA R2, -RZ, RZ, 0, 0", False, False),      # ptxas's constant move
    ("HFMA2 R5, -RZ, RZ, 1.875, 0", False, False),
    ("HMMA.1688.F32.TF32 R116, R136.reuse, R162, R116", False, True),
    ("HMMA.16816.F32 R4, R8, R12, R4", False, True),
    ("IMAD R4, R8, R12, R4", False, False),
    ("FMUL R4, R8, R12", False, False),
])
def test_fma_and_mma(text, fma, mma):
    ins = _ins(text)
    assert (sc.is_fma(ins), sc.is_mma(ins)) == (fma, mma)


@pytest.mark.parametrize("text, width", [
    ("LDS R64, [R183+0x2100]", 32), ("LDS.64 R14, [R3+0x200]", 64), ("LDS.128 R72, [R185]", 128),
    ("LDS.U16 R1, [R2]", 16), ("LDS.U8 R1, [R2]", 8), ("LDSM.16.M88.4 R4, [R2]", None), ("STS [R64], R60", None),
    ("LDG.E.128.CONSTANT R60, desc[UR14][R60.64]", None),
])
def test_shared_load_width(text, width):
    assert sc.shared_load_width(_ins(text)) == width


@pytest.mark.parametrize("text, category", [
    ("FFMA.FTZ R4, R8, R12, R4", "fma"), ("HMMA.1688.F32.TF32 R4, R8, R12, R4", "mma"),
    ("LDS.128 R72, [R185]", "shared"), ("LDSM.16.M88.4 R4, [R2]", "shared"), ("STS [R64], R60", "shared"),
    ("LDG.E.128.CONSTANT R60, desc[UR14][R60.64]", "global"), ("STG.E [R32.64], R27", "global"),
    ("LDL R1, [R1+0x10]", "local"), ("STL [R1+0x10], R2", "local"),
    ("IMAD R64, R65, 0x1080, R20", "int"), ("IMAD.WIDE.U32 R66, R75, R125, R66", "int"),
    ("IADD3 R3, R3, 0x4, RZ", "int"), ("LEA.HI.X R61, R62, UR17, R61, 0x2, P2", "int"),
    ("SHF.R.S32.HI R61, RZ, 0x1f, R78", "int"), ("LOP3.LUT R65, R178, 0x1, RZ, 0xc0, !PT", "int"),
    ("IMAD.MOV.U32 R64, RZ, RZ, RZ", "move"), ("HFMA2.MMA R180, -RZ, RZ, 0, 0", "move"), ("MOV R70, R64", "move"),
    ("CS2R R60, SRZ", "move"), ("UIADD3 UR4, UR4, 0x1, URZ", "uniform"),
    ("ISETP.GE.AND P2, PT, R18, R86, PT", "pred"), ("PLOP3.LUT P2, PT, PT, PT, PT, 0x8, 0x0", "pred"),
    ("SEL R64, R68, RZ, P3", "select"), ("FSEL R81, R81, RZ, P0", "select"),
    ("I2F.RP R67, R66", "convert"), ("F2I.FTZ.U32.TRUNC.NTZ R65, R64", "convert"),
    ("HADD2.F32 R4, -RZ, R5.H0_H0", "convert"), ("F2FP.F16.F32.PACK_AB R4, R5, R6", "convert"),
    ("MUFU.RCP R67, R67", "float"), ("FMUL.FTZ R84, R84, 0.5", "float"),
    ("BAR.SYNC.DEFER_BLOCKING 0x0", "control"), ("BSSY B0, `(.L_x_1)", "control"), ("BRA `(.L_x_1)", "control"),
    ("SOMETHINGNEW R1, R2", "other"),
])
def test_categorize(text, category):
    assert sc.categorize(_ins(text)) == category


def test_basic_blocks_and_loops():
    fn = _fn()
    blocks = sc.basic_blocks(fn)
    starts = [fn.instructions[b.start].address for b in blocks]
    assert starts == [0x0, 0x30, 0x50, 0xD0, 0xF0, 0x130, 0x180, 0x1B0, 0x1D0, 0x1E0, 0x210, 0x240, 0x250,
                      0x270, 0x280]
    at = {fn.instructions[b.start].address: b for b in blocks}
    addr = lambda ks: sorted(fn.instructions[blocks[k].start].address for k in ks)  # noqa: E731
    assert addr(at[0x50].succs) == [0xD0, 0xF0]      # @P0 BRA: target and fall-through
    assert addr(at[0xD0].succs) == [0x130]           # BRA: target only
    assert addr(at[0x180].succs) == [0x1B0, 0x1D0]   # BRX: the annotated targets
    assert addr(at[0x1D0].succs) == [0x1E0, 0x250]   # CALL: the callee, and it returns
    assert at[0x240].succs == [] and at[0x250].succs == []  # EXIT, RET
    loops = sc.find_loops(fn, blocks)
    headers = [fn.instructions[blocks[lp.header].start].address for lp in loops]
    assert headers == [0x30, 0x50, 0x1E0]            # tile loop, slice loop, while loop
    tile, slice_, while_ = loops
    assert slice_.blocks < tile.blocks and while_.blocks < tile.blocks
    assert (tile.fma, slice_.fma, while_.fma) == (6, 4, 0)
    assert len(slice_.instructions) == 19  # 8 + 2 (if) + 4 (else) + 5


def test_main_loop_is_the_innermost_loop_with_the_fmas():
    """The tile loop has more FFMAs (its epilogue's) than the slice loop, but the slice loop is the main loop."""
    fn = _fn()
    loop, versions = sc.main_loop(sc.find_loops(fn))
    assert fn.instructions[loop.instructions[0]].address == 0x50 and versions == 1
    fig = sc.analyze_function(fn)
    assert fig["loop_found"] and fig["loops"] == 3 and fig["versions"] == 1
    assert (fig["instructions"], fig["fma"], fig["mma"]) == (19, 4, 0)
    assert fig["path"] == 17  # the longer arm of the if / else (4 instructions against 2)
    assert fig["lds"] == {"128": 1, "64": 1, "32": 1}
    assert (fig["ldg"], fig["sts"], fig["bar"], fig["idiv"], fig["calls"]) == (2, 1, 1, 1, {})
    assert fig["local"] == 0 and fig["loop_range"] == "0x50-0x170"
    assert fig["categories"]["fma"] == 4 and sum(fig["categories"].values()) == 19


def test_cuobjdump_gives_the_same_main_loop():
    a, b = sc.analyze_function(_fn()), sc.analyze_function(_fn(CUOBJDUMP_KERNEL))
    keys = ("loop_found", "versions", "instructions", "path", "fma", "lds", "ldg", "sts", "bar", "loop_range")
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}


def _loop_text(header: str, body: list[str], start: int) -> tuple[list[str], int]:
    lines = [f"{header}:"]
    for text in body:
        lines.append(f"        /*{start:04x}*/                   {text} ;")
        start += 0x10
    return lines, start


def test_duplicated_main_loop_counts_versions():
    """Two copies of a loop with 2 FFMAs (an unswitched loop): versions 2, the smaller copy reported."""
    lines = ["//--------------------- .text.k --------------------------", "k:"]
    part, addr = _loop_text(".L_x_0", ["FFMA R4, R8, R12, R4", "FFMA R5, R9, R12, R5", "IADD3 R3, R3, 0x4, RZ",
                                       "IADD3 R2, R2, 0x4, RZ", "@P1 BRA `(.L_x_0)"], 0)
    lines += part
    part, addr = _loop_text(".L_x_1", ["FFMA R4, R8, R12, R4", "FFMA R5, R9, R12, R5", "IADD3 R3, R3, 0x4, RZ",
                                       "@P2 BRA `(.L_x_1)"], addr)
    lines += part
    lines += [f"        /*{addr:04x}*/                   EXIT ;"]
    fig = sc.analyze_function(sc.parse_sass("\n".join(lines))["k"])
    assert (fig["versions"], fig["instructions"], fig["fma"], fig["loop_range"]) == (2, 4, 2, "0x50-0x80")


def test_mma_loop_wins_over_fma_loop():
    lines = ["//--------------------- .text.k --------------------------", "k:"]
    part, addr = _loop_text(".L_x_0", ["FFMA R4, R8, R12, R4"] * 8 + ["@P1 BRA `(.L_x_0)"], 0)
    lines += part
    part, addr = _loop_text(".L_x_1", ["HMMA.1688.F32.TF32 R4, R8, R12, R4", "LDS R8, [R3]", "IADD3 R3, R3, 0x4, RZ",
                                       "@P2 BRA `(.L_x_1)"], addr)
    lines += part + [f"        /*{addr:04x}*/                   EXIT ;"]
    fig = sc.analyze_function(sc.parse_sass("\n".join(lines))["k"])
    assert (fig["mma"], fig["fma"], fig["instructions"]) == (1, 0, 4)


def test_sm80_call_idiom_and_no_loop():
    """ptxas on sm_80 leaves a loop with `@!P0 CALL.REL.NOINC` to the exit code, then `BRA` to the header."""
    text = """//--------------------- .text.k --------------------------
k:
.L_x_0:
        /*0000*/                   FFMA R4, R8, R12, R4 ;
        /*0010*/                   ISETP.NE.AND P0, PT, R3, R25, PT ;
        /*0020*/              @!P0 CALL.REL.NOINC `(.L_x_1) ;
        /*0030*/                   BRA `(.L_x_0) ;
.L_x_1:
        /*0040*/                   STG.E [R32.64], R4 ;
        /*0050*/                   EXIT ;
"""
    fig = sc.analyze_function(sc.parse_sass(text)["k"])
    assert (fig["instructions"], fig["fma"], fig["calls"]) == (4, 1, {})  # a branch, not a subroutine
    flat = sc.analyze_function(sc.parse_sass(text.replace("BRA `(.L_x_0)", "NOP"))["k"])
    assert not flat.get("loop_found") and flat["loops"] == 0


def test_subroutine_calls_in_the_main_loop_are_named():
    text = NVDISASM_KERNEL.replace("        /*0140*/                   IADD3 R3, R3, 0x4, RZ ;",
                                   "        /*0140*/                   CALL.REL.NOINC `($__internal_0_$__cuda_sm20_div_s64) ;")
    fig = sc.analyze_function(_fn(text))
    assert fig["calls"] == {"$__internal_0_$__cuda_sm20_div_s64": 1} and fig["instructions"] == 19


def test_local_memory_is_seen_anywhere():
    text = NVDISASM_KERNEL.replace("        /*0210*/                   STG.E [R32.64], R27 ;",
                                   "        /*0210*/                   STL [R1+0x10], R27 ;")
    assert sc.analyze_function(_fn(text))["local"] == 1


def test_tile_labels():
    assert sc.tile_label("gpuconv::conv2d_igemm<float, 128, 128, 16, 8, 8>") == "float 128x128x16 8x8 (large)"
    assert sc.tile_label("gpuconv::conv2d_igemm<float, 64, 128, 16, 4, 8>") == "float 64x128x16 4x8 (wide)"
    assert sc.tile_label("gpuconv::conv2d_gemm1x1<gpuconv::half, 64, 64, 8, 4, 4>") == "half 64x64x8 4x4 (small)"
    assert sc.tile_label("gpuconv::conv2d_igemm_tc<float, 128, 128, 2, 4>") == "float 128x128 2x4 warps (large)"


# --------------------------------------------------------------------------------------------------
# The floor logic can fail


def _report(**kw) -> sc.KernelReport:
    base = dict(source="conv2d_igemm.cu", name_expression="gpuconv::conv2d_igemm<float, 128, 128, 8, 8, 8>",
                label="float 128x128x8 8x8 (large)", arch="sm_90", lowered_name="_Z", registers=195, stack_bytes=0,
                spill_stores=0, spill_loads=0, loop_found=True, instructions=882, fma=512)
    base.update(kw)
    return sc.KernelReport(**base)


def test_floor_logic():
    rep = _report()
    assert abs(rep.fma_share - 58.05) < 0.01
    assert sc.check_floor(rep, {"fma_share_min": 57.0}) == []
    below = sc.check_floor(_report(instructions=1000), {"fma_share_min": 57.0})  # a slower loop: 51.2 %
    assert len(below) == 1 and "51.2%" in below[0] and "below its floor 57.0%" in below[0]
    assert "no floor" in sc.check_floor(rep, None)[0]
    assert "no main loop" in sc.check_floor(_report(loop_found=False), {"fma_share_min": 1.0})[0]
    spill = sc.check_floor(_report(local=2, spill_stores=8, spill_loads=8), {"fma_share_min": 57.0})
    assert len(spill) == 1 and "local memory" in spill[0]
    assert "neither" in sc.check_floor(rep, {"fma_share": 57.0})[0]

    tc = _report(source="conv2d_igemm_tc.cu", fma=0, mma=32, instructions=678)
    assert abs(tc.non_mma_per_mma - 20.1875) < 1e-9
    assert sc.check_floor(tc, {"non_mma_per_mma_max": 20.8}) == []
    above = sc.check_floor(_report(source="conv2d_igemm_tc.cu", fma=0, mma=32, instructions=800),
                           {"non_mma_per_mma_max": 20.8})
    assert len(above) == 1 and "above its ceiling 20.8" in above[0]
    assert "tensor-core" in sc.check_floor(rep, {"non_mma_per_mma_max": 20.8})[0]
    assert "FMA share" in sc.check_floor(tc, {"fma_share_min": 1.0})[0]


def test_measured_floor_passes_and_has_the_margin():
    rep = _report()
    floor = sc.measured_floor(rep)
    assert floor["fma_share_min"] == 57.0 and sc.check_floor(rep, floor) == []
    assert sc.check_floor(_report(instructions=900), floor)  # 56.9 %: more than the margin below
    tc = _report(fma=0, mma=32, instructions=678)
    floor = sc.measured_floor(tc)
    assert floor["non_mma_per_mma_max"] == 20.8 and sc.check_floor(tc, floor) == []
    assert sc.check_floor(_report(fma=0, mma=32, instructions=700), floor)  # 20.9 per MMA


# --------------------------------------------------------------------------------------------------
# The floors file


def test_gemm_sources():
    assert SOURCES, "no kernel source includes gemm_tile.cuh"
    assert {"conv2d_igemm.cu", "conv2d_gemm1x1.cu", "conv2d_igemm_tc.cu"} <= set(SOURCES)


def test_floors_file_covers_every_gemm_kernel():
    """Every instantiation of every GEMM source has a floor for sm_90 and sm_80 under both NVRTC majors (a new
    kernel must get one: `python -m tests.sass_check --write-floors`), and no entry names a kernel that is gone."""
    floors = sc.load_floors()
    assert floors.get("_doc"), "the floors file must say how to raise its floors"
    missing, bad = [], []
    for source in SOURCES:
        for expr in INSTANTIATIONS[source]:
            for arch in sc.ARCHS:
                for major in NVRTC_MAJORS:
                    entry = sc.floor_for(floors, source, expr, arch, major)
                    if entry is None:
                        missing.append(f"{source} {expr} {arch} {major}")
                    elif len({"fma_share_min", "non_mma_per_mma_max"} & set(entry)) != 1 or not all(
                            isinstance(v, (int, float)) for k, v in entry.items() if k != "measured"):
                        bad.append(f"{source} {expr} {arch} {major}: {entry}")
    assert not missing, "kernels without a SASS floor in tests/sass_floors.json:\n  " + "\n  ".join(missing)
    assert not bad, "malformed floor entries:\n  " + "\n  ".join(bad)
    stale = [f"{s} {e}" for s, kernels in floors["floors"].items() for e in kernels
             if s not in SOURCES or e not in INSTANTIATIONS.get(s, ())]
    assert not stale, "floors for kernels the registry no longer has:\n  " + "\n  ".join(stale)


# --------------------------------------------------------------------------------------------------
# The kernels (NVRTC + nvdisasm)


@pytest.fixture(scope="module")
def reports(request):
    """``reports(source, arch) -> [KernelReport]``: the (source, arch) pairs the selected kernel tests need are
    compiled in a thread pool when the first one asks (as in test_nvrtc_compile.py), disassembled once each."""
    wanted: list[tuple[str, str]] = []
    for item in request.session.items:
        if getattr(item, "module", None) is not request.module:
            continue
        name = getattr(item, "originalname", None)
        if name in ("test_sass_report",):
            wanted += [(s, a) for s in SOURCES for a in sc.ARCHS]
        elif name in ("test_main_loop_meets_floor", "test_cuobjdump_agrees_on_kernels"):
            wanted.append((item.callspec.params["source"], item.callspec.params["arch"]))
    state: dict = {}

    def get(source: str, arch: str) -> list[sc.KernelReport]:
        _need_tools()
        if "futures" not in state:
            pool = state["pool"] = ThreadPoolExecutor(max_workers=sc.nv.compile_jobs(), thread_name_prefix="nvrtc")
            state["futures"] = {t: pool.submit(sc.nv.compile_registry_source, *t) for t in dict.fromkeys(wanted)}
        futures = state["futures"]
        if (source, arch) not in futures:
            futures[source, arch] = state["pool"].submit(sc.nv.compile_registry_source, source, arch)
        key = ("reports", source, arch)
        if key not in state:
            result = futures[source, arch].result()
            if not result.ok:
                pytest.fail(f"NVRTC failed on {source} for {arch} ({result.status}):\n{result.log}", pytrace=False)
            state[key] = sc.analyze_source(source, arch, result)
            state["cubin", source, arch] = result
        return state[key]

    get.state = state
    yield get
    if "pool" in state:
        state["pool"].shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("arch", sc.ARCHS)
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.nvrtc
@pytest.mark.slow
def test_main_loop_meets_floor(reports, source, arch):
    """No local memory, a main loop found, its FMA share (tensor cores: non-MMA per MMA) within its floor."""
    floors = sc.load_floors()
    major = sc.nvrtc_key()
    problems = []
    reps = reports(source, arch)
    assert [r.name_expression for r in reps] == list(INSTANTIATIONS[source])
    for rep in reps:
        problems += sc.check_floor(rep, sc.floor_for(floors, source, rep.name_expression, arch, major))
    if problems:
        pytest.fail(f"NVRTC {'.'.join(map(str, nv.nvrtc_version()))}, {sc.tool_version('nvdisasm')} nvdisasm:\n  "
                    + "\n  ".join(problems) + "\n" + sc.format_table(reps), pytrace=False)


@pytest.mark.parametrize("arch", ["sm_90"])
@pytest.mark.parametrize("source", ["conv2d_igemm.cu"])
@pytest.mark.nvrtc
@pytest.mark.slow
def test_cuobjdump_agrees_on_kernels(reports, source, arch):
    """cuobjdump -sass (the fallback tool) finds the same main loops as nvdisasm."""
    by_nvdisasm = reports(source, arch)
    result = reports.state["cubin", source, arch]
    by_cuobjdump = sc.analyze_source(source, arch, result, tool="cuobjdump")
    keys = ("loop_found", "versions", "instructions", "fma", "mma", "lds", "ldg", "sts", "loop_range")
    for a, b in zip(by_nvdisasm, by_cuobjdump):
        assert {k: getattr(a, k) for k in keys} == {k: getattr(b, k) for k in keys}, a.name_expression


@pytest.mark.nvrtc
@pytest.mark.slow
def test_sass_report(reports):
    start = time.perf_counter()
    all_reports = [r for s in SOURCES for a in sc.ARCHS for r in reports(s, a)]
    major, minor = nv.nvrtc_version()
    print(f"\nNVRTC {major}.{minor} ({nv.nvrtc_library_path()}), nvdisasm {sc.tool_version('nvdisasm')}; this test "
          f"waited {time.perf_counter() - start:.1f} s\n" + sc.format_table(all_reports) + "\n\n"
          + sc.format_categories(all_reports))
    path = os.environ.get("GPUCONV_SASS_REPORT")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"nvrtc": f"{major}.{minor}", "nvdisasm": sc.tool_version("nvdisasm"),
                                          "kernels": [r.as_dict() for r in all_reports]}, indent=1) + "\n")
    assert all(r.loop_found for r in all_reports)
