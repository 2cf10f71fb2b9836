"""The CUDA data gradient of conv2d (``kernels/conv2d_backward_data.cu``; rules in docs/gradients.md, "The
CUDA data gradient"): ONE launch of ``conv2d_backward_data<T, tile, ACT>`` computes the whole ``gx``, every
stride phase.

The stride phases (docs/gradients.md, "The lowering"): input rows ``a::sh`` receive only the filter taps
``r`` with ``(a + pt - r*dh) % sh == 0``, which makes ``gx[:, :, a::sh, b::sw]`` a stride-1 correlation of
``gy`` with the phase's taps in reverse order, dilation ``dh / gcd(sh, dh)`` (columns alike) and a padding
that may be negative (``gy`` rows the phase never reads). ``plan`` lists the ``sh*sw`` phases (those
beyond ``H`` / ``W`` have no rows and are left out); each becomes a ``DgradPhase`` descriptor of the kernel
parameter (``DGRAD_PARAMS_DTYPE``, the mirror of the kernel's ``DgradParams``), ``blockIdx.z`` picks one.
Up to ``MAX_PHASES`` = 64 per launch (the parameter's array, 2,648 bytes of the 4 KiB a launch may pass);
more phases (``sh*sw > 64``) take one launch per 64, each phase in exactly one. A phase no tap reaches
(stride > kernel, or a dilation sharing a factor with the stride) has ``taps_r`` or ``taps_c`` 0 and its
blocks write its zeros: ``gx`` is allocated with ``empty`` and written once, element by element.

Workspace: the phases' sub-filters packed into one array ``wp`` (at most ``|w|`` elements; every tap
belongs to one row phase and one column phase, a phase beyond ``H`` / ``W`` drops its taps), phase by
phase ``(C, Kg, J, Jc)``: filter ``g*Cg + c`` of the phase's correlation is input channel ``g*Cg + c`` and its
channels are group ``g``'s ``Kg`` filters. Packed by one strided copy per phase with taps from a view of
``w`` (``pack_weights``: the taps of a phase are an arithmetic progression, so a slice; no index array).
Plus C-contiguous copies of ``gy`` / ``out`` when they are not.

Tile (``data_tile``): ``gemm.gemm_tile_for`` on the whole gradient as one GEMM (``N*H*W`` pixels x ``Cg``
channels per group, ``groups`` groups), the wide tile where it says large (only the wide and small tiles
are instantiated, per activation: compile time); float64 its small tile. Never split: the phases are the
extra blocks.

32-bit rule (``decline_reason``): the conv kernels' (``limits.conv_int32_limit_reason`` of the forward
geometry) plus ``|w| = K*Cg*R*S`` (the phases' ``w_off``), ``H*W`` (the epilogue's phase pixel index) and
``gy``'s rows / columns (``Pg + pads + the filter's reach``) within ``int``. Where it declines,
``_conv_lowering.backward_data`` runs the stride-phase lowering over the forward kernels (one call per
phase) and the record's first entry says why.
"""

from __future__ import annotations

import math

import numpy as np

from .._geometry import ACTIVATIONS, ConvGeometry, conv_geometry
from . import limits
from .abi import CONV_PARAMS_DTYPE, conv_params
from .algo import Algorithm
from .gemm import (TILE_BY_NAME, TILES_BY_DTYPE, GemmTile, data_pointer, gemm_tile_for, tile_for_dtype,
                   vec4_aligned)
from .limits import CTYPE, grid_blocks

BACKWARD_DATA = "backward_data"
SOURCE = "conv2d_backward_data.cu"
KERNEL = "conv2d_backward_data"
MAX_PHASES = 64  # DGRAD_MAX_PHASES in the kernel file
TILE_NAMES = ("wide", "small")
ACTIVATION_CODES = tuple(sorted(ACTIVATIONS.values()))  # 0 (none), relu, leaky_relu, sigmoid, tanh

# The kernel's DgradPhase and DgradParams (kernels/conv2d_backward_data.cu), field by field.
PHASE_FIELDS = ("a", "b", "taps_r", "taps_c", "pad_r", "pad_c", "P", "Q", "w_off", "vec_w")
PHASE_DTYPE = np.dtype([(f, np.int32) for f in PHASE_FIELDS], align=True)
DGRAD_PARAMS_DTYPE = np.dtype([("fwd", CONV_PARAMS_DTYPE), ("dd_r", np.int32), ("dd_c", np.int32),
                               ("phases", np.int32), ("ph", PHASE_DTYPE, (MAX_PHASES,))], align=True)
assert PHASE_DTYPE.itemsize == 40 and DGRAD_PARAMS_DTYPE.itemsize == 4 * (22 + 10 * MAX_PHASES)


