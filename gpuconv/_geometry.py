"""Argument normalisation, validation and output-size arithmetic, shared by every backend.

Everything here works on plain Python ints and shapes; nothing touches array data. Each public
function of gpuconv first turns its arguments into one of the frozen geometry records below, and the
backends (NumPy, CUDA) receive only that record: they never re-derive sizes, so they cannot disagree.

Formulas (PyTorch's; docs/semantics.md has them all, with the traps and the differences):

* convolution output: ``P = floor((H + pt + pb - dh*(R-1) - 1) / sh) + 1`` (likewise ``Q``);
* ``padding='same'``: see ``same_padding`` (the odd pixel's side depends on ``flip``).

The pooling ops' geometry is in ``_pool_geometry`` (it reuses the helpers and the padding parser here).
"""

from __future__ import annotations

import functools
import marshal
import numbers
from dataclasses import dataclass

# Activation codes shared with the CUDA kernels (kernels/common.cuh, enum Activation).
ACTIVATIONS = {None: 0, "relu": 1, "leaky_relu": 2, "sigmoid": 3, "tanh": 4}
LEAKY_RELU_SLOPE = 0.01


def _shape_str(shape) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _is_int(v) -> bool:
    return type(v) is int or (isinstance(v, numbers.Integral) and not isinstance(v, bool))


_PLAIN = frozenset((int, bool, str, type(None)))
MEMO_SIZE = 512  # distinct argument lists remembered per geometry function


def _memo_key(args):
    """A dict key that identifies ``args`` exactly, types included (``True`` and ``1``, ``[1, 2]`` and
    ``(1, 2)`` differ), or None for arguments that are not plain values.

    Fast path: ``marshal`` writes ints, bools, strings, None, tuples and lists with a type code each
    and refuses most other objects; but it writes any buffer-protocol object (a NumPy scalar, bytes) as
    raw bytes under the code ``b"s"``, so two of those holding the same bytes would share a key. A key
    containing that byte anywhere (also a string or an int that merely contains it) takes the slow
    path, ``_plain_key``."""
    try:
        key = marshal.dumps(args, 2)
    except ValueError:  # an object marshal refuses: not a plain value
        return None
    return key if b"s" not in key else _plain_key(args)


def _plain_key(value):
    """``value`` tagged with its type, recursively, when it is built only of ``int``, ``bool``, ``str``,
    ``None``, tuples and lists; else None. Lists become tuples (hashable) tagged ``list``."""
    t = type(value)
    if t in _PLAIN:
        return t, value
    if t is tuple or t is list:
        types = tuple(map(type, value))
        if _PLAIN.issuperset(types):  # a shape or a pair: tag it in one go
            return t, types, tuple(value)
        items = tuple(map(_plain_key, value))
        return None if None in items else (t, items)
    return None


def _memoized(fn):
    """Remember ``fn``'s results for its last ``MEMO_SIZE`` distinct argument lists (a network calls the
    same few layers over and over, and validating and resolving one costs ~25 us of Python, a tenth of
    what a small layer takes). Only calls whose positional arguments are plain values (``_memo_key``)
    are remembered; any other call, and any call that raises, is simply computed."""
    memo = {}

    @functools.wraps(fn)
    def memoized(*args, **kwargs):
        key = None if kwargs else _memo_key(args)
        if key is None:
            return fn(*args, **kwargs)
        result = memo.get(key)
        if result is None:
            result = fn(*args)
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            memo[key] = result
        return result

    memoized.cache_clear = memo.clear
    return memoized


def as_pair(value, name: str, *, minimum: int) -> tuple[int, int]:
    """``int`` or a length-2 sequence of ints -> ``(a, b)``; every entry must be ``>= minimum``."""
    if _is_int(value):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        what = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return pair


@dataclass(frozen=True)
class ConvOptions:
    """What a conv2d call computes beyond its sizes: true convolution instead of cross-correlation, the
    fused activation, and whether a bias is added. The autotuner's choice never depends on these (the
    kernels handle every option identically); a backward op reads them to apply the activation's
    derivative and to know whether a bias gradient exists."""

    flip: bool = False  # True: true convolution (kernel rotated by 180 degrees)
    activation: str | None = None
    has_bias: bool = False

    @property
    def activation_code(self) -> int:
        return ACTIVATIONS[self.activation]


