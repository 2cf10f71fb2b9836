"""``conv1d_igemm`` (kernels/conv1d_igemm.cu, gpuconv/_cuda/conv1d_igemm.py): the implicit-GEMM kernel body
with the 1-D gather geometry (no row axis), and its split-K kernel, against the textbook N-D reference
(tests/reference.py ``reference_conv_nd``) and PyTorch's ``F.conv1d`` (skipped without torch).

Every test that launches a kernel takes the ``rt`` fixture (tests/runners.py): executed on the CPU by
tests/emulator (``[emulated-...]``, marked ``emulated``) and on a GPU (``[gpu-...]``; skipped without one),
with the same NumPy data (``numpy_io``). Shapes are odd and not tile multiples; the (c, s) tap walk is driven
through reductions Cg*S below, at and above BK and through its carry (S below, at and above BK); each tile
config is forced on small problems; both thread orders run (``with_thread_order``: a missing barrier shows
as the emulator's NaN poison). Split-K: forced range counts on every tile, the rule's split, bitwise
repeatable in both thread orders, the workspace it allocates. Also: 4-wide weight loads on and off, the
grid-stride loop, the public ``gpuconv.conv1d`` record (one kernel, or the height-1 view and why) and the
ABI (the unit-height ConvParams). Host-side rule tests carry no marker. Emulator only, slow: an
AddressSanitizer build over the tile edges.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import gpuconv
from gpuconv._cuda import abi, conv1d_igemm, conv_igemm, gemm, limits, ops
from gpuconv._cuda.gemm import LARGE_TILE, SMALL_TILE, WIDE_TILE
from gpuconv._geometry_nd import conv_nd_geometry
from tests.cases import pairwise
from tests.reference import explicit_padding_nd, reference_conv_nd
from tests.runners import SpyRuntime, runtime_fixture, torch, with_thread_order
from tests.support import IgemmNdSuite, NoLaunch, noncontiguous_view, random_conv_arrays
from tests.tolerance import assert_close

ORDERS = ("forward", "reversed")

rt = runtime_fixture()

# the suite's helpers (tests/support.py), bound to conv1d_igemm
SUITE = IgemmNdSuite(1, conv1d_igemm, conv1d_igemm.conv1d, conv1d_igemm.launch_conv1d_igemm,
                     conv1d_igemm.conv1d_igemm_name, gpuconv.conv1d)
_arrays, _geometry, _run, _check = random_conv_arrays, SUITE.geometry, SUITE.run, SUITE.check
_rule_kernel_id, _public = SUITE.rule_kernel_id, SUITE.public


# --------------------------------------------------------------------------------------------
# the geometry matrix: every option, pairwise, both thread orders
# --------------------------------------------------------------------------------------------

CHANNELS = {"g1": (3, 5, 1), "g2": (4, 6, 2), "dw": (3, 3, 3), "g3x": (6, 9, 3), "deep": (40, 7, 1)}  # C, K, groups
DIMS = {
    "L": (1, 7, 13, 30, 67),
    "S": (1, 2, 3, 5, 7),
    "stride": (1, 2, 3),
    "dilation": (1, 2, 3),
    "padding": (0, 1, ((2, 0),), ((0, 3),), "same", "valid"),
    "channels": tuple(CHANNELS), "flip": (False, True),
    "activation": (None, "relu", "leaky_relu", "sigmoid", "tanh"),
    "dtype": (np.float16, np.float32, np.float64), "layout": ("contiguous", "sliced"), "bias": (True, False),
    "N": (1, 3),
}


def _valid(c):
    pad = explicit_padding_nd(c["padding"], (c["S"],), (c["stride"],), (c["dilation"],), (c["L"],), c["flip"])
    return c["L"] + sum(pad[0]) >= c["dilation"] * (c["S"] - 1) + 1


CASES = pairwise(DIMS, _valid, seed=1)


def _case_data(c, seed=0):
    return SUITE.case_data(c, CHANNELS[c["channels"]], (c["L"],), (c["S"],), seed)


def _case_id(i, c):
    return SUITE.case_id(i, c, ("L", "S", "stride", "channels", "dtype", "layout"))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("case", CASES, ids=[_case_id(i, c) for i, c in enumerate(CASES)])
def test_matches_reference(rt, case, order):
    x, w, b, kw = _case_data(case)
    _, kid, g = _check(with_thread_order(rt, order), x, w, b, kw, order)
    assert kid == _rule_kernel_id(g, case["dtype"])


# --------------------------------------------------------------------------------------------
# tile edges and the tap walk
# --------------------------------------------------------------------------------------------

# name: x shape, w shape, groups, stride, padding, dilation, flip. Filters per group Kg, pixels M = N*Q and
# the reduction Cg*S just below, at or above multiples of BM / BN / BK (16; 8 for float64), and filter
# lengths S below, at and above BK (the (c, s) step's carry: BK = step_c * S + step_s).
EDGES = {
    "red15-m63": ((1, 5, 65), (7, 5, 3), 1, 1, 0, 1, False),               # Cg*S = 15, M = 63
    "red16-m64": ((2, 8, 33), (64, 8, 2), 1, 1, ((0, 1),), 1, True),       # 16, 64, Kg 64
    "red17-m65": ((5, 17, 13), (65, 17, 1), 1, 1, 0, 1, False),            # 17, 65, Kg 65
    "s16": ((1, 3, 40), (9, 3, 16), 1, 1, 7, 1, True),                     # S = BK: step (1, 0)
    "s21-g2": ((2, 4, 37), (10, 2, 21), 2, 2, ((9, 4),), 1, False),        # S > BK: step (0, 16)
    "s5-dil": ((3, 6, 29), (5, 6, 5), 1, 2, "same", 3, False),             # step (3, 1): a carry every few
    "k129-m130": ((2, 3, 66), (129, 3, 2), 1, 1, 0, 1, False),             # Kg 129, M = 130
    "dw": ((2, 6, 23), (6, 1, 4), 6, 1, 2, 1, True),                       # depthwise: Kg 1, reduction 4
}


def _edge_params():
    return SUITE.edge_params(EDGES, gemm.tile_for_dtype)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("name, tile, dtype", _edge_params())
def test_tile_edges_and_tap_walk(rt, name, tile, dtype, order):
    xs, ws, groups, stride, padding, dilation, flip = EDGES[name]
    x, w, b = _arrays(xs, ws, dtype, seed=len(name))
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, flip=flip, activation="tanh")
    _, kid, _ = _check(with_thread_order(rt, order), x, w, b, kw, name, tile=tile, splits=1)
    assert kid == conv1d_igemm.conv1d_igemm_name(dtype, tile)


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_weight_vector_loads(rt, dtype, vectorize):
    """Cg*S = 4*3 = 12 (a multiple of 4): the rule allows 4-wide weight loads; off, the same answer. Kg = 70
    spans two small filter tiles, so the second tile's loads start mid-buffer."""
    x, w, b = _arrays((2, 4, 19), (70, 4, 3), dtype, seed=3)
    kw = dict(padding=1)
    g = _geometry(x, w, b, **kw)
    assert gemm.weights_vectorizable(conv1d_igemm.gemm_view(g), dtype, w.ctypes.data)
    _check(rt, x, w, b, kw, f"vec {vectorize}", tile=SMALL_TILE, vectorize_weights=vectorize)


