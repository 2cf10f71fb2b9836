"""Pooling geometry: argument normalisation, validation and output sizes of the pooling ops (1-D, 2-D,
3-D max/avg, adaptive 2-D and 3-D), split from ``_geometry`` (the convolution's) whose helpers it reuses, the
padding parser included. Formulas (PyTorch's; docs/semantics.md, "Pooling"):

* output: ``floor((H + p_lo + p_hi - d*(k-1) - 1 + (s-1 if ceil_mode else 0)) / s) + 1``, then, with
  ``ceil_mode``, one less if the last window would start at or past ``H + p_lo``;
* adaptive window ``i`` of ``O`` over ``H``: ``[floor(i*H/O), ceil((i+1)*H/O))``;
* padding forms: ``resolve_pool_padding``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._geometry import _is_int, _memoized, _shape_str, as_pair, resolve_conv_padding


@dataclass(frozen=True)
class PoolGeometry:
    """Every size of one 2-D max/avg pooling call, resolved. ``ph``/``pw`` are the top / left padding (where
    the first window starts), ``pb``/``pr`` the bottom / right one (None: as ``ph``/``pw``, PyTorch's
    symmetric padding). ``pool_geometry_nd`` describes 1-D and 3-D calls (``PoolGeometryND``)."""

    N: int
    C: int
    H: int
    W: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    OH: int
    OW: int
    ceil_mode: bool = False
    pb: int | None = None
    pr: int | None = None

    def __post_init__(self):
        if self.pb is None:
            object.__setattr__(self, "pb", self.ph)
        if self.pr is None:
            object.__setattr__(self, "pr", self.pw)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.C, self.OH, self.OW)

    @property
    def padding(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((top, bottom), (left, right))``."""
        return ((self.ph, self.pb), (self.pw, self.pr))


class SpatialShapes:
    """``dims``, ``input_shape`` and ``output_shape`` of a pooling geometry from its ``N``, ``C``, ``spatial``
    (input size per spatial axis) and ``out`` (output size per axis): the interface the N-D code reads."""

    @property
    def dims(self) -> int:
        return len(self.spatial)

    @property
    def output_shape(self) -> tuple:
        return (self.N, self.C, *self.out)

    @property
    def input_shape(self) -> tuple:
        return (self.N, self.C, *self.spatial)


@dataclass(frozen=True)
class AdaptiveGeometry(SpatialShapes):
    """Sizes of a 2-D adaptive pooling call; window ``i`` is ``[floor(i*H/OH), ceil((i+1)*H/OH))``.
    ``spatial`` / ``out`` / ``dims`` / ``input_shape``: the interface it shares with ``AdaptiveGeometryND``,
    which the N-D code (NumPy and CUDA) reads."""

    N: int
    C: int
    H: int
    W: int
    OH: int
    OW: int

    @property
    def spatial(self) -> tuple[int, int]:
        return (self.H, self.W)

    @property
    def out(self) -> tuple[int, int]:
        return (self.OH, self.OW)


@dataclass(frozen=True)
class AdaptiveGeometryND(SpatialShapes):
    """Sizes of an adaptive pooling call over ``dims`` spatial axes (3: ``D, H, W``): per axis the input size
    ``spatial`` and the output size ``out``; window ``i`` of an axis is ``[floor(i*n/o), ceil((i+1)*n/o))``."""

    N: int
    C: int
    spatial: tuple
    out: tuple


# --------------------------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------------------------

def pool_output_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool, p_hi: int | None = None) -> int:
    """PyTorch's ``pooling_output_shape``, including the ceil_mode rule that the last window must
    start inside the input or the leading padding; ``p`` is the leading padding, ``p_hi`` the trailing one
    (None: ``p``)."""
    p_hi = p if p_hi is None else p_hi
    out = (size + p + p_hi - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _pool_input_shape(input_shape, fn: str):
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) == 3:
        return (1,) + input_shape
    if len(input_shape) != 4:
        raise ValueError(f"{fn}: Expected 3D or 4D input, but got input of size: {_shape_str(input_shape)}")
    if input_shape[1] == 0 or input_shape[2] == 0 or input_shape[3] == 0:
        raise ValueError(f"{fn}: Expected input's non-batch dimensions to have positive length, "
                         f"but input has a shape of {_shape_str(input_shape)}")
    return input_shape


