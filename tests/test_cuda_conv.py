"""The conv2d CUDA kernels (kernels/conv2d_direct.cu, kernels/conv2d_tiled.cu) and their launch code
(gpuconv/_cuda/conv.py) against the textbook reference (tests/reference.py, from the definition in
docs/semantics.md) under the shared tolerance model (tests/tolerance.py). Every test that launches a
kernel takes the ``rt`` fixture (tests/runners.py) and runs twice: executed on the CPU by tests/emulator
(``[emulated-...]``, marked ``emulated``) and on a GPU (``[gpu-...]``, marked ``gpu``; skipped without
CuPy or a device), with the same NumPy test data (``numpy_io``). On a GPU the reversed-thread-order case
runs in the hardware's own order.

Emulator only: ``test_no_out_of_bounds_access_under_asan`` (an AddressSanitizer build of the kernels; on a
GPU, compute-sanitizer memcheck over the ``gpu`` tests, in .ci/gpu, is its counterpart). Host-side tests
(instantiation lists, decline rules that launch nothing) carry no marker.

The geometry matrix (tests/cases.py, ``KERNEL_CASES``; igemm and igemm_tc run it too) is pairwise-covering
(every pair of values of any two dimensions occurs in some case), not a Cartesian product; the shared
all-backend matrix lives in tests/test_conv.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from gpuconv._cuda import conv, conv_direct, conv_tiled, limits, ops, select
from gpuconv._geometry import conv_geometry
from tests.cases import KERNEL_CASES as CASES
from tests.cases import KERNEL_DIMS as DIMS
from tests.cases import kernel_case_data, kernel_case_id
from tests.reference import reference_conv2d
from tests.runners import SpyRuntime, numpy_io, runtime_fixture, use_heuristic_auto, with_thread_order
from tests.support import noncontiguous_view
from tests.tolerance import assert_close

ALGOS = ("direct", "tiled")

# The emulator and a GPU (tests/runners.py): every test that takes ``rt`` runs on both.
rt = runtime_fixture()


# --------------------------------------------------------------------------------------------
# the pairwise geometry matrix (tests/cases.py: KERNEL_CASES, shared with igemm and igemm_tc)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CASES, ids=[kernel_case_id(c) for c in CASES])
def test_matches_reference(rt, case, algo):
    g, x, w, b = kernel_case_data(case)
    rng = np.random.default_rng(1)
    xv, wv, bv = (noncontiguous_view(a, case["layout"], rng) for a in (x, w, b))
    y, kernel_id = numpy_io(rt, conv.conv2d, xv, wv, bv, g, algo)
    assert y.dtype == x.dtype and y.flags.c_contiguous and y.shape == g.output_shape
    assert kernel_id.startswith(f"gpuconv::conv2d_{algo}<")
    ref, mag = reference_conv2d(x, w, b, case["stride"], case["padding"], case["dilation"], g.groups, g.flip,
                                g.activation)
    assert_close(y, ref, mag, case["dtype"], kernel_id)


def test_case_matrix_covers_the_brief():
    """The pairwise generator kept every value of every dimension (none was dropped as invalid)."""
    for name, values in DIMS.items():
        seen = {repr(c[name]) for c in CASES}
        assert seen == {repr(v) for v in values}, name
    assert len(CASES) < 60  # the matrix stays pairwise-sized


# --------------------------------------------------------------------------------------------
# targeted cases
# --------------------------------------------------------------------------------------------

def _run_both(rt, x, w, b, stride=1, padding=0, dilation=1, groups=1, flip=False, activation=None, seed=0):
    g = conv_geometry(x.shape, w.shape, None if b is None else b.shape, stride, padding, dilation, groups,
                      flip, activation)
    ref, mag = reference_conv2d(x, w, b, stride, padding, dilation, groups, flip, activation)
    for algo in ALGOS:
        y, kid = numpy_io(rt, conv.conv2d, x, w, b, g, algo)
        assert_close(y, ref, mag, x.dtype, kid)
    return g


@pytest.mark.parametrize("activation", [None, "relu", "leaky_relu", "sigmoid", "tanh"])
def test_activations_with_large_values(rt, activation):
    """Both signs and saturating magnitudes, every activation, float32 and float64."""
    rng = np.random.default_rng(3)
    for dt in (np.float32, np.float64):
        x = (rng.standard_normal((2, 3, 9, 11)) * 20).astype(dt)
        w = rng.standard_normal((4, 3, 3, 3)).astype(dt)
        b = rng.standard_normal(4).astype(dt)
        _run_both(rt, x, w, b, padding=1, activation=activation)


def test_kg_not_multiple_of_filter_block(rt):
    """Kg = 17 = 2 full blocks of 8 + 1, two groups, Cg = 9 (two channel chunks), 3x3 specialization."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 18, 18, 17)).astype(np.float32)
    w = rng.standard_normal((34, 9, 3, 3)).astype(np.float32)
    b = rng.standard_normal(34).astype(np.float32)
    g = _run_both(rt, x, w, b, padding=1, groups=2)
    assert conv_tiled.tiled_filter_block(g) == 8 and g.Kg % 8 == 1


