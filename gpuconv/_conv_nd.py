"""conv1d / conv3d and their gradients on both backends (issue 18). docs/semantics.md ("conv1d and conv3d") has
the rules; this module the arithmetic. Inputs are validated arrays and a resolved ``ConvNdGeometry``.

* **Forward on CUDA: one launch of the N-D operation's algorithm** (the operation table's ``conv1d`` /
  ``conv3d`` forward, ``_cuda/ops.py``): ``igemm`` (``conv1d_igemm`` / ``conv3d_igemm``, conv2d's implicit GEMM
  with the 1-D / 3-D gather geometry; split-K where conv2d's rule splits) or ``igemm_tc`` (``conv1d_igemm_tc``
  / ``conv3d_igemm_tc``, conv2d_igemm_tc's tensor-core body with the same geometries: float32 as TF32, float16;
  sm_80+). Every stride, padding, dilation, groups, flip, bias, activation; ``last_kernel()`` names the one
  kernel. Which one (``cuda_1d_plan`` / ``cuda_3d_plan``, their shared tail ``_cuda_nd_plan``):

  - ``algo='igemm'`` / ``'igemm_tc'``: that algorithm; where it declines (its 32-bit rules; ``igemm_tc``:
    float64, a device below sm_80) its ValueError is raised, no fallback;
  - ``'auto'``: the N-D operation's heuristic (``select.choose_algo``: ``igemm_tc`` only where tensor cores
    are allowed, ``gpuconv.set_tensor_cores``, and pay, ``select.tensor_cores_pay``; else ``igemm``), except
    that 1-D ``'auto'`` with one input channel per group (depthwise-like, ``Cg == 1``) runs the height-1 view
    below with conv2d's heuristic (its depthwise kernel: an implicit GEMM would use one filter row of its 64
    or 128);
  - a policy (``gpuconv.cudnn``'s) is asked with the 2-D geometry the call maps to (1-D: the unit-height
    ``as_2d()``; 3-D: one depth tap's plane): a tensor-core answer runs ``igemm_tc``, ``'auto'`` runs
    ``'auto'``, any other answer ``igemm``;
  - any other 2-D algorithm name runs the 2-D form with it (below);
  - where the chosen N-D algorithm declines and was not named, the 2-D form runs with the policy's answer
    (or ``'auto'``) and the record says why.

  The 2-D forms: **1-D**, the 2-D convolution of unit height: ``x (N, C, L)`` seen as ``(N, C, 1, L)``,
  ``w (K, Cg, S)`` as ``(K, Cg, 1, S)`` (views, no copy), the geometry's ``as_2d()`` (``R = 1``, no height
  padding), run by the 2-D kernels (and by the NumPy strategies); the record's entry then reads ``conv1d as
  conv2d of height 1[ (<reason>)]: <kernel>``. The 1-D gradients on CUDA arrays are their
  own kernels (below); the NumPy path's, and CUDA's where a kernel declines, are the 2-D gradients' lowering
  (``_conv_lowering``) on the same views. **3-D**, the depth-tap lowering below, with the 2-D algorithm per
  tap; the record's first entry says why (``conv3d depth-tap lowering (<reason>)``). The NumPy forward runs
  ``numpy_im2col3d`` (``_numpy/conv3d.py``, one GEMM over all taps) where it fits its workspace, else the
  lowering.
* **3-D gradients, CUDA** (docs/gradients.md, "conv3d gradients on CUDA"): the filter gradient is ONE
  launch of ``conv3d_backward_filter_igemm`` (``_cuda/conv_backward_filter.py``: conv2d's backward-filter
  implicit GEMM with the 3-D gather geometry, reduction over ``N*OD*P*Q`` in fixed split ranges, then
  ``gemm_splitk_reduce`` in fixed order), or for depthwise geometries (``Cg == 1``, ``groups > 1``) of
  ``conv3d_backward_filter_depthwise`` (the 2-D depthwise body with the 3-D geometry), the operation
  table's order deciding. The data gradient: next item. The bias gradient (``backward_bias``) is
  ``conv2d_backward_bias`` over ``gy`` seen as ``(N, K, 1, OD*P*Q)``. ``backward_filter`` / ``backward_bias``
  take ``out`` (``conv3d_backward``'s activation: the derivative fused in those kernels).
* **1-D and 3-D data gradients, CUDA** (``backward_data``; docs/gradients.md, "conv1d and conv3d data
  gradients on CUDA"):
  ONE launch of ``conv1d_backward_data`` / ``conv3d_backward_data`` (``_cuda/conv_backward_data.py``,
  kernels/conv2d_backward_data.cu: conv2d's one-launch data gradient with the 1-D / 3-D gather geometry):
  every stride phase in it (``blockIdx.z``, up to 64 per launch, one more launch per further 64), each a
  stride-1 correlation of ``gy`` with its packed sub-filter stored straight into ``gx``; phases no tap
  reaches write their zeros. ``out=`` (with ``geom.activation``): the activation's derivative is applied in
  the kernel's gather (its ACT template argument). Where the kernel declines (its 32-bit rule) the lowering
  runs, the record's first entry saying why (``conv1d height-1 lowering (<reason>)``: the 2-D gradient of
  the height-1 view; ``conv3d depth-tap lowering (<reason>)``), with ``out`` after an elementwise pre-pass
  ``gy * act'(out)`` (``_grad_conv.activation_derivative_times``) that the record names. The 1-D filter
  gradient on CUDA arrays is ONE ``conv1d_backward_filter_igemm`` / ``_depthwise`` launch (conv2d's
  backward-filter bodies with the 1-D geometry, ``backward_filter``), its bias ``conv2d_backward_bias`` over
  ``(N, K, 1, L)``, the derivative fused in both; the NumPy path's 1-D gradients are the height-1 lowering
  (after the pre-pass with ``out``).
* **3-D gradients, NumPy** (``_numpy/conv3d_grad.py``; docs/gradients.md, "conv3d gradients on NumPy"): the
  2-D NumPy gradients' form in N-D, at the top of ``backward_data`` / ``backward_filter``: the data gradient
  ``numpy_col2im3d`` (per chunk of samples, or of output depths in decreasing order, ONE GEMM ``w^T @ gy``
  per group and col2im's fixed-order adds; depthwise-like layers, ``Cg == 1`` and ``Kg <= 2``, multiply-add
  instead: ``numpy_depthwise_data3d``), the filter gradient ``numpy_im2col3d_filter`` (per chunk, the im2col
  gather of ``x`` and ONE GEMM ``gy @ cols^T`` per group and sample, summed in order), both chunked within
  the workspace limit, float16 in float32 rounded once, bitwise deterministic; the module's entry points
  take ``out`` / ``activation`` (the derivative applied in the chunk copies of ``gy``). Where one output
  depth's chunk does not fit the workspace, the lowering below runs, the record's first entry saying so
  (``conv3d depth-tap lowering (one output depth's chunk does not fit the workspace limit)``).
* **3-D, the depth-tap lowering** (the NumPy path's gradients where ``conv3d_grad`` declines, and CUDA where
  the kernels decline; the forward as said above):
  ``y[n, :, od] = sum_t conv2d(x[n, :, od*sd - pd + t*dd], w[:, :, t])``. For each depth tap ``t`` in order
  ``0..T-1``, the output depths whose tap reads inside the input (``_geometry.tap_outputs``) are gathered as
  one batch of ``(sample, depth)`` planes, ``(N*n, C, H, W)`` (``n <= OD``; a copy, in the accumulation
  dtype), convolved by ONE batched 2-D call (``plane(N*n)``), and added into the accumulator
  ``acc (N, K, OD, OH, OW)``. Taps are added in a fixed order and every 2-D kernel
  computes each output in one thread in a fixed order: bitwise deterministic. Bias and activation are
  applied once after the sum. float16 is gathered and computed in float32 (the 2-D calls run their float32
  kernels) and rounded once at the end, as a float16 conv2d accumulates in float32.
  A tap that reads the depth padding adds ``0 * w`` (docs/semantics.md: padding is a zero multiplied like
  any input): zero, or NaN for a filter slice holding inf or NaN, which is added there too (one check of
  the weight, no work for finite weights).
  Gradients, the same way: backward data runs, per tap, the 2-D input gradient of the tap's planes
  (``_conv_lowering.backward_data``) and adds it into the input depths the tap read; backward filter runs
  per tap the 2-D filter gradient over the ``N*n`` planes (``_conv_lowering.backward_filter``): filter slice
  ``gw[:, :, t]``, written once.

Memory beyond the result, 1-D and 3-D forward: ``conv1d_igemm`` / ``conv3d_igemm`` none unsplit, with split-K
the workspace ``splits * K * N * outputs per image`` of the accumulation type (float32, float64 for float64;
``_cuda/igemm_nd.py``); ``igemm_tc`` the packed weights, ``groups * ceil(Kg/BM)*BM * taps * ceil(Cg/BK)*BK``
values of w's size (twice that while packed; ``conv_igemm_tc.pack_weights``); C-contiguous copies of
non-contiguous inputs aside.
CUDA 3-D gradients: the filter gradient, the split workspace ``splits*K*Cg*KD*R*S`` accumulation-type values
(``splits <= 8``; ``conv_backward_filter.workspace_bytes``) plus contiguous copies of non-contiguous ``x`` /
``gy``; the 1-D / 3-D data gradient, the packed sub-filters (at most ``|w|``) and contiguous copies of a
non-contiguous ``gy`` / ``out`` (the pre-pass, where one runs: one array of ``gy``'s size).
The lowering: the accumulator is the output itself for float32 / float64 (float16: one float32
output-sized buffer); per tap, the gathered planes of the input (at most ``N*OD*C*H*W`` values, as many as
the input when stride and dilation are 1) and the tap's 2-D result (at most output-sized), freed before
the next tap; plus the 2-D call's own workspace. Backward data likewise (an input-sized accumulator in
float32 for float16, per tap the gathered ``gy`` planes and the 2-D result); backward filter, the gathered
``x`` and ``gy`` planes of one tap.
"""