def kernel_name(dtype, tile: GemmTile, act: int) -> str:
    return f"gpuconv::{KERNEL}<{CTYPE[np.dtype(dtype)]}, {tile.template_args}, {int(act)}>"


INSTANTIATIONS = tuple(kernel_name(dt, t, act) for dt, tiles in TILES_BY_DTYPE.items() for t in tiles
                       if t.name in TILE_NAMES for act in ACTIVATION_CODES)


def gemm_view(geom: ConvGeometry, H: int, W: int) -> ConvGeometry:
    """The whole gradient as the tile rule sees a GEMM: ``N*H*W`` pixels x ``Cg`` rows per group (a 1x1
    convolution of a ``(N, K, H, W)`` input into ``C`` channels, ``groups`` groups): the blocks of all phases
    together."""
    return conv_geometry((geom.N, geom.K, H, W), (geom.C, geom.Kg, 1, 1), None, 1, 0, 1, geom.groups)


def data_tile(geom: ConvGeometry, dtype, H: int, W: int) -> GemmTile:
    """The kernel's tile: ``gemm_tile_for``'s on ``gemm_view``, the wide tile where it says large, mapped to
    the dtype's config (float64: its small tile)."""
    tile = gemm_tile_for(gemm_view(geom, H, W), dtype)
    if tile.name not in TILE_NAMES:
        tile = TILE_BY_NAME["wide"]
    return tile_for_dtype(tile, dtype)


def decline_reason(geom: ConvGeometry, dtype) -> str | None:
    """None when the kernel takes the data gradient of ``geom`` (the forward call), else why not (the
    module docstring's 32-bit rule)."""
    reason = limits.conv_int32_limit_reason(geom)
    if reason is None:
        reason = limits.int32_limit_reason({
            "K * C/groups * kernel_h * kernel_w": geom.K * geom.Cg * geom.R * geom.S,
            "H * W": geom.H * geom.W,
            "P + pad_top + pad_bottom + dilation_h * kernel_h": geom.P + geom.pt + geom.pb + geom.dh * geom.R,
            "Q + pad_left + pad_right + dilation_w * kernel_w": geom.Q + geom.pl + geom.pr + geom.dw * geom.S,
        }, "conv2d backward-data")
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


def plan(geom: ConvGeometry, H: int, W: int, Pg: int, Qg: int) -> list[tuple]:
    """The phases, row phase slowest: ``(a, b, rtaps, ctaps, pad_r, pad_c, P, Q)``."""
    rows = axis_plan(H, Pg, geom.R, geom.sh, geom.pt, geom.dh)
    cols = axis_plan(W, Qg, geom.S, geom.sw, geom.pl, geom.dw)
    return [(a, b, rt, ct, pr, pc, P, Q) for a, rt, pr, P in rows for b, ct, pc, Q in cols]


def _taps_slice(taps: list[int]) -> slice:
    """``taps`` (an arithmetic progression, as ``axis_plan`` gives them: descending, or a single tap) as a
    slice, so that a phase's sub-filter is a view of ``w``."""
    step = taps[1] - taps[0] if len(taps) > 1 else 1
    stop = taps[-1] + step
    return slice(taps[0], stop if stop >= 0 else None, step)


def pack_weights(xp, w, geom: ConvGeometry, phases) -> tuple[object, list[int]]:
    """The packed sub-filters (the workspace, at most ``|w|`` elements) and each phase's element offset in
    it: phase by phase ``(groups, Cg, Kg, J, Jc)`` = ``(C, Kg*J*Jc)`` C-contiguous, tap ``(t, u)`` of the
    phase's correlation = the effective (with flip: rotated) weight's tap ``(rtaps[t], ctaps[u])``. Each
    phase's block is one strided copy of a view of ``w`` (one device copy per phase that has taps: no index
    array, nothing from the host)."""
    G, Kg, Cg = geom.groups, geom.Kg, geom.Cg
    offsets, off = [], 0
    for _, _, rtaps, ctaps, *_ in phases:
        offsets.append(off)
        off += Cg * G * Kg * len(rtaps) * len(ctaps) if rtaps and ctaps else 0
    wp = xp.empty(off, dtype=w.dtype)
    we = w[:, :, ::-1, ::-1] if geom.flip else w  # a view: the effective weight
    w5 = we.reshape(G, Kg, Cg, geom.R, geom.S)  # (splitting the first axis keeps it a view)
    for (_, _, rtaps, ctaps, *_), o in zip(phases, offsets):
        if rtaps and ctaps:
            sub = w5[:, :, :, _taps_slice(rtaps), _taps_slice(ctaps)].transpose(0, 2, 1, 3, 4)
            wp[o:o + sub.size].reshape(sub.shape)[...] = sub
    return wp, offsets


