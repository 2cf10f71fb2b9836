"""The results files of a run: ``<out>/<stem>.json`` (every figure; rewritten atomically as the run goes),
``.md`` (``render``) and ``.png`` (``plot``); and re-rendering a results file written elsewhere."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .plot import plot_results
from .render import render_markdown

SCHEMA = 1


def results_stem(results: dict) -> str:
    s = results["settings"]
    return (results["device"]["slug"] + ("" if s["suite"] == "full" else f"-{s['suite']}")
            + ("-partial" if s["filters"] else ""))


def write_results(results: dict, out_dir: Path, *, plot: bool = True) -> dict:
    """Write ``<stem>.json``, ``<stem>.md`` and (with matplotlib) ``<stem>.png``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = results_stem(results)
    paths = dict(json=out_dir / f"{stem}.json", md=out_dir / f"{stem}.md")
    image = None
    if plot:
        png = out_dir / f"{stem}.png"
        note = plot_results(results, png)
        if note is None:
            paths["png"], image = png, png.name
        else:
            results["plot_note"] = note
    results["files"] = {k: p.name for k, p in paths.items()}
    write_json(results, out_dir)
    paths["md"].write_text(render_markdown(results, image=image))
    return paths


def write_json(results: dict, out_dir: Path) -> Path:
    """Write ``<out_dir>/<stem>.json`` atomically (a temporary file renamed over it): a run killed while
    writing leaves the previous complete file, never a truncated one."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{results_stem(results)}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def rerender(path: Path, out_dir: Path, *, plot: bool = True) -> dict:
    """Rewrite a results file's report into ``out_dir`` (its figures unchanged; the plot made here when it
    was not made where it ran). Returns the paths written."""
    results = json.loads(Path(path).read_text())
    if results.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not a gpuconv bench results file of schema {SCHEMA}")
    results.pop("plot_note", None)
    results.pop("files", None)
    return write_results(results, out_dir, plot=plot)