def test_forcing_vector_loads_the_rule_forbids_is_an_error():
    x, w, b = _arrays((1, 3, 8), (4, 3, 3), np.float32)  # Cg*S = 9
    g = _geometry(x, w, b)
    with pytest.raises(ValueError, match="4-wide weight loads requested"):
        conv1d_igemm.launch_conv1d_igemm(NoLaunch(), x, w, b, np.empty(g.output_shape, np.float32), g,
                                         vectorize_weights=True)


def test_grid_stride_loop(rt, monkeypatch):
    """A grid capped at 3 blocks: the kernel's grid-stride loop covers every tile (split too)."""
    monkeypatch.setattr(limits, "MAX_GRID_BLOCKS", 3)
    x, w, b = _arrays((3, 20, 47), (70, 20, 3), np.float32, seed=4)
    g = _geometry(x, w, b, padding=1)
    assert gemm.gemm_blocks(conv1d_igemm.gemm_view(g), SMALL_TILE) > 3
    _check(rt, x, w, b, dict(padding=1), "grid 3", tile=SMALL_TILE)
    _check(rt, x, w, b, dict(padding=1), "grid 3 split", tile=SMALL_TILE, splits=3)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_bitwise_deterministic_in_both_thread_orders(rt, dtype):
    x, w, b = _arrays((2, 5, 31), (12, 5, 3), dtype, seed=5)
    g = _geometry(x, w, b, stride=2, padding=1, activation="sigmoid")
    runs = [_run(with_thread_order(rt, o), x, w, b, g)[0] for o in ("forward", "reversed", "forward")]
    assert runs[0].tobytes() == runs[1].tobytes() == runs[2].tobytes()


