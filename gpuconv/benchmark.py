"""``python -m gpuconv bench``: every gpuconv algorithm against the library a user would pick instead.

On a GPU (CuPy usable): each conv2d algorithm of ours (``gpuconv._cuda.conv.ALGOS`` + ``'auto'``, read at
run time) and each pooling kernel, against PyTorch/cuDNN in float32 with TF32 off (the exact comparison)
and, in a column of its own, with TF32 on (PyTorch's default for convolutions). On the CPU: the NumPy path
against PyTorch CPU (all its threads) on a CPU-sized suite (``scale_for_cpu``). Without PyTorch, ours
runs alone and the peer is reported missing (gpuconv never needs torch).

Method
------
* Inputs ``x ~ N(0, 1)``, weights ``~ N(0, 1/fan_in)``, no bias; PyTorch gets the very same arrays
  zero-copy (``torch.from_numpy`` / ``torch.as_tensor`` of the CuPy array, pointer checked).
* Before anything is timed, every contender's output is checked against the reference: PyTorch on the
  inputs upcast to float32 with TF32 off (without PyTorch, on a GPU: gpuconv's NumPy path on host copies;
  on the CPU: nothing, the rows say "unchecked"). Tolerances: ``TOLERANCES``; ``TF32_TOLERANCE`` for
  cuDNN's TF32 column and for our tensor-core algorithms on float32 (``igemm_tc``, TF32 operands), whose
  like-for-like peer is that TF32 column. A wrong answer fails its
  row and is not timed; an algorithm that declines the case (``ValueError`` by explicit rule) gives a
  "declined" row with the message.
* GPU timing: CuPy and PyTorch share one CUDA stream (a CuPy stream, wrapped for PyTorch by
  ``torch.cuda.ExternalStream``). Each repetition first writes a buffer of twice the device's L2 size
  (``cudaDevAttrL2CacheSize``), flushing the L2, then a one-thread spin kernel keeps the stream busy
  for ``SPIN_US`` while the host enqueues the call between two CUDA events: the figure is the GPU's
  execution time, without the host's launch overhead. The contenders take turns within each repetition
  (order reversed every other repetition). Warm-up calls come first (NVRTC compiles our kernels; cuDNN
  picks its algorithm, ``torch.backends.cudnn.benchmark = True``).
* CPU timing: wall clock, all repetitions of one contender and then the next, with a pause between:
  OpenBLAS / OpenMP worker threads keep spinning after a call and would steal cores from the other
  library (see bench/numpy_vs_torch.py). No cache flush.
* Figures: median, min and max over the repetitions; FLOP/s (a multiply-add is 2 flops) or, for pooling
  and depthwise layers (memory-bound), bytes/s with bytes = input + weight + output; the fraction of the
  roofline, ``max(flops / peak, bytes / bandwidth) / time``; and the speed relative to the peer,
  ``peer time / our time`` (above 1: ours is faster).
* Roofline figures. GPU: FP32 peak = SMs x FP32 lanes per SM (``FP32_LANES_PER_SM``, by compute
  capability) x 2 x clock rate (``cudaDevAttrClockRate``), used for every dtype (our CUDA-core kernels
  compute in float32; tensor-core paths, cuDNN's and ``igemm_tc``, can exceed it); bandwidth = a device-to-device copy
  measured at start (bytes read + written). CPU: peak = a measured float32 GEMM (``numpy.matmul``,
  all BLAS threads), bandwidth = a measured copy on all cores.

Output: ``<out>/<device>.json`` (every figure, versions, commit), ``.md`` (the table) and ``.png`` (speed
relative to the peer per layer, and the roofline; needs matplotlib, the ``plot`` extra). Full-suite
results in ``bench/results`` feed the README's "Benchmarks" section (``update_readme``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform as _platform
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

import gpuconv

SCHEMA = 1
REPO_ROOT = Path(__file__).resolve().parent.parent
README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"

# --------------------------------------------------------------------------------------------
# the suite
# --------------------------------------------------------------------------------------------

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
LATENCY_LAYERS = ("ResNet-50 3x3", "1x1 expand", "conv5 3x3", "MobileNetV2 dw 144")  # also at N=1
FP16_LAYERS = ("ResNet-50 3x3", "1x1 expand", "MobileNetV2 dw 144", "max-pool 3x3/2 pad 1")  # also float16
QUICK = {("ResNet-50 3x3", "float32"), ("1x1 expand", "float32"), ("MobileNetV2 dw 144", "float32"),
         ("LeNet-5 conv1", "float32"), ("max-pool 3x3/2 pad 1", "float32"), ("global avg-pool", "float32"),
         ("conv5 3x3 N=1", "float32"), ("MobileNetV2 dw 144", "float16")}

# The CPU-sized suite: batch divided by CPU_BATCH_DIVISOR (N=1 rows unchanged), images of
# CPU_HALVE_FROM pixels or more halved.
CPU_BATCH_DIVISOR = 16
CPU_HALVE_FROM = 112
CPU_SCALING = (f"CPU-sized suite: batch N divided by {CPU_BATCH_DIVISOR} (32 -> 2, 256 -> 16; the N=1 rows "
               f"unchanged), images of {CPU_HALVE_FROM} px or more halved (224 -> 112, 112 -> 56)")


@dataclass(frozen=True)
class Case:
    """One layer of the suite. Square images and filters. Pooling: ``R`` is the window (adaptive pooling:
    the output size) and ``K``/``groups`` are unused."""

    name: str
    op: str  # 'conv2d' | 'max_pool2d' | 'avg_pool2d' | 'adaptive_avg_pool2d' (gpuconv = torch names)
    N: int
    C: int
    H: int
    K: int = 0
    R: int = 0
    stride: int = 1
    pad: int = 0
    groups: int = 1
    dtype: str = "float32"

    @property
    def is_conv(self) -> bool:
        return self.op == "conv2d"

    @property
    def input_shape(self) -> tuple:
        return (self.N, self.C, self.H, self.H)

    @property
    def weight_shape(self) -> tuple | None:
        return (self.K, self.C // self.groups, self.R, self.R) if self.is_conv else None

    @property
    def kwargs(self) -> dict:
        """Keyword arguments of the call, the same for gpuconv and torch.nn.functional."""
        if self.is_conv:
            return dict(stride=self.stride, padding=self.pad, groups=self.groups)
        if self.op == "adaptive_avg_pool2d":
            return dict(output_size=self.R)
        return dict(kernel_size=self.R, stride=self.stride, padding=self.pad)

    @property
    def output_shape(self) -> tuple:
        if self.is_conv:
            return gpuconv.conv2d_output_shape(self.input_shape, self.weight_shape, self.stride, self.pad,
                                               groups=self.groups)
        if self.op == "adaptive_avg_pool2d":
            return (self.N, self.C, self.R, self.R)
        return gpuconv.pool2d_output_shape(self.input_shape, self.R, self.stride, self.pad)

    @property
    def flops(self) -> int:
        """2 per multiply-add for convolutions; 0 for pooling (judged by bytes)."""
        if not self.is_conv:
            return 0
        N, K, P, Q = self.output_shape
        return 2 * N * K * P * Q * (self.C // self.groups) * self.R * self.R

    @property
    def nbytes(self) -> int:
        """Input + weight + output bytes."""
        shapes = [self.input_shape, self.output_shape] + ([self.weight_shape] if self.is_conv else [])
        return np.dtype(self.dtype).itemsize * sum(math.prod(s) for s in shapes)

    @property
    def memory_bound(self) -> bool:
        """Pooling and depthwise layers: reported in bytes/s rather than FLOP/s."""
        return not self.is_conv or (self.groups == self.C and self.C > 1)

    @property
    def shape_label(self) -> str:
        n, c, h = self.N, self.C, self.H
        if self.is_conv:
            g = f" g{self.groups}" if self.groups > 1 else ""
            return f"{n}x{c}x{h}x{h}, {self.K}x{self.R}x{self.R}/{self.stride} p{self.pad}{g}"
        if self.op == "adaptive_avg_pool2d":
            return f"{n}x{c}x{h}x{h} -> {self.R}x{self.R}"
        return f"{n}x{c}x{h}x{h}, {self.R}x{self.R}/{self.stride} p{self.pad}"


def scale_for_cpu(case: Case) -> Case:
    """The CPU-sized version of a case (see ``CPU_SCALING``)."""
    n = case.N if case.N == 1 else max(1, case.N // CPU_BATCH_DIVISOR)
    h = case.H // 2 if case.H >= CPU_HALVE_FROM else case.H
    return replace(case, N=n, H=h)


def build_suite(*, quick: bool = False, cpu: bool = False) -> list[Case]:
    """The issue's layer list (float32), then the N=1 latency variants, then the float16 variants;
    ``quick`` keeps the ``QUICK`` subset; ``cpu`` applies ``scale_for_cpu``."""
    base = [Case(name, "conv2d", N, C, H, K, R, s, p, g) for name, (N, C, H, K, R, s, p, g) in CONV_LAYERS]
    base += [Case(name, op, N, C, H, R=k, stride=s, pad=p) for name, op, (N, C, H), k, s, p in POOL_LAYERS]
    by_name = {c.name: c for c in base}
    cases = (base + [replace(by_name[n], name=f"{n} N=1", N=1) for n in LATENCY_LAYERS]
             + [replace(by_name[n], dtype="float16") for n in FP16_LAYERS])
    if quick:
        cases = [c for c in cases if (c.name, c.dtype) in QUICK]
    if cpu:
        cases = [scale_for_cpu(c) for c in cases]
    return cases


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


# --------------------------------------------------------------------------------------------
# pure figures: roofline, statistics, correctness, schedule
# --------------------------------------------------------------------------------------------

# FP32 lanes (FP32 fused multiply-adds per clock) per SM, by compute capability: the "32-bit
# floating-point add, multiply, multiply-add" row of the CUDA C++ Programming Guide's arithmetic-throughput
# table. Note sm_80 (A100) has 64, while sm_86 / sm_89 / sm_90 have 128.
FP32_LANES_PER_SM = {
    (5, 0): 128, (5, 2): 128, (5, 3): 128,
    (6, 0): 64, (6, 1): 128, (6, 2): 128,
    (7, 0): 64, (7, 2): 64, (7, 5): 64,
    (8, 0): 64, (8, 6): 128, (8, 7): 128, (8, 9): 128,
    (9, 0): 128,
    (10, 0): 128, (10, 3): 128, (11, 0): 128, (12, 0): 128, (12, 1): 128,
}

# (rtol, atol) of the check against the reference; outputs are O(1) by the choice of inputs.
TOLERANCES = {"float32": (1e-3, 1e-3), "float16": (1e-2, 1e-2), "float64": (1e-9, 1e-9)}
TF32_TOLERANCE = (2e-2, 2e-2)  # TF32 rounds the inputs to a 10-bit mantissa: compared loosely


def fp32_lanes_per_sm(cc) -> int | None:
    """FP32 lanes per SM for a compute capability ``(major, minor)``; None if not in the table."""
    return FP32_LANES_PER_SM.get(tuple(cc)) if cc else None


def fp32_peak_flops(sm_count, cc, clock_khz) -> float | None:
    """SMs x FP32 lanes per SM x 2 (an FMA is two flops) x clock; None when a figure is unknown.
    E.g. H100 SXM: 132 x 128 x 2 x 1.98 GHz = 66.9 TFLOP/s."""
    lanes = fp32_lanes_per_sm(cc)
    if not (sm_count and lanes and clock_khz):
        return None
    return float(sm_count) * lanes * 2 * float(clock_khz) * 1e3


def roofline_seconds(flops, nbytes, peak_flops, bandwidth) -> float | None:
    """The roofline's lower bound on the time, ``max(flops / peak, bytes / bandwidth)``; None when a
    figure the bound needs is unknown."""
    if nbytes and not bandwidth:
        return None
    if flops and not peak_flops:
        return None
    return max(flops / peak_flops if flops else 0.0, nbytes / bandwidth if nbytes else 0.0)


def summarize(seconds) -> dict:
    """Median, min and max of the repetitions, in ms."""
    ms = [s * 1e3 for s in seconds]
    return dict(median_ms=statistics.median(ms), min_ms=min(ms), max_ms=max(ms), n=len(ms))


def geomean(values) -> float | None:
    values = [v for v in values if v]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def array_module(a):
    """numpy or cupy, whichever ``a`` belongs to (cupy imported only for its arrays)."""
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy
        return cupy
    return np


def check_close(out, ref, rtol, atol) -> dict:
    """``|out - ref| <= atol + rtol * |ref|`` everywhere (NaN fails), computed on the arrays' device.
    Returns ``ok``, ``max_abs_err``, ``ref_max_abs``, ``worst`` (the largest ``|out-ref| / (atol +
    rtol|ref|)``, <= 1 passes), ``rtol``, ``atol``."""
    if tuple(out.shape) != tuple(ref.shape):
        return dict(ok=False, reason=f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}",
                    rtol=rtol, atol=atol)
    xp = array_module(ref)
    a, b = out.astype(xp.float32), ref.astype(xp.float32)
    diff = xp.abs(a - b)
    worst = diff / (atol + rtol * xp.abs(b))
    finite = bool(xp.all(xp.isfinite(a)))
    return dict(ok=finite and bool(xp.all(worst <= 1)),
                max_abs_err=float(diff.max()) if diff.size else 0.0,
                ref_max_abs=float(xp.abs(b).max()) if b.size else 0.0,
                worst=float(worst.max()) if worst.size else 0.0, rtol=rtol, atol=atol)


def schedule(n_contenders: int, repeats: int, interleave: bool) -> list[int]:
    """The order of the timed calls, as contender indices. Interleaved (GPU): every repetition calls
    each contender once, the order reversed every other repetition. Blocked (CPU): all repetitions of
    contender 0, then of 1, ..."""
    if not interleave:
        return [i for i in range(n_contenders) for _ in range(repeats)]
    order = []
    for rep in range(repeats):
        turn = list(range(n_contenders))
        order += turn[::-1] if rep % 2 else turn
    return order


# --------------------------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------------------------

def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def git_state(root: Path = REPO_ROOT) -> dict:
    """``commit`` (git rev-parse HEAD) and ``dirty`` (tracked files modified). Outside git (a copy of the
    working tree without ``.git``, as on a lent GPU machine) the commit is ``$GPUCONV_BENCH_COMMIT`` if set
    (the one the copy was made from; ``dirty`` unknown), else None."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return dict(commit=os.environ.get("GPUCONV_BENCH_COMMIT") or None, dirty=None)
    return dict(commit=commit or None, dirty=bool(status.strip()))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _platform.processor() or _platform.machine() or "unknown CPU"


