"""``gpuconv.conv1d`` / ``gpuconv.conv3d``, their gradients (``gpuconv.grad.conv1d_input`` ... ``conv3d_bias``,
``torch.nn.grad``'s names and argument order) and ``gpuconv.conv_transpose1d`` / ``conv_transpose3d``.

Each function checks its arrays (``_backend.coerce_arrays``: the arrays decide the backend), resolves the
forward call (``_geometry_nd.conv_nd_geometry``: conv2d's rules and messages for 1 or 3 spatial dimensions)
and runs it (``_conv_nd``): on CUDA arrays 1-D as one ``conv1d_igemm`` launch and 3-D as one
``conv3d_igemm`` launch (``algo`` ``'auto'`` / ``'igemm'``; two launches with split-K; ``'igemm_tc'`` or
tensor cores allowed: ``conv1d_igemm_tc`` / ``conv3d_igemm_tc``), otherwise 1-D as a unit-height conv2d
(another named 2-D algorithm, a depthwise-like call under ``'auto'``, NumPy arrays) and 3-D -- another named
2-D algorithm, a geometry the kernel declines -- as a sum over depth taps of batched 2-D convolutions (the
depth-tap lowering). The gradients on CUDA arrays run the N-D kernels (``conv{1,3}d_backward_data``, one
launch over every stride phase; ``conv{1,3}d_backward_filter_igemm`` / ``_depthwise``), on NumPy arrays
the N-D col2im / im2col strategies in 3-D (``_numpy/conv3d_grad.py``) and the unit-height 2-D gradients in
1-D. ``gpuconv.last_kernel()`` names what ran, the lowering and its reason
included.
docs/semantics.md, "conv1d and conv3d", has the rules.
"""

from __future__ import annotations

import numpy as np

from . import _backend, _conv_nd
from ._geometry import _shape_str
from ._grad_conv import _check_grad_output, _size_arg, check_transpose_shapes
from ._geometry_nd import as_tuple, conv_nd_geometry, explicit_padding

__all__ = ["conv1d", "conv3d", "conv1d_input", "conv1d_weight", "conv1d_bias", "conv3d_input", "conv3d_weight",
           "conv3d_bias", "conv_transpose1d", "conv_transpose3d"]


def _forward(n, input, weight, bias, stride, padding, dilation, groups, flip, activation, algo):
    fn = f"conv{n}d"
    backend, a = _backend.coerce_arrays(fn, optional=("bias",), input=input, weight=weight, bias=bias)
    x, w, b = a["input"], a["weight"], a["bias"]
    g = conv_nd_geometry(n, tuple(x.shape), tuple(w.shape), None if b is None else tuple(b.shape), stride,
                         padding, dilation, groups, flip, activation)
    if isinstance(algo, str) and algo != "auto":
        from ._cuda.conv import check_algo
        check_algo(algo)  # (the NumPy backend refuses a named algorithm itself)
    batched = x.ndim == n + 2
    xb = x if batched else x[None]
    if g.N == 0:
        y, kernels = backend.xp.empty(g.output_shape, dtype=x.dtype), ["none (empty output)"]
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            y, kernels = _conv_nd.forward(backend, xb, w, b, g, algo)
    _backend.record(fn, backend.name, *kernels)
    return y if batched else y[0]


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, flip=False, activation=None,
           algo="auto"):
    """1-D convolution (cross-correlation, as ``torch.nn.functional.conv1d``): ``input (N, C, L)`` or
    unbatched ``(C, L)``, ``weight (K, C/groups, S)``, ``bias (K,)`` or None; output ``(N, K, Lo)``,
    ``Lo = floor((L + pl + pr - d*(S-1) - 1) / s) + 1``. ``stride`` / ``dilation``: int or ``(s,)``;
    ``padding``: int, ``(p,)``, ``((left, right),)``, ``'valid'`` or ``'same'`` (conv2d's rule per axis);
    ``flip``, ``activation``, ``groups``, dtypes, errors and ``algo`` as ``gpuconv.conv2d``. On CUDA arrays
    ``algo='auto'`` / ``'igemm'`` run one ``conv1d_igemm`` launch (the implicit GEMM with a 1-D gather: no
    row axis; split-K where conv2d's rule splits), except a depthwise-like call (one input channel per
    group) under ``'auto'``; that, another 2-D algorithm name and NumPy arrays run the 2-D convolution of
    unit height (views, no copy), which ``last_kernel()`` says."""
    return _forward(1, input, weight, bias, stride, padding, dilation, groups, flip, activation, algo)


