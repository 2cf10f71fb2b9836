"""``gpuconv.receptive_field``: what one output pixel of a chain of sliding-window layers (convolutions,
pooling) sees of the chain's input, and how far apart two outputs' windows are. Plain integer arithmetic
on the layers' parameters; no arrays. ``gpuconv.dask.map_layers`` uses it to cut an image into windows
that a chain can run on independently (one halo exchange for the whole chain).

Per spatial axis, a layer ``l`` with kernel ``k``, stride ``s``, dilation ``d`` and padding ``(lo, hi)``
maps its input to its output as ``out[o]`` reads ``in[o*s - lo + j*d]``, ``j < k``. Composing ``L`` layers,
output ``o`` of the last one reads the chain's input rows ``[o*S - PLO, o*S - PLO + E)`` where

* ``S = s_1 * ... * s_L`` (the total stride; ``J_l = s_1 * ... * s_(l-1)`` is layer ``l``'s jump, ``J_1 = 1``),
* ``E = 1 + sum_l d_l*(k_l - 1) * J_l`` (the extent: the receptive field's size),
* ``PLO = sum_l lo_l * J_l`` (likewise ``PHI`` with the high paddings: what the layers' paddings amount
  to, counted in input rows).

The chain's output size is ``floor((H + PLO + PHI - E) / S) + 1``, exactly the layers' own sizes composed
(nested floor divisions by positive integers compose: ``floor((floor(a/b) - c)/e) = floor((a - c*b)/(b*e))``),
and ``E - S`` (when positive) is the halo: the rows a window of outputs reads beyond ``S`` rows per output.
Pooling with ``ceil_mode`` and ``padding='same'`` (whose amount depends on the input size) are not layer
specs here: give the resolved integer padding instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._geometry import _is_int
from ._geometry_nd import as_tuple

_KEYS = ("kernel_size", "stride", "padding", "dilation")


@dataclass(frozen=True)
class ReceptiveField:
    """The receptive field of a chain of layers, per spatial axis (``L``; ``H, W``; or ``D, H, W``).

    Attributes:
        size: ``E`` per axis, input rows / columns one output pixel depends on (its extent).
        stride: ``S`` per axis, the product of the layers' strides: neighbouring outputs' windows start
            this far apart in the input.
        padding: ``(low, high)`` per axis, the layers' paddings counted in input rows/columns.
        layers: how many layers were composed.
    """

    size: tuple
    stride: tuple
    padding: tuple
    layers: int

    @property
    def ndim(self) -> int:
        """The number of spatial axes (1, 2 or 3)."""
        return len(self.size)

    @property
    def halo(self) -> tuple[int, int]:
        """``max(E - S, 0)`` per axis: the input rows (columns) a run of outputs reads beyond ``S`` per
        output, i.e. the overlap of neighbouring chunks' windows."""
        return tuple(max(e - s, 0) for e, s in zip(self.size, self.stride))

    def output_size(self, input_size) -> tuple:
        """The chain's output size per axis for an input of ``input_size`` (an int or one per axis; an
        entry < 1: the input is too small)."""
        size = as_tuple(input_size, self.ndim, "input_size", minimum=0)
        return tuple((n + lo + hi - e) // s + 1
                     for n, e, s, (lo, hi) in zip(size, self.size, self.stride, self.padding))

    def input_window(self, start: int, stop: int, axis: int) -> tuple[int, int]:
        """Input positions ``[a, b)`` along spatial ``axis`` (0: the first spatial axis, e.g. rows) that outputs
        ``[start, stop)`` read, in the coordinates of the unpadded input: ``a`` may be negative and ``b``
        past the input's end, by at most the padding on that side."""
        if not (_is_int(axis) and 0 <= axis < self.ndim):
            raise ValueError(f"axis must be a spatial axis, 0 to {self.ndim - 1}, got {axis!r}")
        if not (_is_int(start) and _is_int(stop)) or not 0 <= start < stop:
            raise ValueError(f"need 0 <= start < stop, got start={start!r}, stop={stop!r}")
        e, s, lo = self.size[axis], self.stride[axis], self.padding[axis][0]
        return start * s - lo, (stop - 1) * s - lo + e


