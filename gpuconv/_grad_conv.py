"""Convolution gradients, public functions and their argument checks (``gpuconv.grad.conv2d_input`` /
``conv2d_weight`` / ``conv2d_bias``, ``gpuconv.conv2d_backward``, ``gpuconv.conv_transpose2d``).

Names and argument order mirror ``torch.nn.grad`` and ``torch.nn.functional.conv_transpose2d``. Each
function checks its arrays (``_backend.coerce_arrays``: the arrays decide the backend, nothing falls back),
resolves the *forward* call's geometry (``_geometry.conv_geometry``, so every padding form, 'same' with
flip's odd-pixel side and strided 'same' mean exactly what they mean for ``gpuconv.conv2d``), checks
``grad_output`` against that forward's output shape, and runs the lowering onto the forward convolution
(``_conv_lowering``). docs/gradients.md has the rules.
"""

from __future__ import annotations

import numpy as np

from . import _backend
from ._conv_lowering import backward_data, backward_filter, cuda_filter_algo, fused_data_reason
from ._geometry import (KERNEL_AXES, LEAKY_RELU_SLOPE, _is_int, _shape_str, as_pair, conv_geometry,
                        resolve_conv_padding)

__all__ = ["conv2d_input", "conv2d_weight", "conv2d_bias", "conv2d_backward", "conv_transpose2d"]


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------

def _size_arg(fn, name, size, ranks=(3, 4)):
    """``input_size`` / ``weight_size``: a tuple or list of non-negative ints of one of ``ranks``."""
    if not (isinstance(size, (tuple, list)) and all(_is_int(v) for v in size)):
        raise TypeError(f"{fn}(): {name} must be a tuple of ints, got {size!r}")
    if len(size) not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ValueError(f"{fn}(): {name} must have {want} entries, got {name}={_shape_str(size)}")
    if min(size) < 0:
        raise ValueError(f"{fn}(): {name} must not have negative entries, got {name}={_shape_str(size)}")
    return tuple(int(v) for v in size)


def _check_grad_output(fn, gy, geom, batched, what):
    """``grad_output`` must have the forward output's shape (unbatched when the input is); returns it 4-D.
    ``what`` describes where the forward shapes came from, for the message."""
    expected = geom.output_shape if batched else geom.output_shape[1:]
    if tuple(gy.shape) != tuple(expected):
        raise ValueError(f"{fn}(): expected grad_output of size {_shape_str(expected)} (the forward output "
                         f"of {what}), but got grad_output of size {_shape_str(gy.shape)}")
    return gy if batched else gy[None]


def _quiet():
    """NumPy's overflow / invalid warnings off for our own elementwise NumPy work (inf and NaN are data)."""
    return np.errstate(over="ignore", invalid="ignore")


def _compute_dtype(dtype) -> np.dtype:
    """float16 is computed in float32, float32 and float64 in themselves."""
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)


# --------------------------------------------------------------------------------------------
# the three gradients
# --------------------------------------------------------------------------------------------

def _data(backend, gy4, w, geom, H, W, out4=None):
    """``out4``: the activated forward output when ``conv2d_backward_data`` applies the activation's
    derivative itself (CUDA path, ``fused_data_reason`` None), else None."""
    if 0 in (geom.N, geom.C, H, W):
        return backend.xp.zeros((geom.N, geom.C, H, W), dtype=gy4.dtype), ["none (empty output)"]
    with _quiet():
        gx, kernels = backward_data(backend, gy4, w, geom, H, W, out4)
    return gx, kernels or ["none (no filter tap reaches the input: zeros)"]


def _filter(backend, x4, gy4, geom, out4=None):
    """``out4``: the activated forward output when the CUDA kernel applies the activation's derivative
    itself (``cuda_filter_algo``), else None (``gy4`` is then the gradient of the pre-activation)."""
    if geom.N == 0 or 0 in (geom.H, geom.W):
        return backend.xp.zeros(geom.weight_shape, dtype=gy4.dtype), "none (empty batch: zeros)"
    with _quiet():
        gw, kernel = backward_filter(backend, x4, gy4, geom, out4)
    return gw, kernel or "none (every tap reads padding: zeros)"


def _bias(backend, gy4):
    xp = backend.xp
    dtype = gy4.dtype
    acc = xp.sum(gy4, axis=(0, 2, 3), dtype=_compute_dtype(dtype))
    return acc.astype(dtype, copy=False), f"{xp.__name__}.sum"


