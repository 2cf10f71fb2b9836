"""The CUDA data gradient of conv1d, conv2d and conv3d (``kernels/conv2d_backward_data.cu``; rules in
docs/gradients.md, "The CUDA data gradient"): ONE launch of ``conv{1,2,3}d_backward_data<T, tile, ACT>``
computes the whole ``gx``, every stride phase. One kernel family: the body is shared, the number of spatial
dimensions ``nd`` lives in the gather geometry (``Im2colGeometry1d`` / ``Im2colGeometry`` /
``Im2colGeometry3d``), the phase descriptor and the epilogue's output mapping; this module is the host of
all three (``launch(rt, gy, w, out, geom, *input_size)`` with a 2-D ``ConvGeometry`` or a 1-D / 3-D
``ConvNdGeometry``).

The stride phases (docs/gradients.md, "The lowering"), per axis: input positions ``a::s`` receive only the
filter taps ``r`` with ``(a + p_lo - r*d) % s == 0``, which makes ``gx[:, :, a::sd, b::sh, c::sw]`` (3-D;
2-D without the depth, 1-D the columns only) a stride-1 correlation of ``gy`` with the phase's taps in
reverse order, dilation ``d / gcd(s, d)`` per axis and a padding that may be negative (``gy`` positions the
phase never reads). ``plan`` lists the phases, the product of the axes' (``axis_plan``; those beyond the
input have no positions and are left out); each becomes a descriptor of the kernel parameter
(``PARAMS_DTYPES[nd]``, the mirror of the kernel's ``DgradParamsNd<nd>``; ``DGRAD_PARAMS_DTYPE`` the 2-D
one), ``blockIdx.z`` picks one. Up to ``MAX_PHASES`` = 64 per launch: the parameter is 2,648 bytes in 2-D,
3,700 in 3-D (14-int descriptors), 1,620 in 1-D (6 ints, no row field), each under the 4 KiB a launch may
pass with its pointers; more phases (``sd*sh*sw > 64``) take one launch per 64, each phase in exactly one. A
phase no tap reaches (stride > kernel, or a dilation sharing a factor with the stride) has its taps 0 and
its blocks write its zeros: ``gx`` is allocated with ``empty`` and written once, element by element.

Workspace: the phases' sub-filters packed into one array ``wp`` (at most ``|w|`` elements; every tap
belongs to one phase per axis, a phase beyond the input drops its taps), phase by phase ``(C, Kg, *taps)``:
filter ``g*Cg + c`` of the phase's correlation is input channel ``g*Cg + c`` and its channels are group
``g``'s ``Kg`` filters. Packed by one strided copy per phase with taps from a view of ``w``
(``pack_weights``: the taps of a phase are an arithmetic progression per axis, so a slice; no index array).
Plus C-contiguous copies of ``gy`` / ``out`` when they are not.

Tile (``data_tile``): ``gemm.gemm_tile_for`` on the whole gradient as one GEMM (``N*prod(input_size)``
pixels x ``Cg`` channels per group, ``groups`` groups), the wide tile where it says large (only the wide
and small tiles are instantiated, per activation: compile time); float64 its small tile. 3-D: the small
tile only, conv3d_igemm's ``SMALL_TILE_3D`` (64 x 64 x 8) for float32 / float16: the wide tile spilled on
sm_100 / sm_120 (``TILE_NAMES_ND``).
Never split: the phases are the extra blocks.

32-bit rule (``decline_reason``): the forward kernels' (``limits.conv_int32_limit_reason``,
``conv1d_int32_limit_reason``, ``conv3d_int32_limit_reason`` of the forward geometry) plus ``|w|`` (the
phases' ``w_off``), the input's pixel count (the epilogue's phase pixel index) and ``gy``'s extent per axis
(``gy length + pads + the filter's reach``) within ``int``. Where it declines, the caller runs the
lowering (2-D ``_conv_lowering.backward_data``'s phase calls; 1-D the height-1 view of it; 3-D the
depth-tap lowering) and the record's first entry says why.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from .._geometry import ACTIVATIONS, ConvGeometry, conv_geometry
from . import limits
from .abi import CONV3D_PARAMS_DTYPE, CONV_PARAMS_DTYPE, conv1d_params, conv3d_params, conv_params
from .algo import Algorithm
from .conv1d_igemm import conv1d_int32_limit_reason
from .conv3d_igemm import SMALL_TILE_3D, TILES_3D, conv3d_int32_limit_reason
from .gemm import (SMALL_TILE, TILE_BY_NAME, TILES_BY_DTYPE, GemmTile, data_pointer, gemm_tile_for,
                   tile_for_dtype, vec4_aligned, with_small_tile)
from .limits import CTYPE, grid_blocks

BACKWARD_DATA = "backward_data"
SOURCE = "conv2d_backward_data.cu"
KERNELS = {1: "conv1d_backward_data", 2: "conv2d_backward_data", 3: "conv3d_backward_data"}
KERNEL = KERNELS[2]
MAX_PHASES = 64  # DGRAD_MAX_PHASES in the kernel file
TILE_NAMES = ("wide", "small")
# 3-D: the small tile only (conv3d_igemm's 64 x 64 x 8 for float32 / float16): the wide 64 x 128 x 16 tile
# spilled (4-16 bytes on sm_100 / sm_120, NVRTC 12.9) with the depth digit's state of its 16 gathered pixels
# per thread plus the phase mapping.
TILE_NAMES_ND = {1: TILE_NAMES, 2: TILE_NAMES, 3: ("small",)}
ACTIVATION_CODES = tuple(sorted(ACTIVATIONS.values()))  # 0 (none), relu, leaky_relu, sigmoid, tanh
# The tiles instantiated per dtype and dimension count (3-D: conv3d_igemm's 64x64x8 small tile only).
TILES = {nd: {dt: tuple(t for t in tiles if t.name in TILE_NAMES_ND[nd])
              for dt, tiles in (TILES_3D if nd == 3 else TILES_BY_DTYPE).items()} for nd in (1, 2, 3)}

# The kernel's DgradPhaseNd<nd> and DgradParamsNd<nd> (kernels/conv2d_backward_data.cu), field by field: per
# axis (depth d, row r, column c; 1-D the column only) the phase's start, taps, padding and size.
_AXES = {1: "c", 2: "rc", 3: "drc"}
_STARTS = {1: ("b",), 2: ("a", "b"), 3: ("a_d", "a", "b")}
_SIZES = {1: ("Q",), 2: ("P", "Q"), 3: ("PD", "P", "Q")}


def _phase_fields(nd: int) -> tuple[str, ...]:
    return (_STARTS[nd] + tuple(f"taps_{x}" for x in _AXES[nd]) + tuple(f"pad_{x}" for x in _AXES[nd])
            + _SIZES[nd] + ("w_off", "vec_w"))


PHASE_DTYPES = {nd: np.dtype([(f, np.int32) for f in _phase_fields(nd)], align=True) for nd in (1, 2, 3)}
PARAMS_DTYPES = {nd: np.dtype([("fwd", CONV3D_PARAMS_DTYPE if nd == 3 else CONV_PARAMS_DTYPE)]
                              + [(f"dd_{x}", np.int32) for x in _AXES[nd]]
                              + [("phases", np.int32), ("ph", PHASE_DTYPES[nd], (MAX_PHASES,))], align=True)
                 for nd in (1, 2, 3)}
PHASE_FIELDS, PHASE_DTYPE, DGRAD_PARAMS_DTYPE = _phase_fields(2), PHASE_DTYPES[2], PARAMS_DTYPES[2]
assert PHASE_DTYPE.itemsize == 40 and DGRAD_PARAMS_DTYPE.itemsize == 4 * (22 + 10 * MAX_PHASES)
assert PARAMS_DTYPES[3].itemsize == 4 * (29 + 14 * MAX_PHASES) == 3700
assert PARAMS_DTYPES[1].itemsize == 4 * (21 + 6 * MAX_PHASES) == 1620


def kernel_name(dtype, tile: GemmTile, act: int, nd: int = 2) -> str:
    return f"gpuconv::{KERNELS[nd]}<{CTYPE[np.dtype(dtype)]}, {tile.template_args}, {int(act)}>"


def _instantiations(nd: int) -> tuple[str, ...]:
    return tuple(kernel_name(dt, t, act, nd) for dt, tiles in TILES[nd].items() for t in tiles
                 for act in ACTIVATION_CODES)


INSTANTIATIONS_ND = {nd: _instantiations(nd) for nd in (1, 2, 3)}
INSTANTIATIONS = INSTANTIATIONS_ND[2]


def ndim(geom) -> int:
    """Spatial dimensions of the forward geometry: 2 for a ``ConvGeometry``, else the ``ConvNdGeometry``'s."""
    return 2 if isinstance(geom, ConvGeometry) else geom.nd


