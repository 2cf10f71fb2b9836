"""Self-tests of the CPU emulator (tests/emulator) on its own small kernels (selftest_kernels.cu)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import tests.emulator as emu
from tests.emulator import EmulatedRuntime, EmuKernel, compile_module

pytestmark = pytest.mark.emulated

HERE = Path(__file__).resolve().parent
SRC = "selftest_kernels.cu"
NAMES = [
    "selftest::vector_add",
    "selftest::block_sum<true>",
    "selftest::block_sum<false>",
    "selftest::reverse_block",
    "selftest::read_unwritten_shared",
    "selftest::scale<float>",
    "selftest::scale<double>",
    "selftest::scale<__half>",
    "selftest::index3d",
    "selftest::early_exit",
    "selftest::echo_args",
    "selftest::echo_structs",
    "selftest::math_checks",
    "selftest::count_atomic",
    "selftest::failing",
    "selftest::busy<false>",
    "selftest::busy<true>",
    "selftest::read_past_end",
    "selftest::mma_tf32",
    "selftest::mma_f16",
    "selftest::cvt_tf32",
    "selftest::mma_misuse",
]
INSTANTIATIONS = {SRC: NAMES}


@pytest.fixture(scope="module")
def rt():
    return EmulatedRuntime(HERE, INSTANTIATIONS)


@pytest.fixture(scope="module")
def rt_rev():
    return EmulatedRuntime(HERE, INSTANTIATIONS, reverse_threads=True)


@pytest.fixture(params=[False, True], ids=["forward", "reversed"])
def any_rt(request, rt, rt_rev):
    return rt_rev if request.param else rt


def i32(v):
    return np.int32(v)


# ------------------------------------------------------------------------------------------------
# The runtime interface
# ------------------------------------------------------------------------------------------------

def test_runtime_interface(rt):
    assert rt.xp is np and rt.name == "emulated"
    rt.synchronize()
    k = rt.function(SRC, "selftest::vector_add")
    assert isinstance(k, EmuKernel) and k.name == "selftest::vector_add"
    assert rt.function(SRC, "selftest::vector_add") is k  # memoised
    assert [p.type for p in k.params] == ["const float*", "const float*", "float*", "int"]
    expected_switch = "asm" if os.uname().machine == "x86_64" else "ucontext"
    assert rt.module(SRC).config == f"switch={expected_switch};asan=0"
    with pytest.raises(KeyError, match="not among the name expressions"):
        rt.function(SRC, "selftest::scale<int>")
    with pytest.raises(KeyError, match="no instantiations"):
        rt.function("missing.cu", "k")


# ------------------------------------------------------------------------------------------------
# Execution
# ------------------------------------------------------------------------------------------------

def test_vector_add_grid_stride_and_bounds(any_rt):
    n = 1000  # 3 blocks x 128 threads: every thread loops; the tail is bounds-checked
    a = np.random.default_rng(0).random(n + 8, dtype=np.float32)
    b = np.random.default_rng(1).random(n + 8, dtype=np.float32)
    c = np.full(n + 8, -7.0, np.float32)
    any_rt.function(SRC, "selftest::vector_add")((3,), (128,), (a, b, c, i32(n)))
    np.testing.assert_array_equal(c[:n], a[:n] + b[:n])
    assert np.all(c[n:] == -7.0)


def block_sums(x, block):
    pad = (-x.size) % block
    return np.concatenate([x, np.zeros(pad, x.dtype)]).reshape(-1, block).sum(axis=1, dtype=np.float64)


def test_block_reduction_with_barrier(any_rt):
    x = np.random.default_rng(2).random(1000, dtype=np.float32)
    out = np.zeros(4, np.float32)
    any_rt.function(SRC, "selftest::block_sum<true>")(4, 256, (x, out, i32(x.size)))
    np.testing.assert_allclose(out, block_sums(x, 256), rtol=1e-5)


def test_reduction_without_barrier_is_wrong_in_some_order(rt, rt_rev):
    """The same reduction without __syncthreads: some thread order must expose the race."""
    x = np.random.default_rng(3).random(1024, dtype=np.float32)
    expected = block_sums(x, 256)
    ok = []
    for r in (rt, rt_rev):
        out = np.zeros(4, np.float32)
        r.function(SRC, "selftest::block_sum<false>")(4, 256, (x, out, i32(x.size)))
        ok.append(bool(np.allclose(out, expected, rtol=1e-5)))
    assert not all(ok), "dropping the barriers went unnoticed in both thread orders"


def test_dynamic_shared_memory(any_rt):
    n, block = 1000, 256
    x = np.arange(n, dtype=np.float32)
    y = np.full(n, -1.0, np.float32)
    any_rt.function(SRC, "selftest::reverse_block")(4, block, (x, y, i32(n)), shared_mem=block * 4)
    expected = np.full(n, -1.0, np.float32)
    for base in range(0, n, block):
        for t in range(block):
            src = block - 1 - t
            if base + t < n and base + src < n:
                expected[base + t] = x[base + src]
    np.testing.assert_array_equal(y, expected)


def test_shared_memory_is_poisoned_before_each_block(rt):
    """Dynamic and static shared memory read before being written hold 0xFF bytes (NaN), not the values
    left by an earlier block."""
    dyn = np.zeros(4 * 64, np.float32)
    sta = np.zeros(4 * 64, np.float32)
    rt.function(SRC, "selftest::read_unwritten_shared")(4, 64, (dyn, sta), shared_mem=64 * 4)
    assert np.isnan(dyn).all()
    assert np.all(sta[:64] == 1.0)        # block 0 wrote its static array
    assert np.isnan(sta[64:]).all()       # blocks 1-3 only read it


@pytest.mark.parametrize("name,dtype", [("selftest::scale<float>", np.float32), ("selftest::scale<double>", np.float64),
                                        ("selftest::scale<__half>", np.float16)])
def test_template_kernels_by_name_expression(rt, name, dtype):
    n = 300
    x = (np.arange(n) / 7).astype(dtype)
    expected = (x.astype(np.float32) * np.float32(1.5)).astype(dtype)
    k = rt.function(SRC, name)
    assert k.params[0].type.endswith("*")
    k((n + 127) // 128, 128, (x, np.float32(1.5), np.int64(n)))
    np.testing.assert_array_equal(x, expected)


def test_3d_grid_and_block_indices(any_rt):
    grid, block = (2, 3, 2), (4, 2, 3)
    nb, nt = np.prod(grid), np.prod(block)
    out = np.zeros((nb * nt, 12), np.uint32)
    any_rt.function(SRC, "selftest::index3d")(grid, block, (out,))
    expected = []
    for bz in range(grid[2]):
        for by in range(grid[1]):
            for bx in range(grid[0]):
                for tz in range(block[2]):
                    for ty in range(block[1]):
                        for tx in range(block[0]):
                            expected.append([tx, ty, tz, bx, by, bz, *block, *grid])
    np.testing.assert_array_equal(out, np.array(expected, np.uint32))


@pytest.mark.parametrize("threads,active", [(100, 37), (1024, 1000), (64, 1)])
def test_early_return_before_barrier(any_rt, threads, active):
    x = np.arange(threads, dtype=np.int32) * 3
    out = np.full(threads, -5, np.int32)
    any_rt.function(SRC, "selftest::early_exit")(1, threads, (x, out, i32(active)))
    t = np.arange(active)
    np.testing.assert_array_equal(out[:active], x[active - 1 - t] + 1000 * active)
    assert np.all(out[active:] == -5)


def test_scalar_arguments_arrive_intact(rt):
    out = np.zeros(8)
    rt.function(SRC, "selftest::echo_args")(1, 1, (out, i32(-3), 5, np.uint32(7), np.float32(1.5), 2.25,
                                                   np.float16(0.5), np.bool_(True), np.uint8(200)))
    np.testing.assert_array_equal(out, [-3, 5, 7, 1.5, 2.25, 0.5, 1, 200])


def test_math_intrinsics_and_cuda_min_max(rt):
    out = np.zeros(11, np.float32)
    rt.function(SRC, "selftest::math_checks")(1, 1, (out, np.float32("nan")))
    np.testing.assert_array_equal(out[:7], [1, -2, 7, 5, 1, 1, 2])
    assert out[7] == np.float32(np.float16(1 / 3))
    np.testing.assert_array_equal(out[8:], [8.25, 3, 8.25])


def test_noncontiguous_and_offset_views_pass_their_data_pointer(rt):
    base = np.arange(64, dtype=np.float32)
    zeros = np.zeros(64, np.float32)
    out = np.zeros(64, np.float32)
    k = rt.function(SRC, "selftest::vector_add")
    k(1, 32, (base[5:], zeros, out, i32(10)))               # offset view
    np.testing.assert_array_equal(out[:10], base[5:15])
    grid2d = np.arange(80, dtype=np.float32).reshape(8, 10)
    k(1, 32, (grid2d[2:, 3:], zeros, out, i32(4)))          # non-contiguous: pointer to element [2, 3]
    np.testing.assert_array_equal(out[:4], grid2d.ravel()[23:27])  # (strides are the kernel's business)


def test_atomics_with_several_worker_threads(rt, monkeypatch):
    monkeypatch.setenv("GPUCONV_EMU_WORKERS", "2")
    counter, fsum, usum = np.zeros(1, np.int32), np.zeros(1, np.float32), np.zeros(1, np.uint64)
    rt.function(SRC, "selftest::count_atomic")(50, 64, (counter, fsum, usum))
    assert counter[0] == 3200 and fsum[0] == 1600.0 and usum[0] == 6400
    x = np.random.default_rng(4).random(64 * 256, dtype=np.float32)
    out = np.zeros(64, np.float32)
    rt.function(SRC, "selftest::block_sum<true>")(64, 256, (x, out, i32(x.size)))
    np.testing.assert_allclose(out, block_sums(x, 256), rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Argument and launch checks
# ------------------------------------------------------------------------------------------------

def test_python_int_for_int_parameter_is_rejected(rt):
    a = np.zeros(4, np.float32)
    k = rt.function(SRC, "selftest::vector_add")
    with pytest.raises(TypeError, match=r"selftest::vector_add argument 3: kernel takes a 4-byte integer, got "
                                        r"Python int \(passed as 8-byte long long by CuPy\)"):
        k(1, 4, (a, a, a, 4))
    k(1, 4, (a, a, a, np.int32(4)))  # the fix


@pytest.mark.parametrize("args,pattern", [
    (lambda a: (a, a, a), r"kernel takes 4 argument\(s\) \(const float\*, const float\*, float\*, int\), got 3"),
    (lambda a: (a, a, a, np.int32(1), np.int32(2)), r"takes 4 argument\(s\).*got 5"),
    (lambda a: (a, a, a, np.zeros(1, np.int32)), r"argument 3: kernel takes a 4-byte integer, got numpy.ndarray"),
    (lambda a: (a, np.float32(1), a, np.int32(1)), r"argument 1: kernel takes a pointer, got numpy.float32"),
    (lambda a: (a, 0, a, np.int32(1)), r"argument 1: kernel takes a pointer, got Python int"),
    (lambda a: (a, None, a, np.int32(1)), r"argument 1: None is not a NULL pointer"),
    (lambda a: (a, a.astype(np.float64), a, np.int32(1)), r"argument 1: kernel takes a pointer to 4-byte float "
                                                          r"elements \(const float\*\), got numpy.ndarray of dtype float64"),
    (lambda a: (a, a, a, np.int64(1)), r"argument 3: kernel takes a 4-byte integer, got numpy.int64 \(8 bytes\)"),
    (lambda a: (a, a, a, np.float32(1)), r"argument 3: kernel takes a 4-byte integer, got numpy.float32"),
    (lambda a: (a, a, a, 1.0), r"argument 3: kernel takes a 4-byte integer, got Python float"),
    (lambda a: (a, a, a, "1"), r"argument 3: CuPy cannot pass builtins.str"),
    (lambda a: [a, a, a, {}], r"argument 3: CuPy cannot pass builtins.dict"),
    (lambda a: a, r"args must be a tuple"),
], ids=["too-few", "too-many", "array-for-int", "scalar-for-pointer", "int-for-pointer", "none-for-pointer",
        "float64-array-for-float-pointer", "int64-for-int", "float32-for-int", "py-float-for-int", "str", "dict",
        "not-a-tuple"])
def test_bad_arguments_raise_type_error(rt, args, pattern):
    a = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match=pattern):
        rt.function(SRC, "selftest::vector_add")(1, 4, args(a))


def test_scalar_kinds_and_sizes_are_checked(rt):
    k = rt.function(SRC, "selftest::echo_args")
    out = np.zeros(8)
    good = [out, i32(-3), 5, np.uint32(7), np.float32(1.5), 2.25, np.float16(0.5), np.bool_(True), np.uint8(200)]
    for index, bad, pattern in [
        (4, 1.5, r"argument 4: kernel takes a 4-byte float, got Python float \(passed as 8-byte double"),
        (5, np.float32(2.25), r"argument 5: kernel takes an 8-byte float, got numpy.float32"),
        (5, np.int64(2), r"argument 5: kernel takes an 8-byte float, got numpy.int64"),
        (6, 0.5, r"argument 6: kernel takes a 2-byte float, got Python float"),
        (7, True, r"argument 7: kernel takes a 1-byte bool, got Python bool \(passed as 8-byte long long by CuPy\)"),
        (8, np.int32(200), r"argument 8: kernel takes a 1-byte integer, got numpy.int32"),
    ]:
        args = list(good)
        args[index] = bad
        with pytest.raises(TypeError, match=pattern):
            k(1, 1, tuple(args))
    k(1, 1, tuple(good))


# Structs by value: the host mirrors of selftest::Small and selftest::Wide (selftest_kernels.cu).
SMALL = np.dtype([("a", np.int32), ("b", np.float32), ("c", np.int16)], align=True)
WIDE = np.dtype([("d", np.float64, (3,)), ("i", np.int32)], align=True)


def _structs(a=7, b=-2.5, c=-300, d=(1.25, -3.0, 1e300), i=-123456):
    s = np.zeros(1, SMALL)
    s[0] = (a, b, c)
    w = np.zeros(1, WIDE)
    w[0] = (d, i)
    return s, w


def test_slot_layout():
    # Each argument at a multiple of 16, its size rounded up to 16 (at least 16); at least one slot.
    assert emu.slot_layout([8, 4, 12, 32, 4]) == ([0, 16, 32, 48, 80], 96)
    assert emu.slot_layout([76, 1, 17]) == ([0, 80, 96], 128)
    assert emu.slot_layout([]) == ([], 16)
    assert SMALL.itemsize == 12 and WIDE.itemsize == 32


def test_structs_by_value_arrive_intact(any_rt):
    k = any_rt.function(SRC, "selftest::echo_structs")
    assert [p.size for p in k.params] == [8, 4, 12, 32, 4] and [p.kind for p in k.params] == ["p", "i", "o", "o", "i"]
    s, w = _structs()
    out = np.full((2, 4, 9), np.nan)
    k(2, 4, (out, i32(-11), s, w, i32(99)))
    # Every thread of every block sees the same values (each its own copy: one thread writing to its copy of
    # w changes nothing for the others).
    np.testing.assert_array_equal(out, np.broadcast_to([-11, 7, -2.5, -300, 1.25, -3.0, 1e300, -123456, 99],
                                                       (2, 4, 9)))


def test_struct_arguments_are_checked(rt):
    k = rt.function(SRC, "selftest::echo_structs")
    out = np.zeros(9)
    s, w = _structs()
    small8 = np.zeros(1, np.dtype([("a", np.int32), ("b", np.float32)]))
    for index, bad, pattern in [
        (2, small8, r"argument 2: kernel takes a 12-byte struct by value \(C\+\+ parameter type: selftest::Small\), "
                    r"got numpy.ndarray of dtype .* \(8 bytes per element, 1 element\(s\)\): CuPy would pass its "
                    r"8 bytes unchecked"),
        (3, s, r"argument 3: kernel takes a 32-byte struct by value \(C\+\+ parameter type: selftest::Wide\), got "
               r"numpy.ndarray .*12 bytes"),
        (2, np.zeros(2, SMALL), r"argument 2: .*2 element\(s\)\); CuPy passes only a one-element numpy.ndarray "
                                r"by value"),
        (2, np.zeros(1, object), r"argument 2: kernel takes a 12-byte struct by value"),
        (2, np.int32(7), r"argument 2: kernel takes a 12-byte value, got numpy.int32 \(4 bytes\) \(C\+\+ parameter "
                         r"type: selftest::Small\)"),
        (2, 7, r"argument 2: kernel takes a 12-byte value, got Python int"),
        (2, 1.5, r"argument 2: kernel takes a 12-byte value, got Python float"),
        (0, s, r"argument 0: kernel takes a pointer \(double\*\), got numpy.ndarray of structured dtype"),
        (0, np.zeros(4, SMALL), r"argument 0: kernel takes a pointer \(double\*\), got numpy.ndarray of structured"),
        (1, s, r"argument 1: kernel takes a 4-byte integer, got numpy.ndarray"),
    ]:
        args = [out, i32(1), s, w, i32(2)]
        args[index] = bad
        with pytest.raises(TypeError, match=pattern):
            k(1, 1, tuple(args))
    # A struct array for a pointer to arithmetic elements is refused too (vector_add's const float*).
    a = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match=r"argument 0: kernel takes a pointer \(const float\*\), got numpy.ndarray "
                                        r"of structured dtype"):
        rt.function(SRC, "selftest::vector_add")(1, 4, (np.zeros(1, np.dtype([("x", np.float32)])), a, a, i32(4)))
    k(1, 1, (out, i32(1), s, w, i32(2)))  # the good call


def test_launch_refuses_an_argument_buffer_of_another_layout(rt):
    # The C++ side computes the slot layout itself and refuses a buffer of another length (Python and C++
    # disagreeing on the layout would otherwise hand the kernel shifted bytes).
    k = rt.function(SRC, "selftest::echo_structs")
    s, w = _structs()
    buf = k._marshal((np.zeros(9), i32(1), s, w, i32(2)))
    assert len(buf) == 96
    lib = k.module._lib
    assert lib.gpuemu_launch(k.index, 1, 1, 1, 1, 1, 1, 0, bytes(buf[:80]), 80, 0) == -1
    assert "argument buffer of 80 bytes, the parameters' slots take 96" in lib.gpuemu_last_error().decode()


@pytest.mark.parametrize("grid,block,shared,exc,pattern", [
    (0, 32, 0, ValueError, r"invalid configuration argument.*grid \(0, 1, 1\)"),
    ((1, 0), 32, 0, ValueError, r"grid \(1, 0, 1\)"),
    ((1, 65536), 32, 0, ValueError, r"dimension y = 65536 is outside \[1, 65535\]"),
    (1, 1025, 0, ValueError, r"block \(1025, 1, 1\)"),
    (1, (1, 1, 65), 0, ValueError, r"dimension z = 65"),
    (1, (64, 32), 0, ValueError, r"2048 threads, more than 1024"),
    ((1, 1, 1, 1), 32, 0, ValueError, r"1 to 3 dimensions"),
    (1.5, 32, 0, TypeError, r"grid must be an int"),
    (1, 32, 48 * 1024 + 1, ValueError, r"shared_mem=49153 bytes exceeds max_dynamic_shared_size_bytes"),
    (1, 32, -1, ValueError, r"negative"),
], ids=["grid-0", "grid-y-0", "grid-y-too-big", "block-x-too-big", "block-z-too-big", "too-many-threads",
        "4-dims", "float-grid", "shared-too-big", "shared-negative"])
def test_launch_configuration_is_validated(rt, grid, block, shared, exc, pattern):
    a = np.zeros(4, np.float32)
    with pytest.raises(exc, match=pattern):
        rt.function(SRC, "selftest::vector_add")(grid, block, (a, a, a, i32(4)), shared_mem=shared)


def test_opting_in_to_more_dynamic_shared_memory(rt):
    k = EmuKernel(rt.module(SRC), NAMES.index("selftest::reverse_block"))
    k.max_dynamic_shared_size_bytes = 96 * 1024
    x = np.arange(64, dtype=np.float32)
    y = np.zeros(64, np.float32)
    k(1, 64, (x, y, i32(64)), shared_mem=96 * 1024)
    np.testing.assert_array_equal(y, x[::-1])
    with pytest.raises(ValueError):
        k.max_dynamic_shared_size_bytes = 300 * 1024


# ------------------------------------------------------------------------------------------------
# Faults inside kernels
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,pattern", [
    (0, r"assert\(x\[0\] == 12345\) failed in .*selftest_kernels.cu:\d+ in block \(1,0,0\) thread \(3,0,0\)"),
    (1, r"__trap\(\) at .*selftest_kernels.cu:\d+ in block \(1,0,0\) thread \(3,0,0\)"),
    (2, r"divergent __syncthreads\(\): block \(0,0,0\) thread \(\d+,0,0\) waits at .*:\d+ but .* waits at .*:\d+"),
], ids=["assert", "trap", "divergent-barrier"])
def test_faults_raise_runtime_error_and_the_runtime_survives(any_rt, mode, pattern):
    x = np.zeros(8, np.int32)
    with pytest.raises(RuntimeError, match=pattern):
        any_rt.function(SRC, "selftest::failing")(4, 32, (x, i32(mode)))
    # the worker is reusable afterwards
    x2 = np.random.default_rng(5).random(512, dtype=np.float32)
    out = np.zeros(2, np.float32)
    any_rt.function(SRC, "selftest::block_sum<true>")(2, 256, (x2, out, i32(512)))
    np.testing.assert_allclose(out, block_sums(x2, 256), rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Tensor-core mma stand-ins (cuda_compat.h: gpuconv_emu_mma_m16n8k8_tf32 / _m16n8k16_f16 / _cvt_rna_tf32)
# ------------------------------------------------------------------------------------------------

def tf32_round(x):
    """cvt.rna.tf32.f32 of finite float32 values, written independently of the emulator: add half a tf32
    ulp to the bit pattern (a carry bumps the exponent) and clear the 13 low bits."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def tf32_truncate(x):
    """What the tensor core reads of a tf32 operand that skipped the rounding: its top 19 bits."""
    return (np.ascontiguousarray(x, np.float32).view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


def mma_reference(a, b, c):
    """D = C + A[:, 0] B[:, 0], then D += A[:, 1] B[:, 1], for every warp: a (warps, 2, 16, K), b (warps, 2,
    K, 8) float64, c (warps, 16, 8). Each step is exact in float64 (products written out, no BLAS) and rounded
    once to float32, as two accumulating mma calls."""
    d = c.astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        for s in range(2):
            prod = a[:, s, :, :, None] * b[:, s, None, :, :]  # (warps, 16, K, 8)
            d = (d.astype(np.float64) + prod.sum(axis=2)).astype(np.float32)
    return d


def mma_operands(rng, warps, k, kind):
    """A (warps, 2, 16, k), B (warps, 2, k, 8), C (warps, 16, 8) as float32.
    'exact': magnitudes in [0.5, 2) with random signs: after rounding to tf32/f16 every product and sum is
    exact in float64, so the expected float32 result does not depend on the summation order and the check
    can be exact (it catches an accumulation in float32 or float16, and any misplaced element).
    'wide': normal values spread over 10^-3 .. 10^3 (checked with rtol=1e-6).
    'special': 'exact' plus inf (inf * 0 = NaN, inf + finite = inf, -inf + inf = NaN), a NaN in C, and, for
    tf32 (k = 8), products that overflow float32 but not float64 (only the final rounding gives inf; float16
    products cannot overflow float32)."""
    shapes = ((warps, 2, 16, k), (warps, 2, k, 8), (warps, 16, 8))
    if kind == "wide":
        return [(rng.standard_normal(sh) * 10.0 ** rng.uniform(-3, 3, sh)).astype(np.float32) for sh in shapes]
    a, b, c = [(rng.uniform(0.5, 2.0, sh) * rng.choice([-1.0, 1.0], sh)).astype(np.float32) for sh in shapes]
    if kind == "special":
        a[0, 0, 3, 1] = np.inf      # row 3 of warp 0: inf * B[1][col]; B[1][5] = 0 gives NaN in D[3][5]
        b[0, 0, 1, 5] = 0.0
        c[0, 7, 2] = np.nan         # NaN in C stays NaN
        big = 1e20 if k == 8 else 60000.0  # 60000: the largest round float16 number
        a[-1, 1, 12, :] = big
        b[-1, 1, :, 6] = big
        a[-1, 0, 9, 0] = -np.inf    # -inf in step 0, +inf in step 1 of the same row: -inf + inf = NaN
        a[-1, 1, 9, 0] = np.inf
        b[-1, :, 0, :] = 1.0
    return a, b, c


MMA_BLOCKS = [(64,), (32, 4), (4, 4, 4), (16, 6)]  # the last two: warps do not follow threadIdx.y rows


def assert_mma_result(d, expected, kind):
    """What both mma kinds must give for ``mma_operands(..., kind)``: exact unless ``wide``, and for
    ``special`` the NaNs that 0 * inf and NaN inputs make (each test checks its own overflow case)."""
    if kind == "wide":
        np.testing.assert_allclose(d, expected, rtol=1e-6, atol=1e-30)
    else:
        np.testing.assert_array_equal(d, expected)
    if kind == "special":
        assert np.isnan(d[0, 3, 5]) and np.isnan(d[0, 7, 2]) and np.isnan(d[-1, 9]).all()


@pytest.mark.parametrize("kind", ["exact", "wide", "special"])
@pytest.mark.parametrize("block", MMA_BLOCKS, ids=lambda b: "x".join(map(str, b)))
def test_mma_m16n8k8_tf32(any_rt, block, kind):
    grid = 2
    warps = grid * int(np.prod(block)) // 32
    a, b, c = mma_operands(np.random.default_rng(10), warps, 8, kind)
    d = np.full((warps, 16, 8), -99.0, np.float32)
    any_rt.function(SRC, "selftest::mma_tf32")(grid, block, (a, b, c, d, i32(0)))
    expected = mma_reference(tf32_round(a).astype(np.float64), tf32_round(b).astype(np.float64), c)
    assert_mma_result(d, expected, kind)
    if kind == "special":
        assert np.isinf(d[-1, 12, 6]) and np.isfinite(d[-1, 12, :6]).all()  # 8e40 overflows only in float32
    if kind == "exact":  # the inputs are not tf32 numbers: unrounded operands would give other results
        unrounded = mma_reference(a.astype(np.float64), b.astype(np.float64), c)
        assert np.mean(unrounded != expected) > 0.9


def test_mma_tf32_ignores_the_low_bits_of_unrounded_operands(any_rt):
    """Step 0 passes A's raw float32 bits (no cvt.rna.tf32): the tensor core reads the top 19 bits only, so
    A is truncated, not rounded and not used in full."""
    warps = 2
    a, b, c = mma_operands(np.random.default_rng(11), warps, 8, "exact")
    d = np.zeros((warps, 16, 8), np.float32)
    any_rt.function(SRC, "selftest::mma_tf32")(1, 64, (a, b, c, d, i32(1)))
    a_seen = np.stack([tf32_truncate(a[:, 0]), tf32_round(a[:, 1])], axis=1).astype(np.float64)
    expected = mma_reference(a_seen, tf32_round(b).astype(np.float64), c)
    np.testing.assert_array_equal(d, expected)
    rounded = mma_reference(tf32_round(a).astype(np.float64), tf32_round(b).astype(np.float64), c)
    full = mma_reference(np.stack([a[:, 0], tf32_round(a[:, 1])], axis=1).astype(np.float64),
                         tf32_round(b).astype(np.float64), c)
    assert np.mean(expected != rounded) > 0.5 and np.mean(expected != full) > 0.5  # the check can tell


@pytest.mark.parametrize("kind", ["exact", "wide", "special"])
@pytest.mark.parametrize("block", MMA_BLOCKS, ids=lambda b: "x".join(map(str, b)))
def test_mma_m16n8k16_f16(any_rt, block, kind):
    grid = 2
    warps = grid * int(np.prod(block)) // 32
    a, b, c = mma_operands(np.random.default_rng(12), warps, 16, kind)
    a16, b16 = a.astype(np.float16), b.astype(np.float16)
    d = np.full((warps, 16, 8), -99.0, np.float32)
    any_rt.function(SRC, "selftest::mma_f16")(grid, block, (a16, b16, c, d))
    expected = mma_reference(a16.astype(np.float64), b16.astype(np.float64), c)
    assert_mma_result(d, expected, kind)
    if kind == "special":
        assert abs(d[-1, 12, 6]) > 2.8e10  # 16 * 60000^2 + C, exact


def test_mma_with_several_worker_threads(rt, monkeypatch):
    """Each OS thread running blocks has its own exchange area (static __shared__ is thread_local)."""
    monkeypatch.setenv("GPUCONV_EMU_WORKERS", "2")
    grid, block = 8, (32, 4)
    warps = grid * 4
    a, b, c = mma_operands(np.random.default_rng(13), warps, 8, "exact")
    d = np.zeros((warps, 16, 8), np.float32)
    rt.function(SRC, "selftest::mma_tf32")(grid, block, (a, b, c, d, i32(0)))
    np.testing.assert_array_equal(d, mma_reference(tf32_round(a).astype(np.float64),
                                                   tf32_round(b).astype(np.float64), c))


def test_cvt_rna_tf32(any_rt):
    bits = np.uint32
    special = np.array([
        0x3F800000 + 0x1000,   # 1 + 2^-11: a tie, away from zero -> 1 + 2^-10 (nearest-even would give 1)
        0xBF800000 + 0x1000,   # -(1 + 2^-11) -> -(1 + 2^-10)
        0x3F800000 + 0x0FFF,   # just below the tie -> 1
        0x3F800000 + 0x3000,   # 1 + 3 * 2^-11: a tie -> 1 + 2^-9
        0x3FFFF000,            # mantissa carry into the exponent -> 2.0
        0x7F7FFFFF,            # FLT_MAX -> inf (beyond the largest tf32 by more than half an ulp)
        0xFF7FFFFF,            # -FLT_MAX -> -inf
        0x7F7FF000,            # the tie above the largest tf32 -> inf
        0x7F7FEFFF,            # just below it -> the largest tf32, 0x7F7FE000
        0x7F800000, 0xFF800000,  # +-inf stay
        0x00000000, 0x80000000,  # +-0 stay
        0x00000001, 0x00000FFF,  # tiny subnormals -> 0
        0x00001000,            # subnormal tie -> 0x00002000
        0x807FFFFF,            # the largest negative subnormal -> -FLT_MIN
    ], np.uint32)
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800FFF, 0x7FFFFFFF, 0xFFFFFFFF, 0x7FBFF000],
                    np.uint32)  # 0x7F800001: rounding its bits would give inf; 0x7FFFFFFF: a carry into the sign
    rng = np.random.default_rng(14)
    rand = np.concatenate([rng.integers(0, 2**32, 4000, dtype=np.uint64).astype(np.uint32),  # every class
                           rng.standard_normal(1000).astype(np.float32).view(np.uint32)])
    x = np.concatenate([special, nans, rand]).view(np.float32)
    y = np.zeros(x.size, np.uint32)
    any_rt.function(SRC, "selftest::cvt_tf32")(4, 128, (x, y, i32(x.size)))
    u = x.view(np.uint32)
    is_nan = np.isnan(x)
    finite = np.isfinite(x)
    np.testing.assert_array_equal(y[finite], tf32_round(x[finite]).view(np.uint32))
    np.testing.assert_array_equal(y[np.isinf(x)], u[np.isinf(x)])
    assert np.isnan(y[is_nan].view(np.float32)).all()
    assert np.all(y[is_nan] & bits(0x1FFF) == 0) and np.all(y[is_nan] >> 31 == u[is_nan] >> 31)  # sign kept
    assert is_nan[special.size:special.size + nans.size].all() and is_nan[special.size + nans.size:].any()
    np.testing.assert_array_equal(y[:special.size], np.array([
        0x3F802000, 0xBF802000, 0x3F800000, 0x3F804000, 0x40000000, 0x7F800000, 0xFF800000, 0x7F800000,
        0x7F7FE000, 0x7F800000, 0xFF800000, 0x00000000, 0x80000000, 0x00000000, 0x00000000, 0x00002000,
        0x80800000], np.uint32))