def _layer_params(i: int, layer, n: int):
    if not isinstance(layer, dict):
        raise TypeError(f"receptive_field(): layer {i} must be a dict with 'kernel_size' and optionally "
                        f"'stride', 'padding', 'dilation', got {type(layer).__name__}")
    unknown = sorted(set(layer) - set(_KEYS) - {"op"})
    if unknown:
        raise ValueError(f"receptive_field(): layer {i} has unknown keys {unknown}; expected {list(_KEYS)} "
                         "(and an optional 'op' label)")
    if "kernel_size" not in layer:
        raise ValueError(f"receptive_field(): layer {i} has no 'kernel_size'")
    k = as_tuple(layer["kernel_size"], n, f"layer {i} kernel_size", minimum=1)
    s = as_tuple(layer.get("stride", 1), n, f"layer {i} stride", minimum=1)
    d = as_tuple(layer.get("dilation", 1), n, f"layer {i} dilation", minimum=1)
    p = layer.get("padding", 0)
    if isinstance(p, str):
        raise ValueError(f"receptive_field(): layer {i} padding={p!r}: the amount depends on the input size; "
                         "give the resolved ints, (low, high) per axis, instead")
    if isinstance(p, (tuple, list)) and len(p) == n and all(isinstance(v, (tuple, list)) for v in p):
        pads = tuple(as_tuple(v, 2, f"layer {i} padding", minimum=0) for v in p)
    else:
        pads = tuple((v, v) for v in as_tuple(p, n, f"layer {i} padding", minimum=0))
    return k, s, d, pads


def _spatial_axes(layers) -> int:
    """The number of spatial axes the layers' tuples spell out (2 when every parameter is an int)."""
    for layer in layers:
        if isinstance(layer, dict):
            for key in _KEYS:
                v = layer.get(key)
                if isinstance(v, (tuple, list)):
                    return len(v)
    return 2


def receptive_field(layers, ndim=None) -> ReceptiveField:
    """The receptive field, total stride and summed padding of a chain of sliding-window layers.

    Args:
        layers: the layers in the order they run, each a dict ``{'kernel_size': k, 'stride': s,
            'padding': p, 'dilation': d}`` (defaults: stride 1, padding 0, dilation 1; for pooling write
            the stride, as it has no default here; an ``'op'`` entry is allowed as a label and ignored).
            ``k``, ``s``, ``d``: int or one per spatial axis; ``p``: int, one per axis or ``(low, high)``
            per axis. Pointwise layers (activations, bias, batch norm) change nothing: leave them out.
        ndim: the number of spatial axes (1, 2 or 3); by default the length of the first tuple among the
            layers' parameters, else 2.

    Returns a :class:`ReceptiveField` (``size``, ``stride``, ``padding``, ``halo``, ``output_size(hw)``,
    ``input_window(start, stop, axis)``). An empty chain is the identity (size 1, stride 1).

    Example: two 3x3 convolutions and a 2x2/2 max pool::

        >>> rf = receptive_field([dict(kernel_size=3), dict(kernel_size=3), dict(kernel_size=2, stride=2)])
        >>> rf.size, rf.stride, rf.halo
        ((6, 6), (2, 2), (4, 4))
    """
    if isinstance(layers, dict) or not hasattr(layers, "__iter__"):
        raise TypeError(f"receptive_field(): layers must be a list of layer dicts, got {type(layers).__name__}")
    layers = list(layers)
    n = _spatial_axes(layers) if ndim is None else ndim
    if n not in (1, 2, 3):
        raise ValueError(f"receptive_field(): ndim must be 1, 2 or 3, got {n!r}")
    size, jump, lo, hi = [1] * n, [1] * n, [0] * n, [0] * n
    for i, layer in enumerate(layers):
        k, s, d, pads = _layer_params(i, layer, n)
        for a in range(n):
            size[a] += d[a] * (k[a] - 1) * jump[a]
            lo[a] += pads[a][0] * jump[a]
            hi[a] += pads[a][1] * jump[a]
            jump[a] *= s[a]
    return ReceptiveField(size=tuple(size), stride=tuple(jump), padding=tuple(zip(lo, hi)), layers=len(layers))
