"""``igemm_tc``: the implicit-GEMM convolution on tensor cores, for 1, 2 and 3 spatial dimensions
(``kernels/conv2d_igemm_tc.cu``, ``conv1d_igemm_tc.cu``, ``conv3d_igemm_tc.cu``: one body, ``igemm_tc.cuh``,
the gather geometry a template parameter).

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

**N spatial dimensions** (``TcFamily``, ``FAMILIES``): ``ALGO_1D`` (op ``conv1d``) and ``ALGO_3D`` (``conv3d``)
are the same host code as the 2-D ``ALGO`` with the family's pieces: the GEMM view the tile rule reads
(1-D: the unit-height ``as_2d()``; 3-D: ``conv3d_igemm.gemm_view``), the kernel's parameter struct (1-D: the
unit-height ``ConvParams``; 3-D: ``Conv3dParams``), the shared 32-bit rule of the N-D CUDA-core kernel, and
the tap-major rule's two ``int`` sizes with the family's filter taps (``S``, ``R*S``, ``KD*R*S``) and channel
stride (``L``, ``H*W``, ``D*H*W``). The packed weights are the same layout with the taps flattened in w's order
(``[t,] [r,] s``, the kernel's tap walk). float64 is declined by name, and devices below sm_80, as in 2-D.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from typing import Callable

from .._geometry import ConvGeometry
from . import conv1d_igemm, conv3d_igemm
from .abi import conv1d_kernel_args, conv3d_kernel_args, conv_kernel_args
from .algo import FORWARD, Algorithm
from .gemm import LARGE_TILE, data_pointer, gemm_blocks, gemm_kernel_name, gemm_tile_for
from .limits import conv_int32_limit_reason, declines, grid_blocks, int32_limit_reason

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


@dataclass(frozen=True)
class TcFamily:
    """One instantiation family of the tensor-core kernel: ``dims`` spatial dimensions, its source and kernel,
    and what the shared host code needs of a call's geometry (module docstring, "N spatial dimensions")."""

    dims: int
    op: str                  # conv1d / conv2d / conv3d
    label: str               # the decline sentences' subject
    source: str
    kernel: str
    view: Callable           # geom -> the GEMM as a 2-D ConvGeometry (the tile rule, the grid)
    kernel_args: Callable    # geom -> [the kernel's parameter struct]
    int32_reason: Callable   # geom -> the kernel family's shared 32-bit size rule's reason, or None
    taps_label: str          # the filter taps' product, as the decline sentence spells it
    stride_label: str        # the channel stride's product

    @property
    def instantiations(self) -> tuple[str, ...]:
        return tuple(gemm_kernel_name(self.kernel, dt, t) for dt in DTYPES for t in TILES)


def filter_taps(geom) -> int:
    """Filter taps per channel: ``R*S`` of a ConvGeometry, the product of an N-D one's kernel size."""
    return geom.R * geom.S if isinstance(geom, ConvGeometry) else int(np.prod(geom.kernel_size))


def channel_stride(geom) -> int:
    """Elements between consecutive channels of x: ``H*W``, or the product of an N-D call's input size."""
    return geom.H * geom.W if isinstance(geom, ConvGeometry) else int(np.prod(geom.input_size))


FAMILY_2D = TcFamily(2, "conv2d", "igemm_tc", SOURCE, KERNEL, lambda g: g, conv_kernel_args, conv_int32_limit_reason,
                     "kernel_h * kernel_w", "H * W")
FAMILY_1D = TcFamily(1, "conv1d", "conv1d_igemm_tc", "conv1d_igemm_tc.cu", "conv1d_igemm_tc", conv1d_igemm.gemm_view,
                     conv1d_kernel_args, conv1d_igemm.conv1d_int32_limit_reason, "kernel_l", "L")
FAMILY_3D = TcFamily(3, "conv3d", "conv3d_igemm_tc", "conv3d_igemm_tc.cu", "conv3d_igemm_tc", conv3d_igemm.gemm_view,
                     conv3d_kernel_args, conv3d_igemm.conv3d_int32_limit_reason, "kernel_d * kernel_h * kernel_w",
                     "D * H * W")
FAMILIES = {f.dims: f for f in (FAMILY_1D, FAMILY_2D, FAMILY_3D)}
INSTANTIATIONS = FAMILY_2D.instantiations