from __future__ import annotations

import numpy as np

from . import _conv_lowering
from ._backend import CudaBackend
from ._geometry import LEAKY_RELU_SLOPE, tap_outputs
from ._geometry_nd import ConvNdGeometry


def compute_dtype(dtype) -> np.dtype:
    """float16 is computed in float32; float32 and float64 in themselves."""
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)


def resolve_algo(backend, geom2d, dtype, algo) -> str:
    """``algo`` for one 2-D call: a name or ``'auto'`` as it is, or a policy ``algo(geom2d, dtype, runtime)``
    (``gpuconv.cudnn``'s tensor-core and auto-tune mapping) asked on the CUDA path; NumPy runs ``'auto'``."""
    if not callable(algo):
        return algo
    return algo(geom2d, np.dtype(dtype), backend.runtime) if isinstance(backend, CudaBackend) else "auto"


def apply_epilogue(xp, acc, b, activation) -> None:
    """In place on ``acc`` (N, K, ...): ``+ bias`` then the activation (the kernels' formulas; NaN propagates)."""
    if b is not None:
        acc += b.astype(acc.dtype, copy=False).reshape((1, -1) + (1,) * (acc.ndim - 2))
    if activation == "relu":
        xp.maximum(acc, 0, out=acc)
    elif activation == "leaky_relu":
        acc[...] = xp.where(acc < 0, acc * acc.dtype.type(LEAKY_RELU_SLOPE), acc)
    elif activation == "sigmoid":
        acc[...] = 1 / (1 + xp.exp(-acc))
    elif activation == "tanh":
        xp.tanh(acc, out=acc)


