"""Shape and parameter-count helpers (plain integers; no arrays involved)."""

from __future__ import annotations

from ._geometry import _is_int, as_pair, conv_geometry
from ._pool_geometry import pool_geometry


def _shape(value, fn: str, name: str) -> tuple[int, ...]:
    """A shape given as a sequence of ints (a tuple, a list, an array's ``.shape``) -> tuple; anything else
    (None, an array itself, floats) is a TypeError naming the argument and echoing the value."""
    if isinstance(value, (tuple, list)) and all(_is_int(v) for v in value):
        return tuple(int(v) for v in value)
    shown = repr(value) if isinstance(value, (tuple, list, int, str, type(None))) else type(value).__name__
    raise TypeError(f"{fn}(): {name} must be a shape, a tuple of ints, got {shown}")


def conv2d_output_shape(input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=None):
    """Output shape of :func:`gpuconv.conv2d` for these shapes, as a tuple; unbatched ``(C, H, W)`` in
    gives ``(K, P, Q)`` out. ``groups`` defaults to ``C // weight_shape[1]``. Raises the same errors
    as ``conv2d``. E.g. ``(3, 32, 32)`` with ten 5x5 filters, padding 2 -> ``(10, 32, 32)``."""
    input_shape = _shape(input_shape, "conv2d_output_shape", "input_shape")
    weight_shape = _shape(weight_shape, "conv2d_output_shape", "weight_shape")
    if groups is None:
        c = input_shape[-3] if len(input_shape) in (3, 4) else 0
        groups = max(1, c // weight_shape[1]) if len(weight_shape) == 4 and weight_shape[1] else 1
    g = conv_geometry(input_shape, weight_shape, None, stride, padding, dilation, groups)
    return g.output_shape if len(input_shape) == 4 else g.output_shape[1:]


def pool2d_output_shape(input_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Output shape of :func:`gpuconv.max_pool2d` / :func:`gpuconv.avg_pool2d` (use ``dilation=1`` for
    average pooling), as a tuple; unbatched in, unbatched out."""
    input_shape = _shape(input_shape, "pool2d_output_shape", "input_shape")
    g = pool_geometry(input_shape, kernel_size, stride, padding, dilation, ceil_mode, "pool2d")
    return g.output_shape if len(input_shape) == 4 else g.output_shape[1:]


def conv2d_num_params(in_channels, out_channels, kernel_size, groups=1, bias=True) -> int:
    """Learnable parameters of a conv layer: ``(in_channels/groups * kh * kw + bias) * out_channels``.
    E.g. 3 -> 10 channels, 5x5: ``(5*5*3 + 1) * 10 = 760``."""
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        if not _is_int(v):
            raise TypeError(f"conv2d_num_params(): {name} must be an int, got {v!r}")
        if v < 1:
            raise ValueError(f"conv2d_num_params(): {name} must be positive, got {v!r}")
    kh, kw = as_pair(kernel_size, "kernel_size", minimum=1)
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible "
                         f"by groups ({groups})")
    return (in_channels // groups * kh * kw + (1 if bias else 0)) * out_channels