@pytest.mark.parametrize("mode,block,pattern", [
    (0, 64, r"divergent __syncthreads\(\): .*the emulated mma\.sync \(cuda_compat\.h; block-collective"),
    (1, 64, r"gpuconv_emu_mma_m16n8k8_tf32: lane 16 of warp [01] did not call it \(mma\.sync needs all 32 "
            r"lanes of the warp, and the same mma\) at .*cuda_compat\.h:\d+ in block \(0,0,0\)"),
    (3, 48, r"lane 16 of warp 1 did not call it .*the block size is not a multiple of 32"),
], ids=["some-warps-then-barrier", "some-lanes", "partial-warp"])
def test_mma_misuse_raises_instead_of_hanging(any_rt, mode, block, pattern):
    """In the emulator the mma is block-collective: a warp skipping it while the others wait in it meets them
    at a different barrier, and a warp with missing lanes is reported by the mma itself."""
    out = np.zeros(2 * 128, np.float32)
    with pytest.raises(RuntimeError, match=pattern):
        any_rt.function(SRC, "selftest::mma_misuse")(1, block, (out, i32(mode)))
    # the runtime is usable afterwards, and warps that have returned do not take part (as at a barrier)
    for ok_mode, expected_second_warp in [(2, 0.0), (3, 16.0)]:
        out[:] = 0.0
        any_rt.function(SRC, "selftest::mma_misuse")(1, 64, (out, i32(ok_mode)))
        assert np.all(out[:128] == 16.0) and np.all(out[128:] == expected_second_warp)