def tap_range(geom: ConvNdGeometry, t: int, n_out: int, size: int):
    """Depth tap ``t``: ``(lo, hi, d0)``: outputs ``[lo, hi)`` (of ``n_out``) read input depths ``d0, d0 + sd,
    ...`` inside ``[0, size)``."""
    (sd, *_), ((pd, _), *_), (dd, *_) = geom.stride, geom.padding, geom.dilation
    return tap_outputs(0, n_out, 0, size, t * dd - pd, sd)


def _planes(xp, a, lo, hi, step, ct):
    """``a[:, :, lo:hi:step]`` (N, C, n, H, W) as ``(N*n, C, H, W)``, contiguous, in ``ct``: one copy."""
    s = a[:, :, lo:hi:step]
    N, C, n, H, W = s.shape
    out = xp.empty((N, n, C, H, W), dtype=ct)
    out[...] = s.transpose(0, 2, 1, 3, 4)
    return out.reshape(N * n, C, H, W)


def effective_weight(w, geom: ConvNdGeometry):
    """``w``, or rotated by 180 degrees in every spatial dimension (``flip``)."""
    return w[(slice(None), slice(None)) + (slice(None, None, -1),) * geom.nd] if geom.flip else w


# --------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------

def forward(backend, x, w, b, geom: ConvNdGeometry, algo="auto"):
    """``y (N, K, *output_size)`` (new, C-contiguous, x's dtype) and the list of kernel ids that ran."""
    if geom.nd == 1:
        return _forward_1d(backend, x, w, b, geom, algo)
    return _forward_3d(backend, x, w, b, geom, algo)


