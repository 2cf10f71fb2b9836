"""``conv3d_igemm`` (kernels/conv3d_igemm.cu, gpuconv/_cuda/conv3d_igemm.py): the implicit-GEMM kernel body
with the 3-D gather geometry, against the textbook N-D reference (tests/reference.py ``reference_conv_nd``)
and PyTorch's ``F.conv3d`` (skipped without torch).

Every test that launches a kernel takes the ``rt`` fixture (tests/runners.py): executed on the CPU by
tests/emulator (``[emulated-...]``, marked ``emulated``) and on a GPU (``[gpu-...]``; skipped without one),
with the same NumPy data (``numpy_io``). Shapes are odd and not tile multiples; the tap walk is driven
through reductions Cg*KD*R*S below, at and above BK and through every carry of the (c, t, r, s) step; each
tile config is forced on small problems; both thread orders run (``with_thread_order``: a missing barrier
shows as the emulator's NaN poison). Also: bitwise determinism, the grid-stride loop, 4-wide weight loads on
and off, the public ``gpuconv.conv3d`` record (one kernel) and the lowering it keeps for what the kernel
declines (stated in the record; ``algo='igemm'`` raises instead). Split-K (``conv3d_igemm_splitk`` + the
fixed-order reduction): forced range counts on every tile, the rule's split of a deep layer with few output
pixels (C3D's conv5, scaled down), bitwise repeatable in both thread orders, its workspace. Host-side rule
tests carry no marker.
Emulator only, slow: an AddressSanitizer build over the tile edges.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import gpuconv
from gpuconv._cuda import abi, conv3d_igemm, conv_igemm, gemm, limits, ops
from gpuconv._cuda.gemm import LARGE_TILE, SMALL_TILE, WIDE_TILE
from gpuconv._geometry_nd import conv_nd_geometry
from tests.cases import pairwise
from tests.reference import explicit_padding_nd, reference_conv_nd
from tests.runners import SpyRuntime, runtime_fixture, torch, with_thread_order
from tests.support import IgemmNdSuite, NoLaunch, noncontiguous_view, random_conv_arrays, triple
from tests.tolerance import assert_close

# The kernel small float32 layers run (the small tile's template arguments, whatever gemm.py makes them).
SMALL_FLOAT_KERNEL = "gpuconv::conv3d_igemm<float, {0.bm}, {0.bn}, {0.bk}, {0.tm}, {0.tn}>".format(conv3d_igemm.SMALL_TILE_3D)

ORDERS = ("forward", "reversed")

rt = runtime_fixture()

# the suite's helpers (tests/support.py), bound to conv3d_igemm
SUITE = IgemmNdSuite(3, conv3d_igemm, conv3d_igemm.conv3d, conv3d_igemm.launch_conv3d_igemm,
                     conv3d_igemm.conv3d_igemm_name, gpuconv.conv3d)
_arrays, _geometry, _run, _check = random_conv_arrays, SUITE.geometry, SUITE.run, SUITE.check
_rule_kernel_id, _public = SUITE.rule_kernel_id, SUITE.public


# --------------------------------------------------------------------------------------------
# the geometry matrix: every option, pairwise, both thread orders
# --------------------------------------------------------------------------------------------

CHANNELS = {"g1": (3, 5, 1), "g2": (4, 6, 2), "dw": (3, 3, 3), "g3x": (6, 9, 3)}  # (C, K, groups)
DIMS = {
    "DHW": ((3, 5, 7), (5, 4, 9), (2, 7, 3), (6, 3, 5)),
    "KRS": ((1, 1, 1), (3, 3, 3), (2, 3, 1), (3, 1, 2), (1, 2, 3)),
    "stride": (1, (2, 1, 2), (1, 3, 1), 2),
    "dilation": (1, (2, 1, 1), (1, 2, 2)),
    "padding": (0, 1, (1, 0, 2), ((2, 0), (0, 1), (1, 1)), ((0, 1), (2, 0), (0, 2)), "same", "valid"),
    "channels": tuple(CHANNELS), "flip": (False, True),
    "activation": (None, "relu", "leaky_relu", "sigmoid", "tanh"),
    "dtype": (np.float16, np.float32, np.float64), "layout": ("contiguous", "sliced"), "bias": (True, False),
    "N": (1, 2),
}


def _valid(c):
    size, k, s, d = c["DHW"], c["KRS"], triple(c["stride"]), triple(c["dilation"])
    pad = explicit_padding_nd(c["padding"], k, s, d, size, c["flip"])
    return all(size[i] + sum(pad[i]) >= d[i] * (k[i] - 1) + 1 for i in range(3))


CASES = pairwise(DIMS, _valid, seed=18)


def _case_data(c, seed=0):
    return SUITE.case_data(c, CHANNELS[c["channels"]], c["DHW"], c["KRS"], seed)


def _case_id(i, c):
    return SUITE.case_id(i, c, ("KRS", "stride", "channels", "dtype", "layout"))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("case", CASES, ids=[_case_id(i, c) for i, c in enumerate(CASES)])
def test_matches_reference(rt, case, order):
    x, w, b, kw = _case_data(case)
    _, kid, g = _check(with_thread_order(rt, order), x, w, b, kw, order)
    assert kid == _rule_kernel_id(g, case["dtype"])


# --------------------------------------------------------------------------------------------
# tile edges and the tap walk
# --------------------------------------------------------------------------------------------

# name: x shape, w shape, groups, stride, padding, dilation, flip. Filters per group Kg, pixels M =
# N*OD*P*Q and the reduction Cg*KD*R*S just below, at or above multiples of BM / BN / BK (16; 8 for float64),
# and tap shapes whose BK step carries through every digit of (c, t, r, s).
EDGES = {
    "red15-m63": ((1, 5, 5, 3, 7), (7, 5, 3, 1, 1), 1, 1, 0, 1, False),          # Cg*KD*R*S = 15, M = 63
    "red16-m64": ((1, 2, 4, 4, 5), (64, 2, 2, 2, 2), 1, 1, ((0, 1), (0, 1), (0, 0)), 1, True),  # 16, 64, Kg 64
    "red17-m65": ((1, 17, 5, 1, 13), (65, 17, 1, 1, 1), 1, 1, 0, 1, False),       # 17, 65, Kg 65
    "taps27": ((2, 3, 5, 6, 4), (9, 3, 3, 3, 3), 1, (1, 2, 1), 1, 1, True),       # 3x3x3 taps: step (0, 1, 2, 1)
    "taps30-g2": ((1, 4, 6, 5, 7), (10, 2, 2, 3, 5), 2, 1, (1, 1, 2), 1, False),  # 2x3x5 taps: BK < KD*R*S
    "taps5-dil": ((2, 3, 9, 4, 3), (5, 3, 5, 1, 1), 1, (2, 1, 1), 2, (2, 1, 1), False),  # depth-only taps
    "k129-m130": ((1, 3, 2, 5, 14), (129, 3, 1, 1, 2), 1, 1, 0, 1, False),       # Kg 129, M = 130
    "dw": ((1, 6, 4, 5, 7), (6, 1, 2, 2, 2), 6, 1, 1, 1, True),                   # depthwise: Kg 1, reduction 8
}


def _edge_params():
    return SUITE.edge_params(EDGES, conv3d_igemm.tile_3d)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("name, tile, dtype", _edge_params())
def test_tile_edges_and_tap_walk(rt, name, tile, dtype, order):
    xs, ws, groups, stride, padding, dilation, flip = EDGES[name]
    x, w, b = _arrays(xs, ws, dtype, seed=len(name))
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, flip=flip, activation="tanh")
    _, kid, _ = _check(with_thread_order(rt, order), x, w, b, kw, name, tile=tile, splits=1)
    assert kid == conv3d_igemm.conv3d_igemm_name(dtype, tile)


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_weight_vector_loads(rt, dtype, vectorize):
    """Cg*KD*R*S = 2*2*3*2 = 24 (a multiple of 4): the rule allows 4-wide weight loads; off, the same answer.
    Kg = 70 spans two small filter tiles, so the second tile's loads start mid-buffer."""
    x, w, b = _arrays((1, 2, 4, 6, 5), (70, 2, 2, 3, 2), dtype, seed=3)
    kw = dict(padding=1)
    g = _geometry(x, w, b, **kw)
    assert gemm.weights_vectorizable(conv3d_igemm.gemm_view(g), dtype, w.ctypes.data)
    _check(rt, x, w, b, kw, f"vec {vectorize}", tile=SMALL_TILE, vectorize_weights=vectorize)