NO_OPTIONS = ConvOptions()


class ConvViews:
    """What a convolution's geometry derives from its fields, for any number of spatial dimensions (the
    dataclasses below give N, C, K, groups, options and the per-dimension views input_size, kernel_size,
    output_size): channels per group, the options read through the geometry by the launch code and the
    NumPy path, and the array shapes."""

    @property
    def Cg(self) -> int:
        """Input channels per group (the weight's second dimension)."""
        return self.C // self.groups

    @property
    def Kg(self) -> int:
        """Filters per group."""
        return self.K // self.groups

    @property
    def flip(self) -> bool:
        return self.options.flip

    @property
    def activation(self) -> str | None:
        return self.options.activation

    @property
    def has_bias(self) -> bool:
        return self.options.has_bias

    @property
    def activation_code(self) -> int:
        return self.options.activation_code

    @property
    def input_shape(self) -> tuple:
        return (self.N, self.C) + tuple(self.input_size)

    @property
    def weight_shape(self) -> tuple:
        return (self.K, self.Cg) + tuple(self.kernel_size)

    @property
    def output_shape(self) -> tuple:
        return (self.N, self.K) + tuple(self.output_size)


@dataclass(frozen=True)
class ConvGeometry(ConvViews):
    """Every size of one conv2d call, resolved, plus its options (``ConvOptions``, kept apart). Arrays are
    NCHW, weight is (K, C/groups, R, S).

    The geometry always describes the forward convolution, input ``x`` (N, C, H, W) to output ``y``
    (N, K, P, Q). Other directions reuse it unchanged: backward data (and a transposed convolution, which
    is the same computation) produces an ``x``-shaped result from a ``y``-shaped one, backward filter a
    weight-shaped one; an operation's direction says which side is computed. The per-dimension views
    (``input_size``, ``kernel_size``, ``stride``, ``padding``, ``dilation``, ``output_size``) are what code
    written for any number of spatial dimensions reads; the single-letter fields are the 2-D kernels'
    parameters."""

    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    groups: int
    sh: int
    sw: int
    pt: int  # padding top / bottom / left / right (asymmetric allowed)
    pb: int
    pl: int
    pr: int
    dh: int
    dw: int
    P: int  # output height
    Q: int  # output width
    options: ConvOptions = NO_OPTIONS

    # per spatial dimension (H, W order)
    @property
    def input_size(self) -> tuple[int, int]:
        return (self.H, self.W)

    @property
    def kernel_size(self) -> tuple[int, int]:
        return (self.R, self.S)

    @property
    def stride(self) -> tuple[int, int]:
        return (self.sh, self.sw)

    @property
    def padding(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((low, high), ...)`` per dimension: ``((top, bottom), (left, right))``."""
        return ((self.pt, self.pb), (self.pl, self.pr))

    @property
    def dilation(self) -> tuple[int, int]:
        return (self.dh, self.dw)

    @property
    def output_size(self) -> tuple[int, int]:
        return (self.P, self.Q)

    @property
    def flops(self) -> int:
        """Multiply-adds counted as two flops, as benchmarks usually do."""
        return 2 * self.N * self.K * self.P * self.Q * self.Cg * self.R * self.S


# --------------------------------------------------------------------------------------------
# convolution
# --------------------------------------------------------------------------------------------

def conv_output_size(size: int, k: int, s: int, p_lo: int, p_hi: int, d: int) -> int:
    """``floor((size + p_lo + p_hi - d*(k-1) - 1) / s) + 1`` (may be < 1; callers check)."""
    return (size + p_lo + p_hi - d * (k - 1) - 1) // s + 1


def same_padding(size: int, k: int, s: int, d: int, flip: bool = False) -> tuple[int, int]:
    """Padding (low, high) for ``padding='same'`` (docs/semantics.md, "conv2d: padding='same'").

    Total: with stride 1, PyTorch's ``d*(k-1)`` (output size = input size); with stride > 1 (PyTorch
    refuses it), TensorFlow/JAX ``SAME``: output ``ceil(size/s)``, total
    ``max((out-1)*s + d*(k-1) + 1 - size, 0)``.

    Split of an odd total: cross-correlation (``flip=False``) puts the odd pixel at the high end
    (bottom / right), as PyTorch, TensorFlow, JAX and SciPy's ``correlate2d``. True convolution
    (``flip=True``) puts it at the low end (top / left), as SciPy's ``convolve2d``, NumPy's ``convolve``
    and MATLAB's ``conv2``: rotating the kernel by 180 degrees moves its centre, so the split is the
    mirror image. At every stride this makes ``flip=True`` the mirror of ``flip=False``: convolving ``x``
    equals reversing (rows and columns) the correlation of the reversed ``x`` with the same weight
    (wherever the windows reach the last row and column, i.e. the total is not clamped at 0).
    """
    if s == 1:
        total = d * (k - 1)
    else:
        out = -(-size // s)
        total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
    small, large = total // 2, total - total // 2
    return (large, small) if flip else (small, large)


def resolve_conv_padding(padding, kernel_hw, stride, dilation, input_hw,
                         flip: bool = False) -> tuple[int, int, int, int]:
    """Any accepted ``padding`` form -> ``(top, bottom, left, right)``. ``flip`` matters for ``'same'``
    only (see ``same_padding``)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            top, bottom = same_padding(input_hw[0], kernel_hw[0], stride[0], dilation[0], flip)
            left, right = same_padding(input_hw[1], kernel_hw[1], stride[1], dilation[1], flip)
            return (top, bottom, left, right)
        raise ValueError(f"Invalid padding string {padding!r}, should be one of 'valid', 'same', "
                         "an int, a pair of ints or ((top, bottom), (left, right))")
    if (isinstance(padding, (tuple, list)) and len(padding) == 2
            and all(isinstance(p, (tuple, list)) for p in padding)):
        (top, bottom), (left, right) = (_padding_pair(p, padding) for p in padding)
        return (top, bottom, left, right)
    if not (_is_int(padding) or (isinstance(padding, (tuple, list)) and len(padding) == 2
                                 and all(_is_int(p) for p in padding))):
        raise TypeError(f"{CONV_PADDING_FORMS}, got {padding!r}")
    ph, pw = as_pair(padding, "padding", minimum=0)
    return (ph, ph, pw, pw)