def test_nonfinite_values_and_padding(rt):
    """Padding is a zero multiplied like any input (docs/semantics.md): an infinite weight on a tap that reads
    the left padding gives NaN there; inf / NaN inputs propagate."""
    x = np.ones((1, 1, 5))
    x[0, 0, 3] = np.nan
    w = np.zeros((2, 1, 3))
    w[0, 0, 0] = np.inf  # filter 0's first tap: reads padding for output 0 only
    y, _, _ = _check(rt, x, w, None, dict(padding=1))
    assert np.isnan(y[0, 0, 0]) and np.isnan(y[0, 1, 2:]).all() and not np.isnan(y[0, 1, :2]).any()


# --------------------------------------------------------------------------------------------
# split-K
# --------------------------------------------------------------------------------------------

SPLIT_CASES = {  # x shape, w shape, groups, stride, padding, dilation, flip, activation
    "deep": ((1, 48, 21), (9, 48, 5), 1, 1, 2, 1, False, "relu"),                # Cg*S 240: 15 slices
    "g2-dil": ((2, 40, 17), (6, 20, 7), 2, 1, ((4, 1),), 2, True, "tanh"),      # 140 per group
    "strided": ((1, 33, 50), (70, 33, 4), 1, 3, "same", 1, False, None),         # Kg 70: 2 filter tiles
}


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("splits", [2, 3, 8])
@pytest.mark.parametrize("tile", [LARGE_TILE, WIDE_TILE, SMALL_TILE], ids=lambda t: t.name)
@pytest.mark.parametrize("name", list(SPLIT_CASES))
def test_splitk_matches_reference(rt, name, tile, splits, order):
    xs, ws, groups, stride, padding, dilation, flip, act = SPLIT_CASES[name]
    x, w, b = _arrays(xs, ws, np.float32, seed=splits)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, flip=flip, activation=act)
    _, kid, g = _check(with_thread_order(rt, order), x, w, b, kw, f"{name} split {splits}", tile=tile, splits=splits)
    n, _ = conv_igemm.splitk_ranges(conv1d_igemm.gemm_view(g), tile, splits)
    split_name = gemm.gemm_kernel_name(conv1d_igemm.SPLIT_KERNEL, np.float32, tile)
    assert kid == f"{split_name} splitK={n} + {conv_igemm.reduce_name(np.float32)}" and n >= 2


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_splitk_by_the_rule_is_bitwise_repeatable(rt, dtype):
    """A deep layer with few output pixels: the rule splits (as conv2d's would on the same GEMM); the result
    is bitwise the same in both thread orders and run to run; the workspace is splits x K x N*Q of the
    accumulation type, and the reduce kernel is conv2d_igemm.cu's."""
    x, w, b = _arrays((2, 96, 9), (16, 96, 3), dtype, seed=6)  # Cg*S = 288: 18 slices of 16 (36 of 8)
    kw = dict(padding=1, activation="leaky_relu")
    g = _geometry(x, w, b, **kw)
    tile = conv1d_igemm.tile_for(g, dtype)
    n = conv1d_igemm.splitk_for(g, dtype)
    assert n == conv_igemm.splitk_for(g.as_2d(), tile) >= 2
    spy = SpyRuntime(rt)
    y, kid, _ = _check(spy, x, w, b, kw, "rule split")
    assert kid.startswith(gemm.gemm_kernel_name(conv1d_igemm.SPLIT_KERNEL, dtype, tile) + f" splitK={n} + ")
    (split, red) = spy.launches
    assert (split.source, red.source) == (conv1d_igemm.SOURCE, conv_igemm.SOURCE)
    ws = split.args[-1]
    acc = np.float32 if dtype == np.float16 else dtype
    assert tuple(ws.shape) == (n, 16, 2 * 9) and ws.dtype == acc
    assert split.grid[0] == gemm.gemm_blocks(g.as_2d(), tile) * n
    runs = [_run(with_thread_order(rt, o), x, w, b, g)[0] for o in ("reversed", "forward")]
    assert y.tobytes() == runs[0].tobytes() == runs[1].tobytes()