def test_forcing_vector_loads_the_rule_forbids_is_an_error():
    x, w, b = _arrays((1, 3, 4, 4, 4), (4, 3, 1, 1, 3), np.float32)  # Cg*KD*R*S = 9
    g = _geometry(x, w, b)
    with pytest.raises(ValueError, match="4-wide weight loads requested"):
        conv3d_igemm.launch_conv3d_igemm(NoLaunch(), x, w, b, np.empty(g.output_shape, np.float32), g,
                                         vectorize_weights=True)


def test_grid_stride_loop(rt, monkeypatch):
    """A grid capped at 3 blocks: the kernel's grid-stride loop covers every tile."""
    monkeypatch.setattr(limits, "MAX_GRID_BLOCKS", 3)
    x, w, b = _arrays((2, 4, 5, 6, 7), (70, 4, 2, 2, 2), np.float32, seed=4)
    g = _geometry(x, w, b, padding=1)
    assert gemm.gemm_blocks(conv3d_igemm.gemm_view(g), SMALL_TILE) > 3
    _check(rt, x, w, b, dict(padding=1), "grid 3", tile=SMALL_TILE)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_bitwise_deterministic_in_both_thread_orders(rt, dtype):
    x, w, b = _arrays((2, 5, 6, 7, 5), (12, 5, 3, 2, 3), dtype, seed=5)
    g = _geometry(x, w, b, stride=(1, 2, 1), padding=1, activation="sigmoid")
    runs = [_run(with_thread_order(rt, o), x, w, b, g)[0] for o in ("forward", "reversed", "forward")]
    assert runs[0].tobytes() == runs[1].tobytes() == runs[2].tobytes()