def tc_decline_reason(family: TcFamily, geom, dtype) -> str | None:
    """float64 is declined; otherwise the family's shared 32-bit size rule, plus the two ``int`` sizes of the
    tap-major reduction (kernels/igemm_tc.cuh): the padded reduction taps*ceil(Cg/BK)*BK and the gather's
    offsets within one image's group of channels, ceil(Cg/BK)*BK*channel stride (BK = 64, the largest)."""
    if np.dtype(dtype) not in DTYPES:
        return (f"{family.label} declines {np.dtype(dtype)}: its tensor-core products take float32 (as TF32) or "
                "float16; use algo='igemm'")
    reason = declines(family.label, family.int32_reason(geom))
    if reason is None:
        bk = max(t.bk(dt) for t in TILES for dt in DTYPES)
        padded = -(-geom.Cg // bk) * bk
        reason = declines(family.label, int32_limit_reason(
            {f"{family.taps_label} * (C/groups rounded up to {bk})": filter_taps(geom) * padded,
             f"(C/groups rounded up to {bk}) * {family.stride_label}": padded * channel_stride(geom)}, family.op))
    return reason


def igemm_tc_decline_reason(geom: ConvGeometry, dtype) -> str | None:
    """The 2-D rule (``tc_decline_reason``)."""
    return tc_decline_reason(FAMILY_2D, geom, dtype)


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


def pack_weights(xp, w, geom, tile: TensorCoreTile):
    """The kernel's A operand: w (K, Cg, *taps) as 32-bit words, per (group, filter tile, slice) one staged
    slice in fragment order (``_slice_order``), slices tap-major (the tap, w's C-order index of ([t,] [r,] s),
    outer, channel slices of BK inner), filters past the group's last and channels past Cg zero. A 1-D uint32
    array on xp's device, 16-byte aligned: the workspace of igemm_tc, groups * ceil(Kg/BM)*BM * taps *
    ceil(Cg/BK)*BK elements of w's size (float16 packed in pairs), plus as much again transiently while it
    is built. ``geom``: a ConvGeometry or a 1-D / 3-D ConvNdGeometry."""
    dtype = np.dtype(w.dtype)
    bm, bk = tile.bm, tile.bk(dtype)
    g, kg, cg, rs = geom.groups, geom.Kg, geom.Cg, filter_taps(geom)
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


def launch_tc(rt, family: TcFamily, x, w, b, y, geom, *, tile: TensorCoreTile | None = None) -> str:
    """The launch of a tensor-core kernel: the weights packed (``pack_weights``, the workspace), then one
    launch of 1-D blocks of ``tile.threads``, one per output tile of the family's GEMM view up to the grid
    cap (the kernel's grid-stride loop covers the rest). ``tile`` overrides the rule (tests)."""
    dtype = np.dtype(x.dtype)
    view = family.view(geom)
    tile = tc_tile_for(view, dtype) if tile is None else tile
    if tile not in TILES:
        raise ValueError(f"{family.kernel}: tile {tile.name} is not instantiated")
    wp = pack_weights(rt.xp, w, geom, tile)
    name = gemm_kernel_name(family.kernel, dtype, tile)
    rt.function(family.source, name)((grid_blocks(gemm_blocks(view, tile)), 1, 1), (tile.threads, 1, 1),
                                     [x, wp, b, y] + family.kernel_args(geom))
    return name


def launch_igemm_tc(rt, x, w, b, y, geom: ConvGeometry, *, tile: TensorCoreTile | None = None) -> str:
    """The 2-D launch (``launch_tc``)."""
    return launch_tc(rt, FAMILY_2D, x, w, b, y, geom, tile=tile)


def launch_igemm_tc_1d(rt, x, w, b, y, geom, *, tile: TensorCoreTile | None = None) -> str:
    """The 1-D launch (``launch_tc``): x (N, C, L), w (K, Cg, S) C-contiguous, y a new (N, K, Q) array."""
    return launch_tc(rt, FAMILY_1D, x, w, b, y, geom, tile=tile)


def launch_igemm_tc_3d(rt, x, w, b, y, geom, *, tile: TensorCoreTile | None = None) -> str:
    """The 3-D launch (``launch_tc``): x (N, C, D, H, W), w (K, Cg, KD, R, S) C-contiguous, y a new
    (N, K, OD, P, Q) array."""
    return launch_tc(rt, FAMILY_3D, x, w, b, y, geom, tile=tile)


ALGO = Algorithm("igemm_tc", "conv2d", FORWARD, SOURCE, INSTANTIATIONS, igemm_tc_decline_reason,
                 launch_igemm_tc,
                 "implicit GEMM on tensor cores (mma.sync): igemm's shared slices, 16x8 mma tiles per warp; "
                 "float32 as TF32, float16 with float32 accumulation; sm_80+, opt-in",
                 tensor_cores=True, min_compute_capability=MIN_COMPUTE_CAPABILITY)

ALGO_1D = Algorithm("igemm_tc", "conv1d", FORWARD, FAMILY_1D.source, FAMILY_1D.instantiations,
                    functools.partial(tc_decline_reason, FAMILY_1D), launch_igemm_tc_1d,
                    "conv2d_igemm_tc's body with the 1-D gather geometry (taps s only): tensor cores, one launch; "
                    "float32 as TF32, float16 with float32 accumulation; sm_80+, opt-in",
                    tensor_cores=True, min_compute_capability=MIN_COMPUTE_CAPABILITY)
ALGO_3D = Algorithm("igemm_tc", "conv3d", FORWARD, FAMILY_3D.source, FAMILY_3D.instantiations,
                    functools.partial(tc_decline_reason, FAMILY_3D), launch_igemm_tc_3d,
                    "conv2d_igemm_tc's body with the 3-D gather geometry (taps (t, r, s)): tensor cores, one "
                    "launch; float32 as TF32, float16 with float32 accumulation; sm_80+, opt-in",
                    tensor_cores=True, min_compute_capability=MIN_COMPUTE_CAPABILITY)
