"""One results file as Markdown: the lines describing the run (device, versions, method, roofline), the
table (one row per algorithm of ours, with the peer's figures), and the summary (geometric means, row
counts, notes)."""

from __future__ import annotations

from .stats import geomean
from .suite import BACKWARD_BAR, DIRECTIONS, TARGETS


def fmt_rate(v, unit: str) -> str:
    if not v:
        return "n/a"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if v >= scale:
            return f"{v / scale:.3g} {prefix}{unit}"
    return f"{v:.3g} {unit}"


def _fmt_ms(f: dict | None) -> str:
    if not f or not f.get("median_ms"):
        return "—" if not f else f["status"]
    return f"{f['median_ms']:.3g} ({f['min_ms']:.3g}–{f['max_ms']:.3g})"


def _fmt_check(f: dict | None) -> str:
    if not f:
        return "—"
    chk = f.get("check")
    if f["status"] == "ok":
        return f"ok ({chk['max_abs_err']:.1e})"
    if f["status"] == "wrong":
        return "**WRONG** (" + (f"{chk['max_abs_err']:.1e}" if "max_abs_err" in chk else chk.get("reason", "")) + ")"
    return f["status"]


def _fmt_fraction(v) -> str:
    if not v:
        return "—"
    return f"{v:.0%}" if v >= 0.095 else f"{v:.1%}"


def _fmt_x(v) -> str:
    return f"{v:.2f}×" if v else "—"


def _fmt_duration(seconds) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _fmt_size(n) -> str:
    return f"{n / 2**20:.0f} MiB" if n else "n/a"


def describe_run(results: dict) -> list[str]:
    """The lines above the table: device, versions, commit, date, method, roofline figures."""
    d, v, s, roof, peer = (results[k] for k in ("device", "versions", "settings", "roofline", "peer"))
    if d["kind"] == "gpu":
        dev = (f"{d['name']} (sm_{d['compute_capability'].replace('.', '')}, {d['sm_count']} SMs, "
               f"{d['clock_mhz'] or 0:.0f} MHz, L2 {_fmt_size(d['l2_bytes'])}), CUDA driver {v.get('driver')}, "
               f"runtime {v.get('cuda_runtime')}, CuPy {v.get('cupy')}")
    else:
        dev = f"CPU {d['name']}, {d['cores']} cores"
        if "torch_threads" in d:
            dev += f", PyTorch on {d['torch_threads']} threads"
    lib = f"PyTorch {v['torch']}" if "torch" in v else "no PyTorch"
    if v.get("cudnn"):
        lib += f" (cuDNN {v['cudnn']})"
    commit = (results.get("commit") or "unknown")[:10] + (" + uncommitted changes" if results.get("dirty") else "")
    lines = [f"{dev}; NumPy {v['numpy']}, {lib}, Python {v['python']}. gpuconv {v['gpuconv']} at commit "
             f"`{commit}`, {results['date'][:10]}; the run took {_fmt_duration(results['elapsed_s'])}.",
             "",
             f"Method: {s['timing']}. Median of {s['repeats']} repetitions (min–max in brackets) after "
             f"{s['warmup_calls']} warm-up calls. Each output is checked against the reference before it is "
             f"timed (rtol = atol = {s['tolerances']['float32'][0]:g} for float32, "
             f"{s['tolerances']['float16'][0]:g} for float16"
             + (f", {s['tolerances']['tf32'][0]:g} for TF32" if d["kind"] == "gpu" else "")
             + "); a wrong answer fails the row and is not timed.",
             "",
             f"Roofline: peak {fmt_rate(roof['peak_flops'], 'FLOP/s')} ({roof['peak_source']}); bandwidth "
             f"{fmt_rate(roof['bandwidth'], 'B/s')} ({roof['bandwidth_source']}). Speed: FLOP/s, or for "
             "pooling and depthwise layers B/s with bytes = input + weight + output; roofline = "
             "max(flops/peak, bytes/bandwidth) / time. vs peer = peer time / our time (above 1: ours faster)."]
    if d["kind"] == "gpu":
        lines[-1] += (f" The {peer['label']} column is PyTorch with TF32 off (pooling: PyTorch's own CUDA "
                      "kernels); its TF32 column has TF32 on, PyTorch's default for convolutions.")
    if any(is_backward(r) for r in results["rows"]):
        lines += ["", "Gradients: gpuconv.grad (its kernels picked by heuristic, no algorithm choice) against the "
                      "ATen backward ops PyTorch's autograd runs; inputs as the forward's, the output's gradient "
                      "~ N(0, 1); max-pooling with each side's own forward indices. Checked against the "
                      "reference relative to the same gradient of the operands' absolute values: |ours - ref| <= "
                      "atol + rtol x that magnitude, tolerances as above. FLOPs and bytes as the forward's."]
    if s.get("scaling"):
        lines += ["", s["scaling"] + "."]
    if peer.get("missing"):
        lines += ["", f"**Peer missing**: {peer['missing']}."]
    state = results.get("state", "done")  # files written before the state was recorded were complete
    if state != "done":
        why = (f"stopped by its time budget of {s.get('budget_s'):g} s" if state == "budget" else
               "ended before it finished (killed or crashed; these are the rows written until then)")
        lines += ["", f"**Incomplete run**: {results.get('cases_done')} of {results.get('cases_total')} cases, "
                      f"{why}." + (f" Not run: {', '.join(results['cases_not_run'])}."
                                   if results.get("cases_not_run") else "")]
    if s.get("suite") != "full" or s.get("filters"):
        lines += ["", f"Suite: {s.get('suite')}" + (f", filters {s['filters']}" if s.get("filters") else "") + "."]
    return lines


