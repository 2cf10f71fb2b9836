"""kernels/tensor_core.cuh's operand helpers on their own, in the CPU emulator, against plain statements of
what they compute: ``tf32_operand_bits`` (what the tf32 mma reads of it must be cvt.rna.tf32.f32's result,
tests/reference.py ``tf32_round``) and the emulator's model of CUDA's ``__byte_perm`` (the end of
tests/emulator/cuda_compat.h), on which ``pack_halves`` runs there. The kernel that uses them is checked
value by value in tests/test_cuda_igemm_tc_operands.py (emulator and GPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.emulator import compile_module
from tests.reference import tf32_round

pytestmark = pytest.mark.emulated

# float32 edge values (see test_cuda_igemm_tc_operands.py): ties, carries, overflow to inf, signed zeros,
# infinities, NaNs with high, all and negative-all payload bits
F32_SPECIALS = np.array([0x3F801000, 0x3F800FFF, 0xBF801000, 0x3FFFF000, 0x3FFFFFFF, 0x7F7FFFFF, 0x7F7FE000,
                         0x7F7FF000, 0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7FFFFFFF,
                         0xFFFFFFFF, 0x7FFFF000, 0xFFFFF000], np.uint32)

_HELPERS_CU = r'''
#include "tensor_core.cuh"
__global__ void byte_perm_check(const unsigned* x, const unsigned* y, const unsigned* s, unsigned* out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        out[i] = __byte_perm(x[i], y[i], s[i]);
}
__global__ void tf32_operand_check(const float* x, unsigned* out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        out[i] = gpuconv::tf32_operand_bits(x[i]);
}
'''


@pytest.fixture(scope="module")
def helpers(tmp_path_factory):
    src = tmp_path_factory.mktemp("tc_helpers") / "tc_helpers.cu"
    src.write_text(_HELPERS_CU)
    kernels = Path(__file__).resolve().parent.parent / "kernels"
    return compile_module(src, ["byte_perm_check", "tf32_operand_check"], include_dirs=[kernels])


def test_emulated_byte_perm(helpers):
    """The emulator's __byte_perm (tests/emulator/cuda_compat.h) as CUDA documents it: result byte n is byte
    (nibble n of s) & 7 of the 8 bytes x, y (x's least significant first)."""
    rng = np.random.default_rng(5)
    n = 4096
    x, y = rng.integers(0, 1 << 32, n, dtype=np.uint32), rng.integers(0, 1 << 32, n, dtype=np.uint32)
    s = rng.integers(0, 1 << 16, n, dtype=np.uint32)
    s[:4] = [0x5410, 0x3210, 0x7654, 0xFEDC]  # pack_halves' selector, x, y, top nibble bits ignored
    out = np.zeros(n, np.uint32)
    helpers.get_function("byte_perm_check")((8,), (128,), (x, y, s, out, np.int32(n)))
    src = np.concatenate([x[:, None].view(np.uint8), y[:, None].view(np.uint8)], axis=1)  # (n, 8) bytes
    sel = (s[:, None] >> (4 * np.arange(4, dtype=np.uint32))) & 7
    expected = np.take_along_axis(src, sel.astype(np.int64), axis=1).copy().view(np.uint32)[:, 0]
    np.testing.assert_array_equal(out, expected)
    assert out[0] == ((x[0] & 0xFFFF) | (y[0] << 16)) and out[1] == x[1] and out[2] == y[2]


def test_emulated_tf32_operand_bits(helpers):
    """tf32_operand_bits's top 19 bits (what the tensor core reads: the emulator's tf32_operand) are
    cvt.rna.tf32.f32's result (tests/reference.py tf32_round) for every finite and infinite float32 and a
    NaN for every NaN with a payload bit among them; a NaN whose payload lies only in the low 13 bits
    reads as inf (as after cvt.rna's own mask in ptxas's expansion of it, the code this replaced)."""
    rng = np.random.default_rng(6)
    bits = np.concatenate([rng.integers(0, 1 << 32, 200000, dtype=np.uint32), F32_SPECIALS,
                           np.array([0x7F800001, 0xFF801FFF, 0x00000FFF, 0x80001000, 0x007FF000], np.uint32)])
    x = bits.view(np.float32)
    out = np.zeros(bits.size, np.uint32)
    helpers.get_function("tf32_operand_check")((64,), (128,), (x, out, np.int32(bits.size)))
    read = (out & np.uint32(0xFFFFE000)).view(np.float32)
    ok = ~np.isnan(x)
    np.testing.assert_array_equal(read[ok].view(np.uint32), tf32_round(x[ok]).view(np.uint32))
    nan = np.isnan(x)
    top_payload = (bits & np.uint32(0x007FE000)) != 0
    assert np.isnan(read[nan & top_payload]).all() and (nan & top_payload).sum() > 100
    assert np.isinf(read[nan & ~top_payload]).all()
