"""``gpuconv.conv1d_backward`` / ``gpuconv.conv3d_backward``: the combined backward of conv1d / conv3d with an
optional activation, as ``gpuconv.conv2d_backward`` (same argument order, ``output=`` required with an
activation, ``output_mask``, errors; docs/gradients.md, "conv1d_backward and conv3d_backward").

What runs (``_conv_nd``):

* filter gradient: on CUDA arrays the operation table's ``(conv1d | conv3d, backward_filter)`` kernels
  (``conv{1,3}d_backward_filter_depthwise`` / ``_igemm``) with the activation's derivative fused (they read
  ``grad_output`` and ``output``); where both decline, the lowering with the derivative as a pre-pass
  (``_conv_nd.backward_filter``, the record says why);
* bias gradient: on CUDA arrays ``conv2d_backward_bias`` over ``grad_output`` viewed as ``(N, K, 1, L)``, the
  derivative fused (``_conv_nd.backward_bias``);
* data gradient: on CUDA arrays ONE ``conv1d_backward_data`` / ``conv3d_backward_data`` launch with the
  derivative fused in its gather (``_conv_nd.backward_data(..., out=)``); where it declines, the lowering
  after a pre-pass (``_grad_conv.activation_derivative_times``, one array of ``grad_output``'s size) the
  record names;
* NumPy arrays, 3-D: ``numpy_col2im3d`` / ``numpy_im2col3d_filter`` apply the derivative in their chunk
  copies of ``grad_output`` (the bias, and a declined strategy's lowering, read a pre-pass); 1-D: the
  pre-pass once, every gradient reading its result (recorded once).

``gpuconv.last_kernel()`` lists every kernel that ran, op ``conv1d`` / ``conv3d``, direction ``'backward'``.
"""

from __future__ import annotations

import numpy as np

from . import _backend, _conv_nd
from ._geometry import _shape_str
from ._geometry_nd import conv_nd_geometry
from ._grad_conv import _check_grad_output, _output_mask, activation_derivative_times, check_activation_output

__all__ = ["conv1d_backward", "conv3d_backward"]


def _backward(n, grad_output, input, weight, stride, padding, dilation, groups, flip, activation, output,
              output_mask):
    from .conv_nd import _data
    fn = f"conv{n}d_backward"
    backend, a = _backend.coerce_arrays(fn, optional=("output",), grad_output=grad_output, input=input,
                                        weight=weight, output=output)
    gy, x, w, out = a["grad_output"], a["input"], a["weight"], a["output"]
    mask = _output_mask(output_mask)
    geom = conv_nd_geometry(n, tuple(x.shape), tuple(w.shape), None, stride, padding, dilation, groups, flip,
                            activation)
    batched = x.ndim == n + 2
    what = f"input of size {_shape_str(x.shape)} and weight of size {_shape_str(w.shape)}"
    gyb = _check_grad_output(fn, gy, geom, batched, what)
    check_activation_output(fn, activation, out, gy, what)
    outb = None if activation is None else (out if batched else out[None])
    xb = x if batched else x[None]
    xp, cuda = backend.xp, isinstance(backend, _backend.CudaBackend)
    kernels, gz, fused = [], gyb, outb
    if activation is not None and not cuda and n == 1 and any(mask):
        # NumPy 1-D: the height-1 lowering's strategies take no derivative; the pre-pass made once, every
        # gradient reading its result (CUDA kernels and the NumPy 3-D strategies apply it themselves)
        with np.errstate(over="ignore", invalid="ignore"):
            gz = activation_derivative_times(xp, gyb, outb, activation)
        kernels.append("activation derivative pre-pass for every gradient (NumPy arrays, 1-D)")
        fused = None
    gx = gw = gb = None
    if mask[0]:
        gx, ks = _data(backend, gz, w, geom, geom.input_size, fused)
        gx = gx if batched else gx[0]
        kernels += ks
    if mask[1]:
        if geom.N == 0 or 0 in geom.input_size:
            gw, ks = xp.zeros(geom.weight_shape, dtype=gy.dtype), ["none (empty batch: zeros)"]
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                gw, ks = _conv_nd.backward_filter(backend, xb, gz, geom, fused)
            ks = ks or ["none (every tap reads padding: zeros)"]
        kernels += ks
    if mask[2]:
        with np.errstate(over="ignore", invalid="ignore"):
            gb, k = _conv_nd.backward_bias(backend, gz, fused, activation)
        kernels.append(k)
    _backend.record(f"conv{n}d", backend.name, *(kernels or ["none (output_mask all False)"]),
                    direction="backward")
    return gx, gw, gb


def conv1d_backward(grad_output, input, weight, stride=1, padding=0, dilation=1, groups=1, *, flip=False,
                    activation=None, output=None, output_mask=(True, True, True)):
    """The gradients of ``gpuconv.conv1d(input, weight, bias, stride, padding, dilation, groups, flip=flip,
    activation=activation)``: ``(grad_input, grad_weight, grad_bias)``, each None where ``output_mask`` says
    False. ``input (N, C, L)`` or unbatched ``(C, L)``, ``grad_output`` the forward output's shape. With an
    ``activation``, ``grad_output`` is the gradient with respect to the activated output and ``output``
    (required: ValueError without it) that forward result, as ``gpuconv.conv2d_backward``. CUDA arrays: the
    filter gradient one ``conv1d_backward_filter_igemm`` (depthwise: ``_depthwise``) launch plus the fixed-order
    reduce, the derivative fused; the bias ``conv2d_backward_bias``; the data gradient one
    ``conv1d_backward_data`` launch, the derivative fused. Deterministic (bitwise, any thread order)."""
    return _backward(1, grad_output, input, weight, stride, padding, dilation, groups, flip, activation, output,
                     output_mask)


def conv3d_backward(grad_output, input, weight, stride=1, padding=0, dilation=1, groups=1, *, flip=False,
                    activation=None, output=None, output_mask=(True, True, True)):
    """As ``conv1d_backward`` for ``gpuconv.conv3d``: ``input (N, C, D, H, W)`` or ``(C, D, H, W)``. CUDA
    arrays: the filter gradient one ``conv3d_backward_filter_igemm`` (depthwise: ``_depthwise``) launch plus
    the reduce, the derivative fused; the bias ``conv2d_backward_bias`` over ``(N, K, 1, OD*P*Q)``; the data
    gradient one ``conv3d_backward_data`` launch over every stride phase, the derivative fused."""
    return _backward(3, grad_output, input, weight, stride, padding, dilation, groups, flip, activation, output,
                     output_mask)
