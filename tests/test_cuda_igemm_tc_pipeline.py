"""igemm_tc's own pipeline (kernels/conv2d_igemm_tc.cu): the tap-major reduction in channel slices of BK,
the weights packed by the host into the staged slices' fragment order (gpuconv/_cuda/conv_igemm_tc.py,
``pack_weights``), the fragment-ordered B staging.

* ``pack_weights`` against an independent statement of the layout: every word of the packed array is
  located by the *forward* formula of the kernel's header (row, reduction index -> k-step, block, lane, word),
  computed here element by element, and must hold the TF32-rounded weight (tests/reference.py
  ``tf32_round``) or the float16 pair, with zeros past Kg and Cg.
* ``tf32_bits`` (the packing's rounding) against ``tf32_round`` on ties, inf, NaN payloads and the overflow
  to inf.
* The channel edges of the tap-major slices on the kernel (emulator and GPU, ``rt``): C/groups just below,
  at and above each tile's BK (one slice per tap, exactly full, a tail slice of one channel), with more
  filters than one filter tile minus one (a zero-padded last filter tile), padding, stride, dilation, groups
  and flip, both tiles, both dtypes, both thread orders.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpuconv._cuda import conv_igemm_tc
from gpuconv._cuda.conv_igemm_tc import TC_LARGE_TILE, TC_SMALL_TILE, pack_weights, tf32_bits
from gpuconv._geometry import conv_geometry
from tests.cases import conv_arrays
from tests.reference import reference_conv2d_tf32, tf32_round
from tests.runners import on_gpu, runtime_fixture, with_thread_order
from tests.support import check_conv

rt = runtime_fixture(algo="igemm_tc")
TILES = {"small": TC_SMALL_TILE, "large": TC_LARGE_TILE}


def _word_position(row, k, bm, dtype):
    """The kernel's forward layout (FragLayout, A's word order): where reduction index k of filter row ``row``
    of one slice lives, as (32-bit word, half within the word)."""
    kstep, kpw = (8, 1) if np.dtype(dtype) == np.float32 else (16, 2)
    ks, kin = divmod(k, kstep)
    hk, rest = divmod(kin, kstep // 2)
    tig, e = divmod(rest, kpw)
    blk, r16 = divmod(row, 16)
    h, gid = divmod(r16, 8)
    slot = 4 * gid + (tig ^ ((gid >> 1) & 3))
    return ((ks * (bm // 16) + blk) * 32 + slot) * 4 + h + 2 * hk, e


@pytest.mark.parametrize("tile", ["small", "large"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_pack_weights_layout(tile, dtype):
    """2 groups of Kg = BM + 3 filters (two filter tiles, the second mostly zero rows), Cg = BK + 2 channels
    (two channel slices per tap, the second mostly zero), 2 x 3 taps."""
    t = TILES[tile]
    bm, bk = t.bm, t.bk(dtype)
    kg, cg, R, S = bm + 3, bk + 2, 2, 3
    rng = np.random.default_rng(7)
    w = rng.standard_normal((2 * kg, cg, R, S)).astype(dtype)
    w[0, 0, 0, 0] = 1 + 2.0 ** -11  # a tie: rounds away from zero in TF32
    g = conv_geometry((1, 2 * cg, 4, 4), w.shape, None, groups=2)
    packed = pack_weights(np, w, g, t)
    assert packed.dtype == np.uint32 and packed.ctypes.data % 16 == 0
    kt, cs = 2, 2
    words = bm * bk // (4 // np.dtype(dtype).itemsize)
    assert packed.size == 2 * kt * R * S * cs * words
    expect = tf32_round(w).view(np.uint32) if np.dtype(dtype) == np.float32 else w.view(np.uint16)
    got = packed if np.dtype(dtype) == np.float32 else packed.view(np.uint16)
    seen = np.zeros(got.size, bool)
    per_word = 4 // np.dtype(dtype).itemsize
    for grp in range(2):
        for ktile in range(kt):
            for tap in range(R * S):
                for cslice in range(cs):
                    base = (((grp * kt + ktile) * R * S + tap) * cs + cslice) * words
                    for row in range(bm):
                        for k in range(bk):
                            word, e = _word_position(row, k, bm, dtype)
                            i = (base + word) * per_word + e
                            f, c = ktile * bm + row, cslice * bk + k
                            want = expect[grp * kg + f, c, tap // S, tap % S] if f < kg and c < cg else 0
                            assert got[i] == want, (grp, ktile, tap, cslice, row, k)
                            seen[i] = True
    assert seen.all()  # every word of the packed array is some (row, k)


def test_tf32_bits_matches_the_reference_rounding():
    big = np.finfo(np.float32).max
    x = np.array([1 + 2.0 ** -11, -(1 + 2.0 ** -11), 1 + 2.0 ** -11 - 2.0 ** -23, big, -big, np.inf, -np.inf,
                  0.0, -0.0, 1e-40], np.float32)
    nans = np.array([0x7FC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0xFFFFF000], np.uint32).view(np.float32)
    got = tf32_bits(np, np.concatenate([x, nans]))
    assert np.array_equal(got[:x.size], tf32_round(x).view(np.uint32))
    assert np.isnan(got[x.size:].view(np.float32)).all()  # every NaN stays a NaN, whatever its payload


def _channel_edge_params():
    params = []
    for dtype in (np.float32, np.float16):
        for tile in ("small", "large"):
            bk = TILES[tile].bk(dtype)
            # float16 small tile (runs of 4 k-steps gathered by whole k-steps, the rest in stage_tail):
            # also runs of 3 channels (an odd part of k-step 0, then three zero k-steps), whole k-steps and
            # zero ones (32), an even k-step part after whole k-steps (50).
            extra = (3, 32, 50) if (np.dtype(dtype) == np.float16 and tile == "small") else ()
            for cg in (bk - 1, bk, bk + 1) + extra:
                for order in ("forward", "reversed"):
                    params.append(pytest.param(dtype, tile, cg, order,
                                               id=f"{np.dtype(dtype).name}-{tile}-cg{cg}-{order}"))
    return params


@pytest.mark.parametrize("dtype, tile, cg, order", _channel_edge_params())
def test_channel_slices_at_the_edges(rt, dtype, tile, cg, order):
    """C/groups around BK: the slice walk across taps, the zero tail of a tap's last slice, the bounds per
    slice (padding 1 on a 3x3 filter), with a filter count of BM - 1 (one zero row in the packed tile)."""
    t = TILES[tile]
    x, w, b = conv_arrays((1, cg, 5, 6), (t.bm - 1, cg, 3, 3), dtype, bias=True, seed=cg)
    _, kid, _ = check_conv(with_thread_order(rt, order), "igemm_tc", x, w, b, padding=1,
                           reference=reference_conv2d_tf32,
                           precision="tf32" if on_gpu(rt) and dtype == np.float32 else None, tile=t)
    assert kid == conv_igemm_tc.tc_name(dtype, t)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_channel_tail_with_groups_stride_dilation_flip(rt, dtype):
    """2 groups of C/groups = BK + 1 (small tile), stride 2, dilation (2, 1), flip, asymmetric padding: the
    per-slice tap position with the flipped tap walk, the group's channel base, the tail slice."""
    t = TC_SMALL_TILE
    cg = t.bk(dtype) + 1
    x, w, b = conv_arrays((2, 2 * cg, 9, 8), (10, cg, 3, 2), dtype, bias=False, seed=3)
    check_conv(rt, "igemm_tc", x, w, b, stride=2, padding=((1, 0), (0, 1)), dilation=(2, 1), groups=2,
               flip=True, activation="relu", reference=reference_conv2d_tf32,
               precision="tf32" if on_gpu(rt) and dtype == np.float32 else None, tile=t)


def test_declines_what_its_int_offsets_cannot_hold():
    """The tap-major gather forms channel offsets within one image's group of channels as int: a 2 x 6000 x
    6000 input (72M elements per image, 64 * 36M > 2^31 with the channels padded to a slice) is declined
    with the size named, as is a padded reduction past 2^31; an ordinary layer is not."""
    big = conv_geometry((1, 2, 6000, 6000), (4, 2, 3, 3), None, padding=1)
    reason = conv_igemm_tc.igemm_tc_decline_reason(big, np.float32)
    assert reason is not None and "(C/groups rounded up to 64) * H * W = 2304000000" in reason
    wide = conv_geometry((1, 1, 8, 8), (4, 1, 6000, 6000), None, padding=3000)
    assert "kernel_h * kernel_w" in conv_igemm_tc.igemm_tc_decline_reason(wide, np.float16)
    assert conv_igemm_tc.igemm_tc_decline_reason(conv_geometry((1, 64, 56, 56), (64, 64, 3, 3), None),
                                                 np.float32) is None
