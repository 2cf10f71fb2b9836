"""Split-K of ``igemm`` (issue 16; kernels/conv2d_igemm.cu's ``splits`` ranges and ``gemm_splitk_reduce``,
host rule ``conv_igemm.splitk_for``) against the reference of tests/reference.py.

Launch tests take the ``rt`` fixture (emulated and GPU, tests/runners.py) and force ``splits=`` through
``launch_igemm`` on shapes whose reduction Cg*R*S is not a multiple of BK * splits (so the last range is
short and the last slice partial), with groups, flip, stride / dilation / padding, bias and activation, all
dtypes and every tile config; both thread orders must give bitwise identical outputs (the fixed-order
reduction). Host-side tests (the rule, the ranges, the workspace size) carry no marker.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpuconv._cuda import conv, conv_igemm, gemm, ops
from gpuconv._cuda.gemm import LARGE_TILE, SMALL_TILE, WIDE_TILE
from gpuconv._geometry import conv_geometry
from tests.runners import numpy_io, runtime_fixture, with_thread_order
from tests.support import check_conv, noncontiguous_view

rt = runtime_fixture()

DTYPES = (np.float16, np.float32, np.float64)

# (x shape, w shape, stride, padding, dilation, groups, flip, activation, bias): reductions 20*9 = 180,
# 13*5*3 = 195 (groups 2), 33*1*1... chosen so that Cg*R*S % (BK * splits) != 0.
CASES = {
    "plain-bias": ((1, 20, 7, 7), (70, 20, 3, 3), 1, 1, 1, 1, False, None, True),
    "groups-flip-relu": ((2, 26, 9, 8), (10, 13, 5, 3), 1, (2, 1), 1, 2, True, "relu", True),
    "stride-dilation-nobias": ((1, 17, 11, 9), (9, 17, 3, 3), 2, 2, 2, 1, False, "sigmoid", False),
}


def _data(case, dtype, seed=0):
    xs, ws, *_ , bias = CASES[case]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype) if bias else None
    return x, w, b


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("splits", [2, 3, 8])
def test_igemm_splitk_matches_reference_and_is_bitwise_deterministic(rt, case, dtype, splits):
    x, w, b = _data(case, dtype)
    _, _, stride, padding, dilation, groups, flip, act, _ = CASES[case]
    outs = []
    for order in ("forward", "reversed"):
        g, kid, y = check_conv(with_thread_order(rt, order), "igemm", x, w, b, stride, padding, dilation, groups,
                               flip, act, splits=splits)
        outs.append(y)
    ranges, per = conv_igemm.splitk_ranges(g, gemm.gemm_tile_for(g, dtype), splits)
    assert ranges > 1 and (g.Cg * g.R * g.S) % (gemm.gemm_tile_for(g, dtype).bk * ranges) != 0
    assert kid.endswith(f" splitK={ranges} + {conv_igemm.reduce_name(dtype)}")
    assert outs[0].tobytes() == outs[1].tobytes()


@pytest.mark.parametrize("tile", [LARGE_TILE, WIDE_TILE, SMALL_TILE], ids=lambda t: t.name)
@pytest.mark.parametrize("dtype", (np.float16, np.float32), ids=lambda d: np.dtype(d).name)
def test_igemm_splitk_every_tile(rt, tile, dtype):
    """Every tile (8x8 per thread on 256 / 128 / 64 threads) split in 4, both thread orders bitwise equal."""
    x, w, b = _data("plain-bias", dtype, seed=1)
    xv = noncontiguous_view(x, "transposed", np.random.default_rng(5))
    outs = [check_conv(with_thread_order(rt, order), "igemm", xv, w, b, 1, 1, 1, 1, False, "relu", tile=tile,
                       splits=4)[2] for order in ("forward", "reversed")]
    assert outs[0].tobytes() == outs[1].tobytes()


def test_igemm_splitk_run_to_run_identical_and_one_split_is_the_unsplit_kernel(rt):
    x, w, b = _data("groups-flip-relu", np.float32, seed=2)
    _, _, y1 = check_conv(rt, "igemm", x, w, b, 1, (2, 1), 1, 2, True, "relu", splits=3)
    _, _, y2 = check_conv(rt, "igemm", x, w, b, 1, (2, 1), 1, 2, True, "relu", splits=3)
    assert y1.tobytes() == y2.tobytes()
    _, kid, _ = check_conv(rt, "igemm", x, w, b, 1, (2, 1), 1, 2, True, "relu", splits=1)
    assert "splitK" not in kid and kid in ops.INSTANTIATIONS[conv_igemm.SOURCE]


def test_igemm_rule_splits_a_layer_with_few_blocks(rt):
    # 96 filters, 8x8 output, Cg*R*S = 32*9 = 288 (18 slices of 16): 2 small tiles -> min(132, 2, 8) = 2.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 32, 8, 8)).astype(np.float32)
    w = rng.standard_normal((96, 32, 3, 3)).astype(np.float32)
    b = rng.standard_normal(96).astype(np.float32)
    g, kid, _ = check_conv(rt, "igemm", x, w, b, 1, 1)
    assert conv_igemm.splitk_for(g, SMALL_TILE) == 2
    split_name = gemm.gemm_kernel_name(conv_igemm.SPLIT_KERNEL, np.float32, SMALL_TILE)
    assert split_name in ops.INSTANTIATIONS[conv_igemm.SOURCE]
    assert kid == f"{split_name} splitK=2 + {conv_igemm.reduce_name(np.float32)}"


def test_igemm_splitk_rule():
    # conv5 3x3 at N=1: 512 filters, 7x7 output, Cg*R*S = 4608 (288 slices): 8 small tiles -> 8 ranges.
    g = conv_geometry((1, 512, 7, 7), (512, 512, 3, 3), None, 1, 1)
    tile = gemm.gemm_tile_for(g, np.float32)
    assert tile == SMALL_TILE and gemm.gemm_blocks(g, tile) == 8
    assert conv_igemm.splitk_for(g, tile) == 8
    assert conv_igemm.splitk_ranges(g, tile, 8) == (8, 36)
    assert conv_igemm.splitk_workspace_bytes(g, np.float32, 8) == 8 * 512 * 49 * 4
    assert conv_igemm.splitk_workspace_bytes(g, np.float16, 8) == 8 * 512 * 49 * 4
    assert conv_igemm.splitk_workspace_bytes(g, np.float64, 1) == 0
    # Enough blocks: no split.
    g = conv_geometry((8, 512, 56, 56), (512, 512, 3, 3), None, 1, 1)
    assert conv_igemm.splitk_for(g, gemm.gemm_tile_for(g, np.float32)) == 1
    # Short reduction (< 16 slices): no split however few the blocks.
    g = conv_geometry((1, 16, 7, 7), (512, 16, 3, 3), None, 1, 1)  # 144 = 9 slices
    assert conv_igemm.splitk_for(g, gemm.gemm_tile_for(g, np.float32)) == 1
    # 18 slices in 4 -> 4 ranges of 5 (the last 3); 9 slices in 8 -> 5 ranges of 2 (none empty).
    g = conv_geometry((1, 32, 8, 8), (96, 32, 3, 3), None, 1, 1)
    assert conv_igemm.splitk_ranges(g, SMALL_TILE, 4) == (4, 5)
    g = conv_geometry((1, 16, 7, 7), (512, 16, 3, 3), None, 1, 1)
    assert conv_igemm.splitk_ranges(g, SMALL_TILE, 8) == (5, 2)
    assert conv_igemm.reduce_name(np.float32) in ops.INSTANTIATIONS[conv_igemm.SOURCE]


def test_igemm_splitk_rejects_bad_splits():
    x = np.zeros((1, 4, 5, 5), np.float32)
    w = np.zeros((4, 4, 3, 3), np.float32)
    g = conv_geometry(x.shape, w.shape, None, 1, 1)
    with pytest.raises(ValueError, match="splits"):
        conv_igemm.launch_igemm(None, x, w, w, np.empty(g.output_shape, np.float32), g, splits=0)
    with pytest.raises(ValueError, match="splits"):
        conv_igemm.launch_igemm(None, x, w, w, np.empty(g.output_shape, np.float32), g, splits=9)
    from gpuconv._cuda.runtime import kernels_dir
    src = (kernels_dir() / conv_igemm.SOURCE).read_text()
    assert f"#define GEMM_SPLITK_MAX {conv_igemm.SPLITK_MAX}" in src
