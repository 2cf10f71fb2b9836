"""Argument validation and size arithmetic for ``conv1d`` / ``conv3d`` (and their gradients), on plain ints.

The 2-D geometry (``_geometry.conv_geometry``) is left exactly as it is: this module wraps it. It checks an
N-D call (1 or 3 spatial dimensions) with the same rules and the same message texts as conv2d's, spelled
for the call's rank (PyTorch's ``conv1d`` / ``conv3d`` messages as the model), and resolves it into a
``ConvNdGeometry``. The lowerings (``_conv_nd``) then derive the 2-D geometries they run from it:

* 1-D: ``as_2d()``: the same call with a unit height (``H = R = P = 1``, no height padding), options
  (flip, activation, bias) included: the 2-D kernels run it as it is.
* 3-D: ``plane(batch)``: the 2-D convolution over ``(H, W)`` of one depth tap, ``batch`` (sample, output
  depth) pairs at once, without options (the lowering adds bias and activation after the depth sum).

Padding forms per spatial dimension count ``n``: an int, a sequence of ``n`` ints (symmetric), a sequence
of ``n`` ``(low, high)`` pairs (for 1-D ``((left, right),)``), ``'valid'``, ``'same'`` (the rule of
``_geometry.same_padding``: PyTorch's total at stride 1, TensorFlow's SAME at stride > 1, the odd pixel at
the high end for correlation and at the low end for ``flip=True``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._geometry import (ACTIVATIONS, ConvGeometry, ConvOptions, ConvViews, NO_OPTIONS, _is_int, _memoized, _shape_str,
                        check_conv_shapes, conv_geometry, conv_output_size, same_padding)

SPATIAL = {1: "L", 3: "D, H, W"}  # the spatial axes' names, for messages


@dataclass(frozen=True)
class ConvNdGeometry(ConvViews):
    """Every size of one conv1d / conv3d call, resolved. ``input (N, C, *input_size)``, ``weight (K, C/groups,
    *kernel_size)``, output ``(N, K, *output_size)``; ``padding`` is ``((low, high), ...)`` per dimension."""

    N: int
    C: int
    K: int
    groups: int
    input_size: tuple
    kernel_size: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    output_size: tuple
    options: ConvOptions = NO_OPTIONS

    @property
    def nd(self) -> int:
        return len(self.input_size)

    def as_2d(self) -> ConvGeometry:
        """A 1-D call as the 2-D convolution of unit height it is (options kept)."""
        assert self.nd == 1
        (L,), (S,), (s,), ((pl, pr),), (d,), (Q,) = (self.input_size, self.kernel_size, self.stride,
                                                      self.padding, self.dilation, self.output_size)
        return ConvGeometry(N=self.N, C=self.C, H=1, W=L, K=self.K, R=1, S=S, groups=self.groups, sh=1, sw=s,
                            pt=0, pb=0, pl=pl, pr=pr, dh=1, dw=d, P=1, Q=Q, options=self.options)

    def plane(self, batch: int, input_hw=None) -> ConvGeometry:
        """The 2-D convolution over the last two dimensions of a 3-D call, ``batch`` planes at once, no
        options (``input_hw``: another ``(H, W)`` for a transposed call's shorter gradient)."""
        assert self.nd == 3
        H, W = self.input_size[1:] if input_hw is None else input_hw
        return conv_geometry((batch, self.C, H, W), (self.K, self.Cg) + self.kernel_size[1:], None,
                             self.stride[1:], self.padding[1:], self.dilation[1:], self.groups)


def as_tuple(value, n: int, name: str, *, minimum: int) -> tuple:
    """An int, or a sequence of ``n`` ints, as a tuple of ``n`` ints ``>= minimum``."""
    if _is_int(value):
        t = (int(value),) * n
    elif isinstance(value, (tuple, list)) and len(value) == n and all(_is_int(v) for v in value):
        t = tuple(int(v) for v in value)
    else:
        raise TypeError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    if min(t) < minimum:
        what = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return t


def padding_forms(n: int) -> str:
    lows = {1: "((left, right),)", 3: "((front, back), (top, bottom), (left, right))"}[n]
    return f"padding must be an int, a tuple of {n} ints, {lows} of ints, 'valid' or 'same'"


def explicit_padding(padding, n, kernel, stride, dilation, size, flip=False) -> tuple:
    """Any accepted ``padding`` form -> ``((low, high), ...)`` per spatial dimension."""
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * n
        if padding == "same":
            return tuple(same_padding(size[i], kernel[i], stride[i], dilation[i], flip) for i in range(n))
        raise ValueError(f"Invalid padding string {padding!r}, should be one of 'valid', 'same', "
                         f"an int, a tuple of {n} ints or {n} (low, high) pairs")
    if isinstance(padding, (tuple, list)) and len(padding) == n and all(isinstance(p, (tuple, list))
                                                                         for p in padding):
        pads = []
        for p in padding:
            if not (len(p) == 2 and all(_is_int(v) for v in p)):
                raise TypeError(f"{padding_forms(n)}, got {padding!r}")
            if min(p) < 0:
                raise ValueError(f"padding must be non-negative, got {padding!r}")
            pads.append((int(p[0]), int(p[1])))
        return tuple(pads)
    if not (_is_int(padding) or (isinstance(padding, (tuple, list)) and len(padding) == n
                                 and all(_is_int(p) for p in padding))):
        raise TypeError(f"{padding_forms(n)}, got {padding!r}")
    return tuple((p, p) for p in as_tuple(padding, n, "padding", minimum=0))


@_memoized
def conv_nd_geometry(n, input_shape, weight_shape, bias_shape=None, stride=1, padding=0, dilation=1, groups=1,
                     flip=False, activation=None) -> ConvNdGeometry:
    """Validate a conv1d (``n = 1``) or conv3d (``n = 3``) call and resolve every size."""
    fn = f"conv{n}d"
    N, C, *size = check_conv_shapes(input_shape, weight_shape, bias_shape, groups, n, fn)
    K, Cg, *kernel = (int(s) for s in weight_shape)
    st = as_tuple(stride, n, "stride", minimum=1)
    dl = as_tuple(dilation, n, "dilation", minimum=1)
    if activation not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {activation!r}; expected one of "
                         f"{', '.join(repr(a) for a in ACTIVATIONS)}")
    if not isinstance(flip, bool):
        raise TypeError(f"flip must be a bool, got {flip!r}")
    pads = explicit_padding(padding, n, kernel, st, dl, size, flip)
    padded = [size[i] + sum(pads[i]) for i in range(n)]
    eff = [dl[i] * (kernel[i] - 1) + 1 for i in range(n)]
    if any(p < e for p, e in zip(padded, eff)):
        raise ValueError(f"Calculated padded input size per channel: ({' x '.join(map(str, padded))}). "
                         f"Kernel size: ({' x '.join(map(str, eff))}). Kernel size can't be greater than actual "
                         f"input size (input{_shape_str([N, C] + size)}, weight{_shape_str(weight_shape)}, "
                         f"padding={pads}, dilation={dl})")
    out = tuple(conv_output_size(size[i], kernel[i], st[i], pads[i][0], pads[i][1], dl[i]) for i in range(n))
    return ConvNdGeometry(N=N, C=C, K=K, groups=int(groups), input_size=tuple(size), kernel_size=tuple(kernel),
                          stride=st, padding=pads, dilation=dl, output_size=out,
                          options=ConvOptions(bool(flip), activation, bias_shape is not None))