def cuda_conv_algos() -> list[str]:
    """Our CUDA conv2d algorithms, read at run time (``gpuconv._cuda.conv.ALGOS``), then ``'auto'``."""
    from ._cuda.conv import ALGOS
    return list(ALGOS) + ["auto"]


def tensor_core_algos() -> list[str]:
    """Our algorithms whose float32 products are TF32 (``ConvAlgo.tensor_cores``)."""
    from ._cuda.conv import ALGORITHMS
    return [name for name, a in ALGORITHMS.items() if a.tensor_cores]


def import_torch(kind: str):
    """``(torch, None)``, or ``(None, why the peer is missing)``. On a GPU, torch must see CUDA."""
    try:
        import torch
    except ImportError:
        return None, "PyTorch is not installed (pip install torch): ours ran alone"
    if kind == "gpu" and not torch.cuda.is_available():
        return None, f"PyTorch {torch.__version__} has no usable CUDA device: ours ran alone"
    return torch, None


def _tf32_api(torch) -> str:
    """Which of PyTorch's TF32 switches to use: ``'precision'`` (``torch.backends.cudnn.conv.fp32_precision``
    and ``torch.backends.cuda.matmul.fp32_precision``, PyTorch 2.9 and newer) or ``'allow'`` (the legacy
    ``allow_tf32`` flags). Never both: once the new API has set a flag, reading a legacy one raises
    ("a mix of the legacy and new APIs")."""
    conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
    matmul = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    return "precision" if conv is not None and matmul is not None else "allow"


