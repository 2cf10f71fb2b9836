"""The CUDA filter gradient of conv1d, conv2d and conv3d (``kernels/conv2d_backward_filter.cu``; rules in
docs/gradients.md).

Two algorithms of the operation ``(conv2d, backward_filter)``, both deterministic (no atomics; a fixed-order
second pass), both applying the activation's derivative inside their loaders when given the forward's
activated output ``out``:

* ``depthwise`` (``Cg == 1`` and ``groups > 1``, declines the rest): one block per (filter, split), the
  split's pixels walked by 256 threads, ``DW_TAPS`` taps at a time in registers, a fixed tree reduction per
  block. Listed first, so the table order is the choice (``select.choose_algo``: no heuristic needed).
* ``igemm`` (every other geometry): per group ``gw[Kg, Cg*R*S] = gy'[Kg, N*P*Q] @ im2col(x)^T`` on
  gemm_tile.cuh's small tile as 4x4 per thread (``gemm.SMALL_TILE_4X4``, float64 ``SMALL_TILE_F64``), the
  reduction over ``N*P*Q`` cut into ``splits`` fixed ranges.

Splits (``splits_for``): the blocks of one split (GEMM tiles, or K filters for depthwise) are scaled up to
about two waves of ``SMS`` = 132 SMs: ``splits = min(ceil(2 * 132 / blocks), pixel slices // 8, 8)``
(``SPLIT_MAX`` = 8 = ``GEMM_SPLITK_MAX`` of conv2d_igemm.cu, the most its reduce kernel sums; at least
``MIN_SLICES`` = 8 slices of BK pixels per range for igemm, ``DW_MIN_PIXELS`` = 1024 pixels per range for
depthwise), 1 when that is below 2. Each range is ``ceil(total / splits)`` long (only as many ranges as that
takes, none empty). Each block stores its raw partial sums into a workspace ``[splits, K, Cg*R*S]`` of the
accumulation type (float32; float64 for float64), ``workspace_bytes``; ``gemm_splitk_reduce<T>``, loaded
from conv2d_igemm.cu's module, sums the ranges in fixed order 0..splits-1 and writes ``gw`` (with one range
too: the one rounding of float16 happens there). Memory: the result plus that workspace, plus a C-contiguous
copy of ``x`` / ``gy`` / ``out`` when one is not.

3-D (``(conv3d, backward_filter)``, ``ALGORITHMS_3D``): the same two kernel bodies instantiated with the 3-D
gather geometry, in the same order: ``depthwise`` (``conv3d_backward_filter_depthwise``,
``launch_depthwise3d``: taps (t, r, s), pixels (n, od, p, q)) and ``igemm`` (``conv3d_backward_filter_igemm``,
``launch_igemm3d``: per group ``gw[Kg, Cg*KD*R*S] = gy'[Kg, N*OD*P*Q] @ im2col3d(x)^T``), with the same
tiles, split rule (on ``N*OD*P*Q`` and ``Cg*KD*R*S``), workspace ``[splits, K, Cg*KD*R*S]`` and reduce.
32-bit rule (``_size_reason_3d``): conv3d_igemm's sizes, ``N*OD*P*Q <= 2^31 - 65``, ``Cg*D*H*W`` plus the
reach below 2^31; ``_conv_nd`` runs the depth-tap lowering where both decline and says so in the record.
``launch_bias`` takes a 3-D geometry too.

1-D (``(conv1d, backward_filter)``, ``ALGORITHMS_1D``): the same two bodies with the 1-D gather geometry
``Im2colGeometry1d`` (no row digit in the tap walk or the pixel cursor, one column compare per gathered
element): ``depthwise`` (``conv1d_backward_filter_depthwise``, ``launch_depthwise1d``) and ``igemm``
(``conv1d_backward_filter_igemm``, ``launch_igemm1d``: per group ``gw[Kg, Cg*S] = gy'[Kg, N*Q] @
im2col1d(x)^T``). The kernels receive the unit-height call's ConvParams (``geom.as_2d()``); tiles, split
rule, workspace ``[splits, K, Cg*S]``, reduce and 32-bit rule are the 2-D ones of that unit-height call.

``launch`` returns ``(gw, kernel id)``, the id naming both kernels and the ranges, e.g.
``gpuconv::conv2d_backward_filter_igemm<float, 64, 64, 16, 4, 4> splits=4 + gpuconv::gemm_splitk_reduce<float>``.
``launch_bias`` is the bias gradient with the derivative fused (``conv2d_backward_bias<T>``, same file).

32-bit rule: the conv kernels' (``limits.conv_int32_limit_reason``) plus ``N*P*Q <= 2^31 - 1 - 64`` (the
slice loop's reduction index is a C ``int``) and ``Cg*H*W + (R-1)*dh*W + (S-1)*dw <= 2^31 - 1`` (the igemm
loader's tap offsets are ``int``); a declined call runs the lowering (docs/gradients.md).
"""