def axes(geom) -> tuple[tuple[int, int, int, int, int], ...]:
    """Per spatial axis of the forward call: ``(kernel, stride, low padding, high padding, dilation)``."""
    if isinstance(geom, ConvGeometry):
        return ((geom.R, geom.sh, geom.pt, geom.pb, geom.dh), (geom.S, geom.sw, geom.pl, geom.pr, geom.dw))
    return tuple((k, s, lo, hi, d) for k, s, (lo, hi), d in zip(geom.kernel_size, geom.stride, geom.padding,
                                                                geom.dilation))


def output_size(geom) -> tuple[int, ...]:
    return (geom.P, geom.Q) if isinstance(geom, ConvGeometry) else tuple(geom.output_size)


def gemm_view(geom, *size: int) -> ConvGeometry:
    """The whole gradient as the tile rule sees a GEMM: ``N*prod(size)`` pixels x ``Cg`` rows per group (a 1x1
    convolution of a ``(N, K, H, W)`` input into ``C`` channels, ``groups`` groups; 1-D / 3-D as one row of
    ``prod(size)`` pixels): the blocks of all phases together."""
    hw = tuple(size) if len(size) == 2 else (1, math.prod(size))
    return conv_geometry((geom.N, geom.K) + hw, (geom.C, geom.Kg, 1, 1), None, 1, 0, 1, geom.groups)