def _bias_fused(backend, gy4, out4, geom):
    """The bias gradient with the activation's derivative applied by the kernel (CUDA path)."""
    from ._cuda.conv_backward_filter import launch_bias
    if geom.N == 0 or geom.P * geom.Q == 0:
        return backend.xp.zeros((geom.K,), dtype=gy4.dtype), "none (empty batch: zeros)"
    return launch_bias(backend.runtime, gy4, out4, geom)


def conv2d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1, *, flip=False):
    """Gradient of ``gpuconv.conv2d(input, weight, None, stride, padding, dilation, groups, flip=flip)``
    with respect to ``input``, as ``torch.nn.grad.conv2d_input``: shape ``input_size``, ``(N, C, H, W)``,
    or ``(C, H, W)`` with an unbatched ``(K, P, Q)`` ``grad_output``. ``weight`` ``(K, C/groups, R, S)``;
    ``grad_output`` must have the forward output's shape (``ValueError`` naming both shapes otherwise).
    Every argument form of ``conv2d`` (padding ints, pairs, ``((top, bottom), (left, right))``, 'valid',
    'same' with flip's odd-pixel side, strided 'same'), groups / depthwise, dilation, flip; float16
    (float32 accumulation), float32, float64; NumPy or CuPy arrays (the arrays decide). On CUDA arrays one
    ``conv2d_backward_data`` launch over every stride phase (docs/gradients.md); bitwise deterministic."""
    fn = "conv2d_input"
    backend, a = _backend.coerce_arrays(fn, weight=weight, grad_output=grad_output)
    w, gy = a["weight"], a["grad_output"]
    size = _size_arg(fn, "input_size", input_size)
    geom = conv_geometry(size, tuple(w.shape), None, stride, padding, dilation, groups, flip)
    batched = len(size) == 4
    gy4 = _check_grad_output(fn, gy, geom, batched,
                             f"input_size={_shape_str(size)} and weight of size {_shape_str(w.shape)}")
    gx, kernels = _data(backend, gy4, w, geom, geom.H, geom.W)
    _backend.record("conv2d", backend.name, *kernels, direction="backward_data")
    return gx if batched else gx[0]


def conv2d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1, *, flip=False):
    """Gradient of ``gpuconv.conv2d(input, weight, ...)`` with respect to ``weight``, as
    ``torch.nn.grad.conv2d_weight``: shape ``weight_size`` ``(K, C/groups, R, S)``. ``input`` ``(N, C, H, W)``
    or ``(C, H, W)``; ``grad_output`` the forward output's shape. Argument forms, dtypes and arrays as
    ``conv2d_input``; with ``flip=True`` the gradient of the true convolution (the correlation's filter
    gradient rotated by 180 degrees). Sums over ``N, P, Q`` in the accumulation dtype (float32 for float16),
    rounded once; bitwise deterministic (no atomics)."""
    fn = "conv2d_weight"
    backend, a = _backend.coerce_arrays(fn, input=input, grad_output=grad_output)
    x, gy = a["input"], a["grad_output"]
    wsize = _size_arg(fn, "weight_size", weight_size, ranks=(4,))
    geom = conv_geometry(tuple(x.shape), wsize, None, stride, padding, dilation, groups, flip)
    batched = x.ndim == 4
    gy4 = _check_grad_output(fn, gy, geom, batched,
                             f"input of size {_shape_str(x.shape)} and weight_size={_shape_str(wsize)}")
    gw, kernel = _filter(backend, x if batched else x[None], gy4, geom)
    _backend.record("conv2d", backend.name, kernel, direction="backward_filter")
    return gw


def conv2d_bias(grad_output):
    """Gradient of ``conv2d``'s bias: ``grad_output`` ``(N, K, P, Q)`` (or ``(K, P, Q)``) summed over
    ``N, P, Q`` -> ``(K,)``, float16 summed in float32 and rounded once."""
    fn = "conv2d_bias"
    backend, a = _backend.coerce_arrays(fn, grad_output=grad_output)
    gy = a["grad_output"]
    if gy.ndim not in (3, 4):
        raise ValueError(f"{fn}(): expected grad_output of 3 (unbatched) or 4 (batched) dimensions, "
                         f"(N, K, P, Q), but got grad_output of size {_shape_str(gy.shape)}")
    gb, kernel = _bias(backend, gy if gy.ndim == 4 else gy[None])
    _backend.record("conv2d", backend.name, kernel, direction="backward_bias")
    return gb