def _ask_policy(backend, g2, dtype, algo):
    """An algorithm policy (``algo`` callable: ``gpuconv.cudnn``'s) asked with the 2-D geometry ``g2`` the N-D
    call maps to: ``(algo, policy)``, ``policy`` the answer (the 2-D algorithm the fallback form runs where the
    N-D kernel declines) and ``algo`` the N-D algorithm it maps to: ``'igemm_tc'`` for a tensor-core answer,
    ``'auto'`` for ``'auto'``, ``'igemm'`` for any other. A named ``algo`` comes back as it is, ``policy``
    None."""
    if not callable(algo):
        return algo, None
    from ._cuda import ops
    answer = resolve_algo(backend, g2, dtype, algo)
    a2 = ops.operation("conv2d").algorithms.get(answer)
    return ("igemm_tc" if a2 is not None and a2.tensor_cores else "auto" if answer == "auto" else "igemm"), answer


def _cuda_nd_plan(backend, geom: ConvNdGeometry, dtype, algo, policy, named_2d: str | None):
    """The shared tail of ``cuda_1d_plan`` / ``cuda_3d_plan``: ``(nd_algo, None, None)`` to run the N-D
    operation's algorithm ``nd_algo`` (``igemm`` or ``igemm_tc``), or ``(None, algo2d, reason)`` for the 2-D
    form with ``algo2d``: a 2-D algorithm named by ``algo`` (reason ``named_2d`` with ``{algo}`` filled, or
    None), or the N-D algorithm declines (its decline rule, or the device's compute capability): raised when
    it was named, else the reason, the 2-D form running the policy's answer or ``'auto'``. ``'auto'`` is the
    N-D operation's heuristic (``select.choose_algo``: ``igemm_tc`` only where tensor cores are allowed and
    pay)."""
    from ._cuda import ops, select
    op = ops.operation(f"conv{geom.nd}d")
    if algo != "auto" and algo not in op.algorithms:
        return None, algo, None if named_2d is None else named_2d.format(algo=algo)
    name = select.choose_algo(geom, dtype, backend.runtime, op.op) if algo == "auto" else algo
    reason = (op.algorithms[name].decline_reason(geom, np.dtype(dtype))
              or select.device_reason(name, backend.runtime, op.op))
    if reason is None:
        return name, None, None
    if algo != "auto" and policy is None:
        raise ValueError(reason)  # asked for by name: no fallback
    return None, policy or "auto", reason