def _per_side_padding(padding) -> bool:
    """Whether a pooling ``padding`` is one of the forms PyTorch's pooling does not take: a string, or a
    ``(low, high)`` pair per axis."""
    return isinstance(padding, str) or (isinstance(padding, (tuple, list)) and len(padding) > 0
                                        and all(isinstance(p, (tuple, list)) for p in padding))


def resolve_pool_padding(padding, kernel, stride, dilation, spatial, fn: str) -> tuple[tuple[int, int], ...]:
    """A pooling ``padding`` -> ``((low, high), ...)`` per spatial axis (docs/semantics.md, "Pooling:
    padding forms"). An int or one int per axis: symmetric, PyTorch's rule ``pad <= kernel_size // 2``.
    ``((low, high), ...)``, ``'valid'`` or ``'same'`` (TensorFlow SAME = ONNX SAME_UPPER: output
    ``ceil(size / stride)``, the odd padding cell at the high end): each side at most the window's extent
    less one, ``(k - 1) * d`` (ONNX's rule, pad < extent), so that every window starts or ends inside the
    input. The per-axis parsing is the convolution's (``resolve_conv_padding``, 2 axes at a time)."""
    n = len(kernel)
    if _per_side_padding(padding):
        if isinstance(padding, (tuple, list)) and len(padding) != n:
            raise TypeError(f"padding must be an int, {n} ints, {n} (low, high) pairs, 'valid' or 'same', "
                            f"got {padding!r}")
        sides = []
        for a in range(0, n, 2):  # the conv parser takes two axes; an odd last axis is paired with itself
            axes = [a, a + 1] if a + 1 < n else [a, a]
            form = padding if isinstance(padding, str) else tuple(padding[i] for i in axes)
            t, b, l, r = resolve_conv_padding(form, tuple(kernel[i] for i in axes), tuple(stride[i] for i in axes),
                                              tuple(dilation[i] for i in axes), tuple(spatial[i] for i in axes))
            sides += [(t, b), (l, r)][:len(set(axes))]
        for (lo, hi), k, d in zip(sides, kernel, dilation):
            if max(lo, hi) > (k - 1) * d:
                raise ValueError(f"{fn}: explicit padding must be smaller than the window extent "
                                 f"dilation*(kernel_size-1)+1 on each side, but got padding={tuple(sides)}, "
                                 f"kernel_size={tuple(kernel)}, dilation={tuple(dilation)}")
        return tuple(sides)
    if _is_int(padding):
        pads = (int(padding),) * n
    elif isinstance(padding, (tuple, list)) and len(padding) == n and all(_is_int(p) for p in padding):
        pads = tuple(int(p) for p in padding)
    else:
        raise TypeError(f"padding must be an int, {n} ints, {n} (low, high) pairs, 'valid' or 'same', "
                        f"got {padding!r}")
    if min(pads) < 0:
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    if any(p > k // 2 for p, k in zip(pads, kernel)):
        raise ValueError(f"{fn}: pad should be smaller than or equal to half of kernel size, but got "
                         f"padding={pads}, kernel_size={tuple(kernel)}")
    return tuple((p, p) for p in pads)


@_memoized
def pool_geometry(input_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                  fn: str = "pool2d") -> PoolGeometry:
    """Validate a 2-D max/avg pooling call and resolve every size."""
    N, C, H, W = _pool_input_shape(input_shape, fn)
    if len(input_shape) == 3 and min(C, H, W) == 0:
        raise ValueError(f"{fn}: Expected input's dimensions to have positive length, but input has a "
                         f"shape of {_shape_str(input_shape)}")
    kh, kw = as_pair(kernel_size, "kernel_size", minimum=1)
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        sh, sw = kh, kw
    else:
        sh, sw = as_pair(stride, "stride", minimum=1)
    dh, dw = as_pair(dilation, "dilation", minimum=1)
    (ph, pb), (pw, pr) = resolve_pool_padding(padding, (kh, kw), (sh, sw), (dh, dw), (H, W), fn)
    OH = pool_output_size(H, kh, sh, ph, dh, ceil_mode, pb)
    OW = pool_output_size(W, kw, sw, pw, dw, ceil_mode, pr)
    if OH < 1 or OW < 1:
        pad = (ph, pw) if (ph, pw) == (pb, pr) else ((ph, pb), (pw, pr))
        raise ValueError(f"{fn}: Given input size: ({C}x{H}x{W}). Calculated output size: "
                         f"({C}x{OH}x{OW}). Output size is too small (kernel_size={(kh, kw)}, "
                         f"stride={(sh, sw)}, padding={pad}, dilation={(dh, dw)})")
    return PoolGeometry(N=N, C=C, H=H, W=W, kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw, dh=dh, dw=dw,
                        OH=OH, OW=OW, ceil_mode=bool(ceil_mode), pb=pb, pr=pr)


def _adaptive_output_size(output_size, spatial, fn: str) -> tuple:
    """``output_size`` (an int, or one int or None per axis; None keeps that input size) -> one positive int
    per axis of ``spatial``."""
    n = len(spatial)
    if _is_int(output_size):
        out = (int(output_size),) * n
    elif (isinstance(output_size, (tuple, list)) and len(output_size) == n
          and all(v is None or _is_int(v) for v in output_size)):
        out = tuple(size if v is None else int(v) for v, size in zip(output_size, spatial))
    else:
        raise TypeError(f"{fn}: output_size must be an int or a {('pair', 'triple')[n - 2]} of ints (an entry "
                        f"None keeps that input size), got {output_size!r}")
    if min(out) < 1:
        raise ValueError(f"{fn}: output_size must be positive, got {output_size!r}")
    return out


@_memoized
def adaptive_geometry(input_shape, output_size, fn: str = "adaptive_pool2d") -> AdaptiveGeometry:
    """Validate a 2-D adaptive pooling call. ``output_size``: int, pair, or a pair with ``None``
    entries meaning "same as the input"."""
    N, C, H, W = _pool_input_shape(input_shape, fn)
    OH, OW = _adaptive_output_size(output_size, (H, W), fn)
    return AdaptiveGeometry(N=N, C=C, H=H, W=W, OH=OH, OW=OW)


@_memoized
def adaptive_geometry_nd(input_shape, output_size, fn: str = "adaptive_pool3d", dims: int = 3) -> AdaptiveGeometryND:
    """Validate a ``dims``-D adaptive pooling call (input ``(N, C, *spatial)`` or unbatched ``(C, *spatial)``;
    PyTorch's messages): ``output_size`` an int or ``dims`` entries, each an int or None (that input size)."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) not in (dims + 1, dims + 2):
        raise ValueError(f"{fn}: Expected {dims + 1}D or {dims + 2}D input, but got input of size: "
                         f"{_shape_str(shape)}")
    if min(shape[-dims - 1:]) <= 0:
        raise ValueError(f"{fn}: Expected input's non-batch dimensions to have positive length, but input has "
                         f"a shape of {_shape_str(shape)}")
    N, C, *spatial = (1,) + shape if len(shape) == dims + 1 else shape
    out = _adaptive_output_size(output_size, tuple(spatial), fn)
    return AdaptiveGeometryND(N=N, C=C, spatial=tuple(spatial), out=out)


def adaptive_window(i: int, in_size: int, out_size: int) -> tuple[int, int]:
    """``[start, end)`` of adaptive window ``i``: ``floor(i*H/O)`` .. ``ceil((i+1)*H/O)``."""
    return (i * in_size) // out_size, -(-((i + 1) * in_size) // out_size)


# --------------------------------------------------------------------------------------------
# 1-D and 3-D pooling
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PoolGeometryND(SpatialShapes):
    """Every size of one 1-D or 3-D max/avg pooling call, resolved: per spatial axis (``L``, or ``D, H, W``)
    the input size, kernel, stride, ``(low, high)`` padding, dilation and output size. ``plane`` is the
    2-D geometry of the last two axes (for 1-D: a plane of one row, ``H = 1``), which the 1-D ops run on
    and the 3-D ones compose."""

    N: int
    C: int
    spatial: tuple
    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    out: tuple
    ceil_mode: bool = False

    @property
    def plane(self) -> PoolGeometry:
        ax = [(1, 1, 1, (0, 0), 1, 1)] * (3 - self.dims) + list(zip(self.spatial, self.kernel, self.stride,
                                                                   self.padding, self.dilation, self.out))
        (H, kh, sh, (ph, pb), dh, OH), (W, kw, sw, (pw, pr), dw, OW) = ax[1:]
        return PoolGeometry(N=self.N, C=self.C, H=H, W=W, kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw, dh=dh, dw=dw,
                            OH=OH, OW=OW, ceil_mode=self.ceil_mode, pb=pb, pr=pr)


def as_tuple(value, n: int, name: str, *, minimum: int) -> tuple:
    """An int or ``n`` ints -> a tuple of ``n`` ints, each ``>= minimum`` (``as_pair`` for any ``n``)."""
    if _is_int(value):
        t = (int(value),) * n
    elif isinstance(value, (tuple, list)) and len(value) == n and all(_is_int(v) for v in value):
        t = tuple(int(v) for v in value)
    else:
        raise TypeError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    if min(t) < minimum:
        raise ValueError(f"{name} must be {'positive' if minimum == 1 else 'non-negative'}, got {value!r}")
    return t


@_memoized
def pool_geometry_nd(input_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                     fn: str = "pool", dims: int = 3) -> PoolGeometryND:
    """Validate a ``dims``-D (1 or 3) max/avg pooling call (input ``(N, C, *spatial)`` or unbatched
    ``(C, *spatial)``) and resolve every size, as ``pool_geometry`` does in 2-D."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) not in (dims + 1, dims + 2):
        raise ValueError(f"{fn}: Expected {dims + 1}D or {dims + 2}D input, but got input of size: "
                         f"{_shape_str(shape)}")
    if min(shape[-dims - 1:]) <= 0:
        raise ValueError(f"{fn}: Expected input's non-batch dimensions to have positive length, but input has "
                         f"a shape of {_shape_str(shape)}")
    N, C, *spatial = (1,) + shape if len(shape) == dims + 1 else shape
    kernel = as_tuple(kernel_size, dims, "kernel_size", minimum=1)
    empty = stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0)
    strides = kernel if empty else as_tuple(stride, dims, "stride", minimum=1)
    dil = as_tuple(dilation, dims, "dilation", minimum=1)
    pads = resolve_pool_padding(padding, kernel, strides, dil, spatial, fn)
    out = tuple(pool_output_size(n, k, s, lo, d, ceil_mode, hi)
                for n, k, s, (lo, hi), d in zip(spatial, kernel, strides, pads, dil))
    if min(out) < 1:
        raise ValueError(f"{fn}: Given input size: ({'x'.join(map(str, [C, *spatial]))}). Calculated output "
                         f"size: ({'x'.join(map(str, [C, *out]))}). Output size is too small "
                         f"(kernel_size={kernel}, stride={strides}, padding={pads}, dilation={dil})")
    return PoolGeometryND(N=N, C=C, spatial=tuple(spatial), kernel=kernel, stride=strides, padding=pads,
                          dilation=dil, out=out, ceil_mode=bool(ceil_mode))
