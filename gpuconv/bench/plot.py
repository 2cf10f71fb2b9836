"""The plot of one results file (matplotlib, the ``plot`` extra): speed relative to the peer per layer,
and the convolutions on the roofline."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .render import device_title, fmt_rate, row_name


def plot_results(results: dict, path: Path) -> str | None:
    """Speed relative to the peer per layer (left) and the roofline (right) as a PNG. Returns a note
    instead when matplotlib is missing or there is nothing to plot."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "No plot: matplotlib is not installed (pip install 'gpuconv[plot]')."
    rows, p, roof = results["rows"], results["peer"]["label"], results["roofline"]
    layers = list(dict.fromkeys((row_name(r), r["dtype"]) for r in rows))  # a gradient: a bar of its own
    algos = list(dict.fromkeys(r["algo"] for r in rows))
    if not layers:
        return "No plot: no rows."
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(16, max(5.0, 0.3 * len(layers) * max(1, len(algos)) ** 0.5)))
    height = 0.8 / len(algos)
    for j, algo in enumerate(algos):
        ys, xs = [], []
        for i, key in enumerate(layers):
            r = next((r for r in rows if (row_name(r), r["dtype"]) == key and r["algo"] == algo), None)
            if r and r["speed_vs_peer"]:
                ys.append(i + (j - (len(algos) - 1) / 2) * height)
                xs.append(r["speed_vs_peer"])
        ax1.barh(ys, xs, height=height, label=algo)
    ax1.axvline(1.0, color="black", linewidth=0.8)
    ax1.set_xscale("log")
    ax1.set_yticks(range(len(layers)))
    ax1.set_yticklabels([name if dt == "float32" else f"{name} ({dt})" for name, dt in layers], fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlabel(f"speed relative to {p} ({p} time / our time; > 1: ours faster)")
    ax1.legend(fontsize=8)
    # roofline: convolutions only (pooling has no flops)
    conv = [r for r in rows if r["flops"]]
    ai = [r["flops"] / r["bytes"] for r in conv]
    if ai:
        xs = np.logspace(math.log10(min(ai) / 2), math.log10(max(ai) * 2), 200)
        if roof.get("bandwidth"):
            roofline = xs * roof["bandwidth"]
            if roof.get("peak_flops"):
                roofline = np.minimum(roofline, roof["peak_flops"])
            ax2.plot(xs, roofline, color="black", linewidth=1,
                     label=f"roofline ({fmt_rate(roof.get('peak_flops'), 'FLOP/s')}, "
                           f"{fmt_rate(roof['bandwidth'], 'B/s')})")
        markers = "osD^v<>"
        for j, algo in enumerate(algos):
            pts = [(r["flops"] / r["bytes"], r["ours"]["flop_per_s"]) for r in conv
                   if r["algo"] == algo and r["ours"].get("flop_per_s")]
            if pts:
                ax2.scatter(*zip(*pts), marker=markers[j % len(markers)], label=f"ours: {algo}", alpha=0.8)
        for key, marker, color in (("peer", "x", "black"), ("peer_tf32", "+", "gray")):
            seen = {}
            for r in conv:
                f = r[key]
                if f and f.get("flop_per_s"):
                    seen[(row_name(r), r["dtype"])] = (r["flops"] / r["bytes"], f["flop_per_s"])
            if seen:
                ax2.scatter(*zip(*seen.values()), marker=marker, color=color,
                            label=p if key == "peer" else f"{p} TF32")
        ax2.set_xscale("log")
        ax2.set_yscale("log")
        ax2.set_xlabel("arithmetic intensity (flops / byte)")
        ax2.set_ylabel("FLOP/s")
        ax2.set_title("convolutions on the roofline", fontsize=10)
        ax2.legend(fontsize=8)
    fig.suptitle(f"gpuconv bench: {device_title(results['device'])}, {results['date'][:10]}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