def cuda_1d_plan(backend, geom: ConvNdGeometry, dtype, algo):
    """What the CUDA forward of a 1-D call runs (the module docstring's rule): ``(nd_algo, None, None)`` for
    the conv1d operation's ``nd_algo``, or ``(None, algo2d, reason)`` for the height-1 view with ``algo2d``
    (reason None: a 2-D algorithm named by ``algo``)."""
    algo, policy = _ask_policy(backend, geom.as_2d(), dtype, algo)
    if algo == "auto" and policy is None and geom.Cg == 1:
        return None, "auto", "one input channel per group: conv2d's heuristic (its depthwise kernel)"
    return _cuda_nd_plan(backend, geom, dtype, algo, policy, None)


def _run_nd(backend, name, x, w, b, geom):
    """One N-D algorithm of the conv1d / conv3d operation on the CUDA path: ``(y, [kernel id])``."""
    from ._cuda import igemm_nd, ops
    y, kernel = igemm_nd.run(backend.runtime, ops.operation(f"conv{geom.nd}d").algorithms[name], x, w, b, geom)
    return y, [kernel]


def _forward_1d(backend, x, w, b, geom, algo):
    why = None
    if isinstance(backend, CudaBackend):
        nd_algo, algo, why = cuda_1d_plan(backend, geom, x.dtype, algo)
        if nd_algo is not None:
            return _run_nd(backend, nd_algo, x, w, b, geom)
    g2 = geom.as_2d()
    y, kernel = backend.conv2d(x[:, :, None, :], w[:, :, None, :], b, g2, resolve_algo(backend, g2, x.dtype, algo))
    return y[:, :, 0, :], [f"conv1d as conv2d of height 1{'' if why is None else f' ({why})'}: {kernel}"]


def cuda_3d_plan(backend, geom: ConvNdGeometry, dtype, algo):
    """What the CUDA forward of a 3-D call runs (the module docstring's rule): ``(nd_algo, None, None)`` for
    the conv3d operation's ``nd_algo``, or ``(None, algo2d, reason)`` for the depth-tap lowering with
    ``algo2d`` per tap."""
    algo, policy = _ask_policy(backend, geom.plane(geom.N * geom.output_size[0]), compute_dtype(dtype), algo)
    return _cuda_nd_plan(backend, geom, dtype, algo, policy, "algo={algo!r} names a 2-D algorithm, run per depth tap")


