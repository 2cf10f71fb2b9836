"""The GEMM-style conv2d kernels — ``igemm`` (kernels/conv2d_igemm.cu) and ``gemm1x1``
(kernels/conv2d_gemm1x1.cu), both on kernels/gemm_tile.cuh — and their host rules
(gpuconv/_cuda/conv_igemm.py, conv_gemm1x1.py) against the textbook reference of tests/reference.py.
Every test that launches a kernel takes the ``rt`` fixture (tests/runners.py) and runs twice: executed on
the CPU by tests/emulator (``[emulated-...]``, marked ``emulated``) and on a GPU (``[gpu-...]``, marked
``gpu``; skipped without CuPy or a device), with the same NumPy test data (``numpy_io``, which keeps a
misaligned array just as misaligned on the device, so the vector-load rules decide the same way).

Shapes are chosen around the tile edges of both tile configs (filters Kg, pixels M = N*P*Q and reduction
Cg*R*S just below, at and just above a multiple of BM / BN / BK); each tile config is forced through the
launch functions' ``tile=`` override so the 128x128 tile runs on small problems, and both thread orders
(``with_thread_order``: the emulator's ``reverse_threads``; on a GPU the hardware's own order) run, so a
missing barrier in the double-buffered main loop shows up. The shared matrices (tests/test_conv.py,
tests/test_hypothesis.py) run both algorithms as well.

Emulator only: ``test_no_out_of_bounds_access_under_asan`` (an AddressSanitizer build of the kernels; on a
GPU, compute-sanitizer memcheck over the ``gpu`` tests, in .ci/gpu, is its counterpart). Host-side tests
(tile, vectorization and decline rules; nothing launched) carry no marker.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from gpuconv._cuda import abi, conv, conv_gemm1x1, conv_igemm, gemm, limits, ops, select
from gpuconv._cuda.gemm import LARGE_TILE, SMALL_TILE, WIDE_TILE
from gpuconv._cuda.runtime import kernels_dir
from gpuconv._geometry import conv_geometry
from tests.cases import GEMM_EDGE_CASES, KERNEL_CASES, conv_arrays, kernel_case_data, kernel_case_id, pairwise
from tests.reference import reference_conv2d
from tests.runners import SpyRuntime, numpy_io, runtime_fixture, use_heuristic_auto, with_thread_order
from tests.support import NoLaunch, check_conv, noncontiguous_view
from tests.tolerance import assert_close

ORDERS = ("forward", "reversed")


# --------------------------------------------------------------------------------------------
# runtime and helpers
# --------------------------------------------------------------------------------------------

# The emulator and a GPU (tests/runners.py): every test that takes ``rt`` runs on both.
rt = runtime_fixture()


def _misaligned(a, elements=1):
    """A C-contiguous copy of ``a`` that starts ``elements`` elements past an aligned address."""
    buf = np.empty(a.size + 64, dtype=a.dtype)
    start = (-buf.ctypes.data % 64) // a.itemsize + elements
    v = buf[start:start + a.size].reshape(a.shape)
    v[...] = a
    assert v.flags.c_contiguous and v.ctypes.data % 64 == elements * a.itemsize
    return v


# --------------------------------------------------------------------------------------------
# igemm: tile edges of both configs, every dtype, both thread orders
# --------------------------------------------------------------------------------------------

# GEMM_EDGE_CASES (tests/cases.py, shared with igemm_tc): filters, pixels and reduction
# around the tile sizes of both configs.


def _edge_params():
    params = []
    for name in GEMM_EDGE_CASES:
        # The wide tile (64 filters like the small one, 128 pixels like the large one) runs every case.
        tiles = [SMALL_TILE, WIDE_TILE] if name.startswith("small") else [LARGE_TILE, WIDE_TILE] \
            if name.startswith("large") else [SMALL_TILE, WIDE_TILE, LARGE_TILE]
        for tile in tiles:
            for dt in gemm.TILES_BY_DTYPE:
                if any(t.name == tile.name for t in gemm.TILES_BY_DTYPE[dt]):  # float64: its own small tile
                    params.append(pytest.param(name, gemm.tile_for_dtype(tile, dt), dt,
                                               id=f"{name}-{tile.name}-{dt.name}"))
    return params


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("name, tile, dtype", _edge_params())
def test_igemm_tile_edges(rt, name, tile, dtype, order):
    xs, ws, groups, stride, padding, dilation, flip, act, bias = GEMM_EDGE_CASES[name]
    x, w, b = conv_arrays(xs, ws, dtype, bias=bias, seed=len(name))
    _, kid, _ = check_conv(with_thread_order(rt, order), "igemm", x, w, b, stride, padding, dilation, groups,
                           flip, act, tile=tile)
    assert kid == conv_igemm.igemm_name(dtype, tile)


@pytest.mark.parametrize("case", KERNEL_CASES, ids=[kernel_case_id(c) for c in KERNEL_CASES])
def test_igemm_matches_reference(rt, case):
    """The kernel suites' pairwise geometry matrix (tests/cases.py, as test_cuda_conv: every stride /
    padding / dilation / grouping / dtype / activation / flip / bias / non-contiguous layout) through
    conv.conv2d(algo='igemm')."""
    g, x, w, b = kernel_case_data(case)
    rng = np.random.default_rng(1)
    xv, wv, bv = (noncontiguous_view(a, case["layout"], rng) for a in (x, w, b))
    y, kid = numpy_io(rt, conv.conv2d, xv, wv, bv, g, "igemm")
    tile = gemm.gemm_tile_for(g, case["dtype"])
    splits, _ = conv_igemm.splitk_ranges(g, tile, conv_igemm.splitk_for(g, tile))
    if splits == 1:
        assert kid == conv_igemm.igemm_name(case["dtype"], tile)
    else:  # split-K (tests/test_cuda_splitk.py): the rule chose it for this few-block case
        assert kid == conv_igemm.igemm_kernel_id(
            gemm.gemm_kernel_name(conv_igemm.SPLIT_KERNEL, case["dtype"], gemm.tile_for_dtype(tile, case["dtype"])),
            splits, case["dtype"])
    ref, mag = reference_conv2d(x, w, b, case["stride"], case["padding"], case["dilation"], g.groups, g.flip,
                                g.activation)
    assert_close(y, ref, mag, case["dtype"], kid)


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_igemm_weight_vector_loads(rt, dtype, vectorize):
    """Cg*R*S = 2*3*2 = 12 (a multiple of 4): the rule allows 4-wide weight loads; forcing them off gives the
    same answer. Kg = 70 spans two small filter tiles, so the second tile's loads start mid-buffer."""
    x, w, b = conv_arrays((1, 2, 9, 10), (70, 2, 3, 2), dtype, seed=3)
    g = conv_geometry(x.shape, w.shape, b.shape, padding=1)
    assert gemm.weights_vectorizable(g, dtype, w.ctypes.data)
    check_conv(rt, "igemm", x, w, b, padding=1, tile=SMALL_TILE, vectorize_weights=vectorize)


