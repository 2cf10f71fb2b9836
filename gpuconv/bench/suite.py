"""The benchmark's layers: the suite (ResNet-50, VGG-16, AlexNet, MobileNetV2, LeNet-5; N=1 and float16
variants; 1-D audio and 3-D video / volume layers), its quick subset, its CPU-sized version, the NumPy
path's target layers, and how one layer is called (the same for gpuconv and ``torch.nn.functional``)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, replace

import numpy as np

import gpuconv

# (name, (N, C, H=W, K, R=S, stride, pad, groups)), float32, N=32 unless given.
CONV_LAYERS = [
    ("ResNet-50 stem 7x7/2", (32, 3, 224, 64, 7, 2, 3, 1)),
    ("ResNet-50 3x3", (32, 64, 56, 64, 3, 1, 1, 1)),
    ("1x1 expand", (32, 64, 56, 256, 1, 1, 0, 1)),
    ("1x1 stride 2", (32, 256, 56, 512, 1, 2, 0, 1)),
    ("conv4 3x3", (32, 256, 14, 256, 3, 1, 1, 1)),
    ("conv5 3x3", (32, 512, 7, 512, 3, 1, 1, 1)),
    ("VGG-16 conv1_2", (32, 64, 224, 64, 3, 1, 1, 1)),
    ("VGG-16 conv4_2", (32, 512, 28, 512, 3, 1, 1, 1)),
    ("AlexNet conv1", (32, 3, 224, 64, 11, 4, 2, 1)),
    ("AlexNet conv2", (32, 64, 27, 192, 5, 1, 2, 1)),
    ("AlexNet grouped conv2", (32, 96, 27, 256, 5, 1, 2, 2)),
    ("MobileNetV2 dw 96 /2", (32, 96, 112, 96, 3, 2, 1, 96)),
    ("MobileNetV2 dw 144", (32, 144, 56, 144, 3, 1, 1, 144)),
    ("MobileNetV2 dw 576", (32, 576, 14, 576, 3, 1, 1, 576)),
    ("LeNet-5 conv1", (256, 1, 32, 6, 5, 1, 0, 1)),
]
# (name, op, (N, C, H=W), window (adaptive: output size), stride, pad)
POOL_LAYERS = [
    ("max-pool 3x3/2 pad 1", "max_pool2d", (32, 64, 112), 3, 2, 1),
    ("avg-pool 2x2/2", "avg_pool2d", (32, 64, 112), 2, 2, 0),
    ("global avg-pool", "adaptive_avg_pool2d", (32, 2048, 7), 1, 1, 0),
]
# 1-D and 3-D layers (issue 18), float32: (name, op, (N, C, spatial), K (pooling: 0), window, stride, pad,
# groups, dilation),
# a size / window / stride / pad being an int (the same on every axis) or one per axis.
ND_LAYERS = [
    ("wav2vec2 conv1d 512 k3/2", "conv1d", (8, 512, 8000), 512, 3, 2, 0, 1, 1),  # feature encoder, 2nd conv
    ("Conformer dw conv1d k31", "conv1d", (32, 256, 512), 256, 31, 1, 15, 256, 1),  # conv module, depthwise
    ("TCN conv1d k3 d4", "conv1d", (16, 256, 2048), 256, 3, 1, 4, 1, 4),  # dilated, 'same' length
    ("C3D conv1", "conv3d", (16, 3, (16, 112, 112)), 64, 3, 1, 1, 1, 1),
    ("C3D conv3a", "conv3d", (16, 128, (8, 28, 28)), 256, 3, 1, 1, 1, 1),
    ("3-D U-Net 32 3x3x3 @64", "conv3d", (2, 32, 64), 32, 3, 1, 1, 1, 1),  # a full-resolution level
    ("C3D pool1 1x2x2", "max_pool3d", (16, 64, (16, 112, 112)), 0, (1, 2, 2), (1, 2, 2), 0, 1, 1),
]
LATENCY_LAYERS = ("ResNet-50 3x3", "1x1 expand", "conv5 3x3", "MobileNetV2 dw 144")  # also at N=1
FP16_LAYERS = ("ResNet-50 3x3", "1x1 expand", "MobileNetV2 dw 144", "max-pool 3x3/2 pad 1")  # also float16
QUICK = {("ResNet-50 3x3", "float32"), ("1x1 expand", "float32"), ("MobileNetV2 dw 144", "float32"),
         ("LeNet-5 conv1", "float32"), ("max-pool 3x3/2 pad 1", "float32"), ("global avg-pool", "float32"),
         ("conv5 3x3 N=1", "float32"), ("MobileNetV2 dw 144", "float16"), ("C3D conv1", "float32")}

# The CPU-sized suite: batch divided by CPU_BATCH_DIVISOR (at least 1; N=1 rows unchanged), each image
# axis of CPU_HALVE_FROM pixels or more halved, each 3-D axis of CPU_HALVE_FROM_3D or more halved (a volume
# costs a cube's worth), 1-D sequences unchanged (already cheap at the divided batch).
CPU_BATCH_DIVISOR = 16
CPU_HALVE_FROM = 112
CPU_HALVE_FROM_3D = 28
CPU_SCALING = (f"CPU-sized suite: batch N divided by {CPU_BATCH_DIVISOR} (32 -> 2, 256 -> 16, at least 1; the "
               f"N=1 rows unchanged), images of {CPU_HALVE_FROM} px or more halved (224 -> 112, 112 -> 56), "
               f"3-D axes of {CPU_HALVE_FROM_3D} or more halved (112 -> 56, 64 -> 32, 28 -> 14), "
               "1-D lengths unchanged")

# The NumPy path's target layers (``--targets``, CPU): the layer list and batches the NumPy fallback was
# tuned on, float32, convolutions with a bias; and its goals, as time ratios ours / PyTorch CPU.
TARGET_CONV_LAYERS = [
    ("LeNet conv1", (64, 1, 32, 6, 5, 1, 0, 1)),
    ("LeNet conv2", (64, 6, 14, 16, 5, 1, 0, 1)),
    ("AlexNet conv1", (8, 3, 224, 64, 11, 4, 2, 1)),
    ("3x3 256->256 @56", (4, 256, 56, 256, 3, 1, 1, 1)),
    ("1x1 256->64 @56", (8, 256, 56, 64, 1, 1, 0, 1)),
    ("3x3/2 128->128 @56", (8, 128, 56, 128, 3, 2, 1, 1)),
    ("depthwise 3x3 144 @56", (8, 144, 56, 144, 3, 1, 1, 144)),
]
TARGET_POOL_LAYERS = [("max-pool 3x3/2 pad 1", "max_pool2d", (8, 64, 112), 3, 2, 1)]
TARGETS = dict(conv_geomean=1.5, conv_worst=3.0, max_pool=2.0)  # ours / PyTorch time, at most

# The backward suite (``--backward``): the gradients of the suite's float32 layers, 2-D then 1-D / 3-D (not
# the N=1 or float16 variants); convolutions: the input gradient ('backward_data') and the weight gradient
# ('backward_filter'); pooling: the input gradient ('backward'), the names of ``gpuconv.last_kernel().direction``.
DIRECTIONS = {"forward": "", "backward_data": "data", "backward_filter": "filter", "backward": "input"}
BACKWARD_BAR = 2.0  # the NumPy path's gradients: time ours / PyTorch CPU at most this, in geometric mean


def _per_axis(v, dims: int) -> tuple:
    """An int (the same on every spatial axis) or a tuple of one per axis, as a tuple of ``dims``."""
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * dims


def _axes_label(v: tuple) -> str:
    """One number per axis: ``56x56``."""
    return "x".join(map(str, v))


def _scalar_label(v: tuple) -> str:
    """A stride, pad or dilation: one number when every axis has it (``/2 p1``), else one per axis."""
    return str(v[0]) if len(set(v)) == 1 else _axes_label(v)


@dataclass(frozen=True)
class Case:
    """One layer of the suite. ``op`` is gpuconv's (= torch.nn.functional's) name and says the number of
    spatial axes (``conv1d`` / ``conv2d`` / ``conv3d``, ``max_pool3d`` ...). ``H`` (the input's spatial size),
    ``R`` (the filter or window), ``stride`` and ``pad``: an int, the same on every spatial axis (the 2-D
    layers: square images and filters), or a tuple of one per axis (``(16, 112, 112)``). Pooling: ``R`` is
    the window (adaptive pooling: the output size) and ``K``/``groups``/``dilation`` are unused. ``bias``:
    convolutions called with a bias."""

    name: str
    op: str  # 'conv1d' | 'conv2d' | 'conv3d' | 'max_pool2d' | 'max_pool3d' | 'avg_pool2d' | 'adaptive_avg_pool2d'...
    N: int
    C: int
    H: int | tuple
    K: int = 0
    R: int | tuple = 0
    stride: int | tuple = 1
    pad: int | tuple = 0
    groups: int = 1
    dtype: str = "float32"
    bias: bool = False
    direction: str = "forward"  # or a gradient: 'backward_data' | 'backward_filter' (conv), 'backward' (pool)
    dilation: int | tuple = 1  # convolutions

    @property
    def is_backward(self) -> bool:
        return self.direction != "forward"

    @property
    def title(self) -> str:
        """The name, with the gradient for a backward case (log lines, lists)."""
        return f"{self.name} backward {DIRECTIONS[self.direction]}" if self.is_backward else self.name

    @property
    def is_conv(self) -> bool:
        return self.op.startswith("conv")

    @property
    def dims(self) -> int:
        """The number of spatial axes (the op's ``1d`` / ``2d`` / ``3d``)."""
        return int(self.op[-2])

    @property
    def size(self) -> tuple:
        """The input's spatial size, one per axis."""
        return _per_axis(self.H, self.dims)

    @property
    def window(self) -> tuple:
        """The filter's (pooling: the window's; adaptive pooling: the output's) size, one per axis."""
        return _per_axis(self.R, self.dims)

    @property
    def strides(self) -> tuple:
        return _per_axis(self.stride, self.dims)

    @property
    def pads(self) -> tuple:
        return _per_axis(self.pad, self.dims)

    @property
    def dilations(self) -> tuple:
        return _per_axis(self.dilation, self.dims)

    @property
    def input_shape(self) -> tuple:
        return (self.N, self.C) + self.size

    @property
    def weight_shape(self) -> tuple | None:
        return (self.K, self.C // self.groups) + self.window if self.is_conv else None

    @property
    def fan_in(self) -> int:
        """Inputs per output of a convolution (the weights' scale is 1/sqrt of it)."""
        return (self.C // self.groups) * math.prod(self.window)

    @property
    def bias_shape(self) -> tuple | None:
        return (self.K,) if self.is_conv and self.bias else None

    @property
    def kwargs(self) -> dict:
        """Keyword arguments of the call, the same for gpuconv and torch.nn.functional (``dilation`` only when
        not 1, so the 2-D calls are as they always were)."""
        if self.is_conv:
            d = dict(dilation=self.dilation) if set(self.dilations) != {1} else {}
            return dict(stride=self.stride, padding=self.pad, groups=self.groups, **d)
        if self.op.startswith("adaptive"):
            return dict(output_size=self.R)
        return dict(kernel_size=self.R, stride=self.stride, padding=self.pad)

    @property
    def output_shape(self) -> tuple:
        """PyTorch's output size per axis: ``floor((H + 2p - d(R-1) - 1) / s) + 1`` (pooling: d = 1)."""
        if self.op.startswith("adaptive"):
            return (self.N, self.C) + self.window
        dil = self.dilations if self.is_conv else (1,) * self.dims
        out = tuple((h + 2 * p - d * (r - 1) - 1) // s + 1
                    for h, r, s, p, d in zip(self.size, self.window, self.strides, self.pads, dil))
        return (self.N, self.K if self.is_conv else self.C) + out

    @property
    def flops(self) -> int:
        """2 per multiply-add for convolutions; 0 for pooling (judged by bytes)."""
        if not self.is_conv:
            return 0
        return 2 * math.prod(self.output_shape) * self.fan_in

    @property
    def nbytes(self) -> int:
        """Input + weight (+ bias) + output bytes; a gradient reads and writes the same sizes (the output's
        gradient for the output; max-pooling's input gradient also reads the int64 indices)."""
        shapes = [self.input_shape, self.output_shape] + ([self.weight_shape] if self.is_conv else [])
        shapes += [self.bias_shape] if self.bias_shape else []
        max_pool = self.op.startswith("max_pool")
        indices = 8 * math.prod(self.output_shape) if self.is_backward and max_pool else 0
        return np.dtype(self.dtype).itemsize * sum(math.prod(s) for s in shapes) + indices

    @property
    def memory_bound(self) -> bool:
        """Pooling and depthwise layers: reported in bytes/s rather than FLOP/s."""
        return not self.is_conv or (self.groups == self.C and self.C > 1)

    @property
    def shape_label(self) -> str:
        """``2x64x56x56, 64x3x3/1 p1`` (input, then filters x window / stride, pad); a stride or pad the same
        on every axis as one number."""
        inp = f"{self.N}x{self.C}x{_axes_label(self.size)}"
        if self.op.startswith("adaptive"):
            return f"{inp} -> {_axes_label(self.window)}"
        geometry = f"{_axes_label(self.window)}/{_scalar_label(self.strides)} p{_scalar_label(self.pads)}"
        if not self.is_conv:
            return f"{inp}, {geometry}"
        d = f" d{_scalar_label(self.dilations)}" if set(self.dilations) != {1} else ""
        g = f" g{self.groups}" if self.groups > 1 else ""
        b = " +bias" if self.bias else ""
        return f"{inp}, {self.K}x{geometry}{d}{g}{b}"

    def record(self) -> dict:
        """The case as the results file stores it (``bias`` only when set, ``direction`` only for a gradient,
        ``dilation`` only when not 1, as files before them had none)."""
        d = dataclasses.asdict(self)
        if not d["bias"]:
            del d["bias"]
        if not self.is_backward:
            del d["direction"]
        if set(self.dilations) == {1}:
            del d["dilation"]
        return d


def scale_for_cpu(case: Case) -> Case:
    """The CPU-sized version of a case (see ``CPU_SCALING``): an int size stays an int."""
    n = case.N if case.N == 1 else max(1, case.N // CPU_BATCH_DIVISOR)
    halve_from = {2: CPU_HALVE_FROM, 3: CPU_HALVE_FROM_3D}.get(case.dims)
    size = tuple(h // 2 if halve_from and h >= halve_from else h for h in case.size)
    return replace(case, N=n, H=size if isinstance(case.H, tuple) else size[0])


def build_suite(*, quick: bool = False, cpu: bool = False) -> list[Case]:
    """The issue's layer list (float32) and the 1-D / 3-D layers, then the N=1 latency variants, then the
    float16 variants; ``quick`` keeps the ``QUICK`` subset; ``cpu`` applies ``scale_for_cpu``."""
    base = [Case(name, "conv2d", N, C, H, K, R, s, p, g) for name, (N, C, H, K, R, s, p, g) in CONV_LAYERS]
    base += [Case(name, op, N, C, H, R=k, stride=s, pad=p) for name, op, (N, C, H), k, s, p in POOL_LAYERS]
    base += [Case(name, op, N, C, H, K, R, s, p, g, dilation=d)
             for name, op, (N, C, H), K, R, s, p, g, d in ND_LAYERS]
    by_name = {c.name: c for c in base}
    cases = (base + [replace(by_name[n], name=f"{n} N=1", N=1) for n in LATENCY_LAYERS]
             + [replace(by_name[n], dtype="float16") for n in FP16_LAYERS])
    if quick:
        cases = [c for c in cases if (c.name, c.dtype) in QUICK]
    if cpu:
        cases = [scale_for_cpu(c) for c in cases]
    return cases


def build_backward(*, cpu: bool = False) -> list[Case]:
    """The backward suite: for each float32 layer of the suite (the issue's 2-D list, then the 1-D / 3-D
    ``ND_LAYERS``; not the N=1 or float16 variants), the convolution's input and weight gradients, the
    pooling's input gradient; ``cpu`` applies ``scale_for_cpu``."""
    cases, base = [], ({name for name, _ in CONV_LAYERS} | {layer[0] for layer in POOL_LAYERS}
                       | {layer[0] for layer in ND_LAYERS})
    for c in build_suite(cpu=cpu):
        if c.dtype == "float32" and c.name in base:
            dirs = ("backward_data", "backward_filter") if c.is_conv else ("backward",)
            cases += [replace(c, direction=d) for d in dirs]
    return cases


def build_targets() -> list[Case]:
    """The NumPy path's target layers (``TARGET_CONV_LAYERS`` with a bias, then ``TARGET_POOL_LAYERS``),
    float32, at their own CPU batch sizes (not scaled)."""
    cases = [Case(name, "conv2d", N, C, H, K, R, s, p, g, bias=True)
             for name, (N, C, H, K, R, s, p, g) in TARGET_CONV_LAYERS]
    return cases + [Case(name, op, N, C, H, R=k, stride=s, pad=p) for name, op, (N, C, H), k, s, p in
                    TARGET_POOL_LAYERS]


def select(cases, layers=None, dtypes=None) -> list[Case]:
    """Cases whose name contains one of ``layers`` (case-insensitive substrings) and whose dtype is in
    ``dtypes``; None keeps all."""
    out = []
    for c in cases:
        if layers and not any(s.strip().lower() in c.name.lower() for s in layers if s.strip()):
            continue
        if dtypes and c.dtype not in dtypes:
            continue
        out.append(c)
    return out


def call_op(lib, case: Case, x, w, b=None, **extra):
    """``lib.<op>(x[, w, b], **case.kwargs, **extra)`` for lib = gpuconv or torch.nn.functional."""
    fn = getattr(lib, case.op)
    if not case.is_conv:
        return fn(x, **case.kwargs)
    return fn(x, w, **case.kwargs, **extra) if b is None else fn(x, w, b, **case.kwargs, **extra)