def test_splits_out_of_range_is_an_error():
    x, w, b = _arrays((1, 3, 8), (4, 3, 3), np.float32)
    g = _geometry(x, w, b)
    with pytest.raises(ValueError, match=r"splits must be in 1\.\.8, got 9"):
        conv1d_igemm.launch_conv1d_igemm(NoLaunch(), x, w, b, np.empty(g.output_shape, np.float32), g, splits=9)


# --------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------

TORCH_CASES = {  # x shape, w shape, bias, stride, padding, dilation, groups, splits
    "wav2vec-like": ((2, 16, 41), (12, 16, 3), None, 2, 0, 1, 1, None),
    "tcn-dilated": ((1, 8, 50), (8, 8, 3), True, 1, 4, 4, 1, None),
    "depthwise": ((2, 5, 33), (5, 1, 7), True, 1, 3, 1, 5, None),
    "deep-split": ((1, 64, 12), (10, 32, 5), True, 1, 2, 1, 2, 4),
}


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.parametrize("name", list(TORCH_CASES))
def test_matches_pytorch(rt, name):
    import torch.nn.functional as F
    xs, ws, bias, stride, padding, dilation, groups, splits = TORCH_CASES[name]
    x, w, b = _arrays(xs, ws, np.float64, bias=bias is not None, seed=7)
    xv = noncontiguous_view(x, "sliced", np.random.default_rng(0))
    g = _geometry(x, w, b, stride, padding, dilation, groups)
    y, kid = _run(rt, xv, w, b, g) if splits is None else _run(rt, xv, w, b, g, splits=splits)
    assert ("splitK" in kid) == (splits is not None)
    ref = F.conv1d(torch.tensor(x), torch.tensor(w), None if b is None else torch.tensor(b), stride, padding,
                   dilation, groups).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-11, atol=1e-11)


# --------------------------------------------------------------------------------------------
# the public function: what runs, what the record says, what is declined
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ["auto", "igemm"])
def test_public_conv1d_is_one_launch(rt, algo):
    x, w, b = _arrays((2, 3, 25), (4, 3, 5), np.float32, seed=8)
    y, rec = _public(rt, x, w, b, padding="same", stride=2, algo=algo)
    ref, mag = reference_conv_nd(x, w, b, padding="same", stride=2)
    assert_close(y, ref, mag, np.float32, "public")
    assert (rec.op, rec.direction, rec.kernels) == ("conv1d", "forward",
                                                    (conv1d_igemm.conv1d_igemm_name(np.float32, SMALL_TILE),))


def test_public_conv1d_splits_where_the_rule_does(rt):
    x, w, b = _arrays((1, 96, 10), (8, 96, 3), np.float32, seed=9)
    y, rec = _public(rt, x, w, b, padding=1, activation="relu")
    ref, mag = reference_conv_nd(x, w, b, padding=1, activation="relu")
    assert_close(y, ref, mag, np.float32, "public split")
    (kid,) = rec.kernels
    assert kid.startswith("gpuconv::conv1d_igemm_splitk<float, 64, 64, 16, 8, 8> splitK=")


def test_named_2d_algorithm_runs_the_height_1_view(rt):
    x, w, b = _arrays((2, 4, 17), (6, 2, 3), np.float32, seed=10)
    y, rec = _public(rt, x, w, b, padding=1, groups=2, algo="direct")
    ref, mag = reference_conv_nd(x, w, b, padding=1, groups=2)
    assert_close(y, ref, mag, np.float32, "direct")
    (kid,) = rec.kernels
    assert kid == "conv1d as conv2d of height 1: gpuconv::conv2d_direct<float>"


