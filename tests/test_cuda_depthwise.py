"""The depthwise conv2d CUDA algorithm (kernels/conv2d_depthwise.cu, gpuconv/_cuda/conv_depthwise.py)
against the textbook reference of tests/reference.py. Every test that launches a kernel takes the
``rt`` fixture (tests/runners.py) and runs twice: executed on the CPU by tests/emulator
(``[emulated-...]``, marked ``emulated``) and on a GPU (``[gpu-...]``, marked ``gpu``; skipped without
CuPy or a device), with the same NumPy test data (``numpy_io``). The reversed thread order is the
emulator's (``with_thread_order``); on a GPU those cases run once more in the hardware's own order.

Covers: a pairwise matrix (odd sizes, planes that are not tile multiples, 1x1 images, channel multipliers
1-3, the 3x3 / 5x5 specializations and generic sizes, stride 1/2/3/(1,2), asymmetric padding, dilation,
flip, bias, every activation, all dtypes, non-contiguous inputs, both thread orders); MobileNetV2-shaped
layers (scaled down); several work items per block; the grid-stride loop; the decline rules (more than one
input channel per filter, shared memory, 32-bit sizes); which instantiation and launch shape the host
picks; and an AddressSanitizer run. The shared all-backend matrix (tests/test_conv.py) runs depthwise too.

Emulator only: ``test_no_out_of_bounds_access_under_asan`` (an AddressSanitizer build of the kernel; on a
GPU, compute-sanitizer memcheck over the ``gpu`` tests, in .ci/gpu, is its counterpart). Host-side tests
(tile and decline rules, instantiation lists, the kernel's constants; nothing launched) carry no marker.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from gpuconv._cuda import conv, conv_depthwise as dw, limits, ops, select
from gpuconv._cuda.runtime import kernels_dir
from gpuconv._geometry import conv_geometry
from tests.cases import kernel_case_id, pairwise, valid_for
from tests.reference import reference_conv2d
from tests.runners import SpyRuntime, numpy_io, runtime_fixture, use_heuristic_auto, with_thread_order
from tests.support import NoLaunch, noncontiguous_view
from tests.tolerance import assert_close

# The emulator and a GPU (tests/runners.py): every test that takes ``rt`` runs on both. Both thread orders
# (with_thread_order): threads of each block started in reverse order expose a missing barrier (a thread
# then reads shared memory before it is staged, which the emulator poisons with NaN, or after the next
# work item overwrote it).
rt = runtime_fixture()


def _geom(x_shape, w_shape, bias, stride=1, padding=0, dilation=1, groups=1, flip=False, activation=None):
    return conv_geometry(x_shape, w_shape, (w_shape[0],) if bias else None, stride, padding, dilation, groups,
                         flip, activation)


def _check(rt, x, w, b, stride=1, padding=0, dilation=1, flip=False, activation=None, groups=None,
           xv=None, wv=None, bv=None):
    """Run depthwise (on views xv/wv/bv when given) and compare with the reference. Returns (geom, id)."""
    groups = x.shape[1] if groups is None else groups
    g = conv_geometry(x.shape, w.shape, None if b is None else b.shape, stride, padding, dilation, groups, flip,
                      activation)
    assert g.Cg == 1
    y, kid = numpy_io(rt, conv.conv2d, x if xv is None else xv, w if wv is None else wv,
                      b if bv is None else bv, g, "depthwise")
    assert y.dtype == x.dtype and y.flags.c_contiguous and y.shape == g.output_shape
    assert kid == dw.depthwise_name(x.dtype, *dw.depthwise_filter_template(g))
    ref, mag = reference_conv2d(x, w, b, stride, padding, dilation, groups, flip, activation)
    assert_close(y, ref, mag, x.dtype, kid)
    return g, kid


# --------------------------------------------------------------------------------------------
# the pairwise matrix
# --------------------------------------------------------------------------------------------

# (C, multiplier): K = C * m filters, groups = C; (1, 3) is one input channel and three filters with
# groups = 1, which is also "one input channel per filter".
CHANNELS = {"dw": (3, 1), "dw2": (2, 2), "c1k3": (1, 3)}

DIMS = {
    # 1x1 image; odd sizes; 33 and 40 columns: more than one 32-wide tile, not a multiple; 17 rows: more
    # than one 16-row tile; narrow planes take 8/16-wide tiles with several work items per block.
    "hw": [(1, 1), (7, 9), (19, 21), (17, 40), (12, 33)],
    "kernel": [(3, 3), (5, 5), (1, 1), (3, 1), (7, 7)],
    "stride": [1, 2, 3, (1, 2)],
    "padding": [0, 1, 2, ((0, 2), (1, 0))],
    "dilation": [1, 2, (2, 1)],
    "channels": list(CHANNELS),
    "N": [1, 2],
    "dtype": [np.float16, np.float32, np.float64],
    "activation": [None, "relu", "leaky_relu", "sigmoid", "tanh"],
    "flip": [False, True],
    "bias": [True, False],
    "layout": ["contiguous", "transposed", "sliced"],
    "order": ["forward", "reversed"],
}


def _case_geometry(case):
    C, m = CHANNELS[case["channels"]]
    H, W = case["hw"]
    return _geom((case["N"], C, H, W), (C * m, 1) + case["kernel"], case["bias"], case["stride"],
                 case["padding"], case["dilation"], C, case["flip"], case["activation"])


CASES = pairwise(DIMS, valid_for(_case_geometry), seed=3)


def _view(a, layout, rng):
    """The same values in a non-contiguous view (tests/support.py: noncontiguous_view), except for
    one-element arrays (a 1x1 image, a single 1x1 filter), every view of which is contiguous."""
    return a if a is None or a.size <= 1 else noncontiguous_view(a, layout, rng)


@pytest.mark.parametrize("case", CASES, ids=[kernel_case_id(c, c["order"]) for c in CASES])
def test_matches_reference(rt, case):
    g = _case_geometry(case)
    rng = np.random.default_rng(0)
    dt = case["dtype"]
    x = rng.standard_normal((g.N, g.C, g.H, g.W)).astype(dt)
    w = (rng.standard_normal((g.K, 1, g.R, g.S)) / np.sqrt(g.R * g.S)).astype(dt)
    b = rng.standard_normal(g.K).astype(dt) if case["bias"] else None
    views = [_view(a, case["layout"], rng) for a in (x, w, b)]
    _check(with_thread_order(rt, case["order"]), x, w, b, case["stride"], case["padding"], case["dilation"],
           case["flip"], case["activation"], groups=g.groups, xv=views[0], wv=views[1], bv=views[2])


def test_case_matrix_covers_the_brief():
    """Every value of every dimension survived the validity filter, and the matrix stays pairwise-sized."""
    for name, values in DIMS.items():
        assert {repr(c[name]) for c in CASES} == {repr(v) for v in values}, name
    assert len(CASES) < 60
    # Each kernel path is exercised: 3x3 / 5x5 with the stride-1 dilation-1 sliding window and with the
    # general tap loop, and the generic kernel.
    paths = set()
    for c in CASES:
        g = _case_geometry(c)
        fixed = dw.depthwise_filter_template(g) != (0, 0)
        paths.add((g.R, "slide" if fixed and g.sh == 1 and g.dh == 1 else "taps" if fixed else "generic"))
    assert {(3, "slide"), (3, "taps"), (5, "slide"), (5, "taps"), (1, "generic"), (7, "generic")} <= paths


# --------------------------------------------------------------------------------------------
# targeted cases
# --------------------------------------------------------------------------------------------

# MobileNetV2's depthwise layers, batch and channels scaled down for the emulator (the planes keep their
# shapes' character: a 32x16 tile with stride 2; 14x14 and 7x7 planes sharing blocks).
MOBILENET = [
    ("dw96/2", (1, 4, 56, 56), 2),
    ("dw144", (1, 3, 28, 28), 1),
    ("dw576", (2, 8, 14, 14), 1),
    ("dw960", (2, 9, 7, 7), 1),
]


@pytest.mark.parametrize("order", ["forward", "reversed"])
@pytest.mark.parametrize("name, shape, stride", MOBILENET, ids=[m[0] for m in MOBILENET])
def test_mobilenet_shapes(rt, name, shape, stride, order):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((shape[1], 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(shape[1]).astype(np.float32)
    g, kid = _check(with_thread_order(rt, order), x, w, b, stride, 1, activation="relu")
    assert kid == "gpuconv::conv2d_depthwise<float, 4, 3, 3>"


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("kernel", [(3, 3), (5, 5), (1, 1), (3, 1), (7, 7)])
def test_sizes_dtypes_multipliers(rt, kernel, multiplier, dtype):
    """Every instantiation, channel multipliers 1 and 2, a plane spanning 2x2 tiles with ragged edges."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 2, 21, 37)).astype(dtype)
    w = rng.standard_normal((2 * multiplier, 1) + kernel).astype(dtype)
    b = rng.standard_normal(2 * multiplier).astype(dtype)
    _check(rt, x, w, b, 1, (kernel[0] // 2, kernel[1] // 2), flip=True, activation="tanh")


@pytest.mark.parametrize("order", ["forward", "reversed"])
@pytest.mark.parametrize("kernel, stride, dilation", [((3, 3), 1, 1), ((5, 5), 2, 1), ((3, 3), 1, 2),
                                                      ((7, 7), 1, 1)])
def test_grid_stride_loop(rt, monkeypatch, order, kernel, stride, dilation):
    """A grid capped at 3 blocks: the kernel covers the remaining work items with its grid-stride loop,
    with the barriers inside it (reversed order: a block restaging its slice while another thread still
    reads it would show). Small planes, so several work items per block in most of these."""
    monkeypatch.setattr(limits, "MAX_GRID_BLOCKS", 3)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 6, 9, 13)).astype(np.float64)
    w = rng.standard_normal((12, 1) + kernel).astype(np.float64)
    spy = SpyRuntime(with_thread_order(rt, order))
    g, _ = _check(spy, x, w, None, stride, 2, dilation, groups=6)
    (_, _, grid, block, _, _), = spy.launches
    assert grid == (3, 1, 1)
    assert dw.depthwise_items(g) > 3 * block[2]


