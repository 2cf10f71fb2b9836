"""The GEMM kernels' slice machinery since issue 16 (kernels/gemm_tile.cuh, kernels/im2col_loader.cuh), on
the emulator under both thread orders: reductions of BK = 16 (8 for float64's small tile) +- 1 and across
several slices, where the im2col loader's tap walk (one division per tile, then a constant (channel, row,
column) step of BK per slice with two carries) crosses every kind of carry: filters with more taps than a
slice (7x7: no channel step), fewer (3x5, 3x3), and 1x1 (a channel step of BK), with flip (the walk runs
backwards), dilation, stride and asymmetric padding; pixel tiles cut short (pixels past M take the loader's
sentinel row and read nothing); weight rows whose length is not a multiple of 4 (scalar weight loads) and
ones that are (vector loads, checked against the rule). gemm1x1's loader with channel counts around BK.

Every case runs every tile config the dtype has (float32 / float16: large, wide, small), forced through
the launch's ``tile=`` override.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpuconv._cuda import conv_gemm1x1, conv_igemm, gemm
from tests.cases import conv_arrays
from tests.runners import runtime_fixture, with_thread_order
from tests.support import check_conv

ORDERS = ("forward", "reversed")

rt = runtime_fixture()

# name: (x shape, w shape, groups, stride, padding, dilation, flip, activation, bias)
IGEMM_WALK_CASES = {
    # reduction 15 = one slice less 1 (RS = 15 < BK: step_c 1, step_r 0, step_s 1), flip, M = 2*6*7 = 84
    "r15-3x5-flip": ((2, 1, 6, 9), (70, 1, 3, 5), 1, 1, (1, 2), 1, True, None, True),
    # reduction 17 = one slice + 1 (1x1: every step of the walk is a channel), Kg 66, M 30
    "r17-1x1": ((1, 17, 5, 6), (66, 17, 1, 1), 1, 1, 0, 1, False, "relu", True),
    # reduction 99 = 6 slices + 3, 3x3 dilated 2, stride 2, asymmetric padding, flip, Kg 129
    "r99-3x3-dil-flip": ((1, 11, 9, 10), (129, 11, 3, 3), 1, 2, ((2, 1), (0, 2)), 2, True, "tanh", False),
    # reduction 98 = 2 channels of 7x7 (RS = 49 > BK: step_c 0, step_r 2, step_s 2), stride 2, padding 3
    "r98-7x7": ((2, 2, 12, 13), (65, 2, 7, 7), 1, 2, 3, 1, False, None, True),
    # reduction 32 = two whole slices, 2 groups (each group's walk starts at its own channel 0), M = 128
    "r32-groups": ((2, 8, 8, 8), (128, 4, 2, 4), 2, 1, ((1, 0), (2, 1)), 1, False, "leaky_relu", True),
}


def _tiles(dtype):
    return gemm.TILES_BY_DTYPE[np.dtype(dtype)]


def _params(cases):
    return [pytest.param(name, tile, dt, id=f"{name}-{tile.name}-{np.dtype(dt).name}")
            for name in cases for dt in (np.float16, np.float32, np.float64) for tile in _tiles(dt)]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("name, tile, dtype", _params(IGEMM_WALK_CASES))
def test_igemm_reduction_walk(rt, name, tile, dtype, order):
    xs, ws, groups, stride, padding, dilation, flip, act, bias = IGEMM_WALK_CASES[name]
    x, w, b = conv_arrays(xs, ws, dtype, bias=bias, seed=len(name) + 3)
    _, kid, _ = check_conv(with_thread_order(rt, order), "igemm", x, w, b, stride, padding, dilation, groups,
                           flip, act, tile=tile)
    assert kid == conv_igemm.igemm_name(dtype, tile)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("vectorize", [False, True])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_igemm_weight_slots_scalar_and_vector(rt, dtype, vectorize, order):
    """Reduction 4*3*3 = 36 (a multiple of 4: vector weight loads allowed), 2 slices + 4: the same weights
    through the vector and the scalar weight loads, both tiles."""
    x, w, b = conv_arrays((1, 4, 7, 9), (70, 4, 3, 3), dtype, seed=21)
    for tile in _tiles(dtype):
        check_conv(with_thread_order(rt, order), "igemm", x, w, b, padding=1, tile=tile,
                   vectorize_weights=vectorize)


# gemm1x1: channels around BK (16), both input-load patterns (H*W % 4 == 0 at stride 1: vector).
GEMM1X1_CASES = {
    "c15-vec": ((2, 15, 4, 4), (66, 15, 1, 1), 1, 1),
    "c16-scalar": ((1, 16, 5, 5), (129, 16, 1, 1), 1, 1),
    "c33-stride2": ((2, 33, 6, 5), (70, 33, 1, 1), 1, 2),
    "c17-groups": ((1, 34, 4, 8), (130, 17, 1, 1), 2, 1),
}


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("name, tile, dtype", _params(GEMM1X1_CASES))
def test_gemm1x1_channels_around_bk(rt, name, tile, dtype, order):
    xs, ws, groups, stride = GEMM1X1_CASES[name]
    x, w, b = conv_arrays(xs, ws, dtype, seed=len(name))
    _, kid, _ = check_conv(with_thread_order(rt, order), "gemm1x1", x, w, b, stride, groups=groups,
                           activation="relu", tile=tile)
    assert kid == conv_gemm1x1.gemm1x1_name(dtype, tile)


def test_bk16_tiles_and_float64():
    """The configs: BK 16 for float16 / float32, float64's small tile BK 8 (registers), chosen by name."""
    assert (gemm.LARGE_TILE.bk, gemm.SMALL_TILE.bk, gemm.SMALL_TILE_F64.bk) == (16, 16, 8)
    assert gemm.tile_for_dtype(gemm.SMALL_TILE, np.float64) is gemm.SMALL_TILE_F64
    assert gemm.tile_for_dtype(gemm.SMALL_TILE, np.float32) is gemm.SMALL_TILE
    assert conv_igemm.igemm_name(np.float64, gemm.SMALL_TILE) == "gpuconv::conv2d_igemm<double, 64, 64, 8, 4, 4>"