def test_depthwise_like_auto_runs_the_2d_heuristic(rt):
    """One input channel per group under 'auto': conv2d's heuristic on the height-1 view (its depthwise
    kernel), said in the record; 'igemm' by name runs conv1d_igemm."""
    x, w, b = _arrays((2, 6, 29), (6, 1, 5), np.float32, seed=11)
    y, rec = _public(rt, x, w, b, padding=2, groups=6)
    ref, mag = reference_conv_nd(x, w, b, padding=2, groups=6)
    assert_close(y, ref, mag, np.float32, "depthwise")
    (kid,) = rec.kernels
    assert kid.startswith("conv1d as conv2d of height 1 (one input channel per group: conv2d's heuristic (its "
                          "depthwise kernel)): gpuconv::conv2d_depthwise<")
    _, rec = _public(rt, x, w, b, padding=2, groups=6, algo="igemm")
    assert rec.kernels == (conv1d_igemm.conv1d_igemm_name(np.float32, SMALL_TILE),)


def test_declined_geometry_runs_the_height_1_view_and_says_so(rt, monkeypatch):
    """Where the kernel declines (its 32-bit rule; forced here), 'auto' runs the 2-D kernels on the height-1
    view and the record gives the reason; 'igemm' by name raises it (no fallback)."""
    reason = "conv1d_igemm declines this geometry because (forced by the test)"
    monkeypatch.setattr(conv1d_igemm, "conv1d_igemm_decline_reason", lambda geom, dtype: reason)
    x, w, b = _arrays((1, 2, 14), (3, 2, 3), np.float64, seed=12)
    y, rec = _public(rt, x, w, b, padding=(1,))
    ref, mag = reference_conv_nd(x, w, b, padding=(1,))
    assert_close(y, ref, mag, np.float64, "height-1 view")
    (kid,) = rec.kernels
    assert kid.startswith(f"conv1d as conv2d of height 1 ({reason}): gpuconv::conv2d_")
    with pytest.raises(ValueError, match=r"forced by the test"):
        _public(rt, x, w, b, algo="igemm")


def test_tensor_core_policy_runs_conv1d_igemm_tc(rt):
    """gpuconv.cudnn's policy answering a tensor-core algorithm runs conv1d_igemm_tc (tests/
    test_cuda_tensor_core_nd.py tests it); any other answer runs conv1d_igemm."""
    x, w, b = _arrays((1, 2, 20), (3, 2, 3), np.float32, seed=13)
    _, rec = _public(rt, x, w, b, algo=lambda g2, dt, runtime: "direct")
    assert rec.kernels == (conv1d_igemm.conv1d_igemm_name(np.float32, SMALL_TILE),)
    _, rec = _public(rt, x, w, b, algo=lambda g2, dt, runtime: "igemm_tc")
    (kid,) = rec.kernels
    assert kid.startswith("gpuconv::conv1d_igemm_tc<float")


# --------------------------------------------------------------------------------------------
# host-side rules (nothing launched)
# --------------------------------------------------------------------------------------------

def test_registered_and_instantiated():
    assert ops.operation("conv1d").algorithms["igemm"] == conv1d_igemm.ALGO
    assert ops.INSTANTIATIONS[conv1d_igemm.SOURCE] == list(conv1d_igemm.INSTANTIATIONS)
    # conv2d's tiles (8x8 per thread for float32 / float16), unsplit and split
    assert len(conv1d_igemm.INSTANTIATIONS) == 14
    assert conv1d_igemm.conv1d_igemm_name(np.float32, SMALL_TILE) == "gpuconv::conv1d_igemm<float, 64, 64, 16, 8, 8>"
    assert conv1d_igemm.conv1d_igemm_name(np.float64, SMALL_TILE) == "gpuconv::conv1d_igemm<double, 64, 64, 8, 4, 4>"


def test_rules_are_conv2d_igemm_rules_on_the_unit_height_geometry():
    for xs, ws, groups in [((64, 256, 300), (512, 256, 3), 1), ((1, 96, 10), (8, 96, 3), 1), ((4, 6, 50), (6, 2, 5), 3)]:
        g = conv_nd_geometry(1, xs, ws, None, 1, 1, 1, groups)
        g2 = g.as_2d()
        for dt in gemm.TILES_BY_DTYPE:
            tile = gemm.gemm_tile_for(g2, dt)
            assert conv1d_igemm.tile_for(g, dt) == tile
            assert conv1d_igemm.splitk_for(g, dt) == conv_igemm.splitk_for(g2, tile)