from __future__ import annotations

import numpy as np

from .._geometry import ACTIVATIONS, ConvGeometry
from . import conv_igemm, limits
from .abi import conv3d_params, conv_params
from .algo import Algorithm
from .gemm import SMALL_TILE, TILES_BY_DTYPE, small_tile_4x4_for
from .limits import ACC_BYTES, CTYPE, ceil_div, grid_blocks

BACKWARD_FILTER = "backward_filter"
SOURCE = "conv2d_backward_filter.cu"
THREADS = 256          # BWF_THREADS in the kernel file (depthwise and bias blocks)
DW_TAPS = 9            # taps a depthwise thread accumulates at once (DW_TAPS in the kernel file)
SMS = 132              # an H100 / H200's SMs: about two waves of blocks is the target
SPLIT_MAX = conv_igemm.SPLITK_MAX  # 8: gemm_splitk_reduce sums at most GEMM_SPLITK_MAX planes
MIN_SLICES = 8         # igemm: slices of BK pixels per range at least (amortises a tile's prologue / epilogue)
DW_MIN_PIXELS = 1024   # depthwise: pixels per range at least (4 per thread)
MAX_PIXELS = limits.INT32_MAX - 64  # N*P*Q: the slice loop's int reduction index plus one slice


def _ct(dtype) -> str:
    return CTYPE[np.dtype(dtype)]


def igemm_tile(dtype):
    """The filter-gradient GEMM's tile: ``SMALL_TILE_4X4`` (4x4 per thread, 256 threads) for float32 /
    float16 -- the 8x8 ``SMALL_TILE`` spilled with a fused activation (4 bytes on sm_120, NVRTC 13) --
    and float64's ``SMALL_TILE_F64``."""
    return small_tile_4x4_for(SMALL_TILE, dtype)


ACTIVATION_CODES = tuple(sorted(ACTIVATIONS.values()))  # none, relu, leaky_relu, sigmoid, tanh


def igemm_name(dtype, act: int = 0) -> str:
    """igemm's name expression: the activation whose derivative its gy loader applies is a template
    argument (no run-time switch in the main loop)."""
    return f"gpuconv::conv2d_backward_filter_igemm<{_ct(dtype)}, {igemm_tile(dtype).template_args}, {act}>"


def igemm3d_name(dtype, act: int = 0) -> str:
    """The 3-D instantiation of the same body (``conv3d_backward_filter_igemm``: the geometry
    ``Im2colGeometry3d``), same tile and activations."""
    return f"gpuconv::conv3d_backward_filter_igemm<{_ct(dtype)}, {igemm_tile(dtype).template_args}, {act}>"


def igemm1d_name(dtype, act: int = 0) -> str:
    """The 1-D instantiation (``conv1d_backward_filter_igemm``: the geometry ``Im2colGeometry1d``)."""
    return f"gpuconv::conv1d_backward_filter_igemm<{_ct(dtype)}, {igemm_tile(dtype).template_args}, {act}>"


def depthwise1d_name(dtype) -> str:
    return f"gpuconv::conv1d_backward_filter_depthwise<{_ct(dtype)}>"


def depthwise3d_name(dtype) -> str:
    return f"gpuconv::conv3d_backward_filter_depthwise<{_ct(dtype)}>"


def depthwise_name(dtype) -> str:
    return f"gpuconv::conv2d_backward_filter_depthwise<{_ct(dtype)}>"