def test_igemm_misaligned_weights_fall_back_to_scalar_loads(rt):
    """A weight array starting 1 element past an aligned address: contiguous, so conv2d passes it as is;
    the rule turns vector loads off (the kernel would fault or read wrongly otherwise) and the result is right."""
    x, w, b = conv_arrays((1, 4, 7, 8), (9, 4, 2, 2), np.float32, seed=4)
    wm = _misaligned(w)
    g = conv_geometry(x.shape, w.shape, b.shape, padding=1)
    assert not gemm.weights_vectorizable(g, np.float32, wm.ctypes.data)
    spy = SpyRuntime(rt)
    check_conv(spy, "igemm", x, wm, b, padding=1)
    assert spy.launches[-1].args[-1] == np.int32(0)  # vec_w
    with pytest.raises(ValueError, match="4-wide weight loads requested"):
        conv_igemm.launch_igemm(NoLaunch(), x, wm, b, np.empty(g.output_shape, np.float32), g,
                                vectorize_weights=True)


def test_igemm_grid_stride_loop(rt, monkeypatch):
    """A grid capped below the tile count: blocks loop over tiles (grid-stride), each tile's prologue
    reusing shared memory after the previous tile's last barrier. 2 blocks for 2 groups x 3 pixel tiles x
    2 filter tiles = 12 tiles, both thread orders."""
    monkeypatch.setattr(limits, "MAX_GRID_BLOCKS", 2)
    x, w, b = conv_arrays((2, 4, 9, 8), (140, 2, 3, 3), np.float32, seed=5)
    g = conv_geometry(x.shape, w.shape, b.shape, padding=1, groups=2)
    assert gemm.gemm_blocks(g, SMALL_TILE) == 2 * 3 * 2
    for order_rt in (rt, with_thread_order(rt, "reversed")):
        spy = SpyRuntime(order_rt)
        check_conv(spy, "igemm", x, w, b, padding=1, groups=2, activation="relu", tile=SMALL_TILE)
        assert spy.launches[-1].grid == (2, 1, 1)