def test_nonfinite_values_and_padding(rt):
    """Padding is a zero multiplied like any input (docs/semantics.md): an infinite weight on a depth tap
    that reads the front padding gives NaN there; inf / NaN inputs propagate."""
    x = np.ones((1, 1, 3, 3, 3))
    x[0, 0, 2, 1, 1] = np.nan
    w = np.zeros((2, 1, 3, 1, 1))
    w[0, 0, 0] = np.inf  # filter 0's first depth tap: reads padding for output depth 0 only
    y, _, _ = _check(rt, x, w, None, dict(padding=(1, 0, 0)))
    assert np.isnan(y[0, 0, 0]).all() and np.isnan(y[0, 1, 1:, 1, 1]).all()


# --------------------------------------------------------------------------------------------
# split-K
# --------------------------------------------------------------------------------------------

SPLIT_CASES = {  # x shape, w shape, groups, stride, padding, dilation, flip, activation
    "c3d-conv5-like": ((1, 12, 2, 3, 3), (9, 12, 3, 3, 3), 1, 1, 1, 1, False, "relu"),    # Cg*KD*R*S 324
    "g2-strided": ((2, 16, 3, 5, 4), (6, 8, 2, 3, 3), 2, (1, 2, 1), (1, 0, 1), 1, True, "tanh"),  # 144 per group
    "kg70": ((1, 9, 2, 4, 5), (70, 9, 2, 2, 3), 1, 1, ((1, 0), (0, 1), (1, 1)), (1, 2, 1), False, None),  # 108
}


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("splits", [2, 3, 8])
@pytest.mark.parametrize("tile", [LARGE_TILE, WIDE_TILE, SMALL_TILE], ids=lambda t: t.name)
@pytest.mark.parametrize("name", list(SPLIT_CASES))
def test_splitk_matches_reference(rt, name, tile, splits, order):
    xs, ws, groups, stride, padding, dilation, flip, act = SPLIT_CASES[name]
    x, w, b = _arrays(xs, ws, np.float32, seed=splits)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, flip=flip, activation=act)
    tile = conv3d_igemm.tile_3d(tile, np.float32)
    _, kid, g = _check(with_thread_order(rt, order), x, w, b, kw, f"{name} split {splits}", tile=tile, splits=splits)
    n, _ = conv_igemm.splitk_ranges(conv3d_igemm.gemm_view(g), tile, splits)
    split_name = gemm.gemm_kernel_name(conv3d_igemm.SPLIT_KERNEL, np.float32, tile)
    assert kid == f"{split_name} splitK={n} + {conv_igemm.reduce_name(np.float32)}" and n >= 2


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_splitk_by_the_rule_is_bitwise_repeatable(rt, dtype):
    """C3D's conv5 scaled down (deep, 2 x 3 x 3 outputs): the rule splits (as conv2d's would on the same
    GEMM); the result is bitwise the same in both thread orders and run to run; the workspace is splits x K x
    N*OD*P*Q of the accumulation type, and the reduce kernel is conv2d_igemm.cu's."""
    x, w, b = _arrays((2, 16, 2, 3, 3), (8, 16, 3, 3, 3), dtype, seed=11)  # Cg*KD*R*S = 432: 27 slices of 16
    kw = dict(padding=1, activation="leaky_relu")
    g = _geometry(x, w, b, **kw)
    tile = conv3d_igemm.tile_for(g, dtype)
    n = conv3d_igemm.splitk_for(g, dtype)
    assert n == conv_igemm.splitk_for(conv3d_igemm.gemm_view(g), tile) >= 2
    spy = SpyRuntime(rt)
    y, kid, _ = _check(spy, x, w, b, kw, "rule split")
    assert kid.startswith(gemm.gemm_kernel_name(conv3d_igemm.SPLIT_KERNEL, dtype, tile) + f" splitK={n} + ")
    (split, red) = spy.launches
    assert (split.source, red.source) == (conv3d_igemm.SOURCE, conv_igemm.SOURCE)
    ws = split.args[-1]
    acc = np.float32 if dtype == np.float16 else dtype
    assert tuple(ws.shape) == (n, 8, 2 * 2 * 3 * 3) and ws.dtype == acc
    assert split.grid[0] == gemm.gemm_blocks(conv3d_igemm.gemm_view(g), tile) * n
    runs = [_run(with_thread_order(rt, o), x, w, b, g)[0] for o in ("reversed", "forward")]
    assert y.tobytes() == runs[0].tobytes() == runs[1].tobytes()


