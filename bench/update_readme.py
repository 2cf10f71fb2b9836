"""Regenerate README.md's "Benchmarks" section (between ``<!-- bench:start -->`` and ``<!-- bench:end -->``)
from the full-suite result files in bench/results/ (one per device kind, written by
``python -m gpuconv bench``). Every figure in that section comes from those files.

    python bench/update_readme.py [--results bench/results] [--readme README.md] [--check]

``--check`` changes nothing and exits 1 if the README is out of date.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from gpuconv import benchmark  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--check", action="store_true", help="exit 1 if the section is stale; write nothing")
    args = ap.parse_args(argv)
    readme = Path(args.readme)
    if args.check:
        text = readme.read_text()
        start, end = text.find(benchmark.README_START), text.find(benchmark.README_END)
        current = text[start:end + len(benchmark.README_END)]
        fresh = benchmark.readme_section(benchmark.load_full_results(Path(args.results)), readme.parent)
        print("README benchmarks section is " + ("up to date" if current == fresh else "STALE"))
        return 0 if current == fresh else 1
    changed = benchmark.update_readme(readme, Path(args.results))
    print(f"{os.path.relpath(readme)} {'updated' if changed else 'unchanged'} from "
          f"{len(benchmark.load_full_results(Path(args.results)))} result file(s) in {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
