"""conv3d forward on the NumPy path: ``numpy_im2col3d``, im2col over ``(Cg, T, R, S)`` with one BLAS GEMM per group
and chunk of output depths. (The depth-tap lowering, ``gpuconv._conv_nd``, serves what this declines; the NumPy
3-D gradients are ``conv3d_grad``'s col2im / im2col GEMMs; ``use_im2col3d`` is the forward's choice between the
two.)

Measured with both forced (``python bench/conv3d_numpy.py``, float32, 3x3x3 filters, padding 1; the 2-core AMD
EPYC, shared with other jobs at the time, load average about 7, so the figures are noisy): im2col3d / depth taps
C3D conv1 (3->64, 16x56x56) 86 / 189 ms, C3D conv2 (64->128, 8x28x28) 206 / 258 ms, a 3-D U-Net layer (32->32,
32^3) 261 / 321 ms, batch 8 of 8->8 8x8x8 1.3 / 91 ms; it lost on one layer, batch 4 of 16->16 8x16x16, 80 / 63
ms. One GEMM of inner dimension ``27*Cg`` beats three of ``9*Cg`` plus two accumulation passes; so im2col3d
always.

Per sample: the sample is copied once into a zero-padded buffer (in the compute dtype; the padding's zeros
are multiplied like any input, so an infinite weight over padding gives NaN, as the definition says), the
columns ``(G, Cg*T*R*S, od*OH*OW)`` of a chunk of ``od`` output depths are gathered from a strided window view
(stride and dilation applied) by one copy, and ``(G, Kg, Cg*T*R*S) @ columns`` gives the chunk's outputs.
Memory beyond the output: the padded sample, and the columns and GEMM result of one chunk, chunked so that
together they stay within ``workspace_limit()``; float16 adds a float32 output (computed in float32, rounded
once). Not tiled further (unlike conv2d's ``_conv_tiling``): a chunk holds at least one output depth, so a
sample whose padded copy plus one output depth's columns exceed the limit exceeds it by that much.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ._workspace import workspace_limit

def use_im2col3d(geom) -> bool:
    """The NumPy forward's strategy: ``numpy_im2col3d`` for every geometry (measured, module docstring); the
    hook lets tests and ``bench/conv3d_numpy.py`` force the depth-tap lowering."""
    return True


def conv3d_im2col(x, w, geom, ct):
    """``(N, K, OD, OH, OW)`` in ``ct``, without bias or activation. ``w`` is the effective weight (flip
    applied by the caller)."""
    N, C, K, G = geom.N, geom.C, geom.K, geom.groups
    Cg, Kg = geom.Cg, geom.Kg
    T, R, S = geom.kernel_size
    (sd, sh, sw), (dd, dh, dw) = geom.stride, geom.dilation
    OD, OH, OW = geom.output_size
    taps = Cg * T * R * S
    wm = np.ascontiguousarray(w, dtype=ct).reshape(G, Kg, taps)
    y = np.empty((N, K, OD, OH, OW), dtype=ct)
    padded_shape = (C,) + tuple(s + lo + hi for s, (lo, hi) in zip(geom.input_size, geom.padding))
    padded = np.zeros(padded_shape, dtype=ct)
    inner = (slice(None),) + tuple(slice(lo, lo + s) for s, (lo, _) in zip(geom.input_size, geom.padding))
    item = np.dtype(ct).itemsize
    per_depth = (taps + Kg) * G * OH * OW * item  # columns + GEMM result of one output depth
    chunk = max(1, min(OD, (workspace_limit() - padded.nbytes) // max(per_depth, 1)))
    for n in range(N):
        padded[inner] = x[n]
        c0, c1, c2, c3 = padded.strides
        view = as_strided(padded, (G, Cg, T, R, S, OD, OH, OW),
                          (Cg * c0, c0, dd * c1, dh * c2, dw * c3, sd * c1, sh * c2, sw * c3))
        for o0 in range(0, OD, chunk):
            o1 = min(OD, o0 + chunk)
            cols = np.ascontiguousarray(view[:, :, :, :, :, o0:o1]).reshape(G, taps, -1)
            y[n, :, o0:o1] = np.matmul(wm, cols).reshape(K, o1 - o0, OH, OW)
    return y