def test_public_conv3d_splits_where_the_rule_does(rt):
    x, w, b = _arrays((1, 16, 2, 3, 3), (8, 16, 3, 3, 3), np.float32, seed=12)
    y, rec = _public(rt, x, w, b, padding=1)
    ref, mag = reference_conv_nd(x, w, b, padding=1)
    assert_close(y, ref, mag, np.float32, "public split")
    (kid,) = rec.kernels
    assert kid.startswith(gemm.gemm_kernel_name(conv3d_igemm.SPLIT_KERNEL, np.float32, conv3d_igemm.SMALL_TILE_3D)
                          + " splitK=")


# --------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------

TORCH_CASES = {
    "c3d-like": ((2, 3, 5, 9, 8), (8, 3, 3, 3, 3), None, 1, 1, 1, 1),
    "strided-dil-g2": ((1, 4, 7, 6, 9), (6, 2, 3, 2, 3), True, (2, 1, 2), (1, 0, 2), (1, 2, 1), 2),
    "depthwise": ((2, 5, 4, 5, 6), (5, 1, 2, 3, 2), True, (1, 2, 1), 0, 1, 5),
}


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.parametrize("name", list(TORCH_CASES))
def test_matches_pytorch(rt, name):
    import torch.nn.functional as F
    xs, ws, bias, stride, padding, dilation, groups = TORCH_CASES[name]
    x, w, b = _arrays(xs, ws, np.float64, bias=bias is not None, seed=6)
    xv = noncontiguous_view(x, "sliced", np.random.default_rng(0))
    g = _geometry(x, w, b, stride, padding, dilation, groups)
    y, _ = _run(rt, xv, w, b, g)
    ref = F.conv3d(torch.tensor(x), torch.tensor(w), None if b is None else torch.tensor(b), stride, padding,
                   dilation, groups).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-11, atol=1e-11)


