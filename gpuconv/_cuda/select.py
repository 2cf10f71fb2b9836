"""Which algorithm may run, and which the heuristic prefers, for one call of an (op, direction): plain
functions of the geometry, the dtype and the runtime, apart from any launch code.

* ``decline_reason`` / ``device_reason``: why a named algorithm cannot run this call (the geometry or dtype,
  or the device's compute capability); raised as ``ValueError`` when the user asked for it by name.
* ``candidates``: what ``algo='auto'`` may run (what the autotuner measures): the algorithms that accept
  the call, in table order, without tensor-core ones unless ``gpuconv.set_tensor_cores(True)``.
* ``tuning_candidates``: what the autotuner measures: ``candidates`` with each algorithm that has variants
  (``ops.VARIANTS``: the GEMM algorithms' tiles and split-K) replaced by its variants'
  names, ``<algorithm>/<variant>`` (e.g. ``igemm/wide``, ``igemm/small/split``).
* ``choose_algo``: the documented heuristic, used where kernels are not measured (no timer, or measuring
  off). Per operation, ``HEURISTICS`` gives the preference order; operations with one algorithm need none.

The heuristic is reasoned (docs/architecture.md, "Tuning status").
"""

from __future__ import annotations

import numpy as np

from .._geometry import ConvGeometry
from . import settings
from .algo import FORWARD
from . import conv_igemm_tc
from .conv_tiled import TILE_P, TILE_Q
from .gemm import SMALL_TILE
from .ops import VARIANTS, operation

# Below this many output pixels per plane, a 16x16 tile would leave more than 3/4 of its threads idle.
AUTO_MIN_TILED_PIXELS = (TILE_P * TILE_Q) // 4


def decline_reason(algo: str, geom, dtype, op: str = "conv2d", direction: str = FORWARD) -> str | None:
    return operation(op, direction).algorithms[algo].decline_reason(geom, np.dtype(dtype))


def device_reason(algo: str, rt, op: str = "conv2d", direction: str = FORWARD) -> str | None:
    """Why ``algo`` cannot run on the runtime's current device (compute capability too old), or None.
    A runtime whose ``compute_capability()`` is None (the tests' CPU emulator) runs every algorithm."""
    need = operation(op, direction).algorithms[algo].min_compute_capability
    if not need:
        return None
    cc = rt.compute_capability()
    if cc is None or cc >= need:
        return None
    return (f"{algo} needs a GPU of compute capability {need // 10}.{need % 10} or newer; the current device "
            f"is {cc // 10}.{cc % 10}")


def candidates(geom, dtype, rt=None, op: str = "conv2d", direction: str = FORWARD) -> list[str]:
    """The algorithms ``'auto'`` may run for this call, in table order (what the autotuner measures):
    those that accept the geometry and dtype, and the device of ``rt`` (when given), leaving out
    tensor-core algorithms (TF32 for float32) unless ``gpuconv.set_tensor_cores(True)``."""
    tensor_cores = settings.tensor_cores_enabled()
    algorithms = operation(op, direction).algorithms
    return [name for name, a in algorithms.items() if a.decline_reason(geom, np.dtype(dtype)) is None
            and (tensor_cores or not a.tensor_cores)
            and (rt is None or device_reason(name, rt, op, direction) is None)]


def tuning_candidates(geom, dtype, rt=None, op: str = "conv2d", direction: str = FORWARD) -> list[str]:
    """What the autotuner measures for this call: each of ``candidates``, or, for an algorithm with variants
    (``ops.VARIANTS``), each variant that applies (``<algorithm>/<variant>``, in the variants' order; one
    of them is what the algorithm's own rule would run). ``operation(...).algorithms[name]`` resolves every
    name returned."""
    variants = VARIANTS.get((op, direction), {})
    out = []
    for name in candidates(geom, dtype, rt, op, direction):
        spec = variants.get(name)
        out += [name] if spec is None else [f"{name}/{v}" for v in spec.names(geom, np.dtype(dtype))]
    return out


def heuristic_order(geom: ConvGeometry) -> tuple[str, ...]:
    """Preference order of conv2d forward's ``choose_algo`` for this geometry (names not registered are
    skipped):

    * one input channel per group (depthwise and similar): ``depthwise``, then ``tiled``;
    * a 1x1 filter: ``gemm1x1`` (a plain GEMM over channels), then ``igemm``, ``tiled``;
    * otherwise ``igemm`` (implicit GEMM), then ``tiled``;
    * ``direct`` last; and ``direct`` before ``tiled`` when an output plane has fewer than 64 pixels
      (P*Q < 64), where a 16x16 tile would leave more than three quarters of its threads idle.
    """
    small = geom.P * geom.Q < AUTO_MIN_TILED_PIXELS
    basic = ("direct", "tiled") if small else ("tiled", "direct")
    if geom.Cg == 1:
        return ("depthwise",) + basic
    if geom.R == 1 and geom.S == 1:
        return ("gemm1x1", "igemm") + basic
    return ("igemm",) + basic