def _forward_3d(backend, x, w, b, geom, algo):
    xp = backend.xp
    ct = compute_dtype(x.dtype)
    prefix = []
    if isinstance(backend, CudaBackend):
        nd_algo, algo, why = cuda_3d_plan(backend, geom, x.dtype, algo)
        if nd_algo is not None:
            return _run_nd(backend, nd_algo, x, w, b, geom)
        prefix = [f"conv3d depth-tap lowering ({why})"]
    else:
        from ._numpy import conv3d as numpy_conv3d
        if numpy_conv3d.use_im2col3d(geom):
            acc = numpy_conv3d.conv3d_im2col(x, effective_weight(w, geom), geom, ct)
            apply_epilogue(np, acc, b, geom.activation)
            return (acc if acc.dtype == x.dtype else acc.astype(x.dtype)), ["numpy_im2col3d"]
    N, K = geom.N, geom.K
    D, T, OD = geom.input_size[0], geom.kernel_size[0], geom.output_size[0]
    sd = geom.stride[0]
    acc = xp.zeros(geom.output_shape, dtype=ct)
    we = effective_weight(w, geom)
    nonfinite = None if bool(xp.isfinite(we).all()) else ~xp.isfinite(we).reshape(K, -1, T, *we.shape[3:])
    kernels = []
    for t in range(T):
        lo, hi, d0 = tap_range(geom, t, OD, D)
        if nonfinite is not None:  # this tap reads the depth padding outside [lo, hi): 0 * w there
            bad = nonfinite[:, :, t].reshape(K, -1).any(axis=1)
            nan_where_bad = xp.where(bad, ct.type(np.nan), ct.type(0)).reshape(1, K, 1, 1, 1)
            acc[:, :, :lo] += nan_where_bad
            acc[:, :, hi:] += nan_where_bad
        n = hi - lo
        if n <= 0:
            continue
        xs = _planes(xp, x, d0, d0 + (n - 1) * sd + 1, sd, ct)
        wt = xp.ascontiguousarray(we[:, :, t], dtype=ct)
        g2 = geom.plane(N * n)
        y, kernel = backend.conv2d(xs, wt, None, g2, resolve_algo(backend, g2, ct, algo))
        del xs
        acc[:, :, lo:hi] += y.reshape(N, n, K, *geom.output_size[1:]).transpose(0, 2, 1, 3, 4)
        del y
        kernels.append(f"conv3d depth tap {t}/{T} (conv2d over {N}x{n} planes): {kernel}")
    apply_epilogue(xp, acc, b, geom.activation)
    out = acc if acc.dtype == x.dtype else acc.astype(x.dtype)
    return out, prefix + (kernels or ["none (every depth tap reads padding)"])


# --------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------

def backward_data(backend, gy, w, geom: ConvNdGeometry, size, out=None):
    """``gx (N, C, *size)`` from ``gy (N, K, ...)`` (``gy`` may be shorter than the forward output, as in a
    transposed convolution with ``output_padding >= stride``). Returns ``(gx, kernel_ids)``.

    CUDA arrays: ONE ``conv1d_backward_data`` / ``conv3d_backward_data`` launch over every stride phase
    (``_cuda/conv_backward_data.py``; one more per 64 phases), where its 32-bit rule declines the lowering
    (1-D: the 2-D gradient of the height-1 view; 3-D: the depth-tap lowering), the record's first entry
    saying why. NumPy arrays: 3-D, ``numpy_col2im3d`` / ``numpy_depthwise_data3d`` (``_numpy/conv3d_grad.py``)
    unless it declines (the record's first entry says why); otherwise, and in 1-D, the same lowerings.

    ``out`` (with ``geom.activation``): the forward's activated output, laid out as ``gy``; the result is then
    the gradient with respect to the pre-activation, ``gy`` times the activation's derivative computed from
    ``out``: fused in the kernel's gather on CUDA (its ACT template argument) and in the NumPy 3-D chunk
    copies, elsewhere an elementwise pre-pass (``_derivative_prepass``) the record names."""
    if out is not None and geom.activation is None:
        raise ValueError("backward_data: out (the activated forward output) is only meaningful with an activation")
    prefix = []
    if isinstance(backend, CudaBackend):
        from ._cuda import conv_backward_data
        why = conv_backward_data.decline_reason(geom, gy.dtype)
        if why is None:
            return conv_backward_data.launch(backend.runtime, gy, w, out, geom, *size)
        what = "conv1d height-1 lowering" if geom.nd == 1 else "conv3d depth-tap lowering"
        prefix = [f"{what} ({why})"]
    elif geom.nd == 3:  # NumPy: N-D col2im (_numpy/conv3d_grad.py), the derivative in its chunk copies
        from ._numpy import conv3d_grad
        gx, prefix = conv3d_grad.data_gradient(gy, w, geom, size, out, None if out is None else geom.activation)
        if gx is not None:
            return gx, prefix
    gy, pre = _derivative_prepass(backend, gy, out, geom, "data", "the lowering runs it"
                                  if isinstance(backend, CudaBackend) else "NumPy path: the lowering runs it")
    prefix += pre
    if geom.nd == 1:
        g2 = geom.as_2d()
        gx, ks = _conv_lowering.backward_data(backend, gy[:, :, None, :], w[:, :, None, :], g2, 1, size[0])
        return gx[:, :, 0, :], prefix + [f"conv1d as conv2d of height 1: {k}" for k in ks]
    xp = backend.xp
    ct = compute_dtype(gy.dtype)
    N, C = gy.shape[0], geom.C
    D, T, sd = size[0], geom.kernel_size[0], geom.stride[0]
    gx = xp.zeros((N, C) + tuple(size), dtype=ct)
    we = effective_weight(w, geom)
    kernels = []
    for t in range(T):
        lo, hi, d0 = tap_range(geom, t, gy.shape[2], D)
        n = hi - lo
        if n <= 0:
            continue
        gys = _planes(xp, gy, lo, hi, 1, ct)
        wt = xp.ascontiguousarray(we[:, :, t], dtype=ct)
        g2 = geom.plane(N * n, size[1:])
        gxs, ks = _conv_lowering.backward_data(backend, gys, wt, g2, size[1], size[2])
        del gys
        gx[:, :, d0:d0 + (n - 1) * sd + 1:sd] += gxs.reshape(N, n, C, *size[1:]).transpose(0, 2, 1, 3, 4)
        kernels += [f"conv3d depth tap {t}/{T} (conv2d input gradient over {N}x{n} planes): {k}" for k in ks]
    return (gx if gx.dtype == gy.dtype else gx.astype(gy.dtype)), (prefix + kernels if kernels else kernels)