# --------------------------------------------------------------------------------------------
# the public function: what runs, what the record says, what is declined
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ["auto", "igemm"])
def test_public_conv3d_is_one_launch(rt, algo):
    x, w, b = _arrays((2, 3, 4, 5, 6), (4, 3, 2, 3, 3), np.float32, seed=7)
    y, rec = _public(rt, x, w, b, padding=1, stride=(1, 2, 1), algo=algo)
    ref, mag = reference_conv_nd(x, w, b, padding=1, stride=(1, 2, 1))
    assert_close(y, ref, mag, np.float32, "public")
    assert (rec.op, rec.direction, rec.kernels) == ("conv3d", "forward",
                                                    (SMALL_FLOAT_KERNEL,))


def test_declined_geometry_runs_the_lowering_and_says_so(rt, monkeypatch):
    """Where the kernel declines (its 32-bit rule; forced here), 'auto' runs the depth-tap lowering and the
    record's first entry gives the reason; 'igemm' by name raises it (no fallback)."""
    reason = "conv3d_igemm declines this geometry because (forced by the test)"
    monkeypatch.setattr(conv3d_igemm, "conv3d_igemm_decline_reason", lambda geom, dtype: reason)
    x, w, b = _arrays((1, 2, 4, 5, 6), (3, 2, 2, 2, 2), np.float64, seed=8)
    y, rec = _public(rt, x, w, b, padding=(1, 0, 1))
    ref, mag = reference_conv_nd(x, w, b, padding=(1, 0, 1))
    assert_close(y, ref, mag, np.float64, "lowering")
    assert rec.kernels[0] == f"conv3d depth-tap lowering ({reason})"
    assert len(rec.kernels) == 3 and all(k.startswith("conv3d depth tap ") for k in rec.kernels[1:])
    with pytest.raises(ValueError, match=r"forced by the test"):
        _public(rt, x, w, b, algo="igemm")


def test_tensor_core_policy_runs_conv3d_igemm_tc(rt):
    """gpuconv.cudnn's policy answering a tensor-core algorithm runs conv3d_igemm_tc (tests/
    test_cuda_tensor_core_nd.py tests it); any other answer runs conv3d_igemm."""
    x, w, b = _arrays((1, 2, 3, 4, 5), (3, 2, 2, 2, 2), np.float32, seed=9)
    _, rec = _public(rt, x, w, b, algo=lambda g2, dt, runtime: "direct")
    assert rec.kernels == (SMALL_FLOAT_KERNEL,)
    _, rec = _public(rt, x, w, b, algo=lambda g2, dt, runtime: "igemm_tc")
    (kid,) = rec.kernels
    assert kid.startswith("gpuconv::conv3d_igemm_tc<float")


# --------------------------------------------------------------------------------------------
# host-side rules (nothing launched)
# --------------------------------------------------------------------------------------------

def test_gemm_view_has_the_3d_gemm_sizes():
    g = conv_nd_geometry(3, (2, 6, 5, 7, 9), (10, 3, 3, 2, 4), None, (2, 1, 3), ((1, 0), (0, 1), (2, 2)), (1, 2, 1),
                         2)
    v = conv3d_igemm.gemm_view(g)
    (OD, P, Q), (KD, R, S) = g.output_size, g.kernel_size
    assert (v.N * v.P * v.Q, v.Kg, v.groups, v.Cg * v.R * v.S) == (2 * OD * P * Q, 5, 2, 3 * KD * R * S)
    for dt in gemm.TILES_BY_DTYPE:
        assert conv3d_igemm.tile_for(g, dt) == conv3d_igemm.tile_3d(gemm.gemm_tile_for(v, dt), dt)