def test_igemm_nan_inf_and_empty_image(rt):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 3, 12, 10)).astype(np.float32)
    x[0, 0, 3, 4] = np.nan
    x[0, 2, 11, 9] = np.inf
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    check_conv(rt, "igemm", x, w, None, padding=1, activation="relu")
    # H = 0 with padding: every tap reads padding, the output is act(bias).
    x0 = np.zeros((2, 3, 0, 5))
    w0 = np.ones((4, 3, 1, 1))
    b0 = np.array([1.0, -2.0, 3.0, -4.0])
    g, _, _ = check_conv(rt, "igemm", x0, w0, b0, padding=1, activation="relu")
    assert g.P == 2


# --------------------------------------------------------------------------------------------
# gemm1x1
# --------------------------------------------------------------------------------------------

GEMM1X1_DIMS = {
    "dtype": [np.float16, np.float32, np.float64],
    "tile": ["rule", "small", "wide", "large"],
    "stride": [1, 2, (1, 3)],
    # (N, C, H, W, K, groups): H*W % 4 == 0 or not; Cg % 4 == 0 or not; Kg around the small tile
    "shape": [(2, 8, 6, 6, 65, 1), (3, 6, 5, 7, 10, 2), (1, 12, 8, 9, 63, 3), (2, 5, 4, 5, 7, 1)],
    "x_aligned": [True, False],
    "bias": [True, False],
    "activation": [None, "relu", "leaky_relu", "sigmoid", "tanh"],
}


def _gemm1x1_valid(c):
    return not (np.dtype(c["dtype"]) == np.float64 and c["tile"] in ("large", "wide"))


GEMM1X1_CASES = pairwise(GEMM1X1_DIMS, _gemm1x1_valid, seed=2)


def _gemm1x1_id(c):
    return "-".join([np.dtype(c["dtype"]).name, c["tile"], f"s{str(c['stride']).replace(' ', '')}",
                     "x".join(map(str, c["shape"])), "aligned" if c["x_aligned"] else "misaligned",
                     "bias" if c["bias"] else "nobias", str(c["activation"])])