def test_several_items_per_block_with_a_partial_last_group(rt):
    """Tiny planes: 16 work items per block; 6 * 3 = 18 items, so 14 slices of the second block idle (they
    must still take part in the barriers, and write nothing)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 3, 2, 3)).astype(np.float32)
    w = rng.standard_normal((3, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    spy = SpyRuntime(with_thread_order(rt, "reversed"))
    g, _ = _check(spy, x, w, b, 1, 1, activation="sigmoid")
    (_, _, grid, block, _, shared), = spy.launches
    assert dw.depthwise_tile(g) == (8, 1) and block == (8, 1, 16) and grid == (2, 1, 1)
    assert shared == 16 * dw.depthwise_slice_bytes(g, np.float32)


def test_nan_and_inf_propagate(rt):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 2, 20, 35)).astype(np.float32)
    x[0, 0, 3, 4] = np.nan
    x[0, 1, 17, 33] = np.inf
    w = rng.standard_normal((2, 1, 3, 3)).astype(np.float32)
    _check(rt, x, w, None, 1, 1, activation="relu")


def test_empty_batch_and_empty_image(rt):
    """N = 0 (one block that finds no work) and H = 0 with padding (every read is padding: the output is
    the bias through the activation)."""
    x = np.zeros((0, 3, 8, 8), np.float32)
    w = np.ones((3, 1, 3, 3), np.float32)
    g = conv_geometry(x.shape, w.shape, None, 1, 1, 1, 3)
    y, _ = numpy_io(rt, conv.conv2d, x, w, None, g, "depthwise")
    assert y.shape == (0, 3, 8, 8)
    x = np.zeros((2, 2, 0, 5), np.float64)
    w = np.ones((4, 1, 1, 1))
    b = np.array([1.0, -2.0, 3.0, -4.0])
    g, _ = _check(rt, x, w, b, 1, 1, activation="relu")
    assert g.P == 2


def test_auto_picks_depthwise_for_one_channel_per_filter(rt, monkeypatch):
    """The heuristic (measuring off on a GPU) picks depthwise for one input channel per filter."""
    use_heuristic_auto(monkeypatch)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 4, 12, 12)).astype(np.float32)
    w = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    g = conv_geometry(x.shape, w.shape, None, 1, 1, 1, 4)
    assert select.choose_algo(g, np.float32) == "depthwise"
    y, kid = numpy_io(rt, conv.conv2d, x, w, None, g, "auto")
    assert kid == "gpuconv::conv2d_depthwise<float, 4, 3, 3>"
    ref, mag = reference_conv2d(x, w, None, 1, 1, 1, 4, False, None)
    assert_close(y, ref, mag, np.float32, kid)
    # Two input channels per filter: depthwise declines, auto takes the next algorithm.
    g2 = conv_geometry((1, 4, 12, 12), (8, 2, 3, 3), None, 1, 1, 1, 2)
    assert select.choose_algo(g2, np.float32) != "depthwise"
    assert "depthwise" not in select.candidates(g2, np.float32)


# --------------------------------------------------------------------------------------------
# host rules: which instantiation, which launch shape, when it declines
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("kernel, template", [((3, 3), (3, 3)), ((5, 5), (5, 5)), ((1, 1), (0, 0)),
                                              ((3, 1), (0, 0)), ((7, 7), (0, 0)), ((3, 5), (0, 0))])
def test_launch_uses_the_host_rule(rt, kernel, template, dtype):
    """The instantiation that ran is the one depthwise_filter_template names, launched with the block shape
    and shared memory the host rules give (never above MAX_THREADS threads or 48 KiB)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 3, 10, 40)).astype(dtype)
    w = rng.standard_normal((3, 1) + kernel).astype(dtype)
    g = conv_geometry(x.shape, w.shape, None, 1, 0, 1, 3)
    assert dw.depthwise_filter_template(g) == template
    spy = SpyRuntime(rt)
    y, kid = numpy_io(spy, conv.conv2d, x, w, None, g, "depthwise")
    (source, name, grid, block, _, shared), = spy.launches
    assert source == dw.SOURCE and name == kid == dw.depthwise_name(dtype, *template)
    assert name in dw.INSTANTIATIONS and name in ops.INSTANTIATIONS[source]
    tw, th = dw.depthwise_tile(g)
    pb = dw.depthwise_planes_per_block(g, dtype)
    assert block == (tw, th, pb) and tw * th * pb <= dw.MAX_THREADS
    assert grid == (-(-dw.depthwise_items(g) // pb), 1, 1)
    assert shared == pb * dw.depthwise_slice_bytes(g, dtype) <= dw.SHARED_LIMIT_BYTES


def test_tile_rule():
    """TW covers narrow planes with the smallest of 8/16/32; TH grows with P up to MAX_THREADS threads;
    small planes share a block (PB > 1). Never above MAX_THREADS threads in any case."""
    def tile(P, Q):
        g = conv_geometry((1, 1, P, Q), (1, 1, 1, 1))
        return dw.depthwise_tile(g), dw.depthwise_planes_per_block(dataclasses.replace(g, N=1000), np.float32)
    assert tile(112, 112) == ((32, 4), 1)   # 32 x 16 outputs per tile
    assert tile(56, 56) == ((32, 4), 1)
    assert tile(14, 14) == ((16, 4), 2)     # 16 x 16: two 14x14 planes per block
    assert tile(7, 7) == ((8, 2), 8)        # 8 x 8: eight 7x7 planes per block
    assert tile(1, 1) == ((8, 1), 16)
    assert tile(100, 3) == ((8, 16), 1)     # tall and narrow: 8 x 64
    assert tile(1, 500) == ((32, 1), 4)
    for P in (1, 2, 3, 5, 8, 13, 16, 17, 33, 64, 65, 200):
        for Q in (1, 7, 8, 9, 16, 17, 31, 32, 33, 100):
            (tw, th), pb = tile(P, Q)
            assert tw in dw.TILE_WIDTHS and tw * th * pb <= dw.MAX_THREADS


def test_kernel_constants_match_the_host():
    """The kernel's __launch_bounds__ thread count is the host's MAX_THREADS (a bigger block would not
    launch on a GPU; the emulator ignores launch bounds, so this is checked here)."""
    text = (kernels_dir() / dw.SOURCE).read_text()
    assert int(re.search(r"CONV_DEPTHWISE_MAX_THREADS = (\d+);", text).group(1)) == dw.MAX_THREADS
    assert "Measured speed: the README's Benchmarks section" in text  # no figure in the header


def test_instantiations():
    """Every (dtype, filter template) the host can pick is instantiated, and no more than 12 of them."""
    assert len(dw.INSTANTIATIONS) == len(set(dw.INSTANTIATIONS)) <= 12
    assert list(dw.INSTANTIATIONS) == ops.INSTANTIATIONS[dw.SOURCE]
    assert conv.OP.algorithms["depthwise"] is dw.ALGO
    for dt in (np.float16, np.float32, np.float64):
        for R, S in ((1, 1), (3, 3), (5, 5), (7, 7), (3, 1), (1, 5), (11, 11)):
            g = conv_geometry((1, 2, 12, 12), (2, 1, R, S), groups=2)
            assert dw.depthwise_name(dt, *dw.depthwise_filter_template(g)) in dw.INSTANTIATIONS
    from gpuconv._cuda.ops import INSTANTIATIONS
    assert INSTANTIATIONS[dw.SOURCE] == list(dw.INSTANTIATIONS)


@pytest.mark.parametrize("x_shape, w_shape, groups", [((1, 4, 9, 9), (4, 2, 3, 3), 2),
                                                       ((1, 3, 9, 9), (6, 3, 3, 3), 1),
                                                       ((1, 4, 9, 9), (4, 4, 1, 1), 1)])
def test_declines_more_than_one_channel_per_filter(x_shape, w_shape, groups):
    g = conv_geometry(x_shape, w_shape, None, 1, 1, 1, groups)
    reason = dw.depthwise_decline_reason(g, np.float32)
    assert reason.startswith("depthwise declines this geometry because each filter reads")
    assert select.decline_reason("depthwise", g, np.float32) == reason
    x = np.zeros(x_shape, np.float32)
    with pytest.raises(ValueError, match="^depthwise declines this geometry because"):
        conv.conv2d(NoLaunch(), x, np.zeros(w_shape, np.float32), None, g, "depthwise")


def test_shared_memory_decline_rule(rt):
    """3x3 dilated by 30 on a 17x17 output: the 16x32 tile reads a 76x92 rectangle, 27,968 bytes as float32
    (and float16, staged as float32): it runs, one work item per block; float64 doubles it past 48 KiB and
    declines with the rule spelled out, before launching; 'auto' then takes another algorithm."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 2, 75, 75)).astype(np.float32)
    w = rng.standard_normal((2, 1, 3, 3)).astype(np.float32)
    g = conv_geometry(x.shape, w.shape, None, 1, 1, 30, 2)
    assert (g.P, g.Q) == (17, 17)
    assert dw.depthwise_halo(g) == (76, 92)
    assert dw.depthwise_slice_bytes(g, np.float32) == 4 * 76 * 92 == dw.depthwise_slice_bytes(g, np.float16)
    assert dw.depthwise_decline_reason(g, np.float32) is None
    assert dw.depthwise_decline_reason(g, np.float16) is None
    assert dw.depthwise_planes_per_block(g, np.float32) == 1
    spy = SpyRuntime(rt)
    _check(spy, x, w, None, 1, 1, 30)
    assert spy.launches[0].shared_mem == 4 * 76 * 92
    reason = dw.depthwise_decline_reason(g, np.float64)
    assert reason.startswith("depthwise declines this geometry because") and "48 KiB" in reason
    assert "76x92" in reason
    with pytest.raises(ValueError, match="depthwise declines .* shared memory"):
        conv.conv2d(NoLaunch(), x.astype(np.float64), w.astype(np.float64), None, g, "depthwise")
    assert select.choose_algo(g, np.float64) != "depthwise"


def test_shared_memory_rule_halves_items_per_block():
    """Small planes with a big dilated filter: PB slices would exceed 48 KiB, so PB is halved until they
    fit (the rule is a pure function: nothing runs)."""
    g = conv_geometry((64, 8, 61, 61), (8, 1, 3, 3), None, 1, 0, 28, 8)  # 5x5 output, 8x8 tile
    assert dw.depthwise_tile(g) == (8, 2)
    per = dw.depthwise_slice_bytes(g, np.float32)
    pb = dw.depthwise_planes_per_block(g, np.float32)
    assert pb < dw.MAX_THREADS // 16 and pb * per <= dw.SHARED_LIMIT_BYTES < 2 * pb * per


def test_int32_size_rule_declines_before_launching():
    """Sizes travel as C int; a padded extent past 2^31 (with the tile's overhang) is refused."""
    g = conv_geometry((1, 1, 4, 4), (1, 1, 3, 3), padding=1)
    huge = dataclasses.replace(g, pb=2**31 - 20, P=2**31 - 14)
    reason = dw.depthwise_decline_reason(huge, np.float32)
    assert reason.startswith("depthwise declines this geometry because") and "2^31-1" in reason
    x = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="depthwise declines .* 2\\^31-1"):
        conv.conv2d(NoLaunch(), x, np.ones((1, 1, 3, 3), np.float32), None, huge, "depthwise")


# --------------------------------------------------------------------------------------------
# memory safety: AddressSanitizer build
# --------------------------------------------------------------------------------------------

_ASAN_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from gpuconv._cuda import conv, conv_depthwise as dw
from gpuconv._cuda.runtime import kernels_dir
from gpuconv._geometry import conv_geometry
from tests.emulator import EmulatedRuntime

rt = EmulatedRuntime(kernels_dir(), {dw.SOURCE: list(dw.INSTANTIATIONS)}, sanitize=True)
rng = np.random.default_rng(0)
# (x shape, w shape, groups, stride, padding, dilation, flip, dtype): border tiles on every side, halos
# past the image, several items per block with an idle slice, the last filter / channel / sample, the
# generic kernel (taps in shared memory), shared memory near its 48 KiB (ASan checks the exact buffer).
CASES = [
    ((2, 3, 19, 37), (6, 1, 3, 3), 3, 1, 1, 1, False, np.float32),
    ((1, 2, 17, 18), (2, 1, 5, 5), 2, (1, 2), ((0, 2), (1, 0)), 2, True, np.float16),
    ((3, 5, 3, 5), (5, 1, 3, 3), 5, 1, 2, 1, False, np.float64),
    ((1, 3, 23, 9), (6, 1, 7, 1), 3, 3, 2, (2, 1), True, np.float64),
    ((1, 2, 75, 75), (2, 1, 3, 3), 2, 1, 1, 30, False, np.float32),
]
for xs, ws, groups, stride, padding, dilation, flip, dt in CASES:
    x = rng.standard_normal(xs).astype(dt)
    w = rng.standard_normal(ws).astype(dt)
    b = rng.standard_normal(ws[0]).astype(dt)
    g = conv_geometry(xs, ws, b.shape, stride, padding, dilation, groups, flip, "tanh")
    y, _ = conv.conv2d(rt, x, w, b, g, "depthwise")
    assert np.isfinite(y.astype(np.float64)).all(), xs
print("asan ok")
"""


@pytest.mark.emulated
@pytest.mark.slow  # a g++ AddressSanitizer build in a subprocess: CI runs it (-m slow)
def test_no_out_of_bounds_access_under_asan():
    """Edge geometries compiled with -fsanitize=address (in a subprocess, since libasan must be preloaded):
    any read or write past x, w, b, y or the dynamic shared buffer fails."""
    from tests.emulator import run_script_under_asan
    proc = run_script_under_asan(_ASAN_SCRIPT, Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0 and "asan ok" in proc.stdout, (proc.stdout + proc.stderr)[-6000:]
