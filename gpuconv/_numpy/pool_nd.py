"""3-D max and average pooling on the CPU with NumPy, composed from the 2-D passes of ``pool.py``: output
depth ``od`` combines, over its window's depth taps ``a`` in order (input depth ``od*sd - pd + a*dd``), the 2-D
pooling of that input depth slice. (1-D pooling needs nothing here: it is 2-D pooling of a one-row plane.)

* Max: a 2-D max pooling of each tapped slice, merged with PyTorch's rule (a value replaces the best so far
  when it is greater or NaN), so the 3-D window's winner is its first maximum in (depth, row, column) order,
  or its last NaN; the index is ``d*H*W + h*W + w``. A window that never replaces its start keeps PyTorch's
  initial index: its start stepped by the dilation until not negative along each axis.
* Average: the 2-D window sums (``divisor_override=1``, float16 slices summed in float32) added over the
  depth taps, divided by the 3-D divisor, which is the product of one factor per axis
  (``pool.divisor_extent``) for every rule (count_include_pad or not), or ``divisor_override``.

Memory: besides the output (and indices), one output depth slice of each of: the running best / sum, the
2-D result of one input slice (its indices), a mask, and for float16 a float32 copy of one input slice.
"""

from __future__ import annotations

import numpy as np

from .._pool_geometry import PoolGeometryND
from . import pool


def _depth_taps(g: PoolGeometryND, od: int):
    """The input depths of output depth ``od``'s window that lie inside the input, in tap order."""
    (D,), (k,), (s,), ((p, _),), (d,) = g.spatial[:1], g.kernel[:1], g.stride[:1], g.padding[:1], g.dilation[:1]
    return [z for z in (od * s - p + a * d for a in range(k)) if 0 <= z < D]


def max_pool3d(x: np.ndarray, g: PoolGeometryND, return_indices: bool):
    g2 = g.plane
    D, H, W = g.spatial
    ct = pool._compute_dtype(x.dtype)
    y = np.empty(g.output_shape, dtype=x.dtype)
    idx = np.empty(g.output_shape, dtype=np.int64) if return_indices else None
    best = np.empty((g.N, g.C, g2.OH, g2.OW), dtype=ct)
    arg = np.empty(best.shape, dtype=np.int64)
    upd = np.empty(best.shape, dtype=np.bool_)
    isnan = np.empty(best.shape, dtype=np.bool_)
    # PyTorch's initial index: each axis' first tap at or after 0
    first_h, _ = pool._first_tap(0, g2.OH, g2.sh, g2.ph, g2.kh, g2.dh, H)
    first_w, _ = pool._first_tap(0, g2.OW, g2.sw, g2.pw, g2.kw, g2.dw, W)
    first_d, _ = pool._first_tap(0, g.out[0], g.stride[0], g.padding[0][0], g.kernel[0], g.dilation[0], D)
    plane_first = first_h[:, None] * W + first_w[None, :]
    for od in range(g.out[0]):
        best.fill(-np.inf)
        arg[...] = first_d[od] * (H * W) + plane_first
        for z in _depth_taps(g, od):
            v, i2, _ = pool.max_pool2d(x[:, :, z], g2, True)
            np.add(i2, z * H * W, out=i2)
            pool._nan_wins_update(best, arg, v, i2, upd, isnan)
        np.copyto(y[:, :, od], best)  # exact: float16 values
        if idx is not None:
            idx[:, :, od] = arg
    return y, idx, "numpy_max_pool3d"


def avg_pool3d(x: np.ndarray, g: PoolGeometryND, count_include_pad: bool, divisor_override):
    g2 = g.plane
    ct = pool._compute_dtype(x.dtype)
    y = np.empty(g.output_shape, dtype=x.dtype)
    acc = np.empty((g.N, g.C, g2.OH, g2.OW), dtype=ct)
    if divisor_override:
        div_d = np.full(g.out[0], divisor_override, dtype=np.int64)
        plane_div = np.ones((g2.OH, g2.OW), dtype=np.int64)
    else:
        (p_lo, p_hi), = g.padding[:1]
        div_d = pool.divisor_extent(0, g.out[0], g.kernel[0], g.stride[0], p_lo, p_hi, g.spatial[0],
                                    count_include_pad)
        plane_div = pool.avg_pool_divisor(g2, count_include_pad, None)
    for od in range(g.out[0]):
        acc.fill(0)
        for z in _depth_taps(g, od):
            xs = x[:, :, z] if x.dtype == ct else x[:, :, z].astype(ct)
            s, _ = pool.avg_pool2d(xs, g2, True, 1)  # the 2-D window sums
            acc += s
        np.divide(acc, (plane_div * int(div_d[od])).astype(ct), out=acc)
        np.copyto(y[:, :, od], acc, casting="same_kind")
    return y, "numpy_avg_pool3d"
