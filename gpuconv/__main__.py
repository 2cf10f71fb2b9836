"""Command line: ``python -m gpuconv info``, ``demo``, ``train``, ``precompile`` and ``bench``."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np

import gpuconv


def cmd_info(args) -> int:
    info = gpuconv.backend_info()
    if args.json:
        print(json.dumps({"gpuconv": gpuconv.__version__, "python": platform.python_version(), **info}, indent=2))
        return 0
    print(f"gpuconv {gpuconv.__version__}, Python {platform.python_version()}, NumPy {info['numpy']['version']}")
    print("backend numpy: available (the NumPy fallback)")
    cu = info["cupy"]
    if cu["available"]:
        print(f"backend cupy: available, CuPy {cu['version']}, CUDA runtime {cu['cuda_runtime']}, "
              f"driver {cu['driver']}")
        for d in cu["devices"]:
            print(f"  device {d['id']}: {d['name']} (sm_{d['compute_capability'].replace('.', '')}, "
                  f"{d['memory_bytes'] / 2**30:.1f} GiB)")
    else:
        print(f"backend cupy: unavailable: {cu['reason']}")
    return 0


def cmd_precompile(args) -> int:
    cu = gpuconv.backend_info()["cupy"]
    if not cu["available"]:
        print(f"precompile: nothing to compile for: {cu['reason']}", file=sys.stderr)
        return 2
    from ._cuda.runtime import format_precompile
    t0 = time.perf_counter()
    results = gpuconv.precompile()
    print(format_precompile(results))
    failed = [r.source for r in results if r.error]
    print(f"{len(results)} sources in {time.perf_counter() - t0:.1f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def cmd_demo(args) -> int:
    from . import lenet
    from .train import array_module
    xp, device = array_module(args.device, "demo")
    if xp is None:
        return 2

    def sync():
        if xp is not np:
            xp.cuda.get_current_stream().synchronize()
    rng = np.random.default_rng(0)
    params = lenet.lenet5_params(xp, np.float32, rng)
    x = xp.asarray(rng.standard_normal((args.batch, 1, 32, 32)).astype(np.float32))
    lenet.forward(x, params)  # warm-up: compiles kernels on a GPU
    sync()
    timings = []
    t0 = [time.perf_counter()]

    def on_layer(name, out):
        sync()
        now = time.perf_counter()
        w = params.get(name, (None, None))[0]
        n_params = 0 if w is None else int(w.size + params[name][1].size)
        timings.append((name, tuple(out.shape), n_params, now - t0[0], gpuconv.last_kernel().kernel))
        t0[0] = time.perf_counter()

    y = lenet.forward(x, params, on_layer=on_layer)
    print(f"LeNet-5 forward, batch {args.batch}, float32, on {device}")
    print(f"{'layer':<7}{'output shape':<22}{'params':>9}{'time ms':>10}  kernel")
    for name, shape, n_params, secs, kernel in timings:
        print(f"{name:<7}{str(shape):<22}{n_params:>9,}{secs * 1e3:>10.3f}  {kernel}")
    total = sum(t[2] for t in timings)
    print(f"{'total':<7}{str(tuple(y.shape)):<22}{total:>9,}{sum(t[3] for t in timings) * 1e3:>10.3f}")
    return 0 if total == lenet.NUM_PARAMS else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpuconv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="backends, devices and versions")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("demo", help="LeNet-5 forward pass on the best available backend")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("precompile", help="compile every CUDA kernel for the current GPU now (kept in CuPy's cache)",
                       description="Compile every gpuconv CUDA kernel source for the current GPU, the sources in "
                                   "parallel, into CuPy's on-disk kernel cache, so that no later call (in any "
                                   "process) waits for a compile. Prints the seconds per source and each "
                                   "kernel's registers, local memory, static shared memory and maximum block size.")
    p.set_defaults(func=cmd_precompile)
    from . import train
    p = sub.add_parser("train", help="train LeNet-5 on scikit-learn's digits with gpuconv's forward and backward ops",
                       description=train.__doc__)
    train.add_arguments(p)
    p.set_defaults(func=train.main)
    from . import bench
    p = sub.add_parser("bench", help="every gpuconv algorithm against PyTorch (cuDNN on a GPU, CPU otherwise)",
                       description=bench.USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(p)
    p.set_defaults(func=bench.main)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
