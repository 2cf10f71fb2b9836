"""The NumPy path against PyTorch CPU (all cores) on the layer list of the package issue, float32.

    python bench/numpy_vs_torch.py [--rounds 5] [--repeats 3] [--json out.json]

Each layer: the outputs are compared first (a wrong answer fails the row), then ``--rounds`` rounds,
each timing ``--repeats`` consecutive calls of ours and ``--repeats`` of PyTorch's (each block after one
untimed warm-up call), which of the two goes first alternating from round to round; the reported time
is the median over all timed calls of one library. Interleaving by rounds makes both libraries see the
same machine load (other processes come and go); within a round the calls are not interleaved, and a
``PAUSE_S`` pause separates the blocks, because OpenBLAS and OpenMP worker threads keep spinning for a
while after a call and would steal the cores from the other library's next call. Prints a Markdown
table, the geometric mean of time ratios (ours / PyTorch; lower is better) and the max-pool row.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import gpuconv  # noqa: E402

# (N, C, H=W, K, R=S, stride, pad, groups)
CONV_LAYERS = [
    ("LeNet conv1", (64, 1, 32, 6, 5, 1, 0, 1)),
    ("LeNet conv2", (64, 6, 14, 16, 5, 1, 0, 1)),
    ("AlexNet conv1", (8, 3, 224, 64, 11, 4, 2, 1)),
    ("3x3 256->256 @56", (4, 256, 56, 256, 3, 1, 1, 1)),
    ("1x1 256->64 @56", (8, 256, 56, 64, 1, 1, 0, 1)),
    ("3x3/2 128->128 @56", (8, 128, 56, 128, 3, 2, 1, 1)),
    ("depthwise 3x3 144 @56", (8, 144, 56, 144, 3, 1, 1, 144)),
]
MAXPOOL = ("max-pool 3x3/2 pad 1 on 8x64x112x112", (8, 64, 112), dict(kernel_size=3, stride=2, padding=1))


PAUSE_S = 0.1


def _block(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    time.sleep(PAUSE_S)
    return times


def median_ms(ours, torch_fn, rounds, repeats):
    """Median milliseconds of ``ours`` and of ``torch_fn``, timed in alternating rounds."""
    times = {ours: [], torch_fn: []}
    for r in range(rounds):
        for fn in ((ours, torch_fn) if r % 2 == 0 else (torch_fn, ours)):
            times[fn] += _block(fn, repeats)
    return statistics.median(times[ours]) * 1e3, statistics.median(times[torch_fn]) * 1e3


def run(rounds, repeats):
    import torch
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    rows = []
    for name, (N, C, H, K, R, s, p, g) in CONV_LAYERS:
        x = rng.standard_normal((N, C, H, H)).astype(np.float32)
        w = (rng.standard_normal((K, C // g, R, R)) / math.sqrt(C // g * R * R)).astype(np.float32)
        b = rng.standard_normal(K).astype(np.float32)
        tx, tw, tb = map(torch.from_numpy, (x, w, b))
        ours = gpuconv.conv2d(x, w, b, stride=s, padding=p, groups=g)
        kernel = gpuconv.last_kernel().kernel
        ref = F.conv2d(tx, tw, tb, stride=s, padding=p, groups=g).numpy()
        ok = bool(np.allclose(ours, ref, rtol=1e-3, atol=1e-3))
        ours_ms, torch_ms = median_ms(lambda: gpuconv.conv2d(x, w, b, stride=s, padding=p, groups=g),
                                      lambda: F.conv2d(tx, tw, tb, stride=s, padding=p, groups=g),
                                      rounds, repeats)
        rows.append(dict(layer=name, shape=[N, C, H, K, R, s, p, g], kernel=kernel, correct=ok,
                         ours_ms=ours_ms, torch_ms=torch_ms))
    name, (N, C, H), kw = MAXPOOL
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    tx = torch.from_numpy(x)
    ok = bool(np.array_equal(gpuconv.max_pool2d(x, **kw), F.max_pool2d(tx, **kw).numpy()))
    kernel = gpuconv.last_kernel().kernel
    ours_ms, torch_ms = median_ms(lambda: gpuconv.max_pool2d(x, **kw), lambda: F.max_pool2d(tx, **kw),
                                  rounds, repeats)
    rows.append(dict(layer=name, shape=[N, C, H], kernel=kernel, correct=ok, ours_ms=ours_ms,
                     torch_ms=torch_ms))
    for r in rows:
        r["ratio"] = r["ours_ms"] / r["torch_ms"]
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per layer")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per library and round")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    import torch
    rows = run(args.rounds, args.repeats)
    conv_ratios = [r["ratio"] for r in rows[:-1]]
    geomean = math.exp(sum(map(math.log, conv_ratios)) / len(conv_ratios))
    print(f"NumPy {np.__version__} vs PyTorch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"median of {args.rounds} rounds x {args.repeats} calls, alternating\n")
    print("| layer | ours ms | torch ms | ours/torch | kernel | correct |")
    print("|---|---:|---:|---:|---|---|")
    for r in rows:
        print(f"| {r['layer']} | {r['ours_ms']:.2f} | {r['torch_ms']:.2f} | {r['ratio']:.2f} | {r['kernel']} | "
              f"{'yes' if r['correct'] else 'NO'} |")
    print(f"\nconv geometric mean of ratios: {geomean:.2f} (target <= 1.5); worst conv: {max(conv_ratios):.2f} "
          f"(target <= 3); max-pool: {rows[-1]['ratio']:.2f} (target <= 2)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(numpy=np.__version__, torch=torch.__version__, threads=torch.get_num_threads(),
                           cores=os.cpu_count(), rounds=args.rounds, repeats=args.repeats, rows=rows,
                           conv_geomean=geomean), f, indent=2)
    return 0 if all(r["correct"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