# ------------------------------------------------------------------------------------------------
# Compilation: cache, errors, the ucontext fallback, sanitize mode
# ------------------------------------------------------------------------------------------------

def test_on_disk_cache_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCONV_EMU_CACHE", str(tmp_path))
    small = {SRC: ["selftest::vector_add"]}
    before = emu.compile_count()
    r1 = EmulatedRuntime(HERE, small)
    r1.function(SRC, "selftest::vector_add")
    assert emu.compile_count() == before + 1 and not r1.module(SRC).from_cache
    assert len(list(tmp_path.glob("selftest_kernels-*.so"))) == 1
    monkeypatch.setattr(emu, "_loaded", {})  # as in a fresh process
    t0 = time.perf_counter()
    r2 = EmulatedRuntime(HERE, small)
    k = r2.function(SRC, "selftest::vector_add")
    elapsed = time.perf_counter() - t0
    assert emu.compile_count() == before + 1, "the second runtime ran the compiler again"
    assert r2.module(SRC).from_cache and elapsed < 0.5
    a = np.ones(8, np.float32)
    c = np.zeros(8, np.float32)
    k(1, 8, (a, a, c, i32(8)))
    assert np.all(c == 2)


def test_compile_errors_carry_gxx_stderr(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCONV_EMU_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "warp.cu"
    src.write_text(textwrap.dedent("""\
        __global__ void warp_sum(float* x) {
            float v = x[threadIdx.x];
            v += __shfl_down_sync(0xffffffffu, v, 16);
            x[threadIdx.x] = v;
        }
    """))
    with pytest.raises(RuntimeError, match=r"(?s)g\+\+ failed to compile .*warp.cu.*__shfl_down_sync is not "
                                           r"supported by the gpuconv CPU emulator"):
        compile_module(src, ["warp_sum"])
    assert not list((tmp_path / "cache").glob("*.so"))


def test_ucontext_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCONV_EMU_CACHE", str(tmp_path))
    r = EmulatedRuntime(HERE, {SRC: ["selftest::block_sum<true>", "selftest::early_exit"]},
                        reverse_threads=True, extra_flags=("-DGPUCONV_EMU_UCONTEXT=1",))
    assert r.module(SRC).config.startswith("switch=ucontext")
    x = np.random.default_rng(6).random(1024, dtype=np.float32)
    out = np.zeros(4, np.float32)
    r.function(SRC, "selftest::block_sum<true>")(4, 256, (x, out, i32(1024)))
    np.testing.assert_allclose(out, block_sums(x, 256), rtol=1e-5)
    xi = np.arange(128, dtype=np.int32)
    oi = np.zeros(128, np.int32)
    r.function(SRC, "selftest::early_exit")(1, 128, (xi, oi, i32(100)))
    np.testing.assert_array_equal(oi[:100], xi[99::-1] + 100000)


def test_sanitize_needs_preloaded_libasan():
    if emu.asan_preloaded():
        pytest.skip("libasan is preloaded in this process")
    with pytest.raises(RuntimeError, match=r"LD_PRELOAD=\$\(g\+\+ -print-file-name=libasan.so\)"):
        EmulatedRuntime(HERE, INSTANTIATIONS, sanitize=True)


_ASAN_SCRIPT = """
import numpy as np
from tests.emulator import EmulatedRuntime
rt = EmulatedRuntime({here!r}, {{"selftest_kernels.cu": ["selftest::read_past_end", "selftest::block_sum<true>"]}},
                     sanitize=True)
x = np.random.rand(1000).astype(np.float32)
out = np.zeros(4, np.float32)
rt.function("selftest_kernels.cu", "selftest::block_sum<true>")(4, 256, (x, out, np.int32(1000)))
assert np.allclose(out, [x[i * 256:(i + 1) * 256].sum() for i in range(4)], rtol=1e-5)
y = np.zeros(1000, np.float32)
rt.function("selftest_kernels.cu", "selftest::read_past_end")(4, 256, (x, y, np.int32(1000), np.int32(0)))
print("CLEAN RUN OK", flush=True)
rt.function("selftest_kernels.cu", "selftest::read_past_end")(4, 256, (x, y, np.int32(1000), np.int32(1)))
print("NOT DETECTED", flush=True)
"""


def test_sanitize_mode_reports_out_of_bounds_read(tmp_path):
    """Run in a child process with libasan preloaded: a clean launch passes, a read one element past the
    end of an array is reported by AddressSanitizer."""
    try:
        libasan = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True,
                                 check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no g++")
    if not os.path.isabs(libasan) or not os.path.exists(libasan):
        pytest.skip("g++ has no libasan")
    env = dict(os.environ, LD_PRELOAD=libasan, ASAN_OPTIONS="detect_leaks=0", GPUCONV_EMU_CACHE=str(tmp_path),
               PYTHONPATH=str(HERE.parent.parent), OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _ASAN_SCRIPT.format(here=str(HERE))], env=env,
                          capture_output=True, text=True, timeout=300)
    assert "CLEAN RUN OK" in proc.stdout, proc.stderr[-3000:]
    assert "NOT DETECTED" not in proc.stdout
    assert "AddressSanitizer: heap-buffer-overflow" in proc.stderr, proc.stderr[-3000:]
    assert "selftest::read_past_end" in proc.stderr
