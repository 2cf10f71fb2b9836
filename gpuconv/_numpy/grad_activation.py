"""The activation's derivative on the NumPy path (``conv2d_backward(..., activation=..., output=...)``):
:func:`act_backward_into`, the one NumPy form of the derivative formulas (CUDA's ``act_backward`` in
kernels/common.cuh; the pre-pass ``_grad_conv.activation_derivative_times`` uses it on NumPy arrays), and
:func:`load_gy`, which the chunked gradients of ``conv_grad`` (``numpy_col2im``, ``numpy_im2col_filter``,
``numpy_depthwise_filter_planes``) call where they copy a chunk of ``gy``: the derivative is applied in
that copy, so no array of ``gy``'s size is made. :func:`bias_gradient`: the bias gradient by chunks when
no filter gradient's chunks sum it. docs/gradients.md, "Activation".
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .._geometry import LEAKY_RELU_SLOPE
from ._workspace import trim_workspace, workspace, workspace_limit

# A chunk's column buffer (conv_grad) stays near this size when the batch allows (large enough that BLAS
# runs at full speed and the per-chunk Python work vanishes; small enough not to thrash the caches more
# than the GEMM must); bias_gradient's chunks too.
CHUNK_BYTES = 32 * 2**20


def compute_dtype(dtype) -> np.dtype:
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)


# act_backward_into works on blocks of at most this many values: its temporaries (relu / leaky_relu's
# masks) stay this small, and a block stays in the cache across the formula's two or three passes (2**14
# took 1.5-1.9x the time of 2**16 on a ResNet-sized gy; 2**18 gains little). Under a small workspace
# limit the blocks shrink so that the temporaries take at most 1/8 of it (``block_values``).
DERIVATIVE_BLOCK = 2**16


class Derivative(NamedTuple):
    """``conv2d_backward``'s activation: ``out`` the activated forward output (``gy``'s shape)."""
    out: np.ndarray
    activation: str


def block_values(ct: np.dtype) -> int:
    """Values per block of ``act_backward_into`` in the compute dtype ``ct``: ``DERIVATIVE_BLOCK``, fewer
    (at least 64) where the temporaries of a block would be more than 1/8 of the workspace limit."""
    return min(DERIVATIVE_BLOCK, max(64, workspace_limit() // (8 * (2 * np.dtype(ct).itemsize + 1))))


# NumPy's ufunc loops buffer non-contiguous or cast operands: up to about this many bytes per call and
# thread (3 operands of 8192 values of 8 bytes). Like the buffers of the strategies' other ufunc calls
# on strided views, they are among the "few hundred KiB of small arrays" _workspace allows beyond the
# limit, not counted by temp_bytes (counting them would make small limits decline the fused path for the
# pre-pass, which takes a whole array of gy's size).
UFUNC_BUFFERS = 3 * 8192 * 8


def temp_bytes(act: Derivative | None, dtype) -> int:
    """Bytes of ``act_backward_into``'s temporaries (one block; the strategies leave them out of their
    workspace budget, per thread that applies the derivative): relu a mask as wide as the compute dtype
    and a bool one, leaky_relu also ``g`` in the compute dtype, sigmoid / tanh none."""
    if act is None or act.activation not in ("relu", "leaky_relu"):
        return 0
    ct = compute_dtype(dtype)
    item = ct.itemsize
    return block_values(ct) * (item + 1 + (item if act.activation == "leaky_relu" else 0)) + 3 * 128


def _blocks(shape, size):
    """Index tuples cutting an array of ``shape`` into blocks of at most ``size`` values (one index on each
    leading axis, a run of the cut axis, the axes after it whole)."""
    inner = 1
    for k in range(len(shape) - 1, -1, -1):
        if inner * shape[k] > size:
            step = max(1, size // inner)
            for lead in np.ndindex(*shape[:k]):
                for i in range(0, shape[k], step):
                    yield lead + (slice(i, i + step),)
            return
        inner *= shape[k]
    yield ()


def act_backward_into(dst: np.ndarray, g: np.ndarray, o: np.ndarray, activation: str) -> None:
    """``dst = g * act'(z)`` from ``o = act(z)``, elementwise, in ``dst``'s dtype (the compute dtype:
    float16 operands are computed in float32 and the result is NOT rounded to float16). The formulas and
    their order of operations are CUDA's ``act_backward`` (kernels/common.cuh), so float32 / float64
    give its bits (where NVRTC does not contract tanh's ``1 - o*o`` into an FMA) and the pre-pass's
    (``_grad_conv.activation_derivative_times``): relu ``o > 0 ? g : 0``; leaky_relu ``o > 0 ? g : g *
    0.01``; sigmoid ``(g * (1 - o)) * o``; tanh ``g * (1 - o*o)``. relu / leaky_relu select, so a NaN ``o``
    gives 0 / the slope and an infinite ``g`` where the derivative is 0 gives 0. ``g`` / ``o`` may be any
    views of ``dst``'s shape; done per block of ``block_values`` values (relu / leaky_relu's masks, and
    leaky_relu's ``g`` in the compute dtype, are the only temporaries, one block each)."""
    ct = dst.dtype
    one = ct.type(1)
    bits = np.dtype(f"i{ct.itemsize}")  # relu / leaky_relu select by bit masks (a masked copy is 8x slower)
    for idx in _blocks(dst.shape, block_values(ct)):
        d, gb, ob = dst[idx], g[idx], o[idx]
        if activation == "relu" or activation == "leaky_relu":
            keep = np.empty(d.shape, bits)  # all ones where o > 0 (NaN: not), else zeros
            np.copyto(keep, np.greater(ob, 0))
            np.negative(keep, out=keep)
            di = d.view(bits)
            if activation == "relu":
                np.copyto(d, gb)
                np.bitwise_and(di, keep, out=di)  # g, or +0 (CUDA's A(0))
            else:
                gc = np.empty(d.shape, ct)
                np.copyto(gc, gb)
                np.multiply(gc, ct.type(LEAKY_RELU_SLOPE), out=d)
                gi = gc.view(bits)
                np.bitwise_and(gi, keep, out=gi)
                np.invert(keep, out=keep)
                np.bitwise_and(di, keep, out=di)
                np.bitwise_or(di, gi, out=di)  # g where o > 0, else g * 0.01
        elif activation == "sigmoid":
            np.subtract(one, ob, out=d, dtype=ct)
            np.multiply(gb, d, out=d, dtype=ct)
            np.multiply(d, ob, out=d, dtype=ct)
        elif activation == "tanh":
            np.multiply(ob, ob, out=d, dtype=ct)
            np.subtract(one, d, out=d, dtype=ct)
            np.multiply(gb, d, out=d, dtype=ct)
        else:
            raise ValueError(f"act_backward_into: unknown activation {activation!r}")


def prepass_samples(gy: np.ndarray, gx_per_sample: int) -> int:
    """Samples per chunk of ``conv2d_backward``'s data-gradient pre-pass where the lowering runs (the
    derivative of a chunk of ``gy``, in the compute dtype and in ``gy``'s, then the lowering's ``gx`` of the
    chunk): those three take at most ``min(CHUNK_BYTES, workspace_limit() / 4)``, at least one sample."""
    N, item = gy.shape[0], gy.dtype.itemsize
    per_sample = math.prod(gy.shape[1:]) * (compute_dtype(gy.dtype).itemsize + item) + gx_per_sample * item
    return max(1, min(N, min(CHUNK_BYTES, workspace_limit() // 4) // max(1, per_sample)))


def load_gy(dst: np.ndarray, view, gy: np.ndarray, act: Derivative | None) -> None:
    """A chunk's copy of ``gy``: ``dst = view(gy)``, times the activation's derivative computed from
    ``view(act.out)`` (the same elements) when ``act`` is given: the derivative costs no array of its own."""
    if act is None:
        np.copyto(dst, view(gy))
    else:
        act_backward_into(dst, view(gy), view(act.out), act.activation)


def bias_gradient(gy: np.ndarray, act: Derivative) -> np.ndarray:
    """``sum_{n,p,q} gy * act'`` per filter, ``(K,)`` in the compute dtype, for ``conv2d_backward`` when no
    chunked filter gradient sums it (``backward_filter`` / ``depthwise_filter``'s ``bias``): per chunk of
    samples (of filters, then of rows, when one sample does not fit ``CHUNK_BYTES`` / the workspace
    limit), the derivative into a workspace chunk, summed, the chunks added in order."""
    ct = compute_dtype(gy.dtype)
    N, K, P, Q = gy.shape
    acc = np.zeros(K, ct)
    budget = max(1, min(CHUNK_BYTES, workspace_limit() - temp_bytes(act, gy.dtype) - 64) // ct.itemsize)
    n_chunk = max(1, min(N, budget // max(1, K * P * Q)))
    k_chunk = max(1, min(K, budget // max(1, P * Q)))
    p_chunk = max(1, min(P, budget // max(1, Q)))
    trim_workspace(workspace_limit() - temp_bytes(act, gy.dtype) - acc.nbytes)
    for n0 in range(0, N, n_chunk):
        for k0 in range(0, K, k_chunk):
            for p0 in range(0, P, p_chunk):
                sl = (slice(n0, n0 + n_chunk), slice(k0, k0 + k_chunk), slice(p0, p0 + p_chunk))
                shape = gy[sl].shape
                buf, = workspace((shape, ct))
                load_gy(buf, lambda a: a[sl], gy, act)
                acc[k0:k0 + shape[1]] += buf.sum(axis=(0, 2, 3))
    return acc
