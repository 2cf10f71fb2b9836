"""Running conv2d forward on the CUDA path: the one place that decides what runs for a call, then launches
it. The algorithms are listed in the operation table (``ops.py``), the rules that choose among them live in
``select.py`` and the measuring in ``autotune.py``; this module only plans and executes.

A call runs the named algorithm (``ValueError`` if it declines, never a fallback), or for ``'auto'`` the
autotuner's measured choice where the runtime can time kernels, else ``select.choose_algo``'s documented
heuristic. Which instantiation ran is returned as its name expression (e.g.
``"gpuconv::conv2d_tiled<float, 16, 16, 8, 3, 3>"``).
"""

from __future__ import annotations

import numpy as np

from .._geometry import ConvGeometry
from . import autotune, select
from .algo import FORWARD
from .limits import CTYPE
from .ops import operation

OP = operation("conv2d", FORWARD)


def check_algo(algo: str) -> None:
    """``algo`` must be ``'auto'`` or a conv2d forward algorithm's name."""
    if algo != "auto" and algo not in OP.algorithms:
        raise ValueError(f"conv2d(): unknown algo {algo!r}; expected 'auto' or one of {', '.join(OP.names)}")


def conv2d(rt, x, w, b, geom: ConvGeometry, algo: str):
    """Run one conv2d on the runtime ``rt``. Returns ``(y, kernel_id)``: ``y`` a new C-contiguous
    ``(N, K, P, Q)`` array of x's dtype, ``kernel_id`` the name expression of the instantiation that ran.
    Raises ValueError when the requested algorithm cannot handle the geometry (never falls back)."""
    xp = rt.xp
    dtype = np.dtype(x.dtype)
    if dtype not in CTYPE:
        raise TypeError(f"conv2d CUDA kernels support float16, float32 and float64, got {dtype}")
    check_algo(algo)
    # Decline before allocating anything: a refused call must not cost memory (or fail for lack of it).
    if algo != "auto":
        reason = select.decline_reason(algo, geom, dtype) or select.device_reason(algo, rt)
        if reason is not None:
            raise ValueError(reason)
    elif not select.candidates(geom, dtype, rt):
        raise ValueError("every conv2d CUDA algorithm declines this call; "
                         + select.decline_reason("direct", geom, dtype))
    x = xp.ascontiguousarray(x)
    w = xp.ascontiguousarray(w)
    # No bias: the kernels never read b then, but need a valid pointer of the right type; pass w.
    b = w if b is None else xp.ascontiguousarray(b)
    y = xp.empty(geom.output_shape, dtype=dtype)

    def launch(name):
        return OP.algorithms[name].launch(rt, x, w, b, y, geom)

    if algo == "auto":
        algo = autotune.choose(rt, geom, dtype, launch)
    return y, launch(algo)

