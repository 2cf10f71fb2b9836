"""``igemm_tc``: the implicit-GEMM conv2d on tensor cores (``kernels/conv2d_igemm_tc.cu``).

The same GEMM as ``igemm`` (filters x N*P*Q pixels per group, the im2col matrix gathered on the fly), with
each warp's products done by PTX ``mma.sync`` and a pipeline of its own (the kernel's header):

* float32 as **TF32**: every weight and input value is rounded to a 10-bit mantissa (``cvt.rna``'s
  rounding) before the product, sums in float32, as cuDNN / PyTorch compute float32 convolutions with TF32
  allowed (their default). Results then agree with the float32 convolution to about 1e-3 relative to the
  sum of the terms' magnitudes, not to float32 rounding;
* float16 on the float16 values themselves (exact products), float32 accumulation (as ``igemm``'s float16);
* float64 is declined (tensor cores here have no float64 path).

Behind an explicit flag: ``algo='igemm_tc'`` runs it by name; ``algo='auto'`` considers it only after
``gpuconv.set_tensor_cores(True)`` (or ``GPUCONV_TENSOR_CORES=1``), because for float32 it trades precision
for speed. It needs compute capability 8.0 (Ampere) or newer (``MIN_COMPUTE_CAPABILITY``): on an older GPU a
named call raises ``ValueError`` and ``'auto'`` leaves it out.

Tile configs (template arguments ``BM, BN, WARPS_M, WARPS_N``): ``large`` 128 x 128 with 2 x 4 warps, ``small``
64 x 64 with 1 x 2 warps (64 threads; both tiles give each warp 64 x 32 outputs), chosen by igemm's rule (``gemm.gemm_tile_for``: large when a group has more than
64 filters and the large tiles number at least 128); the autotuner measures the algorithm with that
rule's tile. The reduction runs tap-major in slices of ``bk`` channels (``TensorCoreTile.bk``: as many as
32 KB of double-buffered staging hold), each tap's channels padded to a multiple of ``bk`` with zeros (a
layer with few channels per group, e.g. C = 3, multiplies mostly zeros: igemm suits it better).

**Workspace**: the weights packed once per call (``pack_weights``) into the kernel's staged-slice layout,
TF32-rounded for float32: ``groups * ceil(Kg/BM)*BM * R*S * ceil(Cg/bk)*bk`` elements of w's size (as
much again transiently while it is built), freed when the call returns. The packing is a few element-wise
and gather kernels over that many elements on every call, not cached: w is a mutable array, and neither
its identity nor its data pointer says whether it was written since (a cache keyed on them would return
stale weights after an in-place update, e.g. an optimizer step). Its cost is that of reading w a few times
over, small beside the convolution for all but the smallest layers; a caller who runs one weight array
many times could keep the packed array, which would need an API of its own.

The tiles are reasoned from the hardware and the machine code (``tests/sass_check.py``), not yet tuned on a
GPU.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .._geometry import ConvGeometry
from .algo import FORWARD, Algorithm
from .gemm import LARGE_TILE, data_pointer, gemm_kernel_name, gemm_tile_for, launch_gemm
from .limits import conv_decline_reason, declines, int32_limit_reason

SOURCE = "conv2d_igemm_tc.cu"
KERNEL = "conv2d_igemm_tc"
MIN_COMPUTE_CAPABILITY = 80  # mma.sync m16n8k8 .tf32 and m16n8k16 .f16 with float32 accumulation: sm_80
DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


# Bytes of double-buffered shared staging per block (TENSOR_CORE_STAGING_BYTES in the kernel): a tile's BK.
STAGING_BYTES = 32768


@dataclass(frozen=True)
class TensorCoreTile:
    """A block tile of conv2d_igemm_tc: ``bm`` filters x ``bn`` pixels, ``warps_m`` x ``warps_n`` warps."""

    name: str
    bm: int
    bn: int
    warps_m: int
    warps_n: int

    @property
    def threads(self) -> int:
        return 32 * self.warps_m * self.warps_n

    @property
    def template_args(self) -> str:
        return f"{self.bm}, {self.bn}, {self.warps_m}, {self.warps_n}"

    def bk(self, dtype) -> int:
        """Reduction indices per slice: as many as STAGING_BYTES of two buffers hold (float16 staged as
        float16, float32 as TF32 words)."""
        return STAGING_BYTES // (2 * (self.bm + self.bn) * np.dtype(dtype).itemsize)


TC_LARGE_TILE = TensorCoreTile("large", 128, 128, 2, 4)
TC_SMALL_TILE = TensorCoreTile("small", 64, 64, 1, 2)
TILES = (TC_LARGE_TILE, TC_SMALL_TILE)


def tc_tile_for(geom: ConvGeometry, dtype) -> TensorCoreTile:
    """igemm's tile rule: the large tile where igemm would take its large one (same 128 x 128 block tile)."""
    return TC_LARGE_TILE if gemm_tile_for(geom, dtype) == LARGE_TILE else TC_SMALL_TILE


def tc_name(dtype, tile: TensorCoreTile) -> str:
    return gemm_kernel_name(KERNEL, dtype, tile)


INSTANTIATIONS = tuple(tc_name(dt, t) for dt in DTYPES for t in TILES)


