"""Gradients of gpuconv's forward ops, with ``torch.nn.grad``'s names and argument order.

    gpuconv.grad.conv2d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1, *, flip=False)
    gpuconv.grad.conv2d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1, *, flip=False)
    gpuconv.grad.conv2d_bias(grad_output)
    gpuconv.grad.max_pool2d_input(input_size, grad_output, indices, kernel_size, stride=None, padding=0, dilation=1,
                                  ceil_mode=False)
    gpuconv.grad.avg_pool2d_input(input_size, grad_output, kernel_size, stride=None, padding=0, ceil_mode=False,
                                  count_include_pad=True, divisor_override=None)
    gpuconv.grad.adaptive_avg_pool2d_input(input_size, grad_output)
    gpuconv.grad.adaptive_max_pool2d_input(input_size, grad_output, indices)
    gpuconv.grad.max_pool1d_input / max_pool3d_input (as max_pool2d_input), avg_pool1d_input (no divisor_override,
                                  as avg_pool1d) / avg_pool3d_input (as avg_pool2d_input)
    gpuconv.grad.adaptive_avg_pool1d_input(input_size, grad_output), adaptive_max_pool1d_input(..., indices)
    gpuconv.grad.adaptive_avg_pool3d_input(input_size, grad_output), adaptive_max_pool3d_input(..., indices)

    gpuconv.grad.conv1d_input / conv1d_weight / conv1d_bias, conv3d_input / conv3d_weight / conv3d_bias: the same
                                  for gpuconv.conv1d / conv3d (torch.nn.grad's names and argument order)

``gpuconv.conv2d_backward`` and ``gpuconv.conv_transpose2d`` are the convolution's combined backward and its
transposed form. docs/gradients.md and docs/pooling-gradients.md have the rules.
"""

from ._grad_conv import conv2d_bias, conv2d_input, conv2d_weight
from .conv_nd import (conv1d_bias, conv1d_input, conv1d_weight, conv3d_bias, conv3d_input,
                      conv3d_weight)
from ._grad_pool import adaptive_avg_pool2d_input, adaptive_max_pool2d_input, avg_pool2d_input, max_pool2d_input
from ._grad_pool import avg_pool1d_input, avg_pool3d_input, max_pool1d_input, max_pool3d_input
from ._grad_pool import adaptive_avg_pool1d_input, adaptive_max_pool1d_input
from ._grad_pool import adaptive_avg_pool3d_input, adaptive_max_pool3d_input

__all__ = ["conv2d_input", "conv2d_weight", "conv2d_bias",
           "conv1d_input", "conv1d_weight", "conv1d_bias", "conv3d_input", "conv3d_weight", "conv3d_bias",
           "max_pool2d_input", "avg_pool2d_input", "adaptive_avg_pool2d_input", "adaptive_max_pool2d_input",
           "max_pool1d_input", "avg_pool1d_input", "max_pool3d_input", "avg_pool3d_input",
           "adaptive_avg_pool1d_input", "adaptive_max_pool1d_input",
           "adaptive_avg_pool3d_input", "adaptive_max_pool3d_input"]
