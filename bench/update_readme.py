"""Regenerate README.md's "Benchmarks" section (between ``<!-- bench:start -->`` and ``<!-- bench:end -->``)
from the full-suite result files in bench/results/ (one per device kind, written by
``python -m gpuconv bench``). Every figure in that section comes from those files. A tool of the
repository, not of the package: ``python -m gpuconv bench --update-readme`` (from a checkout) runs it too.

    python bench/update_readme.py [--results bench/results] [--readme README.md] [--check]

``--check`` changes nothing and exits 1 if the README is out of date.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":  # run as a script from the checkout: its gpuconv, installed or not
    sys.path.insert(0, str(ROOT))
from gpuconv.bench import SCHEMA, render_markdown  # noqa: E402

README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"


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
             "MobileNetV2 and LeNet-5 and on 1-D audio (wav2vec2, Conformer, TCN) and 3-D video / volume (C3D, 3-D "
             "U-Net) layers, checks every result against PyTorch before timing it, and writes "
             "`bench/results/<device>.json`, `.md` and `.png`. On a machine without a GPU, "
             "`python -m gpuconv bench --quick` runs a subset in well under a minute. Options: "
             "`--layers SUBSTRING,...`, `--algos direct,tiled,auto`, `--dtype float32|float16|all`, `--repeats N`, "
             "`--device auto|cpu|gpu`, `--budget-s SECONDS`, `--out DIR`, `--list`, `--no-plot`, `--update-readme`, "
             "`--targets` (on the CPU: the layers the NumPy path was tuned on, with its goals), `--backward` (the "
             "gradients), `--dask` (gpuconv.dask against single calls), `--rounds R` "
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


def update_readme(readme: Path = ROOT / "README.md", results_dir: Path = ROOT / "bench" / "results") -> bool:
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--check", action="store_true", help="exit 1 if the section is stale; write nothing")
    args = ap.parse_args(argv)
    readme = Path(args.readme)
    if args.check:
        text = readme.read_text()
        start, end = text.find(README_START), text.find(README_END)
        current = text[start:end + len(README_END)]
        fresh = readme_section(load_full_results(Path(args.results)), readme.parent)
        print("README benchmarks section is " + ("up to date" if current == fresh else "STALE"))
        return 0 if current == fresh else 1
    changed = update_readme(readme, Path(args.results))
    print(f"{os.path.relpath(readme)} {'updated' if changed else 'unchanged'} from "
          f"{len(load_full_results(Path(args.results)))} result file(s) in {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