def _derivative_prepass(backend, gy, out, geom, what, why):
    """``gy`` times the activation's derivative from ``out`` (``_grad_conv.activation_derivative_times``, the
    pre-pass conv2d_backward uses) and the record's entry saying so; ``(gy, [])`` without ``out``."""
    if out is None:
        return gy, []
    if tuple(out.shape) != tuple(gy.shape):
        raise ValueError(f"{what} gradient: out of size {tuple(out.shape)} must match grad_output of size "
                         f"{tuple(gy.shape)}")
    from ._grad_conv import activation_derivative_times
    return (activation_derivative_times(backend.xp, gy, out, geom.activation),
            [f"activation derivative pre-pass for the {what} gradient ({why})"])


def backward_filter(backend, x, gy, geom: ConvNdGeometry, out=None):
    """``gw (K, Cg, *kernel_size)`` from ``x (N, C, ...)`` and ``gy (N, K, ...)``, ``N > 0``; ``out`` (same
    shape as ``gy``) the activated forward output: ``geom.activation``'s derivative multiplies ``gy`` (None:
    none). Returns ``(gw, kernel_ids)`` (empty when every tap reads padding: zeros). CUDA arrays: the
    operation table's ``(conv1d | conv3d, backward_filter)`` kernels (depthwise, igemm: the first that takes
    the call), the derivative fused; where both decline, the lowering (1-D: the 2-D gradient of the unit-height
    view; 3-D: the depth-tap lowering) with the derivative as a pre-pass, the record's first entry saying
    why. NumPy arrays: 3-D, ``numpy_im2col3d_filter`` (``_numpy/conv3d_grad.py``, the derivative applied in
    its chunk copies of ``gy``) unless it declines; else the lowering, the derivative a pre-pass."""
    prefix = []
    if not isinstance(backend, CudaBackend) and geom.nd == 3:  # N-D im2col, unless it declines (the record)
        from ._numpy import conv3d_grad
        gw, prefix = conv3d_grad.filter_gradient(x, gy, geom, out, None if out is None else geom.activation)
        if gw is not None:
            return gw, prefix
    if isinstance(backend, CudaBackend):
        from ._cuda.ops import operation
        algos = operation(f"conv{geom.nd}d", "backward_filter").algorithms  # depthwise, igemm: first that takes it
        reasons = [a.decline_reason(geom, x.dtype) for a in algos.values()]
        for a, why in zip(algos.values(), reasons):
            if why is None:
                gw, kernel = a.launch(backend.runtime, x, gy, out, geom)
                return gw, [kernel]
        lowering = "conv1d as conv2d of height 1" if geom.nd == 1 else "conv3d depth-tap lowering"
        prefix = [f"{lowering} ({'; '.join(reasons)})"]
    gy, pre = _derivative_prepass(backend, gy, out, geom, "filter",
                                  "the lowering runs it" if prefix else "NumPy arrays: the lowering runs it")
    prefix += pre
    if geom.nd == 1:
        gw, k = _conv_lowering.backward_filter(backend, x[:, :, None, :], gy[:, :, None, :], geom.as_2d())
        return gw[:, :, 0, :], [] if k is None else prefix + [f"conv1d as conv2d of height 1: {k}"]
    xp = backend.xp
    ct = compute_dtype(gy.dtype)
    N, T, D, sd = geom.N, geom.kernel_size[0], geom.input_size[0], geom.stride[0]
    gw = xp.zeros((geom.K, geom.Cg) + geom.kernel_size, dtype=ct)
    kernels = []
    for t in range(T):
        lo, hi, d0 = tap_range(geom, t, geom.output_size[0], D)
        n = hi - lo
        if n <= 0:
            continue
        xs = _planes(xp, x, d0, d0 + (n - 1) * sd + 1, sd, ct)
        gys = _planes(xp, gy, lo, hi, 1, ct)
        gwt, k = _conv_lowering.backward_filter(backend, xs, gys, geom.plane(N * n))
        gw[:, :, t] = gwt
        if k is not None:
            kernels.append(f"conv3d depth tap {t}/{T} (conv2d filter gradient over {N}x{n} planes): {k}")
    gw = effective_weight(gw, geom)
    return xp.ascontiguousarray(gw, dtype=gy.dtype), (prefix + kernels if kernels else kernels)


