"""What a results file records about where it ran: the checkout and its commit, the CPU's name, CUDA
version strings, our CUDA algorithms as this gpuconv has them; and the progress log (stderr)."""

from __future__ import annotations

import os
import platform as _platform
import re
import subprocess
import sys
from pathlib import Path

# The source checkout the package runs from (gpuconv/bench/ -> the repository root), when it is one.
REPO_ROOT = Path(__file__).resolve().parents[2]


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
    """Our CUDA conv2d algorithms, read at run time from the operation table (``gpuconv._cuda.ops``), then
    ``'auto'``."""
    from .._cuda.ops import operation
    return list(operation("conv2d").names) + ["auto"]


def tensor_core_algos() -> list[str]:
    """Our algorithms whose float32 products are TF32 (``Algorithm.tensor_cores``)."""
    from .._cuda.ops import operation
    return [name for name, a in operation("conv2d").algorithms.items() if a.tensor_cores]


def cuda_version_string(v) -> str | None:
    """12080 -> '12.8'."""
    return None if not v else f"{int(v) // 1000}.{int(v) % 1000 // 10}"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