CONV_PADDING_FORMS = ("padding must be an int, a pair of ints, ((top, bottom), (left, right)) of ints, "
                      "'valid' or 'same'")


def _padding_pair(pair, padding) -> tuple[int, int]:
    """One ``(low, high)`` entry of a ``((top, bottom), (left, right))`` padding; an error echoes the
    whole ``padding`` as the caller wrote it."""
    if not (len(pair) == 2 and all(_is_int(v) for v in pair)):
        raise TypeError(f"{CONV_PADDING_FORMS}, got {padding!r}")
    if min(pair) < 0:
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return int(pair[0]), int(pair[1])


KERNEL_AXES = {1: "kL", 2: "kH, kW", 3: "kD, kH, kW"}


def check_conv_shapes(input_shape, weight_shape, bias_shape=None, groups=1, n=2, fn="conv2d"):
    """Validate ranks and channel counts of a convolution over ``n`` spatial dimensions (conv1d / conv2d /
    conv3d: PyTorch's messages); returns the batched input shape ``(N, C, *spatial)``."""
    input_shape = tuple(int(s) for s in input_shape)
    weight_shape = tuple(int(s) for s in weight_shape)
    if len(weight_shape) != n + 2:
        raise ValueError(f"weight must be {n + 2}-D (out_channels, in_channels/groups, {KERNEL_AXES[n]}), "
                         f"got weight of size {_shape_str(weight_shape)}")
    if len(input_shape) == n + 1:
        input_shape = (1,) + input_shape
    elif len(input_shape) != n + 2:
        raise ValueError(f"Expected {n + 1}D (unbatched) or {n + 2}D (batched) input to {fn}, "
                         f"but got input of size: {_shape_str(input_shape)}")
    if not _is_int(groups):
        raise TypeError(f"groups must be an int, got {groups!r}")
    if groups <= 0:
        raise ValueError(f"non-positive groups is not supported, got groups={groups}")
    C, K, Cg = input_shape[1], weight_shape[0], weight_shape[1]
    if min(weight_shape) <= 0:
        raise ValueError(f"weight of size {_shape_str(weight_shape)} has an empty dimension")
    if K % groups != 0:
        raise ValueError(f"Given groups={groups}, expected weight to be divisible by {groups} at "
                         f"dimension 0, but got weight of size {_shape_str(weight_shape)} instead")
    if C % groups != 0:
        raise ValueError(f"Given groups={groups}, expected input{_shape_str(input_shape)} to have a "
                         f"channel count divisible by {groups}, but got {C} channels instead")
    if Cg * groups != C:
        raise ValueError(f"Given groups={groups}, weight of size {_shape_str(weight_shape)}, expected "
                         f"input{_shape_str(input_shape)} to have {Cg * groups} channels, but got "
                         f"{C} channels instead")
    if bias_shape is not None and tuple(bias_shape) != (K,):
        raise ValueError(f"Given weight of size {_shape_str(weight_shape)}, expected bias to be 1-dimensional "
                         f"with {K} elements, but got bias of size {_shape_str(bias_shape)} instead")
    return input_shape