# --------------------------------------------------------------------------------------------
# conv2d_backward: the three at once, with the activation's derivative
# --------------------------------------------------------------------------------------------

def activation_derivative_times(xp, gy, out, activation):
    """The pre-pass: ``gy * act'(pre-activation)`` computed from ``out = act(pre-activation)`` (PyTorch's
    backward formulas): relu ``out > 0``; leaky_relu 1 where ``out > 0`` else 0.01 (``out > 0`` exactly
    where the input is, so the value at 0 is PyTorch's slope); sigmoid ``out*(1 - out)``; tanh ``1 -
    out^2``. float16 is computed in float32 and rounded once. On NumPy arrays by
    ``_numpy.grad_activation.act_backward_into`` (the formulas the NumPy strategies fuse)."""
    ct = _compute_dtype(gy.dtype)
    if xp is np:
        from ._numpy.grad_activation import act_backward_into
        r = np.empty(gy.shape, ct)
        act_backward_into(r, gy, out, activation)
        return r.astype(gy.dtype, copy=False)
    g, o = gy.astype(ct, copy=False), out.astype(ct, copy=False)
    if activation == "relu":
        r = xp.where(o > 0, g, xp.zeros((), dtype=ct))
    elif activation == "leaky_relu":
        r = xp.where(o > 0, g, g * ct.type(LEAKY_RELU_SLOPE))
    elif activation == "sigmoid":
        r = g * (1 - o) * o
    else:  # tanh
        r = g * (1 - o * o)
    return r.astype(gy.dtype, copy=False)


def check_activation_output(fn, activation, out, gy, what):
    """The combined backwards' rule (conv2d_backward, conv1d_backward, conv3d_backward): with an
    ``activation``, ``output`` (the forward's activated result) is required and shaped as ``grad_output``."""
    if activation is None:
        return
    if out is None:
        raise ValueError(f"{fn}(): activation={activation!r} needs output, the forward result (the "
                         f"activated value), to compute the activation's derivative; got output=None")
    if tuple(out.shape) != tuple(gy.shape):
        raise ValueError(f"{fn}(): expected output of size {_shape_str(gy.shape)} (the forward output "
                         f"of {what}), but got output of size {_shape_str(out.shape)}")


def _output_mask(mask):
    if not (isinstance(mask, (tuple, list)) and all(isinstance(m, (bool, np.bool_)) for m in mask)):
        raise TypeError(f"conv2d_backward(): output_mask must be a sequence of 3 bools (grad_input, "
                        f"grad_weight, grad_bias), got {mask!r}")
    if len(mask) != 3:
        raise ValueError(f"conv2d_backward(): output_mask must have 3 entries (grad_input, grad_weight, "
                         f"grad_bias), got {len(mask)}: {mask!r}")
    return tuple(bool(m) for m in mask)