def is_backward(row: dict) -> bool:
    """A gradient's row (``direction``); rows without the key, as all rows before gradients, are forward."""
    return row.get("direction", "forward") != "forward"


def row_name(row: dict) -> str:
    """The layer, and the gradient for a backward row ("conv5 3x3 backward filter")."""
    return f"{row['layer']} backward {DIRECTIONS[row['direction']]}" if is_backward(row) else row["layer"]


def render_table(results: dict, backward: bool = False) -> list[str]:
    """The forward rows' table, or with ``backward`` the gradients' (a ``gradient`` column, no ``algo``)."""
    rows = [r for r in results["rows"] if is_backward(r) == backward]
    p = results["peer"]["label"]
    with_tf32 = any(r["peer_tf32"] for r in rows)
    head = ["layer", "shape", "dtype", "algo", "kernel", "ours ms", "ours speed", "roofline", f"{p} ms"]
    if backward:
        head[2:4] = ["dtype", "gradient"]
    head += [f"{p} TF32 ms"] if with_tf32 else []
    head += [f"vs {p}"] + ([f"vs {p} TF32"] if with_tf32 else []) + ["check"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---:" if h.endswith(("ms", "speed", "roofline")) or h.startswith("vs") else "---"
                            for h in head) + "|"]
    for r in rows:
        o = r["ours"]
        rate = o.get("byte_per_s") if r["metric"] == "B/s" else o.get("flop_per_s")
        frac = o.get("roofline_fraction")
        kernel = _compact_kernels(r["kernel"]) if backward and r["kernel"] else r["kernel"]
        cells = [r["layer"], r["shape"], r["dtype"], DIRECTIONS[r["direction"]] if backward else r["algo"],
                 f"`{kernel}`" if kernel else "—",
                 _fmt_ms(o), fmt_rate(rate, r["metric"]) if rate else "—", _fmt_fraction(frac),
                 _fmt_ms(r["peer"]) + _other_peer_mark(r["peer"], p)]
        cells += [_fmt_ms(r["peer_tf32"]) + _other_peer_mark(r["peer_tf32"], f"{p} TF32")] if with_tf32 else []
        cells += [_fmt_x(r["speed_vs_peer"])] + ([_fmt_x(r["speed_vs_peer_tf32"])] if with_tf32 else [])
        cells += [_fmt_check(o)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def _compact_kernels(kernel: str) -> str:
    """``"a + a + b"`` as ``"a ×2 + b"`` (a strided input gradient runs one kernel per stride phase)."""
    counts = {}
    for k in kernel.split(" + "):
        counts[k] = counts.get(k, 0) + 1
    return " + ".join(k if n == 1 else f"{k} ×{n}" for k, n in counts.items())


OTHER_PEER_MARK = "†"


def _other_peer_mark(figs: dict | None, column_label: str) -> str:
    """A mark on a peer time measured from another kernel than the column names (render_summary says which)."""
    return f" {OTHER_PEER_MARK}" if figs and figs["label"] != column_label else ""


def render_summary(results: dict) -> list[str]:
    rows, p = results["rows"], results["peer"]["label"]
    lines = []
    forward = [r for r in rows if not is_backward(r)]
    algos = list(dict.fromkeys(r["algo"] for r in forward))
    parts = []
    for a in algos:
        sp = [r["speed_vs_peer"] for r in forward if r["algo"] == a and r["speed_vs_peer"] and r["dtype"] == "float32"]
        if sp:
            parts.append(f"{a} {geomean(sp):.2f}× over {len(sp)} float32 rows")
    if parts:
        lines.append(f"Geometric mean of the speed relative to {p} (above 1: ours faster): " + "; ".join(parts) + ".")
    if any(is_backward(r) for r in rows):
        lines += render_backward_summary(results)
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines.append("Rows: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ".")
    notes = [f"* {row_name(r)} ({r['dtype']}), {r['algo']}: {r['status']}: {r['message']}"
             for r in rows if r["message"]]
    for r in rows:
        for key in ("peer", "peer_tf32"):
            f = r[key]
            if f and f["status"] not in ("ok", "unchecked"):
                notes.append(f"* {row_name(r)} ({r['dtype']}), {f['label']}: {f['status']}"
                             + (f": {f['message']}" if f.get("message") else ""))
    for r in rows:
        f = r["peer"]
        if f and f["label"] != p:
            notes.append(f"* {OTHER_PEER_MARK} {row_name(r)} ({r['dtype']}): the {p} column times {f['label']}: "
                         "PyTorch runs this layer on a kernel of its own, not on cuDNN.")
    notes = list(dict.fromkeys(notes))
    if notes:
        lines += ["", "Notes:", ""] + notes
    if results["settings"].get("suite") == "targets":
        lines += ["", render_targets(rows, p)]
    return lines


def render_backward_summary(results: dict) -> list[str]:
    """The gradients' summary: time ours / peer in geometric mean over the timed backward rows (below 1: ours
    faster), by gradient, and on the CPU the NumPy path's bar (``BACKWARD_BAR``)."""
    p = results["peer"]["label"]
    ratios = {}
    for r in results["rows"]:
        if is_backward(r) and r["speed_vs_peer"]:
            ratios.setdefault(r["direction"], []).append(1 / r["speed_vs_peer"])
    every = [x for v in ratios.values() for x in v]
    if not every:
        return [f"backward: nothing timed against {p}."]
    parts = [f"{DIRECTIONS[d]} {geomean(v):.2f} over {len(v)}" for d, v in ratios.items()]
    line = (f"backward: geometric mean of time ours / {p} = {geomean(every):.2f} over {len(every)} rows "
            f"(below 1: ours faster; by gradient: {', '.join(parts)}).")
    if results["device"]["kind"] == "cpu":
        met = geomean(every) <= BACKWARD_BAR
        line += (f" Bar of the NumPy path's gradients, within {BACKWARD_BAR:g}x of {p} CPU in geometric mean: "
                 + ("met." if met else "**not met**."))
    return [line]


def render_targets(rows, p: str) -> str:
    """The NumPy path's goals (``--targets``), as time ratios ours / peer (below 1: ours faster)."""
    def ratios(op):
        return [1 / r["speed_vs_peer"] for r in rows if r["op"] == op and r["speed_vs_peer"]]
    conv, pool = ratios("conv2d"), ratios("max_pool2d")
    parts = []
    if conv:
        parts += [f"convolutions' geometric mean {geomean(conv):.2f} (target <= {TARGETS['conv_geomean']:g})",
                  f"worst convolution {max(conv):.2f} (target <= {TARGETS['conv_worst']:g})"]
    if pool:
        parts.append(f"max-pool {max(pool):.2f} (target <= {TARGETS['max_pool']:g})")
    met = bool(conv) and geomean(conv) <= TARGETS["conv_geomean"] and max(conv) <= TARGETS["conv_worst"] \
        and all(x <= TARGETS["max_pool"] for x in pool)
    return (f"Targets of the NumPy path, time ours / {p} (below 1: ours faster): "
            + ("; ".join(parts) if parts else "nothing timed") + (": met." if met else ": **not met**."))


def device_title(device: dict) -> str:
    return device["name"] if device["kind"] == "gpu" else f"{device['name']} (CPU, {device['cores']} cores)"


def render_markdown(results: dict, *, level: int = 1, image: str | None = None) -> str:
    title = f"{'#' * level} gpuconv bench: {device_title(results['device'])}, {results['date'][:10]}"
    lines = [title, ""] + describe_run(results) + [""]
    if any(not is_backward(r) for r in results["rows"]) or not results["rows"]:
        lines += render_table(results) + [""]
    if any(is_backward(r) for r in results["rows"]):
        lines += ["Gradients (backward):", ""] + render_table(results, backward=True) + [""]
    lines += render_summary(results)
    if image:
        lines += ["", f"![speed relative to {results['peer']['label']} and roofline]({image})"]
    if results.get("plot_note"):
        lines += ["", results["plot_note"]]
    return "\n".join(lines) + "\n"
