"""NumPy path, conv3d forward: ``numpy_im2col3d`` against the depth-tap lowering, both forced, on a few 3-D layers
(the figures behind ``gpuconv/_numpy/conv3d.py``'s rule). Run from a checkout: ``python bench/conv3d_numpy.py``."""

import time

import numpy as np

import gpuconv
from gpuconv._numpy import conv3d as numpy_conv3d

LAYERS = {  # name: (N, C, D, H, W, K), 3x3x3 filters, padding 1
    "C3D conv1 (3->64, 16x56x56)": (1, 3, 16, 56, 56, 64),
    "C3D conv2 (64->128, 8x28x28)": (1, 64, 8, 28, 28, 128),
    "3-D U-Net (32->32, 32^3)": (1, 32, 32, 32, 32, 32),
    "batch 4, 16->16, 8x16x16": (4, 16, 8, 16, 16, 16),
    "batch 8, 8->8, 8x8x8": (8, 8, 8, 8, 8, 8),
}


def best_ms(fn, repeats=3):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def main():
    rng = np.random.default_rng(0)
    rule = numpy_conv3d.use_im2col3d
    for name, (N, C, D, H, W, K) in LAYERS.items():
        x = rng.standard_normal((N, C, D, H, W)).astype(np.float32)
        w = rng.standard_normal((K, C, 3, 3, 3)).astype(np.float32)
        times = {}
        for forced in (True, False):
            numpy_conv3d.use_im2col3d = lambda geom, forced=forced: forced
            try:
                times[forced] = best_ms(lambda: gpuconv.conv3d(x, w, padding=1))
            finally:
                numpy_conv3d.use_im2col3d = rule
        g = gpuconv.conv3d(x[:1], w, padding=1).shape
        print(f"{name}: im2col3d {times[True]:.1f} ms, depth taps {times[False]:.1f} ms "
              f"(im2col3d/depth taps {times[True] / times[False]:.2f}); output {g}")


if __name__ == "__main__":
    main()