def bias_name(dtype) -> str:
    return f"gpuconv::conv2d_backward_bias<{_ct(dtype)}>"


INSTANTIATIONS = tuple(n for dt in TILES_BY_DTYPE
                       for n in [igemm_name(dt, a) for a in ACTIVATION_CODES] + [depthwise_name(dt), bias_name(dt)]
                       + [igemm3d_name(dt, a) for a in ACTIVATION_CODES] + [depthwise3d_name(dt)]
                       + [igemm1d_name(dt, a) for a in ACTIVATION_CODES] + [depthwise1d_name(dt)])


def is_depthwise(geom: ConvGeometry) -> bool:
    return geom.Cg == 1 and geom.groups > 1


def _size_reason(algo: str, geom: ConvGeometry) -> str | None:
    reason = limits.conv_int32_limit_reason(geom)
    if reason is None and geom.N * geom.P * geom.Q > MAX_PIXELS:
        reason = (f"N*P*Q = {geom.N * geom.P * geom.Q} exceeds 2^31-65, the longest reduction the backward "
                  f"filter kernels take")
    reach = geom.Cg * geom.H * geom.W + (geom.R - 1) * geom.dh * geom.W + (geom.S - 1) * geom.dw
    if reason is None and reach > limits.INT32_MAX:
        reason = (f"C/groups*H*W + the filter's reach = {reach} exceeds 2^31-1, the largest tap offset the "
                  f"backward filter kernels take")
    return limits.declines(algo, reason)


def igemm_decline_reason(geom: ConvGeometry, dtype) -> str | None:
    return _size_reason("igemm", geom)


def _size_reason_3d(algo: str, geom) -> str | None:
    """The 3-D kernels' 32-bit rule (a 3-D ``ConvNdGeometry``): conv3d_igemm's sizes, ``N*OD*P*Q <= 2^31 - 65``
    and ``Cg*D*H*W`` plus the filter's reach below 2^31 (int tap offsets), as in 2-D."""
    from .conv3d_igemm import conv3d_int32_limit_reason
    reason = conv3d_int32_limit_reason(geom)
    m = _gemm(geom)[0]
    if reason is None and m > MAX_PIXELS:
        reason = f"N*OD*P*Q = {m} exceeds 2^31-65, the longest reduction the backward filter kernels take"
    (D, H, W), (KD, R, S), (dd, dh, dw) = geom.input_size, geom.kernel_size, geom.dilation
    reach = geom.Cg * D * H * W + (KD - 1) * dd * H * W + (R - 1) * dh * W + (S - 1) * dw
    if reason is None and reach > limits.INT32_MAX:
        reason = (f"C/groups*D*H*W + the filter's reach = {reach} exceeds 2^31-1, the largest tap offset the "
                  f"backward filter kernels take")
    return limits.declines(algo, reason)


def igemm3d_decline_reason(geom, dtype) -> str | None:
    """3-D igemm: the 32-bit rule, and not depthwise (``Cg == 1``, ``groups > 1``: the GEMM tile would hold
    one useful filter row of 64; the 3-D ``depthwise`` kernel runs those)."""
    if is_depthwise(geom):
        return (f"igemm declines this geometry because it is depthwise ({geom.groups} groups of 1 input "
                f"channel): the depthwise kernel runs it")
    return _size_reason_3d("igemm", geom)


def depthwise3d_decline_reason(geom, dtype) -> str | None:
    if not is_depthwise(geom):
        return (f"depthwise declines this geometry because it has {geom.Cg} input channels per group and "
                f"{geom.groups} groups (it needs 1 and more than 1)")
    return _size_reason_3d("depthwise", geom)


def igemm1d_decline_reason(geom, dtype) -> str | None:
    """1-D igemm (a 1-D ``ConvNdGeometry``): the 2-D rule of its unit-height call, and not depthwise (the 1-D
    ``depthwise`` kernel runs those, as in 3-D)."""
    if is_depthwise(geom):
        return (f"igemm declines this geometry because it is depthwise ({geom.groups} groups of 1 input "
                f"channel): the depthwise kernel runs it")
    return _size_reason("igemm", geom.as_2d())