def igemm_tc_decline_reason(geom: ConvGeometry, dtype) -> str | None:
    """float64 is declined; otherwise the shared 32-bit size rule, plus the two ``int`` sizes of the
    tap-major reduction (kernels/conv2d_igemm_tc.cu): the padded reduction R*S*ceil(Cg/BK)*BK and the gather's
    offsets within one image's group of channels, ceil(Cg/BK)*BK*H*W (BK = 64, the largest)."""
    if np.dtype(dtype) not in DTYPES:
        return (f"igemm_tc declines {np.dtype(dtype)}: its tensor-core products take float32 (as TF32) or "
                "float16; use algo='igemm'")
    reason = conv_decline_reason("igemm_tc", geom)
    if reason is None:
        bk = max(t.bk(dt) for t in TILES for dt in DTYPES)
        reason = declines("igemm_tc", int32_limit_reason(
            {f"kernel_h * kernel_w * (C/groups rounded up to {bk})": geom.R * geom.S * -(-geom.Cg // bk) * bk,
             f"(C/groups rounded up to {bk}) * H * W": -(-geom.Cg // bk) * bk * geom.H * geom.W}, "conv2d"))
    return reason


# --------------------------------------------------------------------------------------------
# the packed weights (the kernel's A operand)
# --------------------------------------------------------------------------------------------

KSTEP = {np.dtype(np.float32): 8, np.dtype(np.float16): 16}  # reduction indices per mma (m16n8k8 / k16)


@functools.lru_cache(maxsize=None)
def _slice_order(bm: int, bk: int, dtype) -> np.ndarray:
    """Where each 32-bit word of one staged A slice comes from: an int array (words, KPW) of flat indices
    into the slice's (bm filters, bk reduction indices) block, KPW = reduction indices per word (1 for TF32,
    2 for float16 pairs, low half first). The kernel's fragment order (FragLayout in
    kernels/conv2d_igemm_tc.cu): word 4 q + c, q = (ks * bm/16 + blk) * 32 + slot, slot = 4 gid + (tig ^
    ((gid >> 1) & 3)), c = h + 2 hk, holds row 16 blk + 8 h + gid, reduction index KSTEP ks + KSTEP/2 hk +
    KPW tig (+ e)."""
    dtype = np.dtype(dtype)
    kstep, kpw = KSTEP[dtype], 4 // dtype.itemsize
    pos = np.arange(bk * bm // kpw)
    q, c = pos // 4, pos % 4
    ks, blk, slot = q // 32 // (bm // 16), q // 32 % (bm // 16), q % 32
    gid = slot // 4
    tig = (slot % 4) ^ ((gid >> 1) & 3)
    row = 16 * blk + 8 * (c % 2) + gid
    k = kstep * ks + kstep // 2 * (c // 2) + kpw * tig
    return (row * bk + k)[:, None] + np.arange(kpw)[None, :]


def tf32_bits(xp, a):
    """float32 array ``a`` rounded to TF32 as cvt.rna.tf32.f32 rounds (nearest, ties away from zero; inf
    stays inf, a finite value past the largest TF32 number becomes inf, NaN stays NaN), as uint32 bits."""
    bits = xp.ascontiguousarray(a).view(xp.uint32)
    rounded = (bits + xp.uint32(0x1000)) & xp.uint32(0xFFFFE000)
    return xp.where(xp.isnan(a), bits, rounded)


def pack_weights(xp, w, geom: ConvGeometry, tile: TensorCoreTile):
    """The kernel's A operand: w (K, Cg, R, S) as 32-bit words, per (group, filter tile, slice) one staged
    slice in fragment order (``_slice_order``), slices tap-major (tap r*S + s outer, channel slices of BK
    inner), filters past the group's last and channels past Cg zero. A 1-D uint32 array on xp's device,
    16-byte aligned: the workspace of igemm_tc, groups * ceil(Kg/BM)*BM * R*S * ceil(Cg/BK)*BK elements
    of w's size (float16 packed in pairs), plus as much again transiently while it is built."""
    dtype = np.dtype(w.dtype)
    bm, bk = tile.bm, tile.bk(dtype)
    g, kg, cg, rs = geom.groups, geom.Kg, geom.Cg, geom.R * geom.S
    kt, cs = -(-kg // bm), -(-cg // bk)
    padded = xp.zeros((g, kt * bm, cs * bk, rs), dtype)
    padded[:, :kg, :cg, :] = w.reshape(g, kg, cg, rs)
    blocks = padded.reshape(g, kt, bm, cs, bk, rs).transpose(0, 1, 5, 3, 2, 4).reshape(g, kt, rs, cs, bm * bk)
    words = blocks[..., xp.asarray(_slice_order(bm, bk, dtype))]  # (g, kt, rs, cs, words, KPW)
    words = tf32_bits(xp, words) if dtype == np.float32 else xp.ascontiguousarray(words).view(xp.uint32)
    n = words.size
    out = xp.empty(n + 4, xp.uint32)  # 16-byte aligned for the kernel's 128-bit loads
    first = (-data_pointer(out) % 16) // 4
    out = out[first:first + n]
    out[...] = words.reshape(-1)
    return out


def launch_igemm_tc(rt, x, w, b, y, geom: ConvGeometry, *, tile: TensorCoreTile | None = None) -> str:
    """The launch of igemm_tc: the weights packed (``pack_weights``, the workspace), then the kernel.
    ``tile`` overrides the rule (tests)."""
    dtype = np.dtype(x.dtype)
    tile = tc_tile_for(geom, dtype) if tile is None else tile
    wp = pack_weights(rt.xp, w, geom, tile)
    return launch_gemm(rt, SOURCE, KERNEL, x, wp, b, y, geom, tile, [], tiles=TILES)


ALGO = Algorithm("igemm_tc", "conv2d", FORWARD, SOURCE, INSTANTIATIONS, igemm_tc_decline_reason,
                 launch_igemm_tc,
                 "implicit GEMM on tensor cores (mma.sync): igemm's shared slices, 16x8 mma tiles per warp; "
                 "float32 as TF32, float16 with float32 accumulation; sm_80+, opt-in",
                 tensor_cores=True, min_compute_capability=MIN_COMPUTE_CAPABILITY)