def test_registered_and_instantiated():
    assert ops.operation("conv3d").algorithms["igemm"] == conv3d_igemm.ALGO
    assert ops.INSTANTIATIONS[conv3d_igemm.SOURCE] == list(conv3d_igemm.INSTANTIATIONS)
    # conv2d's tiles, but the small float32 / float16 tile with BK = 8 (8x8 per thread on 64 threads)
    assert conv3d_igemm.tile_3d(SMALL_TILE, np.float32) == conv3d_igemm.SMALL_TILE_3D
    t = conv3d_igemm.SMALL_TILE_3D
    assert (t.bm, t.bn, t.bk, t.tm, t.tn, t.threads) == (64, 64, 8, 8, 8, 64)
    assert conv3d_igemm.tile_3d(SMALL_TILE, np.float64) == gemm.SMALL_TILE_F64
    assert conv3d_igemm.tile_3d(gemm.WIDE_TILE, np.float16) == gemm.WIDE_TILE
    assert conv3d_igemm.tile_3d(SMALL_TILE, np.float32) == gemm.with_small_tile(SMALL_TILE, np.float32, t)
    assert gemm.small_tile_4x4_for(SMALL_TILE, np.float32) == gemm.SMALL_TILE_4X4
    assert gemm.small_tile_4x4_for(SMALL_TILE, np.float64) == gemm.SMALL_TILE_F64
    assert len(conv3d_igemm.INSTANTIATIONS) == 14  # 7 tiles, unsplit and split


def test_splitk_rule_on_c3d_conv5a():
    """C3D's conv5a (512 filters, 3x3x3, 2 x 7 x 7 outputs): conv2d's split-K rule on the 3-D GEMM splits it at
    small batches (fewer small tiles than an H100 has SMs), not at batch 16; the workspace is splits x K x
    N*OD*P*Q float32 values."""
    from gpuconv._cuda import igemm_nd
    for N, splits in ((1, 8), (2, 8), (4, 5), (8, 3), (16, 1)):
        g = conv_nd_geometry(3, (N, 512, 2, 7, 7), (512, 512, 3, 3, 3), None, 1, 1)
        view = conv3d_igemm.gemm_view(g)
        tile = conv3d_igemm.tile_for(g, np.float32)
        assert tile == conv3d_igemm.SMALL_TILE_3D
        assert conv3d_igemm.splitk_for(g, np.float32) == conv_igemm.splitk_for(view, tile) == splits, N
        assert igemm_nd.workspace_bytes(view, np.float32, splits) == (0 if splits == 1 else splits * 512 * N * 98 * 4)


def test_decline_rule_names_the_size():
    g = conv_nd_geometry(3, (1, 2, 4, 4, 4), (3, 2, 2, 2, 2))
    assert conv3d_igemm.conv3d_igemm_decline_reason(g, np.float32) is None

    class Huge:  # a geometry whose reduction Cg*KD*R*S exceeds 2^31 - 1
        N, C, K, groups, Cg = 1, 2**20, 1, 1, 2**20
        input_size, kernel_size, padding, dilation = (64, 64, 64), (16, 16, 16), ((0, 0),) * 3, (1, 1, 1)
    reason = conv3d_igemm.conv3d_igemm_decline_reason(Huge(), np.float32)
    assert reason == ("conv3d_igemm declines this geometry because C/groups * kernel_d * kernel_h * kernel_w = "
                      "4294967296 exceeds 2^31-1, the largest size the CUDA conv3d kernels take")