def depthwise1d_decline_reason(geom, dtype) -> str | None:
    return depthwise_decline_reason(geom.as_2d(), dtype)


def depthwise_decline_reason(geom: ConvGeometry, dtype) -> str | None:
    if not is_depthwise(geom):
        return (f"depthwise declines this geometry because it has {geom.Cg} input channels per group and "
                f"{geom.groups} groups (it needs 1 and more than 1)")
    return _size_reason("depthwise", geom)


def _gemm(geom):
    """``(M, NC, taps)`` of a 2-D ``ConvGeometry`` or 3-D ``ConvNdGeometry``: the reduction over output
    pixels ``N*P*Q`` (``N*OD*P*Q``), the GEMM's columns ``Cg*R*S`` (``Cg*KD*R*S``) and the filter's taps."""
    if getattr(geom, "nd", 2) == 3:
        taps = int(np.prod(geom.kernel_size))
        return geom.N * int(np.prod(geom.output_size)), geom.Cg * taps, taps
    return geom.N * geom.P * geom.Q, geom.Cg * geom.R * geom.S, geom.R * geom.S


def splits_for(geom, dtype, depthwise: bool) -> int:
    """The rule of the module docstring: ranges of the N*P*Q (3-D: N*OD*P*Q) reduction (before ``ranges``
    evens them)."""
    m, nc, _ = _gemm(geom)
    if depthwise:
        blocks, longest = geom.K, m // DW_MIN_PIXELS
    else:
        t = igemm_tile(dtype)
        blocks = geom.groups * ceil_div(geom.Kg, t.bm) * ceil_div(nc, t.bn)
        longest = ceil_div(m, t.bk) // MIN_SLICES
    if blocks == 0 or blocks >= 2 * SMS:  # two waves already: no split
        return 1
    splits = min(ceil_div(2 * SMS, blocks), longest, SPLIT_MAX)
    return splits if splits >= 2 else 1


def ranges(total: int, splits: int) -> tuple[int, int]:
    """(ranges, length of each) for ``total`` units cut into at most ``splits``: ``ceil(total / splits)``
    each, and only as many ranges as that takes (none empty; e.g. 18 in 4 -> 4 of 5, the last 3)."""
    if splits <= 1 or total <= 1:
        return 1, max(total, 1)
    per = ceil_div(total, splits)
    return ceil_div(total, per), per


def workspace_bytes(geom, dtype, splits: int) -> int:
    """The workspace of one call: splits x K x Cg*R*S (3-D: Cg*KD*R*S) elements of the accumulation type."""
    return splits * geom.K * _gemm(geom)[1] * ACC_BYTES[np.dtype(dtype)]


def _params(geom, act: int) -> np.ndarray:
    """ConvParams (3-D: Conv3dParams, whose plane ``hw`` holds act and has_bias) with the derivative's
    activation and no bias."""
    if getattr(geom, "nd", 2) == 3:
        p = conv3d_params(geom)
        plane = p["hw"]
        plane["act"], plane["has_bias"] = np.int32(act), np.int32(0)
        p["hw"] = plane
        return p
    p = conv_params(geom)
    p["act"] = np.int32(act)
    p["has_bias"] = np.int32(0)
    return p


def _inputs(rt, x, gy, out, geom):
    xp = rt.xp
    x, gy = xp.ascontiguousarray(x), xp.ascontiguousarray(gy)
    act = geom.activation_code if out is not None else 0
    out = xp.ascontiguousarray(out) if act else gy  # unread without an activation
    return x, gy, out, act


