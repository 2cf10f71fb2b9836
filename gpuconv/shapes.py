"""Shape and parameter-count helpers (plain integers; no arrays involved)."""

from __future__ import annotations

from ._geometry import as_pair, conv_geometry, pool_geometry


def conv2d_output_shape(input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=None):
    """Output shape of :func:`gpuconv.conv2d` for these shapes, as a tuple; unbatched ``(C, H, W)`` in
    gives ``(K, P, Q)`` out. ``groups`` defaults to ``C // weight_shape[1]``. Raises the same errors
    as ``conv2d``. E.g. ``(3, 32, 32)`` with ten 5x5 filters, padding 2 -> ``(10, 32, 32)``."""
    input_shape, weight_shape = tuple(input_shape), tuple(weight_shape)
    if groups is None:
        c = input_shape[-3] if len(input_shape) in (3, 4) else 0
        groups = max(1, c // weight_shape[1]) if len(weight_shape) == 4 and weight_shape[1] else 1
    g = conv_geometry(input_shape, weight_shape, None, stride, padding, dilation, groups)
    return g.output_shape if len(input_shape) == 4 else g.output_shape[1:]


def pool2d_output_shape(input_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Output shape of :func:`gpuconv.max_pool2d` / :func:`gpuconv.avg_pool2d` (use ``dilation=1`` for
    average pooling), as a tuple; unbatched in, unbatched out."""
    g = pool_geometry(tuple(input_shape), kernel_size, stride, padding, dilation, ceil_mode, "pool2d")
    return g.output_shape if len(input_shape) == 4 else g.output_shape[1:]


def conv2d_num_params(in_channels, out_channels, kernel_size, groups=1, bias=True) -> int:
    """Learnable parameters of a conv layer: ``(in_channels/groups * kh * kw + bias) * out_channels``.
    E.g. 3 -> 10 channels, 5x5: ``(5*5*3 + 1) * 10 = 760``."""
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        as_pair(v, name, minimum=1)
    kh, kw = as_pair(kernel_size, "kernel_size", minimum=1)
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible "
                         f"by groups ({groups})")
    return (in_channels // groups * kh * kw + (1 if bias else 0)) * out_channels