def test_nan_and_inf_propagate(rt):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 2, 20, 20)).astype(np.float32)
    x[0, 0, 3, 4] = np.nan
    x[0, 1, 17, 18] = np.inf
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    _run_both(rt, x, w, None, padding=1, activation="relu")


def test_empty_image_with_padding(rt):
    """H = 0 with padding: every read is padding, the output is the bias (through the activation)."""
    x = np.zeros((2, 3, 0, 5), dtype=np.float64)
    w = np.ones((4, 3, 1, 1))
    b = np.array([1.0, -2.0, 3.0, -4.0])
    g = _run_both(rt, x, w, b, padding=1, activation="relu")
    assert g.P == 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grid_stride_loops(rt, monkeypatch, dtype):
    """A grid capped below the block count: every kernel must cover the rest with its grid-stride loop
    (the tiled one with its barriers inside that loop)."""
    monkeypatch.setattr(limits, "MAX_GRID_BLOCKS", 3)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 9, 20, 18)).astype(dtype)
    w = rng.standard_normal((10, 9, 3, 3)).astype(dtype)
    spy = SpyRuntime(rt)
    _run_both(spy, x, w, None, padding=1, stride=(1, 2))
    assert [launch.grid[0] for launch in spy.launches] == [3, 3]


# --------------------------------------------------------------------------------------------
# barrier check: reversed thread order
# --------------------------------------------------------------------------------------------

def test_tiled_reverse_thread_order(rt, monkeypatch):
    """Threads of a block run in reverse order: with a missing barrier, a thread would read shared memory
    before the others staged it (the emulator poisons shared memory with NaN bytes first) or after the
    next chunk overwrote it. Several channel chunks, a partial filter block, grid-stride over 2 blocks.
    (On a GPU: the same case in the hardware's thread order.)"""
    monkeypatch.setattr(limits, "MAX_GRID_BLOCKS", 2)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 20, 19, 18)).astype(np.float32)
    w = rng.standard_normal((10, 20, 3, 3)).astype(np.float32)
    b = rng.standard_normal(10).astype(np.float32)
    g = conv_geometry(x.shape, w.shape, b.shape, 1, 1, 1, 1, False, None)
    assert conv_tiled.tiled_channels_per_chunk(g, np.float32) < g.Cg
    ref, mag = reference_conv2d(x, w, b, 1, 1, 1, 1, False, None)
    y, kid = numpy_io(with_thread_order(rt, "reversed"), conv.conv2d, x, w, b, g, "tiled")
    assert_close(y, ref, mag, np.float32, kid)