def data_tile(geom, dtype, *size: int) -> GemmTile:
    """The kernel's tile: ``gemm_tile_for``'s on ``gemm_view``, the wide tile where it says large, mapped to
    the dtype's config (float64: its small tile); 3-D: always the small tile (``SMALL_TILE_3D`` for float32 /
    float16; ``TILE_NAMES_ND``)."""
    if ndim(geom) == 3:
        return with_small_tile(SMALL_TILE, dtype, SMALL_TILE_3D)
    tile = gemm_tile_for(gemm_view(geom, *size), dtype)
    if tile.name not in TILE_NAMES:
        tile = TILE_BY_NAME["wide"]
    return tile_for_dtype(tile, dtype)


# Names of the 32-bit rule's sizes per dimension count: (input axis, gy axis, its padding, the axis' letter).
_LABELS = {2: (("H", "P", "pad_top + pad_bottom", "h"), ("W", "Q", "pad_left + pad_right", "w")),
           1: (("L", "Q", "padding", "l"),),
           3: (("D", "OD", "padding_d", "d"), ("H", "P", "padding_h", "h"), ("W", "Q", "padding_w", "w"))}


def decline_reason(geom, dtype) -> str | None:
    """None when the kernel takes the data gradient of ``geom`` (the forward call), else why not (the
    module docstring's 32-bit rule)."""
    nd = ndim(geom)
    reason = {1: conv1d_int32_limit_reason, 2: limits.conv_int32_limit_reason,
              3: conv3d_int32_limit_reason}[nd](geom)
    if reason is None:
        labels, ax = _LABELS[nd], axes(geom)
        size = (geom.H, geom.W) if nd == 2 else geom.input_size
        sizes = {"K * C/groups * " + " * ".join(f"kernel_{x}" for *_, x in labels):
                 geom.K * geom.Cg * math.prod(k for k, *_ in ax),
                 " * ".join(a for a, *_ in labels): math.prod(size)}
        for (_, o, pad, x), n, (k, _, lo, hi, d) in zip(labels, output_size(geom), ax):
            sizes[f"{o} + {pad} + dilation_{x} * kernel_{x}"] = n + lo + hi + d * k
        reason = limits.int32_limit_reason(sizes, f"conv{nd}d backward-data")
    return limits.declines("the backward-data kernel", reason)


def axis_plan(size: int, n_out: int, k: int, s: int, p_lo: int, d: int) -> list[tuple[int, list[int], int, int]]:
    """One axis' phases: ``(a, taps, pad, count)`` for ``a < min(s, size)``: input positions ``a + s*i``
    (``count`` of them) are the stride-1 correlation of ``gy`` (``n_out`` long) with the filter taps
    ``taps`` (in the order the correlation reads them; empty when no tap reaches the phase), dilation
    ``d / gcd(s, d)``, low padding ``pad`` (negative: that many ``gy`` positions are never read)."""
    dd = d // math.gcd(s, d)
    plan = []
    for a in range(min(s, size)):
        count = (size - a + s - 1) // s
        taps = [r for r in range(k) if (a + p_lo - r * d) % s == 0]
        pad = 0
        if taps:
            o0 = (a + p_lo - taps[0] * d) // s  # gy position of output 0's first tap
            pad = (len(taps) - 1) * dd - o0
        plan.append((a, taps[::-1], pad, count))
    return plan


