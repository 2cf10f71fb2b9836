"""igemm_tc's gathered operand as the mma reads it (kernels/conv2d_igemm_tc.cu ``TcKind``, kernels/tensor_core.cuh
``tf32_operand_bits`` / ``pack_halves``), value by value, on the kernel (emulator and GPU, ``rt``).

The gather hands the mma float32 inputs as ``tf32_operand_bits``: the bits plus half a TF32 ulp for finite
values, inf and NaN unchanged, with the low 13 bits left for the tensor core to ignore (the emulator's mma
truncates them as the hardware does: tests/emulator/cuda_compat.h ``tf32_operand``). Together that must be
cvt.rna.tf32.f32 (tests/reference.py ``tf32_round``) on every value: ties away from zero, carries into the
exponent, overflow to inf past the largest TF32 number, signed zeros, and NaNs that stay NaN — including
CUDA's canonical NaN 0x7FFFFFFF, whose bits plus 0x1000 would carry into the sign bit and read as -0.
float16 inputs are packed two to a word (``pack_halves``, the lower reduction index in the low half).

How: a convolution whose output channel k is input channel k times one (one-hot weights, exact sums), on
inputs drawn as random bit patterns plus the special values, so every output is the operand the mma read
for one input value (and NaN where a non-finite neighbour meets a zero weight, as in the reference). With
70 channels (not a multiple of any tile's BK: full channel runs and a tail run) and 5 x 7 pixels (a
partial pixel tile), both tiles, both thread orders.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpuconv._cuda import conv_igemm_tc
from gpuconv._cuda.conv_igemm_tc import TC_LARGE_TILE, TC_SMALL_TILE
from tests.reference import reference_conv2d_tf32, tf32_round
from tests.runners import on_gpu, runtime_fixture, with_thread_order
from tests.support import check_conv

rt = runtime_fixture(algo="igemm_tc")
TILES = {"small": TC_SMALL_TILE, "large": TC_LARGE_TILE}
C, H, W = 70, 5, 7

# float32 values whose TF32 rounding is an edge: ties (away from zero), just below a tie, a mantissa
# carry into the exponent, the largest finite float (rounds to inf), the largest TF32 number, signed
# zeros, infinities, and NaNs with the payload in the top bits, all bits (CUDA's canonical NaN), and
# negative all bits.
F32_SPECIALS = np.array([0x3F801000, 0x3F800FFF, 0xBF801000, 0x3FFFF000, 0x3FFFFFFF, 0x7F7FFFFF, 0x7F7FE000,
                         0x7F7FF000, 0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7FFFFFFF,
                         0xFFFFFFFF, 0x7FFFF000, 0xFFFFF000], np.uint32)
F16_SPECIALS = np.array([0x0000, 0x8000, 0x0001, 0x83FF, 0x7BFF, 0xFBFF, 0x7C00, 0xFC00, 0x7E00, 0x7FFF, 0xFFFF],
                        np.uint16)


def _bit_pattern_input(dtype, seed):
    """(1, C, H, W) of random bit patterns (float32: normal numbers of any exponent; float16: anything but
    NaN / inf) with the special values at random positions, one special per pixel at most (so that most
    outputs are finite and compared exactly)."""
    rng = np.random.default_rng(seed)
    n = C * H * W
    if np.dtype(dtype) == np.float32:
        # sign, exponent 1..254 (no subnormals: a tensor core may flush them), any mantissa
        bits = (rng.integers(0, 2, n, dtype=np.uint32) << 31) | (rng.integers(1, 255, n, dtype=np.uint32) << 23) \
            | rng.integers(0, 1 << 23, n, dtype=np.uint32)
        specials = F32_SPECIALS
    else:
        bits = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
        bits[(bits & 0x7C00) == 0x7C00] &= np.uint16(0xBFFF)  # inf / NaN exponents made finite
        specials = F16_SPECIALS
    x = bits.view(dtype).reshape(1, C, H, W).copy()
    pixels = rng.permutation(H * W)[:len(specials)]
    channels = rng.integers(0, C, len(specials))
    for s, p, c in zip(specials, pixels, channels):
        x[0, c, p // W, p % W] = np.array(s).view(dtype)
    return x


def _one_hot(dtype):
    w = np.zeros((C, C, 1, 1), dtype)
    w[np.arange(C), np.arange(C)] = 1
    return w


def _params():
    return [pytest.param(dt, tile, order, id=f"{np.dtype(dt).name}-{tile}-{order}")
            for dt in (np.float32, np.float16) for tile in TILES for order in ("forward", "reversed")]


@pytest.mark.parametrize("dtype, tile, order", _params())
def test_gathered_operands_bit_patterns(rt, dtype, tile, order):
    x = _bit_pattern_input(dtype, seed=7)
    w = _one_hot(dtype)
    t = TILES[tile]
    _, kid, y = check_conv(with_thread_order(rt, order), "igemm_tc", x, w, None, reference=reference_conv2d_tf32,
                           precision="tf32" if on_gpu(rt) and dtype == np.float32 else None, tile=t)
    assert kid == conv_igemm_tc.tc_name(dtype, t)
    # Where no input of a pixel reads as inf or NaN, its outputs are its inputs as the mma read them,
    # exactly: cvt.rna's TF32 value for float32, the value itself for float16.
    expected = tf32_round(x) if np.dtype(dtype) == np.float32 else x
    clean = np.isfinite(expected).all(axis=1)[0]
    assert clean.sum() >= H * W // 2
    assert np.array_equal(y[0][:, clean], expected[0][:, clean])
    # Every NaN input, whatever its payload (CUDA's canonical 0x7FFFFFFF and 0xFFFFFFFF included), reads
    # as a NaN: its own output channel is NaN.
    n, c, i, j = np.nonzero(np.isnan(x))
    assert len(c) and np.isnan(y[n, c, i, j]).all()
    # inf reads as inf (its output channel; the pixel's other channels are 0 * inf = NaN, as the reference)
    n, c, i, j = np.nonzero(np.isinf(x))
    assert len(c) and np.array_equal(y[n, c, i, j], x[n, c, i, j])


def test_tf32_rounding_overflows_to_inf(rt):
    """The largest finite float32 and the tie above the largest TF32 number round to inf in the gather (as
    cvt.rna does), the largest TF32 number stays."""
    x = np.zeros((1, C, H, W), np.float32)
    vals = np.array([0x7F7FFFFF, 0xFF7FF000, 0x7F7FE000], np.uint32).view(np.float32)
    x[0, 3, 0, 0], x[0, 40, 1, 1], x[0, 69, 2, 2] = vals
    _, _, y = check_conv(rt, "igemm_tc", x, _one_hot(np.float32), None, reference=reference_conv2d_tf32,
                         precision="tf32" if on_gpu(rt) else None, tile=TC_SMALL_TILE)
    assert y[0, 3, 0, 0] == np.inf and y[0, 40, 1, 1] == -np.inf and y[0, 69, 2, 2] == vals[2]