def conv3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, flip=False, activation=None,
           algo="auto"):
    """3-D convolution (cross-correlation, as ``torch.nn.functional.conv3d``): ``input (N, C, D, H, W)`` or
    unbatched ``(C, D, H, W)``, ``weight (K, C/groups, T, R, S)``; output ``(N, K, OD, OH, OW)`` with conv2d's
    size formula per axis. ``stride`` / ``dilation``: int or triple; ``padding``: int, triple, ``((front,
    back), (top, bottom), (left, right))``, ``'valid'`` or ``'same'``. ``flip`` rotates the kernel in all
    three axes. On CUDA arrays ``algo='auto'`` / ``'igemm'`` run one ``conv3d_igemm`` launch (the implicit
    GEMM with a depth axis in its gather); another 2-D algorithm name, or a geometry that kernel declines
    under ``'auto'``, runs the depth-tap lowering (``_conv_nd``: per depth tap one batched 2-D convolution
    with that algorithm, summed in a fixed order), the reason first in ``last_kernel()``. NumPy arrays run
    the NumPy path's 3-D strategies. Deterministic either way."""
    return _forward(3, input, weight, bias, stride, padding, dilation, groups, flip, activation, algo)


# --------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------

def _data(backend, gy, w, geom, size, out=None):
    N, C = gy.shape[0], geom.C
    if 0 in (N, C) + tuple(size):
        return backend.xp.zeros((N, C) + tuple(size), dtype=gy.dtype), ["none (empty output)"]
    with np.errstate(over="ignore", invalid="ignore"):
        gx, kernels = _conv_nd.backward_data(backend, gy, w, geom, size, out)
    return gx, kernels or ["none (no filter tap reaches the input: zeros)"]


def _input(n, input_size, weight, grad_output, stride, padding, dilation, groups, flip):
    fn = f"conv{n}d_input"
    backend, a = _backend.coerce_arrays(fn, weight=weight, grad_output=grad_output)
    w, gy = a["weight"], a["grad_output"]
    size = _size_arg(fn, "input_size", input_size, (n + 1, n + 2))
    geom = conv_nd_geometry(n, size, tuple(w.shape), None, stride, padding, dilation, groups, flip)
    batched = len(size) == n + 2
    gyb = _check_grad_output(fn, gy, geom, batched,
                             f"input_size={_shape_str(size)} and weight of size {_shape_str(w.shape)}")
    gx, kernels = _data(backend, gyb, w, geom, geom.input_size)
    _backend.record(f"conv{n}d", backend.name, *kernels, direction="backward_data")
    return gx if batched else gx[0]


def _weight(n, input, weight_size, grad_output, stride, padding, dilation, groups, flip):
    fn = f"conv{n}d_weight"
    backend, a = _backend.coerce_arrays(fn, input=input, grad_output=grad_output)
    x, gy = a["input"], a["grad_output"]
    wsize = _size_arg(fn, "weight_size", weight_size, (n + 2,))
    geom = conv_nd_geometry(n, tuple(x.shape), wsize, None, stride, padding, dilation, groups, flip)
    batched = x.ndim == n + 2
    gyb = _check_grad_output(fn, gy, geom, batched,
                             f"input of size {_shape_str(x.shape)} and weight_size={_shape_str(wsize)}")
    if geom.N == 0 or 0 in geom.input_size:
        gw, kernels = backend.xp.zeros(geom.weight_shape, dtype=gy.dtype), ["none (empty batch: zeros)"]
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            gw, kernels = _conv_nd.backward_filter(backend, x if batched else x[None], gyb, geom)
        kernels = kernels or ["none (every tap reads padding: zeros)"]
    _backend.record(f"conv{n}d", backend.name, *kernels, direction="backward_filter")
    return gw


def _bias(n, grad_output):
    fn = f"conv{n}d_bias"
    backend, a = _backend.coerce_arrays(fn, grad_output=grad_output)
    gy = a["grad_output"]
    if gy.ndim not in (n + 1, n + 2):
        raise ValueError(f"{fn}(): expected grad_output of {n + 1} (unbatched) or {n + 2} (batched) dimensions, "
                         f"(N, K, {', '.join(['*'] * n)}), but got grad_output of size {_shape_str(gy.shape)}")
    gyb = gy if gy.ndim == n + 2 else gy[None]
    gb, kernel = _conv_nd.backward_bias(backend, gyb)
    _backend.record(f"conv{n}d", backend.name, kernel, direction="backward_bias")
    return gb


def conv1d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1, *, flip=False):
    """Gradient of ``gpuconv.conv1d`` with respect to ``input`` (``torch.nn.grad.conv1d_input``): shape
    ``input_size`` ``(N, C, L)`` or ``(C, L)``; ``grad_output`` the forward output's shape."""
    return _input(1, input_size, weight, grad_output, stride, padding, dilation, groups, flip)


def conv1d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1, *, flip=False):
    """Gradient of ``gpuconv.conv1d`` with respect to ``weight`` (``torch.nn.grad.conv1d_weight``): shape
    ``weight_size`` ``(K, C/groups, S)``."""
    return _weight(1, input, weight_size, grad_output, stride, padding, dilation, groups, flip)