def plan(geom, *sizes: int) -> list[tuple]:
    """The phases, first axis slowest: ``sizes`` = the input sizes then ``gy``'s (2-D: ``H, W, Pg, Qg``); each
    phase ``starts + taps + pads + counts``, one entry per axis in each (2-D: ``(a, b, rtaps, ctaps, pad_r,
    pad_c, P, Q)``)."""
    nd = len(sizes) // 2
    per_axis = [axis_plan(n, m, k, s, lo, d) for n, m, (k, s, lo, _, d) in zip(sizes[:nd], sizes[nd:], axes(geom))]
    return [tuple(c[i] for i in range(4) for c in combo) for combo in itertools.product(*per_axis)]


def _split(phase, nd):
    """A phase of ``plan`` as ``(starts, taps, pads, counts)``."""
    return tuple(phase[i * nd:(i + 1) * nd] for i in range(4))


def _taps_slice(taps: list[int]) -> slice:
    """``taps`` (an arithmetic progression, as ``axis_plan`` gives them: descending, or a single tap) as a
    slice, so that a phase's sub-filter is a view of ``w``."""
    step = taps[1] - taps[0] if len(taps) > 1 else 1
    stop = taps[-1] + step
    return slice(taps[0], stop if stop >= 0 else None, step)


def pack_weights(xp, w, geom, phases) -> tuple[object, list[int]]:
    """The packed sub-filters (the workspace, at most ``|w|`` elements) and each phase's element offset in
    it: phase by phase ``(groups, Cg, Kg, *taps)`` = ``(C, Kg*prod(taps))`` C-contiguous, tap ``(t, u)`` of the
    phase's correlation = the effective (with flip: rotated) weight's tap ``(rtaps[t], ctaps[u])`` (per axis
    alike in 1-D / 3-D). Each phase's block is one strided copy of a view of ``w`` (one device copy per
    phase that has taps: no index array, nothing from the host)."""
    G, Kg, Cg = geom.groups, geom.Kg, geom.Cg
    nd = w.ndim - 2
    offsets, off = [], 0
    for phase in phases:
        taps = _split(phase, nd)[1]
        offsets.append(off)
        off += Cg * G * Kg * math.prod(len(t) for t in taps) if all(taps) else 0
    wp = xp.empty(off, dtype=w.dtype)
    we = w[(slice(None), slice(None)) + (slice(None, None, -1),) * nd] if geom.flip else w  # a view
    wg = we.reshape((G, Kg, Cg) + tuple(w.shape[2:]))  # (splitting the first axis keeps it a view)
    for phase, o in zip(phases, offsets):
        taps = _split(phase, nd)[1]
        if all(taps):
            sub = wg[(slice(None),) * 3 + tuple(_taps_slice(t) for t in taps)]
            sub = sub.transpose((0, 2, 1) + tuple(range(3, 3 + nd)))
            wp[o:o + sub.size].reshape(sub.shape)[...] = sub
    return wp, offsets


def _forward_params(geom, size, gy_size) -> np.ndarray:
    """The kernel's ``fwd``: the forward call's parameter block with gx's sizes as the input's and gy's as
    the output's, no bias, no activation (the derivative is the template's ACT)."""
    nd = ndim(geom)
    if nd == 3:
        fwd = conv3d_params(geom)
        fwd["D"], fwd["OD"] = size[0], gy_size[0]
        hw = fwd["hw"]  # a view of the nested ConvParams
        hw["H"], hw["W"], hw["P"], hw["Q"], hw["has_bias"], hw["act"] = (*size[1:], *gy_size[1:], 0, 0)
        return fwd
    fwd = conv1d_params(geom) if nd == 1 else conv_params(geom)
    values = (("W", size[0]), ("Q", gy_size[0])) if nd == 1 else \
        (("H", size[0]), ("W", size[1]), ("P", gy_size[0]), ("Q", gy_size[1]))
    for name, value in values + (("has_bias", 0), ("act", 0)):
        fwd[name] = value
    return fwd


def _params(geom, size, gy_size, phases, offsets, wp_address: int, itemsize: int, dtype) -> np.ndarray:
    nd = ndim(geom)
    p = np.zeros(1, PARAMS_DTYPES[nd])
    p["fwd"] = _forward_params(geom, size, gy_size)[0]
    for x, (_, s, _, _, d) in zip(_AXES[nd], axes(geom)):
        p[f"dd_{x}"] = d // math.gcd(s, d)
    p["phases"] = len(phases)
    for i, (phase, off) in enumerate(zip(phases, offsets)):
        starts, taps, pads, counts = _split(phase, nd)
        kred = geom.Kg * math.prod(len(t) for t in taps)
        vec = kred % 4 == 0 and vec4_aligned(wp_address + off * itemsize, dtype)
        ntaps = tuple(len(t) for t in taps) if all(taps) else (0,) * nd  # all 0: no tap reaches it, zeros
        p["ph"][0, i] = (*starts, *ntaps, *pads, *counts, off, int(vec))
    return p