def conv2d_backward(grad_output, input, weight, stride=1, padding=0, dilation=1, groups=1, *, flip=False,
                    activation=None, output=None, output_mask=(True, True, True)):
    """The gradients of ``gpuconv.conv2d(input, weight, bias, stride, padding, dilation, groups, flip=flip,
    activation=activation)``: ``(grad_input, grad_weight, grad_bias)``, each None where ``output_mask``
    says False (``grad_bias`` does not depend on whether the forward had a bias).

    With an ``activation``, ``grad_output`` is the gradient with respect to the *activated* output and
    ``output`` (required; ``ValueError`` without it) is that forward result; ``grad_output`` is multiplied
    by the activation's derivative computed from ``output`` (``activation_derivative_times``'s formulas). On
    the CUDA path the filter-gradient and bias kernels apply it themselves (reading ``grad_output`` and
    ``output``), and so does the data gradient's ``conv2d_backward_data`` (its gather multiplies
    ``grad_output`` by the derivative); on NumPy arrays the strategies ``numpy_col2im``,
    ``numpy_im2col_filter`` and ``numpy_depthwise_filter_planes`` apply it in their chunk copies of
    ``grad_output`` (``_numpy_backward``). An elementwise pre-pass (one array of ``grad_output``'s size)
    remains where the lowering runs instead (NumPy: 1x1 and depthwise data gradients, Winograd-sized
    layers, a workspace too small; CUDA: a geometry the backward-data kernel declines by its 32-bit rule);
    the record then names the pre-pass and the reason.
    Otherwise as ``conv2d_input``, ``conv2d_weight`` and ``conv2d_bias``; ``gpuconv.last_kernel()`` lists
    every kernel that ran (direction ``'backward'``)."""
    fn = "conv2d_backward"
    backend, a = _backend.coerce_arrays(fn, optional=("output",), grad_output=grad_output, input=input,
                                        weight=weight, output=output)
    gy, x, w, out = a["grad_output"], a["input"], a["weight"], a["output"]
    mask = _output_mask(output_mask)
    geom = conv_geometry(tuple(x.shape), tuple(w.shape), None, stride, padding, dilation, groups, flip,
                         activation)
    batched = x.ndim == 4
    what = f"input of size {_shape_str(x.shape)} and weight of size {_shape_str(w.shape)}"
    gy4 = _check_grad_output(fn, gy, geom, batched, what)
    check_activation_output(fn, activation, out, gy, what)
    # The activation's derivative: fused into the CUDA filter-gradient and bias kernels (they read gy and
    # out) and into the CUDA data gradient's gather (conv2d_backward_data); on NumPy arrays into the chunk
    # copies of the NumPy strategies (_numpy_backward); an elementwise pre-pass (gz, one array of
    # grad_output's size) where those do not run (docs/gradients.md, "Activation").
    out4 = None if activation is None else (out if batched else out[None])
    if activation is not None and not isinstance(backend, _backend.CudaBackend):
        x4 = x if batched else x[None]
        with _quiet():
            gx, gw, gb, kernels = _numpy_backward(backend, gy4, x4, w, out4, geom, mask)
        _backend.record("conv2d", backend.name, *(kernels or ["none (output_mask all False)"]),
                        direction="backward")
        return (gx if gx is None or batched else gx[0]), gw, gb
    fused = activation is not None and cuda_filter_algo(backend, geom, gy4.dtype) is not None
    fused_data, notes = False, []
    if activation is not None and mask[0] and isinstance(backend, _backend.CudaBackend):
        empty = 0 in (geom.N, geom.C, geom.H, geom.W)
        reason = None if empty else fused_data_reason(gy4, geom, geom.H, geom.W)
        fused_data = reason is None
        if reason is not None:
            notes.append(f"activation derivative pre-pass for the data gradient ({reason})")
    gz = gy4
    if activation is not None and ((mask[0] and not fused_data) or ((mask[1] or mask[2]) and not fused)):
        with _quiet():
            gz = activation_derivative_times(backend.xp, gy4, out4, activation)
    kernels = notes
    gx = gw = gb = None
    if mask[0]:
        gx, ks = _data(backend, gy4, w, geom, geom.H, geom.W, out4) if fused_data else \
            _data(backend, gz, w, geom, geom.H, geom.W)
        gx = gx if batched else gx[0]
        kernels += ks
    if mask[1]:
        gw, k = _filter(backend, x if batched else x[None], *((gy4, geom, out4) if fused else (gz, geom)))
        kernels.append(k)
    if mask[2]:
        gb, k = _bias_fused(backend, gy4, out4, geom) if fused else _bias(backend, gz)
        kernels.append(k)
    _backend.record("conv2d", backend.name, *(kernels or ["none (output_mask all False)"]),
                    direction="backward")
    return gx, gw, gb