# --------------------------------------------------------------------------------------------
# kernel ids
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, groups, dtype, algo, expected", [
    ((8, 4, 3, 3), 1, np.float32, "tiled", "gpuconv::conv2d_tiled<float, 16, 16, 8, 3, 3>"),
    ((4, 1, 5, 5), 4, np.float64, "tiled", "gpuconv::conv2d_tiled<double, 16, 16, 1, 5, 5>"),
    ((4, 1, 1, 1), 4, np.float32, "tiled", "gpuconv::conv2d_tiled<float, 16, 16, 1, 0, 0>"),
    ((8, 2, 1, 1), 2, np.float16, "tiled", "gpuconv::conv2d_tiled<gpuconv::half, 16, 16, 8, 1, 1>"),
    ((8, 4, 5, 5), 1, np.float64, "tiled", "gpuconv::conv2d_tiled<double, 16, 16, 8, 0, 0>"),
    ((8, 4, 7, 7), 1, np.float32, "tiled", "gpuconv::conv2d_tiled<float, 16, 16, 8, 0, 0>"),
    ((8, 4, 3, 1), 1, np.float32, "tiled", "gpuconv::conv2d_tiled<float, 16, 16, 8, 0, 0>"),
    ((8, 2, 3, 3), 2, np.float16, "direct", "gpuconv::conv2d_direct<gpuconv::half>"),
    ((8, 4, 3, 3), 1, np.float64, "direct", "gpuconv::conv2d_direct<double>"),
])
def test_kernel_id_names_the_kernel_that_ran(rt, shape, groups, dtype, algo, expected):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 4, 17, 17)).astype(dtype)
    w = rng.standard_normal(shape).astype(dtype)
    g = conv_geometry(x.shape, w.shape, None, 1, 3, 1, groups)
    spy = SpyRuntime(rt)
    y, kid = numpy_io(spy, conv.conv2d, x, w, None, g, algo)
    assert kid == expected
    assert len(spy.launches) == 1
    source, name, grid, block, _, shared = spy.launches[0]
    assert name == kid and name in ops.INSTANTIATIONS[source]
    if algo == "tiled":
        assert block == (conv_tiled.TILE_Q, conv_tiled.THREAD_ROWS, 1)
        cb = conv_tiled.tiled_channels_per_chunk(g, dtype)
        assert shared == conv_tiled.tiled_shared_bytes(g, dtype, cb) <= limits.SHARED_LIMIT_BYTES
    else:
        assert shared == 0


def test_auto_reports_the_chosen_kernel(rt, monkeypatch):
    """choose_algo's documented rule: the first algorithm of heuristic_order that is registered and
    accepts the call. An ordinary 3x3 convolution prefers igemm (implicit GEMM); among the basic kernels,
    direct comes before tiled when an output plane has fewer than 64 pixels. 'auto' on a runtime that
    cannot time kernels (the emulator), or with measuring off (here on a GPU), runs that choice and reports
    its kernel."""
    use_heuristic_auto(monkeypatch)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 3, 20, 20)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    big = conv_geometry(x.shape, w.shape, None, 1, 1)
    small = conv_geometry(x.shape, w.shape, None, 4, 0)  # 5x5 output: < 64 pixels
    assert select.heuristic_order(big) == ("igemm", "tiled", "direct")
    assert select.heuristic_order(small) == ("igemm", "direct", "tiled")
    if "igemm" in conv.OP.algorithms:
        assert select.choose_algo(big, np.float32) == select.choose_algo(small, np.float32) == "igemm"
        y, kid = numpy_io(rt, conv.conv2d, x, w, None, big, "auto")
        assert kid.startswith("gpuconv::conv2d_igemm<float, ")
    # Without igemm the basic order decides.
    monkeypatch.delitem(conv.OP.algorithms, "igemm", raising=False)
    assert select.choose_algo(big, np.float32) == "tiled"
    assert select.choose_algo(small, np.float32) == "direct"
    y, kid = numpy_io(rt, conv.conv2d, x, w, None, big, "auto")
    assert kid == "gpuconv::conv2d_tiled<float, 16, 16, 8, 3, 3>"
    y, kid = numpy_io(rt, conv.conv2d, x, w, None, small, "auto")
    assert kid == "gpuconv::conv2d_direct<float>"
    ref, mag = reference_conv2d(x, w, None, 4, 0, 1, 1, False, None)
    assert_close(y, ref, mag, np.float32)