def backward_bias(backend, gy, out=None, activation=None):
    """``(gb (K,), kernel id)``: ``gy (N, K, *spatial)`` summed over all but K (float16 in float32, rounded
    once), after multiplying by ``activation``'s derivative from ``out`` (the activated forward output, same
    shape as ``gy``; None: no derivative). 1-D and 3-D on CUDA arrays: ``conv2d_backward_bias`` over ``gy``
    viewed as ``(N, K, 1, L)`` / ``(N, K, 1, OD*P*Q)`` (one block per filter, a fixed-order tree, the
    derivative fused); otherwise NumPy's / CuPy's sum (after the pre-pass with an activation)."""
    N, K = gy.shape[:2]
    L = int(np.prod(gy.shape[2:]))
    act = activation if out is not None else None
    if isinstance(backend, CudaBackend) and gy.ndim in (3, 5) and gy.size > 0:
        from ._cuda import conv_backward_filter as bwf
        from ._geometry import conv_geometry
        # output (N, K, 1, L): the bias kernel's view
        g = conv_geometry((N, 1, 1, L), (K, 1, 1, 1), None, activation=act)
        view = (N, K, 1, L)
        return bwf.launch_bias(backend.runtime, backend.xp.ascontiguousarray(gy).reshape(view),
                               None if act is None else backend.xp.ascontiguousarray(out).reshape(view), g)
    if act is not None:
        from ._grad_conv import activation_derivative_times
        gy = activation_derivative_times(backend.xp, gy, out, act)
    ct = compute_dtype(gy.dtype)
    xp = backend.xp
    gb = xp.sum(gy, axis=(0,) + tuple(range(2, gy.ndim)), dtype=ct).astype(gy.dtype, copy=False)
    return gb, f"{xp.__name__}.sum"