def _numpy_backward(backend, gy4, x4, w, out4, geom, mask):
    """``conv2d_backward`` on NumPy arrays with an activation: each gradient whose NumPy strategy runs
    (``numpy_col2im``, ``numpy_im2col_filter``, ``numpy_depthwise_filter_planes``) applies the derivative in
    its chunk copies of ``gy`` (``_numpy.grad_activation``); the filter strategies also sum the bias
    gradient from them. Where the lowering runs instead (its forward calls take no derivative) the
    pre-pass ``gz`` is made, once, the record says so, and the gradients after it read ``gz`` (the
    derivative is not computed twice); for the data gradient, when ``gy`` is larger than a chunk
    (``grad_activation.prepass_samples``), per chunk of samples instead (no array of ``gy``'s size). Without a
    filter gradient the bias runs ``bias_gradient``'s chunks.
    Returns ``(gx, gw, gb, kernels)``."""
    from ._conv_lowering import _read_extent
    from ._numpy import conv_grad
    from ._numpy.grad_activation import Derivative, bias_gradient, compute_dtype, prepass_samples
    dtype, H, W, P, Q = gy4.dtype, geom.H, geom.W, geom.P, geom.Q
    state = dict(gy=gy4, act=Derivative(out4, geom.activation))  # after a pre-pass: gz, None
    kernels, gx, gw, gb = [], None, None, None

    def prepass(what, why):
        kernels.append(f"activation derivative pre-pass for the {what} gradient ({why})")
        if state["act"] is not None:
            state.update(gy=activation_derivative_times(np, gy4, out4, geom.activation), act=None)
        return state["gy"]

    if mask[0]:
        empty = 0 in (geom.N, geom.C, H, W)
        reason = None if empty else conv_grad.data_decline_reason(geom, dtype, H, W, P, Q, state["act"])
        n_chunk = 0 if empty or reason is None else prepass_samples(gy4, geom.C * H * W)
        if empty or (reason is not None and n_chunk >= geom.N):
            gx, ks = _data(backend, gy4 if empty else prepass("data", f"the lowering runs it: {reason}"), w,
                           geom, H, W)
            kernels += ks
        elif reason is not None:
            # a sample's data gradient reads only its own gy: the pre-pass per chunk of samples, each chunk's
            # lowering calls on it, so the temporary is one chunk (the filter gradient then fuses its own)
            kernels.append(f"activation derivative pre-pass for the data gradient, per chunk of {n_chunk} "
                           f"samples (the lowering runs it: {reason})")
            gx = np.empty((geom.N, geom.C, H, W), dtype)
            for n0 in range(0, geom.N, n_chunk):
                sl = slice(n0, n0 + n_chunk)
                gx[sl], ks = _data(backend, activation_derivative_times(np, gy4[sl], out4[sl], geom.activation),
                                   w, geom, H, W)
            kernels += ks
        else:
            gx, k = conv_grad.backward_data(gy4, w, geom, H, W, state["act"])
            kernels.append(k)
    bias = np.empty(geom.K, compute_dtype(dtype)) if mask[2] else None
    bias_done = False
    if mask[1]:
        reads = min(_read_extent(H, P, geom.R, geom.sh, geom.pt, geom.dh)[0],
                    _read_extent(W, Q, geom.S, geom.sw, geom.pl, geom.dw)[0])
        if geom.N == 0 or 0 in (H, W) or reads <= 0:
            gw, k = _filter(backend, x4, gy4, geom)  # zeros: nothing reads gy
        elif conv_grad.filter_strategy(geom, dtype, state["act"]):
            gw, k = conv_grad.backward_filter(x4, state["gy"], geom, state["act"], bias)
            bias_done = bias is not None
        else:
            gw, why = None, "the lowering runs it: one sample does not fit the workspace limit"
            if conv_grad.depthwise_filter_applies(geom, dtype, state["act"]):
                gw = conv_grad.depthwise_filter(x4, state["gy"], geom, state["act"], bias)
                k, bias_done = "numpy_depthwise_filter_planes", gw is not None and bias is not None
                why = "numpy_depthwise_filter_planes met a non-finite value: the lowering runs it"
            elif geom.Cg == 1 and geom.groups > 1:
                why = "the lowering runs it: one channel's planes do not fit the workspace limit"
            if gw is None:
                gw, k = _filter(backend, x4, prepass("filter", why), geom)
        kernels.append(k)
    if mask[2]:
        if bias_done:
            gb, k = bias.astype(dtype, copy=False), "numpy.sum (in the filter gradient's chunks)"
        elif state["act"] is None:
            gb, k = _bias(backend, state["gy"])
        elif geom.N == 0 or P * Q == 0:
            gb, k = np.zeros(geom.K, dtype), "none (empty batch: zeros)"
        else:
            gb, k = bias_gradient(gy4, state["act"]).astype(dtype, copy=False), "numpy.sum (chunks of gy * act')"
        kernels.append(k)
    return gx, gw, gb, kernels


# --------------------------------------------------------------------------------------------
# conv_transpose2d
# --------------------------------------------------------------------------------------------

def _transpose_padding(padding):
    if isinstance(padding, str):
        raise TypeError(f"conv_transpose2d(): argument 'padding' must be an int, a pair of ints or ((top, "
                        f"bottom), (left, right)), not str ({padding!r})")
    return resolve_conv_padding(padding, (1, 1), (1, 1), (1, 1), (1, 1))


