"""Where the benchmark runs: the CPU (the NumPy path against PyTorch CPU, wall-clock timing, contenders
one after another) or the GPU (our CUDA kernels against PyTorch/cuDNN on one shared stream, CUDA-event
timing with an L2 flush and a busy stream before each call). A platform describes the device, measures its
roofline figures, makes the arrays and times one call; ``runner`` does the rest the same way on both."""

from __future__ import annotations

import contextlib
import os
import platform as _platform
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np

import gpuconv

from .environment import cpu_name, cuda_conv_algos, cuda_version_string, slugify
from .peers import restore_tf32_state, set_tf32, tf32_state
from .stats import fp32_lanes_per_sm, fp32_peak_flops
from .suite import call_op


class CpuPlatform:
    """The NumPy path against PyTorch CPU; wall-clock timing, contenders one after another."""

    kind = "cpu"
    peer_label = "PyTorch"
    interleave = False
    warmup = 2  # calls before timing, the checked one included
    default_repeats = 30
    quick_repeats = 5
    settle_s = 0.2  # pause between two contenders' blocks (spinning BLAS / OpenMP workers go idle)
    rounds = 1  # the repetitions in this many rounds of blocks, which contender goes first alternating
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
        blocks = ("all repetitions of one contender then the next" if self.rounds <= 1 else
                  f"the repetitions in {self.rounds} rounds, each a block of calls per contender, which "
                  "contender goes first alternating from round to round")
        return dict(timing=f"wall clock (time.perf_counter), {blocks}, {self.settle_s} s pause between; "
                           "no cache flush",
                    interleaved=False, warmup_calls=self.warmup)

    # -- arrays --------------------------------------------------------------------------------
    def randn(self, shape, dtype, seed, scale=1.0):
        a = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
        return (a * np.float32(scale)).astype(dtype, copy=False)

    def to_torch(self, a):
        return self.torch.from_numpy(a)

    def from_torch(self, t):
        return t.numpy()

    def fallback_reference(self, case, x, w, b=None):
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

    def fallback_reference(self, case, x, w, b=None):
        """Without PyTorch: gpuconv's NumPy path on host copies (float32), an independent implementation."""
        cupy = self.cupy
        xh = cupy.asnumpy(x).astype(np.float32)
        wh = None if w is None else cupy.asnumpy(w).astype(np.float32)
        bh = None if b is None else cupy.asnumpy(b).astype(np.float32)
        return cupy.asarray(call_op(gpuconv, case, xh, wh, bh)), "gpuconv's NumPy path (float32, host)"

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


def resolve_device(choice: str) -> tuple[str | None, str | None]:
    """``('gpu' | 'cpu', None)`` or ``(None, why the GPU cannot be used)``."""
    cu = gpuconv.backend_info()["cupy"]
    if choice == "gpu" and not cu["available"]:
        return None, cu["reason"]
    return ("gpu" if cu["available"] and choice != "cpu" else "cpu"), None


def make_platform(kind: str, torch):
    return GpuPlatform(torch) if kind == "gpu" else CpuPlatform(torch)