def _params(geom: ConvGeometry, Pg: int, Qg: int, H: int, W: int, phases, offsets, wp_address: int,
            itemsize: int, dtype) -> np.ndarray:
    p = np.zeros(1, DGRAD_PARAMS_DTYPE)
    fwd = conv_params(geom)
    for name, value in (("H", H), ("W", W), ("P", Pg), ("Q", Qg), ("has_bias", 0), ("act", 0)):
        fwd[name] = value
    p["fwd"] = fwd[0]
    p["dd_r"] = geom.dh // math.gcd(geom.sh, geom.dh)
    p["dd_c"] = geom.dw // math.gcd(geom.sw, geom.dw)
    p["phases"] = len(phases)
    for i, ((a, b, rt, ct, pr, pc, P, Q), off) in enumerate(zip(phases, offsets)):
        kred = geom.Kg * len(rt) * len(ct)
        vec = kred % 4 == 0 and vec4_aligned(wp_address + off * itemsize, dtype)
        taps = (len(rt), len(ct)) if rt and ct else (0, 0)  # (0, 0): no tap reaches the phase, it writes zeros
        p["ph"][0, i] = (a, b, *taps, pr, pc, P, Q, off, int(vec))
    return p


def phase_tiles(geom: ConvGeometry, N: int, P: int, Q: int, tile: GemmTile) -> int:
    """GEMM tiles of one phase of ``P x Q`` pixels: groups x pixel tiles x channel tiles."""
    return geom.groups * limits.ceil_div(N * P * Q, tile.bn) * limits.ceil_div(geom.Cg, tile.bm)


def launch(rt, gy, w, out, geom: ConvGeometry, H: int, W: int, *, tile: GemmTile | None = None):
    """``(gx, kernel ids)``: the data gradient ``gx (N, C, H, W)`` of the forward convolution ``geom`` from
    ``gy (N, K, Pg, Qg)`` (``Pg <= geom.P``: conv_transpose2d's output_padding past the stride), ``w`` the
    forward's weight (as given: flip is applied in the packing). ``out``: the activated forward output
    (``gy``'s shape; ``geom.activation``'s derivative is applied in the gather) or None. One launch per 64
    phases; ``tile`` overrides ``data_tile`` (tests). ValueError when ``decline_reason`` declines."""
    xp = rt.xp
    dtype = np.dtype(gy.dtype)
    reason = decline_reason(geom, dtype)
    if reason is not None:
        raise ValueError(reason)
    act = 0
    if out is not None:
        act = geom.activation_code
        if not act:
            raise ValueError("conv2d_backward_data: out (a fused activation derivative) needs an activation")
        if tuple(out.shape) != tuple(gy.shape) or np.dtype(out.dtype) != dtype:
            raise ValueError(f"conv2d_backward_data: out {tuple(out.shape)} {out.dtype} must match gy "
                             f"{tuple(gy.shape)} {dtype}")
    tile = data_tile(geom, dtype, H, W) if tile is None else tile_for_dtype(tile, dtype)
    if tile.name not in TILE_NAMES:
        raise ValueError(f"{KERNEL}: tile {tile.name} is not instantiated (only {TILE_NAMES})")
    N, K, Pg, Qg = gy.shape
    phases = plan(geom, H, W, Pg, Qg)
    wp, offsets = pack_weights(xp, w, geom, phases)  # the workspace: <= |w| elements
    gy = xp.ascontiguousarray(gy)
    out = gy if out is None else xp.ascontiguousarray(out)  # unread without an activation
    gx = xp.empty((N, geom.C, H, W), dtype=dtype)  # every element written by the kernel
    name = kernel_name(dtype, tile, act)
    fn = rt.function(SOURCE, name)
    ids = []
    for start in range(0, len(phases), MAX_PHASES):
        chunk, offs = phases[start:start + MAX_PHASES], offsets[start:start + MAX_PHASES]
        params = _params(geom, Pg, Qg, H, W, chunk, offs, data_pointer(wp), dtype.itemsize, dtype)
        # grid x: the most tiles one phase of the launch has (each phase's blocks walk its own tiles)
        tiles = max(phase_tiles(geom, N, P, Q, tile) for *_, P, Q in chunk)
        fn((grid_blocks(tiles), 1, len(chunk)), (tile.threads, 1, 1), [gy, wp, out, gx, params])
        ids.append(f"{name} phases={len(chunk)}")
    return gx, ids


# (decline_reason looked up when called, as _conv_lowering does: one rule, which tests may replace)
ALGORITHMS = (
    Algorithm("igemm", "conv2d", BACKWARD_DATA, SOURCE, INSTANTIATIONS, lambda geom, dtype: decline_reason(geom, dtype),
              launch, "one implicit-GEMM launch over every stride phase (blockIdx.z), each phase a stride-1 "
              "correlation of gy with its packed sub-filter, stored straight into gx; activation derivative in "
              "the gather"),
)