def test_instantiations_cover_every_request():
    """Every (dtype, KB, filter template) conv2d can pick is instantiated."""
    for dt in (np.float16, np.float32, np.float64):
        assert conv_direct.direct_name(dt) in ops.INSTANTIATIONS[conv_direct.SOURCE]
        for kg in (1, 3, 4, 9):
            for R, S in ((1, 1), (3, 3), (5, 5), (7, 7), (3, 1), (1, 5)):
                g = conv_geometry((1, kg, 9, 9), (kg, 1, R, S), groups=kg) if kg < 4 else \
                    conv_geometry((1, 2, 9, 9), (kg, 2, R, S))
                name = conv_tiled.tiled_name(dt, conv_tiled.tiled_filter_block(g), *conv_tiled.tiled_filter_template(g))
                assert name in ops.INSTANTIATIONS[conv_tiled.SOURCE]


def test_table_lists_conv_instantiations():
    """Every conv2d algorithm's instantiations are compiled with its source."""
    for a in conv.OP.algorithms.values():
        assert set(a.instantiations) <= set(ops.INSTANTIATIONS[a.source])


# --------------------------------------------------------------------------------------------
# the tiled decline rule
# --------------------------------------------------------------------------------------------

def test_tiled_decline_rule(rt, monkeypatch):
    """A 3x3 filter dilated by 60 needs a 136x136 halo per channel: 73,984 bytes of float32 staging
    > 48 KiB, so tiled declines with the rule spelled out; 'auto' skips it (its heuristic: igemm when
    registered, else direct); direct computes it."""
    use_heuristic_auto(monkeypatch)
    rng = np.random.default_rng(10)
    x = rng.standard_normal((1, 2, 125, 123)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    g = conv_geometry(x.shape, w.shape, None, 1, 0, 60)
    assert conv_tiled.tiled_halo(g) == (136, 136)
    assert conv_tiled.tiled_shared_bytes(g, np.float32, 1) == 4 * (136 * 136 + 1 * 9)
    reason = conv_tiled.tiled_shared_limit_reason(g, np.float32)
    assert reason is not None and reason.startswith("tiled declines") and "48 KiB" in reason
    with pytest.raises(ValueError, match="tiled declines .* because .*shared memory"):
        numpy_io(rt, conv.conv2d, x, w, None, g, "tiled")
    expected = "igemm" if "igemm" in conv.OP.algorithms else "direct"
    assert select.choose_algo(g, np.float32) == expected
    ref, mag = reference_conv2d(x, w, None, 1, 0, 60, 1, False, None)
    y, kid = numpy_io(rt, conv.conv2d, x, w, None, g, "auto")
    assert kid.startswith(f"gpuconv::conv2d_{expected}<float")
    assert_close(y, ref, mag, np.float32)
    y, kid = numpy_io(rt, conv.conv2d, x, w, None, g, "direct")
    assert kid == "gpuconv::conv2d_direct<float>"
    assert_close(y, ref, mag, np.float32)


def test_tiled_near_the_limit_runs_one_channel_per_chunk(rt):
    """Dilation 40: a 96x96 halo, 36,900 bytes per float32 channel — under 48 KiB, so tiled stages one
    channel at a time (and launches with that much dynamic shared memory); float64 doubles it past the
    limit and declines. The rule depends on the dtype's accumulation size."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 3, 85, 83)).astype(np.float32)
    w = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    g = conv_geometry(x.shape, w.shape, None, 1, 1, 40)
    assert conv_tiled.tiled_shared_limit_reason(g, np.float32) is None
    assert conv_tiled.tiled_channels_per_chunk(g, np.float32) == 1
    assert conv_tiled.tiled_shared_limit_reason(g, np.float64) is not None
    assert conv_tiled.tiled_shared_limit_reason(g, np.float16) is None  # float16 stages float32 values
    _run_both(rt, x, w, None, padding=1, dilation=40)


def test_decline_rule_is_a_pure_function_of_the_geometry():
    g = conv_geometry((1, 1, 200, 200), (1, 1, 3, 3), dilation=1)
    assert conv_tiled.tiled_shared_limit_reason(g, np.float64) is None
    huge = dataclasses.replace(g, dh=80, dw=80)  # sizes only; nothing is launched
    assert "tiled declines" in conv_tiled.tiled_shared_limit_reason(huge, np.float32)


def test_int32_size_rule_declines_before_launching():
    """Sizes travel as C int; a padded extent past 2^31 is refused for both algorithms (nothing runs)."""
    g = conv_geometry((1, 1, 4, 4), (1, 1, 1, 1))
    huge = dataclasses.replace(g, pb=2**31, P=2**31 + 4)
    assert conv_tiled.tiled_int32_limit_reason(huge) is not None

    class NoLaunch:
        xp = np

        def function(self, *a):
            raise AssertionError("must not launch")
    x = np.zeros((1, 1, 4, 4), np.float32)
    for algo in ALGOS:
        with pytest.raises(ValueError, match=f"{algo} declines .* 2\\^31-1"):
            conv.conv2d(NoLaunch(), x, np.ones((1, 1, 1, 1), np.float32), None, huge, algo)


# --------------------------------------------------------------------------------------------
# memory safety: AddressSanitizer build of the kernels
# --------------------------------------------------------------------------------------------

_ASAN_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from gpuconv._cuda import conv, ops
from gpuconv._cuda.runtime import kernels_dir
from gpuconv._geometry import conv_geometry
from tests.emulator import EmulatedRuntime

rt = EmulatedRuntime(kernels_dir(), ops.INSTANTIATIONS, sanitize=True)
rng = np.random.default_rng(0)
# (x shape, w shape, groups, stride, padding, dilation, flip, dtype): partial filter blocks in the LAST
# group (reads past w's end if unguarded), border tiles, depthwise, KB = 1, dilation 40 (shared memory
# staged one channel at a time, near its 48 KiB; ASan checks the exact dynamic buffer).
CASES = [
    ((2, 6, 19, 21), (18, 2, 3, 3), 3, 1, 1, 1, False, np.float32),
    ((1, 5, 17, 18), (5, 1, 5, 5), 5, (1, 2), ((0, 2), (1, 0)), 2, True, np.float16),
    ((1, 3, 23, 9), (6, 1, 3, 1), 3, 3, 2, (2, 1), False, np.float64),
    ((1, 3, 85, 83), (2, 3, 3, 3), 1, 1, 1, 40, False, np.float32),
    ((2, 9, 13, 16), (10, 9, 7, 7), 1, 2, 3, 1, True, np.float32),
]
for xs, ws, groups, stride, padding, dilation, flip, dt in CASES:
    x = rng.standard_normal(xs).astype(dt)
    w = rng.standard_normal(ws).astype(dt)
    b = rng.standard_normal(ws[0]).astype(dt)
    g = conv_geometry(xs, ws, b.shape, stride, padding, dilation, groups, flip, "tanh")
    yd, _ = conv.conv2d(rt, x, w, b, g, "direct")
    yt, _ = conv.conv2d(rt, x, w, b, g, "tiled")
    tol = 1e-2 if dt == np.float16 else 1e-5
    assert np.allclose(yd.astype(np.float64), yt.astype(np.float64), rtol=tol, atol=tol), xs
print("asan ok")
"""


@pytest.mark.emulated
@pytest.mark.slow  # a g++ AddressSanitizer build in a subprocess: CI runs it (-m slow)
def test_no_out_of_bounds_access_under_asan():
    """Both kernels on edge geometries, compiled with -fsanitize=address (in a subprocess, since libasan
    must be preloaded): any read or write past x, w, b, y or the dynamic shared buffer fails."""
    from tests.emulator import run_script_under_asan
    proc = run_script_under_asan(_ASAN_SCRIPT, Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0 and "asan ok" in proc.stdout, (proc.stdout + proc.stderr)[-6000:]