@_memoized
def conv_geometry(input_shape, weight_shape, bias_shape=None, stride=1, padding=0, dilation=1,
                  groups=1, flip=False, activation=None) -> ConvGeometry:
    """Validate a conv2d call's shapes and arguments and resolve every size."""
    N, C, H, W = check_conv_shapes(input_shape, weight_shape, bias_shape, groups)
    K, Cg, R, S = (int(s) for s in weight_shape)
    sh, sw = as_pair(stride, "stride", minimum=1)
    dh, dw = as_pair(dilation, "dilation", minimum=1)
    if activation not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {activation!r}; expected one of "
                         f"{', '.join(repr(a) for a in ACTIVATIONS)}")
    if not isinstance(flip, (bool,)):
        raise TypeError(f"flip must be a bool, got {flip!r}")
    pt, pb, pl, pr = resolve_conv_padding(padding, (R, S), (sh, sw), (dh, dw), (H, W), flip)
    eff_r, eff_s = dh * (R - 1) + 1, dw * (S - 1) + 1
    if H + pt + pb < eff_r or W + pl + pr < eff_s:
        raise ValueError(f"Calculated padded input size per channel: ({H + pt + pb} x {W + pl + pr}). "
                         f"Kernel size: ({eff_r} x {eff_s}). Kernel size can't be greater than actual "
                         f"input size (input{_shape_str((N, C, H, W))}, weight{_shape_str(weight_shape)}, "
                         f"padding={(pt, pb, pl, pr)}, dilation={(dh, dw)})")
    P = conv_output_size(H, R, sh, pt, pb, dh)
    Q = conv_output_size(W, S, sw, pl, pr, dw)
    return ConvGeometry(N=N, C=C, H=H, W=W, K=K, R=R, S=S, groups=int(groups), sh=sh, sw=sw,
                        pt=pt, pb=pb, pl=pl, pr=pr, dh=dh, dw=dw, P=P, Q=Q,
                        options=ConvOptions(bool(flip), activation, bias_shape is not None))


def tap_outputs(o0: int, o1: int, in0: int, in1: int, offset: int, stride: int) -> tuple[int, int, int]:
    """The outputs ``o`` in ``[lo, hi)`` (within ``[o0, o1)``) whose window tap reads input ``o*stride + offset``
    inside ``[in0, in1)`` (``offset``: the tap's ``tap*dilation - padding``), and the input read by ``o = lo``.
    An empty range has ``hi == lo``. Shared by the NumPy pooling passes and gradients."""
    lo = max(o0, -((offset - in0) // stride))  # ceil((in0 - offset) / stride)
    hi = min(o1, -((offset - in1) // stride))  # ceil((in1 - offset) / stride)
    return lo, max(lo, hi), lo * stride + offset
