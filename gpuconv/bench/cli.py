"""The command line of ``python -m gpuconv bench``: the options, the run, the files written, the exit
status. ``--update-readme`` hands over to the checkout's ``bench/update_readme.py`` (README editing is a
tool of the repository, not of the package)."""

from __future__ import annotations

import argparse
import importlib.util
from functools import partial
from pathlib import Path

from .environment import REPO_ROOT, log
from .peers import import_torch
from .platforms import make_platform, resolve_device
from .render import render_markdown, row_name
from .results import rerender, write_json, write_results
from .runner import failed, run_bench
from .suite import BACKWARD_BAR, CPU_SCALING, build_backward, build_suite, build_targets, select

# The repository's README tool, beside the package in a source checkout (absent from an installed wheel).
README_TOOL = REPO_ROOT / "bench" / "update_readme.py"


def default_out_dir() -> Path:
    """``bench/results`` of the source checkout gpuconv runs from, else ``./gpuconv-bench``."""
    return REPO_ROOT / "bench" / "results" if (REPO_ROOT / "bench").is_dir() else Path("gpuconv-bench")


USAGE = """\
Times gpuconv against the library you would otherwise use, on the convolution and pooling layers of
ResNet-50, VGG-16, AlexNet, MobileNetV2 and LeNet-5 (float32, some float16, some at batch 1), and on 1-D
audio layers (wav2vec2, Conformer, TCN) and 3-D video / volume layers (C3D, a 3-D U-Net), float32:

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
  python -m gpuconv bench --device cpu --targets --rounds 5 --repeats 15
                                                  the NumPy path's target layers and goals against PyTorch
  python -m gpuconv bench --backward --out /tmp/bwd
                                                  the gradients (gpuconv.grad) against PyTorch's autograd
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true", help="a small subset of the layers")
    which.add_argument("--targets", action="store_true",
                       help="CPU: instead of the suite, the layers the NumPy path was tuned on (float32, "
                            "convolutions with a bias, their own batch sizes) and its goals against PyTorch: "
                            "time ratio ours / PyTorch at most 1.5 in geometric mean over the convolutions, "
                            "3 for the worst one, 2 for max-pooling")
    which.add_argument("--backward", action="store_true",
                       help="instead of the forward suite, the gradients of its float32 layers against the "
                            "kernels PyTorch's autograd runs: convolutions' input ('data') and weight "
                            "('filter') gradients, pooling's input gradient (gpuconv.grad); on the CPU with "
                            f"the NumPy path's bar, within {BACKWARD_BAR:g}x of PyTorch in geometric mean")
    p.add_argument("--dask", action="store_true",
                   help="instead of the suite, gpuconv.dask on the CPU: chunked against one call, 1 and 2 worker "
                        "processes, an image larger than the workers' memory (gpuconv/bench/dask_bench.py); "
                        "with --quick only the first two, smaller")
    p.add_argument("--layers", metavar="NAMES",
                   help="only layers whose name contains one of these comma-separated substrings (see --list)")
    p.add_argument("--algos", metavar="NAMES",
                   help="only these gpuconv algorithms, comma-separated: on a GPU direct, tiled, igemm, gemm1x1, "
                        "depthwise, igemm_tc (tensor cores) and auto; on the CPU only auto")
    p.add_argument("--dtype", choices=("float32", "float16", "all"), default="all")
    p.add_argument("--repeats", type=int, metavar="N",
                   help="timed repetitions per contender; the median is reported (default 30; --quick: 20 on a "
                        "GPU, 5 on the CPU)")
    p.add_argument("--rounds", type=int, metavar="R", default=1,
                   help="CPU: take the repetitions in R rounds, one block of calls per contender in each, "
                        "which contender goes first alternating from round to round, so that both see the "
                        "same machine load (default 1: all repetitions of one contender, then the other's)")
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
                        "(source checkouts only: runs the checkout's bench/update_readme.py)")
    p.add_argument("--list", action="store_true", help="print the selected layers and exit")
    p.add_argument("--render", metavar="JSON",
                   help="time nothing: rewrite the .json / .md / .png of a results file (e.g. from a GPU machine "
                        "without matplotlib) into --out")


def load_readme_tool():
    """The checkout's ``bench/update_readme.py`` as a module, or None outside a source checkout."""
    if not README_TOOL.is_file():
        return None
    spec = importlib.util.spec_from_file_location("gpuconv_bench_update_readme", README_TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _update_readme(results_dir: Path) -> int:
    """``--update-readme``: 0 when done, 2 outside a source checkout."""
    readme = REPO_ROOT / "README.md"
    tool = load_readme_tool() if readme.is_file() else None
    if tool is None:
        missing = readme if not readme.is_file() else README_TOOL
        log(f"bench: --update-readme needs a source checkout; {missing} does not exist")
        return 2
    changed = tool.update_readme(readme, results_dir)
    log(f"{readme} {'updated' if changed else 'unchanged'}")
    return 0


def main(args) -> int:
    if args.dask:
        from .dask_bench import main as dask_main
        return dask_main(args)
    if args.render:
        try:
            paths = rerender(Path(args.render), Path(args.out), plot=not args.no_plot)
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
    if args.targets and kind != "cpu":
        log("bench: --targets times the NumPy path (the CPU); add --device cpu")
        return 2
    if args.rounds < 1 or (args.rounds > 1 and kind != "cpu"):
        log(f"bench: --rounds must be at least 1, and above 1 only on the CPU (the GPU interleaves every "
            f"repetition), got {args.rounds}")
        return 2
    layers = args.layers.split(",") if args.layers else None
    dtypes = None if args.dtype == "all" else [args.dtype]
    suite = (build_targets() if args.targets else build_backward(cpu=kind == "cpu") if args.backward else
             build_suite(quick=args.quick, cpu=kind == "cpu"))
    cases = select(suite, layers, dtypes)
    if args.list:
        width = max([26] + [len(c.title) + 2 for c in cases])
        for c in cases:
            print(f"{c.title:<{width}}{c.dtype:<9}{c.shape_label:<36}{c.flops / 1e9:9.3f} GFLOP{c.nbytes / 2**20:9.1f} MiB")
        return 0
    if not cases:
        log("bench: no layer matches the filters")
        return 2
    torch, missing = import_torch(kind)
    if missing:
        log(f"bench: {missing}")
    plat = make_platform(kind, torch)
    if kind == "cpu":
        plat.rounds = args.rounds
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
    suite_name = "quick" if args.quick else "targets" if args.targets else "backward" if args.backward else "full"
    results = run_bench(plat, cases, algos, repeats, suite=suite_name, filters=filters, peer_missing=missing,
                        scaling=CPU_SCALING if kind == "cpu" and not args.targets else None,
                        budget_s=args.budget_s, checkpoint=partial(write_json, out_dir=out_dir))
    paths = write_results(results, out_dir, plot=not args.no_plot)
    # The Markdown printed here carries the plot note (e.g. matplotlib missing), so it is not logged again.
    print(render_markdown(results, image=paths["png"].name if "png" in paths else None))
    log("wrote " + ", ".join(str(p) for p in paths.values()))
    if args.update_readme and _update_readme(Path(args.out)):
        return 2
    bad = failed(results)
    if bad:
        log(f"bench: {len(bad)} row(s) of ours failed: " + ", ".join(f"{row_name(r)} {r['dtype']} {r['algo']} "
                                                                   f"({r['status']})" for r in bad))
    return 1 if bad else 0
