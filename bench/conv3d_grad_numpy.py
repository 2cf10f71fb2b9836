"""NumPy path, conv3d gradients: ``gpuconv/_numpy/conv3d_grad.py`` ("new") against the depth-tap lowering it
replaced ("old", forced by making the strategy decline) and PyTorch's ``torch.nn.grad.conv3d_input`` /
``conv3d_weight`` (CPU), on the benchmark's CPU-sized 3-D layers (batch 1, float32, 3x3x3 filters, padding 1).
Contenders alternate, 3 rounds of 3 calls each after a warm-up; medians in ms. Single-threaded figures (PyTorch
is set to 1 thread here), from a checkout's root (``PYTHONPATH=.``: this checkout's gpuconv):
``PYTHONPATH=. GPUCONV_NUMPY_THREADS=1 OPENBLAS_NUM_THREADS=1 python bench/conv3d_grad_numpy.py``."""

import timeit

import numpy as np
import torch

import gpuconv.conv_nd as cn
from gpuconv._numpy import conv3d_grad

LAYERS = {  # name: x shape, w shape
    "C3D conv1": ((1, 3, 16, 56, 56), (64, 3, 3, 3, 3)),
    "3-D U-Net 32^3": ((1, 32, 32, 32, 32), (32, 32, 3, 3, 3)),
    "C3D conv3a": ((1, 128, 8, 14, 14), (256, 128, 3, 3, 3)),
}


def main():
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    keep = conv3d_grad.data_decline_reason, conv3d_grad.filter_decline_reason
    for name, (xs, ws) in LAYERS.items():
        x, w = rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32)
        gy = rng.standard_normal((xs[0], ws[0]) + xs[2:]).astype(np.float32)
        xt, wt, gyt = map(torch.tensor, (x, w, gy))
        calls = [("torch data", lambda: torch.nn.grad.conv3d_input(x.shape, wt, gyt, 1, 1)),
                 ("torch filter", lambda: torch.nn.grad.conv3d_weight(xt, w.shape, gyt, 1, 1)),
                 ("new data", lambda: cn.conv3d_input(x.shape, w, gy, 1, 1)),
                 ("new filter", lambda: cn.conv3d_weight(x, w.shape, gy, 1, 1)),
                 ("old data", lambda: cn.conv3d_input(x.shape, w, gy, 1, 1)),
                 ("old filter", lambda: cn.conv3d_weight(x, w.shape, gy, 1, 1))]
        times = {}
        for _ in range(3):
            for label, fn in calls:
                if label.startswith("old"):
                    conv3d_grad.data_decline_reason = conv3d_grad.filter_decline_reason = lambda *a, **k: "forced"
                try:
                    fn()
                    times.setdefault(label, []).extend(timeit.repeat(fn, number=1, repeat=3))
                finally:
                    conv3d_grad.data_decline_reason, conv3d_grad.filter_decline_reason = keep
        ms = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
        print(f"{name}: " + " | ".join(f"{k} {v:.1f}" for k, v in ms.items())
              + f" | new/torch data {ms['new data'] / ms['torch data']:.2f} filter "
                f"{ms['new filter'] / ms['torch filter']:.2f}; old/torch data {ms['old data'] / ms['torch data']:.2f}"
                f" filter {ms['old filter'] / ms['torch filter']:.2f}", flush=True)


if __name__ == "__main__":
    main()