@pytest.mark.parametrize("case", GEMM1X1_CASES, ids=[_gemm1x1_id(c) for c in GEMM1X1_CASES])
def test_gemm1x1_matches_reference(rt, case):
    N, C, H, W, K, groups = case["shape"]
    dt = np.dtype(case["dtype"])
    x, w, b = conv_arrays((N, C, H, W), (K, C // groups, 1, 1), dt, bias=case["bias"], seed=7)
    if not case["x_aligned"]:
        x = _misaligned(x)
    tile = {"rule": None, "small": SMALL_TILE, "wide": WIDE_TILE, "large": LARGE_TILE}[case["tile"]]
    g = conv_geometry(x.shape, w.shape, None, case["stride"], 0, 1, groups)
    expect_vec_x = g.sh == g.sw == 1 and (H * W) % 4 == 0 and case["x_aligned"]
    assert conv_gemm1x1.input_vectorizable(g, dt, x.ctypes.data) == expect_vec_x
    spy = SpyRuntime(rt)
    overrides = {} if tile is None else {"tile": tile}
    _, kid, _ = check_conv(spy, "gemm1x1", x, w, b, case["stride"], 0, 1, groups, False, case["activation"],
                           **overrides)
    assert kid == conv_gemm1x1.gemm1x1_name(dt, tile or gemm.gemm_tile_for(g, dt))
    assert spy.launches[-1].args[-1] == np.int32(expect_vec_x)
    assert spy.launches[-1].args[-2] == np.int32(gemm.weights_vectorizable(g, dt, w.ctypes.data))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_gemm1x1_large_tile_edges(rt, dtype, order):
    """The 128 x 128 tile at its edges: Kg = 129 (two filter tiles, the second with 1 row), M = 2*8*8 = 128
    (exactly one pixel tile, vector input loads), Cg = 12 (one full slice of 8 + 4); then M = 127 (scalar
    input loads, H*W odd) with Kg = 127."""
    x, w, b = conv_arrays((2, 12, 8, 8), (129, 12, 1, 1), dtype, seed=8)
    check_conv(with_thread_order(rt, order), "gemm1x1", x, w, b, activation="tanh", tile=LARGE_TILE)
    x, w, b = conv_arrays((1, 12, 1, 127), (127, 12, 1, 1), dtype, seed=9)
    check_conv(with_thread_order(rt, order), "gemm1x1", x, w, b, tile=LARGE_TILE)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("tile", [SMALL_TILE, WIDE_TILE], ids=lambda t: t.name)
def test_gemm1x1_small_tile_vector_paths(rt, tile, order):
    """The 64-filter tiles (64 and 128 threads), every combination of vector / scalar input and weight loads
    on the same data."""
    x, w, b = conv_arrays((3, 8, 4, 7), (66, 8, 1, 1), np.float32, seed=10)  # H*W = 28, Cg = 8: both allowed
    for vx in (True, False):
        for vw in (True, False):
            check_conv(with_thread_order(rt, order), "gemm1x1", x, w, b, activation="relu", tile=tile,
                       vectorize_input=vx, vectorize_weights=vw)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("tile", [SMALL_TILE, WIDE_TILE], ids=lambda t: t.name)
def test_gemm1x1_64_filter_tile_edges(rt, tile, dtype, order):
    """The 64-filter tiles (8x8 per thread on 64 / 128 threads) at their edges: Kg = 65 (two filter tiles,
    the second with 1 row), M = 2*8*(BN/16) = BN (exactly one pixel tile, vector input loads), Cg = 17 (a
    full slice of 16 + 1); then M = BN + 1 (scalar input loads, H*W odd), Kg = 63, Cg = 16 (one slice)."""
    x, w, b = conv_arrays((2, 17, 8, tile.bn // 16), (65, 17, 1, 1), dtype, seed=12)
    check_conv(with_thread_order(rt, order), "gemm1x1", x, w, b, activation="relu", tile=tile)
    x, w, b = conv_arrays((1, 16, 1, tile.bn + 1), (63, 16, 1, 1), dtype, seed=13)
    check_conv(with_thread_order(rt, order), "gemm1x1", x, w, b, tile=tile)


def test_gemm1x1_dilation_and_flip_do_not_matter(rt):
    x, w, b = conv_arrays((2, 4, 5, 6), (3, 4, 1, 1), np.float64, seed=11)
    check_conv(rt, "gemm1x1", x, w, b, stride=2, dilation=3, flip=True)


# --------------------------------------------------------------------------------------------
# host rules
# --------------------------------------------------------------------------------------------

def _geom(N=1, C=8, H=16, W=16, K=64, R=3, S=3, groups=1, stride=1, padding=1):
    return conv_geometry((N, C, H, W), (K, C // groups, R, S), None, stride, padding, 1, groups)


def test_tile_config_rule():
    """LARGE for float32 / float16 when Kg > 64 and there are >= 128 large tiles; else WIDE when there are
    >= 128 wide tiles; SMALL otherwise and always for float64 (documented in gemm.py's docstring)."""
    big = _geom(N=8, C=64, H=64, W=64, K=128)  # 8*64*64 / 128 = 256 pixel tiles x 1 filter tile
    assert gemm.gemm_blocks(big, LARGE_TILE) == 256
    for dt in (np.float16, np.float32):
        assert gemm.gemm_tile_for(big, dt) is LARGE_TILE
    assert gemm.gemm_tile_for(big, np.float64) is gemm.SMALL_TILE_F64 == gemm.tile_for_dtype(SMALL_TILE, np.float64)
    with pytest.raises(ValueError, match="tile large is not instantiated for float64"):
        gemm.tile_for_dtype(LARGE_TILE, np.float64)
    # Kg = 64: a 64-row tile holds every filter of a group; 256 wide tiles fill the GPU.
    assert gemm.gemm_tile_for(_geom(N=8, C=64, H=64, W=64, K=64), np.float32) is WIDE_TILE
    # ... fewer than 128 wide tiles (127 x 1): the small tile (4x the large tile's blocks)
    few = _geom(N=1, C=8, H=127, W=128, K=64)
    assert gemm.gemm_blocks(few, WIDE_TILE) == 127
    assert gemm.gemm_tile_for(few, np.float32) is SMALL_TILE
    assert gemm.gemm_tile_for(_geom(N=1, C=8, H=128, W=128, K=64), np.float16) is WIDE_TILE
    # Kg = 65 qualifies ...
    assert gemm.gemm_tile_for(_geom(N=8, C=64, H=64, W=64, K=65), np.float32) is LARGE_TILE
    # ... per group: 2 groups of 64 filters do not.
    assert gemm.gemm_tile_for(_geom(N=8, C=64, H=64, W=64, K=128, groups=2), np.float32) is WIDE_TILE
    # the block-count threshold: 127 large tiles -> wide (254 of them), 128 -> large
    edge = _geom(N=1, C=4, H=127, W=128, K=96)
    assert gemm.gemm_blocks(edge, LARGE_TILE) == 127
    assert gemm.gemm_tile_for(edge, np.float32) is WIDE_TILE
    edge = _geom(N=1, C=4, H=128, W=128, K=96)
    assert gemm.gemm_blocks(edge, LARGE_TILE) == 128
    assert gemm.gemm_tile_for(edge, np.float32) is LARGE_TILE
    # the same rule for gemm1x1 (shared), and every config it picks is instantiated
    pw = _geom(N=8, C=64, H=64, W=64, K=128, R=1, S=1, padding=0)
    assert gemm.gemm_tile_for(pw, np.float32) is LARGE_TILE
    for dt, tiles in gemm.TILES_BY_DTYPE.items():
        for t in tiles:
            assert conv_igemm.igemm_name(dt, t) in ops.INSTANTIATIONS[conv_igemm.SOURCE]
            assert conv_gemm1x1.gemm1x1_name(dt, t) in ops.INSTANTIATIONS[conv_gemm1x1.SOURCE]


def test_tile_configs_match_the_kernel():
    """The threads (8x8 per thread: 256, 128, 64; float64's 4x4: 256), the documented shared memory (static,
    in the accumulation type), the instantiation count the NVRTC check compiles, and launch bounds that
    follow the threads."""
    assert [(t.tm, t.tn, t.threads) for t in (LARGE_TILE, WIDE_TILE, SMALL_TILE)] == [(8, 8, 256), (8, 8, 128),
                                                                                    (8, 8, 64)]
    assert gemm.SMALL_TILE_F64.threads == 256
    for source in (conv_igemm.SOURCE, conv_gemm1x1.SOURCE):
        assert "gemm_blocks_per_sm((BM / TM) * (BN / TN), TM, TN)" in (kernels_dir() / source).read_text()
    assert WIDE_TILE.shared_bytes(np.float32) == 2 * 16 * (64 + 4 + 128) * 4 == 25088
    assert LARGE_TILE.shared_bytes(np.float32) == LARGE_TILE.shared_bytes(np.float16) == 33280
    assert SMALL_TILE.shared_bytes(np.float32) == 16896 and gemm.SMALL_TILE_F64.shared_bytes(np.float64) == 16896
    assert len(conv_gemm1x1.INSTANTIATIONS) == 7
    # igemm: 7 tiles, the same 7 as split-K kernels, and split-K's reduce kernel per dtype.
    assert len(conv_igemm.INSTANTIATIONS) == 7 + 7 + 3
    text = (kernels_dir() / "gemm_tile.cuh").read_text()
    assert f"static constexpr int A_PAD = {gemm.GEMM_A_PAD};" in text


def test_vectorization_rules():
    g12 = _geom(C=4, K=8, R=3, S=1)  # Cg*R*S = 12
    g9 = _geom(C=1, K=8)             # 9
    for dt, align in ((np.float16, 8), (np.float32, 16), (np.float64, 16)):
        assert gemm.weights_vectorizable(g12, dt, 4096)
        assert gemm.weights_vectorizable(g12, dt, 4096 + align)
        assert not gemm.weights_vectorizable(g12, dt, 4096 + align // 2)
        assert not gemm.weights_vectorizable(g9, dt, 4096)
    pw = _geom(C=8, H=6, W=6, R=1, S=1, padding=0)         # H*W = 36
    assert conv_gemm1x1.input_vectorizable(pw, np.float32, 4096)
    assert not conv_gemm1x1.input_vectorizable(pw, np.float32, 4100)
    assert conv_gemm1x1.input_vectorizable(pw, np.float16, 4104)
    assert not conv_gemm1x1.input_vectorizable(_geom(C=8, H=6, W=6, R=1, S=1, padding=0, stride=2),
                                               np.float32, 4096)
    assert not conv_gemm1x1.input_vectorizable(_geom(C=8, H=5, W=7, R=1, S=1, padding=0), np.float32, 4096)


def test_launch_shape_follows_the_rules(rt):
    assert [t.threads for t in (LARGE_TILE, WIDE_TILE, SMALL_TILE, gemm.SMALL_TILE_F64)] == [256, 128, 64, 256]
    x, w, b = conv_arrays((2, 8, 6, 7), (20, 8, 3, 3), np.float32, seed=12)
    spy = SpyRuntime(rt)
    g, kid, _ = check_conv(spy, "igemm", x, w, b, padding=1)
    source, name, grid, block, args, shared = spy.launches[-1]
    assert (source, name) == (conv_igemm.SOURCE, kid) and name in ops.INSTANTIATIONS[source]
    assert block == (SMALL_TILE.threads, 1, 1) == (64, 1, 1) and shared == 0  # 8x8 per thread, 64 x 64
    assert grid == (gemm.gemm_blocks(g, SMALL_TILE), 1, 1) == (2 * 6 * 7 // 64 + 1, 1, 1)
    # the pointers, one ConvParams passed by value (a one-element structured array), vec_w
    assert len(args) == 4 + 1 + 1 and args[4].dtype == abi.CONV_PARAMS_DTYPE and args[4].shape == (1,)
    assert args[4][0]["P"] == g.P and type(args[5]) is np.int32


def test_heuristic_prefers_the_gemm_kernels(rt, monkeypatch):
    """choose_algo's documented order: gemm1x1 for unpadded 1x1 filters, igemm for every other ordinary
    convolution (padded 1x1 included, since gemm1x1 declines it); 'auto' runs it (measuring off on a GPU)."""
    use_heuristic_auto(monkeypatch)
    pw = _geom(C=8, K=16, R=1, S=1, padding=0)
    assert select.choose_algo(pw, np.float32) == "gemm1x1"
    assert select.choose_algo(_geom(C=8, K=16, R=1, S=1, padding=1), np.float32) == "igemm"
    assert select.choose_algo(_geom(C=8, K=16), np.float64) == "igemm"
    x, w, _ = conv_arrays((1, 8, 6, 6), (16, 8, 1, 1), np.float32, bias=False, seed=13)
    y, kid = numpy_io(rt, conv.conv2d, x, w, None, conv_geometry(x.shape, w.shape), "auto")
    assert kid == conv_gemm1x1.gemm1x1_name(np.float32, SMALL_TILE)


# --------------------------------------------------------------------------------------------
# decline rules
# --------------------------------------------------------------------------------------------

def test_gemm1x1_decline_rule():
    x = np.zeros((1, 4, 6, 6), np.float32)
    for R, S in ((3, 3), (1, 3), (3, 1)):
        g = conv_geometry(x.shape, (2, 4, R, S))
        reason = conv_gemm1x1.gemm1x1_decline_reason(g, np.float32)
        assert reason.startswith("gemm1x1 declines this geometry because") and f"{R}x{S}" in reason
        with pytest.raises(ValueError, match="gemm1x1 declines this geometry because the filter is"):
            conv.conv2d(NoLaunch(), x, np.zeros((2, 4, R, S), np.float32), None, g, "gemm1x1")
    for padding in (1, ((0, 1), (0, 0)), ((0, 0), (1, 0))):
        g = conv_geometry(x.shape, (2, 4, 1, 1), None, 1, padding)
        reason = conv_gemm1x1.gemm1x1_decline_reason(g, np.float32)
        assert reason.startswith("gemm1x1 declines this geometry because padding")
        assert conv_igemm.igemm_decline_reason(g, np.float32) is None
    # accepted: strides, groups, dilation (no effect on 1x1), every dtype
    for dt in (np.float16, np.float32, np.float64):
        g = conv_geometry(x.shape, (6, 2, 1, 1), None, (2, 3), 0, 2, 2)
        assert conv_gemm1x1.gemm1x1_decline_reason(g, dt) is None


def test_int32_size_rule_declines_before_launching():
    g = conv_geometry((1, 1, 4, 4), (1, 1, 1, 1))
    x = np.zeros((1, 1, 4, 4), np.float32)
    for algo, huge in (("igemm", dataclasses.replace(g, pb=2**31, P=2**31 + 4)),
                       ("igemm", dataclasses.replace(g, N=2**31)),
                       ("gemm1x1", dataclasses.replace(g, H=2**31, P=2**31))):
        reason = select.decline_reason(algo, huge, np.float32)
        assert reason.startswith(f"{algo} declines this geometry because")
        with pytest.raises(ValueError, match=f"{algo} declines .* 2\\^31-1"):
            conv.conv2d(NoLaunch(), x, np.ones((1, 1, 1, 1), np.float32), None, huge, algo)
    wide = _geom(C=2**20, K=4, R=64, S=64, padding=0, H=64, W=64)  # Cg*R*S = 2^32 (sizes only)
    assert "C/groups * kernel_h * kernel_w" in conv_igemm.igemm_decline_reason(wide, np.float32)


# --------------------------------------------------------------------------------------------
# memory safety: AddressSanitizer build
# --------------------------------------------------------------------------------------------

_ASAN_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from gpuconv._cuda import conv_gemm1x1, conv_igemm, gemm, ops
from gpuconv._cuda.runtime import kernels_dir
from gpuconv._geometry import conv_geometry
from tests.emulator import EmulatedRuntime
from tests.reference import reference_conv2d

rt = EmulatedRuntime(kernels_dir(), ops.INSTANTIATIONS, sanitize=True)
rng = np.random.default_rng(0)
L, S = gemm.LARGE_TILE, gemm.SMALL_TILE
# Partial filter tiles in the LAST group (w read past its end if unguarded), partial pixel tiles at the end
# of x / y, reduction tails, vector loads ending exactly at the end of w / x.
CASES = [
    ("igemm", (2, 6, 5, 7), (130, 3, 3, 3), 2, 1, 1, 1, True, np.float32, S),
    ("igemm", (1, 4, 3, 43), (129, 4, 1, 3), 1, 2, ((0, 1), (2, 0)), 2, False, np.float16, L),
    ("igemm", (3, 8, 4, 5), (65, 8, 1, 2), 1, 1, 0, 1, False, np.float64, S),
    ("gemm1x1", (2, 12, 8, 8), (129, 12, 1, 1), 1, 1, 0, 1, False, np.float32, L),
    ("gemm1x1", (3, 16, 5, 4), (66, 8, 1, 1), 2, 1, 0, 1, False, np.float64, S),
    ("gemm1x1", (1, 9, 7, 5), (63, 9, 1, 1), 1, 2, 0, 1, False, np.float16, S),
]
# Split-K (its workspace and the reduce kernel): the last range short, the last slice partial.
SPLIT_CASES = [
    ("igemm", (1, 20, 5, 7), (130, 10, 3, 3), 2, 1, 1, 1, True, np.float32, S, 3),
    ("igemm", (2, 17, 4, 3), (65, 17, 3, 3), 1, 1, 1, 1, False, np.float64, S, 8),
    ("igemm", (1, 33, 3, 43), (129, 33, 1, 3), 1, 2, 1, 1, False, np.float16, L, 2),
]
for algo, xs, ws, groups, stride, padding, dilation, flip, dt, tile, *splits in CASES + SPLIT_CASES:
    x = rng.standard_normal(xs).astype(dt)
    w = rng.standard_normal(ws).astype(dt)
    b = rng.standard_normal(ws[0]).astype(dt)
    g = conv_geometry(xs, ws, b.shape, stride, padding, dilation, groups, flip, "tanh")
    ref, _ = reference_conv2d(x, w, b, stride, padding, dilation, groups, flip, "tanh")
    y = np.empty(g.output_shape, dt)
    launch = conv_igemm.launch_igemm if algo == "igemm" else conv_gemm1x1.launch_gemm1x1
    launch(rt, x, w, b, y, g, tile=tile, **({"splits": splits[0]} if splits else {}))
    tol = 1e-2 if dt == np.float16 else 1e-5
    assert np.allclose(ref, y.astype(np.float64), rtol=tol, atol=tol), (algo, xs)
print("asan ok")
"""


@pytest.mark.emulated
@pytest.mark.slow  # a g++ AddressSanitizer build in a subprocess: CI runs it (-m slow)
def test_no_out_of_bounds_access_under_asan():
    """Both kernels at tile edges, compiled with -fsanitize=address (in a subprocess, since libasan must be
    preloaded): any read or write past x, w, b or y fails."""
    from tests.emulator import run_script_under_asan
    proc = run_script_under_asan(_ASAN_SCRIPT, Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0 and "asan ok" in proc.stdout, (proc.stdout + proc.stderr)[-6000:]