def test_params_are_the_unit_height_conv_params():
    g = conv_nd_geometry(1, (2, 4, 29), (6, 2, 5), (6,), 3, ((4, 1),), 2, 2, True, "relu")
    (arr,) = abi.conv1d_kernel_args(g)
    assert arr.dtype == abi.CONV_PARAMS_DTYPE and arr.nbytes == 76
    assert arr.tobytes() == abi.conv_params(g.as_2d()).tobytes()
    (Q,) = g.output_size
    assert {n: int(arr[0][n]) for n in abi.CONV_PARAMS_FIELDS} == dict(
        N=2, C=4, H=1, W=29, K=6, R=1, S=5, groups=2, sh=1, sw=3, pt=0, pl=4, dh=1, dw=2, P=1, Q=Q, flip=1,
        has_bias=1, act=g.activation_code)


def test_decline_rule_names_the_size():
    g = conv_nd_geometry(1, (1, 2, 9), (3, 2, 2))
    assert conv1d_igemm.conv1d_igemm_decline_reason(g, np.float32) is None
    huge = conv_nd_geometry(1, (1, 2**16, 2**16), (1, 2**16, 2**15))
    assert conv1d_igemm.conv1d_igemm_decline_reason(huge, np.float32) == (
        "conv1d_igemm declines this geometry because C/groups * kernel_l = 2147483648 exceeds 2^31-1, the "
        "largest size the CUDA conv1d kernels take")


# --------------------------------------------------------------------------------------------
# memory safety: AddressSanitizer build
# --------------------------------------------------------------------------------------------

_ASAN_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from gpuconv._cuda import conv1d_igemm, conv_igemm, gemm, ops
from gpuconv._cuda.runtime import kernels_dir
from gpuconv._geometry_nd import conv_nd_geometry
from tests.emulator import EmulatedRuntime
from tests.reference import reference_conv_nd

sources = (conv1d_igemm.SOURCE, conv_igemm.SOURCE)
rt = EmulatedRuntime(kernels_dir(), {s: ops.INSTANTIATIONS[s] for s in sources}, sanitize=True)
rng = np.random.default_rng(0)
L, W, S = gemm.LARGE_TILE, gemm.WIDE_TILE, gemm.SMALL_TILE
# Partial filter tiles in the LAST group, partial pixel tiles at the end of x / y, reduction tails, taps in
# both paddings, split ranges of unequal length.
CASES = [
    ((2, 6, 37), (130, 3, 3), 2, 1, 1, 1, True, np.float32, S, 1),
    ((1, 4, 45), (129, 4, 5), 1, 2, ((3, 2),), 2, False, np.float16, L, 1),
    ((3, 8, 11), (65, 8, 2), 1, 1, (1,), 1, False, np.float64, S, 1),
    ((1, 40, 13), (70, 40, 7), 1, 1, 3, 1, True, np.float32, W, 3),
]
for xs, ws, groups, stride, padding, dilation, flip, dt, tile, splits in CASES:
    x = rng.standard_normal(xs).astype(dt)
    w = rng.standard_normal(ws).astype(dt)
    b = rng.standard_normal(ws[0]).astype(dt)
    g = conv_nd_geometry(1, xs, ws, b.shape, stride, padding, dilation, groups, flip, "tanh")
    ref, _ = reference_conv_nd(x, w, b, stride, padding, dilation, groups, flip, "tanh")
    y = np.empty(g.output_shape, dt)
    conv1d_igemm.launch_conv1d_igemm(rt, x, w, b, y, g, tile=tile, splits=splits)
    tol = 1e-2 if dt == np.float16 else 1e-5
    assert np.allclose(ref, y.astype(np.float64), rtol=tol, atol=tol), xs
print("asan ok")
"""


@pytest.mark.emulated
@pytest.mark.slow  # a g++ AddressSanitizer build in a subprocess: CI runs it (-m slow)
def test_no_out_of_bounds_access_under_asan():
    """The kernels at tile edges, compiled with -fsanitize=address: any read or write past x, w, b, y or the
    workspace fails."""
    from tests.emulator import run_script_under_asan
    proc = run_script_under_asan(_ASAN_SCRIPT, Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0 and "asan ok" in proc.stdout, (proc.stdout + proc.stderr)[-6000:]
