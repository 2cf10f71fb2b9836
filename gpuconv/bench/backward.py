"""The gradient rows of the benchmark (``--backward``): a backward case's operands (the forward's input and
weight, the output's gradient ``g ~ N(0, 1)``), our gradient (``gpuconv.grad``, its kernels picked by
heuristic: one contender, 'auto'), PyTorch's (the ATen backward ops autograd runs for ``F.conv1d`` /
``F.conv2d`` / ``F.conv3d`` (``torch.nn.grad.conv<n>d_input`` / ``_weight``), ``F.max_pool2d`` /
``F.max_pool3d`` / ``F.avg_pool2d`` / ``F.adaptive_avg_pool2d``: cuDNN or PyTorch's own kernels on a GPU,
its CPU kernels on the CPU) and the reference with its magnitude for the check. The 1-D and 3-D layers
(``suite.ND_LAYERS``) go through the same functions, their ``op`` naming the gradient
(``gpuconv.grad.conv1d_input`` ...), with the case's per-axis stride, padding and dilation.

Max-pooling's gradient takes the indices of its forward: each side gets those of its own forward
(``return_indices=True``), computed before anything is timed; the reference uses PyTorch's.

The check (``stats.check_close`` with a ``magnitude``): a gradient sums many terms that cancel (a weight
gradient sums N x P x Q products), so ``|ours - ref|`` is bounded by ``atol + rtol * M`` with ``M`` the same
gradient of the operands' absolute values (the sum of ``|terms|`` per element, the scale rounding errors
grow with), computed by the reference's library; the tolerances are the forward's (``stats.TOLERANCES``).
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

import gpuconv
import gpuconv.grad

from .suite import Case


def operands(plat, case: Case, seed: int = 0) -> dict:
    """``x`` and ``w`` as the forward case has them (the same seeds), ``g`` the output's gradient."""
    x = plat.randn(case.input_shape, case.dtype, seed)
    w = None
    if case.is_conv:
        w = plat.randn(case.weight_shape, case.dtype, seed + 1, scale=1 / math.sqrt(case.fan_in))
    return dict(x=x, w=w, g=plat.randn(case.output_shape, case.dtype, seed + 3))


MAX_POOLS = ("max_pool2d", "max_pool3d")


def ours_indices(case: Case, x):
    """gpuconv's max-pooling indices of ``x`` (None for the other ops)."""
    if case.op not in MAX_POOLS:
        return None
    return getattr(gpuconv, case.op)(x, case.R, case.stride, case.pad, return_indices=True)[1]


def torch_indices(torch, case: Case, tx):
    if case.op not in MAX_POOLS:
        return None
    return getattr(torch.nn.functional, case.op)(tx, case.R, case.stride, case.pad, return_indices=True)[1]


def ours_gradient(case: Case, x, w, g, indices=None):
    """The case's gradient with ``gpuconv.grad`` (``x`` is used for its shape only, except for the weight
    gradient); ``conv1d`` / ``conv3d`` cases with ``conv1d_input`` ... and their dilation."""
    G, s, p = gpuconv.grad, case.stride, case.pad
    if case.direction == "backward_data":
        return getattr(G, f"{case.op}_input")(tuple(x.shape), w, g, s, p, case.dilation, case.groups)
    if case.direction == "backward_filter":
        return getattr(G, f"{case.op}_weight")(x, tuple(w.shape), g, s, p, case.dilation, case.groups)
    if case.op in MAX_POOLS:
        return getattr(G, f"{case.op}_input")(tuple(x.shape), g, indices, case.R, s, p)
    if case.op == "avg_pool2d":
        return G.avg_pool2d_input(tuple(x.shape), g, case.R, s, p)
    if case.op == "adaptive_avg_pool2d":
        return G.adaptive_avg_pool2d_input(tuple(x.shape), g)
    raise ValueError(f"no gradient for {case.op} {case.direction}")


def torch_gradient(torch, case: Case, tx, tw, tg, tindices=None):
    """The case's gradient with the ATen backward op PyTorch's autograd calls for it."""
    s, p, aten = case.stride, case.pad, torch.ops.aten
    if case.direction == "backward_data":
        return getattr(torch.nn.grad, f"{case.op}_input")(tuple(tx.shape), tw, tg, s, p, case.dilation, case.groups)
    if case.direction == "backward_filter":
        return getattr(torch.nn.grad, f"{case.op}_weight")(tx, tuple(tw.shape), tg, s, p, case.dilation,
                                                           case.groups)
    k, s2, p2 = list(case.window), list(case.strides), list(case.pads)
    if case.op in MAX_POOLS:
        backward_op = getattr(aten, f"{case.op}_with_indices_backward")
        return backward_op(tg, tx, k, s2, p2, [1] * case.dims, False, tindices)
    if case.op == "avg_pool2d":
        return aten.avg_pool2d_backward(tg, tx, k, s2, p2, False, True, None)
    if case.op == "adaptive_avg_pool2d":
        return aten._adaptive_avg_pool2d_backward(tg, tx)
    raise ValueError(f"no gradient for {case.op} {case.direction}")


def ours_call(case: Case, ops: dict):
    """Our contender's call (the max-pooling indices computed now, not timed)."""
    return partial(ours_gradient, case, ops["x"], ops["w"], ops["g"], ours_indices(case, ops["x"]))


def peer_call(plat, case: Case, ops: dict):
    """``(call, tx, tw)``: PyTorch's call on zero-copy views of the same arrays."""
    torch = plat.torch
    tx, tg = plat.to_torch(ops["x"]), plat.to_torch(ops["g"])
    tw = None if ops["w"] is None else plat.to_torch(ops["w"])
    return partial(torch_gradient, torch, case, tx, tw, tg, torch_indices(torch, case, tx)), tx, tw


def reference(plat, case: Case, ops: dict):
    """``(gradient, magnitude, description)``, float32: PyTorch with TF32 off; without PyTorch on a GPU
    gpuconv's NumPy path on host copies; without PyTorch on the CPU nothing (``None, None, None``)."""
    f32 = {k: None if v is None else v.astype(np.float32, copy=False) for k, v in ops.items()}
    if plat.torch is None:
        if plat.kind != "gpu":
            return None, None, None
        xp = plat.xp
        h = {k: None if v is None else xp.asnumpy(v) for k, v in f32.items()}
        idx = ours_indices(case, h["x"])
        ref = ours_gradient(case, h["x"], h["w"], h["g"], idx)
        mag = ours_gradient(case, *(None if h[k] is None else np.abs(h[k]) for k in "xwg"), idx)
        return xp.asarray(ref), xp.asarray(mag), "gpuconv's NumPy path (float32, host)"
    torch = plat.torch
    plat.set_tf32(False)
    t = {k: None if v is None else plat.to_torch(v) for k, v in f32.items()}
    tidx = torch_indices(torch, case, t["x"])
    ref = plat.from_torch(torch_gradient(torch, case, t["x"], t["w"], t["g"], tidx))
    mag = plat.from_torch(torch_gradient(torch, case, *(None if t[k] is None else t[k].abs() for k in "xwg"),
                                         tidx))
    plat.synchronize()
    return ref, mag, "PyTorch autograd's kernels, float32" + (", TF32 off" if plat.kind == "gpu" else "")
