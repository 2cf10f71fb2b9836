"""Speed of the CPU emulator: context-switch cost and launch rate (not a test; run by hand).

    OPENBLAS_NUM_THREADS=1 python3 -m tests.emulator.bench_emulator

(OpenBLAS's idle threads otherwise spin on the same cores.)
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tests.emulator import compile_module

HERE = Path(__file__).resolve().parent
SRC = HERE / "selftest_kernels.cu"
NAMES = ["selftest::busy<false>", "selftest::busy<true>", "selftest::vector_add"]


def rate(fn, seconds=1.0):
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def main():
    for label, flags in (("asm", ()), ("ucontext", ("-DGPUCONV_EMU_UCONTEXT=1",))):
        m = compile_module(SRC, NAMES, flags=flags)
        for threads, rounds in ((2, 100000), (256, 2000), (1024, 500)):
            ns = min(m.bench_switch(threads, rounds // (10 if label == "ucontext" else 1)) for _ in range(5))
            print(f"switch [{label:8s}] {threads:5d} threads/block: {ns:7.1f} ns per switch")
        n = 64 * 256
        x = np.random.default_rng(0).random(n, dtype=np.float32)
        w = np.random.default_rng(1).random(32, dtype=np.float32)
        y = np.zeros(n, np.float32)
        for name in NAMES[:2]:
            k = m.get_function(name)
            r = rate(lambda: k(64, 256, (x, w, y, np.int32(n))))
            print(f"launch [{label:8s}] {name:22s} grid 64 x block 256 (32 taps/thread): {r:7.0f} launches/s")
        k = m.get_function("selftest::vector_add")
        a = np.zeros(1, np.float32)
        r = rate(lambda: k(1, 1, (a, a, a, np.int32(1))))
        print(f"launch [{label:8s}] 1 x 1 vector_add (Python + launch overhead): {1e6 / r:7.1f} us per launch")


if __name__ == "__main__":
    main()