# Tiny Cg: igemm_tc pads each filter tap's Cg channels to whole slices of BK (16 / 32 for float32, 32 / 64 for
# float16), so a layer with Cg < BK multiplies mostly zeros. Tensor cores still pay while their useful share
# of the products, u_tc = Cg / (ceil(Cg/BK)*BK), is at least TC_MIN_USEFUL[dtype] x igemm's (its reduction
# Cg*R*S padded to its BK of 16, u_fma). The arithmetic (an SM issues 4 warp instructions per clock; H100 /
# H200: 1024 TF32 or 2048 float16 multiply-adds per clock on tensor cores, 128 FFMA): igemm's main loop is
# 76-82 % FFMA (tests/sass_check.py), about 100 useful multiply-adds per clock at u_fma = 1; igemm_tc issues
# 3.8-5.1 (float32) / 4.0-4.9 (float16) non-mma instructions per mma (conv2d_igemm_tc.cu's header), so
# 4 / (1 + that) mma per clock: about 690-850 TF32 or 1390-1650 float16 multiply-adds per clock at u_tc = 1.
# Break-even is u_tc / u_fma = 0.12-0.15 (float32) and 0.06-0.075 (float16); the thresholds are twice those,
# for what the count leaves out (each gathered element is its own global load, at a fixed channel stride).
TC_MIN_USEFUL = {np.dtype(np.float32): 0.25, np.dtype(np.float16): 0.125}


def _useful_share(n: int, bk: int) -> float:
    return n / (-(-n // bk) * bk)


def tensor_cores_pay(view: ConvGeometry, dtype) -> bool:
    """Whether igemm_tc's useful products on this GEMM view (a 2-D geometry: the call's, or an N-D call's
    ``gemm_view``) outrun igemm's by the rule above (``TC_MIN_USEFUL``; False for dtypes without tensor
    cores). ``dtype`` None: float32's rule."""
    dtype = np.dtype(np.float32 if dtype is None else dtype)
    if dtype not in TC_MIN_USEFUL:
        return False
    bk = conv_igemm_tc.tc_tile_for(view, dtype).bk(dtype)
    return (_useful_share(view.Cg, bk)
            >= TC_MIN_USEFUL[dtype] * _useful_share(view.Cg * view.R * view.S, SMALL_TILE.bk))


def conv_forward_order(geom: ConvGeometry, dtype=None) -> tuple[str, ...]:
    """``heuristic_order`` with ``igemm_tc`` put first for every layer but depthwise-like ones and those where
    tensor cores do not pay (``tensor_cores_pay``: tiny Cg) (it is a candidate only when tensor cores are
    allowed). ``dtype`` None: float32's rule."""
    order = heuristic_order(geom)
    return order if geom.Cg == 1 or not tensor_cores_pay(geom, dtype) else ("igemm_tc",) + order


def conv_nd_forward_order(geom, dtype=None) -> tuple[str, ...]:
    """conv1d / conv3d forward: ``igemm_tc`` (where allowed) before ``igemm``, under conv2d's rule on the call's
    GEMM view: not for depthwise-like calls (Cg == 1), nor where tensor cores do not pay."""
    view = conv_igemm_tc.FAMILIES[geom.nd].view(geom)
    return ("igemm",) if geom.Cg == 1 or not tensor_cores_pay(view, dtype) else ("igemm_tc", "igemm")


# (op, direction) -> the preference order of its algorithms for a geometry and dtype; operations not listed
# have one algorithm.
HEURISTICS = {("conv2d", FORWARD): conv_forward_order, ("conv1d", FORWARD): conv_nd_forward_order,
              ("conv3d", FORWARD): conv_nd_forward_order}


def choose_algo(geom, dtype, rt=None, op: str = "conv2d", direction: str = FORWARD) -> str:
    """The heuristic for ``algo='auto'`` where kernels are not measured (see ``autotune``): the first
    algorithm of the operation's preference order that ``candidates`` allows, else the operation's first
    algorithm, its baseline (conv2d forward's ``direct`` accepts every geometry within the 32-bit size
    rule; the caller raises when even that declines).

    Within the GEMM algorithms the heuristic runs their own rules: the tile is ``gemm.gemm_tile_for``'s
    (large 128x128 for more than 64 filters per group and >= 128 large tiles, else wide 64x128 for >= 128
    wide tiles, else small 64x64; float64 always its small tile; every float32 / float16 tile 8x8 results
    per thread), and igemm splits the reduction by ``conv_igemm.splitk_for`` when that tile launches
    fewer blocks than an H100 has SMs. Where kernels are measured, ``tuning_candidates`` measures each of
    those tiles and split-K on / off instead."""
    o = operation(op, direction)
    order = HEURISTICS[o.key](geom, dtype) if o.key in HEURISTICS else o.names
    allowed = candidates(geom, dtype, rt, op, direction)
    for name in order:
        if name in allowed:
            return name
    return o.names[0]