def test_conv3d_params_are_the_plane_and_the_depth():
    g = conv_nd_geometry(3, (2, 4, 5, 6, 7), (6, 2, 3, 2, 3), (6,), (2, 1, 2), ((1, 2), (0, 1), (2, 0)),
                         (2, 1, 1), 2, True, "relu")
    (arr,) = abi.conv3d_kernel_args(g)
    assert arr.dtype == abi.CONV3D_PARAMS_DTYPE and arr.nbytes == 100
    hw = {n: int(arr[0]["hw"][n]) for n in abi.CONV_PARAMS_FIELDS}
    OD, P, Q = g.output_size
    assert hw == dict(N=2, C=4, H=6, W=7, K=6, R=2, S=3, groups=2, sh=1, sw=2, pt=0, pl=2, dh=1, dw=1, P=P, Q=Q,
                      flip=1, has_bias=1, act=g.activation_code)
    assert {n: int(arr[0][n]) for n in abi.CONV3D_DEPTH_FIELDS} == dict(D=5, KD=3, sd=2, pf=1, dd=2, OD=OD)


# --------------------------------------------------------------------------------------------
# memory safety: AddressSanitizer build
# --------------------------------------------------------------------------------------------

_ASAN_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from gpuconv._cuda import conv3d_igemm, conv_igemm, gemm, ops
from gpuconv._cuda.runtime import kernels_dir
from gpuconv._geometry_nd import conv_nd_geometry
from tests.emulator import EmulatedRuntime
from tests.reference import reference_conv_nd

sources = (conv3d_igemm.SOURCE, conv_igemm.SOURCE)  # (split-K's reduction kernel is conv2d_igemm.cu's)
rt = EmulatedRuntime(kernels_dir(), {s: ops.INSTANTIATIONS[s] for s in sources}, sanitize=True)
rng = np.random.default_rng(0)
L, W, S = gemm.LARGE_TILE, gemm.WIDE_TILE, gemm.SMALL_TILE
# Partial filter tiles in the LAST group, partial pixel tiles at the end of x / y, reduction tails, taps in
# every padding (front and back too), split ranges of unequal length.
CASES = [
    ((2, 6, 3, 5, 7), (130, 3, 2, 3, 3), 2, 1, 1, 1, True, np.float32, S, 1),
    ((1, 4, 4, 3, 13), (129, 4, 3, 1, 3), 1, (2, 1, 2), ((1, 2), (0, 1), (2, 0)), (1, 1, 2), False, np.float16, L, 1),
    ((3, 8, 2, 4, 5), (65, 8, 2, 1, 2), 1, 1, (1, 0, 0), 1, False, np.float64, S, 1),
    ((1, 12, 2, 3, 3), (70, 12, 3, 3, 3), 1, 1, 1, 1, True, np.float32, W, 3),
]
for xs, ws, groups, stride, padding, dilation, flip, dt, tile, splits in CASES:
    x = rng.standard_normal(xs).astype(dt)
    w = rng.standard_normal(ws).astype(dt)
    b = rng.standard_normal(ws[0]).astype(dt)
    g = conv_nd_geometry(3, xs, ws, b.shape, stride, padding, dilation, groups, flip, "tanh")
    ref, _ = reference_conv_nd(x, w, b, stride, padding, dilation, groups, flip, "tanh")
    y = np.empty(g.output_shape, dt)
    conv3d_igemm.launch_conv3d_igemm(rt, x, w, b, y, g, tile=conv3d_igemm.tile_3d(tile, dt), splits=splits)
    tol = 1e-2 if dt == np.float16 else 1e-5
    assert np.allclose(ref, y.astype(np.float64), rtol=tol, atol=tol), xs
print("asan ok")
"""


@pytest.mark.emulated
@pytest.mark.slow  # a g++ AddressSanitizer build in a subprocess: CI runs it (-m slow)
def test_no_out_of_bounds_access_under_asan():
    """The kernel at tile edges, compiled with -fsanitize=address: any read or write past x, w, b or y fails."""
    from tests.emulator import run_script_under_asan
    proc = run_script_under_asan(_ASAN_SCRIPT, Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0 and "asan ok" in proc.stdout, (proc.stdout + proc.stderr)[-6000:]