def _launch(rt, depthwise: bool, x, gy, out, geom, splits: int | None):
    dtype = np.dtype(x.dtype)
    if splits is None:
        splits = splits_for(geom.as_2d() if getattr(geom, "nd", 2) == 1 else geom, dtype, depthwise)
    elif not 1 <= int(splits) <= SPLIT_MAX:
        raise ValueError(f"splits must be in 1..{SPLIT_MAX}, got {splits}")
    nd = getattr(geom, "nd", 2)
    g = geom.as_2d() if nd == 1 else geom  # 1-D: the unit-height call (sizes, params, rules)
    x, gy, out, act = _inputs(rt, x, gy, out, g)
    m, nc, _ = _gemm(g)
    acc = np.dtype(np.float32) if dtype == np.float16 else dtype
    if depthwise:
        splits, per = ranges(m, int(splits))
        namer = {1: depthwise1d_name, 2: depthwise_name, 3: depthwise3d_name}[nd]
        name, grid, block = namer(dtype), grid_blocks(geom.K * splits), THREADS
    else:
        t = igemm_tile(dtype)
        splits, per = ranges(ceil_div(m, t.bk), int(splits))
        name, block = {1: igemm1d_name, 2: igemm_name, 3: igemm3d_name}[nd](dtype, act), t.threads
        grid = grid_blocks(splits * geom.groups * ceil_div(geom.Kg, t.bm) * ceil_div(nc, t.bn))
    ws = rt.xp.empty((splits, geom.K, nc), dtype=acc)  # every element written by the first kernel
    rt.function(SOURCE, name)((grid, 1, 1), (block, 1, 1),
                              [x, gy, out, ws, _params(g, act), np.int32(splits), np.int32(per)])
    gw = rt.xp.empty(geom.weight_shape, dtype=dtype)
    red = conv_igemm.reduce_name(dtype)
    rgrid = (grid_blocks(nc, conv_igemm.REDUCE_THREADS), min(geom.K, conv_igemm.MAX_GRID_YZ), 1)
    rt.function(conv_igemm.SOURCE, red)(rgrid, (conv_igemm.REDUCE_THREADS, 1, 1),
                                        [ws, gw, gw, np.int32(splits), np.int32(1), np.int32(geom.K),
                                         np.int64(nc), np.int32(0), np.int32(0)])
    return gw, f"{name} splits={splits} + {red}"


def launch_igemm(rt, x, gy, out, geom: ConvGeometry, *, splits: int | None = None):
    """``(gw, kernel id)``: ``x (N, C, H, W)``, ``gy (N, K, P, Q)``, ``out`` the activated forward output
    (``geom.activation``'s derivative is applied) or None; ``geom`` the forward's geometry, ``N > 0``.
    ``splits`` overrides the rule (tests; cut to the ranges the reduction has)."""
    return _launch(rt, False, x, gy, out, geom, splits)


def launch_igemm3d(rt, x, gy, out, geom, *, splits: int | None = None):
    """As ``launch_igemm`` for a 3-D ``ConvNdGeometry``: ``x (N, C, D, H, W)``, ``gy`` / ``out (N, K, OD, P,
    Q)``; ``gw (K, Cg, KD, R, S)``, one ``conv3d_backward_filter_igemm`` launch (the reduction over N*OD*P*Q
    in ``splits`` fixed ranges) and the fixed-order ``gemm_splitk_reduce``. ValueError when it declines."""
    reason = igemm3d_decline_reason(geom, x.dtype)
    if reason is not None:
        raise ValueError(reason)
    return _launch(rt, False, x, gy, out, geom, splits)


def launch_depthwise3d(rt, x, gy, out, geom, *, splits: int | None = None):
    """As ``launch_depthwise`` for a depthwise 3-D ``ConvNdGeometry`` (``conv3d_backward_filter_depthwise``:
    taps (t, r, s), pixels (n, od, p, q)). ValueError when it declines."""
    reason = depthwise3d_decline_reason(geom, x.dtype)
    if reason is not None:
        raise ValueError(reason)
    return _launch(rt, True, x, gy, out, geom, splits)


def launch_igemm1d(rt, x, gy, out, geom, *, splits: int | None = None):
    """As ``launch_igemm`` for a 1-D ``ConvNdGeometry``: ``x (N, C, L)``, ``gy`` / ``out (N, K, Q)``; ``gw (K,
    Cg, S)``, one ``conv1d_backward_filter_igemm`` launch and the fixed-order ``gemm_splitk_reduce``.
    ValueError when it declines."""
    reason = igemm1d_decline_reason(geom, x.dtype)
    if reason is not None:
        raise ValueError(reason)
    return _launch(rt, False, x, gy, out, geom, splits)