def conv1d_bias(grad_output):
    """Gradient of ``conv1d``'s bias: ``grad_output (N, K, Lo)`` (or ``(K, Lo)``) summed over all but K."""
    return _bias(1, grad_output)


def conv3d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1, *, flip=False):
    """Gradient of ``gpuconv.conv3d`` with respect to ``input`` (``torch.nn.grad.conv3d_input``): shape
    ``input_size`` ``(N, C, D, H, W)`` or unbatched. CUDA: one ``conv3d_backward_data`` launch over every
    stride phase; NumPy: ``numpy_col2im3d`` (depthwise-like: ``numpy_depthwise_data3d``), the depth-tap
    lowering where one output depth does not fit the workspace."""
    return _input(3, input_size, weight, grad_output, stride, padding, dilation, groups, flip)


def conv3d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1, *, flip=False):
    """Gradient of ``gpuconv.conv3d`` with respect to ``weight`` (``torch.nn.grad.conv3d_weight``): shape
    ``weight_size`` ``(K, C/groups, T, R, S)``. CUDA: one ``conv3d_backward_filter_igemm`` launch (depthwise:
    ``conv3d_backward_filter_depthwise``) and the fixed-order split reduce; NumPy: ``numpy_im2col3d_filter``,
    the depth-tap lowering where one output depth does not fit the workspace."""
    return _weight(3, input, weight_size, grad_output, stride, padding, dilation, groups, flip)


def conv3d_bias(grad_output):
    """Gradient of ``conv3d``'s bias: ``grad_output (N, K, OD, OH, OW)`` (or unbatched) summed over all but
    K, float16 in float32 and rounded once."""
    return _bias(3, grad_output)


# --------------------------------------------------------------------------------------------
# transposed convolution
# --------------------------------------------------------------------------------------------

def _transpose(n, input, weight, bias, stride, padding, output_padding, groups, dilation):
    fn = f"conv_transpose{n}d"
    backend, a = _backend.coerce_arrays(fn, optional=("bias",), input=input, weight=weight, bias=bias)
    x, w, b = a["input"], a["weight"], a["bias"]
    st = as_tuple(stride, n, "stride", minimum=1)
    dl = as_tuple(dilation, n, "dilation", minimum=1)
    op = as_tuple(output_padding, n, "output_padding", minimum=0)
    if isinstance(padding, str):
        raise TypeError(f"{fn}(): argument 'padding' must be an int, a tuple of {n} ints or {n} (low, high) "
                        f"pairs, not str ({padding!r})")
    pads = explicit_padding(padding, n, (1,) * n, (1,) * n, (1,) * n, (1,) * n)
    xb, Cout = check_transpose_shapes(n, fn, x, w, b, groups)
    N, size, kernel = xb.shape[0], tuple(xb.shape[2:]), tuple(w.shape[2:])
    if any(not (op[i] < st[i] or op[i] < dl[i]) for i in range(n)):
        raise ValueError(f"output padding must be smaller than either stride or dilation, but got "
                         f"output_padding={op}, stride={st}, dilation={dl}")
    out = tuple((size[i] - 1) * st[i] - sum(pads[i]) + dl[i] * (kernel[i] - 1) + op[i] + 1 for i in range(n))
    if min(out) <= 0 or min(size) <= 0:
        raise ValueError(f"Given input size per channel: ({' x '.join(map(str, size))}). Calculated output size "
                         f"per channel: ({' x '.join(map(str, out))}). Output size is too small")
    geom = conv_nd_geometry(n, (N, Cout) + out, tuple(w.shape), None, st, pads, dl, groups)
    y, kernels = _data(backend, xb, w, geom, out)
    if b is not None:
        ct = _conv_nd.compute_dtype(y.dtype)
        y = (y.astype(ct) + b.astype(ct).reshape((1, -1) + (1,) * n)).astype(y.dtype, copy=False)
    _backend.record(f"conv{n}d", backend.name, *kernels, direction="backward_data")
    return y if x.ndim == n + 2 else y[0]


def conv_transpose1d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Transposed 1-D convolution, ``torch.nn.functional.conv_transpose1d``'s semantics and weight layout:
    ``input (N, C_in, L)``, ``weight (C_in, C_out/groups, S)``; output length ``(L-1)*s - pl - pr + d*(S-1)
    + output_padding + 1``. ``padding``: int, ``(p,)`` or ``((left, right),)`` (no strings)."""
    return _transpose(1, input, weight, bias, stride, padding, output_padding, groups, dilation)


def conv_transpose3d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Transposed 3-D convolution, ``torch.nn.functional.conv_transpose3d``'s semantics: ``input (N, C_in, D, H,
    W)``, ``weight (C_in, C_out/groups, T, R, S)``; the input gradient of the matching conv3d."""
    return _transpose(3, input, weight, bias, stride, padding, output_padding, groups, dilation)