def phase_tiles(geom, N: int, pixels: int, tile: GemmTile) -> int:
    """GEMM tiles of one phase of ``pixels`` pixels per image: groups x pixel tiles x channel tiles."""
    return geom.groups * limits.ceil_div(N * pixels, tile.bn) * limits.ceil_div(geom.Cg, tile.bm)


def launch(rt, gy, w, out, geom, *size: int, tile: GemmTile | None = None):
    """``(gx, kernel ids)``: the data gradient ``gx (N, C, *size)`` of the forward convolution ``geom`` (2-D
    ``ConvGeometry``, 1-D / 3-D ``ConvNdGeometry``) from ``gy (N, K, *gy_size)`` (each ``gy`` size at most the
    forward output's: conv_transpose's output_padding past the stride), ``w`` the forward's weight (as given:
    flip is applied in the packing). ``out``: the activated forward output (``gy``'s shape;
    ``geom.activation``'s derivative is applied in the gather) or None. One launch per 64 phases; ``tile``
    overrides ``data_tile`` (tests). ValueError when ``decline_reason`` declines."""
    xp = rt.xp
    nd = ndim(geom)
    dtype = np.dtype(gy.dtype)
    kernel = KERNELS[nd]
    reason = decline_reason(geom, dtype)
    if reason is not None:
        raise ValueError(reason)
    if len(size) != nd or gy.ndim != nd + 2:
        raise ValueError(f"{kernel}: {nd} input sizes and a {nd + 2}-D gy expected, got size {size} and gy "
                         f"{tuple(gy.shape)}")
    act = 0
    if out is not None:
        act = geom.activation_code
        if not act:
            raise ValueError(f"{kernel}: out (a fused activation derivative) needs an activation")
        if tuple(out.shape) != tuple(gy.shape) or np.dtype(out.dtype) != dtype:
            raise ValueError(f"{kernel}: out {tuple(out.shape)} {out.dtype} must match gy {tuple(gy.shape)} "
                             f"{dtype}")
    tile = data_tile(geom, dtype, *size) if tile is None else \
        (with_small_tile(tile, dtype, SMALL_TILE_3D) if nd == 3 else tile_for_dtype(tile, dtype))
    if tile.name not in TILE_NAMES_ND[nd]:
        raise ValueError(f"{kernel}: tile {tile.name} is not instantiated (only {TILE_NAMES_ND[nd]})")
    N, gy_size = gy.shape[0], tuple(gy.shape[2:])
    phases = plan(geom, *size, *gy_size)
    wp, offsets = pack_weights(xp, w, geom, phases)  # the workspace: <= |w| elements
    gy = xp.ascontiguousarray(gy)
    out = gy if out is None else xp.ascontiguousarray(out)  # unread without an activation
    gx = xp.empty((N, geom.C) + tuple(size), dtype=dtype)  # every element written by the kernel
    name = kernel_name(dtype, tile, act, nd)
    fn = rt.function(SOURCE, name)
    ids = []
    for start in range(0, len(phases), MAX_PHASES):
        chunk, offs = phases[start:start + MAX_PHASES], offsets[start:start + MAX_PHASES]
        params = _params(geom, size, gy_size, chunk, offs, data_pointer(wp), dtype.itemsize, dtype)
        # grid x: the most tiles one phase of the launch has (each phase's blocks walk its own tiles)
        tiles = max(phase_tiles(geom, N, math.prod(_split(ph, nd)[3]), tile) for ph in chunk)
        fn((grid_blocks(tiles), 1, len(chunk)), (tile.threads, 1, 1), [gy, wp, out, gx, params])
        ids.append(f"{name} phases={len(chunk)}")
    return gx, ids


def _algorithms(op: str, nd: int, idea: str):
    # (decline_reason looked up when called, as _conv_lowering does: one rule, which tests may replace)
    return (Algorithm("igemm", op, BACKWARD_DATA, SOURCE, INSTANTIATIONS_ND[nd],
                      lambda geom, dtype: decline_reason(geom, dtype), launch, idea),)


_IDEA = ("one implicit-GEMM launch over every stride phase (blockIdx.z), each phase a stride-1 correlation of gy "
         "with its packed sub-filter, stored straight into gx; activation derivative in the gather")
ALGORITHMS = _algorithms("conv2d", 2, _IDEA)
ALGORITHMS_1D = _algorithms("conv1d", 1, _IDEA + " (1-D gather: no row digit)")
ALGORITHMS_3D = _algorithms("conv3d", 3, _IDEA + " (3-D gather: the depth digit)")
