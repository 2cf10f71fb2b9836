"""LeNet-5 (LeCun et al. 1998, as the README's demo: 61,706 parameters) built from gpuconv's ops, forward and
backward, on NumPy or CuPy arrays alike (the arrays decide, as everywhere in gpuconv).

Layers: conv1 6@5x5 -> max-pool 2 -> conv2 16@5x5 -> max-pool 2 -> conv3 120@5x5 -> fc1 84 -> fc2 10, tanh after
every layer but the last. The fully connected layers are 1x1 convolutions over a ``(N, features, 1, 1)``
tensor, so every layer's forward and backward is a gpuconv call: ``conv2d(..., activation='tanh')`` forward,
``conv2d_backward(..., activation='tanh', output=...)`` backward (the tanh derivative is taken from the saved
output), ``max_pool2d(..., return_indices=True)`` forward and ``grad.max_pool2d_input`` backward.
"""

from __future__ import annotations

import numpy as np

from .conv import conv2d
from .pool import max_pool2d

# (name, kind, out_channels / features, kernel)
LENET5 = [("conv1", "conv", 6, 5), ("pool1", "maxpool", None, 2), ("conv2", "conv", 16, 5),
          ("pool2", "maxpool", None, 2), ("conv3", "conv", 120, 5), ("fc1", "fc", 84, None),
          ("fc2", "fc", 10, None)]
NUM_PARAMS = 61706
INPUT_SHAPE = (1, 32, 32)


def lenet5_params(xp, dtype, rng) -> dict:
    """``{name: (weight, bias)}``, weights ~ N(0, 1/fan_in) (LeCun's scaling for tanh), biases 0."""
    params, channels = {}, INPUT_SHAPE[0]
    for name, kind, out, k in LENET5:
        if kind == "maxpool":
            continue
        shape = (out, channels, k, k) if kind == "conv" else (out, channels, 1, 1)
        fan_in = shape[1] * shape[2] * shape[3]
        w = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(dtype)
        params[name] = (xp.asarray(w), xp.asarray(np.zeros(out, dtype)))
        channels = out
    return params


def _activation(name: str):
    return None if name == LENET5[-1][0] else "tanh"


def forward(x, params: dict, trace: list | None = None, on_layer=None):
    """The network's output ``(N, 10, 1, 1)`` for input ``(N, 1, 32, 32)``. With ``trace`` (a list), appends
    what the backward pass needs per layer: ``(name, kind, window, input, output, pool indices)``. ``on_layer(name,
    output)`` is called after each layer (the demo times layers with it)."""
    for name, kind, _, k in LENET5:
        if kind == "maxpool" and trace is None:
            y, idx = max_pool2d(x, k, k), None
        elif kind == "maxpool":
            y, idx = max_pool2d(x, k, k, return_indices=True)
        else:
            w, b = params[name]
            y, idx = conv2d(x, w, b, activation=_activation(name)), None
        if trace is not None:
            trace.append((name, kind, k, x, y, idx))
        if on_layer is not None:
            on_layer(name, y)
        x = y
    return x


def backward(grad_out, params: dict, trace: list) -> dict:
    """Gradients ``{name: (grad_weight, grad_bias)}`` of a loss whose gradient w.r.t. the network's output is
    ``grad_out``, from the ``trace`` of its forward pass."""
    from . import grad
    from ._grad_conv import conv2d_backward
    grads = {}
    g = grad_out
    for name, kind, k, x, y, idx in reversed(trace):
        if kind == "maxpool":
            g = grad.max_pool2d_input(x.shape, g, idx, k, k)
        else:
            w, _ = params[name]
            first = name == LENET5[0][0]  # the input needs no gradient
            gx, gw, gb = conv2d_backward(g, x, w, activation=_activation(name), output=y,
                                         output_mask=(not first, True, True))
            grads[name] = (gw, gb)
            g = gx
    return grads