def check_transpose_shapes(n: int, fn: str, x, w, b, groups):
    """A transposed convolution's ranks, channels and bias over ``n`` spatial dimensions (PyTorch's
    messages); returns ``(x batched, C_out)``."""
    if not _is_int(groups):
        raise TypeError(f"groups must be an int, got {groups!r}")
    if groups <= 0:
        raise ValueError(f"non-positive groups is not supported, got groups={groups}")
    if x.ndim not in (n + 1, n + 2):
        raise ValueError(f"Expected {n + 1}D (unbatched) or {n + 2}D (batched) input to {fn}, but got input "
                         f"of size: {_shape_str(x.shape)}")
    if w.ndim != n + 2:
        raise ValueError(f"weight must be {n + 2}-D (in_channels, out_channels/groups, {KERNEL_AXES[n]}), got "
                         f"weight of size {_shape_str(w.shape)}")
    if min(w.shape) <= 0:
        raise ValueError(f"weight of size {_shape_str(w.shape)} has an empty dimension")
    xb = x if x.ndim == n + 2 else x[None]
    if w.shape[0] % groups:
        raise ValueError(f"Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, "
                         f"but got weight of size {_shape_str(w.shape)} instead")
    if xb.shape[1] != w.shape[0]:
        raise ValueError(f"Given transposed=1, weight of size {_shape_str(w.shape)}, expected "
                         f"input{_shape_str(x.shape)} to have {w.shape[0]} channels, but got {xb.shape[1]} channels "
                         f"instead")
    Cout = w.shape[1] * groups
    if b is not None and tuple(b.shape) != (Cout,):
        raise ValueError(f"Given transposed=1, weight of size {_shape_str(w.shape)}, expected bias to be "
                         f"1-dimensional with {Cout} elements, but got bias of size {_shape_str(b.shape)} instead")
    return xb, Cout


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Transposed convolution, ``torch.nn.functional.conv_transpose2d``'s semantics and weight layout:
    ``input (N, C_in, H, W)`` (or unbatched), ``weight (C_in, C_out/groups, R, S)``, ``bias (C_out,)``;
    output ``(N, C_out, Ho, Wo)``, ``Ho = (H-1)*sh - pt - pb + dh*(R-1) + output_padding_h + 1``. It is the
    input gradient of the convolution of an ``(N, C_out, Ho, Wo)`` input with ``weight`` (``conv2d_input``).
    ``padding``: int, pair or ``((top, bottom), (left, right))`` (no strings, as PyTorch);
    ``output_padding`` must be smaller than the stride or the dilation (PyTorch's rule and message)."""
    fn = "conv_transpose2d"
    backend, a = _backend.coerce_arrays(fn, optional=("bias",), input=input, weight=weight, bias=bias)
    x, w, b = a["input"], a["weight"], a["bias"]
    sh, sw = as_pair(stride, "stride", minimum=1)
    dh, dw = as_pair(dilation, "dilation", minimum=1)
    oph, opw = as_pair(output_padding, "output_padding", minimum=0)
    pt, pb, pl, pr = _transpose_padding(padding)
    x4, Cout = check_transpose_shapes(2, fn, x, w, b, groups)
    N, _, H, W = x4.shape
    R, S = w.shape[2], w.shape[3]
    if not (oph < sh or oph < dh) or not (opw < sw or opw < dw):
        raise ValueError(f"output padding must be smaller than either stride or dilation, but got "
                         f"output_padding_height: {oph} output_padding_width: {opw} stride_height: {sh} "
                         f"stride_width: {sw} dilation_height: {dh} dilation_width: {dw}")
    Ho = (H - 1) * sh - pt - pb + dh * (R - 1) + oph + 1
    Wo = (W - 1) * sw - pl - pr + dw * (S - 1) + opw + 1
    if Ho <= 0 or Wo <= 0 or H <= 0 or W <= 0:
        raise ValueError(f"Given input size per channel: ({H} x {W}). Calculated output size per channel: "
                         f"({Ho} x {Wo}). Output size is too small")
    geom = conv_geometry((N, Cout, Ho, Wo), tuple(w.shape), None, (sh, sw), ((pt, pb), (pl, pr)), (dh, dw),
                         groups)
    # With output_padding >= stride (allowed when smaller than the dilation) the forward convolution of
    # an (Ho, Wo) input has more outputs than ``input`` rows; those read nothing, backward_data takes the
    # shorter ``input`` as it is.
    y, kernels = _data(backend, x4, w, geom, Ho, Wo)
    if b is not None:
        ct = _compute_dtype(y.dtype)
        y = (y.astype(ct) + b.astype(ct)[None, :, None, None]).astype(y.dtype, copy=False)
    _backend.record("conv2d", backend.name, *kernels, direction="backward_data")
    return y if x.ndim == 4 else y[0]