def tf32_state(torch) -> tuple:
    """PyTorch's TF32 switches for convolutions and matmuls as they are now, read through the API
    ``_tf32_api`` picks, for ``restore_tf32_state``."""
    if _tf32_api(torch) == "precision":
        return ("precision", torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    return ("allow", torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)


def restore_tf32_state(torch, state: tuple) -> None:
    api, conv, matmul = state
    if api == "precision":
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = conv, matmul
    else:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


def set_tf32(torch, on: bool) -> None:
    """TF32 on or off for PyTorch's convolutions and matmuls, through the one API ``_tf32_api`` picks."""
    if _tf32_api(torch) == "precision":
        torch.backends.cudnn.conv.fp32_precision = torch.backends.cuda.matmul.fp32_precision = \
            "tf32" if on else "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = bool(on)


def cuda_version_string(v) -> str | None:
    """12080 -> '12.8'."""
    return None if not v else f"{int(v) // 1000}.{int(v) % 1000 // 10}"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# platforms: what differs between the CPU and the GPU runs
# --------------------------------------------------------------------------------------------

class CpuPlatform:
    """The NumPy path against PyTorch CPU; wall-clock timing, contenders one after another."""

    kind = "cpu"
    peer_label = "PyTorch"
    interleave = False
    warmup = 2  # calls before timing, the checked one included
    default_repeats = 30
    quick_repeats = 5
    settle_s = 0.2  # pause between two contenders' blocks (spinning BLAS / OpenMP workers go idle)
    xp = np

    def __init__(self, torch=None):
        self.torch = torch

    # -- set-up --------------------------------------------------------------------------------
    def session(self):
        return contextlib.nullcontext()

    def conv_algos(self) -> list[str]:
        return ["auto"]  # NumPy arrays take only algo='auto'

    def describe(self) -> tuple[dict, dict]:
        cores = os.cpu_count() or 1
        name = cpu_name()
        device = dict(kind="cpu", name=name, slug=f"cpu-{slugify(name)}-{cores}c", cores=cores,
                      machine=_platform.machine())
        versions = dict(python=_platform.python_version(), numpy=np.__version__, gpuconv=gpuconv.__version__)
        if self.torch is not None:
            versions["torch"] = self.torch.__version__
            device["torch_threads"] = self.torch.get_num_threads()
        return device, versions

    def roofline(self) -> dict:
        peak, n = measure_cpu_gemm()
        bw, nbytes = measure_cpu_bandwidth()
        return dict(peak_flops=peak, peak_source=f"measured: float32 GEMM, numpy.matmul {n}x{n}x{n} on all "
                                                  "BLAS threads",
                    bandwidth=bw, bandwidth_source=f"measured: copy of {nbytes >> 20} MiB on {os.cpu_count()} "
                                                   "threads, bytes read + written")

    def settings(self) -> dict:
        return dict(timing="wall clock (time.perf_counter), all repetitions of one contender then the next, "
                           f"{self.settle_s} s pause between; no cache flush",
                    interleaved=False, warmup_calls=self.warmup)

    # -- arrays --------------------------------------------------------------------------------
    def randn(self, shape, dtype, seed, scale=1.0):
        a = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
        return (a * np.float32(scale)).astype(dtype, copy=False)

    def to_torch(self, a):
        return self.torch.from_numpy(a)

    def from_torch(self, t):
        return t.numpy()

    def fallback_reference(self, case, x, w):
        return None, None  # ours *is* the NumPy path: nothing independent to compare with

    # -- timing --------------------------------------------------------------------------------
    def set_tf32(self, on: bool) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def settle(self) -> None:
        time.sleep(self.settle_s)

    def time_once(self, fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def release(self) -> None:
        pass


def measure_cpu_gemm(n: int = 2048, repeats: int = 3) -> tuple[float, int]:
    """float32 GEMM rate of numpy.matmul (BLAS, all its threads): the CPU's practical compute roof."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = min(_wall(lambda: a @ b) for _ in range(repeats))
    return 2.0 * n ** 3 / best, n


def measure_cpu_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> tuple[float, int]:
    """Copy rate (bytes read + written per second) of one large array copied by one thread per core."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    threads = os.cpu_count() or 1
    bounds = np.linspace(0, src.size, threads + 1).astype(int)
    parts = [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
    with ThreadPoolExecutor(threads) as pool:
        def copy():
            list(pool.map(lambda s: np.copyto(dst[s], src[s]), parts))
        copy()
        best = min(_wall(copy) for _ in range(repeats))
    return 2.0 * src.nbytes / best, src.nbytes


def _wall(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# CUDA device attributes (cudaDeviceAttr) read with cupy.cuda.runtime.deviceGetAttribute.
_ATTR_CLOCK_RATE_KHZ, _ATTR_SM_COUNT, _ATTR_L2_BYTES, _ATTR_CC_MAJOR, _ATTR_CC_MINOR = 13, 16, 38, 75, 76

SPIN_US = 1000  # how long the stream is kept busy before each timed call (covers the host's enqueue)
_SPIN_SOURCE = r"""
extern "C" __global__ void gpuconv_bench_spin(long long cycles) {
    const long long start = clock64();
    while (clock64() - start < cycles) { }
}
"""


class GpuPlatform:
    """Our CUDA kernels (CuPy arrays) against PyTorch/cuDNN on the same device and stream; CUDA-event
    timing with an L2 flush and a busy stream before each call, contenders interleaved."""

    kind = "gpu"
    peer_label = "cuDNN"
    interleave = True
    warmup = 3
    default_repeats = 30
    quick_repeats = 20

    def __init__(self, torch=None):
        import cupy
        self.cupy = self.xp = cupy
        self.torch = torch
        self.device_id = cupy.cuda.Device().id
        self.cc = (self._attr(_ATTR_CC_MAJOR), self._attr(_ATTR_CC_MINOR))
        self.sm_count = self._attr(_ATTR_SM_COUNT)
        self.clock_khz = self._attr(_ATTR_CLOCK_RATE_KHZ)
        self.l2_bytes = self._attr(_ATTR_L2_BYTES)
        props = cupy.cuda.runtime.getDeviceProperties(self.device_id)
        name = props["name"]
        self.name = name.decode() if isinstance(name, bytes) else str(name)
        self.memory_bytes = int(props.get("totalGlobalMem", 0))
        # 2x the L2 (read from the device); 256 MiB only if the attribute cannot be read
        self.flush_bytes = 2 * self.l2_bytes if self.l2_bytes else 256 << 20
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.start, self.end = cupy.cuda.Event(), cupy.cuda.Event()
        with cupy.cuda.Device(self.device_id):
            self.flush_buffer = cupy.empty(-(-self.flush_bytes // 4), dtype=cupy.int32)
        self._flush_value = 0
        self._spin = cupy.RawKernel(_SPIN_SOURCE, "gpuconv_bench_spin")
        self.spin_cycles = int(SPIN_US * (self.clock_khz or 2_000_000) / 1000)

    def _attr(self, attr: int) -> int | None:
        try:
            return int(self.cupy.cuda.runtime.deviceGetAttribute(attr, self.device_id))
        except Exception:  # an attribute this CUDA version does not have
            return None

    # -- set-up --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def session(self):
        """The device and the one stream current for CuPy and for PyTorch; PyTorch's cuDNN flags set for
        the run (benchmark mode on) and restored afterwards."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.cupy.cuda.Device(self.device_id))
            stack.enter_context(self.stream)
            torch = self.torch
            if torch is not None:
                torch.cuda.set_device(self.device_id)
                ext = torch.cuda.ExternalStream(self.stream.ptr, device=torch.device("cuda", self.device_id))
                stack.enter_context(torch.cuda.stream(ext))
                saved_benchmark, saved_tf32 = torch.backends.cudnn.benchmark, tf32_state(torch)

                def restore():
                    torch.backends.cudnn.benchmark = saved_benchmark
                    restore_tf32_state(torch, saved_tf32)
                stack.callback(restore)
                torch.backends.cudnn.benchmark = True
            yield
            self.stream.synchronize()

    def conv_algos(self) -> list[str]:
        return cuda_conv_algos()

    def describe(self) -> tuple[dict, dict]:
        cupy, rt = self.cupy, self.cupy.cuda.runtime
        device = dict(kind="gpu", name=self.name, slug=slugify(self.name), device_id=self.device_id,
                      compute_capability=f"{self.cc[0]}.{self.cc[1]}", sm_count=self.sm_count,
                      clock_mhz=self.clock_khz / 1e3 if self.clock_khz else None,
                      fp32_lanes_per_sm=fp32_lanes_per_sm(self.cc), l2_bytes=self.l2_bytes,
                      memory_bytes=self.memory_bytes)
        versions = dict(python=_platform.python_version(), numpy=np.__version__, gpuconv=gpuconv.__version__,
                        cupy=cupy.__version__, cuda_runtime=cuda_version_string(rt.runtimeGetVersion()),
                        driver=cuda_version_string(rt.driverGetVersion()))
        if self.torch is not None:
            cudnn = self.torch.backends.cudnn.version()
            versions.update(torch=self.torch.__version__, torch_cuda=self.torch.version.cuda,
                            cudnn=str(cudnn) if cudnn else None)
        return device, versions

    def roofline(self) -> dict:
        peak = fp32_peak_flops(self.sm_count, self.cc, self.clock_khz)
        lanes = fp32_lanes_per_sm(self.cc)
        bw, nbytes = self.measure_bandwidth()
        source = (f"{self.sm_count} SMs x {lanes} FP32 lanes (sm_{self.cc[0]}{self.cc[1]}) x 2 x "
                  f"{(self.clock_khz or 0) / 1e3:.0f} MHz" if peak else
                  f"unknown (compute capability {self.cc} not in FP32_LANES_PER_SM, or no clock rate)")
        return dict(peak_flops=peak, peak_source=source, bandwidth=bw,
                    bandwidth_source=f"measured: device-to-device copy of {nbytes >> 20} MiB, "
                                     "bytes read + written")

    def measure_bandwidth(self, repeats: int = 10) -> tuple[float, int]:
        cupy = self.cupy
        free, _ = cupy.cuda.runtime.memGetInfo()
        nbytes = max(64 << 20, min(1 << 30, free // 8)) // 4 * 4
        src, dst = cupy.ones(nbytes // 4, dtype=cupy.float32), cupy.empty(nbytes // 4, dtype=cupy.float32)
        copy = partial(cupy.copyto, dst, src)
        times = [self.time_once(copy) for _ in range(repeats + 1)][1:]  # the first is a warm-up
        del copy, src, dst
        self.release()
        return 2.0 * nbytes / min(times), nbytes

    def settings(self) -> dict:
        return dict(timing=f"CUDA events on one stream shared by CuPy and PyTorch; before each call a write of "
                           f"{self.flush_bytes >> 20} MiB (2x L2) flushes the L2 and a {SPIN_US} us spin kernel "
                           "keeps the stream busy while the host enqueues the call (launch overhead excluded); "
                           "contenders interleaved per repetition",
                    interleaved=True, warmup_calls=self.warmup, l2_bytes=self.l2_bytes,
                    l2_flush_bytes=self.flush_bytes, spin_us=SPIN_US)

    # -- arrays --------------------------------------------------------------------------------
    def randn(self, shape, dtype, seed, scale=1.0):
        cupy = self.cupy
        a = cupy.random.RandomState(seed).standard_normal(shape, dtype=cupy.float32)
        if scale != 1.0:
            a *= cupy.float32(scale)
        return a.astype(dtype, copy=False)

    def to_torch(self, a):
        """Zero-copy: the tensor must alias the CuPy array."""
        torch = self.torch
        t = torch.as_tensor(a, device=torch.device("cuda", self.device_id))
        if t.data_ptr() != a.data.ptr:
            t = torch.from_dlpack(a)
        if t.data_ptr() != a.data.ptr:
            raise RuntimeError("PyTorch copied the CuPy array instead of sharing it")
        return t

    def from_torch(self, t):
        return self.cupy.asarray(t)

    def fallback_reference(self, case, x, w):
        """Without PyTorch: gpuconv's NumPy path on host copies (float32), an independent implementation."""
        cupy = self.cupy
        xh = cupy.asnumpy(x).astype(np.float32)
        wh = None if w is None else cupy.asnumpy(w).astype(np.float32)
        return cupy.asarray(call_op(gpuconv, case, xh, wh)), "gpuconv's NumPy path (float32, host)"

    # -- timing --------------------------------------------------------------------------------
    def set_tf32(self, on: bool) -> None:
        if self.torch is not None:
            set_tf32(self.torch, on)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def settle(self) -> None:
        pass

    def time_once(self, fn) -> float:
        """Flush the L2, keep the stream busy, then time ``fn`` between two CUDA events (seconds)."""
        self._flush_value = self._flush_value % 1000 + 1  # a kernel writing every word, not a memset
        self.flush_buffer.fill(self._flush_value)
        self._spin((1,), (1,), (np.int64(self.spin_cycles),))
        self.start.record(self.stream)
        fn()
        self.end.record(self.stream)
        self.end.synchronize()
        return self.cupy.cuda.get_elapsed_time(self.start, self.end) * 1e-3

    def release(self) -> None:
        """Give cached memory back between cases (the big layers need GiBs)."""
        self.stream.synchronize()
        self.cupy.get_default_memory_pool().free_all_blocks()
        if self.torch is not None:
            self.torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# running one case
# --------------------------------------------------------------------------------------------

def call_op(lib, case: Case, x, w, **extra):
    """``lib.<op>(x[, w], **case.kwargs, **extra)`` for lib = gpuconv or torch.nn.functional."""
    fn = getattr(lib, case.op)
    return fn(x, w, **case.kwargs, **extra) if case.is_conv else fn(x, **case.kwargs)


@dataclass
class Contender:
    """One implementation of one case: ``role`` 'ours' (``label`` = the algo), 'peer' or 'peer_tf32'."""

    label: str
    role: str
    fn: Callable
    setup: Callable | None = None  # host-side state to set before each call (TF32 flags), not timed
    loose: bool = False  # checked with TF32_TOLERANCE
    status: str = "pending"  # ok | wrong | declined | error | unchecked
    message: str | None = None
    kernel: str | None = None
    check: dict | None = None
    times: list = field(default_factory=list)


def make_contenders(plat, case: Case, x, w, algos) -> list[Contender]:
    """Ours for each algo (pooling: its one kernel, listed as 'auto'), then the peer (TF32 off) and, for
    float32 convolutions on a GPU, the peer with TF32 on."""
    ours_algos = algos if case.is_conv else [a for a in algos if a == "auto"]
    # Tensor-core algorithms compute float32 as TF32: checked with the TF32 tolerance, like cuDNN's TF32 column.
    tf32 = tensor_core_algos() if case.dtype == "float32" else []
    out = [Contender(a, "ours", partial(call_op, gpuconv, case, x, w, **({"algo": a} if case.is_conv else {})),
                     loose=a in tf32)
           for a in ours_algos]
    torch = plat.torch
    if torch is not None and out:
        tx, tw = plat.to_torch(x), None if w is None else plat.to_torch(w)
        peer = partial(call_op, torch.nn.functional, case, tx, tw)
        label = peer_label(plat, case, tx, tw)
        out.append(Contender(label, "peer", peer, setup=partial(plat.set_tf32, False)))
        if plat.kind == "gpu" and case.is_conv and case.dtype == "float32":
            out.append(Contender(f"{label} TF32", "peer_tf32", peer, setup=partial(plat.set_tf32, True),
                                 loose=True))
    return out


def torch_conv_backend(torch, case: Case, tx, tw) -> str | None:
    """The convolution backend PyTorch picks for this call (``'Cudnn'``, ``'CudaDepthwise2d'``, ``'Mkldnn'``,
    ...), asked of PyTorch itself (``torch._C._select_conv_backend``, the dispatcher ``F.conv2d`` uses);
    None for pooling or when this PyTorch cannot say."""
    select_backend = getattr(torch._C, "_select_conv_backend", None)
    if not case.is_conv or select_backend is None:
        return None
    s, p = [case.stride] * 2, [case.pad] * 2
    try:
        backend = select_backend(tx, tw, None, s, p, [1, 1], False, [0, 0], case.groups, None)
    except Exception:  # a private API: another signature in another PyTorch version
        return None
    return str(backend).rsplit(".", 1)[-1]


def peer_label(plat, case: Case, tx, tw) -> str:
    """The peer's name for one case. On a GPU a convolution's peer is cuDNN unless PyTorch routes the call to
    a kernel of its own: its float32 depthwise convolutions run ``CudaDepthwise2d``, not cuDNN."""
    if plat.kind != "gpu" or not case.is_conv:
        return plat.peer_label
    backend = torch_conv_backend(plat.torch, case, tx, tw)
    if backend is None or backend.startswith("Cudnn"):
        return plat.peer_label
    return f"PyTorch {backend}"


def reference(plat, case: Case, x, w):
    """``(array, description)`` every contender is checked against: PyTorch on float32 copies, TF32 off;
    without PyTorch the platform's fallback (GPU: gpuconv's NumPy path; CPU: none)."""
    x32 = x.astype(np.float32, copy=False)
    w32 = None if w is None else w.astype(np.float32, copy=False)
    if plat.torch is None:
        return plat.fallback_reference(case, x32, w32)
    plat.set_tf32(False)
    tw = None if w32 is None else plat.to_torch(w32)
    ref = plat.from_torch(call_op(plat.torch.nn.functional, case, plat.to_torch(x32), tw))
    plat.synchronize()
    return ref, "PyTorch, float32" + (", TF32 off" if plat.kind == "gpu" else "")


def prepare(plat, c: Contender, ref, dtype: str) -> None:
    """The first call (compiles / picks the algorithm), its check against ``ref``, the other warm-up
    calls. Sets ``c.status``: declined (an algorithm of ours refusing the case with ValueError), error,
    wrong, unchecked (no reference) or ok."""
    try:
        if c.setup:
            c.setup()
        out = c.fn()
        plat.synchronize()
        if c.role == "ours":
            c.kernel = gpuconv.last_kernel().kernel
        if ref is None:
            c.status = "unchecked"
        else:
            if plat.torch is not None and plat.torch.is_tensor(out):
                out = plat.from_torch(out)
            rtol, atol = TF32_TOLERANCE if c.loose else TOLERANCES[dtype]
            c.check = check_close(out, ref, rtol, atol)
            c.status = "ok" if c.check["ok"] else "wrong"
        del out
        for _ in range(plat.warmup - 1):
            if c.setup:
                c.setup()
            c.fn()
        plat.synchronize()
    except ValueError as exc:
        declined = c.role == "ours" and c.label != "auto" and c.status == "pending"
        c.status, c.message = ("declined" if declined else "error"), str(exc)
    except Exception as exc:  # a failing contender is a failed row, not a crashed run
        c.status, c.message = "error", f"{type(exc).__name__}: {exc}"


def time_contenders(plat, contenders, repeats: int) -> None:
    """Time the contenders that passed their check (or could not be checked), in ``schedule`` order."""
    timed = [c for c in contenders if c.status in ("ok", "unchecked")]
    previous = None
    for i in schedule(len(timed), repeats, plat.interleave):
        c = timed[i]
        if c.status == "error":
            continue
        if previous is not None and previous is not c:
            plat.settle()
        previous = c
        try:
            if c.setup:
                c.setup()
            c.times.append(plat.time_once(c.fn))
        except Exception as exc:
            c.status, c.message = "error", f"{type(exc).__name__} while timing: {exc}"


def figures(c: Contender | None, case: Case, roof: dict) -> dict | None:
    """The JSON record of one contender: status, check, times and the derived rates."""
    if c is None:
        return None
    d = dict(label=c.label, status=c.status, message=c.message, kernel=c.kernel, check=c.check)
    if c.times and c.status in ("ok", "unchecked"):
        d.update(summarize(c.times))
        seconds = d["median_ms"] * 1e-3
        d["flop_per_s"] = case.flops / seconds if case.flops else None
        d["byte_per_s"] = case.nbytes / seconds
        bound = roofline_seconds(case.flops, case.nbytes, roof.get("peak_flops"), roof.get("bandwidth"))
        d["roofline_fraction"] = bound / seconds if bound else None
    return d


def speedup(ours: dict | None, peer: dict | None) -> float | None:
    """peer time / our time (above 1: ours is faster); None unless both were timed."""
    if ours and peer and ours.get("median_ms") and peer.get("median_ms"):
        return peer["median_ms"] / ours["median_ms"]
    return None


def case_rows(case: Case, contenders, roof: dict, ref_source) -> list[dict]:
    """One row per algorithm of ours, each carrying the peer's figures from the same run."""
    by_role = {c.role: c for c in contenders if c.role != "ours"}
    peer = figures(by_role.get("peer"), case, roof)
    tf32 = figures(by_role.get("peer_tf32"), case, roof)
    rows = []
    for c in contenders:
        if c.role != "ours":
            continue
        ours = figures(c, case, roof)
        rows.append(dict(layer=case.name, op=case.op, dtype=case.dtype, shape=case.shape_label,
                         case=dataclasses.asdict(case), flops=case.flops, bytes=case.nbytes,
                         metric="B/s" if case.memory_bound else "FLOP/s", algo=c.label, status=c.status,
                         message=c.message, kernel=c.kernel, check=c.check, reference=ref_source, ours=ours,
                         peer=peer,
                         peer_tf32=tf32, speed_vs_peer=speedup(ours, peer),
                         speed_vs_peer_tf32=speedup(ours, tf32)))
    return rows


def run_case(plat, case: Case, algos, repeats: int, roof: dict, seed: int = 0) -> list[dict]:
    x = plat.randn(case.input_shape, case.dtype, seed)
    w = None
    if case.is_conv:
        fan_in = (case.C // case.groups) * case.R * case.R
        w = plat.randn(case.weight_shape, case.dtype, seed + 1, scale=1 / math.sqrt(fan_in))
    try:
        ref, ref_source = reference(plat, case, x, w)
    except Exception as exc:
        ref, ref_source = None, f"none: the reference failed ({type(exc).__name__}: {exc})"
    contenders = make_contenders(plat, case, x, w, algos)
    for c in contenders:
        prepare(plat, c, ref, case.dtype)
    del ref
    time_contenders(plat, contenders, repeats)
    rows = case_rows(case, contenders, roof, ref_source)
    del contenders, x, w
    plat.release()
    return rows


def progress_line(rows) -> str:
    parts = []
    for r in rows:
        o = r["ours"]
        parts.append(f"{r['algo']} " + (f"{o['median_ms']:.3f} ms" if o.get("median_ms") else r["status"]))
    if rows:
        for key in ("peer", "peer_tf32"):
            p = rows[0][key]
            if p:
                parts.append(f"{p['label']} " + (f"{p['median_ms']:.3f} ms" if p.get("median_ms") else p["status"]))
    return " | ".join(parts)


def run_bench(plat, cases, algos, repeats: int, *, suite: str, filters: dict | None = None,
              peer_missing: str | None = None, scaling: str | None = None, budget_s: float | None = None,
              checkpoint: Callable[[dict], None] | None = None) -> dict:
    """Run every case on ``plat``; returns the JSON-ready results.

    ``checkpoint(results)`` is called once the run is described and again after every case, with
    ``results['state']`` ``'running'``: a run killed midway leaves the rows it finished (``main`` writes
    the JSON there). With ``budget_s``, a case is started only while the time spent so far plus the
    longest case so far fits in the budget; the cases left out are listed in ``cases_not_run`` and the
    state is ``'budget'``; a run that did every case ends ``'done'``."""
    t0 = time.perf_counter()
    with plat.session():
        device, versions = plat.describe()
        log(f"gpuconv bench on {device['name']}: measuring the roofline figures ...")
        roof = plat.roofline()
        log(f"  peak {_fmt_rate(roof['peak_flops'], 'FLOP/s')} ({roof['peak_source']}), "
            f"bandwidth {_fmt_rate(roof['bandwidth'], 'B/s')}")
        results = dict(schema=SCHEMA,
                       date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       **git_state(), device=device, versions=versions,
                       peer=dict(label=plat.peer_label, missing=peer_missing,
                                 name=None if plat.torch is None else f"PyTorch {plat.torch.__version__}"),
                       settings=dict(suite=suite, filters=filters or {}, repeats=repeats, algos=list(algos),
                                     scaling=scaling, budget_s=budget_s,
                                     tolerances=dict(TOLERANCES, tf32=TF32_TOLERANCE), **plat.settings()),
                       roofline=roof, rows=[], state="running", cases_total=len(cases), cases_done=0,
                       cases_not_run=[], elapsed_s=round(time.perf_counter() - t0, 1))
        if checkpoint:
            checkpoint(results)
        longest = 0.0
        for i, case in enumerate(cases, 1):
            spent = time.perf_counter() - t0
            if budget_s is not None and spent + longest > budget_s:
                results["cases_not_run"] = [f"{c.name} ({c.dtype})" for c in cases[i - 1:]]
                log(f"bench: time budget of {budget_s:g} s: {spent:.1f} s spent and the longest case took "
                    f"{longest:.1f} s, so the last {len(cases) - i + 1} case(s) are not run")
                break
            t_case = time.perf_counter()
            log(f"[{i:2d}/{len(cases)}] {case.name} ({case.dtype}, {case.shape_label}) ...")
            case_result = run_case(plat, case, algos, repeats, roof)
            longest = max(longest, time.perf_counter() - t_case)
            results["rows"] += case_result
            results["cases_done"] = i
            results["elapsed_s"] = round(time.perf_counter() - t0, 1)
            log(f"        {progress_line(case_result)}  [{time.perf_counter() - t_case:.1f} s, "
                f"total {time.perf_counter() - t0:.0f} s]")
            if checkpoint:
                checkpoint(results)
    results["state"] = "budget" if results["cases_not_run"] else "done"
    results["elapsed_s"] = round(time.perf_counter() - t0, 1)
    return results


def failed(results: dict) -> list[dict]:
    """Rows where ours gave a wrong answer or an error (declined and unchecked are not failures)."""
    return [r for r in results["rows"] if r["status"] in ("wrong", "error")]


# --------------------------------------------------------------------------------------------
# output: Markdown, files, plot, README
# --------------------------------------------------------------------------------------------

def _fmt_rate(v, unit: str) -> str:
    if not v:
        return "n/a"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if v >= scale:
            return f"{v / scale:.3g} {prefix}{unit}"
    return f"{v:.3g} {unit}"


def _fmt_ms(f: dict | None) -> str:
    if not f or not f.get("median_ms"):
        return "—" if not f else f["status"]
    return f"{f['median_ms']:.3g} ({f['min_ms']:.3g}–{f['max_ms']:.3g})"


def _fmt_check(f: dict | None) -> str:
    if not f:
        return "—"
    chk = f.get("check")
    if f["status"] == "ok":
        return f"ok ({chk['max_abs_err']:.1e})"
    if f["status"] == "wrong":
        return "**WRONG** (" + (f"{chk['max_abs_err']:.1e}" if "max_abs_err" in chk else chk.get("reason", "")) + ")"
    return f["status"]


def _fmt_fraction(v) -> str:
    if not v:
        return "—"
    return f"{v:.0%}" if v >= 0.095 else f"{v:.1%}"


def _fmt_x(v) -> str:
    return f"{v:.2f}×" if v else "—"


def _fmt_duration(seconds) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _fmt_size(n) -> str:
    return f"{n / 2**20:.0f} MiB" if n else "n/a"


def describe_run(results: dict) -> list[str]:
    """The lines above the table: device, versions, commit, date, method, roofline figures."""
    d, v, s, roof, peer = (results[k] for k in ("device", "versions", "settings", "roofline", "peer"))
    if d["kind"] == "gpu":
        dev = (f"{d['name']} (sm_{d['compute_capability'].replace('.', '')}, {d['sm_count']} SMs, "
               f"{d['clock_mhz'] or 0:.0f} MHz, L2 {_fmt_size(d['l2_bytes'])}), CUDA driver {v.get('driver')}, "
               f"runtime {v.get('cuda_runtime')}, CuPy {v.get('cupy')}")
    else:
        dev = f"CPU {d['name']}, {d['cores']} cores"
        if "torch_threads" in d:
            dev += f", PyTorch on {d['torch_threads']} threads"
    lib = f"PyTorch {v['torch']}" if "torch" in v else "no PyTorch"
    if v.get("cudnn"):
        lib += f" (cuDNN {v['cudnn']})"
    commit = (results.get("commit") or "unknown")[:10] + (" + uncommitted changes" if results.get("dirty") else "")
    lines = [f"{dev}; NumPy {v['numpy']}, {lib}, Python {v['python']}. gpuconv {v['gpuconv']} at commit "
             f"`{commit}`, {results['date'][:10]}; the run took {_fmt_duration(results['elapsed_s'])}.",
             "",
             f"Method: {s['timing']}. Median of {s['repeats']} repetitions (min–max in brackets) after "
             f"{s['warmup_calls']} warm-up calls. Each output is checked against the reference before it is "
             f"timed (rtol = atol = {s['tolerances']['float32'][0]:g} for float32, "
             f"{s['tolerances']['float16'][0]:g} for float16"
             + (f", {s['tolerances']['tf32'][0]:g} for TF32" if d["kind"] == "gpu" else "")
             + "); a wrong answer fails the row and is not timed.",
             "",
             f"Roofline: peak {_fmt_rate(roof['peak_flops'], 'FLOP/s')} ({roof['peak_source']}); bandwidth "
             f"{_fmt_rate(roof['bandwidth'], 'B/s')} ({roof['bandwidth_source']}). Speed: FLOP/s, or for "
             "pooling and depthwise layers B/s with bytes = input + weight + output; roofline = "
             "max(flops/peak, bytes/bandwidth) / time. vs peer = peer time / our time (above 1: ours faster)."]
    if d["kind"] == "gpu":
        lines[-1] += (f" The {peer['label']} column is PyTorch with TF32 off (pooling: PyTorch's own CUDA "
                      "kernels); its TF32 column has TF32 on, PyTorch's default for convolutions.")
    if s.get("scaling"):
        lines += ["", s["scaling"] + "."]
    if peer.get("missing"):
        lines += ["", f"**Peer missing**: {peer['missing']}."]
    state = results.get("state", "done")  # files written before the state was recorded were complete
    if state != "done":
        why = (f"stopped by its time budget of {s.get('budget_s'):g} s" if state == "budget" else
               "ended before it finished (killed or crashed; these are the rows written until then)")
        lines += ["", f"**Incomplete run**: {results.get('cases_done')} of {results.get('cases_total')} cases, "
                      f"{why}." + (f" Not run: {', '.join(results['cases_not_run'])}."
                                   if results.get("cases_not_run") else "")]
    if s.get("suite") != "full" or s.get("filters"):
        lines += ["", f"Suite: {s.get('suite')}" + (f", filters {s['filters']}" if s.get("filters") else "") + "."]
    return lines


def render_table(results: dict) -> list[str]:
    rows = results["rows"]
    p = results["peer"]["label"]
    with_tf32 = any(r["peer_tf32"] for r in rows)
    head = ["layer", "shape", "dtype", "algo", "kernel", "ours ms", "ours speed", "roofline", f"{p} ms"]
    head += [f"{p} TF32 ms"] if with_tf32 else []
    head += [f"vs {p}"] + ([f"vs {p} TF32"] if with_tf32 else []) + ["check"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---:" if h.endswith(("ms", "speed", "roofline")) or h.startswith("vs") else "---"
                            for h in head) + "|"]
    for r in rows:
        o = r["ours"]
        rate = o.get("byte_per_s") if r["metric"] == "B/s" else o.get("flop_per_s")
        frac = o.get("roofline_fraction")
        cells = [r["layer"], r["shape"], r["dtype"], r["algo"], f"`{r['kernel']}`" if r["kernel"] else "—",
                 _fmt_ms(o), _fmt_rate(rate, r["metric"]) if rate else "—", _fmt_fraction(frac),
                 _fmt_ms(r["peer"]) + _other_peer_mark(r["peer"], p)]
        cells += [_fmt_ms(r["peer_tf32"]) + _other_peer_mark(r["peer_tf32"], f"{p} TF32")] if with_tf32 else []
        cells += [_fmt_x(r["speed_vs_peer"])] + ([_fmt_x(r["speed_vs_peer_tf32"])] if with_tf32 else [])
        cells += [_fmt_check(o)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


OTHER_PEER_MARK = "†"


def _other_peer_mark(figs: dict | None, column_label: str) -> str:
    """A mark on a peer time measured from another kernel than the column names (render_summary says which)."""
    return f" {OTHER_PEER_MARK}" if figs and figs["label"] != column_label else ""


def render_summary(results: dict) -> list[str]:
    rows, p = results["rows"], results["peer"]["label"]
    lines = []
    algos = list(dict.fromkeys(r["algo"] for r in rows))
    parts = []
    for a in algos:
        sp = [r["speed_vs_peer"] for r in rows if r["algo"] == a and r["speed_vs_peer"] and r["dtype"] == "float32"]
        if sp:
            parts.append(f"{a} {geomean(sp):.2f}× over {len(sp)} float32 rows")
    if parts:
        lines.append(f"Geometric mean of the speed relative to {p} (above 1: ours faster): " + "; ".join(parts) + ".")
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines.append("Rows: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ".")
    notes = [f"* {r['layer']} ({r['dtype']}), {r['algo']}: {r['status']}: {r['message']}"
             for r in rows if r["message"]]
    for r in rows:
        for key in ("peer", "peer_tf32"):
            f = r[key]
            if f and f["status"] not in ("ok", "unchecked"):
                notes.append(f"* {r['layer']} ({r['dtype']}), {f['label']}: {f['status']}"
                             + (f": {f['message']}" if f.get("message") else ""))
    for r in rows:
        f = r["peer"]
        if f and f["label"] != p:
            notes.append(f"* {OTHER_PEER_MARK} {r['layer']} ({r['dtype']}): the {p} column times {f['label']}: "
                         "PyTorch runs this layer on a kernel of its own, not on cuDNN.")
    notes = list(dict.fromkeys(notes))
    if notes:
        lines += ["", "Notes:", ""] + notes
    return lines


def device_title(device: dict) -> str:
    return device["name"] if device["kind"] == "gpu" else f"{device['name']} (CPU, {device['cores']} cores)"


def render_markdown(results: dict, *, level: int = 1, image: str | None = None) -> str:
    title = f"{'#' * level} gpuconv bench: {device_title(results['device'])}, {results['date'][:10]}"
    lines = [title, ""] + describe_run(results) + [""] + render_table(results) + [""] + render_summary(results)
    if image:
        lines += ["", f"![speed relative to {results['peer']['label']} and roofline]({image})"]
    if results.get("plot_note"):
        lines += ["", results["plot_note"]]
    return "\n".join(lines) + "\n"


def results_stem(results: dict) -> str:
    s = results["settings"]
    return (results["device"]["slug"] + ("-quick" if s["suite"] == "quick" else "")
            + ("-partial" if s["filters"] else ""))


def plot_results(results: dict, path: Path) -> str | None:
    """Speed relative to the peer per layer (left) and the roofline (right) as a PNG. Returns a note
    instead when matplotlib is missing or there is nothing to plot."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "No plot: matplotlib is not installed (pip install 'gpuconv[plot]')."
    rows, p, roof = results["rows"], results["peer"]["label"], results["roofline"]
    layers = list(dict.fromkeys((r["layer"], r["dtype"]) for r in rows))
    algos = list(dict.fromkeys(r["algo"] for r in rows))
    if not layers:
        return "No plot: no rows."
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(16, max(5.0, 0.3 * len(layers) * max(1, len(algos)) ** 0.5)))
    height = 0.8 / len(algos)
    for j, algo in enumerate(algos):
        ys, xs = [], []
        for i, key in enumerate(layers):
            r = next((r for r in rows if (r["layer"], r["dtype"]) == key and r["algo"] == algo), None)
            if r and r["speed_vs_peer"]:
                ys.append(i + (j - (len(algos) - 1) / 2) * height)
                xs.append(r["speed_vs_peer"])
        ax1.barh(ys, xs, height=height, label=algo)
    ax1.axvline(1.0, color="black", linewidth=0.8)
    ax1.set_xscale("log")
    ax1.set_yticks(range(len(layers)))
    ax1.set_yticklabels([name if dt == "float32" else f"{name} ({dt})" for name, dt in layers], fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlabel(f"speed relative to {p} ({p} time / our time; > 1: ours faster)")
    ax1.legend(fontsize=8)
    # roofline: convolutions only (pooling has no flops)
    conv = [r for r in rows if r["flops"]]
    ai = [r["flops"] / r["bytes"] for r in conv]
    if ai:
        xs = np.logspace(math.log10(min(ai) / 2), math.log10(max(ai) * 2), 200)
        if roof.get("bandwidth"):
            roofline = xs * roof["bandwidth"]
            if roof.get("peak_flops"):
                roofline = np.minimum(roofline, roof["peak_flops"])
            ax2.plot(xs, roofline, color="black", linewidth=1,
                     label=f"roofline ({_fmt_rate(roof.get('peak_flops'), 'FLOP/s')}, "
                           f"{_fmt_rate(roof['bandwidth'], 'B/s')})")
        markers = "osD^v<>"
        for j, algo in enumerate(algos):
            pts = [(r["flops"] / r["bytes"], r["ours"]["flop_per_s"]) for r in conv
                   if r["algo"] == algo and r["ours"].get("flop_per_s")]
            if pts:
                ax2.scatter(*zip(*pts), marker=markers[j % len(markers)], label=f"ours: {algo}", alpha=0.8)
        for key, marker, color in (("peer", "x", "black"), ("peer_tf32", "+", "gray")):
            seen = {}
            for r in conv:
                f = r[key]
                if f and f.get("flop_per_s"):
                    seen[(r["layer"], r["dtype"])] = (r["flops"] / r["bytes"], f["flop_per_s"])
            if seen:
                ax2.scatter(*zip(*seen.values()), marker=marker, color=color,
                            label=p if key == "peer" else f"{p} TF32")
        ax2.set_xscale("log")
        ax2.set_yscale("log")
        ax2.set_xlabel("arithmetic intensity (flops / byte)")
        ax2.set_ylabel("FLOP/s")
        ax2.set_title("convolutions on the roofline", fontsize=10)
        ax2.legend(fontsize=8)
    fig.suptitle(f"gpuconv bench: {device_title(results['device'])}, {results['date'][:10]}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write_results(results: dict, out_dir: Path, *, plot: bool = True) -> dict:
    """Write ``<stem>.json``, ``<stem>.md`` and (with matplotlib) ``<stem>.png``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = results_stem(results)
    paths = dict(json=out_dir / f"{stem}.json", md=out_dir / f"{stem}.md")
    image = None
    if plot:
        png = out_dir / f"{stem}.png"
        note = plot_results(results, png)
        if note is None:
            paths["png"], image = png, png.name
        else:
            results["plot_note"] = note
    results["files"] = {k: p.name for k, p in paths.items()}
    write_json(results, out_dir)
    paths["md"].write_text(render_markdown(results, image=image))
    return paths


def write_json(results: dict, out_dir: Path) -> Path:
    """Write ``<out_dir>/<stem>.json`` atomically (a temporary file renamed over it): a run killed while
    writing leaves the previous complete file, never a truncated one."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{results_stem(results)}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def load_full_results(results_dir: Path) -> list[dict]:
    """Every full-suite result file in ``results_dir``: GPUs first, then CPUs, by name."""
    out = []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if results.get("schema") == SCHEMA and results["settings"].get("suite") == "full" \
                and not results["settings"].get("filters"):
            results["_path"] = path
            out.append(results)
    return sorted(out, key=lambda r: (r["device"]["kind"] != "gpu", r["device"]["name"]))


def readme_section(all_results, readme_dir: Path) -> str:
    """The text between the README's bench markers, generated from the result files."""
    lines = [README_START,
             "<!-- Generated from bench/results/*.json by `python bench/update_readme.py` (or `python -m gpuconv "
             "bench --update-readme`); do not edit by hand. -->",
             "",
             "`python -m gpuconv bench` times every gpuconv algorithm against the library one would use instead "
             "(PyTorch: cuDNN on a GPU, its CPU kernels on a CPU) on the layers of ResNet-50, VGG-16, AlexNet, "
             "MobileNetV2 and LeNet-5, checks every result against PyTorch before timing it, and writes "
             "`bench/results/<device>.json`, `.md` and `.png`. On a machine without a GPU, "
             "`python -m gpuconv bench --quick` runs a subset in well under a minute. Options: "
             "`--layers SUBSTRING,...`, `--algos direct,tiled,auto`, `--dtype float32|float16|all`, `--repeats N`, "
             "`--device auto|cpu|gpu`, `--budget-s SECONDS`, `--out DIR`, `--list`, `--no-plot`, `--update-readme` "
             "(`python -m gpuconv bench --help` says what each does). On a GPU, a peer time marked † was measured "
             "on one of PyTorch's own kernels, which PyTorch prefers to cuDNN for that layer.",
             ""]
    if not all_results:
        lines += ["No full-suite results in `bench/results/` yet.", ""]
    for results in all_results:
        image = None
        png = results["_path"].with_suffix(".png")
        if png.exists():
            image = os.path.relpath(png, readme_dir).replace(os.sep, "/")
        lines += [render_markdown(results, level=3, image=image)]
    lines.append(README_END)
    return "\n".join(lines)


def update_readme(readme: Path = REPO_ROOT / "README.md", results_dir: Path = REPO_ROOT / "bench" / "results") -> bool:
    """Regenerate the README's text between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` from the
    full-suite result files. Returns whether the README changed."""
    readme = Path(readme)
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme}: markers {README_START} ... {README_END} not found")
    new = text[:start] + readme_section(load_full_results(results_dir), readme.parent) + text[end + len(README_END):]
    if new != text:
        readme.write_text(new)
    return new != text


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------

def default_out_dir() -> Path:
    """``bench/results`` of the source checkout gpuconv runs from, else ``./gpuconv-bench``."""
    return REPO_ROOT / "bench" / "results" if (REPO_ROOT / "bench").is_dir() else Path("gpuconv-bench")


USAGE = """\
Times gpuconv against the library you would otherwise use, on the convolution and pooling layers of
ResNet-50, VGG-16, AlexNet, MobileNetV2 and LeNet-5 (float32, some float16, some at batch 1):

  on a GPU (CuPy installed, a CUDA device present): every CUDA algorithm of gpuconv against PyTorch's
    cuDNN convolutions (TF32 off, and TF32 on in a column of its own) and PyTorch's pooling kernels;
  otherwise: gpuconv's NumPy path against PyTorch on the CPU, on smaller batches and images.

Every result is checked against PyTorch before it is timed; a wrong answer fails its row. Without
PyTorch, gpuconv runs alone. The table is printed and written, with the figures in JSON and a plot
(matplotlib), to --out as <device>.json / .md / .png; the JSON is rewritten after every layer, so an
interrupted run keeps the layers it finished. The method (timing, cache flush, repetitions, roofline)
is described in the results file and in the README's Benchmarks section.

examples:
  python -m gpuconv bench --quick                 a small subset, well under a minute on a 2-core CPU
  python -m gpuconv bench --layers ResNet,dw      layers whose name contains "ResNet" or "dw"
  python -m gpuconv bench --device gpu --budget-s 240
  python -m gpuconv bench --list                  the layers, their sizes and FLOPs, nothing timed
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a small subset of the layers")
    p.add_argument("--layers", metavar="NAMES",
                   help="only layers whose name contains one of these comma-separated substrings (see --list)")
    p.add_argument("--algos", metavar="NAMES",
                   help="only these gpuconv algorithms, comma-separated: on a GPU direct, tiled, igemm, gemm1x1, "
                        "depthwise, igemm_tc (tensor cores) and auto; on the CPU only auto")
    p.add_argument("--dtype", choices=("float32", "float16", "all"), default="all")
    p.add_argument("--repeats", type=int, metavar="N",
                   help="timed repetitions per contender; the median is reported (default 30; --quick: 20 on a "
                        "GPU, 5 on the CPU)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="auto: the GPU when CuPy can use one, else the CPU")
    p.add_argument("--budget-s", type=float, metavar="SECONDS",
                   help="start no further layer once the time spent plus the longest layer so far would pass "
                        "this; the results say which layers were left out")
    p.add_argument("--out", metavar="DIR", default=str(default_out_dir()),
                   help="output folder (default: bench/results of a source checkout, else ./gpuconv-bench)")
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    p.add_argument("--update-readme", action="store_true",
                   help="afterwards regenerate the README's Benchmarks section from the full-suite files in --out "
                        "(source checkouts only)")
    p.add_argument("--list", action="store_true", help="print the selected layers and exit")
    p.add_argument("--render", metavar="JSON",
                   help="time nothing: rewrite the .json / .md / .png of a results file (e.g. from a GPU machine "
                        "without matplotlib) into --out")


def _update_readme(results_dir: Path) -> int:
    """``--update-readme``: 0 when done, 2 outside a source checkout."""
    readme = REPO_ROOT / "README.md"
    if not readme.is_file():
        log(f"bench: --update-readme needs a source checkout; {readme} does not exist")
        return 2
    changed = update_readme(readme, results_dir)
    log(f"{readme} {'updated' if changed else 'unchanged'}")
    return 0


def resolve_device(choice: str) -> tuple[str | None, str | None]:
    """``('gpu' | 'cpu', None)`` or ``(None, why the GPU cannot be used)``."""
    cu = gpuconv.backend_info()["cupy"]
    if choice == "gpu" and not cu["available"]:
        return None, cu["reason"]
    return ("gpu" if cu["available"] and choice != "cpu" else "cpu"), None


def make_platform(kind: str, torch):
    return GpuPlatform(torch) if kind == "gpu" else CpuPlatform(torch)


def render(path: Path, out_dir: Path, *, plot: bool = True) -> dict:
    """Rewrite a results file's report into ``out_dir`` (its figures unchanged; the plot made here when it
    was not made where it ran). Returns the paths written."""
    results = json.loads(Path(path).read_text())
    if results.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not a gpuconv bench results file of schema {SCHEMA}")
    results.pop("plot_note", None)
    results.pop("files", None)
    return write_results(results, out_dir, plot=plot)


def main(args) -> int:
    if args.render:
        try:
            paths = render(Path(args.render), Path(args.out), plot=not args.no_plot)
        except (OSError, ValueError) as exc:
            log(f"bench: --render: {exc}")
            return 2
        log("wrote " + ", ".join(str(p) for p in paths.values()))
        if not args.no_plot and "png" not in paths:
            log("No plot: matplotlib is not installed (pip install 'gpuconv[plot]').")
        return _update_readme(Path(args.out)) if args.update_readme else 0
    kind, why = resolve_device(args.device)
    if kind is None:
        log(f"bench: --device gpu asked for, but {why}")
        return 2
    layers = args.layers.split(",") if args.layers else None
    dtypes = None if args.dtype == "all" else [args.dtype]
    cases = select(build_suite(quick=args.quick, cpu=kind == "cpu"), layers, dtypes)
    if args.list:
        for c in cases:
            print(f"{c.name:<26}{c.dtype:<9}{c.shape_label:<36}{c.flops / 1e9:9.3f} GFLOP{c.nbytes / 2**20:9.1f} MiB")
        return 0
    if not cases:
        log("bench: no layer matches the filters")
        return 2
    torch, missing = import_torch(kind)
    if missing:
        log(f"bench: {missing}")
    plat = make_platform(kind, torch)
    available = plat.conv_algos()
    algos = available
    if args.algos:
        wanted = [a.strip() for a in args.algos.split(",") if a.strip()]
        unknown = [a for a in wanted if a not in available]
        if unknown:
            log(f"bench: unknown algorithm(s) {', '.join(unknown)} on the {kind}; available: {', '.join(available)}")
            return 2
        algos = [a for a in available if a in wanted]
    repeats = args.repeats or (plat.quick_repeats if args.quick else plat.default_repeats)
    if kind == "gpu" and repeats < 20:
        log(f"bench: {repeats} repetitions (fewer than the 20 the README's figures use)")
    filters = {k: v for k, v in (("layers", layers), ("algos", args.algos and algos),
                                 ("dtype", dtypes)) if v}
    if args.budget_s is not None and args.budget_s <= 0:
        log(f"bench: --budget-s must be positive, got {args.budget_s:g}")
        return 2
    out_dir = Path(args.out)
    results = run_bench(plat, cases, algos, repeats, suite="quick" if args.quick else "full", filters=filters,
                        peer_missing=missing, scaling=CPU_SCALING if kind == "cpu" else None,
                        budget_s=args.budget_s, checkpoint=partial(write_json, out_dir=out_dir))
    paths = write_results(results, out_dir, plot=not args.no_plot)
    # The Markdown printed here carries the plot note (e.g. matplotlib missing), so it is not logged again.
    print(render_markdown(results, image=paths["png"].name if "png" in paths else None))
    log("wrote " + ", ".join(str(p) for p in paths.values()))
    if args.update_readme and _update_readme(Path(args.out)):
        return 2
    bad = failed(results)
    if bad:
        log(f"bench: {len(bad)} row(s) of ours failed: " + ", ".join(f"{r['layer']} {r['dtype']} {r['algo']} "
                                                                   f"({r['status']})" for r in bad))
    return 1 if bad else 0