def launch_depthwise1d(rt, x, gy, out, geom, *, splits: int | None = None):
    """As ``launch_depthwise`` for a depthwise 1-D ``ConvNdGeometry`` (``conv1d_backward_filter_depthwise``)."""
    reason = depthwise1d_decline_reason(geom, x.dtype)
    if reason is not None:
        raise ValueError(reason)
    return _launch(rt, True, x, gy, out, geom, splits)


def launch_depthwise(rt, x, gy, out, geom: ConvGeometry, *, splits: int | None = None):
    """As ``launch_igemm``, for a depthwise geometry (``Cg == 1``, ``groups > 1``)."""
    if not is_depthwise(geom):
        raise ValueError(depthwise_decline_reason(geom, x.dtype))
    return _launch(rt, True, x, gy, out, geom, splits)


def launch_bias(rt, gy, out, geom):
    """``(gb, kernel id)``: ``gy`` summed over N, P, Q after the activation's derivative (``out`` the
    activated forward output, ``geom.activation``), one block per filter, a fixed-order tree. A 3-D
    ``ConvNdGeometry`` (``gy (N, K, OD, P, Q)``) runs the same kernel over ``OD*P*Q`` outputs per filter
    and sample (a C-contiguous ``gy`` is that ``(N, K, OD*P*Q)`` array)."""
    dtype = np.dtype(gy.dtype)
    xp = rt.xp
    act = geom.activation_code if out is not None else 0
    gy = xp.ascontiguousarray(gy)
    out = xp.ascontiguousarray(out) if act else gy  # unread without an activation
    gb = xp.empty((geom.K,), dtype=dtype)
    name = bias_name(dtype)
    rt.function(SOURCE, name)((grid_blocks(geom.K), 1, 1), (THREADS, 1, 1),
                              [gy, out, gb, np.int32(geom.N), np.int32(geom.K), np.int64(_gemm(geom)[0] // max(geom.N, 1)),
                               np.int32(act)])
    return gb, name


ALGORITHMS = (
    Algorithm("depthwise", "conv2d", BACKWARD_FILTER, SOURCE, INSTANTIATIONS, depthwise_decline_reason,
              launch_depthwise, "one block per (filter, pixel range), taps in registers, fixed tree "
              "reduction; fixed-order sum of the ranges"),
    Algorithm("igemm", "conv2d", BACKWARD_FILTER, SOURCE, INSTANTIATIONS, igemm_decline_reason, launch_igemm,
              "implicit GEMM gy' @ im2col(x)^T per group, the N*P*Q reduction split into fixed ranges "
              "summed in order (no atomics); activation derivative in the gy loader"),
)

# (conv3d, backward_filter): the 3-D instantiations of both, in the same order (the table's order is the choice)
ALGORITHMS_3D = (
    Algorithm("depthwise", "conv3d", BACKWARD_FILTER, SOURCE, INSTANTIATIONS, depthwise3d_decline_reason,
              launch_depthwise3d, "conv2d's depthwise filter-gradient body with the 3-D geometry: one block per "
              "(filter, pixel range), taps (t, r, s) in registers, fixed tree; fixed-order sum of the ranges"),
    Algorithm("igemm", "conv3d", BACKWARD_FILTER, SOURCE, INSTANTIATIONS, igemm3d_decline_reason, launch_igemm3d,
              "implicit GEMM gy' @ im2col3d(x)^T per group over N*OD*P*Q, conv2d's backward-filter body with "
              "the 3-D gather geometry; fixed ranges summed in order"),
)

# (conv1d, backward_filter): the 1-D instantiations, same order
ALGORITHMS_1D = (
    Algorithm("depthwise", "conv1d", BACKWARD_FILTER, SOURCE, INSTANTIATIONS, depthwise1d_decline_reason,
              launch_depthwise1d, "conv2d's depthwise filter-gradient body with the 1-D geometry: one block per "
              "(filter, pixel range), taps s in registers, fixed tree; fixed-order sum of the ranges"),
    Algorithm("igemm", "conv1d", BACKWARD_FILTER, SOURCE, INSTANTIATIONS, igemm1d_decline_reason, launch_igemm1d,
              "implicit GEMM gy' @ im2col1d(x)^T per group over N*Q, conv2d's backward-filter body with the "
              "1-D gather geometry (no row digit); fixed ranges summed in order"),
)
