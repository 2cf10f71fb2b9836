"""The operation table: every (op, direction) the CUDA path computes, and the algorithms of each.

``OPERATIONS[(op, direction)]`` is an :class:`Operation`; its ``algorithms`` map ``algo=`` names to
:class:`~gpuconv._cuda.algo.Algorithm` records, in the order ``algo='auto'`` measures them. Today:

==================================  ============================================================
(op, direction)                     algorithms
==================================  ============================================================
(conv2d, forward)                   direct, tiled, depthwise, igemm, gemm1x1, igemm_tc
(conv1d, forward)                   igemm (conv1d_igemm.py), igemm_tc (conv_igemm_tc.py ALGO_1D)
(conv3d, forward)                   igemm (conv3d_igemm.py), igemm_tc (conv_igemm_tc.py ALGO_3D)
(max_pool2d, forward)               direct
(avg_pool2d, forward)               direct
(adaptive_max_pool2d, forward)      direct
(adaptive_avg_pool2d, forward)      direct
(max_pool2d, backward)              direct
(avg_pool2d, backward)              direct
(adaptive_max_pool2d, backward)     direct
(adaptive_avg_pool2d, backward)     direct
(adaptive_max_pool3d, fwd/bwd)      direct
(adaptive_avg_pool3d, fwd/bwd)      direct
(conv2d, backward_filter)           depthwise, igemm (conv_backward_filter.py; table order is the choice)
(conv3d, backward_filter)           depthwise, igemm (conv_backward_filter.py: the same bodies, 3-D geometry)
(conv1d, backward_filter)           depthwise, igemm (conv_backward_filter.py: the same bodies, 1-D geometry)
(conv2d, backward_data)             igemm (conv_backward_data.py: one launch over every stride phase)
(conv1d, backward_data)             igemm (conv_backward_data.py: the same body, 1-D geometry)
(conv3d, backward_data)             igemm (conv_backward_data.py: the same body, 3-D geometry)
==================================  ============================================================

Every algorithm of one operation takes the same launch arguments (``Operation.launch_signature``). Which
algorithm runs is decided elsewhere (``select.py`` for the rules, ``autotune.py`` for measuring); this
module only lists. ``INSTANTIATIONS[source]`` collects, per kernel source, every name expression the
algorithms request: the runtime compiles each source once with all of them, and the NVRTC compile check
and the machine-code check compile exactly this list.

Variants (issue 16): ``VARIANTS[(op, direction)][name]`` lists what the autotuner measures of an
algorithm besides its rule (the GEMM algorithms: each tile, split-K on / off; ``gemm.TileVariants``). A
variant is named ``<algorithm>/<variant>`` (``igemm/wide``, ``igemm/small/split``): ``algorithms[...]``
resolves such a name to a derived :class:`~gpuconv._cuda.algo.Algorithm` (its launch pinned to the
variant, its decline rule the algorithm's plus the variant's) without listing it, so ``algo=`` names, the
candidate list and iteration stay the algorithms themselves; only the autotuner asks for variants.

Adding an algorithm: a module ``conv_<name>.py`` defining ``ALGO`` (see docs/architecture.md), listed below.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

from . import (conv1d_igemm, conv3d_igemm, conv_backward_data, conv_backward_filter, conv_depthwise, conv_direct,
               conv_gemm1x1, conv_igemm, conv_igemm_tc, conv_tiled, pool, pool_grad)
from .algo import FORWARD, Algorithm


@dataclass(frozen=True)
class Operation:
    """One (op, direction): its algorithms by name and the arguments every one of them is launched with."""

    op: str
    direction: str
    algorithms: dict[str, Algorithm]
    launch_signature: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.op, self.direction)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.algorithms)


class AlgorithmTable(dict):
    """An operation's algorithms by name (a plain dict: iteration, ``in`` and ``len`` see only them), whose
    lookup also resolves a variant name ``<algorithm>/<variant>`` of an algorithm listed in ``VARIANTS``
    (KeyError for any other missing name)."""

    def __init__(self, table, variants):
        super().__init__(table)
        self.variants = variants

    def __missing__(self, key):
        base, sep, variant = str(key).partition("/")
        spec = self.variants.get(base) if sep else None
        if spec is None:
            raise KeyError(key)
        try:
            options = spec.launch_options(variant)
        except ValueError:
            raise KeyError(key) from None
        a = self[base]

        def decline_reason(geom, dtype):
            return a.decline_reason(geom, dtype) or spec.decline_reason(variant, geom, dtype)

        return replace(a, name=key, decline_reason=decline_reason, launch=functools.partial(a.launch, **options))


def _operation(op: str, direction: str, algorithms, launch_signature: str) -> Operation:
    table = {}
    for a in algorithms:
        if (a.op, a.direction) != (op, direction) or a.name in table:
            raise AssertionError(f"algorithm {a.name} of {a.key} listed under ({op}, {direction}) or twice")
        table[a.name] = a
    return Operation(op, direction, AlgorithmTable(table, VARIANTS.get((op, direction), {})), launch_signature)


CONV_FORWARD_ALGORITHMS = (conv_direct.ALGO, conv_tiled.ALGO, conv_depthwise.ALGO, conv_igemm.ALGO,
                           conv_gemm1x1.ALGO, conv_igemm_tc.ALGO)

# (op, direction) -> algorithm name -> its variants (see the module docstring).
VARIANTS = {("conv2d", FORWARD): {conv_igemm.ALGO.name: conv_igemm.VARIANTS,
                                  conv_gemm1x1.ALGO.name: conv_gemm1x1.VARIANTS}}

OPERATIONS: dict[tuple[str, str], Operation] = {o.key: o for o in (
    _operation("conv2d", FORWARD, CONV_FORWARD_ALGORITHMS,
               "(rt, x, w, b, y, geom) -> kernel id: C-contiguous x and w; b the bias or, without one, any "
               "valid array of x's dtype the kernel never reads; y a new C-contiguous (N, K, P, Q) array the "
               "kernel fills completely"),
    _operation("conv1d", FORWARD, (conv1d_igemm.ALGO, conv_igemm_tc.ALGO_1D),
               "(rt, x, w, b, y, geom) -> kernel id: as conv2d forward with a 1-D ConvNdGeometry, x (N, C, L), "
               "y (N, K, Q)"),
    _operation("conv3d", FORWARD, (conv3d_igemm.ALGO, conv_igemm_tc.ALGO_3D),
               "(rt, x, w, b, y, geom) -> kernel id: as conv2d forward with a 3-D ConvNdGeometry, x (N, C, D, H, "
               "W), y (N, K, OD, P, Q)"),
    *(_operation(a.op, FORWARD, (a,), "(rt, x, geom, *options) -> (y, [indices,] kernel id)")
      for a in pool.ALGORITHMS),
    *(_operation(a.op, a.direction, (a,), "(rt, grad_output, indices or None, geom, *options) -> (grad_input, "
                 "kernel id): geom the forward call's geometry; indices int64 for the max ops")
      for a in pool_grad.ALGORITHMS),
    _operation("conv2d", conv_backward_filter.BACKWARD_FILTER, conv_backward_filter.ALGORITHMS,
               "(rt, x, gy, out, geom) -> (gw, kernel id): out the activated forward output or None"),
    _operation("conv3d", conv_backward_filter.BACKWARD_FILTER, conv_backward_filter.ALGORITHMS_3D,
               "(rt, x, gy, out, geom) -> (gw, kernel id): as conv2d backward_filter with a 3-D ConvNdGeometry"),
    _operation("conv1d", conv_backward_filter.BACKWARD_FILTER, conv_backward_filter.ALGORITHMS_1D,
               "(rt, x, gy, out, geom) -> (gw, kernel id): as conv2d backward_filter with a 1-D ConvNdGeometry"),
    _operation("conv2d", conv_backward_data.BACKWARD_DATA, conv_backward_data.ALGORITHMS,
               "(rt, gy, w, out, geom, H, W) -> (gx, kernel ids): out the activated forward output or None"),
    _operation("conv1d", conv_backward_data.BACKWARD_DATA, conv_backward_data.ALGORITHMS_1D,
               "(rt, gy, w, out, geom, L) -> (gx, kernel ids): as conv2d backward_data with a 1-D ConvNdGeometry"),
    _operation("conv3d", conv_backward_data.BACKWARD_DATA, conv_backward_data.ALGORITHMS_3D,
               "(rt, gy, w, out, geom, D, H, W) -> (gx, kernel ids): as conv2d backward_data with a 3-D "
               "ConvNdGeometry"),
)}


def operation(op: str, direction: str = FORWARD) -> Operation:
    return OPERATIONS[(op, direction)]


def _instantiations() -> dict[str, list[str]]:
    by_source: dict[str, list[str]] = {}
    for o in OPERATIONS.values():
        for a in o.algorithms.values():
            names = by_source.setdefault(a.source, [])
            names.extend(n for n in a.instantiations if n not in names)
    return by_source


INSTANTIATIONS: dict[str, list[str]] = _instantiations()
